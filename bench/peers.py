"""Multi-modal peers from the MMRec toolbox, trained by MMRec's own trainer on a dataset of this
project's layout, selected on validation only, in the same table as bench/baselines.py.

    python -m bench.peers --dataset movielens-temporal --mmrec ../mmrec [--data_path data]
        [--models FREEDOM DRAGON LightGCN] [--seeds 999 1 2] [--vision genre --text text] [--out DIR]

MMRec is a measuring instrument, never a dependency: this module converts the data and starts
``bench/mmrec_runner.py`` with the checkout's python (``PATH/.venv/bin/python`` when it exists) in a
subprocess per model, one thread each. The conversion writes ``DIR/data/<dataset>/``: an ``.inter``
file (userID, itemID, x_label 0/1/2 for train/validation/test), ``image_feat.npy`` and
``text_feat.npy`` (the two modalities MMRec takes: ``--vision`` and ``--text``) and ``users.npy``
(the project's user id of each MMRec user); and MMRec's dataset yaml, ``PATH/src/configs/dataset/
<dataset>.yaml``, which points MMRec there. Users are renumbered 0..n-1 over those with any
interaction; items keep their ids, so the feature rows stay aligned.

MMRec masks only training items when it ranks (validation items stay candidates at test): compare
with the project's ``--no_exclude_val`` numbers. MMRec also drops held-out users without training
items. Each model gets one value per hyper-parameter (``PEER_SETTINGS``, chosen on validation),
1,000 epochs and a patience of 20 validations, once per seed of ``--seeds`` (default MMRec's own,
999); several seeds give mean ± sd. A run that reached its cap while still improving is marked
"capped": a lower bound, not a result.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.baselines import baseline_table, mean_sd  # noqa: E402
from bench.mm_peers import choose_modalities  # noqa: E402
from utility.errors import UserError  # noqa: E402
from utility.load_data import load_dataset  # noqa: E402

RUNNER = os.path.join(ROOT, "bench", "mmrec_runner.py")
PEER_SETTINGS = {   # one value per hyper-parameter, picked on validation
    "FREEDOM": {"dropout": 0.9, "reg_weight": 0.001},
    "DRAGON": {"learning_rate": 0.001, "reg_weight": 0.001},
    "LightGCN": {"n_layers": 3, "reg_weight": 0.0001},
}
EPOCHS, STOPPING_STEP = 1000, 20
MMREC_SEED = 999   # MMRec's own default seed
SPLIT_LABELS = {"train": 0, "val": 1, "test": 2}


# ---------------------------------------------------------------- conversion

def interactions(ds):
    """(users, items, labels) of every interaction, users renumbered over those with any interaction;
    and the project's id of each new user id."""
    mats = [(getattr(ds, split).tocoo(), label) for split, label in SPLIT_LABELS.items()]
    users = np.concatenate([m.row for m, _ in mats]).astype(np.int64)
    items = np.concatenate([m.col for m, _ in mats]).astype(np.int64)
    labels = np.concatenate([np.full(m.nnz, label, dtype=np.int64) for m, label in mats])
    user_ids, new_users = np.unique(users, return_inverse=True)
    order = np.lexsort((items, new_users, labels))
    return new_users[order], items[order], labels[order], user_ids


def convert(ds, folder, vision, text):
    """Write MMRec's input for ``ds`` into ``folder``: <name>.inter, image_feat.npy, text_feat.npy, users.npy."""
    users, items, labels, user_ids = interactions(ds)
    n_items = int(items.max()) + 1   # MMRec counts items up to the largest id that occurs
    os.makedirs(folder, exist_ok=True)
    lines = "".join(f"{u}\t{i}\t{x}\n" for u, i, x in zip(users.tolist(), items.tolist(), labels.tolist()))
    with open(os.path.join(folder, f"{ds.name}.inter"), "w") as f:
        f.write("userID\titemID\tx_label\n" + lines)
    np.save(os.path.join(folder, "image_feat.npy"), ds.modality_feats[vision][:n_items])
    np.save(os.path.join(folder, "text_feat.npy"), ds.modality_feats[text][:n_items])
    np.save(os.path.join(folder, "users.npy"), user_ids)
    return folder


def read_inter(folder, name):
    """{label: (users, items)} of an .inter file written by :func:`convert`."""
    table = np.loadtxt(os.path.join(folder, f"{name}.inter"), dtype=np.int64, skiprows=1, ndmin=2)
    return {label: (table[table[:, 2] == label, 0], table[table[:, 2] == label, 1]) for label in SPLIT_LABELS.values()}


def dataset_yaml(name, data_root):
    """MMRec's dataset config: the field names, the files, and where they are."""
    return "\n".join([
        f"data_path: '{os.path.abspath(data_root)}/'",
        "USER_ID_FIELD: userID", "ITEM_ID_FIELD: itemID", "inter_splitting_label: x_label",
        "filter_out_cod_start_users: True", f"inter_file_name: '{name}.inter'",
        "vision_feature_file: 'image_feat.npy'", "text_feature_file: 'text_feat.npy'",
        "user_graph_dict_file: 'user_graph_dict.npy'", 'field_separator: "\\t"', ""])


# ---------------------------------------------------------------- running and reading the peers

def mmrec_python(mmrec):
    venv = os.path.join(mmrec, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def runner_command(python, model, dataset, out_json, settings, epochs=EPOCHS, stopping_step=STOPPING_STEP,
                   seed=MMREC_SEED):
    cmd = [python, RUNNER, "--model", model, "--dataset", dataset, "--epochs", str(epochs),
           "--stopping_step", str(stopping_step), "--seed", str(seed), "--threads", "1", "--out", out_json]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value!r}"]
    return cmd


def peer_row(record):
    """A table row from the runner's JSON: best-validation epoch (1-based), epochs run, validation and
    test metrics at that epoch, and whether it is capped (ended at its epoch cap while still improving)."""
    history = record["history"]
    improved = [i for i, h in enumerate(history) if h["improved"]]
    best_epoch = improved[-1] + 1 if improved else 0
    stopped = any(h["stop"] for h in history)
    capped = not stopped and len(history) >= record["epochs"]
    note = f"best epoch {best_epoch} of {len(history)}" + ("" if stopped or capped else " (ended early: loss not finite)")
    return dict(name=f"{record['model']} (MMRec)", best_epoch=best_epoch, epochs_run=len(history), stopped=stopped,
                converged=not capped, val=record["best_valid"], test=record["best_test"], note=note,
                settings=record["settings"], seconds=record["seconds"])


def user_graph(mmrec, python, name, data_folder):
    """DRAGON's user-user graph, built once by MMRec's own preprocessing script."""
    if os.path.exists(os.path.join(data_folder, "user_graph_dict.npy")):
        return
    proc = subprocess.run([python, "dualgnn-gen-u-u-matrix.py", "-d", name], cwd=os.path.join(mmrec, "preprocessing"),
                          env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise UserError(f"{data_folder}: DRAGON's user graph could not be built: "
                        f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")


def run_peer(mmrec, python, model, name, out, seed=MMREC_SEED):
    """One model and seed in a subprocess (log: OUT/<model>-<name>[-seed<seed>].log); its table row."""
    stem = f"{model}-{name}" + ("" if seed == MMREC_SEED else f"-seed{seed}")
    out_json = os.path.join(out, f"{stem}.json")
    start = time.time()
    with open(os.path.join(out, f"{stem}.log"), "w") as log:
        proc = subprocess.run(runner_command(python, model, name, out_json, PEER_SETTINGS.get(model, {}), seed=seed),
                              cwd=os.path.join(mmrec, "src"), env=dict(os.environ, OMP_NUM_THREADS="1"),
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"{model} failed (exit code {proc.returncode}): see {log.name}", file=sys.stderr)
        return None
    with open(out_json) as f:
        row = peer_row(json.load(f))
    row["seed"] = seed
    print(f"{row['name']} on {name}, seed {seed}: {row['note']}{' (capped)' if not row['converged'] else ''}, "
          f"val recall@20 {row['val']['recall@20']:.4f}, test recall@20 {row['test']['recall@20']:.4f}, "
          f"ndcg@20 {row['test']['ndcg@20']:.4f} ({time.time() - start:.0f} s)", flush=True)
    return row


def over_seeds(rows):
    """One table row from a model's rows of several seeds: mean ± sd of each metric, every seed's best
    epoch, converged only when every seed is."""
    if len(rows) == 1:
        return rows[0]
    return dict(name=rows[0]["name"], runs=rows, converged=all(r["converged"] for r in rows),
                val=mean_sd([r["val"] for r in rows]), test=mean_sd([r["test"] for r in rows]),
                note=f"{len(rows)} seeds, best epochs " + ", ".join(f"{r['best_epoch']} of {r['epochs_run']}" for r in rows))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, help="folder under --data_path")
    p.add_argument("--data_path", default="data", help="folder that holds the dataset folders")
    p.add_argument("--mmrec", required=True, help="an MMRec checkout (with .venv/ for its python, if it has one)")
    p.add_argument("--models", nargs="+", default=["FREEDOM", "DRAGON", "LightGCN"])
    p.add_argument("--seeds", type=int, nargs="+", default=[MMREC_SEED],
                   help="MMRec seeds: each model is trained once per seed, the table gives mean ± sd")
    p.add_argument("--vision", default=None, help="the modality in MMRec's vision slot")
    p.add_argument("--text", default=None, help="the modality in MMRec's text slot")
    p.add_argument("--out", default="peers-out", help="folder for the converted data, logs and JSON")
    return p


def run(args):
    mmrec = os.path.abspath(args.mmrec)
    if not os.path.isdir(os.path.join(mmrec, "src", "configs", "dataset")):
        raise UserError(f"--mmrec {args.mmrec}: not an MMRec checkout (no src/configs/dataset)")
    ds = load_dataset(os.path.join(args.data_path, args.dataset), name=args.dataset)
    vision, text = choose_modalities(ds.modality_feats, args.vision, args.text)
    out = os.path.abspath(args.out)
    data_folder = convert(ds, os.path.join(out, "data", ds.name), vision, text)
    with open(os.path.join(mmrec, "src", "configs", "dataset", f"{ds.name}.yaml"), "w") as f:
        f.write(dataset_yaml(ds.name, os.path.join(out, "data")))
    print(f"{ds.summary()}\nMMRec input in {data_folder} (vision: {vision}, text: {text})", flush=True)
    python = mmrec_python(mmrec)
    if "DRAGON" in args.models:
        user_graph(mmrec, python, ds.name, data_folder)
    rows, failed = [], 0
    for model in args.models:
        runs = [run_peer(mmrec, python, model, ds.name, out, seed) for seed in args.seeds]
        failed += sum(r is None for r in runs)
        if all(r is not None for r in runs):
            rows.append(over_seeds(runs))
    if rows:
        print(f"{ds.name}: test with validation items as candidates (MMRec's protocol)")
        print(baseline_table(rows, "recall@20"))
        with open(os.path.join(out, f"peers-{ds.name}.json"), "w") as f:
            json.dump(dict(dataset=ds.name, vision=vision, text=text, peers=rows), f, indent=1)
    return 0 if not failed else 1


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""The strongest baselines, measured under the project's own protocol: MostPop, EASE, ItemKNN, and
LightGCN, FREEDOM and DRAGON run to convergence.

    python -m bench.baselines --dataset tiktok --data_path data [--no_exclude_val] [--topk 10 20 40 50]
        [--seeds 2024 1 2] [--threads 1] [--models mostpop ease itemknn lightgcn freedom dragon]
        [--out FILE.json] [--versus RUN_DIR ...]

Every baseline is scored by :class:`utility.evaluate.RankingEvaluator`, exactly as a run is: full
ranking, a user's training items excluded, at test time the validation items too unless
``--no_exclude_val``. EASE's lambda and ItemKNN's k and shrink are chosen on validation ``--valid_metric``
(Recall@20) from a grid; the test split is evaluated once, for the chosen value. LightGCN is the
project's teacher with its modality branch and prompts off, run by ``main.py`` in a subprocess per
seed with a long epoch cap and patience; a seed that ended at the cap is a lower bound ("capped").
FREEDOM and DRAGON (bench/mm_peers.py) train in this process, one run per seed, on the two
modalities ``--vision`` and ``--text``, each to early stopping on validation.
``--versus RUN_DIR ...`` (one finished run per seed) sets their students against each closed-form
baseline on the same test users; a run that masked validation items otherwise than this command (a
default run under ``--no_exclude_val``, MMRec's protocol) has its student scored again.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.mm_peers import PEERS, choose_modalities, train_peer  # noqa: E402
from utility.errors import UserError  # noqa: E402
from utility.evaluate import RankingEvaluator  # noqa: E402
from utility.item_item import ease_weights, gram  # noqa: E402,F401  (EASE is the library's item-item teacher)
from utility.load_data import load_dataset  # noqa: E402
from utility.run_io import write_json  # noqa: E402

MODELS = ("mostpop", "ease", "itemknn", "lightgcn", "freedom", "dragon")
EASE_LAMBDAS = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)
KNN_KS = (10, 20, 50, 100, 200, 500)
KNN_SHRINKS = (0, 10, 100, 1000)
EASE_MAX_ITEMS = 16000   # 3 items x items float64 matrices at the peak: 6 GB at this size
TABLE_METRICS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (20, 50)]


# ---------------------------------------------------------------- the models (pure functions)

def csr_tensors(mat):
    """(indptr, indices) of a CSR matrix as int64 tensors, for gathering users' rows."""
    mat = sp.csr_matrix(mat)
    return torch.as_tensor(mat.indptr.astype(np.int64)), torch.as_tensor(mat.indices.astype(np.int64))


def dense_rows(ptr, idx, users, n_items):
    """Dense float32 (len(users), n_items) 0/1 rows of the CSR matrix (ptr, idx) for ``users``."""
    starts, counts = ptr[users], ptr[users + 1] - ptr[users]
    rows = torch.repeat_interleave(torch.arange(users.numel()), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    cols = idx[torch.repeat_interleave(starts, counts) + torch.arange(int(counts.sum())) - first]
    out = torch.zeros(users.numel(), n_items)
    out[rows, cols] = 1.0
    return out


def popularity(train):
    """Training interactions per item: MostPop's score of every item, the same for every user."""
    return torch.as_tensor(np.asarray(sp.csr_matrix(train).sum(0)).ravel(), dtype=torch.float32)


def knn_neighbours(train, max_k, shrink=0.0, block=1024):
    """(values, indices), each (n_items, max_k): every item's most similar other items on the training
    matrix, best first. Similarity: x_i . x_j / (|x_i| |x_j| + shrink), the cosine when shrink is 0; the
    shrink term discounts pairs that share few users (on sparse data the cosine of two items with one
    user each is 1). Items are compared in blocks so memory stays at block x n_items."""
    x = sp.csr_matrix(train, dtype=np.float32)
    n_items = x.shape[1]
    norms = torch.as_tensor(np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel()))
    xt = sp.csr_matrix(x.T)
    max_k = min(max_k, n_items - 1)
    values, indices = [], []
    for start in tqdm(range(0, n_items, block), desc="item similarities", leave=False):
        end = min(start + block, n_items)
        dot = torch.as_tensor((xt[start:end] @ x).toarray())
        sim = dot / (norms[start:end, None] * norms[None, :] + shrink).clamp(min=1e-12)
        sim[torch.arange(end - start), torch.arange(start, end)] = -torch.inf   # an item is not its own neighbour
        top = torch.topk(sim, max_k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values).clamp(min=0.0), torch.cat(indices)


def knn_weights(values, indices, k):
    """Sparse (n_items x n_items) S with S[i, j] = sim(i, j) when i is one of j's k nearest items: the
    score of item j for user u is sum_i X[u, i] S[i, j]. Zero similarities are dropped."""
    n_items = values.shape[0]
    vals, nbrs = values[:, :k], indices[:, :k]
    targets = torch.arange(n_items)[:, None].expand_as(nbrs)
    keep = vals > 0
    return torch.sparse_coo_tensor(torch.stack([nbrs[keep], targets[keep]]), vals[keep], (n_items, n_items),
                                   check_invariants=True).coalesce()


def item_item_scores(train, weights):
    """score_fn: a block of users' training rows times an items x items matrix (dense or sparse)."""
    ptr, idx = csr_tensors(train)
    n_items = train.shape[1]
    if weights.is_sparse:
        weights_t = weights.t().coalesce()
        return lambda users: (weights_t @ dense_rows(ptr, idx, users, n_items).T).T
    return lambda users: dense_rows(ptr, idx, users, n_items) @ weights


def popularity_scores(pop):
    return lambda users: pop[None, :].repeat(users.numel(), 1)   # a copy: the evaluator writes into it


# ---------------------------------------------------------------- selection on validation

def select_on_validation(grid, build_scores, val_eval, metric):
    """(chosen value, its validation metrics, {value: validation metric}): the grid value with the
    highest validation ``metric``; the first one on a tie. The test split is never seen here."""
    scores, best = {}, None
    for value in tqdm(grid, desc="validation grid", leave=False):
        val = val_eval(build_scores(value))
        scores[value] = val[metric]
        if best is None or val[metric] > best[1][metric]:
            best = (value, val)
    return best[0], best[1], scores


def tuned_baseline(name, param, grid, build_scores, val_eval, test_eval, metric):
    """One grid baseline: select on validation, then evaluate the test split once."""
    start = time.time()
    chosen, val, grid_scores = select_on_validation(grid, build_scores, val_eval, metric)
    test = test_eval(build_scores(chosen))
    return dict(name=name, param=param, selected=chosen, grid={str(v): s for v, s in grid_scores.items()},
                val=val, test=test, seconds=time.time() - start)


def versus_config(run_dir, dataset):
    """The config of a --versus run folder, checked to be a run on ``dataset``."""
    from utility.recommend import read_config
    try:
        config = read_config(run_dir)
    except UserError as e:
        raise UserError(f"--versus {e}") from None
    if config["dataset"] != dataset:
        raise UserError(f"--versus {run_dir}: a run on {config['dataset']}, not on {dataset}")
    return config


def student_test_metrics(run_dir, dataset, exclude_val, test_eval, data_path):
    """A run's student's per-user test metrics under this bench's masking: the run's own
    student_test_per_user.npz when the run masked validation items as ``exclude_val`` says, else its
    student (student.pt) scored again by ``test_eval`` (e.g. default runs under --no_exclude_val)."""
    config = versus_config(run_dir, dataset)
    if config.get("exclude_val", True) != exclude_val:
        from utility.evaluate import dot_scores
        from utility.recommend import Recommender
        student = Recommender.load(run_dir, "student", data_path=data_path)
        return test_eval.per_user(dot_scores(student.user_emb, student.item_emb))
    path = os.path.join(run_dir, "student_test_per_user.npz")
    if not os.path.isfile(path):
        raise UserError(f"--versus {run_dir}: no student_test_per_user.npz (a finished run with a test split)")
    return dict(np.load(path))


def versus_runs(per_user, run_dirs, students):
    """The runs' students (one run folder per seed; ``students``: their per-user test metrics under
    this bench's protocol) against each closed-form baseline's per-user test metrics ({name:
    RankingEvaluator.per_user output}) on the same test users: utility.stats.two_way_comparison with
    the baseline, which has no training randomness, repeated for every seed. Returns {baseline:
    {metric: comparison}}."""
    from utility.stats import PAIRED_METRICS, two_way_comparison
    out = {}
    for name, base in per_user.items():
        for run_dir, student in zip(run_dirs, students):
            if not np.array_equal(student["users"], base["users"]):
                raise UserError(f"--versus {run_dir}: its test users differ from this dataset's "
                                f"(another dataset, or another --no_exclude_val / --eval_users)")
        out[name] = {m: two_way_comparison(np.tile(base[m], (len(students), 1)),
                                                  np.stack([s[m] for s in students])) for m in PAIRED_METRICS}
    return out


def versus_lines(comparisons, n_runs):
    lines = []
    for name, by_metric in comparisons.items():
        cells = []
        for metric, c in by_metric.items():
            lo, hi = c["interval"]
            cells.append(f"{metric} {c['mean_b']:.4f} vs {c['mean_a']:.4f}, {c['rel_diff']:+.1f} % [{lo:+.1f}, {hi:+.1f}]"
                         f" ({c['verdict'].replace('B above A', 'student above').replace('B below A', 'student below')})")
        lines.append(f"student ({n_runs} seeds) vs {name}: " + "; ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------- LightGCN through main.py

def converged(best_epoch, epochs_run, patience, epoch_cap):
    """True when early stopping ended the run: ``patience`` validations (one per epoch) after its best
    epoch, before the epoch cap. A run that reached its cap is a lower bound, not a converged result."""
    return best_epoch + patience <= epochs_run < epoch_cap


def lightgcn_command(args, seed, results_json, runs_dir):
    """main.py's flags for LightGCN: the teacher without modalities and prompts, no preset."""
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--stage", "teacher", "--no_modalities", "--no_prompt",
           "--preset", "none", "--dataset", args.dataset, "--data_path", args.data_path, "--seed", str(seed),
           "--epoch", str(args.lightgcn_epochs), "--early_stopping_patience", str(args.lightgcn_patience),
           "--eval_every", "1", "--valid_metric", args.valid_metric, "--topk", *map(str, args.topk),
           "--results_json", results_json, "--runs_dir", runs_dir, "--no_plot"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not args.exclude_val:
        cmd.append("--no_exclude_val")
    return cmd


def run_lightgcn(args):
    """One main.py run per seed, one after the other; each seed's best epoch, epochs, val and test."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = os.path.join(tmp, f"seed{seed}.json")
            start = time.time()
            proc = subprocess.run(lightgcn_command(args, seed, out, tmp), cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise UserError(f"LightGCN (main.py, seed {seed}) failed with exit code {proc.returncode}: "
                                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no message'}")
            with open(out) as f:
                t = json.load(f)["teacher"]
            run = dict(seed=seed, best_epoch=t["best_epoch"], epochs_run=t["epochs_run"], val=t["val"], test=t["test"],
                       converged=converged(t["best_epoch"], t["epochs_run"], args.lightgcn_patience,
                                           args.lightgcn_epochs),
                       seconds=time.time() - start)
            print(f"LightGCN seed {seed}: best epoch {run['best_epoch']} of {run['epochs_run']}"
                  f"{'' if run['converged'] else ' (capped)'}, val {args.valid_metric} "
                  f"{run['val'][args.valid_metric]:.4f}, test recall@20 {run['test'].get('recall@20', float('nan')):.4f}"
                  f" ({run['seconds']:.0f} s)", flush=True)
            runs.append(run)
    return dict(name="LightGCN", runs=runs, converged=all(r["converged"] for r in runs),
                val=mean_sd([r["val"] for r in runs]), test=mean_sd([r["test"] for r in runs]))


# ---------------------------------------------------------------- FREEDOM and DRAGON in the harness

def run_mm_peer(name, args, ds, val_eval, test_eval):
    """bench/mm_peers.py's FREEDOM or DRAGON, one run per seed under this command's protocol."""
    vision, text = choose_modalities(ds.modality_feats, args.vision, args.text)
    cfg = PEERS[name][1](epochs=args.peer_epochs, patience=args.peer_patience,
                         negatives_from_train=args.peer_negatives == "train")
    runs = []
    for seed in args.seeds:
        bar = tqdm(total=cfg.epochs, desc=f"{name} seed {seed}", unit="epoch", leave=False)
        run = train_peer(name, ds, vision, text, cfg, val_eval, test_eval, args.valid_metric, seed,
                         log=lambda line: bar.update(1))
        bar.close()
        run["converged"] = converged(run["best_epoch"], run["epochs_run"], cfg.patience, cfg.epochs)
        print(f"{name} seed {seed} ({vision}, {text}): best epoch {run['best_epoch']} of {run['epochs_run']}"
              f"{'' if run['converged'] else ' (capped)'}, val {args.valid_metric} {run['val'][args.valid_metric]:.4f}, "
              f"test recall@20 {run['test'].get('recall@20', float('nan')):.4f} ({run['seconds']:.0f} s)", flush=True)
        runs.append(run)
    return dict(name=name, runs=runs, converged=all(r["converged"] for r in runs),
                val=mean_sd([r["val"] for r in runs]), test=mean_sd([r["test"] for r in runs]))


def mean_sd(metric_dicts):
    """{metric: [mean, sd]} over seeds (sd 0 for one seed)."""
    return {k: [statistics.fmean(d[k] for d in metric_dicts),
                statistics.stdev(d[k] for d in metric_dicts) if len(metric_dicts) > 1 else 0.0]
            for k in metric_dicts[0]}


# ---------------------------------------------------------------- report

def _cell(value):
    return f"{value[0]:.4f} ± {value[1]:.4f}" if isinstance(value, list) else f"{value:.4f}"


def baseline_table(rows, valid_metric):
    """The run's summary-table layout (test Recall/NDCG at 20 and 50), plus the value chosen on
    validation (or a row's ``note``) and its validation score."""
    cols = [c for c in TABLE_METRICS if c in rows[0]["test"]]
    width = max(11, max(len(_cell(r["test"][c])) + 2 for r in rows for c in cols))
    header = f"{'test':<22}" + "".join(f"{c:>{width}}" for c in cols) + f"{'val ' + valid_metric:>{width + 4}}  selected"
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r["name"] + ("" if r.get("converged", True) else " (capped)")
        selected = r.get("note") or (f"{r['param']} = {r['selected']}" if "param" in r else (
            f"{len(r['runs'])} seeds" if "runs" in r else "-"))
        lines.append(f"{name:<22}" + "".join(f"{_cell(r['test'][c]):>{width}}" for c in cols)
                     + f"{_cell(r['val'][valid_metric]):>{width + 4}}  {selected}")
    return "\n".join(lines)


# ---------------------------------------------------------------- entry point

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="movielens", help="folder under --data_path")
    p.add_argument("--data_path", default="data", help="folder that holds the dataset folders")
    p.add_argument("--no_exclude_val", dest="exclude_val", action="store_false",
                   help="keep validation items as candidates in the test ranking")
    p.add_argument("--topk", type=int, nargs="+", default=[10, 20, 40, 50], help="cut-offs K of the metrics")
    p.add_argument("--valid_metric", default="recall@20", help="validation metric that selects lambda and k")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--ease_lambdas", type=float, nargs="+", default=list(EASE_LAMBDAS))
    p.add_argument("--ease_max_items", type=int, default=EASE_MAX_ITEMS,
                   help="refuse EASE above this many items (memory: 3 x n_items^2 x 8 bytes)")
    p.add_argument("--knn_ks", type=int, nargs="+", default=list(KNN_KS))
    p.add_argument("--knn_shrinks", type=float, nargs="+", default=list(KNN_SHRINKS),
                   help="ItemKNN similarity shrink terms (0: cosine), searched jointly with --knn_ks")
    p.add_argument("--seeds", type=int, nargs="+", default=[2024, 1, 2], help="LightGCN's, FREEDOM's and DRAGON's seeds")
    p.add_argument("--lightgcn_epochs", type=int, default=1000, help="LightGCN's epoch cap")
    p.add_argument("--lightgcn_patience", type=int, default=50, help="LightGCN's early-stopping patience (epochs)")
    p.add_argument("--peer_epochs", type=int, default=1000, help="FREEDOM's and DRAGON's epoch cap")
    p.add_argument("--peer_patience", type=int, default=20,
                   help="FREEDOM's and DRAGON's early-stopping patience (epochs without a gain at 4 decimals)")
    p.add_argument("--peer_negatives", choices=("all", "train"), default="all",
                   help="FREEDOM's and DRAGON's negatives: among all items (as the teacher and the student) or "
                        "among the items with training interactions only (as MMRec)")
    p.add_argument("--vision", default=None, help="FREEDOM's and DRAGON's first modality, weight 0.1 in their item "
                                                  "graph (default: image, else the first by name)")
    p.add_argument("--text", default=None, help="their second modality (default: text, else the next by name)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--versus", nargs="+", default=None, metavar="RUN_DIR",
                   help="finished runs on this dataset, one per seed: their students against each closed-form "
                        "baseline on the same test users, with the interval over seeds and users (a run that "
                        "masked validation items otherwise is scored again under this protocol)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def check_args(args, n_items):
    metric, _, k = args.valid_metric.partition("@")
    if metric not in ("recall", "ndcg", "precision", "hit") or not k.isdigit() or int(k) not in args.topk:
        raise UserError(f"--valid_metric {args.valid_metric}: expected recall, ndcg, precision or hit @K with K "
                        f"one of --topk {args.topk}")
    if min(args.topk) < 1 or min(args.knn_ks) < 1 or min(args.ease_lambdas) <= 0 or min(args.knn_shrinks) < 0:
        raise UserError("--topk and --knn_ks must be at least 1, --ease_lambdas positive, --knn_shrinks not negative")
    if args.peer_epochs < 1 or args.peer_patience < 1:
        raise UserError("--peer_epochs and --peer_patience must be at least 1")
    if "ease" in args.models and n_items > args.ease_max_items:
        raise UserError(f"EASE on {n_items} items needs 3 x {n_items}^2 x 8 bytes = "
                        f"{3 * n_items ** 2 * 8 / 2 ** 30:.1f} GiB; above --ease_max_items {args.ease_max_items} "
                        f"(raise it, or leave ease out of --models)")
    for run_dir in args.versus or ():
        versus_config(run_dir, args.dataset)
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UserError(f"--out {args.out}: folder does not exist")


def make_evaluators(ds, topk, exclude_val):
    """A run's validation and test evaluators: training items excluded, and validation items at test
    time unless ``exclude_val`` is False."""
    device = torch.device("cpu")
    test_exclude = [ds.train, ds.val] if exclude_val else [ds.train]
    return RankingEvaluator(ds.val, [ds.train], topk, device), RankingEvaluator(ds.test, test_exclude, topk, device)


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(os.path.join(args.data_path, args.dataset), name=args.dataset)
    check_args(args, ds.n_items)
    if {"freedom", "dragon"} & set(args.models) and len(ds.modality_feats) >= 2:
        choose_modalities(ds.modality_feats, args.vision, args.text)   # a bad --vision / --text before any training
    print(ds.summary(), flush=True)
    val_eval, test_eval = make_evaluators(ds, args.topk, args.exclude_val)
    rows, per_user_scores = [], {}   # the chosen closed-form baselines' scores, for --versus
    if "mostpop" in args.models:
        scores = popularity_scores(popularity(ds.train))
        rows.append(dict(name="MostPop", val=val_eval(scores), test=test_eval(scores)))
        per_user_scores["MostPop"] = scores
    if "ease" in args.models:
        g = gram(ds.train)
        rows.append(tuned_baseline("EASE", "lambda", args.ease_lambdas,
                                   lambda lam: item_item_scores(ds.train, ease_weights(g, lam)),
                                   val_eval, test_eval, args.valid_metric))
        if args.versus:
            per_user_scores["EASE"] = item_item_scores(ds.train, ease_weights(g, rows[-1]["selected"]))
        del g
    if "itemknn" in args.models:
        neighbours = {s: knn_neighbours(ds.train, max(args.knn_ks), s) for s in args.knn_shrinks}
        ks = sorted(set(min(k, ds.n_items - 1) for k in args.knn_ks))
        rows.append(tuned_baseline("ItemKNN", "k, shrink", [(k, s) for s in args.knn_shrinks for k in ks],
                                   lambda pair: item_item_scores(ds.train, knn_weights(*neighbours[pair[1]], pair[0])),
                                   val_eval, test_eval, args.valid_metric))
        if args.versus:
            k, shrink = rows[-1]["selected"]
            per_user_scores["ItemKNN"] = item_item_scores(ds.train, knn_weights(*neighbours[shrink], k))
    if "lightgcn" in args.models:
        rows.append(run_lightgcn(args))
    for name in ("FREEDOM", "DRAGON"):
        if name.lower() not in args.models:
            continue
        if len(ds.modality_feats) < 2:
            print(f"{name}: skipped, {args.dataset} has {len(ds.modality_feats)} modality (it takes two)")
        else:
            rows.append(run_mm_peer(name, args, ds, val_eval, test_eval))
    print(f"{args.dataset}: test {'without' if args.exclude_val else 'with'} validation items as candidates")
    print(baseline_table(rows, args.valid_metric))
    comparisons = None
    if args.versus:
        per_user = {name: test_eval.per_user(scores) for name, scores in per_user_scores.items()}
        students = [student_test_metrics(run_dir, args.dataset, args.exclude_val, test_eval, args.data_path)
                    for run_dir in args.versus]
        comparisons = versus_runs(per_user, args.versus, students)
        print(versus_lines(comparisons, len(args.versus)))
    if args.out:
        write_json(dict(dataset=args.dataset, n_users=ds.n_users, n_items=ds.n_items, exclude_val=args.exclude_val,
                        topk=args.topk, valid_metric=args.valid_metric, baselines=rows,
                        versus=None if comparisons is None else dict(runs=args.versus, comparisons=comparisons)),
                   args.out)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

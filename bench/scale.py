"""Does a run fit a large dataset? A few steps of each stage and a sampled evaluation, timed, with
peak memory, and each epoch's time projected from its steps.

    python bench/scale.py --users 2000000 --items 1000000 --interactions 20000000 [--steps 3]
    python bench/scale.py --like netflix --scale 10 [--steps 0]     # --steps 0: whole epochs

Generates (once, cached under bench/.data/) a synthetic dataset (``data.synthetic``): shaped like
the chosen published one times ``--scale``, or with the given numbers of users, items and
interactions and ``--modalities`` (default image 512 and text 384). Then it runs ``main.py`` on it
for one epoch per stage, each epoch cut after ``--steps`` optimiser steps, with validation and test
on a fixed random sample of ``--eval_users`` users. Nothing in the pipeline forms a dense
users x items or items x items matrix: evaluation scores users in blocks, sampling tests
membership by binary search, PCA reads the features in row blocks, and graphs are sparse.

Prints and writes bench/results/scale-<name>-<device>-<date>.md: the seconds of each set-up phase,
of a step and of the projected epoch of each stage, of the evaluation passes, the whole run, and
the peak resident memory of the process (of the generator too, when it ran).
"""
import argparse
import datetime
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from utility import pipeline  # noqa: E402
from data.synthetic import SHAPES, make_synthetic  # noqa: E402
from utility.parser import parse_args  # noqa: E402
from utility.run_io import write_report  # noqa: E402


def dataset_for(b):
    """(data_path, dataset name, seconds spent generating it) of the cached synthetic dataset."""
    folder = os.path.join(ROOT, "bench", ".data")
    if b.users:
        mods = dict((m, int(d)) for m, d in (pair.split(":") for pair in b.modalities.split(",")))
        shape = dict(n_users=b.users, n_items=b.items, n_interactions=b.interactions, modalities=mods)
        name = f"u{b.users}-i{b.items}-n{b.interactions}-" + "-".join(f"{m}{d}" for m, d in mods.items())
    else:
        shape, name = None, f"{b.like}-x{b.scale:g}"
    name += f"-seed{b.seed}"
    path = os.path.join(folder, name)
    start = time.perf_counter()
    if not os.path.exists(os.path.join(path, "meta.json")):
        os.makedirs(folder, exist_ok=True)
        make_synthetic(b.like, path, scale=b.scale, seed=b.seed, force=True, verbose=True, shape=shape)
    return folder, name, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like", choices=sorted(SHAPES), default="netflix",
                   help="published shape (and, with --users, the modalities' noise levels)")
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--users", type=int, default=None, help="with --items and --interactions: an explicit shape")
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--interactions", type=int, default=None)
    p.add_argument("--modalities", default="image:512,text:384", help="name:dim,... (with --users)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--batch_size", type=int, default=65536, help="triples per step (large: few full-graph steps)")
    p.add_argument("--steps", type=int, default=3, help="steps per stage, the epoch projected (0: whole epochs)")
    p.add_argument("--eval_users", type=int, default=20000, help="evaluated users per split (0: all)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    b, extra = p.parse_known_args(argv)
    if b.users and not (b.items and b.interactions):
        p.error("--users needs --items and --interactions")
    data_path, dataset, generate_s = dataset_for(b)
    generator_peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    flags = ["--data_path", data_path, "--dataset", dataset, "--preset", b.like, "--epoch", "1",
             "--batch_size", str(b.batch_size), "--student_batch_size", str(b.batch_size), "--no_plot",
             "--seed", str(b.seed)]
    flags += ["--eval_users", str(b.eval_users)] if b.eval_users else []
    # The exact item-item kNN graphs cost O(items^2 d) to find (docs/performance.md): hours at 10^6 items.
    flags += ["--knn_k", "0"] + extra
    with tempfile.TemporaryDirectory() as runs:
        results_file = os.path.join(runs, "results.json")
        start = time.perf_counter()
        args = parse_args(flags + ["--runs_dir", runs, "--results_json", results_file])
        args.max_batches = b.steps or None   # a few steps per epoch, projected to the whole epoch below
        code = pipeline.execute(args)
        total_s = time.perf_counter() - start
        if code != 0:
            sys.exit(f"scale run failed with exit code {code}")
        with open(results_file) as f:
            run = json.load(f)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with open(os.path.join(data_path, dataset, "meta.json")) as f:
        n_train = json.load(f)["n_train"]
    steps_per_epoch = math.ceil(n_train / b.batch_size)
    done = min(b.steps, steps_per_epoch) if b.steps else steps_per_epoch
    rows = [("dataset generation (cached after the first run)", generate_s)] if generate_s > 1.0 else []
    rows += [(f"set-up: {name}", secs) for name, secs in run["setup_seconds"].items()]
    for stage, label in (("teacher", "teacher"), ("student", "distillation")):
        epoch_s = run[stage]["seconds_per_epoch"]
        rows += [(f"{label} step (mean of {done})", epoch_s / done)]
        if done < steps_per_epoch:
            rows += [(f"{label} epoch, projected ({steps_per_epoch} steps)", epoch_s / done * steps_per_epoch)]
        else:
            rows += [(f"{label} epoch ({steps_per_epoch} steps)", epoch_s)]
        rows += [(f"{'teacher' if stage == 'teacher' else 'student'} validation pass", run[stage]["eval_seconds"])]
    rows += [("whole run (load, both stages' steps, validation and test passes)", total_s)]
    sample = run.get("eval_users")
    evaluated = (f"validation on {sample['val']:,} of {sample['val_total']:,} users, test on {sample['test']:,} of "
                 f"{sample['test_total']:,} (--eval_users {sample['sample']})") if sample else "every user evaluated"
    device = run["device"]
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Scale check: {dataset} on {device} ({datetime.date.today().isoformat()})", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; {run['n_users']:,} users, {run['n_items']:,} items, "
             f"{n_train:,} training interactions, modalities {run['modalities']}; batch {b.batch_size}; "
             f"{evaluated}.", "", f"Command: `python bench/scale.py {command}`", "",
             "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {secs:.1f} |" for name, secs in rows]
    lines += ["", f"Peak resident memory of the process: {peak_gb:.2f} GiB"
              + (f" (the generator alone: {generator_peak_gb:.2f} GiB)." if generate_s > 1.0 else "."), "",
              f"Test Recall@20 after {done} step(s) per stage: teacher {run['teacher']['test']['recall@20']:.4f}, "
              f"student {run['student']['test']['recall@20']:.4f}, MostPopular "
              f"{run['most_popular']['test']['recall@20']:.4f} (a capacity check, not a result)."]
    write_report("\n".join(lines) + "\n", b.out, f"scale-{dataset}-{device}-{datetime.date.today().isoformat()}.md")


if __name__ == "__main__":
    main()

"""Robust defaults: every setting on every dataset, scored by its worst result relative to the best.

    python scripts/robustness.py --datasets movielens-temporal movielens tiktok synth-tiktok \\
        --settings "" "--knn_k 0" [--seeds 1 2] [--jobs 2] [--data_path data] \\
        [--stage student] [--out table.md] [--resume_dir DIR] [main.py flags held fixed]

Each setting is a string of main.py flags ("" is the defaults). Every (setting, dataset, seed) runs
main.py once in a subprocess with ``--preset none`` (what data the presets do not know gets) and
``--no_test``: the score is the best validation Recall@20 of ``--stage`` (the student by default,
the teacher with ``--stage teacher``, which then trains the teacher only). The test split is never
evaluated.

Per dataset, a setting's relative score is its mean over seeds divided by the best setting's mean
on that dataset. The table lists every setting with its scores, its **worst** relative score over
the datasets and the mean one, sorted by the worst: the first row is the setting whose worst case is
best, which is how the defaults are chosen (not by the best result on one dataset). The worst case
comes with its spread over seeds (utility/stats.py worst_case: the seeds of each dataset resampled,
the same draw for every setting): its standard error, and how often each setting has the best worst
case among the resamples. Settings whose worst cases lie within a standard error or two of each other
are not told apart by the seeds run.

Runs go to ``runs_dir/robustness-<time>/`` (or ``--resume_dir``): one results file and one log per
run. A run whose results file exists is not run again, so an interrupted sweep resumes, and new
settings or seeds can be added to a finished one. ``--jobs J`` runs J at once, each with
``--threads`` (default: the CPU count divided by J).
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.prepare import SPLITS  # noqa: E402  (main.py builds these on first use)
from utility.stats import worst_case  # noqa: E402
OWN_FLAGS = ("--dataset", "--data_path", "--seed", "--stage", "--results_json", "--runs_dir", "--preset",
             "--no_test", "--resume")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--datasets", nargs="+", required=True, help="folders under --data_path")
    p.add_argument("--settings", nargs="+", required=True, metavar="FLAGS",
                   help='main.py flags of each setting, quoted; "" is the defaults; a setting of one flag needs '
                        'a leading space (" --no_prompt"), or it is read as a flag held fixed for every run')
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--data_path", default="data")
    p.add_argument("--stage", choices=["teacher", "student"], default="student",
                   help="whose validation Recall@20 is scored (teacher: only the teacher trains)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs / jobs)")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--resume_dir", default=None, help="a sweep's folder: its finished runs are reused")
    p.add_argument("--out", default=None, help="markdown table (default: in the sweep's folder)")
    return p


def run_name(index, dataset, seed):
    return f"s{index}-{dataset}-seed{seed}"


def run_one(folder, index, setting, dataset, seed, args, fixed):
    """Run main.py for one (setting, dataset, seed) unless its results exist; its validation score."""
    name = run_name(index, dataset, seed)
    results_file = os.path.join(folder, name + ".json")
    if not os.path.exists(results_file):
        flags = ["--dataset", dataset, "--data_path", args.data_path, "--seed", str(seed), "--preset", "none",
                 "--no_test", "--no_plot", "--threads", str(args.threads), "--runs_dir", os.path.join(folder, "runs"),
                 "--results_json", results_file + ".part"]
        if args.stage == "teacher":
            flags += ["--stage", "teacher"]
        flags += fixed + shlex.split(setting)
        with open(os.path.join(folder, name + ".log"), "w") as log:
            code = subprocess.call([sys.executable, os.path.join(ROOT, "main.py"), *flags], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            raise RuntimeError(f"{name}: main.py {shlex.join(flags)} failed with exit code {code} "
                               f"(log: {os.path.join(folder, name + '.log')})")
        os.replace(results_file + ".part", results_file)
    with open(results_file) as f:
        results = json.load(f)
    return results[args.stage]["val"]["recall@20"]


def summarise(settings, datasets, scores):
    """Rows {setting, per-dataset mean, sd, relative, worst, worst_dataset, worst_se, p_best, mean relative},
    best worst case first. scores[setting index, dataset]: the scores of every seed, in one seed order."""
    values = np.array([[scores[s, d] for d in datasets] for s in range(len(settings))], dtype=float)
    worst = worst_case(values)
    means = values.mean(2)
    relative = means / means.max(0)
    rows = []
    for s, setting in enumerate(settings):
        rows.append(dict(setting=setting, index=s, scores=dict(zip(datasets, means[s].tolist())),
                         relative=dict(zip(datasets, relative[s].tolist())),
                         sd={d: statistics.stdev(scores[s, d]) if len(scores[s, d]) > 1 else None for d in datasets},
                         worst=worst[s]["worst"], worst_dataset=datasets[worst[s]["worst_dataset"]],
                         worst_se=worst[s]["worst_se"], p_best=worst[s]["p_best"],
                         mean_relative=float(relative[s].mean())))
    return sorted(rows, key=lambda r: (-r["worst"], -r["mean_relative"]))


def format_table(rows, datasets, args):
    what = f"{args.stage} validation Recall@20, mean over seeds {' '.join(map(str, args.seeds))}"
    lines = [f"Robustness sweep: {what}; relative to each dataset's best setting (no preset, test never evaluated); "
             "worst: the smallest relative score ± its standard error over seeds (seeds resampled per dataset); "
             "p best: the share of resamples in which the setting has the best worst case.",
             "", "| setting | " + " | ".join(datasets) + " | worst | p best | mean |",
             "|---|" + "---:|" * (len(datasets) + 3)]
    for r in rows:
        cells = []
        for d in datasets:
            sd = "" if r["sd"][d] is None else f" ± {r['sd'][d]:.4f}"
            cells.append(f"{r['scores'][d]:.4f}{sd} ({r['relative'][d]:.3f})")
        label = f"`{r['setting']}`" if r["setting"].strip() else "defaults"
        se = "" if r["worst_se"] is None else f" ± {r['worst_se']:.3f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{r['worst']:.3f}**{se} ({r['worst_dataset']}) | "
                     f"{r['p_best']:.2f} | {r['mean_relative']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, fixed = build_parser().parse_known_args(argv)
    for flag in fixed:
        if flag.split("=")[0] in OWN_FLAGS:
            sys.exit(f"error: {flag.split('=')[0]} is set by this script")
    if args.jobs < 1:
        sys.exit("error: --jobs must be at least 1")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    for dataset in args.datasets:
        if not os.path.isdir(os.path.join(args.data_path, dataset)) and dataset not in SPLITS.values():
            sys.exit(f"error: {os.path.join(args.data_path, dataset)}: no such dataset folder")
    folder = args.resume_dir or os.path.join(args.runs_dir, f"robustness-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(folder, exist_ok=True)
    jobs = [(s, setting, d, seed) for seed in args.seeds for d in args.datasets
            for s, setting in enumerate(args.settings)]
    by_seed = {(s, d): {} for s in range(len(args.settings)) for d in args.datasets}
    print(f"{len(jobs)} runs in {folder}, {args.jobs} at once with {args.threads} thread(s) each"
          + (f"; every run with {' '.join(fixed)}" if fixed else ""), flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, folder, s, setting, d, seed, args, fixed): (s, setting, d, seed)
                   for s, setting, d, seed in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            s, setting, d, seed = futures[future]
            try:
                score = future.result()
            except RuntimeError as e:
                for other in futures:
                    other.cancel()
                sys.exit(f"error: {e}")
            by_seed[s, d][seed] = score
            print(f"[{done}/{len(jobs)}] {setting or 'defaults'} | {d} seed {seed}: val recall@20 {score:.4f}",
                  flush=True)
    scores = {key: [runs[seed] for seed in args.seeds] for key, runs in by_seed.items()}   # one seed order
    rows = summarise(args.settings, args.datasets, scores)
    text = format_table(rows, args.datasets, args)
    out = args.out or os.path.join(folder, "robustness.md")
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(dict(datasets=args.datasets, seeds=args.seeds, stage=args.stage, fixed=fixed, rows=rows,
                       runs={f"{s}|{d}": v for (s, d), v in scores.items()}), f, indent=1)
    print(text + f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

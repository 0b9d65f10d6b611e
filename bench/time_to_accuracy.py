"""Wall-clock time for each stage to reach a validation Recall@20, for several settings side by side.

    python bench/time_to_accuracy.py --data_path data --dataset tiktok \
        --baseline_rev 04ef2d8 --settings "" "batch_size=8192 lr=4e-3" [--threads 2] [main.py flags]

Each setting is a space-separated list of ``flag=value`` pairs added to the common main.py flags
(the empty string is the current defaults). ``--baseline_rev`` also runs ``main.py`` of another git
revision of this repository (checked out into a temporary worktree) with the common flags. Every
run is a subprocess of its own, one after the other; with several ``--seeds`` the runs are interleaved
seed by seed (one round per seed), so the machine's drift touches every setting alike.

For each run and stage it reports the seconds (training plus validation passes, summed epoch by
epoch) until the validation Recall@20 first reaches the target, the best validation Recall@20 and
its epoch, the epochs run, the whole run's wall-clock seconds, and its test Recall@20 (reported,
never used to choose). The target of each stage is ``--fraction`` of the first run's best
validation Recall@20 (the baseline's when there is one), or ``--target_teacher`` /
``--target_student``. Writes bench/results/tta-<dataset>-<date>.md.
"""
import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utility.run_io import write_report  # noqa: E402


def time_to_target(history, eval_seconds, target, metric="recall@20"):
    """(seconds until the validation ``metric`` first reaches ``target``, or None; that epoch).

    ``history``: the per-epoch records of results.json (``seconds`` of training, ``val`` when the
    epoch was validated); every validation costs ``eval_seconds``.
    """
    elapsed = 0.0
    for record in history:
        elapsed += record["seconds"]
        if "val" in record:
            elapsed += eval_seconds
            if record["val"][metric] >= target:
                return elapsed, record["epoch"]
    return None, None


def stage_row(results, stage, target):
    summary, history = results[stage], results[f"{stage}_history"]
    seconds, epoch = time_to_target(history, summary["eval_seconds"], target)
    return dict(seconds=seconds, epoch=epoch, best_val=summary["val"]["recall@20"], best_epoch=summary["best_epoch"],
                per_epoch=summary["seconds_per_epoch"],
                epochs_run=summary["epochs_run"], test=summary["test"]["recall@20"],
                stage_seconds=sum(r["seconds"] for r in history) + summary["eval_seconds"] * sum("val" in r for r in history))


def run_main(repo, flags, out_json, log_path):
    """Run ``repo``/main.py with ``flags`` in a subprocess: (results dict, wall-clock seconds)."""
    cmd = [sys.executable, os.path.join(repo, "main.py"), *flags, "--results_json", out_json, "--no_plot"]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"{' '.join(map(shlex.quote, cmd))} failed with exit code {code} (log: {log_path})")
    with open(out_json) as f:
        return json.load(f), wall


def setting_flags(setting):
    """'batch_size=8192 lr=4e-3' -> ['--batch_size', '8192', '--lr', '4e-3']."""
    flags = []
    for pair in setting.split():
        name, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--settings: {pair!r} is not flag=value")
        flags += [f"--{name}"] + value.split(",")
    return flags


def mean_sd(values, spec):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), spec)} ± {format(sd, spec)}"


def fmt(x, spec):
    return "–" if x is None else format(x, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=[""], help="flag=value lists, one per setting ('' = defaults)")
    p.add_argument("--baseline_rev", default=None, help="also run main.py of this git revision (the baseline)")
    p.add_argument("--fraction", type=float, default=0.98, help="target = this fraction of the reference's best")
    p.add_argument("--target_teacher", type=float, default=None)
    p.add_argument("--target_student", type=float, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[2024], help="one round of every run per seed, interleaved")
    p.add_argument("--stages", default="all", choices=["teacher", "all"])
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    b, common = p.parse_known_args(argv)
    common = [*common, "--stage", b.stages]
    dataset = common[common.index("--dataset") + 1] if "--dataset" in common else "movielens"
    stages = ["teacher"] + (["student"] if b.stages == "all" else [])
    with tempfile.TemporaryDirectory() as tmp:
        runs = []    # (label, repo, flags)
        if b.baseline_rev:
            base = os.path.join(tmp, "baseline")
            subprocess.check_call(["git", "-C", ROOT, "worktree", "add", "--detach", base, b.baseline_rev],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs.append((f"main.py at {b.baseline_rev}", base, []))
        runs += [(setting or "defaults", ROOT, setting_flags(setting)) for setting in b.settings]
        data_path = os.path.abspath(common[common.index("--data_path") + 1]) if "--data_path" in common else None
        rows = []
        try:
            for rnd, seed in enumerate(b.seeds):
                for i, (label, repo, flags) in enumerate(runs):
                    args = list(common) + ["--seed", str(seed)]
                    if data_path:
                        args[args.index("--data_path") + 1] = data_path
                    args += ["--runs_dir", os.path.join(tmp, "runs")] + flags
                    results, wall = run_main(repo, args, os.path.join(tmp, f"r{rnd}-{i}.json"),
                                             os.path.join(tmp, f"r{rnd}-{i}.log"))
                    rows.append(dict(label=label, seed=seed, wall=wall, results=results))
                    print(f"seed {seed} | {label}: {wall:.1f} s, " + ", ".join(
                        f"{s} best val {results[s]['val']['recall@20']:.4f} at epoch {results[s]['best_epoch']}"
                        for s in stages), flush=True)
        finally:
            if b.baseline_rev:
                subprocess.call(["git", "-C", ROOT, "worktree", "remove", "--force", base],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = rows[0]["results"]   # the first run of the first seed
    targets = {s: getattr(b, f"target_{s}") or b.fraction * reference[s]["val"]["recall@20"] for s in stages}
    lines = [f"# Time to accuracy: {dataset} ({datetime.date.today().isoformat()})", "",
             f"Command: `python bench/time_to_accuracy.py {' '.join(map(shlex.quote, argv or sys.argv[1:]))}`", "",
             "Targets (validation Recall@20): " + ", ".join(f"{s} {t:.4f}" for s, t in targets.items())
             + (f" ({b.fraction:g} of the first run's best)" if not (b.target_teacher or b.target_student) else ""), "",
             "| setting | seed | " + " | ".join(f"{s}: s to target (epoch) | {s}: s in all | {s}: s/epoch | {s}: best val (epoch) / run"
                                                 f" | {s}: test" for s in stages) + " | whole run s |",
             "|---|---:|" + "---:|" * (5 * len(stages) + 1)]
    for row in rows:
        cells = []
        for s in stages:
            r = stage_row(row["results"], s, targets[s])
            cells += [f"{fmt(r['seconds'], '.1f')} ({fmt(r['epoch'], 'd')})", f"{r['stage_seconds']:.1f}",
                      f"{r['per_epoch']:.2f}",
                      f"{r['best_val']:.4f} ({r['best_epoch']}) / {r['epochs_run']}", f"{r['test']:.4f}"]
        lines.append(f"| {row['label']} | {row['seed']} | " + " | ".join(cells) + f" | {row['wall']:.1f} |")
    lines += ["", "Mean ± sd over the seeds:", "",
              "| setting | whole run s | speed-up | " + " | ".join(f"{s} test R@20" for s in stages) + " |",
              "|---|---:|---:|" + "---:|" * len(stages)]
    labels = list(dict.fromkeys(row["label"] for row in rows))
    base_wall = statistics.mean(row["wall"] for row in rows if row["label"] == labels[0])
    for label in labels:
        mine = [row for row in rows if row["label"] == label]
        walls = [row["wall"] for row in mine]
        cells = [mean_sd([row["results"][s]["test"]["recall@20"] for row in mine], ".4f") for s in stages]
        lines.append(f"| {label} | {mean_sd(walls, '.1f')} | {base_wall / statistics.mean(walls):.2f}x | "
                     + " | ".join(cells) + " |")
    write_report("\n".join(lines) + "\n", b.out, f"tta-{dataset}-{datetime.date.today().isoformat()}.md")


if __name__ == "__main__":
    main()

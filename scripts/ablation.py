"""The ablation study of docs/method.md on one dataset: every variant distils the same teacher.

    python scripts/ablation.py --dataset tiktok [--seeds 1 2 3] [--out ablation.md] [main.py flags]

Variants: full PromptMM; w/o prompt (both stages without the prompt module, so it trains a teacher
of its own); w/o pair-wise KD; w/o list-wise KD; w/o embedding KD; w/o re-weighting; w/o
disentangling; and the two ways the student learns from the teacher, one factor at a time: "copy
only" (initialised from the teacher, every KD term off), "KD only" (random initialisation, KD on)
and "neither" (random initialisation, no KD).

--seeds runs the whole study once per seed (default: once, with main.py's default seed): per seed
the teacher is retrained (and the w/o-prompt variant's teacher too), and every cell becomes mean ±
sd over seeds. Each variant is set against the full model on per-user test Recall@20: the relative
difference of the means with the 95 % t interval of the crossed seeds x test users design
(utility/stats.py two_way_comparison: seeds, not (user, seed) pairs, are the replicates of training)
and the number of seeds whose own difference has its sign. With --teacher_ckpt, every variant but
w/o prompt distils that one teacher, for every seed.

Writes a markdown table of test (and validation) Recall@20 / NDCG@20, and the same as JSON.
Flags after the script's own are passed to every main.py run (e.g. --epoch).
"""
import argparse
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.seeds import (DASH, RunFailed, flag_given, fmt_mean_sd, fmt_rel, json_safe, load_per_user,  # noqa: E402
                           run_main, seeds_by_users, write_report)
from utility.stats import PAIRED_METRICS as METRICS, summarise, two_way_comparison  # noqa: E402

FULL = "PromptMM (full)"
VARIANTS = [
    (FULL, []),
    ("w/o prompt", ["--no_prompt"]),
    ("w/o pair-wise KD", ["--kd_pair_weight", "0"]),
    ("w/o list-wise KD", ["--kd_list_weight", "0"]),
    ("w/o embedding KD", ["--kd_emb_weight", "0"]),
    ("copy only", ["--no_kd"]),
    ("KD only", ["--student_init", "random"]),
    ("neither", ["--student_init", "random", "--no_kd"]),
]


def teacher_checkpoint(base, workdir, extra, label):
    """Train a teacher (stage 1 only) and return the path of its teacher.pt and its results."""
    print(f"== training the teacher for: {label}", flush=True)
    results = run_main(base + ["--stage", "teacher"] + extra,
                       os.path.join(workdir, f"teacher{len(os.listdir(workdir))}.json"))
    return os.path.join(results["run_dir"], "teacher.pt"), results["teacher"]


def run_variants(base, seeds, teacher_ckpt, workdir):
    """Every variant once per seed (None: main.py's default seed). Returns {variant: [run, ...]} in
    seed order, each run dict(seed, run_dir, teacher_ckpt, teacher_trained, best_epoch, val, test,
    teacher_val, teacher_test)."""
    runs = {label: [] for label, _ in VARIANTS}
    for seed in seeds:
        seed_flags = [] if seed is None else ["--seed", str(seed)]
        teachers = {"prompt": teacher_ckpt} if teacher_ckpt else {}
        for label, extra in VARIANTS:
            key = "no_prompt" if "--no_prompt" in extra else "prompt"
            if key not in teachers:
                teachers[key] = teacher_checkpoint(
                    base + seed_flags, workdir, ["--no_prompt"] if key == "no_prompt" else [],
                    label + ("" if seed is None else f" (seed {seed})"))[0]
            ckpt = teachers[key]
            print(f"== {label}{'' if seed is None else f' (seed {seed})'}: {' '.join(extra) or '(defaults)'}",
                  flush=True)
            n = sum(len(v) for v in runs.values())
            r = run_main(base + seed_flags + ["--stage", "student", "--teacher_ckpt", ckpt] + extra,
                         os.path.join(workdir, f"variant{n}.json"))
            runs[label].append(dict(seed=r.get("seed", seed), run_dir=r["run_dir"], teacher_ckpt=ckpt,
                                    teacher_trained="teacher_history" in r, best_epoch=r["student"]["best_epoch"],
                                    val=r["student"]["val"], test=r["student"]["test"],
                                    teacher_test=r["teacher"]["test"], teacher_val=r["teacher"]["val"]))
    return runs


def summary(runs, part):
    """{metric: dict(mean, sd, values)} of runs' ``part`` ("test", "val", "teacher_test", ...)."""
    out = {}
    for metric in METRICS:
        values = [float(r[part][metric]) for r in runs]
        mean, sd = summarise(values)
        out[metric] = dict(mean=mean, sd=sd, values=values)
    return out


def against_full(runs, full_runs, metric="recall@20"):
    """A variant's per-user test metric against the full model's over seeds and test users
    (:func:`utility.stats.two_way_comparison`, the full model as A); None when a run left no per-user
    file or a seed's two runs scored different users."""
    try:
        pairs = [(load_per_user(full["run_dir"], "student"), load_per_user(run["run_dir"], "student"))
                 for full, run in zip(full_runs, runs)]
    except RunFailed:
        return None
    if not all(np.array_equal(a["users"], b["users"]) for a, b in pairs):
        return None
    arm_a, arm_b = seeds_by_users([a for a, _ in pairs], [b for _, b in pairs], metric)
    return two_way_comparison(arm_a, arm_b) if arm_a.shape[1] > 1 else None


def cell(s, metric):
    return fmt_mean_sd(s[metric]["mean"], s[metric]["sd"], 4) if len(s[metric]["values"]) > 1 \
        else f"{s[metric]['mean']:.4f}"


def format_table(report):
    seeds = report["seeds"]
    several = len(seeds) > 1
    teacher = ("one shared teacher (`--teacher_ckpt`) for every seed, the w/o-prompt variant's retrained per seed"
               if report["teacher"]["shared"] else "teacher retrained per seed")
    lines = [f"Ablation on `{report['dataset']}` (student: test split at the best validation epoch; "
             f"seed{'s' if several else ''} {', '.join(map(str, seeds))}"
             f"{': mean ± sd over seeds' if several else ''}; {teacher}; vs full: the relative difference of "
             "per-user test Recall@20 to the full model's, with its 95 % interval over seeds and test users "
             "(seeds − 1 degrees of freedom) and the seeds whose own difference has its sign; "
             f"command: `{report['command']}`)", "",
             "| variant | flags | test Recall@20 | test NDCG@20 | val Recall@20 | Recall@20 vs full (%) "
             "| 95 % interval | same sign | best epoch |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for name, variant in (("teacher", FULL), ("teacher (no prompt)", "w/o prompt")):
        row = next(r for r in report["rows"] if r["variant"] == variant)
        lines.append(f"| {name} | | {cell(row['teacher_test'], 'recall@20')} | "
                     f"{cell(row['teacher_test'], 'ndcg@20')} | {cell(row['teacher_val'], 'recall@20')} | | | | |")
    for r in report["rows"]:
        vs = r["vs_full"]
        if r["variant"] == FULL or vs is None or vs["rel_diff"] is None:
            versus = [DASH] * 3
        else:
            versus = [fmt_rel(vs["rel_diff"]), f"[{vs['interval'][0]:+.2f}, {vs['interval'][1]:+.2f}]",
                      f"{vs['sign_agreement']} of {vs['n_seeds']}"]
        epochs = ", ".join(str(run["best_epoch"]) for run in r["runs"])
        lines.append(f"| {r['variant']} | `{r['flags']}` | {cell(r['test'], 'recall@20')} | "
                     f"{cell(r['test'], 'ndcg@20')} | {cell(r['val'], 'recall@20')} | " + " | ".join(versus)
                     + f" | {epochs} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)   # so that main.py's --seed is not taken for --seeds
    p.add_argument("--data_path", default="data")
    p.add_argument("--dataset", default="movielens")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--teacher_ckpt", default=None, help="reuse this teacher for every variant but w/o prompt")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run the study once per seed (default: once, main.py's default seed)")
    p.add_argument("--out", default=None, help="markdown table (default: runs_dir/<dataset>/ablation-<time>.md)")
    args, passthrough = p.parse_known_args(argv)
    if args.seeds is not None and flag_given(passthrough, "--seed"):
        print("ablation: give either --seeds or --seed, not both", file=sys.stderr)
        return 2
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        print(f"ablation: --seeds {' '.join(map(str, args.seeds))}: a seed is repeated", file=sys.stderr)
        return 2
    seeds = args.seeds or [None]
    base = ["--data_path", args.data_path, "--dataset", args.dataset, "--runs_dir", args.runs_dir] + passthrough
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(args.runs_dir, args.dataset, f"ablation-{stamp}.md")
    workdir = os.path.join(args.runs_dir, args.dataset, f"ablation-{stamp}")
    os.makedirs(workdir, exist_ok=True)

    try:
        runs = run_variants(base, seeds, args.teacher_ckpt, workdir)
    except RunFailed as e:
        print(f"ablation: {e}", file=sys.stderr)
        return 1
    rows = []
    for label, extra in VARIANTS:
        rs = runs[label]
        rows.append(dict(variant=label, flags=" ".join(extra), runs=rs,
                         test=summary(rs, "test"), val=summary(rs, "val"),
                         teacher_test=summary(rs, "teacher_test"), teacher_val=summary(rs, "teacher_val"),
                         vs_full=against_full(rs, runs[FULL])))
    report = json_safe(dict(
        dataset=args.dataset, command="python scripts/ablation.py " + shlex.join(argv),
        seeds=[r["seed"] for r in runs[FULL]],
        teacher=dict(shared=bool(args.teacher_ckpt), teacher_ckpt=args.teacher_ckpt,
                     description=("one shared teacher for every seed (w/o prompt: retrained per seed)"
                                  if args.teacher_ckpt else "teacher retrained per seed")),
        vs_full="per-user test Recall@20 against the full model (A): utility/stats.py two_way_comparison, the "
                "t interval of the crossed seeds x test users design",
        rows=rows))
    write_report(format_table(report), report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

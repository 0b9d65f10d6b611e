"""One configuration (and optionally a second, to compare) over several seeds: mean ± sd and B against A.

    python scripts/seeds.py --seeds 1 2 3 [--compare "FLAGS"] [--share_teacher] [--out table.md] [main.py flags]

Configuration A is main.py with the flags after the script's own; configuration B (only with
--compare) is A plus the --compare flags. Every seed runs every configuration once.

Teacher:
  default           every run trains its own teacher (--stage all): teacher retrained per seed;
  --share_teacher   per seed, one teacher is trained (--stage teacher) and every configuration's
                    stage 2 distils it (--stage student --teacher_ckpt): teacher retrained per seed and
                    shared by both configurations. The --compare flags then only change stage 2 (a
                    loaded teacher keeps the hyper-parameters it was trained with);
  --teacher_ckpt P  (among the main.py flags) every run distils that teacher: one teacher shared by
                    every seed.

For each configuration the table reports mean ± sd over seeds (sample sd; "–" for one seed) of the
teacher's and the student's test Recall@20 / NDCG@20 and validation Recall@20, the student's
parameters and inference time, and every seed's values. With --compare, B is set against A on the
per-user test Recall@20 and NDCG@20, for the student, and for the teacher when A and B do not share
it: the relative difference of the means, 100 (B − A) / A, with the 95 % t interval of the crossed
seeds x test users design (seed effects, user effects and their noise; seeds − 1 degrees of
freedom: seeds, not (user, seed) pairs, are the replicates of training; utility/stats.py
two_way_comparison), every seed's difference, how many seeds agree in sign with the overall one, and
the verdict: B above A, B below A, or no measurable difference when the interval holds 0.

Writes the markdown table (default: runs_dir/<dataset>/seeds-<time>.md) and the same numbers as JSON
beside it.
"""
import argparse
import json
import math
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utility import pipeline  # noqa: E402
from utility.errors import UserError  # noqa: E402
from utility.parser import parse_args as parse_main_args  # noqa: E402
from utility.stats import PAIRED_METRICS, summarise, two_way_comparison  # noqa: E402

METRICS = PAIRED_METRICS   # the per-user test metrics each run keeps
# (key, column title, digits): the per-run numbers the summary reports
QUANTITIES = [
    ("teacher_test_recall@20", "teacher test Recall@20", 4),
    ("teacher_test_ndcg@20", "teacher test NDCG@20", 4),
    ("teacher_val_recall@20", "teacher val Recall@20", 4),
    ("student_test_recall@20", "student test Recall@20", 4),
    ("student_test_ndcg@20", "student test NDCG@20", 4),
    ("student_val_recall@20", "student val Recall@20", 4),
    ("student_params", "student params", 0),
    ("student_infer_ms", "student infer ms", 1),
]
# flags this script sets itself on every run
OWN_FLAGS = ("--seed", "--stage", "--results_json", "--resume")
TEACHER_MODES = {
    "per_seed": "teacher retrained per seed",
    "shared": "teacher retrained per seed and shared by both configurations",
    "fixed": "one teacher shared by every seed",
}
DASH = "–"


class RunFailed(Exception):
    """A main.py run that did not finish, or left no usable results."""


# ---------------------------------------------------------------- running

def flag_given(flags, name):
    return any(f == name or f.startswith(name + "=") for f in flags)


def flag_value(flags, name):
    """The value of the last ``name VALUE`` / ``name=VALUE`` among flags, or None."""
    value = None
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif f.startswith(name + "="):
            value = f[len(name) + 1:]
    return value


def run_main(flags, results_file):
    """Run main.py in-process with flags; its results.json as a dict. RunFailed when it fails."""
    command = "main.py " + shlex.join(flags)
    try:
        code = pipeline.run_command(flags + ["--results_json", results_file, "--no_plot"])
    except SystemExit as e:   # a flag main.py's parser rejects
        code = e.code if isinstance(e.code, int) else 2
    except Exception as e:   # noqa: BLE001 - reported as one line
        raise RunFailed(f"{command} raised {type(e).__name__}: {e}") from e
    if code != 0:
        raise RunFailed(f"{command} failed with exit code {code}")
    try:
        with open(results_file) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise RunFailed(f"{command}: no readable results ({type(e).__name__})") from e


def collect(results):
    """The numbers a run reports, as {quantity key: value} (keys of QUANTITIES)."""
    try:
        teacher, student, eff = results["teacher"], results["student"], results["efficiency"]
        return {
            "teacher_test_recall@20": teacher["test"]["recall@20"],
            "teacher_test_ndcg@20": teacher["test"]["ndcg@20"],
            "teacher_val_recall@20": teacher["val"]["recall@20"],
            "student_test_recall@20": student["test"]["recall@20"],
            "student_test_ndcg@20": student["test"]["ndcg@20"],
            "student_val_recall@20": student["val"]["recall@20"],
            "student_params": eff["student_params"],
            "student_infer_ms": eff["student_infer_ms"],
        }
    except KeyError as e:
        raise RunFailed(f"{results.get('run_dir', 'a run')}: results.json lacks {e}") from None


def load_per_user(run_dir, stage):
    """{"users": ..., "recall@20": ..., "ndcg@20": ...} of a run folder's <stage>_test_per_user.npz."""
    path = os.path.join(run_dir, f"{stage}_test_per_user.npz")
    try:
        with np.load(path) as f:
            return {k: np.asarray(f[k]) for k in ("users",) + METRICS}
    except (OSError, KeyError, ValueError) as e:
        raise RunFailed(f"{path}: per-user test metrics not readable ({type(e).__name__}); "
                        "comparing configurations needs single-process runs") from None


def teacher_mode(passthrough, share_teacher):
    if flag_given(passthrough, "--teacher_ckpt"):
        return "fixed"
    return "shared" if share_teacher else "per_seed"


def run_seeds(base, configs, seeds, mode, workdir, need_per_user=False, progress=None):
    """Run every configuration (label -> extra flags) for every seed.

    Returns (records, per_user): records[label] is a list, in seed order, of
    dict(seed, run_dir, teacher_ckpt, teacher_run_dir, values=collect(...)); per_user[label][seed] is
    {"teacher": load_per_user(...), "student": ...} when need_per_user."""
    progress = progress or (lambda line: print(line, flush=True))
    records = {label: [] for label in configs}
    per_user = {label: {} for label in configs}
    count = 0

    def results_file():
        nonlocal count
        count += 1
        return os.path.join(workdir, f"run{count}.json")

    for seed in seeds:
        seed_flags = ["--seed", str(seed)]
        shared_ckpt, teacher_run_dir = None, None
        if mode == "shared":
            r = run_main(base + seed_flags + ["--stage", "teacher"], results_file())
            shared_ckpt, teacher_run_dir = os.path.join(r["run_dir"], "teacher.pt"), r["run_dir"]
            progress(f"seeds: seed {seed}, teacher for every configuration: {r['run_dir']}")
        elif mode == "fixed":
            shared_ckpt = flag_value(base, "--teacher_ckpt")
        for label, extra in configs.items():
            if mode == "per_seed":
                stage = ["--stage", "all"]
            elif mode == "shared":
                stage = ["--stage", "student", "--teacher_ckpt", shared_ckpt]
            else:
                stage = ["--stage", "student"]
            r = run_main(base + extra + seed_flags + stage, results_file())
            run_dir = r["run_dir"]
            progress(f"seeds: seed {seed}, config {label}: {run_dir}")
            ckpt = os.path.join(run_dir, "teacher.pt") if mode == "per_seed" else shared_ckpt
            records[label].append(dict(seed=seed, run_dir=run_dir, teacher_ckpt=ckpt,
                                       teacher_run_dir=run_dir if mode == "per_seed" else teacher_run_dir,
                                       values=collect(r)))
            if need_per_user:
                per_user[label][seed] = {stage_name: load_per_user(run_dir, stage_name)
                                         for stage_name in ("teacher", "student")}
    return records, per_user


# ---------------------------------------------------------------- summarising and testing

def summarise_runs(runs):
    """{quantity key: dict(mean, sd, values)} over the runs (one per seed) of a configuration."""
    out = {}
    for key, _, _ in QUANTITIES:
        values = [float(r["values"][key]) for r in runs]
        mean, sd = summarise(values)
        out[key] = dict(mean=mean, sd=sd, values=values)
    return out


def seeds_by_users(runs_a, runs_b, metric):
    """(A, B) per-user values of shape (seeds, users) for :func:`utility.stats.two_way_comparison`, from
    one pair of load_per_user dicts per seed that share their users: the users every seed evaluated
    (all test users, unless --eval_users sampled them per seed), in one order."""
    common = runs_a[0]["users"]
    for u in runs_a[1:]:
        common = np.intersect1d(common, u["users"])

    def rows(runs):
        orders = [np.argsort(u["users"]) for u in runs]
        return np.stack([u[metric][order[np.searchsorted(u["users"], common, sorter=order)]]
                         for u, order in zip(runs, orders)])
    return rows(runs_a), rows(runs_b)


def compare_configs(per_user, seeds, models, a="A", b="B"):
    """b against a per model and metric, seeds and test users both counted as replicates.

    Returns rows dict(model, metric, **utility.stats.two_way_comparison(A, B))."""
    rows = []
    for model in models:
        runs_a = [per_user[a][seed][model] for seed in seeds]
        runs_b = [per_user[b][seed][model] for seed in seeds]
        for seed, ua, ub in zip(seeds, runs_a, runs_b):
            if not np.array_equal(ua["users"], ub["users"]):
                raise RunFailed(f"seed {seed}: the {model}'s test users differ between {a} and {b}")
        for metric in METRICS:
            arm_a, arm_b = seeds_by_users(runs_a, runs_b, metric)
            if arm_a.shape[1] < 2:
                raise RunFailed(f"the {model}: fewer than two test users are common to every seed")
            rows.append(dict(model=model, metric=metric, **two_way_comparison(arm_a, arm_b)))
    return rows


# ---------------------------------------------------------------- formatting

def fmt_number(x, digits):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{x:.{digits}f}"


def fmt_mean_sd(mean, sd, digits):
    return f"{fmt_number(mean, digits)} ± {fmt_number(sd, digits)}"


def fmt_rel(x):
    """A relative difference in %, signed."""
    return DASH if x is None else f"{x:+.2f}"


def comparison_cells(c):
    """Markdown cells of a :func:`utility.stats.two_way_comparison` result: B − A (%), its 95 % interval,
    every seed's B − A (%), the seeds that agree in sign with the overall difference, and the verdict."""
    interval = DASH if c["interval"] is None else f"[{c['interval'][0]:+.2f}, {c['interval'][1]:+.2f}]"
    agree = DASH if c["sign_agreement"] is None else f"{c['sign_agreement']} of {c['n_seeds']}"
    return [fmt_rel(c["rel_diff"]), interval, ", ".join(fmt_rel(d) for d in c["per_seed_rel_diff"]), agree,
            c["verdict"]]


COMPARISON_NOTE = ("B − A: the relative difference of the means over seeds and test users, 100 (B − A) / A; "
                   "its 95 % interval is the t interval of the crossed seeds x test users design (seeds − 1 "
                   "degrees of freedom; utility/stats.py two_way_comparison), so that seeds, not (user, seed) "
                   "pairs, are the replicates of training; per seed: each seed's own difference; same sign: the "
                   "seeds whose difference has the sign of the overall one. The verdict is no measurable "
                   "difference when the interval holds 0.")


def fmt_flags(flags):
    return f"`{shlex.join(flags)}`" if flags else "(defaults)"


def format_report(report):
    """The markdown text of a report (the dict main() writes as JSON)."""
    seeds = report["seeds"]
    teacher = report["teacher"]
    configs = report["configs"]
    lines = [f"## Seeds on `{report['dataset']}`: {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
             f"({', '.join(map(str, seeds))}); {teacher['description']}", "",
             f"Command: `{report['command']}`", ""]
    for label, c in configs.items():
        extra = f"A + {fmt_flags(c['extra_flags'])} → " if c["extra_flags"] else ""
        lines.append(f"- **{label}**: {extra}{fmt_flags(c['flags'])}")
    lines += ["", "Mean ± sd over seeds (sample sd; – for one seed); the student at its best validation epoch.", "",
              "| config | " + " | ".join(title for _, title, _ in QUANTITIES) + " |",
              "|---|" + "---:|" * len(QUANTITIES)]
    for label, c in configs.items():
        cells = [fmt_mean_sd(c["summary"][k]["mean"], c["summary"][k]["sd"], d) for k, _, d in QUANTITIES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "Per seed:", "",
              "| seed | config | run folder | teacher | " + " | ".join(t for _, t, _ in QUANTITIES) + " |",
              "|---:|---|---|---|" + "---:|" * len(QUANTITIES)]
    for i, seed in enumerate(seeds):
        for label, c in configs.items():
            r = c["runs"][i]
            cells = [fmt_number(r["values"][k], d) for k, _, d in QUANTITIES]
            lines.append(f"| {seed} | {label} | {r['run_dir']} | {r['teacher_ckpt']} | " + " | ".join(cells) + " |")

    comparison = report.get("comparison")
    if comparison:
        lines += ["", comparison["note"], "",
                  "| model | metric | seeds | users | A | B | B − A (%) | 95 % interval (%) | per seed (%) "
                  "| same sign | verdict |",
                  "|---|---|---:|---:|---:|---:|---:|---|---|---:|---|"]
        for c in comparison["rows"]:
            lines.append(f"| {c['model']} | {c['metric']} | {c['n_seeds']} | {c['n_users']} | {c['mean_a']:.4f} | "
                         f"{c['mean_b']:.4f} | " + " | ".join(comparison_cells(c)) + " |")
    return "\n".join(lines) + "\n"


def teacher_description(mode, n_configs, ckpt=None):
    text = TEACHER_MODES[mode]
    if mode == "shared" and n_configs == 1:
        text = "teacher retrained per seed (trained once, then distilled)"
    if mode == "fixed":
        text += f" (`{ckpt}`)"
    return text


def json_safe(x):
    """NaN / inf to None, numpy scalars to Python numbers, recursively."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------- command line

def write_report(text, data, out):
    """The markdown table to ``out``, the same numbers as JSON beside it, and the table on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(data, f, indent=2)
    print(text)
    print(f"written {out} and {os.path.splitext(out)[0]}.json")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)   # so that main.py's --seed is not taken for --seeds
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="run every configuration with each seed")
    p.add_argument("--compare", default=None, metavar="FLAGS",
                   help='configuration B: A plus these main.py flags (one quoted string, e.g. "--no_kd")')
    p.add_argument("--share_teacher", action="store_true",
                   help="per seed, train one teacher and distil it in every configuration")
    p.add_argument("--out", default=None, help="markdown table (default: runs_dir/<dataset>/seeds-<time>.md)")
    p.add_argument("--data_path", default="data")
    p.add_argument("--dataset", default="movielens")
    p.add_argument("--runs_dir", default="runs")
    return p


def glue_compare(argv):
    """``--compare "--no_kd"`` as ``--compare=--no_kd``: argparse takes a separate value that starts
    with a dash for an option of its own."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--compare" and i + 1 < len(argv):
            out.append("--compare=" + argv[i + 1])
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def check_flags(seeds, passthrough, compare):
    """A one-line complaint about flags this script cannot run with, or None."""
    if len(set(seeds)) != len(seeds):
        return f"--seeds {' '.join(map(str, seeds))}: a seed is repeated"
    for name in OWN_FLAGS:
        if flag_given(passthrough, name) or flag_given(compare, name):
            hint = " (use --seeds)" if name == "--seed" else ""
            return f"{name}: set by this script for every run; leave it out{hint}"
    if flag_given(compare, "--teacher_ckpt"):
        return "--teacher_ckpt belongs among the main.py flags (shared by both configurations), not in --compare"
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, passthrough = build_parser().parse_known_args(glue_compare(argv))
    try:
        compare = shlex.split(args.compare) if args.compare is not None else None
    except ValueError as e:
        print(f"seeds: --compare {args.compare!r}: {e}", file=sys.stderr)
        return 2
    problem = check_flags(args.seeds, passthrough, compare or [])
    if problem:
        print(f"seeds: {problem}", file=sys.stderr)
        return 2

    base = ["--data_path", args.data_path, "--dataset", args.dataset, "--runs_dir", args.runs_dir] + passthrough
    configs = {"A": []}
    if compare is not None:
        configs["B"] = compare
    for label, extra in configs.items():   # a flag main.py rejects fails now, not after hours of runs
        try:
            parse_main_args(base + extra)
        except SystemExit:   # argparse printed why
            print(f"seeds: config {label}: main.py rejects its flags (see above)", file=sys.stderr)
            return 2
        except UserError as e:
            print(f"seeds: config {label}: {e}", file=sys.stderr)
            return 2
    mode = teacher_mode(passthrough, args.share_teacher)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(args.runs_dir, args.dataset, f"seeds-{stamp}.md")
    workdir = os.path.join(args.runs_dir, args.dataset, f"seeds-{stamp}")
    try:
        os.makedirs(workdir, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as e:
        print(f"seeds: cannot create {e.filename} ({e.strerror})", file=sys.stderr)
        return 1

    try:
        records, per_user = run_seeds(base, configs, args.seeds, mode, workdir, need_per_user=compare is not None)
        comparison = None
        if compare is not None:
            models = ["student"] if mode in ("shared", "fixed") else ["teacher", "student"]
            comparison = dict(
                note=COMPARISON_NOTE + ("" if "teacher" in models else " The teacher is shared by A and B, so only "
                                                                       "the student is compared."),
                models=models,
                rows=compare_configs(per_user, args.seeds, models))
    except RunFailed as e:
        print(f"seeds: {e}", file=sys.stderr)
        return 1

    report = dict(
        dataset=args.dataset,
        command="python scripts/seeds.py " + shlex.join(argv),
        seeds=list(args.seeds),
        teacher=dict(mode=mode, shared=mode in ("shared", "fixed"),
                     description=teacher_description(mode, len(configs), flag_value(passthrough, "--teacher_ckpt"))),
        configs={label: dict(flags=passthrough + extra, extra_flags=extra, runs=records[label],
                             summary=summarise_runs(records[label]))
                 for label, extra in configs.items()},
        comparison=comparison,
    )
    report = json_safe(report)
    write_report(format_report(report), report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

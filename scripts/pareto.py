"""Students of every size, with and without distillation: accuracy against size and serving time.

    python scripts/pareto.py --dataset tiktok [--seeds 1 2 3] [--sizes 8 16 32 64] [--resume_dir DIR] [main.py flags]

Per seed, one teacher is trained (stage 1) and shared by every student of that seed. Each size d
of ``--sizes`` is then distilled three ways: random initialisation with KD, random initialisation
with ``--no_kd`` (the one-factor control of KD), and the default initialisation from the teacher
with KD. Writes ``docs/pareto-<dataset>.png`` (test Recall@20 against the student's parameters
and against its inference time for 1024 users, mean with sd error bars over seeds, the teacher as
a point) and the numbers as markdown and JSON beside it (``--out`` sets the picture's path). At each
size the table sets KD against its control (random initialisation with and without KD) on per-user
test Recall@20: the relative difference with its 95 % interval over seeds and test users
(utility/stats.py two_way_comparison), every seed's difference and the verdict.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utility import pipeline  # noqa: E402
from scripts.seeds import (COMPARISON_NOTE, comparison_cells, json_safe, load_per_user, seeds_by_users,  # noqa: E402
                           write_report)
from utility.stats import two_way_comparison  # noqa: E402

VARIANTS = {
    "random init, KD": ["--student_init", "random"],
    "random init, no KD": ["--student_init", "random", "--no_kd"],
    "teacher init, KD": ["--student_init", "teacher"],
}
KD, CONTROL = "random init, KD", "random init, no KD"   # the one-factor comparison of KD at each size


def run(flags, results_file):
    """A main.py run's results, or those of the same run already in the sweep's folder (--resume_dir)."""
    if os.path.exists(results_file):
        with open(results_file) as f:
            return json.load(f)
    code = pipeline.run_command(flags + ["--results_json", results_file, "--no_plot"])
    if code != 0:
        sys.exit(f"pareto: main.py {' '.join(flags)} failed with exit code {code}")
    with open(results_file) as f:
        return json.load(f)


def collect(base, seeds, sizes, workdir):
    """({"teacher": [per-seed points], variant: {size: [per-seed points]}}, {variant: {size: [per-seed
    run folders]}}); a point is (test recall@20, params, inference ms)."""
    points, run_dirs = {"teacher": []}, {}
    for seed in seeds:
        seed_flags = base + ["--seed", str(seed)]
        print(f"== seed {seed}: teacher", flush=True)
        teacher = run(seed_flags + ["--stage", "teacher"], os.path.join(workdir, f"teacher-{seed}.json"))
        ckpt = os.path.join(teacher["run_dir"], "teacher.pt")
        points["teacher"].append((teacher["teacher"]["test"]["recall@20"], teacher["teacher"]["params"],
                                  teacher["efficiency"]["teacher_infer_ms"]))
        for label, extra in VARIANTS.items():
            for d in sizes:
                print(f"== seed {seed}: {label}, d = {d}", flush=True)
                r = run(seed_flags + ["--stage", "student", "--teacher_ckpt", ckpt, "--student_embed_size", str(d)]
                        + extra, os.path.join(workdir, f"{label.replace(' ', '').replace(',', '-')}-{d}-{seed}.json"))
                points.setdefault(label, {}).setdefault(d, []).append(
                    (r["student"]["test"]["recall@20"], r["student"]["params"], r["efficiency"]["student_infer_ms"]))
                run_dirs.setdefault(label, {}).setdefault(d, []).append(r["run_dir"])
    return points, run_dirs


def kd_effect(run_dirs, metric="recall@20"):
    """{size: :func:`utility.stats.two_way_comparison` of KD (B) against its control (A)} over seeds and
    the students' test users."""
    out = {}
    for d, control_dirs in sorted(run_dirs[CONTROL].items()):
        control = [load_per_user(run_dir, "student") for run_dir in control_dirs]
        kd = [load_per_user(run_dir, "student") for run_dir in run_dirs[KD][d]]
        out[d] = two_way_comparison(*seeds_by_users(control, kd, metric))
    return out


def mean_sd(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def table(points, effects, dataset, seeds):
    lines = [f"Students on `{dataset}`: test Recall@20, mean ± sd over seeds {', '.join(map(str, seeds))} "
             f"(teacher retrained per seed, shared by that seed's students)", "",
             "| model | d | params | infer ms | test Recall@20 |", "|---|---:|---:|---:|---:|"]
    t = np.asarray(points["teacher"])
    lines.append(f"| teacher | | {int(t[0, 1]):,} | {t[:, 2].mean():.1f} | "
                 "{:.4f} ± {:.4f} |".format(*mean_sd(t[:, 0])))
    for label in VARIANTS:
        for d, rows in sorted(points[label].items()):
            rows = np.asarray(rows)
            lines.append(f"| {label} | {d} | {int(rows[0, 1]):,} | {rows[:, 2].mean():.1f} | "
                         "{:.4f} ± {:.4f} |".format(*mean_sd(rows[:, 0])))
    lines += ["", f"KD at each size: {KD} (B) against {CONTROL} (A), test Recall@20. {COMPARISON_NOTE}", "",
              "| d | A | B | B − A (%) | 95 % interval (%) | per seed (%) | same sign | verdict |",
              "|---:|---:|---:|---:|---|---|---:|---|"]
    for d, c in effects.items():
        lines.append(f"| {d} | {c['mean_a']:.4f} | {c['mean_b']:.4f} | " + " | ".join(comparison_cells(c)) + " |")
    return "\n".join(lines) + "\n"


def plot(points, path, dataset):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, column, xlabel in ((axes[0], 1, "parameters held at serving time"),
                               (axes[1], 2, "inference ms (1024 users, every item scored)")):
        for label, marker in zip(VARIANTS, "osD"):
            sizes = sorted(points[label])
            rows = [np.asarray(points[label][d]) for d in sizes]
            x = [r[:, column].mean() for r in rows]
            stats = [mean_sd(r[:, 0]) for r in rows]
            ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], marker=marker, capsize=3, label=label)
            for xi, (m, _), d in zip(x, stats, sizes):
                ax.annotate(f"d={d}", (xi, m), textcoords="offset points", xytext=(4, -10), fontsize=7)
        t = np.asarray(points["teacher"])
        m, s = mean_sd(t[:, 0])
        ax.errorbar([t[:, column].mean()], [m], yerr=[s], marker="*", markersize=12, color="k", capsize=3,
                    linestyle="none", label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test Recall@20")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Students of every size on {dataset}: mean ± sd over seeds")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default="data")
    p.add_argument("--dataset", default="movielens")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--out", default=None, help="the picture (default: docs/pareto-<dataset>.png)")
    p.add_argument("--resume_dir", default=None,
                   help="a sweep's folder: runs whose results file is there are not run again")
    args, passthrough = p.parse_known_args(argv)
    base = ["--data_path", args.data_path, "--dataset", args.dataset, "--runs_dir", args.runs_dir] + passthrough
    out = args.out or os.path.join(ROOT, "docs", f"pareto-{args.dataset}.png")
    workdir = args.resume_dir or os.path.join(args.runs_dir, args.dataset, f"pareto-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(workdir, exist_ok=True)
    points, run_dirs = collect(base, args.seeds, args.sizes, workdir)
    effects = kd_effect(run_dirs)
    plot(points, out, args.dataset)
    data = {k: (v if k == "teacher" else {str(d): r for d, r in v.items()}) for k, v in points.items()}
    data["KD against no KD"] = {str(d): c for d, c in effects.items()}
    write_report(table(points, effects, args.dataset, args.seeds), json_safe(data), os.path.splitext(out)[0] + ".md")
    print(f"written {out}")


if __name__ == "__main__":
    main()

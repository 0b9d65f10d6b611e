"""The ablation study of docs/method.md on one dataset: every variant distils the same teacher.

    python scripts/ablation.py --dataset tiktok [--out ablation.md] [main.py flags]

Variants: full PromptMM; w/o prompt (both stages without the prompt module, so it trains a teacher
of its own); w/o pair-wise KD; w/o list-wise KD; w/o embedding KD; w/o re-weighting; w/o
disentangling; and the same student with no KD at all (random initialisation, every KD weight 0).
Writes a markdown table of test (and validation) Recall@20 / NDCG@20, and the same as JSON.
Flags after the script's own are passed to every main.py run (e.g. --seed, --student_epoch).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as promptmm  # noqa: E402

NO_KD = ["--student_init", "random", "--kd_pair_weight", "0", "--kd_list_weight", "0", "--kd_emb_weight", "0"]
VARIANTS = [
    ("PromptMM (full)", []),
    ("w/o prompt", ["--no_prompt"]),
    ("w/o pair-wise KD", ["--kd_pair_weight", "0"]),
    ("w/o list-wise KD", ["--kd_list_weight", "0"]),
    ("w/o embedding KD", ["--kd_emb_weight", "0"]),
    ("w/o re-weighting", ["--no_list_reweight"]),
    ("w/o disentangling", ["--no_disentangle"]),
    ("student without KD", NO_KD),
]


def run(flags, results_file):
    code = promptmm.main(flags + ["--results_json", results_file, "--no_plot"])
    if code != 0:
        sys.exit(f"ablation: main.py {' '.join(flags)} failed with exit code {code}")
    with open(results_file) as f:
        return json.load(f)


def teacher_checkpoint(base, workdir, extra, label):
    """Train a teacher (stage 1 only) and return the path of its teacher.pt."""
    print(f"== training the teacher for: {label}", flush=True)
    results = run(base + ["--stage", "teacher"] + extra, os.path.join(workdir, f"teacher{len(os.listdir(workdir))}.json"))
    return os.path.join(results["run_dir"], "teacher.pt"), results["teacher"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default="data")
    p.add_argument("--dataset", default="movielens")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--teacher_ckpt", default=None, help="reuse this teacher for every variant but w/o prompt")
    p.add_argument("--out", default=None, help="markdown table (default: runs_dir/<dataset>/ablation-<time>.md)")
    args, passthrough = p.parse_known_args(argv)
    base = ["--data_path", args.data_path, "--dataset", args.dataset, "--runs_dir", args.runs_dir] + passthrough
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(args.runs_dir, args.dataset, f"ablation-{stamp}.md")
    workdir = os.path.join(args.runs_dir, args.dataset, f"ablation-{stamp}")
    os.makedirs(workdir, exist_ok=True)

    teachers = {}
    if args.teacher_ckpt:
        teachers["prompt"] = (args.teacher_ckpt, None)
    rows = []
    for label, extra in VARIANTS:
        key = "no_prompt" if "--no_prompt" in extra else "prompt"
        if key not in teachers:
            teachers[key] = teacher_checkpoint(base, workdir, ["--no_prompt"] if key == "no_prompt" else [], label)
        ckpt = teachers[key][0]
        print(f"== {label}: {' '.join(extra) or '(defaults)'}", flush=True)
        r = run(base + ["--stage", "student", "--teacher_ckpt", ckpt] + extra,
                os.path.join(workdir, f"variant{len(rows)}.json"))
        rows.append(dict(variant=label, flags=" ".join(extra), run_dir=r["run_dir"], teacher_ckpt=ckpt,
                         teacher_trained="teacher_history" in r, best_epoch=r["student"]["best_epoch"],
                         val=r["student"]["val"], test=r["student"]["test"], teacher_test=r["teacher"]["test"],
                         teacher_val=r["teacher"]["val"]))

    teacher_rows = [(f"teacher{' (no prompt)' if '--no_prompt' in r['flags'] else ''}", r) for r in rows
                    if r["variant"] in ("PromptMM (full)", "w/o prompt")]
    lines = [f"Ablation on `{args.dataset}` (student: test split at the best validation epoch; "
             f"command: `python scripts/ablation.py --dataset {args.dataset}"
             f"{' ' + ' '.join(passthrough) if passthrough else ''}`)", "",
             "| variant | flags | test Recall@20 | test NDCG@20 | val Recall@20 | best epoch |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in teacher_rows:
        lines.append(f"| {name} | | {r['teacher_test']['recall@20']:.4f} | {r['teacher_test']['ndcg@20']:.4f} | "
                     f"{r['teacher_val']['recall@20']:.4f} | |")
    for r in rows:
        lines.append(f"| {r['variant']} | `{r['flags']}` | {r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | "
                     f"{r['val']['recall@20']:.4f} | {r['best_epoch']} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    print(text)
    print(f"written {out}")


if __name__ == "__main__":
    main()

"""Does a run fit a large dataset? One epoch of each stage plus full evaluation, timed, with peak memory.

    python bench/scale.py --like netflix --scale 10 [--batch_size 65536] [main.py flags]

Generates (once, cached under bench/.data/) a synthetic dataset shaped like the chosen published
one times ``--scale`` and runs ``main.py`` on it for one teacher epoch and one distillation epoch,
each followed by the validation pass, then the test pass. Nothing in the pipeline forms a dense
users x items or items x items matrix: evaluation scores users in blocks, sampling tests
membership by binary search, and graphs are sparse. Prints and writes
bench/results/scale-<like>x<scale>-<device>-<date>.md with the seconds of each phase and the
peak resident memory of the process.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import main as promptmm  # noqa: E402
from bench.benchmark import ensure_data  # noqa: E402
from data.synthetic import SHAPES  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like", choices=sorted(SHAPES), default="netflix")
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--batch_size", type=int, default=65536, help="triples per step (large: few full-graph steps)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    b, extra = p.parse_known_args(argv)
    start = time.perf_counter()
    data_path, dataset = ensure_data(b.like, b.scale, b.seed)
    generate_s = time.perf_counter() - start
    flags = ["--data_path", data_path, "--dataset", dataset, "--preset", b.like, "--epoch", "1", "--student_epoch", "1",
             "--batch_size", str(b.batch_size), "--no_plot", "--seed", str(b.seed), *extra]
    with tempfile.TemporaryDirectory() as runs:
        results_file = os.path.join(runs, "results.json")
        start = time.perf_counter()
        code = promptmm.main(flags + ["--runs_dir", runs, "--results_json", results_file])
        total_s = time.perf_counter() - start
        if code != 0:
            sys.exit(f"scale run failed with exit code {code}")
        with open(results_file) as f:
            run = json.load(f)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    device = run["device"]
    # the dataset is generated once and cached under bench/.data/
    rows = [("dataset generation", generate_s)] if generate_s > 1.0 else []
    rows += [("teacher epoch (training)", run["teacher"]["seconds_per_epoch"]),
             ("teacher validation pass", run["teacher"]["eval_seconds"]),
             ("distillation epoch (training)", run["student"]["seconds_per_epoch"]),
             ("student validation pass", run["student"]["eval_seconds"]),
             ("whole run (load, both stages, validation and test passes)", total_s)]
    lines = [f"# Scale check: {b.like} x{b.scale:g} on {device} ({datetime.date.today().isoformat()})", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
             f"{run['n_users']} users, {run['n_items']} items, modalities {run['modalities']}; "
             f"batch {b.batch_size}; command: `python bench/scale.py --like {b.like} --scale {b.scale:g} "
             f"--batch_size {b.batch_size}{' ' + ' '.join(extra) if extra else ''}`", "",
             "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {secs:.1f} |" for name, secs in rows]
    lines += ["", f"Peak resident memory of the process: {peak_gb:.2f} GiB.", "",
              f"Test Recall@20: teacher {run['teacher']['test']['recall@20']:.4f}, "
              f"student {run['student']['test']['recall@20']:.4f}, MostPopular "
              f"{run['most_popular']['test']['recall@20']:.4f} (one epoch each: a capacity check, not a result)."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(b.out, exist_ok=True)
    out = os.path.join(b.out, f"scale-{b.like}x{b.scale:g}-{device}-{datetime.date.today().isoformat()}.md")
    with open(out, "w") as f:
        f.write(text)
    print(f"written {out}")


if __name__ == "__main__":
    main()

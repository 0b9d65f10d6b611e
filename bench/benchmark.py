"""How far each stage is from what the arithmetic on this machine allows.

    python bench/benchmark.py --like tiktok [--scale 1.0] [--device cpu] [--epochs 4]

For a synthetic dataset shaped like one of the paper's (data/synthetic.py, cached under
bench/.data/), it runs ``main.py``'s own pipeline for a few epochs of each stage and reports:

* teacher and distillation seconds per epoch (median over the epochs after the first, which is
  the warm-up), and one full evaluation pass over every validation user (median of repeats);
* the floor of each: the step's products counted from the model's shapes (bench/flops.py) and
  divided by product rates measured on this machine before and after the run (the best of 20
  timings each): fp32 dense matmul on the model's dominant product shape (items x widest
  modality @ modality x embedding), sparse-dense products on the run's normalised graph, the
  scoring product (1024 users x embedding @ embedding x items) and torch.topk over a score block;
* peak memory: RSS on CPU (above the interpreter with torch imported, and in total), max
  allocated on CUDA; its target is 2 x (feature bytes + graph bytes + parameters and optimizer
  state).

Writes bench/results/<device>-<date>.md and .json.
"""
import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utility import pipeline  # noqa: E402
from bench import flops  # noqa: E402
from data.synthetic import SHAPES, make_synthetic  # noqa: E402
from utility.sparse_ops import sparse_dense  # noqa: E402
from utility.evaluate import RankingEvaluator, dot_scores  # noqa: E402
from utility.graph import build_graphs, sym_norm_blocks, to_torch_csr  # noqa: E402
from utility.load_data import load_dataset  # noqa: E402
from utility.parser import parse_args  # noqa: E402


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats, best=False):
    """Median seconds of ``fn`` after a warm-up call (the fastest, with ``best``)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(min(times) if best else np.median(times))


def measure_rates(ds, embed_size, device, repeats=20):
    """Achieved fp32 dense-product, sparse-product and top-k rates on this run's shapes: the best of
    ``repeats`` timings, so that the floor is what the machine can do, not what it did once."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    widest = max(ds.modality_dims.values())
    x = torch.randn(ds.n_items, widest, generator=gen).to(device)
    w = torch.randn(widest, embed_size, generator=gen).to(device)
    dense_s = timed(lambda: x @ w, device, repeats, best=True)
    norm_ui, norm_iu = (to_torch_csr(m).to(device) for m in sym_norm_blocks(ds.train))
    e_user = torch.randn(ds.n_users, embed_size, generator=gen).to(device)
    e_item = torch.randn(ds.n_items, embed_size, generator=gen).to(device)
    # one LightGCN layer: users from items and items from users
    sparse_s = timed(lambda: (sparse_dense(norm_ui, e_item), sparse_dense(norm_iu, e_user)), device, repeats, best=True)
    rows = min(1024, ds.n_users)
    users = torch.randn(rows, embed_size, generator=gen).to(device)
    items = torch.randn(ds.n_items, embed_size, generator=gen).to(device)
    score_s = timed(lambda: users @ items.T, device, repeats, best=True)
    scores = torch.randn(rows, ds.n_items, generator=gen).to(device)
    topk_s = timed(lambda: torch.topk(scores, 50, dim=1), device, repeats, best=True)
    return dict(dense_flops_per_s=2.0 * ds.n_items * widest * embed_size / dense_s,
                dense_shape=[ds.n_items, widest, embed_size],
                sparse_flops_per_s=2.0 * 2 * ds.train.nnz * embed_size / sparse_s,
                scoring_flops_per_s=2.0 * rows * embed_size * ds.n_items / score_s,
                topk_elements_per_s=rows * ds.n_items / topk_s)


def probe_rates(path, embed_size, device, threads):
    """measure_rates in a fresh process (see main)."""
    if threads:
        torch.set_num_threads(threads)
    return measure_rates(load_dataset(path), embed_size, pipeline.resolve_device(device))


def shapes_of(ds, args):
    return dict(n_users=ds.n_users, n_items=ds.n_items, embed_size=args.embed_size, token_size=args.embed_size,
                modality_dims=ds.modality_dims, nnz_adj=2 * ds.train.nnz, nnz_train=ds.train.nnz,
                cf_layers=args.cf_layers, mm_layers=args.mm_layers, prompt=not args.no_prompt,
                feat_prompt=args.feat_prompt_weight != 0, emb_prompt=args.emb_prompt_weight != 0)


def floor_seconds(counts, rates):
    return counts["dense"] / rates["dense_flops_per_s"] + counts["sparse"] / rates["sparse_flops_per_s"]


def memory_target_mb(ds, args):
    """2 x (features + graphs + parameters and optimizer state), in MB."""
    feature_bytes = sum(x.nbytes for x in ds.modality_feats.values())
    # the graphs the run builds (the two LightGCN blocks and the four mean-aggregation matrices)
    graph_bytes = sum(t.nbytes for g in build_graphs(ds.train, torch.device("cpu")).values()
                      for t in (g.crow_indices(), g.col_indices(), g.values()))
    d = args.embed_size
    teacher = (ds.n_users + ds.n_items) * d + sum((dm + 1) * d for dm in ds.modality_dims.values()) + 2 * (d + 1) * d
    student = (ds.n_users + ds.n_items) * (args.student_embed_size or d)
    param_bytes = 4 * 3 * (teacher + student)        # weights + AdamW's two moments
    total = feature_bytes + graph_bytes + param_bytes
    return dict(feature_mb=feature_bytes / 2**20, graph_mb=graph_bytes / 2**20, params_and_optimizer_mb=param_bytes / 2**20,
                target_mb=2 * total / 2**20)


def ensure_data(like, scale, seed):
    folder = os.path.join(ROOT, "bench", ".data")
    name = f"{like}-x{scale:g}-seed{seed}"
    path = os.path.join(folder, name)
    if not os.path.exists(os.path.join(path, "meta.json")):
        os.makedirs(folder, exist_ok=True)
        make_synthetic(like, path, scale=scale, seed=seed, force=True, verbose=True)
    return folder, name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like", choices=sorted(SHAPES), default="tiktok")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--epochs", type=int, default=4, help="epochs per stage (the first is a warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the evaluation pass and the rate probes")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further main.py flags")
    b = p.parse_args(argv)
    if b.threads:
        torch.set_num_threads(b.threads)
    device = pipeline.resolve_device(b.device)
    data_path, dataset = ensure_data(b.like, b.scale, b.seed)

    # the baseline: the interpreter with torch, the project and torch's optimizer machinery (imported
    # lazily by the first optimizer) loaded, before any data
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).step()
    # rates before the run, probed in a child process so that this one's memory stays untouched
    embed_size = parse_args(["--preset", b.like, *b.extra]).embed_size
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        rates_before = pool.apply(probe_rates, (os.path.join(data_path, dataset), embed_size, b.device, b.threads))
    baseline_rss = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    flags = ["--data_path", data_path, "--dataset", dataset, "--preset", b.like, "--device", device.type,
             "--epoch", str(b.epochs), "--eval_every", str(b.epochs),
             "--no_plot", "--seed", str(b.seed), *b.extra]
    if b.threads:
        flags += ["--threads", str(b.threads)]
    with tempfile.TemporaryDirectory() as runs:
        results_file = os.path.join(runs, "results.json")
        code = pipeline.run_command(flags + ["--runs_dir", runs, "--results_json", results_file])
        if code != 0:
            sys.exit(f"benchmark run failed with exit code {code}")
        with open(results_file) as f:
            run = json.load(f)
    peak_total = peak_rss_mb()
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None

    args = parse_args(flags)
    ds = load_dataset(os.path.join(data_path, dataset))
    # the machine's rates drift over minutes (a shared host): probe before and after the run, keep the best
    after = measure_rates(ds, args.embed_size, device)
    rates = {k: max(v, after[k]) if isinstance(v, float) else v for k, v in rates_before.items()}
    shapes = shapes_of(ds, args)
    steps = flops.epoch_steps(ds.train.nnz, args.batch_size)
    teacher_counts = {k: v * steps for k, v in flops.teacher_step(shapes, stage=1).items()}
    t2 = flops.teacher_step(shapes, stage=2)
    s2 = flops.student_step(shapes, args.student_batch_size, args.neg_sample_num,
                            args.student_embed_size or args.embed_size, args.embed_size)
    student_counts = {k: (t2[k] + s2[k]) * flops.epoch_steps(ds.train.nnz, args.student_batch_size)
                      for k in ("dense", "sparse")}

    # one full evaluation pass (all validation users) with fixed embeddings
    evaluator = RankingEvaluator(ds.val, [ds.train], args.topk, device)
    gen = torch.Generator().manual_seed(1)
    user = torch.randn(ds.n_users, args.embed_size, generator=gen).to(device)
    item = torch.randn(ds.n_items, args.embed_size, generator=gen).to(device)
    eval_s = timed(lambda: evaluator(dot_scores(user, item)), device, b.repeats)
    ev = flops.eval_pass(evaluator.users.numel(), ds.n_items, args.embed_size)
    eval_floor = ev["dense"] / rates["scoring_flops_per_s"] + ev["topk_elements"] / rates["topk_elements_per_s"]

    def median_epoch(stage):
        secs = [h["seconds"] for h in run[f"{stage}_history"]]
        return float(np.median(secs[1:] if len(secs) > 1 else secs))

    memory = memory_target_mb(ds, args)
    measured_mem = peak_cuda if peak_cuda is not None else peak_total - baseline_rss
    rows = [
        ("teacher epoch (s)", median_epoch("teacher"), floor_seconds(teacher_counts, rates), 2.5),
        ("distillation epoch (s)", median_epoch("student"), floor_seconds(student_counts, rates), 2.5),
        ("full evaluation (s)", eval_s, eval_floor, 2.0),
        ("peak memory (MB)", measured_mem, memory["target_mb"] / 2, 2.0),
    ]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name()} (host: {machine})"
    else:
        try:
            with open("/proc/cpuinfo") as f:
                model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
            machine = f"{model}, " + machine
        except (OSError, StopIteration):
            pass
    summary = dict(
        date=datetime.date.today().isoformat(), device=device.type, machine=machine, like=b.like, scale=b.scale,
        dataset=dict(n_users=ds.n_users, n_items=ds.n_items, n_train=int(ds.train.nnz), modalities=ds.modality_dims),
        config={k: getattr(args, k) for k in ("batch_size", "embed_size", "cf_layers", "mm_layers", "neg_sample_num")},
        steps_per_epoch=steps, rates=rates, flops=dict(teacher_epoch=teacher_counts, student_epoch=student_counts,
                                                       eval_pass=ev),
        memory=dict(memory, baseline_rss_mb=baseline_rss, peak_rss_total_mb=peak_total, peak_cuda_allocated_mb=peak_cuda),
        rows=[dict(stage=s, measured=m, floor=f, ratio=m / f, target_ratio=t) for s, m, f, t in rows],
        run=dict(teacher_epochs=[h["seconds"] for h in run["teacher_history"]],
                 student_epochs=[h["seconds"] for h in run["student_history"]]),
    )
    lines = [f"# Benchmark: {b.like} x{b.scale:g} on {device.type} ({summary['date']})", "",
             f"Machine: {machine}", "",
             f"Data: {ds.n_users} users, {ds.n_items} items, {ds.train.nnz} training interactions, "
             f"modalities {ds.modality_dims}; batch {args.batch_size} ({steps} steps per epoch)", "",
             f"Rates: dense {rates['dense_flops_per_s'] / 1e9:.1f} GFLOP/s on {rates['dense_shape']}, "
             f"sparse {rates['sparse_flops_per_s'] / 1e9:.2f} GFLOP/s, scoring {rates['scoring_flops_per_s'] / 1e9:.1f} "
             f"GFLOP/s (1024 users x items), top-k {rates['topk_elements_per_s'] / 1e9:.2f} G elements/s (best of 20)",
             "", "| stage | measured | floor | measured/floor | target |", "|---|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        floor_label = f"{r['floor']:.3f}" if "memory" not in r["stage"] else f"{r['floor']:.0f} (inputs)"
        lines.append(f"| {r['stage']} | {r['measured']:.3f} | {floor_label} | {r['ratio']:.2f} | <= {r['target_ratio']:g} |")
    mem_note = ("peak memory is the RSS the run adds above the interpreter with torch and the project imported "
                f"({baseline_rss:.0f} MB; {peak_total:.0f} MB in total)" if peak_cuda is None
                else "peak memory is torch.cuda.max_memory_allocated")
    lines += ["", f"Memory: {mem_note}; inputs = features {memory['feature_mb']:.1f} MB + graphs "
              f"{memory['graph_mb']:.1f} MB + parameters and optimizer state {memory['params_and_optimizer_mb']:.1f} MB."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(b.out, exist_ok=True)
    stem = os.path.join(b.out, f"{device.type}-{summary['date']}")
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    print(f"written {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()

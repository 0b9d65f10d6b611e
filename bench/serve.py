"""Serving cost of the student against the teacher: top-20 over every item, per request and in bulk,
and the cost of refreshing each model's embeddings.

    python bench/serve.py --run_dir runs/tiktok/RUN --threads 1            # the Tiktok copy + 1 M items
    python bench/serve.py --data_path data --dataset tiktok --sizes data   # fresh models of its shape

Once trained, both models serve by the inner product of a user's row with every item's row, so a
request costs the same for the same width; what differs is what it takes to *refresh* those rows
(new interactions, new weights): the teacher runs its whole forward pass over the graphs, the
modality features and the prompts, the student only propagates its ID tables over the graph.
For each catalogue it times, with the code path of ``utility.recommend`` (training items excluded):

* the refresh: the model's full forward pass (median of ``--refreshes``);
* one request of one user: p50 and p99 latency over ``--requests`` random users;
* throughput: users per second in batches of ``--batch`` (1,024) users;
* optionally (``--faiss``) an HNSW inner-product index of the items against exact search on the
  Tiktok catalogue: overlap of the top-20 and queries per second.

Two catalogues: the dataset (with the run's trained weights when ``--run_dir`` is given, else
freshly initialised models of its shape) and a synthetic one of ``--items`` (10^6) items (fresh
models; serving cost does not depend on the weights). The machine may be shared: the header
reports the load average, and the numbers are only as quiet as the machine was.
Prints a table and writes bench/results/serve-<date>.json.
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

from Models import LightGCNStudent, Teacher  # noqa: E402
from utility.config import TeacherConfig  # noqa: E402
from utility.features import item_hard_tokens  # noqa: E402
from utility.graph import build_graphs  # noqa: E402
from utility.load_data import load_dataset  # noqa: E402
from utility.recommend import (HNSW_EF_CONSTRUCTION, HNSW_NEIGHBOURS, Recommender, build_faiss_index,  # noqa: E402
                               final_embeddings, load_student, load_teacher, read_checkpoint, read_config,
                               search_unseen)
from utility.run_io import write_json  # noqa: E402

TIKTOK_MODALITIES = {"image": 128, "audio": 128}   # the widths of the Tiktok copy's features


def synthetic_data(n_users, n_items, n_interactions, modalities, seed):
    """(train matrix, features) of random interactions (item popularity Zipf-like, as in real
    catalogues) and Gaussian features: the shapes are what serving cost depends on."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=n_interactions, p=popularity / popularity.sum())
    users = rng.integers(0, n_users, size=n_interactions)
    train = sp.csr_matrix((np.ones(n_interactions, np.float32), (users, items)), shape=(n_users, n_items))
    train.data[:] = 1.0   # repeated pairs count once
    feats = {m: rng.standard_normal((n_items, d), dtype=np.float32) for m, d in modalities.items()}
    return train, feats


def fresh_models(train, feats, cfg, seed):
    """Teacher and student of the data's shape with initial weights (the student at the teacher's width)."""
    torch.manual_seed(seed)
    graphs = build_graphs(train, torch.device("cpu"))
    tokens = torch.from_numpy(item_hard_tokens(feats, cfg.embed_size))
    teacher = Teacher(graphs, {m: torch.from_numpy(x) for m, x in feats.items()}, tokens, cfg).eval()
    student = LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"], cfg.embed_size, cfg.cf_layers).eval()
    return teacher, student


def serving_models(teacher, student, narrow=16):
    """The models compared: the teacher, the student, and a LightGCN student ``narrow`` wide (fresh
    weights: its cost, not its accuracy, is measured) on the same graph."""
    narrow_student = LightGCNStudent(student.norm_ui, student.norm_iu, narrow, student.n_layers).eval()
    return {"teacher": teacher, "student": student, f"student d={narrow}": narrow_student}


def run_models(run_dir):
    """Teacher and student of a finished run, with the dataset's training matrix."""
    config = read_config(run_dir)
    ds = load_dataset(os.path.join(config["data_path"], config["dataset"]), name=config["dataset"])
    device = torch.device("cpu")
    teacher = load_teacher(read_checkpoint(os.path.join(run_dir, "teacher.pt"), "teacher"), config, ds, device)
    student = load_student(read_checkpoint(os.path.join(run_dir, "student.pt"), "student"), config, ds, device)
    return ds.train.tocsr(), ds.modality_feats, teacher, student


def seconds(fn, repeats=1):
    """(wall seconds, CPU seconds) of each call, and the last call's result. On a shared machine the
    CPU seconds of this single-threaded process are the better guide to a quiet machine's time."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return np.asarray(wall), np.asarray(cpu), result


def serving_costs(recs, requests, batch, batches, rng):
    """Per model: latency of one-user requests (ms: p50, p99; wall and CPU) and users per second in
    batches of ``batch`` users, top-20 over every item. The models take turns on the same users, so
    that a change of the machine's load falls on all of them alike."""
    for rec in recs:
        rec.recommend([0], 20)   # warm-up
    latency = np.zeros((2, len(recs), requests))
    for j, user in enumerate(rng.integers(0, recs[0].n_users, size=requests)):
        for i, rec in enumerate(recs):
            latency[:, i, j] = np.concatenate(seconds(lambda: rec.recommend([user], 20))[:2]) * 1e3
    bulk = np.zeros((2, len(recs), batches))
    for j in range(batches):
        users = rng.integers(0, recs[0].n_users, size=batch)
        for i, rec in enumerate(recs):
            bulk[:, i, j] = np.concatenate(seconds(lambda: rec.recommend(users, 20))[:2])
    return [dict(p50_ms=float(np.percentile(latency[0, i], 50)), p99_ms=float(np.percentile(latency[0, i], 99)),
                 p50_cpu_ms=float(np.percentile(latency[1, i], 50)), p99_cpu_ms=float(np.percentile(latency[1, i], 99)),
                 requests=requests, users_per_s=float(batch / np.median(bulk[0, i])),
                 users_per_cpu_s=float(batch / np.median(bulk[1, i])), batch=batch, batches=batches)
            for i in range(len(recs))]


def buffer_mb(model):
    """Memory of a model's buffers (graphs, features, tokens): what its refresh reads besides its weights."""
    total = 0
    for b in model.buffers():
        parts = (b.crow_indices(), b.col_indices(), b.values()) if b.layout == torch.sparse_csr else (b,)
        total += sum(t.numel() * t.element_size() for t in parts)
    return total / 2**20


def measure_catalogue(key, name, train, models, args, rng):
    """Refresh and serving cost of each model ({label: module}) on one catalogue."""
    rows, recs = [], []
    for label, model in models.items():
        refresh, refresh_cpu, (user, item) = seconds(lambda: final_embeddings(model), args.refreshes)
        recs.append(Recommender(label, user.contiguous(), item.contiguous(), train, name, {}, ""))
        rows.append(dict(catalogue=key, name=name, model=label, n_users=int(user.shape[0]), n_items=int(item.shape[0]),
                         dim=int(user.shape[1]), params=sum(p.numel() for p in model.parameters()),
                         refresh_s=float(np.median(refresh)), refresh_cpu_s=float(np.median(refresh_cpu)),
                         refresh_repeats=args.refreshes,
                         refresh_inputs_mb=buffer_mb(model), serving_state_mb=(user.numel() + item.numel()) * 4 / 2**20))
    for row, cost in zip(rows, serving_costs(recs, args.requests, args.batch, args.batches, rng)):
        row.update(cost)
        print(format_row(row), flush=True)
    if args.faiss and key in args.faiss_catalogue:
        student = recs[list(models).index("student")]
        rows[list(models).index("student")]["ann"] = ann = ann_cost(student, args, rng)
        print("  student, " + format_ann(ann), flush=True)
    return rows


def ann_cost(rec, args, rng):
    """Exact top-20 (training items excluded) against a flat and an HNSW faiss index: overlap, queries
    per second in one batch, and CPU milliseconds of a query asked alone."""
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    users = np.sort(rng.choice(rec.n_users, size=min(args.ann_queries, rec.n_users), replace=False))
    queries, seen, singles = rec.user_emb[users].numpy(), rec.train[users], range(min(args.ann_single, users.size))
    wall, _, (exact, _) = seconds(lambda: rec.recommend(users, 20))
    _, cpu, _ = seconds(lambda: [rec.recommend(users[r:r + 1], 20) for r in singles])
    out = dict(queries=int(users.size), exact=dict(qps=users.size / wall[0], single_cpu_ms=cpu[0] / len(singles) * 1e3))
    for kind in ("flat", "hnsw"):
        build, _, index = seconds(lambda: build_faiss_index(rec.item_emb.numpy(), kind, args.hnsw_m,
                                                            args.hnsw_ef_construction))
        for ef in ((None,) if kind == "flat" else args.ef_search):
            if ef is not None:
                index.hnsw.efSearch = ef
            wall, _, (found, _) = seconds(lambda: search_unseen(index, queries, seen, 20))
            _, cpu, _ = seconds(lambda: [search_unseen(index, queries[r:r + 1], seen[r], 20) for r in singles])
            overlap = float(np.mean([len(set(f[f >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum())
                                     for f, e in zip(found, exact)]))
            out[kind if ef is None else f"{kind} ef={ef}"] = dict(
                overlap=overlap, qps=users.size / wall[0], single_cpu_ms=cpu[0] / len(singles) * 1e3, build_s=build[0])
    return out


def format_row(r):
    return (f"{r['name']:<26}{r['model']:<14}{r['n_items']:>10,}{r['dim']:>4}{r['refresh_s']:>10.3f}"
            f"{r['refresh_cpu_s']:>10.3f}{r['p50_ms']:>9.2f}{r['p50_cpu_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['users_per_s']:>10,.0f}{r['users_per_cpu_s']:>10,.0f}{r['serving_state_mb']:>10.1f}"
            f"{r['refresh_inputs_mb']:>10.1f}")


HEADER = (f"{'catalogue':<26}{'model':<14}{'items':>10}{'d':>4}{'refresh s':>10}{'(CPU s)':>10}{'p50 ms':>9}"
          f"{'(CPU)':>9}{'p99 ms':>9}{'users/s':>10}{'(/CPU s)':>10}{'serve MB':>10}{'refr. MB':>10}")


def format_ann(ann):
    parts = [f"{name}: overlap {v['overlap']:.4f}, {v['qps']:,.0f} q/s batched, {v['single_cpu_ms']:.3f} CPU ms "
             f"alone, build {v['build_s']:.1f} s" for name, v in ann.items() if isinstance(v, dict) and name != "exact"]
    return (f"top-20 of {ann['queries']} users, seen items excluded: exact {ann['exact']['qps']:,.0f} q/s batched, "
            f"{ann['exact']['single_cpu_ms']:.3f} CPU ms alone; " + "; ".join(parts))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", help="a finished run: its trained teacher and student on its dataset")
    p.add_argument("--data_path", default="data", help="without --run_dir: fresh models on this dataset")
    p.add_argument("--dataset", default="tiktok")
    p.add_argument("--sizes", nargs="+", choices=("data", "synthetic"), default=["data", "synthetic"])
    p.add_argument("--items", type=int, default=1_000_000, help="items of the synthetic catalogue")
    p.add_argument("--users", type=int, default=1_000_000, help="users of the synthetic catalogue")
    p.add_argument("--interactions", type=int, default=10_000_000, help="training interactions of the synthetic catalogue")
    p.add_argument("--requests", type=int, default=300, help="one-user requests timed per model")
    p.add_argument("--batch", type=int, default=1024, help="users per bulk request")
    p.add_argument("--batches", type=int, default=3, help="bulk requests timed per model")
    p.add_argument("--refreshes", type=int, default=3, help="forward passes timed per model")
    p.add_argument("--faiss", action="store_true", help="also an HNSW / flat faiss index of the student's items")
    p.add_argument("--faiss_catalogue", nargs="+", default=["data"], choices=("data", "synthetic"))
    p.add_argument("--ann_queries", type=int, default=2000)
    p.add_argument("--ann_single", type=int, default=200, help="queries also timed one at a time")
    p.add_argument("--ef_search", type=int, nargs="+", default=[16, 64, 256], help="HNSW search breadths")
    p.add_argument("--hnsw_m", type=int, default=HNSW_NEIGHBOURS, help="HNSW links per item")
    p.add_argument("--hnsw_ef_construction", type=int, default=HNSW_EF_CONSTRUCTION)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", f"serve-{datetime.date.today()}.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.faiss:
        import faiss  # noqa: F401  (fail before the long measurements)
    rng = np.random.default_rng(args.seed)
    load = os.getloadavg()
    print(f"serving cost on {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (a shared machine: other "
          f"jobs ran too); top-20 over every item, training items excluded")
    print(HEADER)
    rows, cfg, shapes = [], TeacherConfig(knn_k=0), {}
    if "data" in args.sizes:
        if args.run_dir:
            train, feats, teacher, student = run_models(args.run_dir)
            cfg = teacher.cfg
            name = f"{read_config(args.run_dir)['dataset']} (trained)"
        else:
            ds = load_dataset(os.path.join(args.data_path, args.dataset), name=args.dataset)
            train, feats = ds.train.tocsr(), ds.modality_feats
            teacher, student = fresh_models(train, feats, cfg, args.seed)
            name = f"{args.dataset} (fresh)"
        shapes["data"] = dict(name=name, n_users=train.shape[0], n_items=train.shape[1], n_train=int(train.nnz),
                              modalities={m: int(x.shape[1]) for m, x in feats.items()})
        rows += measure_catalogue("data", name, train, serving_models(teacher, student), args, rng)
        del teacher, student
    if "synthetic" in args.sizes:
        cfg = dataclasses.replace(cfg, knn_k=0)   # exact kNN graphs take hours at 10^6 items
        start = time.perf_counter()
        train, feats = synthetic_data(args.users, args.items, args.interactions, TIKTOK_MODALITIES, args.seed)
        teacher, student = fresh_models(train, feats, cfg, args.seed)
        shapes["synthetic"] = dict(n_users=args.users, n_items=args.items, n_train=int(train.nnz),
                                   modalities=TIKTOK_MODALITIES, build_s=time.perf_counter() - start)
        rows += measure_catalogue("synthetic", f"synthetic {args.items:,} items", train,
                                  serving_models(teacher, student), args, rng)
    result = dict(date=str(datetime.date.today()), command="python bench/serve.py " + " ".join(argv or sys.argv[1:]),
                  machine=dict(arch=platform.machine(), cpus=os.cpu_count(), threads=args.threads,
                               torch=torch.__version__, load_average_start=load, load_average_end=os.getloadavg(),
                               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20),
                  teacher_config=dataclasses.asdict(cfg), catalogues=shapes, rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(result, args.out)
    print(f"load average at the end {result['machine']['load_average_end'][0]:.1f}; peak resident memory "
          f"{result['machine']['peak_rss_gb']:.2f} GiB; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

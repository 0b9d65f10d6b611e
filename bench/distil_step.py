"""Distillation step time with the teacher's frozen parts propagated once, against the straightforward
forward pass, interleaved in one process.

    python bench/distil_step.py [--like tiktok | --data_path data --dataset tiktok]
                                [--student_batch_size 2048] [--steps 10] [--rounds 5] [--threads 1]
                                [--no_prompt | --emb_prompt_weight 0 ...]

Builds the teacher (random weights: the time does not depend on their values) and a lightgcn
student, freezes the teacher for stage 2, and times optimiser steps of the default distillation
loss, alternating ``Teacher.use_frozen_parts`` on and off round by round. Prints the median step
time of each and their ratio.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from Models import Teacher, build_student  # noqa: E402
from bench.benchmark import ensure_data  # noqa: E402
from data.synthetic import SHAPES  # noqa: E402
from utility.config import KDConfig, StudentConfig, TeacherConfig  # noqa: E402
from utility.features import item_hard_tokens  # noqa: E402
from utility.graph import build_graphs  # noqa: E402
from utility.load_data import load_dataset  # noqa: E402
from utility.objectives import student_terms  # noqa: E402
from utility.parser import parse_args  # noqa: E402
from utility.sampler import TripleSampler  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like", choices=sorted(SHAPES), default="tiktok", help="synthetic shape (without --data_path)")
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--rounds", type=int, default=5, help="timings of each variant, interleaved")
    b, rest = p.parse_known_args(argv)
    args = parse_args(rest)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "--data_path" in rest:
        path = os.path.join(args.data_path, args.dataset)
    else:
        folder, name = ensure_data(b.like, 1.0, args.seed)
        path = os.path.join(folder, name)
    ds = load_dataset(path)
    device = torch.device("cpu")
    graphs = build_graphs(ds.train, device)
    feats = {m: torch.from_numpy(x) for m, x in ds.modality_feats.items()}
    tokens = torch.from_numpy(item_hard_tokens(ds.modality_feats, args.embed_size))
    torch.manual_seed(args.seed)
    teacher = Teacher(graphs, feats, tokens, TeacherConfig.from_args(args))
    teacher.eval()
    teacher.freeze_for_distillation()
    cfg, kd = StudentConfig.from_args(args), KDConfig.from_args(args)
    student = build_student(cfg, ds.n_users, ds.n_items, graphs)
    params = list(student.parameters()) + [q for q in teacher.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    users, pos, neg, extra = (torch.as_tensor(a) for a in TripleSampler(ds.train, args.seed).epoch(kd.neg_sample_num))
    rows = slice(0, args.student_batch_size)

    def steps():
        start = time.perf_counter()
        for _ in range(b.steps):
            optimizer.zero_grad(set_to_none=True)
            terms = student_terms(student, teacher(), users[rows], pos[rows], neg[rows], extra[rows], cfg, kd)
            sum(terms.values()).backward()
            optimizer.step()
        return (time.perf_counter() - start) / b.steps

    times = {True: [], False: []}
    for mode in (True, False):   # warm-up
        teacher.use_frozen_parts = mode
        steps()
    for _ in range(b.rounds):
        for mode in (False, True):
            teacher.use_frozen_parts = mode
            times[mode].append(steps())
    before, after = statistics.median(times[False]), statistics.median(times[True])
    print(f"{os.path.basename(path)}: {ds.n_users} users, {ds.n_items} items, modalities {ds.modality_dims}; "
          f"batch {args.student_batch_size}, {torch.get_num_threads()} threads, prompts {'off' if args.no_prompt else 'on'}")
    print(f"distillation step, straightforward teacher forward: {before * 1e3:.1f} ms (median of {b.rounds})")
    print(f"distillation step, frozen parts propagated once:    {after * 1e3:.1f} ms ({before / after:.2f}x)")


if __name__ == "__main__":
    main()

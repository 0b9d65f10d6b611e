"""What each distillation term tells a fresh student: gradient sizes and the teacher's soft labels.

    python scripts/kd_diagnostics.py --dataset tiktok --teacher_ckpt runs/tiktok/<run>/teacher.pt [main.py flags]

For a few batches of stage 2, with a randomly initialised student, it prints:
- the norm of each loss term's gradient on the student's parameters, relative to BPR's;
- what the teacher's soft labels say: how much probability the teacher puts on the positive of each
  list of [positive + K uniform negatives] (per modality), how often the positive tops that list,
  the teacher's pair probability sigma(Delta / tau) of the BPR pair, and how many of the uniform
  negatives fall in the teacher's top 50 of the user.
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utility import pipeline  # noqa: E402
from Models import Teacher, build_student  # noqa: E402
from utility.config import KDConfig, StudentConfig, TeacherConfig, from_dict  # noqa: E402
from utility.evaluate import top_unseen_items  # noqa: E402
from utility.graph import build_graphs  # noqa: E402
from utility.load_data import load_dataset  # noqa: E402
from utility.objectives import Distillation  # noqa: E402
from utility.parser import parse_args  # noqa: E402
from utility.run_io import Logger  # noqa: E402
from utility.sampler import TripleSampler  # noqa: E402
from utility.sparse_ops import gather_dot  # noqa: E402


def load_parts(args):
    ds = load_dataset(pipeline.dataset_folder(args), name=args.dataset)
    ckpt = torch.load(args.teacher_ckpt, map_location="cpu", weights_only=False)
    cfg = from_dict(TeacherConfig, ckpt["config"]["teacher"])
    graphs = build_graphs(ds.train, torch.device("cpu"))
    feats = {m: torch.from_numpy(x) for m, x in ds.modality_feats.items()}
    tokens = torch.from_numpy(pipeline.hard_tokens(args, ds, cfg.embed_size, Logger(enabled=False)))
    teacher = Teacher(graphs, feats, tokens, cfg)
    teacher.load_state_dict(ckpt["models"]["teacher"])
    teacher.eval()
    return ds, graphs, teacher


def gradient_norms(terms, params):
    return {name: float(torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(value, params, retain_graph=True,
                                                                                    allow_unused=True) if g is not None)))
            for name, value in terms.items()}


def soft_label_stats(out, users, pos, neg, extra, top50, tau):
    lists = torch.cat([pos[:, None], extra], dim=1)
    stats = {}
    for m in out.mm_user:
        logits = gather_dot(out.mm_user[m][users], out.mm_item[m], lists) / tau
        p = torch.softmax(logits, dim=1)
        stats[f"p(positive) in the {m} list"] = float(p[:, 0].mean())
        stats[f"positive tops the {m} list"] = float((logits.argmax(1) == 0).float().mean())
    user, item = out.user, out.item
    delta = (user[users] * (item[pos] - item[neg])).sum(1) / tau
    stats["teacher sigma(Delta/tau) of the BPR pair"] = float(torch.sigmoid(delta).mean())
    hits = (extra[:, :, None] == top50[users][:, None, :]).any(-1).float()
    stats["uniform negatives in the teacher's top 50"] = float(hits.mean())
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=5)
    own, rest = p.parse_known_args(argv)
    args = parse_args(rest)
    if not args.teacher_ckpt:
        sys.exit("kd_diagnostics: --teacher_ckpt PATH is needed")
    torch.manual_seed(args.seed)
    ds, graphs, teacher = load_parts(args)
    with torch.no_grad():
        out = teacher()
    top50 = top_unseen_items(out.user, out.item, ds.train, 50)
    kd = KDConfig.from_args(args)
    cfg = StudentConfig.from_args(args, teacher.cfg)
    student = build_student(cfg, graphs)
    projector = None
    if cfg.embed_size != teacher.cfg.embed_size:
        projector = torch.nn.Linear(cfg.embed_size, teacher.cfg.embed_size, bias=False)
    params = list(student.parameters())
    users, pos, neg, extra = (torch.as_tensor(a, dtype=torch.int64) for a in
                              TripleSampler(ds.train, args.seed).epoch(max(1, kd.neg_sample_num)))
    norms, stats = [], []
    for b in range(own.batches):
        rows = slice(b * args.batch_size, (b + 1) * args.batch_size)
        batch = users[rows], pos[rows], neg[rows], extra[rows]
        terms = Distillation(kd, student, teacher, cfg.reg, projector).terms(out, *batch)
        norms.append(gradient_norms(terms, params))
        stats.append(soft_label_stats(out, *batch, top50, kd.temperature))
    print(f"gradient norm on the student's parameters (mean of {own.batches} batches, random init, d={cfg.embed_size}):")
    for name in norms[0]:
        value = np.mean([n[name] for n in norms])
        print(f"  {name:<8} {value:10.3e}   x{value / np.mean([n['bpr'] for n in norms]):8.3f} of BPR")
    print(f"the teacher's soft labels (tau = {kd.temperature}):")
    for name in stats[0]:
        print(f"  {name:<45} {np.mean([s[name] for s in stats]):.3f}")


if __name__ == "__main__":
    main()

"""The optimised teacher forward against a straightforward transcription of METHOD stage 1."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main
from tinydata import tiny_splits
from utility.features import item_hard_tokens
from utility.graph import sym_norm_adj
from utility.load_data import _pairs_to_csr
from utility.objectives import teacher_terms
from utility.parser import parse_args


def reference_forward(t, adj):
    """Every product written out as in METHOD, on dense matrices (``adj``: the dense (users + items)
    symmetric-normalised adjacency, built independently of the teacher's graph blocks)."""
    dense = {k: getattr(t, k).to_dense() for k in ("user_mean", "item_mean")}
    dense["adj"] = adj
    h_item = t.item_tokens
    h_user = dense["user_mean"] @ h_item
    pm = t.prompt_module
    p_user, p_item = pm(h_user, h_item) if pm is not None else (None, None)
    e_user, e_item = t.user_emb, t.item_emb
    if p_user is not None:
        e_user = e_user + t.emb_prompt_weight * F.normalize(p_user, dim=1)
        e_item = e_item + t.emb_prompt_weight * F.normalize(p_item, dim=1)
    layer = torch.cat([e_user, e_item])
    layers = [layer]
    for _ in range(t.cf_layers):
        layer = dense["adj"] @ layer
        layers.append(layer)
    cf = torch.stack(layers).mean(0)
    user, item = cf[: t.n_users], cf[t.n_users:]
    mm_user, mm_item = {}, {}
    for m in t.modalities:
        x = getattr(t, f"feat_{m}")
        if p_item is not None:
            lifted = p_item @ (p_item.T @ x)
            x = x + t.feat_prompt_weight * F.normalize(lifted, dim=1)
        h = t.dropout(x @ t.reducers[m].weight.T + t.reducers[m].bias)
        f_item = h
        for _ in range(t.mm_layers):
            f_user = dense["user_mean"] @ f_item
            f_item = dense["item_mean"] @ f_user
        if t.item_residual:
            f_item = f_item + h
        mm_user[m], mm_item[m] = f_user, f_item
        user = user + t.mm_fusion_weight * F.normalize(f_user, dim=1)
        item = item + t.mm_fusion_weight * F.normalize(f_item, dim=1)
    # the losses read fused rows through ``fuse``: here they are already fused, in full
    return SimpleNamespace(user=user, item=item, cf_user=user, cf_item=item, mm_user=mm_user, mm_item=mm_item,
                           prompt_user=p_user, prompt_item=p_item, fuse=lambda cf, mm: cf)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def parts():
    train, _, _, feats = tiny_splits(n_users=60, n_items=80, seed=3)
    users = np.array([int(u) for u, items in train.items() for _ in items])
    items = np.array([i for items in train.values() for i in items])
    mat = _pairs_to_csr(users, items, 60, 80)
    feats = {m: np.random.default_rng(7).normal(size=x.shape).astype(np.float32) + x for m, x in feats.items()}
    tokens = torch.from_numpy(item_hard_tokens(feats, 8))
    adj = torch.tensor(sym_norm_adj(mat).toarray())
    return main.build_graphs(mat, torch.device("cpu")), {m: torch.from_numpy(x) for m, x in feats.items()}, tokens, adj


def make(parts, **overrides):
    args = parse_args(["--embed_size", "8", "--feat_prompt_weight", "0.5", "--emb_prompt_weight", "0.3",
                       "--mm_layers", "2"])
    cfg = {k: getattr(args, k) for k in main.TEACHER_ARCH}
    cfg.update(overrides)
    torch.manual_seed(0)
    teacher = main.build_teacher(cfg, *parts[:3])
    with torch.no_grad():   # move the prompt off its tiny initial scale so the lift matters
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return teacher, vars(args)


def compare(teacher, weights, adj):
    """Outputs, loss and gradients of the optimised forward vs the reference (same dropout masks)."""
    users, pos, neg = torch.tensor([0, 5, 9, 33]), torch.tensor([1, 2, 3, 4]), torch.tensor([70, 71, 72, 79])
    params = [p for p in teacher.parameters() if p.requires_grad]
    torch.manual_seed(1)
    out = teacher()
    torch.manual_seed(1)
    ref = reference_forward(teacher, adj)
    for name in ("user", "item"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < 1e-5, name
    for m in teacher.modalities:
        assert rel_err(out.mm_user[m], ref.mm_user[m]) < 1e-5 and rel_err(out.mm_item[m], ref.mm_item[m]) < 1e-5
    loss = sum(teacher_terms(teacher, out, users, pos, neg, weights).values())
    ref_loss = sum(teacher_terms(teacher, ref, users, pos, neg, weights).values())
    assert abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()) < 1e-5
    for g, rg in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
        assert rel_err(g, rg) < 1e-5


def test_stage1_forward_loss_and_gradients_match_the_reference(parts):
    teacher, weights = make(parts)
    teacher.train()
    compare(teacher, weights, parts[3])


def test_with_prompt_dropout_the_general_lift_matches_too(parts):
    teacher, weights = make(parts, prompt_dropout=0.3)
    teacher.train()
    assert not teacher.prompt_module.is_linear
    compare(teacher, weights, parts[3])


def test_stage2_frozen_cache_matches_the_reference(parts):
    teacher, weights = make(parts)
    teacher.eval()
    teacher.freeze_for_distillation()
    compare(teacher, weights, parts[3])
    # the cache follows the weights when they change
    with torch.no_grad():
        teacher.reducers["image"].weight.mul_(1.5)
    compare(teacher, weights, parts[3])


def test_without_prompt_or_residual(parts):
    teacher, weights = make(parts, no_prompt=True, item_residual=False)
    compare(teacher, weights, parts[3])

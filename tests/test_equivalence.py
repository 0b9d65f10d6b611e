"""The optimised teacher (blocked sparse products, the prompt lift in the embedding space, gathered
rows) against a dense transcription of docs/method.md, stage 1.

The reference takes only the raw inputs (the training matrix, the features, the hard tokens) and
the teacher's parameter tensors; it builds its own dense graphs with numpy and writes the losses
out by hand, so it shares no buffer, graph or objective code with the teacher.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from Models import Teacher
from tinydata import split_matrix, tiny_splits
from utility.config import TeacherConfig
from utility.features import item_hard_tokens
from utility.graph import build_graphs
from utility.objectives import teacher_terms

CFG = TeacherConfig(embed_size=8, knn_k=0, feat_prompt_weight=0.5, emb_prompt_weight=0.3, mm_layers=2, mm_fusion_weight=0.7,
                    mm_loss_weight=0.2, prompt_loss_weight=0.3, reg=0.01)


def dense_graphs(train):
    """Sym-normalised (users + items) adjacency, user-mean R and item-mean R^T, with numpy."""
    r = train.toarray().astype(np.float64)
    n_users, n_items = r.shape
    adj = np.zeros((n_users + n_items,) * 2)
    adj[:n_users, n_users:], adj[n_users:, :n_users] = r, r.T
    deg = adj.sum(1)
    d = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-30)), 0.0)
    ru, ri = r.sum(1, keepdims=True), r.sum(0)[:, None]
    user_mean = np.where(ru > 0, r / np.maximum(ru, 1), 0.0)
    item_mean = np.where(ri > 0, r.T / np.maximum(ri, 1), 0.0)
    as_t = lambda x: torch.tensor(x, dtype=torch.float32)   # noqa: E731
    return as_t(d[:, None] * adj * d[None, :]), as_t(user_mean), as_t(item_mean)


def reference(t, cfg, train, feats, tokens, users, pos, neg):
    """(fused user, fused item, {m: (f_U, f_I)}, loss) written out as in the method."""
    adj, user_mean, item_mean = dense_graphs(train)
    n_users = train.shape[0]
    p_user = p_item = None
    if cfg.use_prompt:
        pm = t.prompt_module
        p_user, p_item = pm(user_mean @ tokens, tokens)
    e = torch.cat([t.user_emb, t.item_emb])
    if p_user is not None:
        e = e + cfg.emb_prompt_weight * torch.cat([F.normalize(p_user, dim=1), F.normalize(p_item, dim=1)])
    layers = [e]
    for _ in range(cfg.cf_layers):
        layers.append(adj @ layers[-1])
    cf = torch.stack(layers).mean(0)
    user, item = cf[:n_users], cf[n_users:]
    mm = {}
    for m, x in (feats.items() if cfg.use_modalities else []):
        if p_item is not None:
            x = x + cfg.feat_prompt_weight * F.normalize(p_item @ (p_item.T @ x), dim=1)
        h = x @ t.reducers[m].weight.T + t.reducers[m].bias
        f_item = h
        for _ in range(cfg.mm_layers):
            f_user = user_mean @ f_item
            f_item = item_mean @ f_user
        if cfg.item_residual:
            f_item = f_item + h
        mm[m] = (f_user, f_item)
        user = user + cfg.mm_fusion_weight * F.normalize(f_user, dim=1)
        item = item + cfg.mm_fusion_weight * F.normalize(f_item, dim=1)

    def bpr(u, i):
        return -torch.log(torch.sigmoid((u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1))).mean()

    loss = bpr(user, item) + cfg.mm_loss_weight * sum(bpr(fu, fi) for fu, fi in mm.values())
    if p_user is not None:
        loss = loss + cfg.prompt_loss_weight * bpr(p_user, p_item)
    squares = t.user_emb[users].pow(2).sum() + t.item_emb[pos].pow(2).sum() + t.item_emb[neg].pow(2).sum()
    loss = loss + cfg.reg * squares / (2 * len(users))
    return user, item, mm, loss


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def parts():
    train, _, _, feats = tiny_splits(n_users=60, n_items=80, seed=3)
    mat = split_matrix(train, 60, 80).tocsr()
    feats = {m: np.random.default_rng(7).normal(size=x.shape).astype(np.float32) + x for m, x in feats.items()}
    tokens = torch.from_numpy(item_hard_tokens(feats, 8))
    return mat, {m: torch.from_numpy(x) for m, x in feats.items()}, tokens


def make(parts, **overrides):
    mat, feats, tokens = parts
    cfg = TeacherConfig(**{**CFG.__dict__, **overrides})
    torch.manual_seed(0)
    teacher = Teacher(build_graphs(mat, torch.device("cpu")), feats, tokens, cfg)
    with torch.no_grad():   # move the prompt off its tiny initial scale so the lift matters
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return teacher, cfg


def compare(teacher, cfg, parts):
    """Outputs, loss and gradients of the optimised forward vs the reference."""
    mat, feats, tokens = parts
    users, pos, neg = torch.tensor([0, 5, 9, 33]), torch.tensor([1, 2, 3, 4]), torch.tensor([70, 71, 72, 79])
    params = [p for p in teacher.parameters() if p.requires_grad]
    torch.manual_seed(1)
    out = teacher()
    loss = sum(teacher_terms(teacher, out, users, pos, neg, cfg).values())
    torch.manual_seed(1)
    ref_user, ref_item, ref_mm, ref_loss = reference(teacher, cfg, mat, feats, tokens, users, pos, neg)
    assert rel_err(out.user, ref_user) < 1e-5 and rel_err(out.item, ref_item) < 1e-5
    assert set(out.mm_user) == set(ref_mm)
    for m, (f_user, f_item) in ref_mm.items():
        assert rel_err(out.mm_user[m], f_user) < 1e-5 and rel_err(out.mm_item[m], f_item) < 1e-5
    assert abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()) < 1e-5
    for g, rg in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
        assert rel_err(g, rg) < 1e-5


def test_stage1_forward_loss_and_gradients_match_the_reference(parts):
    teacher, cfg = make(parts)
    teacher.train()
    compare(teacher, cfg, parts)


def test_stage2_frozen_teacher_matches_the_reference(parts):
    teacher, cfg = make(parts)
    teacher.eval()
    teacher.freeze_for_distillation()
    compare(teacher, cfg, parts)


def test_without_prompt_or_residual(parts):
    teacher, cfg = make(parts, use_prompt=False, item_residual=False)
    compare(teacher, cfg, parts)


def test_without_modalities_it_is_lightgcn(parts):
    teacher, cfg = make(parts, use_prompt=False, use_modalities=False)
    compare(teacher, cfg, parts)

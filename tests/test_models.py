"""Model shapes, stage-2 gradient flow, and the students."""
import numpy as np
import pytest
import torch

import main
from Models import LightGCNStudent, MLPStudent, compress_embeddings
from tinydata import tiny_splits
from utility.features import item_hard_tokens
from utility.load_data import _pairs_to_csr
from utility.objectives import student_terms, teacher_terms
from utility.parser import parse_args


@pytest.fixture(scope="module")
def setup():
    train, _, _, feats = tiny_splits()
    users = np.array([int(u) for u, items in train.items() for _ in items])
    items = np.array([i for items in train.values() for i in items])
    mat = _pairs_to_csr(users, items, 30, 40)
    graphs = main.build_graphs(mat, torch.device("cpu"))
    tokens = torch.from_numpy(item_hard_tokens(feats, 8))
    feats = {m: torch.from_numpy(x) for m, x in feats.items()}
    args = parse_args(["--embed_size", "8", "--student_embed_size", "8"])
    return graphs, feats, tokens, args


def make_teacher(setup, **overrides):
    graphs, feats, tokens, args = setup
    cfg = {k: getattr(args, k) for k in main.TEACHER_ARCH}
    cfg.update(overrides)
    torch.manual_seed(0)
    return main.build_teacher(cfg, graphs, feats, tokens)


def batch():
    return torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11, 12]), \
        torch.tensor([[1, 2, 3], [4, 13, 14], [15, 16, 17], [18, 19, 20]])


def test_teacher_shapes(setup):
    out = make_teacher(setup)()
    assert out.user.shape == (30, 8) and out.item.shape == (40, 8)
    assert set(out.mm_user) == {"image", "text"}
    assert out.mm_user["text"].shape == (30, 8) and out.mm_item["image"].shape == (40, 8)
    assert out.prompt_user.shape == (30, 8) and out.prompt_item.shape == (40, 8)


def test_teacher_switches(setup):
    out = make_teacher(setup, no_prompt=True, no_modalities=True)()
    assert out.prompt_user is None and out.mm_user == {}
    teacher = make_teacher(setup, no_modalities=True)
    assert len(teacher.reducers) == 0 and teacher.prompt_module is None   # nothing from the features


def test_teacher_loss_backpropagates_to_every_parameter(setup):
    teacher = make_teacher(setup)
    users, pos, neg, _ = batch()
    terms = teacher_terms(teacher, teacher(), users, pos, neg, vars(setup[3]))
    assert set(terms) == {"bpr", "mm", "prompt", "reg"}
    sum(terms.values()).backward()
    for name, p in teacher.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_stage2_gradients_reach_the_prompts_and_not_the_frozen_teacher(setup):
    teacher = make_teacher(setup)
    teacher.eval()
    teacher.freeze_for_distillation()
    trainable = {n for n, p in teacher.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prompt_module.") for n in trainable)
    student = MLPStudent(30, 40, 8, 16)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    optimizer = torch.optim.AdamW(list(student.parameters()) + [p for p in teacher.parameters() if p.requires_grad])
    users, pos, neg, extra = batch()
    terms = student_terms(student, teacher(), users, pos, neg, extra, vars(setup[3]))
    assert set(terms) == {"bpr", "reg", "pair_kd", "list_kd", "emb_kd"}
    sum(terms.values()).backward()
    for name, p in teacher.named_parameters():
        if name.startswith("prompt_module."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    optimizer.step()
    for name, p in teacher.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == name.startswith("prompt_module."), name


def test_students_score_without_features(setup):
    graphs = setup[0]
    mlp = MLPStudent(30, 40, 8, 16)
    gcn = LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"], 8, 2)
    for student in (mlp, gcn):
        user, item = student()
        assert user.shape == (30, 8) and item.shape == (40, 8)
        u, i, j = student.embed(torch.tensor([1, 2]), torch.tensor([[3, 4, 5], [6, 7, 8]]), torch.tensor([9, 3]))
        assert u.shape == (2, 8) and i.shape == (2, 3, 8) and j.shape == (2, 8)
        assert torch.allclose(i[0, 0], j[1])   # the same item, whichever index tensor asks
        assert not any("reducer" in n or "feat" in n for n, _ in student.named_parameters())


def test_mlp_student_initialised_from_teacher_reproduces_its_embeddings(setup):
    out = make_teacher(setup)()
    student = MLPStudent(30, 40, 8, 16)
    student.init_embeddings(out.user.detach(), out.item.detach())
    user, item = student()
    assert torch.allclose(user, out.user) and torch.allclose(item, out.item)


def test_compress_embeddings_keeps_the_dominant_scores():
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 16, generator=gen)   # embeddings that live in a 3-d subspace
    user = torch.randn(50, 3, generator=gen) @ basis
    item = torch.randn(40, 3, generator=gen) @ basis
    u, i = compress_embeddings(user, item, 3)
    assert u.shape == (50, 3)
    assert torch.allclose(u @ i.T, user @ item.T, atol=1e-3)


def test_sparse_products_match_dense_with_empty_rows():
    from Models import spmm
    from utility.graph import to_torch_csr
    import scipy.sparse as sp
    mat = sp.random(40, 30, density=0.1, random_state=0, format="csr")
    mat[5] = 0          # an empty row (a user without training items)
    mat.eliminate_zeros()
    adj, adj_t = to_torch_csr(mat), to_torch_csr(mat.T)
    dense = torch.tensor(mat.toarray(), dtype=torch.float32)
    for _ in range(3):
        torch.full((40, 8), float("nan"))   # leave garbage around for the uninitialised output
        x = torch.randn(30, 8, requires_grad=True)
        y = spmm(adj, adj_t, x)
        assert torch.allclose(y, dense @ x, atol=1e-6) and torch.equal(y[5], torch.zeros(8))
        g = torch.randn(40, 8)
        (y * g).sum().backward()
        assert torch.allclose(x.grad, dense.T @ g, atol=1e-5)


@pytest.mark.parametrize("block_elements", [1, 40, 1 << 18])
def test_gather_dot_matches_gathered_scores_and_their_gradients(block_elements):
    from Models import gather_dot
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 5, generator=gen, requires_grad=True)
    table = torch.randn(9, 5, generator=gen, requires_grad=True)
    index = torch.randint(0, 9, (7, 4), generator=gen, dtype=torch.int32)
    index[0] = 3                                   # a repeated item within a list
    weights = torch.randn(7, 4, generator=gen)
    ref = (rows[:, None, :] * table[index.long()]).sum(-1)
    ref_grads = torch.autograd.grad((ref * weights).sum(), (rows, table), retain_graph=True)
    out = gather_dot(rows, table, index, block_elements)
    grads = torch.autograd.grad((out * weights).sum(), (rows, table))
    assert torch.allclose(out, ref, atol=1e-6)
    for g, rg in zip(grads, ref_grads):
        assert torch.allclose(g, rg, atol=1e-6)
    # only the table needs a gradient (teacher rows of a frozen teacher, say)
    (g_table,) = torch.autograd.grad(gather_dot(rows.detach(), table, index, block_elements).sum(), (table,))
    assert torch.allclose(g_table, torch.autograd.grad(ref.sum(), table)[0], atol=1e-6)

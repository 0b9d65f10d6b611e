"""Model shapes, stage-2 gradient flow, and the students."""
import pytest
import torch

from dataclasses import replace

from Models import LightGCNStudent, MLPStudent, Teacher, compress_embeddings
from tinydata import split_matrix, tiny_splits
from utility.config import KDConfig, StudentConfig, TeacherConfig
from utility.features import item_hard_tokens
from utility.graph import build_graphs
from utility.objectives import student_terms, teacher_terms


@pytest.fixture(scope="module")
def setup():
    train, _, _, feats = tiny_splits()
    mat = split_matrix(train, 30, 40).tocsr()
    graphs = build_graphs(mat, torch.device("cpu"))
    tokens = torch.from_numpy(item_hard_tokens(feats, 8))
    feats = {m: torch.from_numpy(x) for m, x in feats.items()}
    return graphs, feats, tokens, TeacherConfig(embed_size=8)


def make_teacher(setup, **overrides):
    graphs, feats, tokens, cfg = setup
    torch.manual_seed(0)
    return Teacher(graphs, feats, tokens, replace(cfg, **overrides))


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
    out = make_teacher(setup, use_prompt=False, use_modalities=False)()
    assert out.prompt_user is None and out.mm_user == {}
    out = make_teacher(setup, use_prompt=False)()
    assert out.prompt_user is None and set(out.mm_user) == {"image", "text"}
    teacher = make_teacher(setup, use_modalities=False)
    assert len(teacher.reducers) == 0 and teacher.prompt_module is None   # nothing from the features


def test_teacher_loss_backpropagates_to_every_parameter(setup):
    teacher = make_teacher(setup)
    users, pos, neg, _ = batch()
    terms = teacher_terms(teacher, teacher(), users, pos, neg, setup[3])
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
    terms = student_terms(student, teacher(), users, pos, neg, extra, StudentConfig(embed_size=8), KDConfig())
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
    from utility.sparse_ops import spmm
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
    from utility.sparse_ops import gather_dot
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


# ---------------------------------------------------------------- each term's presence and weight

def _teacher_terms(setup, **cfg):
    teacher = make_teacher(setup, **cfg)
    users, pos, neg, _ = batch()
    with torch.no_grad():
        return teacher_terms(teacher, teacher(), users, pos, neg, teacher.cfg), teacher


@pytest.mark.parametrize("term, field", [("mm", "mm_loss_weight"), ("prompt", "prompt_loss_weight"), ("reg", "reg")])
def test_teacher_term_scales_with_its_weight_and_only_its_own(setup, term, field):
    base, _ = _teacher_terms(setup, **{field: 0.1})
    double, _ = _teacher_terms(setup, **{field: 0.2})
    assert double[term].item() == pytest.approx(2 * base[term].item(), rel=1e-5)
    for other in base:
        if other != term:
            assert double[other].item() == pytest.approx(base[other].item(), rel=1e-6), other


def test_teacher_reg_is_the_batch_id_embeddings_l2(setup):
    terms, teacher = _teacher_terms(setup, reg=0.5)
    users, pos, neg, _ = batch()
    squares = teacher.user_emb[users].pow(2).sum() + teacher.item_emb[pos].pow(2).sum() + teacher.item_emb[neg].pow(2).sum()
    assert terms["reg"].item() == pytest.approx(0.5 * squares.item() / (2 * 4), rel=1e-5)
    assert "prompt" not in _teacher_terms(setup, prompt_loss_weight=0.0)[0]


def _student_terms(setup, student_cfg=StudentConfig(embed_size=8), **kd):
    teacher = make_teacher(setup)
    teacher.eval()
    torch.manual_seed(1)
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    users, pos, neg, extra = batch()
    with torch.no_grad():
        return student_terms(student, teacher(), users, pos, neg, extra, student_cfg, KDConfig(**kd)), student


@pytest.mark.parametrize("term, field", [("pair_kd", "pair_weight"), ("list_kd", "list_weight"),
                                         ("emb_kd", "emb_weight")])
def test_student_kd_term_scales_with_its_weight_and_vanishes_at_zero(setup, term, field):
    base, _ = _student_terms(setup, **{field: 0.5})
    double, _ = _student_terms(setup, **{field: 1.0})
    assert double[term].item() == pytest.approx(2 * base[term].item(), rel=1e-5)
    for other in base:
        if other != term:
            assert double[other].item() == pytest.approx(base[other].item(), rel=1e-6), other
    assert term not in _student_terms(setup, **{field: 0.0})[0]


def test_student_reg_uses_its_own_weight_on_the_ego_embeddings(setup):
    terms, student = _student_terms(setup, StudentConfig(embed_size=8, reg=0.3))
    users, pos, neg, _ = batch()
    squares = student.user_emb[users].pow(2).sum() + student.item_emb[pos].pow(2).sum() + student.item_emb[neg].pow(2).sum()
    assert terms["reg"].item() == pytest.approx(0.3 * squares.item() / (2 * 4), rel=1e-5)


def test_list_kd_variants_are_selected_by_the_config(setup):
    reweighted, _ = _student_terms(setup)
    plain, _ = _student_terms(setup, disentangle=False)
    flat, _ = _student_terms(setup, list_reweight=False)
    # with the teacher's non-target mass as weight the disentangled value equals the plain KL
    assert reweighted["list_kd"].item() == pytest.approx(plain["list_kd"].item(), rel=1e-4)
    assert flat["list_kd"].item() > reweighted["list_kd"].item()   # weight 1 >= the non-target mass


def test_kd_temperature_reaches_the_pair_and_list_terms(setup):
    cold, _ = _student_terms(setup, temperature=1.0)
    warm, _ = _student_terms(setup, temperature=3.0)
    for term in ("pair_kd", "list_kd"):
        assert warm[term].item() != pytest.approx(cold[term].item(), rel=1e-3), term
    assert warm["emb_kd"].item() == pytest.approx(cold["emb_kd"].item(), rel=1e-6)


def test_no_kd_leaves_bpr_and_reg_only_and_needs_no_teacher(setup):
    from types import SimpleNamespace
    args = SimpleNamespace(kd_pair_weight=1.0, kd_list_weight=1.0, kd_emb_weight=0.1, kd_temperature=1.0,
                           sce_gamma=2.0, neg_sample_num=10, no_disentangle=False, no_list_reweight=False, no_kd=True)
    kd = KDConfig.from_args(args)
    assert not kd.active and not kd.needs_lists
    full, _ = _student_terms(setup)
    torch.manual_seed(1)
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    users, pos, neg, _ = batch()
    terms = student_terms(student, None, users, pos, neg, None, StudentConfig(embed_size=8), kd)
    assert set(terms) == {"bpr", "reg"}
    assert terms["bpr"].item() == pytest.approx(full["bpr"].item(), rel=1e-6)
    assert KDConfig.from_args(SimpleNamespace(**{**vars(args), "no_kd": False})).active

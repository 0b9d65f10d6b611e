"""Model shapes, stage-2 gradient flow, and the students."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dataclasses import replace

from Models import LightGCNStudent, PromptModule, Teacher, build_student, compress_embeddings, count_parameters
from tinydata import tiny_model_inputs
from utility.config import KDConfig, StudentConfig, TeacherConfig
from utility.graph import build_graphs
from utility.objectives import Distillation, teacher_terms


@pytest.fixture(scope="module")
def setup():
    return (*tiny_model_inputs(), TeacherConfig(embed_size=8, knn_k=0))


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
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    optimizer = torch.optim.AdamW(list(student.parameters()) + [p for p in teacher.parameters() if p.requires_grad])
    users, pos, neg, extra = batch()
    terms = Distillation(KDConfig(de_weight=0.0), student, teacher, reg=1e-4)(users, pos, neg, extra)
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


def test_the_student_scores_without_features(setup):
    graphs = setup[0]
    for student in (LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"], 8, 2),):
        user, item = student()
        assert user.shape == (30, 8) and item.shape == (40, 8)
        u, i, j = student.embed(torch.tensor([1, 2]), torch.tensor([[3, 4, 5], [6, 7, 8]]), torch.tensor([9, 3]))
        assert u.shape == (2, 8) and i.shape == (2, 3, 8) and j.shape == (2, 8)
        assert torch.allclose(i[0, 0], j[1])   # the same item, whichever index tensor asks
        assert not any("reducer" in n or "feat" in n for n, _ in student.named_parameters())


def test_student_initialised_from_teacher_holds_its_embeddings(setup):
    out = make_teacher(setup)()
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    student.init_embeddings(out.user.detach(), out.item.detach())
    assert torch.allclose(student.user_emb, out.user) and torch.allclose(student.item_emb, out.item)


def test_compress_embeddings_keeps_the_dominant_scores():
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 16, generator=gen)   # embeddings that live in a 3-d subspace
    user = torch.randn(50, 3, generator=gen) @ basis
    item = torch.randn(40, 3, generator=gen) @ basis
    u, i = compress_embeddings(user, item, 3)
    assert u.shape == (50, 3)
    assert torch.allclose(u @ i.T, user @ item.T, atol=1e-3)


def test_compress_embeddings_is_the_best_low_rank_score_matrix():
    # full-rank embeddings whose user and item sides stress different directions: projecting both
    # onto one shared basis (the stacked SVD) is then worse than the score matrix's own truncation
    gen = torch.Generator().manual_seed(1)
    user = torch.randn(60, 8, generator=gen, dtype=torch.float64) * torch.tensor([5., 4, 3, 2, 1, 1, 1, 1], dtype=torch.float64)
    item = torch.randn(45, 8, generator=gen, dtype=torch.float64) * torch.tensor([1., 1, 1, 1, 2, 3, 4, 5], dtype=torch.float64)
    scores = user @ item.T
    for k in (1, 3, 5):
        u, i = compress_embeddings(user, item, k)
        assert u.shape == (60, k) and i.shape == (45, k)
        best = torch.linalg.svdvals(scores)[k:].square().sum().sqrt()   # Eckart-Young optimum
        assert torch.allclose(torch.linalg.matrix_norm(scores - u @ i.T), best, rtol=1e-6)
        # both sides carry the same scale (the singular values split evenly)
        assert torch.allclose(u.norm(dim=0), i.norm(dim=0), rtol=1e-6)


def test_compress_embeddings_with_fewer_users_than_the_width():
    gen = torch.Generator().manual_seed(2)
    user = torch.randn(5, 64, generator=gen, dtype=torch.float64)
    item = torch.randn(30, 64, generator=gen, dtype=torch.float64)
    u, i = compress_embeddings(user, item, 16)
    assert u.shape == (5, 16) and i.shape == (30, 16)
    assert torch.allclose(u @ i.T, user @ item.T)   # rank 5 <= 16: the scores are kept exactly


def test_sparse_products_match_dense_with_empty_rows():
    from utility.sparse_ops import spmm
    from utility.graph import to_torch_csr
    import scipy.sparse as sp
    mat = sp.random(40, 30, density=0.1, random_state=0, format="lil")
    mat[5] = 0          # an empty row (a user without training items)
    mat = mat.tocsr()
    mat.eliminate_zeros()
    assert mat[5].nnz == 0 and mat.nnz > 0
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


def _student_terms(setup, reg=1e-4, **kd):
    teacher = make_teacher(setup)
    teacher.eval()
    torch.manual_seed(1)
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    users, pos, neg, extra = batch()
    kd = {"de_weight": 0.0, "neg_sample_num": 3, **kd}
    with torch.no_grad():
        return Distillation(KDConfig(**kd), student, teacher, reg)(users, pos, neg, extra), student


@pytest.mark.parametrize("term, field", [("pair_kd", "pair_weight"), ("list_kd", "list_weight"),
                                         ("emb_kd", "emb_weight"), ("de_kd", "de_weight")])
def test_student_kd_term_scales_with_its_weight_and_vanishes_at_zero(setup, term, field):
    base, _ = _student_terms(setup, **{field: 0.5})
    double, _ = _student_terms(setup, **{field: 1.0})
    assert double[term].item() == pytest.approx(2 * base[term].item(), rel=1e-5)
    for other in base:
        if other != term:
            assert double[other].item() == pytest.approx(base[other].item(), rel=1e-6), other
    assert term not in _student_terms(setup, **{field: 0.0})[0]


def test_student_reg_uses_its_own_weight_on_the_ego_embeddings(setup):
    terms, student = _student_terms(setup, reg=0.3)
    users, pos, neg, _ = batch()
    squares = student.user_emb[users].pow(2).sum() + student.item_emb[pos].pow(2).sum() + student.item_emb[neg].pow(2).sum()
    assert terms["reg"].item() == pytest.approx(0.3 * squares.item() / (2 * 4), rel=1e-5)


def test_kd_temperature_reaches_the_pair_and_list_terms(setup):
    cold, _ = _student_terms(setup, temperature=1.0)
    warm, _ = _student_terms(setup, temperature=3.0)
    for term in ("pair_kd", "list_kd"):
        assert warm[term].item() != pytest.approx(cold[term].item(), rel=1e-3), term
    assert warm["emb_kd"].item() == pytest.approx(cold["emb_kd"].item(), rel=1e-6)


def test_no_kd_leaves_bpr_and_reg_only_and_needs_no_teacher(setup):
    from types import SimpleNamespace
    args = SimpleNamespace(kd_pair_weight=1.0, kd_list_weight=1.0, kd_emb_weight=0.1, kd_temperature=1.0,
                           neg_sample_num=10, item_teacher="ease", no_kd=True, kd_de_weight=0.5, student_init="teacher")
    kd = KDConfig.from_args(args)
    assert (kd.pair_weight, kd.list_weight, kd.emb_weight, kd.de_weight) == (0, 0, 0, 0)
    full, _ = _student_terms(setup)
    torch.manual_seed(1)
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    users, pos, neg, _ = batch()
    objective = Distillation(kd, student, make_teacher(setup).eval(), reg=1e-4)
    assert objective.teacher_output() is None and objective.extra_negatives == 0
    terms = objective(users, pos, neg, None)
    assert set(terms) == {"bpr", "reg"}
    assert terms["bpr"].item() == pytest.approx(full["bpr"].item(), rel=1e-6)
    on = KDConfig.from_args(SimpleNamespace(**{**vars(args), "no_kd": False}))
    assert (on.pair_weight, on.list_weight, on.emb_weight, on.de_weight) == (1.0, 1.0, 0.1, 0.5)
    unset = SimpleNamespace(**{**vars(args), "no_kd": False, "kd_de_weight": None})
    assert KDConfig.from_args(unset).de_weight == 0.0       # a teacher start: no representation KD
    assert KDConfig.from_args(SimpleNamespace(**{**vars(unset), "student_init": "random"})).de_weight == 1.0


# --- gaps found by mutation testing (mutmut 3.8.1) ---------------------------------------------

def _kl_rows(t_logits, s_logits, tau):
    """Per-row KL(softmax(t / tau) || softmax(s / tau)) in float64 numpy."""
    t, s = np.asarray(t_logits, np.float64) / tau, np.asarray(s_logits, np.float64) / tau
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    log_pt = np.log(pt)
    log_ps = s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))
    return (pt * (log_pt - log_ps)).sum(1)


def _sce(a, b, gamma):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return ((1 - cos) ** gamma).mean()


@pytest.mark.parametrize("width", [8, 4])
def test_student_terms_match_the_losses_written_out_with_numpy(setup, width):
    """Every student term against full-table embeddings and float64 numpy: bpr on (pos, neg) in that
    order, the pair KD on the teacher's and the student's (pos, neg) scores, the list KD and the SCE
    term averaged (not summed) over the modalities, the projector applied to both user and item rows."""
    teacher = make_teacher(setup)
    teacher.eval()
    torch.manual_seed(1)
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], width, 2)
    projector = torch.nn.Linear(width, 8) if width != 8 else None
    users, pos, neg, extra = batch()
    kd = KDConfig(pair_weight=0.7, list_weight=0.4, emb_weight=0.3, de_weight=0.0, temperature=2.0, sce_gamma=3.0,
                  neg_sample_num=3)
    with torch.no_grad():
        t_out = teacher()
        terms = Distillation(kd, student, teacher, 0.0, projector).terms(t_out, users, pos, neg, extra)
        su, si = (x.double().numpy() for x in student())
        tu, ti = t_out.user.double().numpy(), t_out.item.double().numpy()
        mm = {m: (t_out.mm_user[m].double().numpy(), t_out.mm_item[m].double().numpy()) for m in t_out.mm_user}
        pu, pi = su[users], si[torch.stack([pos, neg], 1)]
        if projector is not None:
            proj = lambda x: (torch.from_numpy(x).float() @ projector.weight.T + projector.bias).double().numpy()  # noqa: E731
            pu, pi = proj(pu), proj(pi.reshape(-1, width)).reshape(4, 2, 8)
    u, p, n = users.numpy(), pos.numpy(), neg.numpy()
    lists = np.concatenate([p[:, None], extra.numpy()], 1)
    s_pos, s_neg = (su[u] * si[p]).sum(1), (su[u] * si[n]).sum(1)
    assert terms["bpr"].item() == pytest.approx(np.log1p(np.exp(s_neg - s_pos)).mean(), rel=1e-5)

    tau = 2.0
    dt, ds = ((tu[u] * ti[p]).sum(1) - (tu[u] * ti[n]).sum(1)) / tau, (s_pos - s_neg) / tau
    pt, ps = 1 / (1 + np.exp(-dt)), 1 / (1 + np.exp(-ds))
    bern = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
    assert terms["pair_kd"].item() == pytest.approx(0.7 * tau * tau * bern.mean(), rel=1e-4)

    s_list = np.einsum("bd,bld->bl", su[u], si[lists])
    list_kd = np.mean([_kl_rows(np.einsum("bd,bld->bl", fu[u], fi[lists]), s_list, tau).mean() * tau * tau
                       for fu, fi in mm.values()])
    assert len(mm) >= 2
    assert terms["list_kd"].item() == pytest.approx(0.4 * list_kd, rel=1e-4)

    emb = np.mean([_sce(fi[np.stack([p, n], 1)].reshape(-1, 8), pi.reshape(-1, 8), 3.0) + _sce(fu[u], pu, 3.0)
                   for fu, fi in mm.values()])
    assert terms["emb_kd"].item() == pytest.approx(0.3 * emb, rel=1e-4)



def test_student_constructor_defaults():
    graphs = build_graphs(sp_eye(3, 4), torch.device("cpu"))
    gcn = LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"])
    assert gcn.user_emb.shape == (3, 64) and gcn.n_layers == 2
    prompt = PromptModule(5, 4)
    assert prompt.user_proj.in_features == 5 and prompt.item_proj.out_features == 4


def sp_eye(n_users, n_items):
    return sp.eye(n_users, n_items, format="csr", dtype=np.float32)


def test_build_student_and_count_parameters():
    graphs = build_graphs(sp_eye(3, 4), torch.device("cpu"))
    gcn = build_student(StudentConfig(embed_size=6, n_layers=3), graphs)
    assert isinstance(gcn, LightGCNStudent)
    assert gcn.user_emb.shape == (3, 6) and gcn.item_emb.shape == (4, 6) and gcn.n_layers == 3
    assert gcn.norm_ui.shape == (3, 4) and gcn.norm_iu.shape == (4, 3)
    assert count_parameters(gcn) == 18 + 24                  # 3*6 + 4*6 ID rows, nothing else
    assert count_parameters(gcn, exclude_prefixes=("user_emb",)) == 24


def test_state_dicts_hold_only_the_parameters(setup):
    """Graphs, features, tokens and frozen reductions are rebuilt from the data, not checkpointed."""
    teacher = make_teacher(setup)
    teacher.freeze_for_distillation()
    assert set(teacher.state_dict()) == {name for name, _ in teacher.named_parameters()}
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)
    assert set(student.state_dict()) == {"user_emb", "item_emb"}


def test_teacher_load_state_dict_is_strict_copies_and_reports(setup):
    teacher = make_teacher(setup)
    state = {k: v.clone() + 1 for k, v in teacher.state_dict().items()}
    result = teacher.load_state_dict(state)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    state["user_emb"].zero_()                 # copied in, not aliased
    assert teacher.user_emb.abs().sum() > 0
    del state["item_emb"]
    with pytest.raises(RuntimeError, match="item_emb"):
        teacher.load_state_dict(state)


def test_feature_prompt_of_small_norm_is_normalised(setup):
    """norm(P_I P_I^T X) with row norms well below 1: the fast path must not clamp them up to 1."""
    teacher = make_teacher(setup, feat_prompt_weight=0.5)
    teacher.eval()
    with torch.no_grad():
        for p in teacher.prompt_module.parameters():
            p.mul_(0.05)
        _, prompt_item = teacher.prompts()
        for name, x in setup[1].items():
            lifted = prompt_item @ (prompt_item.T @ x)
            assert lifted.norm(dim=1).max() < 0.5
            layer = teacher.reducers[name]
            expected = (x + 0.5 * torch.nn.functional.normalize(lifted, dim=1)) @ layer.weight.T + layer.bias
            torch.testing.assert_close(teacher.reduce_features(name, prompt_item), expected, rtol=1e-4, atol=1e-5)


def test_de_kd_regresses_the_fused_teacher_embeddings(setup):
    terms, student = _student_terms(setup, de_weight=0.5)
    teacher = make_teacher(setup)
    teacher.eval()
    users, pos, neg, _ = batch()
    with torch.no_grad():
        out = teacher()
        s_user, s_item = student()
    user_part = (s_user[users] - out.user[users]).pow(2).sum(1).mean()
    items = torch.stack([pos, neg], 1)
    item_part = (s_item[items] - out.item[items]).pow(2).sum(-1).mean()
    assert terms["de_kd"].item() == pytest.approx(0.5 * (user_part + item_part).item() / 2, rel=1e-5)

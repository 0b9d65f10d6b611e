"""Stage 2's forward pass from the frozen parts' propagated constants equals the straightforward one:
outputs, the distillation loss and the prompts' gradients."""
from dataclasses import replace

import pytest
import torch

import Models
from Models import LightGCNStudent, Teacher
from tinydata import split_matrix, tiny_model_inputs, tiny_splits
from utility.config import KDConfig, StudentConfig, TeacherConfig
from utility.graph import cached_knn_graphs, knn_tensors
from utility.objectives import student_terms


@pytest.fixture(scope="module")
def setup():
    return tiny_model_inputs()


def frozen_teacher(setup, **cfg):
    graphs, feats, tokens = setup
    if cfg.get("knn_k"):
        graphs = dict(graphs, **knn_tensors(cached_knn_graphs({m: x.numpy() for m, x in feats.items()}, cfg["knn_k"])))
    torch.manual_seed(0)
    teacher = Teacher(graphs, feats, tokens, replace(TeacherConfig(embed_size=8), **cfg))
    with torch.no_grad():   # weights away from their initialisation (zero biases, symmetric scales)
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    teacher.eval()
    teacher.freeze_for_distillation()
    return teacher


def outputs_and_grads(teacher, student, use_frozen_parts, seed=0):
    teacher.use_frozen_parts = use_frozen_parts
    teacher.zero_grad(set_to_none=True)
    torch.manual_seed(seed)    # the same prompt-dropout masks in both passes
    out = teacher()
    users, pos, neg = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11, 12])
    extra = torch.tensor([[1, 2, 3], [4, 13, 14], [15, 16, 17], [18, 19, 20]])
    kd = KDConfig(de_weight=1.0, neg_sample_num=3)
    loss = sum(student_terms(student, out, users, pos, neg, extra, StudentConfig(embed_size=8), kd).values())
    loss.backward()
    tensors = {"cf_user": out.cf_user, "cf_item": out.cf_item, "user": out.user, "item": out.item}
    for m in out.mm_user:
        tensors[f"mm_user_{m}"], tensors[f"mm_item_{m}"] = out.mm_user[m], out.mm_item[m]
    grads = {n: p.grad.clone() for n, p in teacher.named_parameters() if p.grad is not None}
    return {k: v.detach().clone() for k, v in tensors.items()}, loss.detach(), grads


CONFIGS = [dict(), dict(mm_layers=2, cf_layers=3), dict(item_residual=False), dict(emb_prompt_weight=0.0),
           dict(feat_prompt_weight=0.0), dict(use_prompt=False), dict(prompt_dropout=0.3),
           dict(knn_k=3, knn_layers=2), dict(knn_k=3, knn_on="ids"), dict(knn_k=3, knn_layers=2, knn_on="both")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS])
def test_forward_from_frozen_parts_matches_the_straightforward_pass(setup, cfg):
    teacher = frozen_teacher(setup, **cfg)
    if cfg.get("prompt_dropout"):
        teacher.prompt_module.train()   # dropout inside the prompts stays exact (they are not frozen)
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8)
    fast, fast_loss, fast_grads = outputs_and_grads(teacher, student, True)
    slow, slow_loss, slow_grads = outputs_and_grads(teacher, student, False)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(fast_loss, slow_loss, atol=1e-5, rtol=1e-5)
    assert set(fast_grads) == set(slow_grads)
    assert all(n.startswith("prompt_module.") for n in slow_grads)
    if teacher.prompt_module is not None:
        assert slow_grads   # the KD loss reaches the prompts
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_loading_weights_refreshes_the_frozen_parts(setup):
    teacher = frozen_teacher(setup)
    other = frozen_teacher(setup)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    teacher.load_state_dict(other.state_dict())
    student = LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8)
    fast, _, _ = outputs_and_grads(teacher, student, True)
    slow, _, _ = outputs_and_grads(teacher, student, False)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-5, msg=name)


def test_dropout_on_the_reduced_features_falls_back_to_the_straightforward_pass(setup):
    teacher = frozen_teacher(setup, dropout=0.5)
    assert teacher.from_frozen_parts()
    teacher.train()
    assert not teacher.from_frozen_parts()


def test_only_prompt_terms_are_propagated_per_step(setup, monkeypatch):
    calls = []
    real = Models.spmm
    monkeypatch.setattr(Models, "spmm", lambda *a: calls.append(1) or real(*a))
    teacher = frozen_teacher(setup, use_prompt=False)
    calls.clear()
    teacher()
    assert calls == []    # nothing trains in the teacher: its outputs are the constants
    teacher = frozen_teacher(setup, feat_prompt_weight=0.0)
    calls.clear()
    teacher()
    assert len(calls) == 2 * teacher.cfg.cf_layers   # the CF branch's prompt lift only


def test_knn_graph_gives_items_without_interactions_their_neighbours_content(setup):
    train, _, _, feats = tiny_splits()
    mat = split_matrix(train, 30, 40).tolil()
    mat[:, 0] = 0                                   # item 0: nobody trained on it
    cold_setup = tiny_model_inputs(train_matrix=mat.tocsr())
    plain = frozen_teacher(cold_setup, item_residual=False)
    with_knn = frozen_teacher(cold_setup, item_residual=False, knn_k=3)
    for m in feats:
        assert torch.count_nonzero(plain().mm_item[m][0]) == 0      # the bipartite GNN gives it nothing
        assert torch.count_nonzero(with_knn().mm_item[m][0]) > 0    # its content neighbours do


def test_knn_on_ids_adds_the_mean_graphs_smoothing_of_the_item_id_embeddings(setup):
    plain = frozen_teacher(setup, knn_k=3, knn_on="features", use_prompt=False)
    on_ids = frozen_teacher(setup, knn_k=3, knn_on="ids", use_prompt=False)   # the same weights (seeded)
    graphs = cached_knn_graphs({m: x.numpy() for m, x in setup[1].items()}, 3)
    mean_graph = torch.tensor(sum(g.toarray() for g in graphs.values()) / len(graphs), dtype=torch.float32)
    torch.testing.assert_close(on_ids().cf_item - plain().cf_item, mean_graph @ on_ids.item_emb.detach(),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(on_ids().cf_user, plain().cf_user)          # users only through the items' scores
    for m in setup[1]:      # the ID smoothing replaces the features' one
        assert not torch.allclose(on_ids().mm_item[m], plain().mm_item[m])


def test_a_teacher_with_knn_k_but_without_its_graphs_is_refused(setup):
    graphs, feats, tokens = setup
    with pytest.raises(ValueError, match="needs the kNN graphs"):
        Teacher(graphs, feats, tokens, TeacherConfig(embed_size=8, knn_k=3))
    Teacher(graphs, feats, tokens, TeacherConfig(embed_size=8, knn_k=3, use_modalities=False))   # nothing to build on

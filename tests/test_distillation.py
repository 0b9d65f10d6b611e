"""Stage 2's objective (utility.objectives.Distillation) and the teacher as stage 2 uses it: which
terms run, what trains, and the item-item kNN smoothing of the CF branch."""
from dataclasses import replace

import pytest
import torch

from Models import LightGCNStudent, Teacher
from tinydata import split_matrix, tiny_model_inputs, tiny_splits
from utility.config import KDConfig, TeacherConfig
from utility.errors import UserError
from utility.graph import cached_knn_graphs, knn_tensors
from utility.objectives import Distillation

USERS, POS, NEG = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11, 12])
EXTRA = torch.tensor([[1, 2, 3], [4, 13, 14], [15, 16, 17], [18, 19, 20]])


@pytest.fixture(scope="module")
def setup():
    return tiny_model_inputs()


def teacher_of(setup, **cfg):
    graphs, feats, tokens = setup
    if cfg.get("knn_k"):
        graphs = dict(graphs, **knn_tensors(cached_knn_graphs({m: x.numpy() for m, x in feats.items()}, cfg["knn_k"])))
    torch.manual_seed(0)
    teacher = Teacher(graphs, feats, tokens, replace(TeacherConfig(embed_size=8, knn_k=0), **cfg))
    with torch.no_grad():   # weights away from their initialisation (zero biases, symmetric scales)
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return teacher.eval()


def student_of(setup):
    torch.manual_seed(1)
    return LightGCNStudent(setup[0]["norm_ui"], setup[0]["norm_iu"], 8, 2)


def test_only_the_prompts_train_in_stage_2_and_kd_reaches_them(setup):
    teacher = teacher_of(setup)
    trainable = teacher.freeze_for_distillation()
    names = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("prompt_module.") for n in names)
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in teacher.prompt_module.parameters())
    objective = Distillation(KDConfig(neg_sample_num=3), student_of(setup), teacher, reg=1e-4)
    sum(objective(USERS, POS, NEG, EXTRA).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for n, p in teacher.named_parameters() if not n.startswith("prompt_module."))


def test_which_terms_run_follows_the_weights_and_the_teacher(setup):
    teacher = teacher_of(setup)
    teacher.freeze_for_distillation()
    student = student_of(setup)
    default = Distillation(KDConfig(de_weight=0.0, neg_sample_num=3), student, teacher, reg=1e-4)
    assert set(default(USERS, POS, NEG, EXTRA)) == {"bpr", "reg", "pair_kd", "list_kd", "emb_kd"}
    assert default.extra_negatives == 3
    no_list = Distillation(KDConfig(list_weight=0.0, de_weight=1.0, neg_sample_num=0), student, teacher, reg=1e-4)
    assert no_list.extra_negatives == 0                      # no list, no extra negatives
    assert set(no_list(USERS, POS, NEG, None)) == {"bpr", "reg", "pair_kd", "emb_kd", "de_kd"}
    with pytest.raises(UserError, match="--neg_sample_num 0"):
        Distillation(KDConfig(neg_sample_num=0), student, teacher, reg=1e-4)
    off = Distillation(KDConfig(pair_weight=0, list_weight=0, emb_weight=0, de_weight=0, neg_sample_num=0),
                       student, teacher, reg=1e-4)
    assert off.teacher_output() is None and set(off(USERS, POS, NEG, None)) == {"bpr", "reg"}
    id_only = teacher_of(setup, use_modalities=False, use_prompt=False)
    id_only.freeze_for_distillation()
    plain = Distillation(KDConfig(neg_sample_num=3), student, id_only, reg=1e-4)
    assert set(plain.weights) == {"pair_kd"}                  # list and embedding KD read the modalities
    assert plain.extra_negatives == 0


def test_weights_scale_their_terms(setup):
    teacher = teacher_of(setup)
    teacher.freeze_for_distillation()
    student = student_of(setup)
    one = Distillation(KDConfig(pair_weight=1, list_weight=1, emb_weight=1, de_weight=1, neg_sample_num=3),
                       student, teacher, reg=1e-4)(USERS, POS, NEG, EXTRA)
    half = Distillation(KDConfig(pair_weight=.5, list_weight=.25, emb_weight=2, de_weight=3, neg_sample_num=3),
                        student, teacher, reg=1e-4)(USERS, POS, NEG, EXTRA)
    for name, w in (("pair_kd", .5), ("list_kd", .25), ("emb_kd", 2), ("de_kd", 3)):
        assert half[name].item() == pytest.approx(w * one[name].item(), rel=1e-5)


def test_a_teacher_with_nothing_trainable_runs_once(setup, monkeypatch):
    teacher = teacher_of(setup, use_prompt=False)
    assert teacher.freeze_for_distillation() == []
    objective = Distillation(KDConfig(neg_sample_num=3), student_of(setup), teacher, reg=1e-4)
    calls = []
    forward = Teacher.forward
    monkeypatch.setattr(Teacher, "forward", lambda self: calls.append(1) or forward(self))
    first = objective(USERS, POS, NEG, EXTRA)
    second = objective(USERS, POS, NEG, EXTRA)
    assert len(calls) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)
    prompted = teacher_of(setup)
    prompted.freeze_for_distillation()
    again = Distillation(KDConfig(neg_sample_num=3), student_of(setup), prompted, reg=1e-4)
    calls.clear()
    again(USERS, POS, NEG, EXTRA)
    again(USERS, POS, NEG, EXTRA)
    assert len(calls) == 2                                   # the prompts change: the teacher runs every step


def test_knn_smoothing_adds_the_mean_graphs_smoothing_of_the_item_id_embeddings(setup):
    plain = teacher_of(setup, use_prompt=False)
    with_knn = teacher_of(setup, knn_k=3, use_prompt=False)   # the same weights (seeded)
    graphs = cached_knn_graphs({m: x.numpy() for m, x in setup[1].items()}, 3)
    mean_graph = torch.tensor(sum(g.toarray() for g in graphs.values()) / len(graphs), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(with_knn().cf_item - plain().cf_item, mean_graph @ with_knn.item_emb,
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(with_knn().cf_user, plain().cf_user)   # users only through the items' scores
        for m in setup[1]:
            torch.testing.assert_close(with_knn().mm_item[m], plain().mm_item[m])


def test_knn_gives_items_without_interactions_their_neighbours_id_embeddings(setup):
    train, _, _, _ = tiny_splits()
    mat = split_matrix(train, 30, 40).tolil()
    mat[:, 0] = 0                                   # item 0: nobody trained on it
    cold = tiny_model_inputs(train_matrix=mat.tocsr())
    with torch.no_grad():
        assert torch.count_nonzero(teacher_of(cold, use_prompt=False)().cf_item[0] - teacher_of(
            cold, use_prompt=False).item_emb[0] / 3) == 0   # LightGCN: layer 0 only, averaged over 3 layers
        plain, smoothed = teacher_of(cold, use_prompt=False)(), teacher_of(cold, use_prompt=False, knn_k=3)()
    assert not torch.allclose(plain.cf_item[0], smoothed.cf_item[0])


def test_a_teacher_with_knn_k_but_without_its_graph_is_refused(setup):
    graphs, feats, tokens = setup
    with pytest.raises(ValueError, match="needs the mean kNN graph"):
        Teacher(graphs, feats, tokens, TeacherConfig(embed_size=8, knn_k=3))
    Teacher(graphs, feats, tokens, TeacherConfig(embed_size=8, knn_k=3, use_modalities=False))   # nothing to build on

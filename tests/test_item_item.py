"""The item-item teacher: EASE's blend with the graph teacher, the student's start chosen on validation."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from utility import item_item as ii
from utility.objectives import Distillation


def random_train(n_users=40, n_items=15, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[np.arange(n_items) % n_users, np.arange(n_items)] = 1.0
    return sp.csr_matrix(x)


def test_train_product_is_the_binary_training_matrix_times_the_weights():
    train = random_train()
    train[0, 1] = 3.0    # a repeated interaction counts once, as in the binary X
    weights = torch.randn(train.shape[1], train.shape[1])
    expected = torch.as_tensor(np.sign(train.toarray())) @ weights
    assert torch.allclose(ii.train_product(train, weights), expected, atol=1e-5)


def test_truncate_is_the_best_rank_k_approximation_and_pads_past_the_rank():
    torch.manual_seed(0)
    scores = torch.randn(30, 12) @ torch.randn(12, 20)
    user, item = ii.truncate(scores, 5)
    u, s, vt = torch.linalg.svd(scores)
    best = (u[:, :5] * s[:5]) @ vt[:5]
    assert torch.allclose(user @ item.T, best, atol=1e-3)
    # the singular values split evenly: both sides carry the same column norms
    assert torch.allclose(user.norm(dim=0), item.norm(dim=0), rtol=1e-3)
    user, item = ii.truncate(scores, 25)          # more than min(users, items): zero columns past the rank
    assert user.shape == (30, 25) and item.shape == (20, 25)
    assert torch.allclose(user @ item.T, scores, atol=1e-3)
    assert torch.all(user[:, 20:] == 0)


def test_blend_scores_weigh_the_graph_and_the_scaled_ease_scores():
    torch.manual_seed(1)
    graph, ease = torch.randn(6, 8), torch.randn(6, 8)
    blend = ii.Blend(0.25, 10.0, 3.0, ease)
    full = blend.full_scores(graph)
    assert torch.allclose(full, 0.75 * graph + 0.25 * 3.0 * ease)
    users, items = torch.tensor([4, 0, 4]), torch.tensor([[1, 7], [0, 2], [5, 5]])
    pairs = blend.pair_scores(graph[users[:, None], items], users, items)
    assert torch.allclose(pairs, full[users[:, None], items])        # the right user's row, the right items
    alone = ii.Blend(0.0, 0.0, 1.0)
    assert alone.full_scores(graph) is graph and alone.pair_scores(graph, users, items) is graph


class FixedEvaluator:
    """A validation evaluator whose metric is the fraction of each user's held-out item ranked first."""

    def __init__(self, truth):
        self.truth = torch.as_tensor(truth)

    def __call__(self, score_fn):
        users = torch.arange(self.truth.numel())
        top = score_fn(users).argmax(1)
        return {"recall@20": float((top == self.truth).float().mean())}


def test_choose_takes_the_blend_that_validation_prefers():
    # validation holds exactly the item EASE ranks first for each user, and not what the graph ranks first
    train = random_train()
    x = torch.as_tensor(train.toarray())
    ease = x @ ii.ease_weights(ii.gram(train), 10.0)
    ease = ease.masked_fill(x > 0, -1e9)
    target = ease.argmax(1)
    torch.manual_seed(0)
    user, item = torch.randn(train.shape[0], 4), torch.randn(train.shape[1], 4)
    identity = lambda u, i, depth: (u, i)   # noqa: E731
    blend, width, depth, grid = ii.choose(train, user, item, FixedEvaluator(target), "recall@20", (4, 8), (0,),
                                          identity, log=lambda *_: None, lambdas=(10.0,), weights=(0.0, 0.75))
    assert blend.weight == 0.75 and blend.lam == 10.0 and blend.ease is not None
    assert grid[(10.0, 0.75, width, 0)] > grid[(0.0, 0.0, width, 0)]
    assert width in (4, 8)


def test_choose_at_the_teachers_own_width_still_factorises_each_blend():
    """A width fixed at the teacher's (--student_embed_size d): the blends are factorised, the graph
    teacher alone is its own embeddings."""
    train = random_train()
    x = torch.as_tensor(train.toarray())
    target = (x @ ii.ease_weights(ii.gram(train), 10.0)).masked_fill(x > 0, -1e9).argmax(1)
    torch.manual_seed(0)
    user, item = torch.randn(train.shape[0], 4), torch.randn(train.shape[1], 4)
    identity = lambda u, i, depth: (u, i)   # noqa: E731
    blend, width, _, grid = ii.choose(train, user, item, FixedEvaluator(target), "recall@20", (4,), (0,), identity,
                                      log=lambda *_: None, lambdas=(10.0,), weights=(0.0, 0.75))
    assert width == 4 and set(grid) == {(0.0, 0.0, 4, 0), (10.0, 0.75, 4, 0)}


def test_choose_keeps_the_graph_teacher_and_the_narrow_width_when_ease_does_not_help():
    train = random_train(seed=3)
    torch.manual_seed(0)
    user, item = torch.randn(train.shape[0], 4), torch.randn(train.shape[1], 4)
    target = (user @ item.T).argmax(1)          # validation agrees with the graph teacher's top item
    identity = lambda u, i, depth: (u, i)   # noqa: E731
    blend, width, depth, grid = ii.choose(train, user, item, FixedEvaluator(target), "recall@20", (4, 8), (0,),
                                          identity, log=lambda *_: None, lambdas=(10.0,), weights=(0.0, 0.75))
    assert blend.weight == 0.0 and width == 4 and grid[(0.0, 0.0, 4, 0)] == 1.0


def test_choose_scores_each_depth_as_the_student_propagates():
    train = random_train()
    torch.manual_seed(0)
    user, item = torch.randn(train.shape[0], 4), torch.randn(train.shape[1], 4)
    target = (user @ item.T).argmax(1)
    seen = []

    def propagate(u, i, depth):
        seen.append(depth)
        return (u, i) if depth == 2 else (u, -i)   # depth 0 reverses the ranking: depth 2 must win

    _, width, depth, _ = ii.choose(train, user, item, FixedEvaluator(target), "recall@20", (4,), (0, 2),
                                   propagate, log=lambda *_: None, lambdas=())
    assert depth == 2 and width == 4 and sorted(set(seen)) == [0, 2]


def test_too_large_names_the_limit():
    assert ii.too_large(100, 200) is None
    assert "items" in ii.too_large(10, ii.MAX_ITEMS + 1)
    assert "pairs" in ii.too_large(ii.MAX_SCORES // 100 + 1, 100)


def test_pair_kd_reads_the_blended_teacher_scores():
    """The pair-wise KD target is the blend, not the graph teacher's score alone."""
    from types import SimpleNamespace
    from utility.config import KDConfig

    n_users, n_items, d = 5, 7, 3
    torch.manual_seed(0)
    t_user, t_item = torch.randn(n_users, d), torch.randn(n_items, d)
    out = SimpleNamespace(cf_user=t_user, cf_item=t_item, mm_user={}, mm_item={}, fuse=lambda cf, mm: cf)

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.user_emb = torch.nn.Parameter(torch.randn(n_users, d))
            self.item_emb = torch.nn.Parameter(torch.randn(n_items, d))

        def lookup(self, users, *items):
            return self.user_emb[users], self.item_emb, items

        def ego_embeddings(self, users, items):
            return self.user_emb[users], self.item_emb[items]

    teacher = SimpleNamespace(modalities=[], parameters=lambda: iter(()))
    kd = KDConfig(pair_weight=1.0, list_weight=0.0, emb_weight=0.0, de_weight=0.0)
    users, pos, neg = torch.tensor([0, 3]), torch.tensor([1, 2]), torch.tensor([4, 6])
    student = Student()
    plain = Distillation(kd, student, teacher, 0.0).terms(out, users, pos, neg, None)["pair_kd"]
    ease = torch.zeros(n_users, n_items)
    ease[3, 6] = 50.0                                   # EASE is sure user 3 likes item 6 (the negative)
    blended = Distillation(kd, student, teacher, 0.0, blend=ii.Blend(0.5, 10.0, 1.0, ease)).terms(
        out, users, pos, neg, None)["pair_kd"]
    assert not torch.isclose(plain, blended)
    same = Distillation(kd, student, teacher, 0.0, blend=ii.Blend(0.5, 10.0, 1.0, torch.zeros(n_users, n_items)))
    expected = Distillation(kd, student, teacher, 0.0).terms(
        SimpleNamespace(cf_user=t_user * 0.5 ** 0.5, cf_item=t_item * 0.5 ** 0.5, mm_user={}, mm_item={},
                        fuse=lambda cf, mm: cf), users, pos, neg, None)["pair_kd"]
    assert torch.isclose(same.terms(out, users, pos, neg, None)["pair_kd"], expected)


@pytest.mark.parametrize("n_items", [15])
def test_ease_weights_have_a_zero_diagonal(n_items):
    b = ii.ease_weights(ii.gram(random_train(n_items=n_items)), 5.0)
    assert torch.all(torch.diagonal(b) == 0) and b.dtype == torch.float32

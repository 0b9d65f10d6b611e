"""The vectorised evaluator against rankings worked out by hand."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from utility.evaluate import RankingEvaluator, dot_scores


def csr(rows, n_users=3, n_items=6):
    r = [u for u, items in rows.items() for _ in items]
    c = [i for items in rows.values() for i in items]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))


# scores rank items 5 > 4 > 3 > 2 > 1 > 0 for every user
ITEM_EMB = torch.arange(6, dtype=torch.float32)[:, None]
USER_EMB = torch.ones(3, 1)


def test_training_items_are_excluded_and_users_without_truth_skipped():
    train = csr({0: [5], 1: [], 2: []})
    truth = csr({0: [4], 1: [0], 2: []})            # user 2 has no held-out item: skipped
    ev = RankingEvaluator(truth, [train], [1, 2, 5], torch.device("cpu"))
    m = ev(dot_scores(USER_EMB, ITEM_EMB))
    # user 0: item 5 excluded, item 4 ranked first -> hit@1; user 1: item 0 is ranked last (6th)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["hit@5"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert ev.users.tolist() == [0, 1]


def test_validation_items_excluded_at_test_time_only_when_asked():
    train = csr({0: [], 1: [], 2: []})
    val = csr({0: [5], 1: [], 2: []})
    test = csr({0: [4], 1: [], 2: []})
    with_val = RankingEvaluator(test, [train, val], [1], torch.device("cpu"))(dot_scores(USER_EMB, ITEM_EMB))
    without = RankingEvaluator(test, [train], [1], torch.device("cpu"))(dot_scores(USER_EMB, ITEM_EMB))
    assert with_val["recall@1"] == 1.0 and without["recall@1"] == 0.0


def test_batching_and_sharding_do_not_change_results():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 30
    train = sp.random(n_users, n_items, density=0.2, random_state=1, format="csr")
    train.data[:] = 1
    test = sp.random(n_users, n_items, density=0.1, random_state=2, format="csr")
    test = (test - test.multiply(train)).tocsr()
    test.eliminate_zeros()
    test.data[:] = 1
    user, item = torch.tensor(rng.normal(size=(n_users, 8)), dtype=torch.float32), \
        torch.tensor(rng.normal(size=(n_items, 8)), dtype=torch.float32)
    ks = [5, 10, 20]
    full = RankingEvaluator(test, [train], ks, torch.device("cpu"), batch_size=1000)(dot_scores(user, item))
    small = RankingEvaluator(test, [train], ks, torch.device("cpu"), batch_size=7)(dot_scores(user, item))
    assert full == pytest.approx(small)
    parts = [RankingEvaluator(test, [train], ks, torch.device("cpu"), batch_size=4, shard=(r, 3))
             .metric_sums(dot_scores(user, item)) for r in range(3)]
    count = sum(c for _, c in parts)
    merged = {k: sum(float(p[0][k]) for p in parts) / count for k in full}
    assert merged == pytest.approx(full)
    # brute force recall@10 for one cross-check
    scores = (user @ item.T).numpy()
    scores[train.toarray() > 0] = -np.inf
    recalls = []
    for u in range(n_users):
        pos = set(test[u].indices)
        if pos:
            top = np.argsort(-scores[u], kind="stable")[:10]
            recalls.append(len(pos & set(top)) / len(pos))
    assert full["recall@10"] == pytest.approx(np.mean(recalls))


def test_k_larger_than_item_count():
    train = csr({0: [], 1: [], 2: []}, n_items=3)
    truth = csr({0: [1], 1: [], 2: []}, n_items=3)
    m = RankingEvaluator(truth, [train], [2, 50], torch.device("cpu"))(
        dot_scores(torch.ones(3, 1), torch.arange(3, dtype=torch.float32)[:, None]))
    assert m["recall@2"] == 1.0 and m["recall@50"] == 1.0 and m["precision@50"] == pytest.approx(1 / 50)


def test_truth_with_unsorted_column_indices():
    """The hit search must not rely on the caller's CSR indices being sorted, nor sort them in place."""
    data = np.ones(4, np.float32)
    indices = np.array([3, 1, 5, 2])                 # user 0 holds {3, 1}, user 1 holds {5, 2}: both unsorted
    indptr = np.array([0, 2, 4, 4])
    truth = sp.csr_matrix((data, indices, indptr), shape=(3, 6))
    assert not truth.has_sorted_indices
    train = csr({0: [], 1: [], 2: []})
    # every user ranks 3 > 0 > 5 > 1 > 4 > 2
    item = torch.tensor([[5.0], [3.0], [1.0], [6.0], [2.0], [4.0]])
    m = RankingEvaluator(truth, [train], [2, 4], torch.device("cpu"))(dot_scores(torch.ones(3, 1), item))
    # user 0: hit at rank 1 (item 3), item 1 at rank 4; user 1: item 5 at rank 3, item 2 last
    assert m["recall@2"] == 0.25
    assert m["recall@4"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 0.0) / 2)
    assert truth.indices.tolist() == [3, 1, 5, 2]    # the caller's matrix is left as it was


def test_hand_worked_metrics_with_training_and_validation_items_excluded():
    """8 items scored 7 > 6 > ... > 0. Training item 7 and validation item 5 are the top scores
    the model gives; the test items are 6, 3 and 0."""
    n = 8
    train = csr({0: [7]}, n_users=1, n_items=n)
    val = csr({0: [5]}, n_users=1, n_items=n)
    test = csr({0: [6, 3, 0]}, n_users=1, n_items=n)
    score = dot_scores(torch.ones(1, 1), torch.arange(n, dtype=torch.float32)[:, None])
    d = [1 / math.log2(r + 1) for r in range(1, 9)]                 # discount at rank r
    ideal3 = d[0] + d[1] + d[2]

    # test time: ranking 6 4 3 2 1 0 -> hits at ranks 1, 3 and 6
    m = RankingEvaluator(test, [train, val], [1, 3, 6], torch.device("cpu"))(score)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["recall@6"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((d[0] + d[2]) / ideal3)
    assert m["ndcg@6"] == pytest.approx((d[0] + d[2] + d[5]) / ideal3)
    assert m["ndcg_legacy@3"] == pytest.approx((d[0] + d[2]) / (d[0] + d[1]))

    # validation items left in: ranking 6 5 4 3 ... -> hits at ranks 1, 4 and 7
    m = RankingEvaluator(test, [train], [3, 6], torch.device("cpu"))(score)
    assert m["recall@3"] == pytest.approx(1 / 3)
    assert m["ndcg@6"] == pytest.approx((d[0] + d[3]) / ideal3)

    # nothing excluded: the training item takes rank 1 -> hits at ranks 2, 5 and 8
    m = RankingEvaluator(test, [], [1, 3], torch.device("cpu"))(score)
    assert m["recall@1"] == 0.0
    assert m["ndcg@3"] == pytest.approx(d[1] / ideal3)


def test_per_user_metrics_average_to_the_reported_means():
    import scipy.sparse as sp
    train = sp.random(40, 30, density=0.2, random_state=1, format="csr")
    test = sp.random(40, 30, density=0.1, random_state=2, format="csr")
    test = (test - test.multiply(train)).tocsr()
    test.eliminate_zeros()
    gen = torch.Generator().manual_seed(0)
    user, item = torch.randn(40, 8, generator=gen), torch.randn(30, 8, generator=gen)
    evaluator = RankingEvaluator(test, [train], [10, 20], torch.device("cpu"), batch_size=7)
    means = evaluator(dot_scores(user, item))
    per_user = evaluator.per_user(dot_scores(user, item))
    assert list(per_user["users"]) == list(np.flatnonzero(np.diff(test.indptr) > 0))
    for name in ("recall@20", "ndcg@20"):
        assert per_user[name].shape == per_user["users"].shape
        assert per_user[name].mean() == pytest.approx(means[name], abs=1e-12)
    # one user by hand: recall@20 = held-out items among its top 20 (training items excluded)
    u = int(per_user["users"][3])
    scores = (user[u] @ item.T).numpy()
    scores[train[u].indices] = -np.inf
    top = set(np.argsort(-scores, kind="stable")[:20])
    truth = set(test[u].indices)
    assert per_user["recall@20"][3] == pytest.approx(len(top & truth) / len(truth))


def test_top_unseen_items_ranks_by_score_and_skips_seen_items():
    from utility.evaluate import top_unseen_items
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    item = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 3.0]])
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    top = top_unseen_items(user, item, seen, 2, batch_size=2)
    # user 0 scores 3, 2, 1, 0 but has seen item 0; user 1 scores 0, 1, 2, 3 but has seen item 3;
    # user 2 scores 3, 3, 3, 3: any two (ties), none seen
    assert top[0].tolist() == [1, 2] and top[1].tolist() == [2, 1]
    assert top.shape == (3, 2) and len(set(top[2].tolist())) == 2


def test_reduce_sums_the_totals_of_every_process():
    """The distributed path: ``reduce`` gets the stacked metric sums and the user count, and the
    means are taken from what it returns (here two identical processes, and a second process that
    adds one user with no hit)."""
    train = csr({0: [5], 1: [], 2: []})
    truth = csr({0: [4], 1: [0], 2: [4]})
    score = dot_scores(USER_EMB, ITEM_EMB)
    plain = RankingEvaluator(truth, [train], [1, 2], torch.device("cpu"))(score)
    seen = []

    def twice(totals):
        seen.append(totals.clone())
        return totals * 2

    doubled = RankingEvaluator(truth, [train], [1, 2], torch.device("cpu"), reduce=twice)(score)
    assert doubled == pytest.approx(plain) and set(doubled) == set(plain)
    assert seen[0].dtype == torch.float64 and seen[0][-1].item() == 3.0
    # user 0: hit@1 (4 is first once 5 is excluded); user 1: item 0 last; user 2: item 4 second
    assert plain["recall@1"] == pytest.approx(1 / 3) and plain["recall@2"] == pytest.approx(2 / 3)
    one_more_user = lambda totals: totals + torch.eye(len(totals), dtype=totals.dtype)[-1]  # noqa: E731
    padded = RankingEvaluator(truth, [train], [1, 2], torch.device("cpu"), reduce=one_more_user)(score)
    assert padded["recall@1"] == pytest.approx(1 / 4) and padded["recall@2"] == pytest.approx(2 / 4)


def test_a_fixed_sample_of_users_is_evaluated_exactly_as_those_users_alone():
    rng = np.random.default_rng(0)
    truth = sp.random(200, 30, density=0.05, random_state=1, format="csr")
    truth.data[:] = 1
    train = sp.random(200, 30, density=0.1, random_state=2, format="csr")
    train.data[:] = 1
    train = train - train.multiply(truth)
    user_emb, item_emb = torch.from_numpy(rng.normal(size=(200, 4)).astype(np.float32)), \
        torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32))
    cpu = torch.device("cpu")
    ev = RankingEvaluator(truth, [train], [5, 10], cpu, sample=(40, 7))
    with_truth = np.flatnonzero(np.diff(truth.indptr) > 0)
    users = ev.users.numpy()
    assert ev.n_users_sampled == 40 == len(set(users)) and set(users) <= set(with_truth)
    assert ev.n_users_total == with_truth.size
    np.testing.assert_array_equal(RankingEvaluator(truth, [train], [5], cpu, sample=(40, 7)).users.numpy(), users)
    assert not np.array_equal(RankingEvaluator(truth, [train], [5], cpu, sample=(40, 8)).users.numpy(), users)
    # the same metrics as the full evaluator on a truth matrix holding only the sampled users' rows
    keep = sp.diags(np.isin(np.arange(200), users).astype(np.float32))
    alone = RankingEvaluator(sp.csr_matrix(keep @ truth), [train], [5, 10], cpu)
    assert ev(dot_scores(user_emb, item_emb)) == pytest.approx(alone(dot_scores(user_emb, item_emb)))
    # a sample at least as large as the users keeps them all
    assert RankingEvaluator(truth, [train], [5], cpu, sample=(10_000, 7)).users.numel() == with_truth.size

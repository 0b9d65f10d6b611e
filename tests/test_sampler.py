"""TripleSampler on a small, dense training matrix: most draws hit a positive and must be redrawn."""
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

from utility.sampler import TripleSampler

N_USERS, N_ITEMS = 7, 10


def dense_train():
    """Users 0-5 hold 6 to 9 of the 10 items (user 5 has a single non-positive, item 7);
    user 6 has no training item and must never be sampled."""
    rng = np.random.default_rng(42)
    dense = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    for u, n_pos in enumerate([6, 7, 8, 9, 8, 9]):
        dense[u, rng.choice(N_ITEMS, n_pos, replace=False)] = 1
    dense[5] = 1
    dense[5, 7] = 0
    return dense


def unsorted_csr(dense):
    """The same matrix with each row's column indices stored in descending order."""
    indptr, indices = [0], []
    for row in dense:
        indices.extend(np.flatnonzero(row)[::-1])
        indptr.append(len(indices))
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=dense.shape)


@pytest.fixture(params=["sorted", "unsorted"])
def train(request):
    dense = dense_train()
    mat = sp.csr_matrix(dense) if request.param == "sorted" else unsorted_csr(dense)
    assert mat.has_sorted_indices == (request.param == "sorted")
    return mat


@pytest.mark.parametrize("block", [None, 7])
def test_negatives_are_never_training_items(train, block):
    dense = train.toarray()
    sampler = TripleSampler(train, seed=0)
    if block is not None:
        sampler.BLOCK = block          # several membership blocks per epoch, not aligned with K
    for _ in range(20):
        users, pos, neg, extra = sampler.epoch(extra_negatives=3)
        assert dense[users, pos].all()
        assert not dense[users, neg].any()
        assert extra.shape == (users.size, 3)
        assert not dense[users[:, None], extra].any()
        assert (neg >= 0).all() and (neg < N_ITEMS).all() and (extra >= 0).all() and (extra < N_ITEMS).all()
    # user 5's only possible negative
    assert (neg[users == 5] == 7).all() and (extra[users == 5] == 7).all()


def test_an_epoch_visits_every_interaction_once(train):
    dense = train.toarray()
    expected = Counter(zip(*map(list, np.nonzero(dense))))
    sampler = TripleSampler(train, seed=1)
    orders = []
    for _ in range(3):
        users, pos, neg, extra = sampler.epoch()
        assert extra is None
        assert users.dtype == pos.dtype == neg.dtype == np.int32
        assert users.shape == pos.shape == neg.shape == (len(expected),)
        assert Counter(zip(users.tolist(), pos.tolist())) == expected
        orders.append(list(zip(users.tolist(), pos.tolist())))
    assert orders[0] != orders[1] or orders[1] != orders[2]     # shuffled anew each epoch


def test_negatives_are_uniform_over_the_users_non_positives():
    dense = np.ones((1, 8), dtype=np.float32)
    dense[0, [1, 4, 6]] = 0
    sampler = TripleSampler(sp.csr_matrix(dense), seed=3)
    draws = sampler.negatives(np.zeros(6000, dtype=np.int32), k=2)
    assert draws.shape == (6000, 2) and draws.dtype == np.int32
    counts = Counter(draws.ravel().tolist())
    assert set(counts) == {1, 4, 6}
    for item in (1, 4, 6):
        assert counts[item] / draws.size == pytest.approx(1 / 3, abs=0.03)


def test_state_replays_the_same_epoch(train):
    sampler = TripleSampler(train, seed=5)
    sampler.epoch(extra_negatives=2)
    state = sampler.get_state()
    first = sampler.epoch(extra_negatives=2)
    after = sampler.epoch(extra_negatives=2)
    sampler.set_state(state)
    replay = sampler.epoch(extra_negatives=2)
    for a, b in zip(first, replay):
        np.testing.assert_array_equal(a, b)
    # a new sampler (a resumed run) given the saved state draws the same epoch too
    resumed = TripleSampler(train, seed=999)
    resumed.set_state(state)
    for a, b in zip(first, resumed.epoch(extra_negatives=2)):
        np.testing.assert_array_equal(a, b)
    # the state really moves on: the next epoch differs
    assert not all(np.array_equal(a, b) for a, b in zip(first, after))


def test_same_seed_same_epochs_different_seed_different_epochs(train):
    a, b, c = TripleSampler(train, 7), TripleSampler(train, 7), TripleSampler(train, 8)
    ea, eb, ec = a.epoch(1), b.epoch(1), c.epoch(1)
    for x, y in zip(ea, eb):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(ea, ec))


def test_raises_when_a_user_has_every_item():
    dense = dense_train()
    dense[2] = 1
    with pytest.raises(ValueError, match="every item"):
        TripleSampler(sp.csr_matrix(dense), seed=0)


def test_duplicate_entries_count_once_and_the_callers_matrix_is_left_alone():
    dense = dense_train()
    mat = unsorted_csr(dense)
    before = (mat.indptr.copy(), mat.indices.copy())
    TripleSampler(mat, seed=0).epoch()
    np.testing.assert_array_equal(mat.indptr, before[0])
    np.testing.assert_array_equal(mat.indices, before[1])
    # user 0 with item 3 stored twice (an un-summed CSR): still one interaction per epoch
    dup = sp.csr_matrix((np.ones(2, np.float32), [3, 3], [0, 2, 2]), shape=(2, 5))
    users, pos, _, _ = TripleSampler(dup, seed=0).epoch()
    assert users.tolist() == [0] and pos.tolist() == [3]


def test_item_zero_can_be_a_negative_and_one_negative_by_default():
    dense = np.zeros((1, 3), dtype=np.float32)
    dense[0, 2] = 1
    sampler = TripleSampler(sp.csr_matrix(dense), seed=0)
    draws = sampler.negatives(np.zeros(2000, dtype=np.int32))
    assert draws.shape == (2000, 1)
    assert set(draws.ravel().tolist()) == {0, 1}
    assert (draws == 0).mean() == pytest.approx(0.5, abs=0.05)     # uniform over {0, 1}


def test_negatives_from_train_never_draw_an_item_without_training_interactions():
    dense = np.zeros((6, 10), dtype=np.float32)
    dense[np.arange(6), np.arange(6)] = 1.0                     # items 6..9: no training interaction
    dense[0, 1] = 1.0
    everything = TripleSampler(sp.csr_matrix(dense), seed=0).negatives(np.arange(6).repeat(200))
    assert (everything >= 6).any()                              # the default draws among all items
    sampler = TripleSampler(sp.csr_matrix(dense), seed=0, negatives_from_train=True)
    users, pos, neg, _ = sampler.epoch()
    assert neg.max() < 6 and not dense[users, neg].any()
    negs = sampler.negatives(np.zeros(500, dtype=np.int32))
    assert set(np.unique(negs)) == {2, 3, 4, 5}                 # user 0 has items 0 and 1

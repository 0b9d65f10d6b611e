"""The normalised graphs on a 3-user x 4-item graph worked out by hand.

    user 0: items 0, 1, 2      user degrees: 3, 1, 0 (user 2 has no item)
    user 1: item 1             item degrees: 1, 2, 1, 0 (item 3 has no user)
"""
import math

import pytest

import numpy as np
import scipy.sparse as sp
import torch

from utility.graph import mean_adj, sym_norm_adj, sym_norm_blocks, to_torch_csr

R = np.array([[1, 1, 1, 0],
              [0, 1, 0, 0],
              [0, 0, 0, 0]], dtype=np.float32)


def train():
    return sp.csr_matrix(R)


def test_mean_adj_by_hand():
    user_mean, item_mean = mean_adj(train())
    assert user_mean.shape == (3, 4) and item_mean.shape == (4, 3)
    assert user_mean.dtype == item_mean.dtype == np.float32
    np.testing.assert_allclose(user_mean.toarray(), [[1 / 3, 1 / 3, 1 / 3, 0],
                                                     [0, 1, 0, 0],
                                                     [0, 0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(item_mean.toarray(), [[1, 0, 0],
                                                     [0.5, 0.5, 0],
                                                     [1, 0, 0],
                                                     [0, 0, 0]], rtol=1e-6)


def test_mean_adj_rows_are_means():
    """Each row sums to 1 for a node with neighbours (0 for one without), so that multiplying by
    embeddings gives each user's mean item embedding and each item's mean user embedding."""
    user_mean, item_mean = mean_adj(train())
    np.testing.assert_allclose(np.asarray(user_mean.sum(axis=1)).ravel(), [1, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(item_mean.sum(axis=1)).ravel(), [1, 1, 1, 0], rtol=1e-6)
    item_emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_allclose(user_mean @ item_emb, [item_emb[:3].mean(0), item_emb[1], [0, 0]], rtol=1e-6)
    user_emb = np.array([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]], dtype=np.float32)
    np.testing.assert_allclose(item_mean @ user_emb, [user_emb[0], user_emb[:2].mean(0), user_emb[0], [0, 0]],
                               rtol=1e-6)


def test_sym_norm_blocks_by_hand():
    ui, iu = sym_norm_blocks(train())
    assert ui.shape == (3, 4) and iu.shape == (4, 3)
    expected = np.zeros((3, 4))
    expected[0, 0] = 1 / math.sqrt(3 * 1)
    expected[0, 1] = 1 / math.sqrt(3 * 2)
    expected[0, 2] = 1 / math.sqrt(3 * 1)
    expected[1, 1] = 1 / math.sqrt(1 * 2)
    np.testing.assert_allclose(ui.toarray(), expected, rtol=1e-6)
    np.testing.assert_allclose(iu.toarray(), expected.T, rtol=1e-6)


def test_blocks_are_the_off_diagonal_blocks_of_the_square_adjacency():
    adj = sym_norm_adj(train()).toarray()
    assert adj.shape == (7, 7)
    ui, iu = sym_norm_blocks(train())
    np.testing.assert_allclose(adj[:3, 3:], ui.toarray(), rtol=1e-6)
    np.testing.assert_allclose(adj[3:, :3], iu.toarray(), rtol=1e-6)
    assert (adj[:3, :3] == 0).all() and (adj[3:, 3:] == 0).all()
    np.testing.assert_allclose(adj, adj.T)


def test_blocks_on_a_random_graph_match_the_square_adjacency():
    r = sp.random(20, 15, density=0.2, random_state=0, format="csr")
    r.data[:] = 1
    adj = sym_norm_adj(r).toarray()
    ui, iu = sym_norm_blocks(r)
    np.testing.assert_allclose(adj[:20, 20:], ui.toarray(), rtol=1e-6)
    np.testing.assert_allclose(adj[20:, :20], iu.toarray(), rtol=1e-6)


def test_to_torch_csr_round_trips():
    unsorted = sp.csr_matrix((np.array([2.0, 3.0, 5.0], np.float32), np.array([3, 0, 2]), np.array([0, 2, 2, 3])),
                             shape=(3, 4))
    assert not unsorted.has_sorted_indices
    for mat in [*mean_adj(train()), *sym_norm_blocks(train()), sym_norm_adj(train()), unsorted,
                sp.csr_matrix(R.astype(np.float64)), sp.coo_matrix(R)]:
        dense = mat.toarray().astype(np.float32)
        t = to_torch_csr(mat)
        assert t.layout == torch.sparse_csr and t.dtype == torch.float32 and tuple(t.shape) == dense.shape
        np.testing.assert_array_equal(t.to_dense().numpy(), dense)
        x = torch.arange(dense.shape[1] * 2, dtype=torch.float32).reshape(-1, 2)
        np.testing.assert_allclose((t @ x).numpy(), dense @ x.numpy(), rtol=1e-6)


def test_knn_neighbours_are_the_most_cosine_similar_other_items_in_any_block_size():
    from utility.graph import knn_neighbours
    x = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    for budget in (23, 50, 1 << 20):                 # one row per block, a few rows, everything at once
        got = knn_neighbours(x * 3.0, 4, budget=budget)   # cosine: the scale of the features does not matter
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)


def test_knn_graph_is_the_symmetrised_sym_normalised_adjacency():
    from utility.graph import knn_graph
    neighbours = np.array([[1], [2], [1]])            # 0->1, 1->2, 2->1: edges {0,1}, {1,2}
    g = knn_graph(neighbours, 3).toarray()
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float64)
    d = 1 / np.sqrt(a.sum(1))
    np.testing.assert_allclose(g, d[:, None] * a * d[None, :], rtol=1e-6)
    np.testing.assert_allclose(g, g.T)


def test_knn_neighbour_lists_are_cached_under_the_features_and_k(tmp_path, monkeypatch):
    import utility.graph as graph
    feats = {"image": np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)}
    first = graph.cached_knn_graphs(feats, 3, str(tmp_path))
    assert len(list(tmp_path.glob("knn_image_*.npy"))) == 1
    monkeypatch.setattr(graph, "knn_neighbours", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    again = graph.cached_knn_graphs(feats, 3, str(tmp_path))
    assert (first["image"] != again["image"]).nnz == 0
    monkeypatch.undo()
    graph.cached_knn_graphs(feats, 2, str(tmp_path))    # another k: another file
    assert len(list(tmp_path.glob("knn_image_*.npy"))) == 2

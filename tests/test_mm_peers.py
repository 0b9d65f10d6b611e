"""FREEDOM and DRAGON inside the harness (bench/mm_peers.py): their graphs, FREEDOM's edge pruning, their
forward passes and their training under the harness's protocol."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bench import mm_peers as fr
from tinydata import split_matrix, tiny_splits
from utility.evaluate import RankingEvaluator
from utility.graph import sym_norm_adj
from utility.load_data import Dataset


def test_item_graph_rows_mix_each_modalitys_k_nearest_items_itself_included():
    # items 0-2 alike in the first modality, items 0 and 3 alike in the second
    vision = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]], dtype=np.float32)
    text = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [0.95, 0.05]], dtype=np.float32)
    s = fr.item_item_graph(vision, text, k=2, vision_weight=0.1).toarray()
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-6)                  # row-stochastic
    np.testing.assert_allclose(np.diag(s), 0.5, rtol=1e-6)                 # itself, in both modalities
    assert s[0, 1] == pytest.approx(0.05) and s[0, 3] == pytest.approx(0.45)   # 0.1 / 2 and 0.9 / 2
    assert s[3, 0] == pytest.approx(0.45) and s[3, 2] == pytest.approx(0.05)   # directed: row 3's own neighbours
    assert s[1, 3] == 0 and s[0, 2] == 0


def test_edge_weights_fall_with_both_degrees():
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1]], dtype=np.float32))
    weights, coo = fr.edge_keep_weights(train)
    du, di = np.array([2, 1, 2]), np.array([3, 1, 1])
    np.testing.assert_allclose(weights, 1 / np.sqrt(du[coo.row] * di[coo.col]))


def test_pruning_keeps_distinct_edges_with_probability_proportional_to_weight():
    rng = np.random.default_rng(0)
    kept = fr.prune_edges(np.array([1.0, 2.0, 3.0, 4.0]), 3, rng)
    assert len(set(kept.tolist())) == 3
    weights = np.array([1.0, 3.0, 6.0])
    counts = np.bincount([fr.prune_edges(weights, 1, rng)[0] for _ in range(6000)], minlength=3)
    np.testing.assert_allclose(counts / 6000, weights / weights.sum(), atol=0.025)
    np.testing.assert_array_equal(np.sort(fr.prune_edges(weights, 3, rng)), [0, 1, 2])


def tiny_dataset():
    train, val, test, feats = tiny_splits()
    mats = {name: split_matrix(split, 30, 40).tocsr() for name, split in (("train", train), ("val", val), ("test", test))}
    return Dataset(name="tiny", path="", layout="json", n_users=30, n_items=40, train=mats["train"], val=mats["val"],
                   test=mats["test"], modality_feats=feats)


def test_freedom_is_lightgcn_plus_the_item_graph_over_the_id_embeddings():
    ds = tiny_dataset()
    torch.manual_seed(0)
    model = fr.Freedom(ds, "image", "text", fr.FreedomConfig(embed_size=8, knn_k=3), "cpu")
    user, item = model.representations()                      # the full graph
    a = torch.as_tensor(sym_norm_adj(ds.train).toarray())
    x0 = torch.cat([model.user_emb, model.item_emb]).detach()
    mean = (x0 + a @ x0 + a @ (a @ x0)) / 3
    graph = fr.item_item_graph(ds.modality_feats["image"], ds.modality_feats["text"], 3, 0.1)
    expected_item = mean[30:] + torch.as_tensor(graph.toarray()) @ model.item_emb.detach()
    assert torch.allclose(user, mean[:30], atol=1e-5)
    assert torch.allclose(item, expected_item, atol=1e-5)
    # training propagates on a pruned graph with a tenth of the edges (rounded down), drawn each epoch
    model.start_epoch(np.random.default_rng(0))
    assert model.pruned[0]._nnz() == int((1 - 0.9) * ds.train.nnz) == 17 and model.full[0]._nnz() == ds.train.nnz


def test_user_neighbours_are_those_with_most_items_in_common():
    train = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32))
    neighbours, counts, degree = fr.user_neighbours(train, 2)
    np.testing.assert_array_equal(neighbours[0], [1, 2])       # 2 items in common, then 1
    np.testing.assert_array_equal(counts[0], [2, 1])
    np.testing.assert_array_equal(neighbours[2], [0, 1])       # a tie, by user id
    assert degree.tolist() == [2, 2, 2, 0]                    # user 3 shares nothing
    weights = fr.neighbour_weights(counts, degree)
    assert torch.allclose(weights[0], torch.softmax(torch.tensor([2.0, 1.0]), 0))
    assert weights[3].abs().sum() == 0


def test_short_neighbour_rows_are_padded_with_their_own_neighbours():
    neighbours = np.array([[5, 0, 0, 0], [7, 8, 0, 0], [0, 0, 0, 0]])
    counts = np.array([[3.0, 0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 0, 0]])
    padded, padded_counts = fr.pad_neighbours(neighbours, counts, np.array([1, 2, 0]), np.random.default_rng(0))
    assert padded[0].tolist() == [5, 5, 5, 5] and padded_counts[0].tolist() == [3.0] * 4
    assert padded[1, :2].tolist() == [7, 8] and set(padded[1, 2:]) <= {7, 8}
    assert {7: 2.0, 8: 1.0}[padded[1, 3]] == padded_counts[1, 3]
    assert padded[2].tolist() == [0, 0, 0, 0]
    assert neighbours[0, 1] == 0                                 # the caller's arrays are left alone


def test_dragon_fuses_the_modalities_then_adds_the_item_and_user_graphs():
    ds = tiny_dataset()
    torch.manual_seed(0)
    cfg = fr.DragonConfig(embed_size=8, hidden=16, knn_k=3, user_k=4)
    model = fr.Dragon(ds, "image", "text", cfg, "cpu")
    model.start_epoch(np.random.default_rng(0))
    user, item = model.representations()
    assert user.shape == (30, 16) and item.shape == (40, 16)
    a = torch.as_tensor(sym_norm_adj(ds.train).toarray())
    halves_u, halves_i = [], []
    with torch.no_grad():
        for index, (pref, net) in enumerate(zip(model.preferences, model.item_nets)):
            x0 = torch.nn.functional.normalize(torch.cat([pref, net(torch.as_tensor(ds.modality_feats[
                ("image", "text")[index]]))]), dim=1)
            total = x0 + a @ x0 + a @ (a @ x0)                  # the sum of the layers
            halves_u.append(model.alpha[:, index:index + 1] * total[:30])
            halves_i.append(total[30:])
    fused_u, fused_i = torch.cat(halves_u, 1), torch.cat(halves_i, 1)
    graph = torch.as_tensor(fr.item_item_graph(ds.modality_feats["image"], ds.modality_feats["text"], 3, 0.1).toarray())
    assert torch.allclose(item, fused_i + graph @ fused_i, atol=1e-5)
    dense = torch.as_tensor(model.user_graph[0].to_dense())
    assert torch.allclose(dense.sum(1)[torch.as_tensor(model.degree > 0)], torch.tensor(1.0))   # softmax rows
    assert torch.allclose(user, fused_u + dense @ fused_u, atol=1e-5)


def test_the_user_graph_sums_a_padded_neighbours_copies():
    neighbours = np.array([[1, 2, 1], [0, 0, 0], [0, 1, 0]])
    weights = np.array([[0.5, 0.3, 0.2], [0.0, 0.0, 0.0], [0.2, 0.2, 0.6]])
    graph = fr.user_graph_matrix(neighbours, weights).toarray()
    np.testing.assert_allclose(graph, [[0, 0.7, 0.3], [0, 0, 0], [0.8, 0.2, 0]], rtol=1e-6)


@pytest.mark.parametrize("name", ["FREEDOM", "DRAGON"])
def test_training_learns_stops_on_patience_and_tests_the_best_epoch(name):
    ds = tiny_dataset()
    val_eval = RankingEvaluator(ds.val, [ds.train], [20], "cpu")
    test_calls = []

    def test_eval(score_fn):
        test_calls.append(1)
        return RankingEvaluator(ds.test, [ds.train, ds.val], [20], "cpu")(score_fn)

    cfg = fr.PEERS[name][1](embed_size=16, knn_k=3, lr=0.05, batch_size=64, epochs=60, patience=5)
    run = fr.train_peer(name, ds, "image", "text", cfg, val_eval, test_eval, seed=0, log=lambda line: None)
    assert len(test_calls) == 1                                 # the test split, once
    assert run["best_epoch"] + cfg.patience == run["epochs_run"] < cfg.epochs   # stopped by patience
    # the tiny data's users like one cluster of items: a trained model finds their held-out item far more
    # often than a random ranking does (20 of 40 candidates: about 0.5 recall)
    assert run["val"]["recall@20"] > 0.8

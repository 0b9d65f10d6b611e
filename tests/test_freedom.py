"""FREEDOM inside the harness (bench/freedom.py): its item-item graph, its edge pruning, its forward pass
and its training under the harness's protocol."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bench import freedom as fr
from tinydata import split_matrix, tiny_splits
from utility.evaluate import RankingEvaluator
from utility.graph import sym_norm_adj, to_torch_csr
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


def test_forward_is_lightgcn_plus_the_item_graph_over_the_id_embeddings():
    train, _, _, feats = tiny_splits()
    r = split_matrix(train, 30, 40).tocsr()
    graph = fr.item_item_graph(feats["image"], feats["text"], 3, 0.1)
    torch.manual_seed(0)
    model = fr.Freedom(30, 40, feats["image"], feats["text"], to_torch_csr(graph), fr.FreedomConfig(embed_size=8))
    user, item = model(*fr.graph_blocks(r, "cpu"))
    a = torch.as_tensor(sym_norm_adj(r).toarray())
    x0 = torch.cat([model.user_emb, model.item_emb]).detach()
    mean = (x0 + a @ x0 + a @ (a @ x0)) / 3
    expected_item = mean[30:] + torch.as_tensor(graph.toarray()) @ model.item_emb.detach()
    assert torch.allclose(user, mean[:30], atol=1e-5)
    assert torch.allclose(item, expected_item, atol=1e-5)


def tiny_dataset():
    train, val, test, feats = tiny_splits()
    mats = {name: split_matrix(split, 30, 40).tocsr() for name, split in (("train", train), ("val", val), ("test", test))}
    return Dataset(name="tiny", path="", layout="json", n_users=30, n_items=40, train=mats["train"], val=mats["val"], test=mats["test"],
                   modality_feats=feats)


def test_training_learns_stops_on_patience_and_tests_the_best_epoch():
    ds = tiny_dataset()
    val_eval = RankingEvaluator(ds.val, [ds.train], [20], "cpu")
    test_calls = []

    def test_eval(score_fn):
        test_calls.append(1)
        return RankingEvaluator(ds.test, [ds.train, ds.val], [20], "cpu")(score_fn)

    cfg = fr.FreedomConfig(embed_size=16, knn_k=3, dropout=0.5, lr=0.05, batch_size=64, epochs=60, patience=5)
    run = fr.train_freedom(ds, "image", "text", cfg, val_eval, test_eval, seed=0, log=lambda line: None)
    assert len(test_calls) == 1                                 # the test split, once
    assert run["best_epoch"] + cfg.patience == run["epochs_run"] < cfg.epochs   # stopped by patience
    # the tiny data's users like one cluster of items: a trained FREEDOM finds their held-out item far more
    # often than a random ranking does (20 of 40 candidates: about 0.5 recall)
    assert run["val"]["recall@20"] > 0.8

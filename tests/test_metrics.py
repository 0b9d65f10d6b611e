"""Metrics against toy cases worked out by hand."""
import math

import pytest
import torch

from utility.metrics import (hit_at_k, metric_sums, ndcg_at_k, ndcg_legacy_at_k, precision_at_k,
                             recall_at_k)

# user 0: 2 held-out items, hits at ranks 1 and 3; user 1: 4 held-out items, one hit at rank 2;
# user 2: 1 held-out item, no hit in the top 4
HITS = torch.tensor([[True, False, True, False],
                     [False, True, False, False],
                     [False, False, False, False]])
N_POS = torch.tensor([2.0, 4.0, 1.0], dtype=torch.float64)


def test_recall_precision_hit():
    assert recall_at_k(HITS, N_POS, 2).tolist() == [0.5, 0.25, 0.0]
    assert recall_at_k(HITS, N_POS, 4).tolist() == [1.0, 0.25, 0.0]
    assert precision_at_k(HITS, N_POS, 4).tolist() == [0.5, 0.25, 0.0]
    assert hit_at_k(HITS, N_POS, 1).tolist() == [1.0, 0.0, 0.0]
    assert hit_at_k(HITS, N_POS, 4).tolist() == [1.0, 1.0, 0.0]


def test_ndcg_uses_ideal_over_held_out_items():
    ndcg = ndcg_at_k(HITS, N_POS, 4)
    # user 0: (1 + 1/log2(4)) / (1 + 1/log2(3))
    assert ndcg[0].item() == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    # user 1: (1/log2(3)) / (1 + 1/log2(3) + 1/2 + 1/log2(5))
    assert ndcg[1].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5)))
    assert ndcg[2].item() == 0.0


def test_ndcg_legacy_uses_the_retrieved_list_and_is_inflated():
    legacy = ndcg_legacy_at_k(HITS, N_POS, 4)
    # user 1: one hit at rank 2; the legacy ideal is a single hit at rank 1 -> 1/log2(3)
    assert legacy[1].item() == pytest.approx(1 / math.log2(3))
    assert legacy[0].item() == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert legacy[2].item() == 0.0
    assert (legacy >= ndcg_at_k(HITS, N_POS, 4)).all()
    assert legacy[1] > ndcg_at_k(HITS, N_POS, 4)[1]


def test_ndcg_perfect_ranking_is_one_even_when_k_is_smaller_than_held_out():
    hits = torch.ones(1, 3, dtype=torch.bool)
    assert ndcg_at_k(hits, torch.tensor([10.0], dtype=torch.float64), 3).item() == pytest.approx(1.0)


def test_metric_sums_keys_and_values():
    sums = metric_sums(HITS, N_POS, [2, 4])
    assert set(sums) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit", "ndcg_legacy") for k in (2, 4)}
    assert sums["recall@4"].item() == pytest.approx(1.25)
    assert sums["hit@2"].item() == pytest.approx(2.0)

"""utility.stats: mean ± sd over seeds, standard errors, and paired tests between two models."""
import math

import numpy as np
import pytest
from scipy import stats

from utility.stats import compare_per_user, paired_test, standard_error, summarise


def test_summarise_is_the_mean_and_the_sample_sd():
    mean, sd = summarise([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert sd == pytest.approx(math.sqrt(5 / 3))   # squared deviations 2.25+0.25+0.25+2.25 = 5, over n-1 = 3
    assert summarise([0.25]) == (0.25, None)   # one seed: no sd
    with pytest.raises(ValueError):
        summarise([])


def test_paired_test_by_hand():
    a = np.full(6, 2.0)
    b = a + np.array([1.0, -2.0, 3.0, 0.0, 4.0, -0.5])
    t = paired_test(a, b)
    # the zero difference is dropped; ranks of |d| = 0.5, 1, 2, 3, 4 are 1..5, the negative ones (-0.5, -2)
    # hold ranks 1 and 3: W = 4. Of the 32 sign patterns, 7 have a rank sum <= 4 ({}, 1, 2, 3, 4, 1+2, 1+3),
    # so the exact two-sided p is 2 * 7/32
    assert t["p"] == pytest.approx(14 / 32)
    assert t["p"] == pytest.approx(stats.wilcoxon(b - a).pvalue)
    assert t["n"] == 6 and t["mean_a"] == 2.0
    assert t["mean_diff"] == pytest.approx(5.5 / 6) and t["mean_b"] == pytest.approx(2 + 5.5 / 6)
    assert t["rel_diff"] == pytest.approx(100 * (5.5 / 6) / 2)
    # B − A: swapping the samples flips the sign, not the p-value
    back = paired_test(b, a)
    assert back["mean_diff"] == pytest.approx(-5.5 / 6) and back["p"] == pytest.approx(t["p"])


def test_paired_test_matches_scipy_on_random_data():
    rng = np.random.default_rng(0)
    a = rng.random(80)
    b = a + rng.normal(0.05, 0.1, 80)
    assert paired_test(a, b)["p"] == pytest.approx(stats.wilcoxon(b, a, zero_method="wilcox").pvalue)


def test_paired_test_of_equal_samples_is_p_one():
    a = np.array([0.0, 0.5, 1.0, 1.0])
    t = paired_test(a, a.copy())
    assert t["p"] == 1.0 and t["mean_diff"] == 0.0 and t["rel_diff"] == 0.0
    # A's mean 0: no relative difference
    assert paired_test(np.zeros(3), np.array([0.0, 1.0, 1.0]))["rel_diff"] is None
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_standard_error_by_hand():
    # sample sd of [0, 1, 0, 1] is sqrt(1/3); over sqrt(4)
    assert standard_error([0.0, 1.0, 0.0, 1.0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    assert standard_error([0.3]) is None


def test_compare_per_user_is_b_against_a_per_metric():
    users = np.arange(5)
    a = {"users": users, "recall@20": np.array([0.0, 0.5, 0.5, 1.0, 0.0]), "ndcg@20": np.full(5, 0.2)}
    b = {"users": users.copy(), "recall@20": np.array([0.5, 0.5, 1.0, 1.0, 0.5]), "ndcg@20": np.full(5, 0.1)}
    out = compare_per_user(a, b)
    r = out["recall@20"]
    assert r["mean_a"] == pytest.approx(0.4) and r["mean_b"] == pytest.approx(0.7)
    assert r["rel_diff"] == pytest.approx(75.0)            # b is better on recall: a positive difference
    assert r["p"] == pytest.approx(stats.wilcoxon(b["recall@20"], a["recall@20"]).pvalue)
    assert r["se_a"] == pytest.approx(standard_error(a["recall@20"]))
    assert r["se_b"] == pytest.approx(standard_error(b["recall@20"]))
    assert out["ndcg@20"]["rel_diff"] == pytest.approx(-50.0)   # and worse on NDCG: the metrics are not mixed up
    with pytest.raises(ValueError, match="different users"):
        compare_per_user(a, dict(b, users=users[::-1]))

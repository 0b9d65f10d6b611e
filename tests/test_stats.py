"""utility.stats: mean ± sd over seeds, standard errors, paired tests within a run, the two-way
(seeds × users) bootstrap between two arms, the seeds a claim needs, and worst cases over datasets."""
import math
import time

import numpy as np
import pytest
from scipy import stats

from utility.stats import (compare_per_user, paired_test, seed_interval, seeds_needed,
                           standard_error, summarise, two_way_comparison, worst_case)


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
    lo, hi = r["interval"]                                    # the interval over users brackets the difference
    assert lo < 75.0 < hi
    # by hand: differences 0.5, 0, 0.5, 0, 0.5 (in % of A's mean 0.4: 125, 0, 125, 0, 125) have sd 68.47;
    # t(0.975, 4 df) = 2.7764, so the half-width is 2.7764 * 68.47 / sqrt(5) = 85.02
    assert (lo, hi) == pytest.approx((75.0 - 85.02, 75.0 + 85.02), abs=0.01)
    p_lo, p_hi = r["percentile_interval"]                     # and so does the bootstrap over users
    assert p_lo < 75.0 < p_hi
    assert out["ndcg@20"]["interval"] == pytest.approx((-50.0, -50.0))   # a constant difference: no spread
    with pytest.raises(ValueError, match="different users"):
        compare_per_user(a, dict(b, users=users[::-1]))


def test_seed_interval_by_hand():
    out = seed_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1; t(0.975, 2 df) = 4.3027, so the half-width is 4.3027 / sqrt(3) = 2.4841
    assert out["n"] == 3 and out["mean"] == 2.0 and out["sd"] == pytest.approx(1.0)
    assert out["interval"] == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-4)
    assert seed_interval([0.3]) == dict(n=1, mean=0.3, sd=None, interval=None)


def simulate(rng, n_seeds, n_users, effect=0.0, seed_sd=0.006, noise_sd=0.1, mean=0.1):
    """Per-user values of two arms: a user level shared by both arms and all seeds, a shift per (arm,
    seed) shared by all users of that run, and noise per (arm, seed, user); B is ``effect`` times A's
    mean higher."""
    user = mean + rng.normal(0, 0.3, n_users)
    a = user + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, noise_sd, (n_seeds, n_users))
    b = user + mean * effect + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, noise_sd, (n_seeds, n_users))
    return a, b


def test_two_way_comparison_point_estimate_and_per_seed_differences_by_hand():
    a = np.array([[0.0, 0.2, 0.4], [0.1, 0.1, 0.4]])      # seed means 0.2 and 0.2
    b = np.array([[0.3, 0.3, 0.3], [0.0, 0.1, 0.35]])     # seed means 0.3 and 0.15
    out = two_way_comparison(a, b, n_resamples=500)
    assert out["n_seeds"] == 2 and out["n_users"] == 3
    assert out["mean_a"] == pytest.approx(0.2) and out["mean_b"] == pytest.approx(0.225)
    assert out["rel_diff"] == pytest.approx(12.5)                        # 100 * 0.025 / 0.2
    assert out["per_seed_diff"] == pytest.approx([0.1, -0.05])
    assert out["per_seed_rel_diff"] == pytest.approx([50.0, -25.0])
    assert out["sign_agreement"] == 1                                    # only seed 0 is above, like the mean
    lo, hi = out["interval"]
    assert lo < 12.5 < hi and out["verdict"] == "no measurable difference"


def test_a_true_effect_is_found_with_its_sign_and_swapping_the_arms_flips_it():
    a, b = simulate(np.random.default_rng(1), 4, 2000, effect=0.2, seed_sd=0.002, noise_sd=0.05)
    up, down = two_way_comparison(a, b), two_way_comparison(b, a)
    assert up["verdict"] == "B above A" and up["interval"][0] > 0 and up["sign_agreement"] == 4
    assert up["interval"][0] < 20 < up["interval"][1]                   # the true +20 % is inside
    assert up["percentile_interval"][0] < up["rel_diff"] < up["percentile_interval"][1]
    assert down["verdict"] == "B below A" and down["interval"][1] < 0 and down["sign_agreement"] == 4
    # B against A is the inverse ratio of A against B: (1 + r_AB)(1 + r_BA) = 1
    assert (1 + up["rel_diff"] / 100) * (1 + down["rel_diff"] / 100) == pytest.approx(1.0)
    assert down["per_seed_diff"] == pytest.approx([-d for d in up["per_seed_diff"]])


def users_only_interval(a, b, rng, n_resamples=1000):
    """The percentile interval of a bootstrap that resamples users and keeps the seeds: the mistake
    of treating the seeds' users as the only replicate."""
    users = rng.integers(0, a.shape[1], (n_resamples, a.shape[1]))
    per_user_a, per_user_b = a.mean(0), b.mean(0)
    rel = 100 * (per_user_b[users].mean(1) - per_user_a[users].mean(1)) / per_user_a[users].mean(1)
    return np.percentile(rel, [2.5, 97.5])


def test_no_effect_experiments_rarely_exclude_zero_where_the_pooled_test_often_does():
    """240 simulated experiments, 3 seeds x 500 users, seed-level and user-level noise, no true effect."""
    rng = np.random.default_rng(2026)
    n, two_way, percentile, users_only, pooled = 240, 0, 0, 0, 0
    for i in range(n):
        a, b = simulate(rng, 3, 500)
        out = two_way_comparison(a, b, n_resamples=1000, seed=i)
        two_way += out["interval"][0] > 0 or out["interval"][1] < 0
        percentile += out["percentile_interval"][0] > 0 or out["percentile_interval"][1] < 0
        lo, hi = users_only_interval(a, b, np.random.default_rng(i))
        users_only += lo > 0 or hi < 0
        pooled += stats.wilcoxon(b.ravel(), a.ravel()).pvalue < 0.05
    rates = (f"false positives at 95 %: two-way t interval {two_way / n:.1%}, two-way bootstrap percentile "
             f"interval {percentile / n:.1%}, users-only bootstrap {users_only / n:.1%}, "
             f"Wilcoxon over the (user, seed) pairs {pooled / n:.1%}")
    print("\n" + rates)
    assert two_way / n <= 0.07, rates
    # the seed noise is real here: ignoring it (resampling users only, or treating (user, seed) pairs as
    # users) finds an effect in several times more experiments than the 5 % a test should
    assert users_only / n > 0.15 and pooled / n > 0.15, rates


def test_when_seeds_dominate_the_percentile_interval_is_too_narrow_and_the_t_interval_is_not():
    """200 experiments with no effect, 3 seeds x 300 users, seed shifts 30 % of the mean: the two-way
    bootstrap's percentile interval ends at the extreme seeds, which share a sign one time in four."""
    rng = np.random.default_rng(7)
    n, t_based, percentile = 200, 0, 0
    for i in range(n):
        out = two_way_comparison(*simulate(rng, 3, 300, seed_sd=0.03), n_resamples=500, seed=i)
        t_based += out["interval"][0] > 0 or out["interval"][1] < 0
        percentile += out["percentile_interval"][0] > 0 or out["percentile_interval"][1] < 0
    rates = f"false positives at 95 %: t interval {t_based / n:.1%}, percentile interval {percentile / n:.1%}"
    print("\n" + rates)
    assert t_based / n <= 0.08 and percentile / n > 0.15, rates


def test_the_interval_follows_the_seeds_when_they_dominate_and_the_users_when_they_do():
    rng = np.random.default_rng(3)
    # seeds dominate: per-seed shifts of a few %, almost no user noise -> the t interval over the
    # per-seed relative differences (2 degrees of freedom)
    a, b = simulate(rng, 3, 3000, seed_sd=0.003, noise_sd=0.001)
    out = two_way_comparison(a, b)
    by_seed = seed_interval(out["per_seed_rel_diff"])
    half = (out["interval"][1] - out["interval"][0]) / 2
    assert half == pytest.approx((by_seed["interval"][1] - by_seed["interval"][0]) / 2, rel=0.1)
    assert out["df"] == 2
    # no seed effects and no user effects, only seed x user noise: the per-seed differences carry all of
    # it, once; the users part adds nothing
    a, b = simulate(rng, 3, 3000, seed_sd=0.0, noise_sd=0.1)
    out = two_way_comparison(a, b)
    by_seed = seed_interval(out["per_seed_rel_diff"])
    half = (out["interval"][1] - out["interval"][0]) / 2
    assert half == pytest.approx((by_seed["interval"][1] - by_seed["interval"][0]) / 2, rel=0.1)
    # one seed: users are the only replicate -> the normal interval of a ratio of means over users
    a, b = simulate(rng, 1, 3000)
    out = two_way_comparison(a, b)
    ratio = b.mean() / a.mean()
    se = 100 * np.std(b[0] - ratio * a[0], ddof=1) / (np.sqrt(a.size) * a.mean())   # delta method
    assert (out["interval"][1] - out["interval"][0]) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert out["df"] == 2999


def test_user_effects_shared_by_every_seed_widen_the_interval():
    # B is better for some users and worse for others, the same on every seed, with no seed effect: the
    # per-seed differences agree closely, yet another sample of users would move them all together
    rng = np.random.default_rng(8)
    n_seeds, n_users, mean, user_sd, noise_sd = 3, 2000, 0.1, 0.2, 0.03
    user = mean + rng.normal(0, 0.3, n_users)
    a = user + rng.normal(0, noise_sd, (n_seeds, n_users))
    b = user + rng.normal(0, user_sd, n_users) + rng.normal(0, noise_sd, (n_seeds, n_users))
    out = two_way_comparison(a, b)
    # the variance of the mean difference: user effects over U, seed x user noise of both arms over S U
    true_se = 100 / mean * math.sqrt(user_sd ** 2 / n_users + 2 * noise_sd ** 2 / (n_seeds * n_users))
    assert out["se"] == pytest.approx(true_se, rel=0.1)
    by_seed = seed_interval(out["per_seed_rel_diff"])
    assert out["interval"][1] - out["interval"][0] > 1.5 * (by_seed["interval"][1] - by_seed["interval"][0])


def test_two_way_comparison_is_seeded_fast_and_checks_its_input():
    a, b = simulate(np.random.default_rng(4), 6, 6000)
    start = time.perf_counter()
    first = two_way_comparison(a, b, n_resamples=4000, seed=7)
    took = time.perf_counter() - start
    assert took < 10, f"{took:.1f} s for 6 seeds x 6,000 users"   # about 1 s on a busy 2-core machine
    assert two_way_comparison(a, b, n_resamples=4000, seed=7) == first
    with pytest.raises(ValueError, match="shape"):
        two_way_comparison(a, b[:, 1:])
    with pytest.raises(ValueError, match="shape"):
        two_way_comparison(a[0], b[0])
    zero = two_way_comparison(np.zeros((2, 3)), np.ones((2, 3)))
    assert zero["rel_diff"] is None and zero["interval"] is None and "A's mean is 0" in zero["verdict"]


def test_resamples_drawn_in_chunks_give_the_same_interval(monkeypatch):
    import utility.stats
    a, b = simulate(np.random.default_rng(6), 3, 400)
    whole = two_way_comparison(a, b, n_resamples=2000)
    monkeypatch.setattr(utility.stats, "DRAWS_IN_MEMORY", 7 * 400 + 3)   # 7 resamples at a time, the last chunk short
    chunked = two_way_comparison(a, b, n_resamples=2000)
    assert chunked["interval"] == whole["interval"]
    assert chunked["percentile_interval"] == pytest.approx(whole["percentile_interval"], rel=0.15)


def test_seeds_needed_from_per_seed_values_by_hand():
    values = np.array([0.098, 0.100, 0.102])                 # sd 0.002 = 2 % of the mean
    out = seeds_needed(values, effect=2.0, power=0.8)
    # the difference of two such arms has sd 2 * sqrt(2) % per seed; with S seeds its interval has
    # S - 1 degrees of freedom and needs (t(0.975) + t(0.8)) * 2 sqrt(2) / sqrt(S) <= 2
    def enough(s):
        return (stats.t.ppf(0.975, s - 1) + stats.t.ppf(0.8, s - 1)) * 2 * math.sqrt(2) / math.sqrt(s) <= 2
    assert enough(out["seeds"]) and not enough(out["seeds"] - 1)
    assert out["seed_sd"] == pytest.approx(2 * math.sqrt(2))
    assert seeds_needed(values, effect=4.0)["seeds"] < out["seeds"]               # a larger effect: fewer
    assert seeds_needed(values, power=0.5)["seeds"] < out["seeds"]                # less power: fewer
    assert seeds_needed(values + [0.0, 0.0, 0.004])["seeds"] > out["seeds"]       # noisier: more
    assert seeds_needed(np.array([0.09, 0.11]), max_seeds=5)["seeds"] is None
    with pytest.raises(ValueError, match="two seeds"):
        seeds_needed(values[:1])


def test_seeds_needed_finds_the_variance_components():
    rng = np.random.default_rng(5)
    n_seeds, n_users, mean = 8, 4000, 0.1
    user = rng.normal(0, 0.004, n_users)                       # B's gain differs by user
    d = user + rng.normal(0, 0.003, (n_seeds, 1)) + rng.normal(0, 0.05, (n_seeds, n_users))
    a = mean + rng.normal(0, 0.2, (n_seeds, n_users))
    out = seeds_needed(a, a + d)
    assert out["seed_sd"] == pytest.approx(3.0, rel=0.4)       # 0.003 of a mean of 0.1, in %
    assert out["user_sd"] == pytest.approx(4.0, rel=0.3)
    assert out["noise_sd"] == pytest.approx(50.0, rel=0.05)
    # one arm alone: B a copy of A with its own seeds, so twice A's seed and noise variance, no user part
    arm = mean + rng.normal(0, 0.002, (n_seeds, 1)) + rng.normal(0, 0.05, (n_seeds, n_users))
    alone = seeds_needed(arm)
    assert alone["seed_sd"] == pytest.approx(100 * math.sqrt(2) * 0.002 / mean, rel=0.4)
    assert alone["noise_sd"] == pytest.approx(100 * math.sqrt(2) * 0.05 / mean, rel=0.05)
    assert alone["user_sd"] == 0.0


def test_worst_case_by_hand():
    # settings x datasets x seeds; dataset means: setting 0 -> 0.2, 0.5; setting 1 -> 0.1, 1.0
    values = np.array([[[0.2, 0.2], [0.4, 0.6]],
                       [[0.1, 0.1], [1.0, 1.0]]])
    rows = worst_case(values, n_resamples=500)
    # relative: setting 0 -> 1.0, 0.5 (worst 0.5 on dataset 1); setting 1 -> 0.5, 1.0 (worst 0.5 on dataset 0)
    assert rows[0]["worst"] == pytest.approx(0.5) and rows[0]["worst_dataset"] == 1
    assert rows[1]["worst"] == pytest.approx(0.5) and rows[1]["worst_dataset"] == 0
    assert sum(r["p_best"] for r in rows) == pytest.approx(1.0)
    assert rows[1]["worst_se"] == 0.0 and rows[0]["worst_se"] > 0     # only setting 0 varies over seeds
    assert worst_case(values[:, :, :1])[0]["worst_se"] is None          # one seed: no spread


def test_worst_case_spread_is_the_standard_error_over_seeds():
    # setting 0 is best everywhere at 1.0; setting 1 scores 0.5, 0.6, 0.7: its worst case is the mean 0.6
    # and its spread the standard error 0.1 / sqrt(3)
    values = np.array([[[1.0, 1.0, 1.0]], [[0.5, 0.6, 0.7]]])
    rows = worst_case(values, n_resamples=8000)
    assert rows[1]["worst"] == pytest.approx(0.6)
    assert rows[1]["worst_se"] == pytest.approx(0.1 / math.sqrt(3), rel=0.05)
    assert rows[0]["p_best"] == 1.0 and rows[1]["p_best"] == 0.0
    with pytest.raises(ValueError, match="settings, datasets, seeds"):
        worst_case(values[0])
    with pytest.raises(ValueError, match="no setting scores above 0"):
        worst_case(np.zeros((2, 1, 3)))

"""Statistics for claims about runs.

Two kinds of replicate carry the noise of a result: the training seeds and the test users. A claim
over seeds treats both: :func:`two_way_comparison` sees seeds and users as two crossed factors, so
a seed counts as one replicate, not as one more copy of every test user. Within one run (one seed,
e.g. the student against its own teacher) the users are the only replicate, and a paired test over
users is the right one (:func:`compare_per_user`)."""
import numpy as np
from scipy import stats

PAIRED_METRICS = ("recall@20", "ndcg@20")   # the per-user metrics a run keeps (<stage>_test_per_user.npz)
LEVEL = 0.95
DRAWS_IN_MEMORY = 1 << 22   # user draws (resamples x users) held at once by the bootstrap: 64 MB
RUN_DRAWS = 50_000_000       # user draws of one run's bootstrap over users (a few seconds)


def summarise(values):
    """(mean, sample sd with ddof=1) of the values; sd is None for a single value."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarise: no values")
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else None
    return mean, sd


def standard_error(values):
    """The standard error of the mean of the values: sample sd / sqrt(n) (None below two values)."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else None


def seed_interval(values, level=LEVEL):
    """One arm over seeds: dict(n, mean, sd, interval), the interval t-based with n - 1 degrees of
    freedom (the seeds are the replicates); sd and interval are None for a single seed."""
    mean, sd = summarise(values)
    n = int(np.size(values))
    if sd is None:
        return dict(n=n, mean=mean, sd=None, interval=None)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return dict(n=n, mean=mean, sd=sd, interval=(float(mean - half), float(mean + half)))


def paired_test(a, b):
    """Two-sided Wilcoxon signed-rank test of the paired samples a and b (zero differences dropped).

    Returns dict(n, mean_a, mean_b, mean_diff (B − A), rel_diff (mean_diff in % of A's mean; None when
    A's mean is 0), p). When every difference is zero, p is 1.0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_test: need two non-empty paired samples, got shapes {a.shape} and {b.shape}")
    diff = b - a
    mean_a, mean_b, mean_diff = float(a.mean()), float(b.mean()), float(diff.mean())
    if np.all(diff == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(b, a, zero_method="wilcox", alternative="two-sided").pvalue)
    rel = 100.0 * mean_diff / mean_a if mean_a != 0 else None
    return dict(n=int(a.size), mean_a=mean_a, mean_b=mean_b, mean_diff=mean_diff, rel_diff=rel, p=p)


def _resample_weights(rng, n, size):
    """(size, n) counts of how often each of n units is drawn in each of ``size`` resamples of n draws."""
    draws = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(float)


def _relative(mean_a, mean_b):
    """100 (B − A) / A, NaN where A's mean is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean_a != 0, 100.0 * (mean_b - mean_a) / mean_a, np.nan)


def _bootstrap_draws(a, b, n_resamples, rng):
    """Relative differences of the arms' means over resamples of seeds and users together.

    Weight w_s of each seed, v_u of each user: an arm's resampled mean is sum_s sum_u w_s v_u x[s, u] / (S U)."""
    n_seeds, n_users = a.shape
    arms = np.concatenate([a, b])                                   # (2 S, U)
    seed_w = _resample_weights(rng, n_seeds, n_resamples)          # (R, S)
    per_seed = np.empty((2 * n_seeds, n_resamples))
    chunk = max(1, DRAWS_IN_MEMORY // n_users)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        # einsum's own loop, not BLAS: a threaded BLAS on a busy machine runs this product several times slower
        per_seed[:, start:stop] = np.einsum("ku,ru->kr", arms, _resample_weights(rng, n_users, stop - start))
    both = np.einsum("ksr,rs->kr", per_seed.reshape(2, n_seeds, n_resamples), seed_w) / (n_seeds * n_users)
    return _relative(*both)


def two_way_comparison(a, b, n_resamples=4000, seed=0, level=LEVEL):
    """Arm B against arm A, trained on the same seeds and scored on the same test users: the relative
    difference of means 100 (mean_B − mean_A) / mean_A with an interval that counts seeds and users
    as the two replicates.

    a, b: per-user metric values of shape (n_seeds, n_users), row s of both from seed s, column u of
    both the same user. The bootstrap draws seeds and users independently with replacement, the same
    draws for both arms (paired); ``percentile_interval`` is its 95 % percentile interval.

    That percentile interval is too narrow with few seeds: its seed part has the spread of the seeds
    drawn, not of the seeds that could have been, and with three seeds whose differences share a sign
    its lower end is the smallest of them. The verdict's ``interval`` is therefore the t interval of
    the crossed seeds x users design, on the differences d = B − A: variance var(per-seed mean of d) / S
    (seed effects and seed x user noise) plus the user effects, var(per-user mean of d) / U less the
    seed x user noise counted there a second time (the residual mean square of the two-way analysis
    of variance, over S U; at least 0), with S − 1 degrees of freedom, as the seeds are the few
    replicates. It is given in % of A's mean (taken as fixed: the interval excludes 0 exactly when
    that of the difference does). With one seed it is the t interval over users (U − 1 degrees of
    freedom). Welch–Satterthwaite degrees of freedom were tried and dropped: they grow when the seed
    part comes out small by chance, and excluded 0 in 6.4 % of 1,000 simulated experiments with no
    effect (3 seeds, seed shifts 0.006, as below).

    Simulated experiments with no effect (tests/test_stats.py's model; 600 each, 500 users; noise
    sd relative to a mean of 0.1) that exclude 0, t interval / percentile interval: 3 seeds, seed
    shifts 0.006 and 0.01: 5.3 / 4.7 % and 5.8 / 11.8 %; seed shifts 0.03 on a mean of 1: 5.5 / 24.8 %;
    seed x user noise only: 2.7 / 0.3 %; user effects 0.1, shared by the seeds: 0.0 / 2.7 % (the t
    interval errs wide when user effects dominate, at a cost in power); 6 seeds, shifts 0.006:
    4.5 / 3.0 %; 1 seed: 4.3 / 4.3 %.

    Returns dict(n_seeds, n_users, mean_a, mean_b, rel_diff (the point estimate, %), se (%), df,
    interval (the verdict's, %), percentile_interval (the two-way bootstrap's, %), per_seed_diff
    (mean_B − mean_A of each seed), per_seed_rel_diff (%), sign_agreement (seeds whose difference has
    the sign of rel_diff), verdict: "B above A", "B below A" or "no measurable difference" when the
    interval holds 0). rel_diff and the intervals are None when A's mean is 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"two_way_comparison: need two (seeds, users) arrays of one shape with at least two "
                         f"users, got shapes {a.shape} and {b.shape}")
    n_seeds, n_users = a.shape
    seed_a, seed_b = a.mean(1), b.mean(1)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    out = dict(n_seeds=n_seeds, n_users=n_users, mean_a=mean_a, mean_b=mean_b,
               per_seed_diff=(seed_b - seed_a).tolist(), per_seed_rel_diff=_relative(seed_a, seed_b).tolist())
    if mean_a == 0:
        return dict(out, rel_diff=None, se=None, df=None, interval=None, percentile_interval=None,
                    sign_agreement=None, verdict="no relative difference: A's mean is 0")
    rel = 100.0 * (mean_b - mean_a) / mean_a
    d = 100.0 * (b - a) / mean_a
    if n_seeds > 1:
        noise = _variance_components(d)[2]
        user_effects = max(0.0, d.mean(0).var(ddof=1) / n_users - noise / (n_seeds * n_users))
        var = d.mean(1).var(ddof=1) / n_seeds + user_effects
    else:
        var = d.var(ddof=1) / n_users
    df = n_seeds - 1 if n_seeds > 1 else n_users - 1
    half = float(stats.t.ppf(0.5 + level / 2, df)) * np.sqrt(var)
    lo, hi = rel - half, rel + half
    both = _bootstrap_draws(a, b, n_resamples, np.random.default_rng(seed))
    tail = 50.0 * (1 - level)
    verdict = "B above A" if lo > 0 else "B below A" if hi < 0 else "no measurable difference"
    return dict(out, rel_diff=rel, se=float(np.sqrt(var)), df=df, interval=(float(lo), float(hi)),
                percentile_interval=tuple(float(q) for q in np.nanpercentile(both, [tail, 100 - tail])),
                sign_agreement=int(np.sum(np.sign(seed_b - seed_a) == np.sign(rel))), verdict=verdict)


def compare_per_user(a, b, metrics=PAIRED_METRICS, n_resamples=4000, seed=0):
    """Model b against model a on the same users of one run, per metric: :func:`paired_test` (a first),
    the standard error of each model's mean (``se_a``, ``se_b``), and the 95 % intervals of the
    relative difference over users from :func:`two_way_comparison` with one seed: ``interval`` (t,
    U − 1 degrees of freedom) and ``percentile_interval`` (a bootstrap over users). They say how much
    sampling the test users moves the difference, not what another seed would do. On very many users
    the resamples are fewer (about RUN_DRAWS user draws, but at least 200), so that the end of a run
    stays quick.

    a, b: {"users": user ids, metric: per-user values} as :meth:`RankingEvaluator.per_user` returns
    them; the users must be the same, in the same order."""
    if not np.array_equal(np.asarray(a["users"]), np.asarray(b["users"])):
        raise ValueError("compare_per_user: the two models were evaluated on different users")
    out = {}
    n_resamples = min(n_resamples, max(200, RUN_DRAWS // max(1, np.size(a["users"]))))
    for m in metrics:
        over_users = (two_way_comparison(np.asarray(a[m])[None], np.asarray(b[m])[None], n_resamples, seed)
                      if np.size(a[m]) > 1 else {})
        out[m] = dict(paired_test(a[m], b[m]), se_a=standard_error(a[m]), se_b=standard_error(b[m]),
                      interval=over_users.get("interval"), percentile_interval=over_users.get("percentile_interval"))
    return out


def _variance_components(d):
    """(seed, user, residual) variance components of d[s, u] = seed effect + user effect + noise, from
    the two-way analysis of variance (method of moments, clipped at 0)."""
    n_seeds, n_users = d.shape
    seed_means, user_means = d.mean(1), d.mean(0)
    resid = d - seed_means[:, None] - user_means[None, :] + d.mean()
    noise = float((resid ** 2).sum() / ((n_seeds - 1) * (n_users - 1)))
    seed_var = max(0.0, float(seed_means.var(ddof=1)) - noise / n_users)
    user_var = max(0.0, float(user_means.var(ddof=1)) - noise / n_seeds)
    return seed_var, user_var, noise


def _projected_variance(seed_var, user_var, noise, n_seeds, n_users):
    """The variance of :func:`two_way_comparison`'s difference at n_seeds seeds and n_users users, from
    the components of the difference."""
    return (seed_var + noise / n_users) / n_seeds + user_var / n_users


def seeds_needed(a, b=None, effect=2.0, power=0.8, level=LEVEL, max_seeds=100):
    """How many seeds a claim of an ``effect`` % relative difference needs: the smallest S at which the
    interval of :func:`two_way_comparison` (its variance projected to S seeds and the same users, S − 1
    degrees of freedom) excludes 0 with probability ``power`` when the true difference is ``effect`` %.

    a: per-user values of one arm, shape (seeds, users), or its per-seed means (1-D; then the seed
    part holds the user noise too). With b (the other arm, same shape) the components are those of
    the difference b − a; without it, of a difference between two arms each as noisy as a over seeds
    and users, and equal on every user (B a copy of A with its own seeds). At least two seeds are
    needed to see seed noise.

    Returns dict(seeds (None above max_seeds), seed_sd, user_sd, noise_sd (the components of the
    difference, in % of A's mean), half_width (the expected interval half-width in % at that many
    seeds, or at max_seeds))."""
    a = np.asarray(a, dtype=float)
    if a.ndim not in (1, 2) or a.shape[0] < 2:
        raise ValueError(f"seeds_needed: need at least two seeds, got shape {a.shape}")
    n_users = a.shape[1] if a.ndim == 2 else 1
    if a.ndim == 1:
        components = (2 * float(a.var(ddof=1)), 0.0, 0.0)
    elif b is None:
        arm_seed, _, arm_noise = _variance_components(a)
        components = (2 * arm_seed, 0.0, 2 * arm_noise)
    else:
        components = _variance_components(np.asarray(b, dtype=float) - a)
    scale = 100.0 / a.mean()
    components = [v * scale ** 2 for v in components]
    for n_seeds in range(2, max_seeds + 1):
        se = np.sqrt(_projected_variance(*components, n_seeds, n_users))
        enough = (stats.t.ppf(0.5 + level / 2, n_seeds - 1) + stats.t.ppf(power, n_seeds - 1)) * se <= effect
        if enough:
            break
    return dict(seeds=n_seeds if enough else None, seed_sd=float(np.sqrt(components[0])),
                user_sd=float(np.sqrt(components[1])), noise_sd=float(np.sqrt(components[2])),
                half_width=float(stats.t.ppf(0.5 + level / 2, n_seeds - 1) * se))


def worst_case(values, n_resamples=4000, seed=0):
    """Each setting's worst case over datasets of its relative score, with the spread over seeds.

    values: (settings, datasets, seeds) scores, seed j of every setting on a dataset being the same
    seed. A setting's relative score on a dataset is its mean over seeds divided by the best
    setting's mean there; its worst case is the smallest over datasets. The spread comes from
    resampling the seeds of each dataset with replacement (the same draw for every setting, so a
    seed's luck is shared as it is in the runs) and recomputing best, relative scores and worst
    cases: ``worst_se`` is the sd of the resampled worst cases times sqrt(S / (S − 1)) (for a plain
    mean that is the standard error over seeds), and ``p_best`` the share of resamples in which the
    setting has the best worst case.

    Returns a list, one dict(worst, worst_dataset (its index), worst_se (None for one seed), p_best)
    per setting, in the order of ``values``."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 3 or 0 in values.shape or not np.isfinite(values).all():
        raise ValueError(f"worst_case: need finite (settings, datasets, seeds) scores, got shape {values.shape}")
    n_settings, n_datasets, n_seeds = values.shape
    means = values.mean(2)
    if (means.max(0) <= 0).any():
        raise ValueError("worst_case: on some dataset no setting scores above 0, so relative scores are undefined")
    relative = means / means.max(0)
    worst = relative.min(1)
    rng = np.random.default_rng(seed)
    weights = np.stack([_resample_weights(rng, n_seeds, n_resamples) for _ in range(n_datasets)], 1)   # (R, D, S)
    resampled = np.einsum("tds,rds->rtd", values, weights) / n_seeds
    resampled_worst = (resampled / resampled.max(1, keepdims=True)).min(2)                            # (R, settings)
    sd = resampled_worst.std(0, ddof=1) * np.sqrt(n_seeds / (n_seeds - 1)) if n_seeds > 1 else None
    best = np.bincount(resampled_worst.argmax(1), minlength=n_settings) / n_resamples
    return [dict(worst=float(worst[t]), worst_dataset=int(relative[t].argmin()),
                 worst_se=None if sd is None else float(sd[t]), p_best=float(best[t])) for t in range(n_settings)]

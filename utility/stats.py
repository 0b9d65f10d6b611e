"""Statistics for claims about runs: mean ± sd over seeds, and paired tests between two models
evaluated on the same test users."""
import numpy as np
from scipy import stats

PAIRED_METRICS = ("recall@20", "ndcg@20")   # the per-user metrics a run keeps (<stage>_test_per_user.npz)


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


def compare_per_user(a, b, metrics=PAIRED_METRICS):
    """Model b against model a on the same users, per metric: :func:`paired_test` (a first) and
    the standard error of each model's mean (``se_a``, ``se_b``).

    a, b: {"users": user ids, metric: per-user values} as :meth:`RankingEvaluator.per_user` returns
    them; the users must be the same, in the same order."""
    if not np.array_equal(np.asarray(a["users"]), np.asarray(b["users"])):
        raise ValueError("compare_per_user: the two models were evaluated on different users")
    return {m: dict(paired_test(a[m], b[m]), se_a=standard_error(a[m]), se_b=standard_error(b[m]))
            for m in metrics}


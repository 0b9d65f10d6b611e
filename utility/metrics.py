"""Top-K ranking metrics as pure tensor functions.

Every function takes ``hits`` — a (users, K_max) boolean tensor, True where the item ranked at
that position is a held-out positive — and ``n_pos`` — each user's number of held-out items —
and returns a per-user tensor. Averaging over users is left to the caller, so that batches (and
processes) can be summed before dividing.
"""
import torch

METRICS = ("recall", "ndcg", "precision", "hit", "ndcg_legacy")


def _discounts(k, device):
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def recall_at_k(hits, n_pos, k):
    return hits[:, :k].sum(1, dtype=torch.float64) / n_pos


def precision_at_k(hits, n_pos, k):
    return hits[:, :k].sum(1, dtype=torch.float64) / k


def hit_at_k(hits, n_pos, k):
    return hits[:, :k].any(1).to(torch.float64)


def _ideal_dcg(n_relevant, k, device):
    """DCG of ``n_relevant`` (clipped to k) relevant items at the top of a list."""
    cumulative = torch.cat([torch.zeros(1, device=device, dtype=torch.float64), _discounts(k, device).cumsum(0)])
    return cumulative[n_relevant.clamp(max=k).long()]


def ndcg_at_k(hits, n_pos, k):
    """DCG@K over the ideal DCG of min(K, |held-out items|) relevant items at the top."""
    dcg = (hits[:, :k].to(torch.float64) * _discounts(k, hits.device)).sum(1)
    return dcg / _ideal_dcg(n_pos, k, hits.device)


def ndcg_legacy_at_k(hits, n_pos, k):
    """NDCG whose ideal DCG comes from the retrieved list itself (the original code's formula).

    The ideal list holds only the hits that were retrieved, so a user with one hit at rank 5 and
    ten held-out items scores 1.0. It inflates NDCG; reported only to compare with published
    numbers.
    """
    dcg = (hits[:, :k].to(torch.float64) * _discounts(k, hits.device)).sum(1)
    ideal = _ideal_dcg(hits[:, :k].sum(1), k, hits.device)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-12), torch.zeros_like(dcg))


METRIC_FUNCTIONS = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "precision": precision_at_k,
    "hit": hit_at_k,
    "ndcg_legacy": ndcg_legacy_at_k,
}


def metric_sums(hits, n_pos, ks):
    """{"recall@20": sum over users, ...} as float64 tensors, for every metric and K."""
    return {f"{name}@{k}": fn(hits, n_pos, k).sum() for name, fn in METRIC_FUNCTIONS.items() for k in ks}

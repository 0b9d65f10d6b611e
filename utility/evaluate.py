"""Full-ranking evaluation, vectorised on the run's device.

For each user with held-out items, every item is scored, the user's excluded items (training
items, and validation items at test time) are set to -inf by one index assignment, the top
K_max are taken with ``torch.topk``, and hits are found by binary search of the top-K
(user, item) keys among the sorted held-out keys.
Users are processed in batches sized so that a batch's score block stays within a fixed
memory budget, with a floor on the batch so that a million items still score many users at once.
"""
import numpy as np
import scipy.sparse as sp
import torch

from utility.metrics import METRIC_FUNCTIONS, metric_sums
from utility.stats import PAIRED_METRICS

SCORE_BUDGET = 1 << 22  # float32 scores per batch (16 MB) ...
MIN_BLOCK_USERS = 64    # ... but at least this many users per batch (256 MB of scores at 10^6 items)


def block_users(batch_size, n_items):
    """Users scored at once: within the score budget, but not a handful at a million items."""
    return max(1, min(batch_size, max(MIN_BLOCK_USERS, SCORE_BUDGET // max(1, n_items))))


def _csr_to_device(mat, device):
    mat = sp.csr_matrix(mat)
    return (torch.as_tensor(mat.indptr.astype(np.int64), device=device),
            torch.as_tensor(mat.indices.astype(np.int64), device=device))


class RankingEvaluator:
    """Ground truth and exclusions of one held-out split, kept on the device across epochs.

    ``shard=(rank, world_size)`` keeps every world_size-th evaluated user, so that processes can
    each evaluate a disjoint part and sum their results. ``sample=(n, seed)`` evaluates a fixed
    random sample of n of the users with held-out items (all of them when there are no more than n),
    drawn once from ``seed``, so every evaluation of the run sees the same users.
    """

    def __init__(self, truth, exclude, ks, device, batch_size=4096, shard=None, reduce=None, sample=None):
        # a canonical copy (sorted column indices, no duplicates): the hit search below needs sorted
        # keys, and sorting in place would reorder the arrays of the caller's matrix
        truth = sp.csr_matrix(truth, copy=True)
        truth.sum_duplicates()
        self.n_items = truth.shape[1]
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        self.n_users_total = int(users.size)
        if sample is not None and sample[0] < users.size:
            users = np.sort(np.random.default_rng(sample[1]).choice(users, sample[0], replace=False))
        self.n_users_sampled = int(users.size)
        if shard is not None:
            users = users[shard[0]::shard[1]]
        self.users = torch.as_tensor(users, dtype=torch.int64, device=device)
        excluded = sp.csr_matrix(truth.shape, dtype=np.float32)
        for mat in exclude:
            excluded = excluded + sp.csr_matrix(mat)
        self.excl_ptr, self.excl_idx = _csr_to_device(excluded[users], device)
        truth_ptr, truth_idx = _csr_to_device(truth[users], device)
        self.n_pos = torch.diff(truth_ptr).to(torch.float64)
        rows = torch.repeat_interleave(torch.arange(len(users), device=device), torch.diff(truth_ptr))
        self.truth_keys = rows * self.n_items + truth_idx          # sorted: rows in order, items sorted (canonical)
        self.ks = sorted(set(ks))
        self.device = device
        self.batch_size = block_users(batch_size, self.n_items)
        self.reduce = reduce   # sums the totals of all processes (distributed evaluation)

    @staticmethod
    def _block_rows(ptr, start, end):
        """(row within the batch, column) index pairs of CSR rows start..end-1."""
        counts = torch.diff(ptr[start:end + 1])
        rows = torch.repeat_interleave(torch.arange(end - start, device=ptr.device), counts)
        return rows, slice(int(ptr[start]), int(ptr[end]))

    def _hit_blocks(self, score_fn):
        """(start, end, hits) per block of evaluated users: hits[r, j] is True when the j-th ranked
        item of user ``start + r`` is one of its held-out items."""
        k_max = max(self.ks)
        for start in range(0, self.users.numel(), self.batch_size):
            end = min(start + self.batch_size, self.users.numel())
            scores = score_fn(self.users[start:end]).float()
            rows, span = self._block_rows(self.excl_ptr, start, end)
            scores[rows, self.excl_idx[span]] = -torch.inf
            top = torch.topk(scores, min(k_max, self.n_items), dim=1).indices
            keys = torch.arange(start, end, device=top.device)[:, None] * self.n_items + top
            where = torch.searchsorted(self.truth_keys, keys).clamp_(max=self.truth_keys.numel() - 1)
            hits = self.truth_keys[where] == keys
            if hits.shape[1] < k_max:
                hits = torch.nn.functional.pad(hits, (0, k_max - hits.shape[1]))
            yield start, end, hits

    @torch.no_grad()
    def metric_sums(self, score_fn):
        """Per-metric sums over this evaluator's users (float64 tensors) and the user count."""
        sums = None
        for start, end, hits in self._hit_blocks(score_fn):
            batch = metric_sums(hits, self.n_pos[start:end], self.ks)
            sums = batch if sums is None else {k: sums[k] + v for k, v in batch.items()}
        if sums is None:
            sums = {k: torch.zeros((), dtype=torch.float64, device=self.device)
                    for k in metric_sums(torch.zeros(0, max(self.ks), dtype=torch.bool), torch.ones(0), self.ks)}
        return sums, self.users.numel()

    @torch.no_grad()
    def per_user(self, score_fn, names=PAIRED_METRICS):
        """{"users": evaluated user ids, name: that metric of each user} as numpy arrays, for paired
        tests between models (this process's users only under ``shard``)."""
        out = {name: [] for name in names}
        for start, end, hits in self._hit_blocks(score_fn):
            for name in names:
                metric, k = name.split("@")
                out[name].append(METRIC_FUNCTIONS[metric](hits, self.n_pos[start:end], int(k)).cpu())
        result = {name: torch.cat(v).numpy() if v else np.zeros(0) for name, v in out.items()}
        result["users"] = self.users.cpu().numpy()
        return result

    def __call__(self, score_fn):
        """Mean of every metric over the evaluated users: {"recall@20": float, ...}."""
        sums, count = self.metric_sums(score_fn)
        if self.reduce is not None:
            names = sorted(sums)
            totals = self.reduce(torch.stack([sums[k] for k in names] + [torch.tensor(float(count), dtype=torch.float64,
                                                                                         device=self.device)]))
            sums, count = dict(zip(names, totals[:-1])), int(totals[-1])
        return {k: float(v) / max(1, count) for k, v in sums.items()}


def dot_scores(user_emb, item_emb):
    """score_fn for models that score by the inner product of user and item embeddings."""
    return lambda users: user_emb[users] @ item_emb.T


@torch.no_grad()
def top_unseen_items(user_emb, item_emb, seen, k, batch_size=4096):
    """(n_users, k) int64: each user's k highest-scored items (inner product) among the items the
    user has no entry for in ``seen`` (a users x items sparse matrix), best first.

    Scored in blocks of users, like the evaluation, so memory stays at one score block.
    """
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    k = min(k, n_items)
    seen = sp.csr_matrix(seen)
    ptr, idx = _csr_to_device(seen, user_emb.device)
    out = torch.empty(n_users, k, dtype=torch.int64, device=user_emb.device)
    block = block_users(batch_size, n_items)
    for start in range(0, n_users, block):
        end = min(start + block, n_users)
        scores = user_emb[start:end] @ item_emb.T
        rows, span = RankingEvaluator._block_rows(ptr, start, end)
        scores[rows, idx[span]] = -torch.inf
        out[start:end] = torch.topk(scores, k, dim=1).indices
    return out

"""Vectorised BPR sampling: one epoch of (user, positive, negative[, K extra negatives]) at once."""
import numpy as np
import scipy.sparse as sp


class TripleSampler:
    """Each epoch visits every training interaction once, in random order, with negatives drawn
    uniformly from the items the user has not interacted with in training.

    Negatives are drawn in blocks of rows and the few that hit a training item are redrawn;
    membership is tested by binary search in the sorted user * n_items + item keys. Epoch arrays
    are int32 and the blocks keep the temporary memory small whatever the dataset size.

    ``negatives_from_train=True`` draws negatives only among the items with a training interaction
    (as MMRec's samplers do), so items nobody has interacted with in training are never pushed down.
    """

    BLOCK = 1 << 18   # sampled entries per membership test

    def __init__(self, train, seed, negatives_from_train=False):
        train = sp.csr_matrix(train, copy=True)   # a copy: sorting in place would reorder the caller's arrays
        train.sum_duplicates()                      # sorted indices, each interaction once
        self.n_users, self.n_items = train.shape
        self.users = np.repeat(np.arange(self.n_users, dtype=np.int32), np.diff(train.indptr))
        self.items = train.indices.astype(np.int32)
        # sorted: CSR rows in order, columns sorted within rows
        self.keys = self.users.astype(np.int64) * self.n_items + self.items
        self.rng = np.random.default_rng(seed)
        # the items negatives are drawn from (None: every item)
        self.pool = np.unique(self.items).astype(np.int32) if negatives_from_train else None
        full = np.diff(train.indptr) >= (self.n_items if self.pool is None else self.pool.size)
        if full[self.users].any():
            raise ValueError("a user has interacted with every item: no negative can be sampled")

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state

    def _is_positive(self, users, items):
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        np.minimum(pos, self.keys.size - 1, out=pos)
        return self.keys[pos] == keys

    def _draw(self, size):
        if self.pool is None:
            return self.rng.integers(0, self.n_items, size=size, dtype=np.int32)
        return self.pool[self.rng.integers(0, self.pool.size, size=size)]

    def negatives(self, users, k=1):
        """(len(users), k) int32 items that none of the users has in training."""
        out = self._draw((len(users), k))
        rows_per_block = max(1, self.BLOCK // k)
        for start in range(0, len(users), rows_per_block):
            rows = np.repeat(users[start:start + rows_per_block], k)
            items = out[start:start + rows_per_block].reshape(-1)       # a view into ``out``
            bad = np.flatnonzero(self._is_positive(rows, items))
            while bad.size:
                items[bad] = self._draw(bad.size)
                bad = bad[self._is_positive(rows[bad], items[bad])]
        return out

    def epoch(self, extra_negatives=0):
        """Shuffled (users, positives, negatives, extra) for one epoch; extra is (n, K) or None."""
        order = self.rng.permutation(self.users.size)
        users, pos = self.users[order], self.items[order]
        neg = self.negatives(users, 1)[:, 0]
        extra = self.negatives(users, extra_negatives) if extra_negatives else None
        return users, pos, neg, extra

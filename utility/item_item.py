"""The item-item teacher: EASE (Steck, WWW 2019) blended with the graph teacher's scores.

PromptMM's KD reads teacher scores, so the teacher can be any scorer. After stage 1, the scores the
student distils are

    t(u, i) = (1 - w) <e^T_u, e^T_i> + w * s * (X B)[u, i],      s = std(graph scores) / std(X B),

where X is the binary training matrix and B EASE's item-item weights. EASE's lambda, the weight w
(0 among the choices: the graph teacher alone), the student's width and its depth are chosen
together on the validation split, by the validation metric of the blend truncated to the student's
width (the best the student's dot products can represent, and the student's starting point). A wider student is
taken only when it gains more than ``WIDER_GAIN`` on validation.

Cost: EASE inverts an items x items matrix (float32 here) and the blend holds dense users x items score
matrices. The item-item teacher is used up to ``MAX_ITEMS`` items and ``MAX_SCORES`` user-item
pairs; above either, the run says so and the student distils the graph teacher alone.
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from utility.graph import to_torch_csr
from utility.sparse_ops import sparse_dense

LAMBDAS = (10.0, 100.0, 1000.0)
WEIGHTS = (0.0, 0.25, 0.5, 0.75)
WIDTH_FACTORS = (1, 2)        # student widths: the teacher's, and twice it
WIDER_GAIN = 0.01             # relative validation gain that a wider student must bring
MAX_ITEMS = 16000             # three items x items float32 matrices at the peak: 3 GB at this size
MAX_SCORES = 1 << 27          # users x items float32 scores (512 MB per matrix)
SVD_OVERSAMPLE = 10


def gram(train, dtype=torch.float64):
    """X^T X of the binary training matrix, dense (items x items)."""
    x = sp.csr_matrix(train, dtype=np.float64)
    return torch.as_tensor((x.T @ x).toarray(), dtype=dtype)


def ease_weights(gram_matrix, lam):
    """EASE: B = I - P diag(1/diag(P)) with P = (X^T X + lambda I)^-1, so diag(B) = 0.

    The closed form of min ||X - XB||^2 + lambda ||B||^2 subject to diag(B) = 0. Returns float32.
    """
    g = gram_matrix.clone()
    g.diagonal().add_(lam)
    p = torch.cholesky_inverse(torch.linalg.cholesky(g))
    b = -p / p.diagonal()[None, :]
    b.diagonal().zero_()
    return b.float()


def train_product(train, weights):
    """X W: the binary training matrix X (users x items, sparse) times an items x items matrix W (dense),
    as a dense users x items tensor on W's device. The sparse product costs 2 nnz(X) n_items."""
    x = to_torch_csr(sp.csr_matrix(train, dtype=np.float32).sign()).to(weights.device)
    return sparse_dense(x, weights)


def truncate(scores, rank):
    """(user factors, item factors) of the best rank-``rank`` approximation of ``scores`` (randomised SVD),
    the singular values split evenly between the sides."""
    kept = min(rank, *scores.shape)
    left, values, right = torch.svd_lowrank(scores, q=min(kept + SVD_OVERSAMPLE, *scores.shape), niter=4)
    root = values[:kept].sqrt()
    # fewer users or items than rank: the scores' rank is lower still, and zero columns keep it
    return (torch.nn.functional.pad(left[:, :kept] * root, (0, rank - kept)),
            torch.nn.functional.pad(right[:, :kept] * root, (0, rank - kept)))


@dataclass
class Blend:
    """The distilled teacher: graph scores blended with EASE's (weight 0: the graph teacher alone)."""
    weight: float
    lam: float
    scale: float                      # std(graph scores) / std(EASE scores)
    ease: torch.Tensor = None         # X B, (n_users, n_items); None when weight is 0

    def pair_scores(self, graph_scores, users, items):
        """The blended scores of ``users`` (B,) against ``items`` (B, n) from the graph's (B, n) scores."""
        if not self.weight:
            return graph_scores
        return (1 - self.weight) * graph_scores + self.weight * self.scale * self.ease[users[:, None], items]

    def full_scores(self, graph_scores):
        if not self.weight:
            return graph_scores
        return (1 - self.weight) * graph_scores + self.weight * self.scale * self.ease

    def describe(self):
        return "graph teacher alone" if not self.weight else f"EASE lambda {self.lam:g}, weight {self.weight:g}"


def too_large(n_users, n_items):
    """Why the item-item teacher cannot be used on this data (None when it can)."""
    if n_items > MAX_ITEMS:
        return f"{n_items:,} items (more than {MAX_ITEMS:,}: EASE's items x items inverse)"
    if n_users * n_items > MAX_SCORES:
        return f"{n_users:,} x {n_items:,} user-item pairs (more than {MAX_SCORES:,}: dense score matrices)"
    return None


def choose(train, user, item, val_eval, metric, widths, depths, propagate, log=print, lambdas=LAMBDAS,
           weights=WEIGHTS):
    """(Blend, student width, student depth, {(lambda, weight, width, depth): validation metric}).

    ``user``/``item``: the graph teacher's final embeddings. EASE's lambda is the one with the best
    validation ``metric`` of EASE alone (``lambdas`` empty: no EASE, the graph teacher alone). Each
    candidate blend is factorised at each width in ``widths`` (ascending; one SVD serves them all);
    the factors are the student's starting embeddings, scored on validation as the student scores
    them after ``propagate(user, item, depth)`` for each depth in ``depths``. The narrowest width
    within ``WIDER_GAIN`` of the best is taken, with the blend and depth that are best at that width.
    """
    needs_scores = bool(lambdas) or any(w != user.shape[1] for w in widths)
    graph = user @ item.T if needs_scores else None    # dense users x items: only when a factorisation needs it
    # rounded, so that a sum over sharded users (torchrun) makes the same choice as one process
    evaluate = lambda u, i: round(val_eval(lambda users: u[users] @ i.T)[metric], 8)   # noqa: E731
    grid = {}

    def score_starts(key, scores):
        needed = key[1] != 0 or any(w != user.shape[1] for w in widths)   # else the teacher's own embeddings
        factors = truncate(scores, max(widths)) if needed else None
        for width in widths:   # the graph teacher alone at its own width: its own embeddings
            start = (user, item) if key[1] == 0 and width == user.shape[1] else (factors[0][:, :width],
                                                                                 factors[1][:, :width])
            for depth in depths:
                grid[key + (width, depth)] = evaluate(*propagate(*start, depth))

    score_starts((0.0, 0.0), graph)
    lam, ease = None, None
    if lambdas:
        gram_matrix = gram(train, torch.float32).to(user.device)   # lambda >= 10 keeps it well conditioned
        ease_val = {}
        for value in lambdas:
            scores = train_product(train, ease_weights(gram_matrix, value))
            ease_val[value] = round(val_eval(lambda users: scores[users].clone())[metric], 8)
            if lam is None or ease_val[value] > ease_val[lam]:
                lam, ease = value, scores
            del scores
        del gram_matrix
        for weight in (w for w in weights if w):
            score_starts((lam, weight), _blend(weight, lam, graph, ease).full_scores(graph))
    best_at = {w: max((v, k) for k, v in grid.items() if k[2] == w) for w in widths}
    top = max(v for v, _ in best_at.values())
    width = next(w for w in widths if best_at[w][0] >= top / (1 + WIDER_GAIN))
    _, weight, _, depth = best_at[width][1]
    chosen = _blend(weight, lam, graph, ease)
    alone = max(v for k, v in grid.items() if k[1] == 0 and k[2] == width)
    log(f"distilled teacher: {chosen.describe()}; student width {width}, depth {depth} (validation {metric} of "
        f"the student's start {best_at[width][0]:.4f}; from the graph teacher alone {alone:.4f}"
        + ("" if lam is None else f"; EASE alone {ease_val[lam]:.4f}") + ")")
    return chosen, width, depth, grid


def _blend(weight, lam, graph, ease):
    if not weight:
        return Blend(0.0, 0.0, 1.0)
    return Blend(weight, lam, float(graph.std() / ease.std().clamp_min(1e-12)), ease)

"""The evaluator's metrics against ranx, an independent implementation, on random rankings with ties."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

ranx = pytest.importorskip("ranx")

from utility.evaluate import RankingEvaluator  # noqa: E402

KS = (10, 20, 40, 50)
OURS_TO_RANX = {"recall": "recall", "ndcg": "ndcg", "precision": "precision", "hit": "hit_rate"}
N_USERS, N_ITEMS = 120, 400


def random_split(rng):
    """Scores with many ties (eight levels), 0 to 40 training items per user, and 1 to 50 held-out items
    among the rest for all but every tenth user (who has none and is not evaluated)."""
    scores = torch.as_tensor(rng.integers(0, 8, (N_USERS, N_ITEMS)), dtype=torch.float32)
    train, truth = sp.lil_matrix((N_USERS, N_ITEMS)), sp.lil_matrix((N_USERS, N_ITEMS))
    for u in range(N_USERS):
        items = rng.permutation(N_ITEMS)
        n_train = int(rng.integers(0, 41))
        train[u, items[:n_train]] = 1
        if u % 10:
            truth[u, items[n_train:n_train + int(rng.integers(1, 51))]] = 1
    return scores, train.tocsr(), truth.tocsr()


@pytest.mark.slow   # ranx compiles its metrics with numba on first use
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_agree_with_ranx_on_tied_rankings(seed):
    scores, train, truth = random_split(np.random.default_rng(seed))
    ev = RankingEvaluator(truth, [train], KS, torch.device("cpu"))
    score_fn = lambda users: scores[users]   # noqa: E731
    names = [f"{m}@{k}" for m in OURS_TO_RANX for k in KS]
    ours = ev.per_user(score_fn, names)
    users = ours["users"]
    assert users.tolist() == [u for u in range(N_USERS) if u % 10]

    # Ties make "the ranking" ambiguous, and ranx breaks them its own way. So ranx is given the ranking
    # the evaluator scored: the same masking and torch.topk on the same score tensor (deterministic for
    # the same input), checked against the evaluator's own hits, and passed to ranx as strictly
    # decreasing scores K_max, K_max - 1, ..., so that ranx keeps that order.
    masked = scores[torch.as_tensor(users)].clone()
    rows, cols = train[users].nonzero()
    masked[rows, cols] = -torch.inf
    top = torch.topk(masked, max(KS), dim=1).indices.numpy()
    hits = np.concatenate([h.numpy() for _, _, h in ev._hit_blocks(score_fn)])
    assert (hits == np.take_along_axis(truth[users].toarray() > 0, top, axis=1)).all()
    assert hits.sum() > 0 and not hits.all()

    qrels = ranx.Qrels({f"u{u}": {f"i{i}": 1 for i in truth[u].indices} for u in users})   # binary relevance
    run = ranx.Run({f"u{u}": {f"i{i}": float(max(KS) - r) for r, i in enumerate(top[j])} for j, u in enumerate(users)})
    ranx.evaluate(qrels, run, [f"{OURS_TO_RANX[n.split('@')[0]]}@{n.split('@')[1]}" for n in names], return_mean=False)
    for name in names:
        metric, k = name.split("@")
        theirs = np.array([run.scores[f"{OURS_TO_RANX[metric]}@{k}"][f"u{u}"] for u in users])
        np.testing.assert_allclose(ours[name], theirs, rtol=0, atol=1e-6, err_msg=name)

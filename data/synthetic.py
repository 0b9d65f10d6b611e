"""Synthetic multi-modal recommendation datasets shaped like TikTok, Netflix or Amazon.

    python -m data.synthetic --like tiktok [--scale 0.2] [--seed 2024] [--item_cold 0.2] --out data/tiktok_synth

writes ``train.json``, ``val.json``, ``test.json`` (user-id string -> sorted item ids),
one ``<modality>_feat.npy`` (float32, one row per item) per modality, and ``meta.json``.
``--item_cold FRACTION`` then holds that share of the items out as new items, with all their
interactions, and lists them in ``cold_items.json`` (``data.prepare.item_cold_split``).

Generative model
----------------
Items are split into ``n_topics`` equal-sized latent topics (niches; about sqrt(12 * n_items) of
them). Topic ``k`` has a centre and item ``i`` in topic ``k`` has factors

    v_i = c_k + e_i,    c_k ~ N(0, (1 - rho) I_r),    e_i ~ N(0, rho I_r)

so ``rho`` is the share of an item's taste profile that is its own rather than its topic's.
User factors are ``u ~ N(0, I_r / r)``, making ``<u, v_i>`` roughly standard normal. Each item
has a popularity bias ``b_i ~ N(0, pop_sigma^2)`` (log-normal popularity weights, i.e. a long tail
of rarely consumed items), and each user a log-normal activity level, which fixes how many
distinct items ``n_u`` (at least ``min_user_items`` where the catalogue allows) the user consumes;
the counts sum exactly to the target number of interactions.

The target is P(i | u) proportional to exp(<u, v_i> / T + b_i). It is sampled in two exact steps:

1. each of the user's ``n_u`` picks chooses a topic with probability proportional to
   ``exp(<u, c_k> / T) * sum_{i in k} exp(b_i)``;
2. from each chosen topic the user takes as many distinct items as picks fell on it, without
   replacement, with probability proportional to ``exp(<u, e_i> / T + b_i)`` (Gumbel-top-k over
   the topic's items).

Given the topic, an item's probability is exactly the target's; the topic step uses the topic centre instead of the
exact sum over the topic's items (which would need every user-item score), i.e. it drops a
topic-level factor whose expectation is the same for all topics. Each user costs
O(n_topics + items in the chosen topics), users are processed in chunks, and no users x items
matrix is ever built, so memory stays bounded.

Each modality ``m`` (dimension ``d_m``) is a noisy random linear view of the item factors:

    h_i = v_i A_m / sqrt(r) + nuisance_m * z_i B_m / sqrt(q) + noise_m * eps_i
    x_i = f_m(h_i)

with ``A_m ~ N(0, 1)^{r x d_m}``, modality-specific item factors ``z_i ~ N(0, I_q)`` unrelated to
taste (think lighting or recording quality) seen through ``B_m ~ N(0, 1)^{q x d_m}``, i.i.d.
``eps_i ~ N(0, I)``, and a mild elementwise nonlinearity ``f_m`` (softplus for image-like features,
which are non-negative like CNN activations; tanh for audio; identity for text). The nuisance
factors matter more than the i.i.d. noise: in hundreds of dimensions i.i.d. noise largely averages
out of feature similarities, while low-rank nuisance structure does not. Noise levels differ per
modality (``MODALITY_NOISE``), so some views are much more informative than others.

Since most items sit in the popularity tail with few interactions, item embeddings learned from
ids alone are poor there, while every item's features carry its factors: a model that uses the
modalities can beat one that does not (``evaluate_baselines`` checks this with simple
recommenders).

Splits are per user: about 10% of a user's items go to test and 10% to val (randomly rounded;
at least one test item for users with three or more items), the rest to train, so every user has
training items. Item ids
are random with respect to the model, except that the largest id is always an item seen in
training, so loaders that infer the item count from the ids agree with the feature files.

Output is a deterministic function of (like, scale, seed); files are written to a temporary folder
beside ``--out`` and renamed into place.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Scale-1 shapes of the public datasets: users, items, interactions, and feature widths.
SHAPES = {
    "tiktok": {"n_users": 14343, "n_items": 8690, "n_interactions": 276637,
               "modalities": {"image": 128, "audio": 128, "text": 768}},
    "netflix": {"n_users": 43739, "n_items": 17239, "n_interactions": 609341,
                "modalities": {"image": 512, "text": 768}},
    "amazon": {"n_users": 41691, "n_items": 21479, "n_interactions": 359165,
               "modalities": {"image": 4096, "text": 1024}},
}
ALIASES = {"electronics": "amazon"}

# How informative each modality is: (nuisance, noise, nonlinearity); see the module docstring.
# One clean-ish view and one or two noisy ones per dataset.
MODALITY_NOISE = {
    "tiktok": {"image": (0.4, 1.0, "softplus"), "audio": (1.0, 2.0, "tanh"), "text": (0.8, 1.5, "identity")},
    "netflix": {"image": (0.6, 1.0, "softplus"), "text": (1.5, 1.5, "identity")},
    "amazon": {"image": (1.5, 2.0, "softplus"), "text": (0.6, 1.0, "identity")},
}

DEFAULT_SEED = 2024


@dataclass(frozen=True)
class GeneratorParams:
    rank: int = 16                  # r, dimension of the planted user / item factors
    topic_density: float = 12.0     # n_topics = sqrt(n_items * topic_density)
    rho: float = 0.5                # item-specific share of an item's factors (rest: its topic)
    temperature: float = 0.5        # affinity temperature: <u, v> / T has std about 1 / T
    pop_sigma: float = 1.3          # std of the log-popularity bias b_i
    activity_sigma: float = 1.0     # std of log user activity
    min_user_items: int = 3         # every user consumes at least this many items where possible
    max_user_share: float = 0.25    # and at most this share of the catalogue
    nuisance_rank: int = 8          # q, rank of the taste-unrelated modality factors
    chunk_budget: int = 1 << 21     # entries per block of user x topic or pair x item scores
    item_chunk: int = 8192          # items per chunk when writing features
    val_share: float = 0.1
    test_share: float = 0.1


def canonical_name(like: str) -> str:
    name = ALIASES.get(like.lower(), like.lower())
    if name not in SHAPES:
        raise ValueError(f"unknown dataset {like!r}; expected one of {sorted(SHAPES) + sorted(ALIASES)}")
    return name


def scaled_shape(like: str, scale: float) -> dict:
    """Users, items and interactions times ``scale`` (feature widths unchanged)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    base = SHAPES[canonical_name(like)]
    n_users = max(1, round(base["n_users"] * scale))
    n_items = max(2, round(base["n_items"] * scale))
    n_interactions = max(n_users, round(base["n_interactions"] * scale))
    return {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions,
            "modalities": dict(base["modalities"])}


# --------------------------------------------------------------------------- planted model

@dataclass
class LatentModel:
    user_factors: np.ndarray         # (n_users, r)
    item_factors: np.ndarray         # (n_items, r)
    topic_centres: np.ndarray        # (n_topics, r), the part of v_i its topic shares
    topic_start: np.ndarray          # (n_topics + 1,), topic k = items_by_topic[start[k]:start[k + 1]]
    items_by_topic: np.ndarray       # (n_items,)
    item_log_popularity: np.ndarray  # (n_items,), b_i

    @property
    def n_topics(self) -> int:
        return len(self.topic_centres)

    def topic_of_items(self) -> np.ndarray:
        topic = np.empty(len(self.items_by_topic), dtype=np.int64)
        topic[self.items_by_topic] = np.repeat(np.arange(self.n_topics), np.diff(self.topic_start))
        return topic


def topic_count(n_items: int, params: GeneratorParams) -> int:
    """About sqrt(n_items * topic_density) topics: a user's topic logits and the items of the
    topics they draw then cost about the same, which keeps sampling cheap at any scale."""
    return int(np.clip(round(math.sqrt(n_items * params.topic_density)), 1, n_items))


def draw_latent_model(rng: np.random.Generator, n_users: int, n_items: int,
                      params: GeneratorParams) -> LatentModel:
    r = params.rank
    n_topics = topic_count(n_items, params)
    items_by_topic = rng.permutation(n_items)
    topic_start = np.linspace(0, n_items, n_topics + 1).round().astype(np.int64)  # near-equal sizes
    sizes = np.diff(topic_start)
    centres = math.sqrt(1 - params.rho) * rng.standard_normal((n_topics, r))
    item_factors = np.empty((n_items, r))
    item_factors[items_by_topic] = np.repeat(centres, sizes, axis=0)
    item_factors += math.sqrt(params.rho) * rng.standard_normal((n_items, r))
    user_factors = rng.standard_normal((n_users, r)) / math.sqrt(r)
    log_pop = params.pop_sigma * rng.standard_normal(n_items)
    return LatentModel(user_factors, item_factors, centres, topic_start, items_by_topic, log_pop)


def _round_proportional(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers proportional to ``weights`` that sum to exactly ``total``."""
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(np.int64)
    left = int(total - counts.sum())
    if left > 0:  # largest remainders first; the stable sort keeps ties deterministic
        counts[np.argsort(counts - share, kind="stable")[:left]] += 1
    return counts


def allocate_user_counts(rng: np.random.Generator, n_users: int, n_items: int, n_interactions: int,
                         params: GeneratorParams) -> np.ndarray:
    """Items per user: a floor of ``min_user_items`` plus a log-normal share of the rest, capped."""
    cap = max(1, min(n_items, int(params.max_user_share * n_items)))
    floor = min(params.min_user_items, cap, n_interactions // n_users)
    total = min(n_interactions, cap * n_users)
    activity = rng.lognormal(0.0, params.activity_sigma, n_users)
    counts = np.full(n_users, floor, dtype=np.int64)
    free = np.ones(n_users, dtype=bool)
    extra = total - counts.sum()
    # Water-filling: hand out what is left in proportion to activity; users that hit the cap
    # keep it and their excess goes round again among the others.
    while extra > 0 and free.any():
        counts[free] += _round_proportional(activity[free], extra)
        over = counts > cap
        extra = int((counts[over] - cap).sum())
        counts[over] = cap
        free &= counts < cap
    return counts


def _draw_from_rows(rng: np.random.Generator, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One column index per entry of ``rows``, drawn with probability proportional to weights[row]."""
    n_rows, width = weights.shape
    cdf = np.cumsum(weights, axis=1, dtype=np.float64)
    cdf /= cdf[:, -1:]
    # Shifting row b's CDF into [b, b + 1] turns all the per-row searches into one sorted search;
    # uniforms stay a margin below 1 so that u + b never rounds up into the next row.
    cdf += np.arange(n_rows)[:, None]
    u = rng.random(len(rows)) * (1.0 - 1e-9)
    column = np.searchsorted(cdf.ravel(), rows + u, side="right") - rows * width
    return np.minimum(column, width - 1)


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard Gumbel noise -log(-log U) in float32 (much faster than Generator.gumbel)."""
    noise = rng.random(shape, dtype=np.float32)
    np.maximum(noise, np.float32(2.0 ** -25), out=noise)  # U may be exactly 0
    np.log(noise, out=noise)
    np.negative(noise, out=noise)
    np.log(noise, out=noise)
    return np.negative(noise, out=noise)


def draw_topic_counts(rng: np.random.Generator, model: LatentModel, counts: np.ndarray,
                      params: GeneratorParams, verbose: bool = True):
    """How many items each user takes from each topic: (users, topics, counts) of the non-zero pairs.

    Each of user u's n_u draws picks topic k with probability proportional to
    exp(<u, c_k> / T) * sum_{i in k} exp(b_i); a topic is never asked for more items than it holds
    (the excess is drawn again among the topics not yet exhausted).
    """
    n_topics = model.n_topics
    sizes = np.diff(model.topic_start)
    popularity = np.exp(model.item_log_popularity[model.items_by_topic])
    log_mass = np.log(np.add.reduceat(popularity, model.topic_start[:-1])).astype(np.float32)
    scaled_centres = (model.topic_centres.T / params.temperature).astype(np.float32)
    user_factors = model.user_factors.astype(np.float32)
    chunk = max(1, params.chunk_budget // n_topics)
    pair_users, pair_topics, pair_counts = [], [], []
    for start in _progress(range(0, len(counts), chunk), verbose, "drawing topics", unit="chunk"):
        users = np.arange(start, min(len(counts), start + chunk))
        logits = user_factors[users] @ scaled_centres + log_mass
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        rows = np.repeat(np.arange(len(users)), counts[users])
        # A pair (row, topic) is coded as row * n_topics + topic.
        pairs, taken = np.unique(rows * n_topics + _draw_from_rows(rng, weights, rows), return_counts=True)
        while True:
            excess = np.maximum(taken - sizes[pairs % n_topics], 0)
            if not excess.any():
                break
            taken -= excess
            full = pairs[taken == sizes[pairs % n_topics]]
            weights[full // n_topics, full % n_topics] = 0.0
            rows = np.repeat(pairs // n_topics, excess)
            redraw, local_rows = np.unique(rows, return_inverse=True)
            topics = _draw_from_rows(rng, weights[redraw], local_rows)
            pairs, inverse = np.unique(np.concatenate([pairs, rows * n_topics + topics]), return_inverse=True)
            taken = np.bincount(inverse, weights=np.concatenate([taken, np.ones(len(rows))])).astype(np.int64)
        pair_users.append(users[pairs // n_topics])
        pair_topics.append(pairs % n_topics)
        pair_counts.append(taken)
    return np.concatenate(pair_users), np.concatenate(pair_topics), np.concatenate(pair_counts)


def sample_interactions(rng: np.random.Generator, model: LatentModel, counts: np.ndarray,
                        params: GeneratorParams, verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All (user, item) pairs, sorted by user then item; user u has counts[u] distinct items."""
    pair_users, pair_topics, pair_counts = draw_topic_counts(rng, model, counts, params, verbose)
    user_factors = (model.user_factors / params.temperature).astype(np.float32)
    # Within a topic only the item's own part of its factors and its popularity matter.
    residual = (model.item_factors - model.topic_centres[model.topic_of_items()]).astype(np.float32)
    log_pop = model.item_log_popularity.astype(np.float32)
    # Pairs grouped by topic, then by how many items they take, so each block has one count.
    order = np.lexsort((pair_counts, pair_topics))
    group_key = pair_topics[order] * (int(pair_counts.max()) + 1) + pair_counts[order]
    group_start = np.flatnonzero(np.diff(group_key, prepend=-1))
    group_bounds = np.append(group_start, len(order))
    users_out, items_out = [], []
    groups = zip(group_bounds[:-1], group_bounds[1:])
    for first, last in _progress(groups, verbose, "drawing items", unit="group", total=len(group_start)):
        topic, n_take = int(pair_topics[order[first]]), int(pair_counts[order[first]])
        members = model.items_by_topic[model.topic_start[topic]:model.topic_start[topic + 1]]
        rows = max(1, params.chunk_budget // len(members))
        for start in range(first, last, rows):
            users = pair_users[order[start:min(last, start + rows)]]
            # Gumbel-top-k: the n largest of log-weight + Gumbel noise are an exact draw of n
            # distinct items with probability proportional to exp(log-weight).
            keys = user_factors[users] @ residual[members].T
            keys += log_pop[members]
            keys += _gumbel(rng, keys.shape)
            if n_take == 1:
                chosen = keys.argmax(axis=1)[:, None]
            else:
                chosen = np.argpartition(keys, -n_take, axis=1)[:, -n_take:]
            users_out.append(np.repeat(users, n_take))
            items_out.append(members[chosen].ravel())
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    order = np.lexsort((items, users))
    return users[order], items[order]


def split_per_user(rng: np.random.Generator, users: np.ndarray, n_users: int,
                   params: GeneratorParams) -> np.ndarray:
    """Split label per pair (0 train, 1 val, 2 test); ``users`` must be sorted.

    A user with n items gets test_share * n test items and val_share * n val items, randomly
    rounded so the shares hold on average. Users with three or more items get at least one test
    item (so nearly all users can be evaluated), and everyone keeps at least one training item.
    """
    per_user = np.bincount(users, minlength=n_users)
    n_test = np.floor(params.test_share * per_user + rng.random(n_users)).astype(np.int64)
    n_test = np.where(per_user >= 3, np.maximum(n_test, 1), np.minimum(n_test, per_user - 1))
    n_val = np.floor(params.val_share * per_user + rng.random(n_users)).astype(np.int64)
    n_val = np.minimum(n_val, per_user - n_test - 1)
    # A random rank of each pair within its user: the first n_test ranks are test, then val.
    order = np.lexsort((rng.random(len(users)), users))
    start = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - start[users[order]]
    label = np.zeros(len(users), dtype=np.int8)
    label[rank < n_test[users] + n_val[users]] = 1
    label[rank < n_test[users]] = 2
    return label


# --------------------------------------------------------------------------- modalities

_NONLINEARITIES = {
    "identity": lambda h: h,
    "softplus": lambda h: np.logaddexp(0.0, h),
    "tanh": np.tanh,
}


def write_modality(path: Path, rng: np.random.Generator, item_factors: np.ndarray, dim: int,
                   nuisance: float, noise: float, nonlinearity: str, params: GeneratorParams) -> None:
    """One modality's features, computed and written in item chunks (bounded memory)."""
    n_items, r = item_factors.shape
    q = params.nuisance_rank
    taste_view = rng.standard_normal((r, dim)).astype(np.float32) / math.sqrt(r)
    nuisance_view = rng.standard_normal((q, dim)).astype(np.float32) * (nuisance / math.sqrt(q))
    f = _NONLINEARITIES[nonlinearity]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_items, dim))
    for start in range(0, n_items, params.item_chunk):
        v = item_factors[start:start + params.item_chunk].astype(np.float32)
        z = rng.standard_normal((len(v), q), dtype=np.float32)
        h = v @ taste_view + z @ nuisance_view
        h += noise * rng.standard_normal((len(v), dim), dtype=np.float32)
        out[start:start + len(v)] = f(h)
    out.flush()
    del out


# --------------------------------------------------------------------------- writing

def _write_split(path: Path, users: np.ndarray, items: np.ndarray, n_users: int, every_user: bool) -> None:
    """{"user": [sorted items]} in user order; ``users`` sorted, items sorted within users."""
    bounds = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))]).tolist()
    flat = items.tolist()
    split = {str(u): flat[bounds[u]:bounds[u + 1]] for u in range(n_users)
             if every_user or bounds[u + 1] > bounds[u]}
    path.write_text(json.dumps(split))


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; pass --force (force=True) to replace it")


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(trash / out.name)
        tmp.replace(out)
        shutil.rmtree(trash)
    else:
        tmp.replace(out)  # an empty target folder is replaced by rename(2)


def _progress(iterable, verbose, desc, **kwargs):
    if not verbose:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, **kwargs)


def make_synthetic(like: str, out, scale: float = 1.0, seed: int = DEFAULT_SEED, force: bool = False,
                   verbose: bool = True, params: GeneratorParams | None = None, shape: dict | None = None) -> Path:
    """Generate a dataset shaped like ``like`` times ``scale`` into folder ``out``; returns its path.

    ``shape`` ({n_users, n_items, n_interactions, modalities: {name: dim}}) replaces the scaled
    shape; ``like`` then only sets the modalities' noise levels (by name, as in ``MODALITY_NOISE``).
    """
    name = canonical_name(like)
    params = params or GeneratorParams()
    out = Path(out)
    _check_out(out, force)
    shape = shape or scaled_shape(name, scale)
    unknown = set(shape["modalities"]) - set(MODALITY_NOISE[name])
    if unknown:
        raise ValueError(f"modalities {sorted(unknown)} have no noise levels for {name!r} "
                         f"(choose from {sorted(MODALITY_NOISE[name])})")
    n_users, n_items = shape["n_users"], shape["n_items"]
    log = (lambda msg: print(f"[synthetic] {msg}", file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    log(f"{name} x{scale:g} (seed {seed}): {n_users:,} users, {n_items:,} items, "
        f"{shape['n_interactions']:,} interactions, modalities "
        + ", ".join(f"{m} {d}" for m, d in shape["modalities"].items()))
    began = time.perf_counter()

    # Independent streams per stage: changing one stage does not reshuffle the others.
    modality_names = list(shape["modalities"])
    streams = np.random.SeedSequence(seed).spawn(4 + len(modality_names))
    model_rng, count_rng, sample_rng, split_rng = (np.random.default_rng(s) for s in streams[:4])
    model = draw_latent_model(model_rng, n_users, n_items, params)
    counts = allocate_user_counts(count_rng, n_users, n_items, shape["n_interactions"], params)
    users, items = sample_interactions(sample_rng, model, counts, params, verbose)
    label = split_per_user(split_rng, users, n_users, params)
    log(f"sampled {len(users):,} interactions ({len(users) / shape['n_interactions']:.2%} of target) "
        f"in {time.perf_counter() - began:.1f}s")

    # The largest item id must occur in training (see the module docstring): swap labels if not.
    item_label = np.arange(n_items)
    seen = np.unique(items[label == 0])
    if seen[-1] != n_items - 1:
        item_label[[seen[-1], n_items - 1]] = [n_items - 1, seen[-1]]
        items = item_label[items]
        keep_sorted = np.lexsort((items, users))
        users, items, label = users[keep_sorted], items[keep_sorted], label[keep_sorted]
    item_factors = model.item_factors[item_label]  # the swap is its own inverse

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for split_id, split_name in enumerate(("train", "val", "test")):
            mask = label == split_id
            _write_split(tmp / f"{split_name}.json", users[mask], items[mask], n_users, every_user=split_id == 0)
        modalities = {}
        for modality, stream in zip(modality_names, streams[4:]):
            nuisance, noise, nonlinearity = MODALITY_NOISE[name][modality]
            dim = shape["modalities"][modality]
            write_modality(tmp / f"{modality}_feat.npy", np.random.default_rng(stream), item_factors, dim,
                           nuisance, noise, nonlinearity, params)
            modalities[modality] = {"dim": dim, "nuisance": nuisance, "noise": noise, "nonlinearity": nonlinearity}
        item_counts = np.bincount(items[label == 0], minlength=n_items)
        meta = {
            "generator": "data.synthetic",
            "like": name,
            "scale": scale,
            "seed": seed,
            "n_users": n_users,
            "n_items": n_items,
            "n_interactions": int(len(users)),
            "n_interactions_target": shape["n_interactions"],
            "n_train": int((label == 0).sum()),
            "n_val": int((label == 1).sum()),
            "n_test": int((label == 2).sum()),
            "n_topics": model.n_topics,
            "items_without_train_interactions": int((item_counts == 0).sum()),
            "items_with_at_most_5_train_interactions": int((item_counts <= 5).sum()),
            "modalities": modalities,
            "params": asdict(params),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _check_out(out, force)  # the folder may have appeared meanwhile
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} in {time.perf_counter() - began:.1f}s: train/val/test "
        f"{meta['n_train']:,}/{meta['n_val']:,}/{meta['n_test']:,}, "
        f"{meta['items_without_train_interactions']:,} items without training interactions")
    return out


def make_item_cold_synthetic(like: str, out, fraction: float, scale: float = 1.0, seed: int = DEFAULT_SEED,
                             force: bool = False, verbose: bool = True) -> Path:
    """The synthetic dataset with a seeded ``fraction`` of its items held out cold, with all their
    interactions (``data.prepare.item_cold_split``; ``cold_items.json`` lists them)."""
    from data.prepare import write_item_cold_copy

    out = Path(out)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    warm = Path(tempfile.mkdtemp(prefix=f".{out.name}.warm-", dir=out.parent))
    try:
        make_synthetic(like, warm, scale=scale, seed=seed, force=True, verbose=verbose)
        return write_item_cold_copy(warm, out, fraction, seed, force=True, verbose=verbose)
    finally:
        shutil.rmtree(warm, ignore_errors=True)


# --------------------------------------------------------------------------- usefulness check

def evaluate_baselines(path, k: int = 20, user_chunk: int = 2048) -> dict:
    """Recall@k on test of simple recommenders, with and without the modality features.

    * ``random``; ``popularity`` and ``item_knn`` (item-item cosine of training co-occurrence)
      use interaction ids only;
    * ``modality_knn`` ranks items by the cosine between their (centred, normalised, concatenated)
      features and the mean features of the user's training items;
    * ``popularity+modality`` and ``item_knn+modality`` add the modality score to the id-only one
      (each standardised per user), with the modality weight picked on the validation split.
    Intended for small datasets: it scores all items for chunks of users.
    """
    import scipy.sparse as sp

    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    n_users, n_items = meta["n_users"], meta["n_items"]
    k = min(k, n_items)

    def matrix(split):
        pairs = json.loads((path / f"{split}.json").read_text())
        rows = [int(u) for u, its in pairs.items() for _ in its]
        cols = [i for its in pairs.values() for i in its]
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))

    train, val, test = matrix("train"), matrix("val"), matrix("test")
    views = []
    for modality in meta["modalities"]:
        x = np.load(path / f"{modality}_feat.npy").astype(np.float64)
        x -= x.mean(axis=0)  # softplus features share a large mean that would swamp cosines
        views.append(x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12))
    features = np.hstack(views) / math.sqrt(len(views))
    log_pop = np.log1p(np.asarray(train.sum(axis=0)).ravel())
    col_norm = np.sqrt(np.asarray(train.sum(axis=0)).ravel()).clip(1e-12)
    normalised = train.multiply(1.0 / col_norm[None, :]).tocsr()
    item_similarity = (normalised.T @ normalised).tocsr()
    rng = np.random.default_rng(0)

    def standardise(s):
        return (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True).clip(1e-12)

    def recall(scores, seen, truth):
        scores = np.where(seen.toarray() > 0, -np.inf, scores)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits = np.take_along_axis(truth.toarray(), top, axis=1).sum(axis=1)
        n_true = np.asarray(truth.sum(axis=1)).ravel()
        return hits[n_true > 0] / n_true[n_true > 0]

    weights = (0.25, 0.5, 1.0, 2.0, 4.0)
    per_method = {}
    for start in range(0, n_users, user_chunk):
        rows = slice(start, min(n_users, start + user_chunk))
        seen = train[rows]
        profile = np.asarray(seen @ features) / np.maximum(np.asarray(seen.sum(axis=1)), 1)
        modality = standardise(profile @ features.T)
        pop = standardise(np.broadcast_to(log_pop, modality.shape))
        knn = standardise((seen @ item_similarity).toarray())
        base = {"random": rng.random(modality.shape), "popularity": pop, "item_knn": knn, "modality_knn": modality}
        for w in weights:
            base[f"popularity+modality@{w}"] = pop + w * modality
            base[f"item_knn+modality@{w}"] = knn + w * modality
        for method, scores in base.items():
            for split, truth in (("val", val[rows]), ("test", test[rows])):
                per_method.setdefault((method, split), []).append(recall(scores, seen, truth))
    mean = {key: float(np.concatenate(v).mean()) for key, v in per_method.items()}
    result = {m: mean[(m, "test")] for m in ("random", "popularity", "item_knn", "modality_knn")}
    for combo in ("popularity+modality", "item_knn+modality"):
        best = max(weights, key=lambda w: mean[(f"{combo}@{w}", "val")])
        result[combo] = mean[(f"{combo}@{best}", "test")]
        result[f"{combo} weight"] = best
    return result


# --------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", required=True, choices=sorted(SHAPES) + sorted(ALIASES),
                        help="dataset whose shape and modalities to imitate")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier for users, items and interactions")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--item_cold", type=float, default=None, metavar="FRACTION",
                        help="hold out this share of the items, with all their interactions, as cold items "
                             "(half validation, half test; docs/cold-start.md)")
    parser.add_argument("--check", action="store_true",
                        help="afterwards print Recall@20 of simple recommenders with and without the modalities")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    if args.item_cold is not None and not 0 < args.item_cold < 1:
        parser.error(f"--item_cold must lie strictly between 0 and 1, got {args.item_cold}")
    try:
        if args.item_cold is None:
            out = make_synthetic(args.like, args.out, scale=args.scale, seed=args.seed, force=args.force,
                                 verbose=not args.quiet)
        else:
            out = make_item_cold_synthetic(args.like, args.out, args.item_cold, scale=args.scale, seed=args.seed,
                                           force=args.force, verbose=not args.quiet)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print("Recall@20 on the test split:")
        for method, value in evaluate_baselines(out).items():
            print(f"{method:>28s}  {value:.4f}" if "weight" not in method else f"{method:>28s}  {value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

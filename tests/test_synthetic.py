"""Tests of the synthetic dataset generator (data/synthetic.py), on small scales."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.synthetic import SHAPES, evaluate_baselines, make_synthetic, scaled_shape

REPO = Path(__file__).resolve().parents[1]
SCALE = 0.02


def read_split(path, name):
    return {int(u): items for u, items in json.loads((path / f"{name}.json").read_text()).items()}


def read_features(path, meta):
    return {m: np.load(path / f"{m}_feat.npy") for m in meta["modalities"]}


@pytest.fixture(scope="module")
def tiktok(tmp_path_factory):
    path = make_synthetic("tiktok", tmp_path_factory.mktemp("synth") / "tiktok", scale=SCALE, verbose=False)
    return path, json.loads((path / "meta.json").read_text())


@pytest.fixture(scope="module")
def tiktok_larger(tmp_path_factory):
    """Big enough for popularity and recommendation statistics to settle."""
    path = make_synthetic("tiktok", tmp_path_factory.mktemp("synth") / "tiktok", scale=0.1, verbose=False)
    return path, json.loads((path / "meta.json").read_text())


@pytest.mark.parametrize("like", ["tiktok", "netflix", "amazon", "electronics"])
def test_shapes_and_features(like, tmp_path):
    path = make_synthetic(like, tmp_path / like, scale=SCALE, verbose=False)
    meta = json.loads((path / "meta.json").read_text())
    shape = scaled_shape(like, SCALE)
    assert (meta["n_users"], meta["n_items"]) == (shape["n_users"], shape["n_items"])
    name = "amazon" if like == "electronics" else like
    assert meta["like"] == name and meta["seed"] == 2024 and meta["scale"] == SCALE
    features = read_features(path, meta)
    assert set(features) == set(SHAPES[name]["modalities"])
    for modality, x in features.items():
        assert x.shape == (shape["n_items"], SHAPES[name]["modalities"][modality])
        assert x.dtype == np.float32
        assert np.isfinite(x).all()
        assert x.std() > 0


def test_splits_are_valid(tiktok):
    path, meta = tiktok
    n_users, n_items = meta["n_users"], meta["n_items"]
    splits = {name: read_split(path, name) for name in ("train", "val", "test")}
    assert sorted(splits["train"]) == list(range(n_users))
    for name, split in splits.items():
        assert set(split) <= set(range(n_users))
        for items in split.values():
            assert items == sorted(set(items)), f"{name}: items must be sorted and distinct"
            assert all(0 <= i < n_items for i in items)
    for user in range(n_users):
        train = set(splits["train"][user])
        val, test = set(splits["val"].get(user, [])), set(splits["test"].get(user, []))
        assert train, f"user {user} has no training items"
        assert not (train & val or train & test or val & test)
        if len(train) + len(val) + len(test) >= 3:
            assert test, f"user {user} has three or more items but none in test"
    # Loaders infer the item count from the largest id, which must therefore be in train.
    assert max(max(items) for items in splits["train"].values()) == n_items - 1


def test_interaction_count_and_split_shares(tiktok):
    path, meta = tiktok
    sizes = {name: sum(map(len, read_split(path, name).values())) for name in ("train", "val", "test")}
    total = sum(sizes.values())
    assert total == meta["n_interactions"]
    assert abs(total - scaled_shape("tiktok", SCALE)["n_interactions"]) <= 0.03 * total
    assert 0.7 < sizes["train"] / total < 0.85
    assert 0.05 < sizes["val"] / total < 0.15 and 0.05 < sizes["test"] / total < 0.15


def test_popularity_has_a_long_tail(tiktok_larger):
    path, meta = tiktok_larger
    counts = np.bincount([i for items in read_split(path, "train").values() for i in items],
                         minlength=meta["n_items"])
    top_decile = np.sort(counts)[::-1][: len(counts) // 10].sum()
    assert top_decile > 0.25 * counts.sum()  # uniform popularity would give 10%
    assert (counts <= 5).mean() > 0.08  # many items with few interactions


def test_same_seed_same_bytes(tiktok, tmp_path):
    path, _ = tiktok
    again = make_synthetic("tiktok", tmp_path / "again", scale=SCALE, verbose=False)
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (path / name).read_bytes() == (again / name).read_bytes(), name
    other = make_synthetic("tiktok", tmp_path / "other", scale=SCALE, seed=7, verbose=False)
    assert (other / "train.json").read_bytes() != (path / "train.json").read_bytes()


def test_refuses_non_empty_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        make_synthetic("tiktok", out, scale=SCALE, verbose=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_cli_exit_codes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    command = [sys.executable, "-m", "data.synthetic", "--like", "tiktok", "--scale", str(SCALE),
               "--out", str(out), "--quiet"]
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "not empty" in refused.stderr
    assert (out / "keep.txt").exists()
    forced = subprocess.run(command + ["--force"], cwd=REPO, capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert not (out / "keep.txt").exists() and (out / "train.json").exists()


def test_empty_output_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert make_synthetic("netflix", out, scale=SCALE, verbose=False) == out
    assert (out / "meta.json").exists()


def test_features_reflect_co_consumption(tiktok):
    """Items one user consumed look more alike, in every modality, than random item pairs."""
    path, meta = tiktok
    rng = np.random.default_rng(0)
    pairs = np.array([pair for items in read_split(path, "train").values()
                      for pair in itertools.combinations(items, 2)])
    random_pairs = rng.integers(0, meta["n_items"], size=pairs.shape)
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    gaps = {}
    for modality, x in read_features(path, meta).items():
        x = x - x.mean(axis=0)
        x /= np.linalg.norm(x, axis=1, keepdims=True)

        def similarity(p):
            return float(np.mean(np.sum(x[p[:, 0]] * x[p[:, 1]], axis=1)))

        gaps[modality] = similarity(pairs) - similarity(random_pairs)
    assert min(gaps.values()) > 0.003, gaps  # even the noisiest modality carries taste
    assert max(gaps.values()) > 0.015, gaps


def test_modalities_help_recommendation(tiktok_larger):
    path, _ = tiktok_larger
    recall = evaluate_baselines(path)
    assert recall["modality_knn"] > 2 * recall["random"]
    assert recall["popularity+modality"] > 1.1 * recall["popularity"]

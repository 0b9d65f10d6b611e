"""The loader on tiny datasets in both layouts, on the real Tiktok copy, and on bad input."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import main
from tinydata import REAL_TIKTOK, ROOT, split_matrix, tiny_splits, write_json_dataset
from utility.errors import DataError
from utility.load_data import load_dataset


def test_json_layout(tiny_json):
    ds = load_dataset(tiny_json)
    assert ds.layout == "json"
    assert (ds.n_users, ds.n_items) == (30, 40)
    assert ds.train.nnz + ds.val.nnz + ds.test.nnz == 30 * 8
    assert ds.modality_dims == {"image": 4, "text": 16}
    assert all(x.dtype == np.float32 for x in ds.modality_feats.values())


def test_pickle_layout_matches_json(tiny_json, tiny_pickle):
    a, b = load_dataset(tiny_json), load_dataset(tiny_pickle)
    assert b.layout == "pickle"
    for split in ("train", "val", "test"):
        assert (getattr(a, split) != getattr(b, split)).nnz == 0
    # float16 on disk, float32 in memory
    assert b.modality_feats["image"].dtype == np.float32


def test_agreeing_train_mat_is_accepted(tiny_json):
    ds = load_dataset(tiny_json)
    with open(os.path.join(tiny_json, "train_mat"), "wb") as f:
        pickle.dump(sp.dok_matrix(ds.train), f)
    load_dataset(tiny_json)


def test_duplicate_items_are_kept_once_with_a_warning(tmp_path):
    train, val, test, feats = tiny_splits()
    train["3"] = train["3"] + train["3"][:1]
    path = write_json_dataset(str(tmp_path / "d"), train, val, test, feats)
    with pytest.warns(UserWarning, match="repeated items"):
        ds = load_dataset(path)
    assert ds.train[3].nnz == len(set(train["3"]))


@pytest.mark.skipif(not os.path.isdir(REAL_TIKTOK), reason="the real Tiktok data is not present")
def test_real_tiktok_counts():
    ds = load_dataset(REAL_TIKTOK)
    assert ds.layout == "pickle"
    assert (ds.n_users, ds.n_items) == (9308, 6710)
    assert (ds.train.nnz, ds.val.nnz, ds.test.nnz) == (59541, 3051, 6130)
    assert ds.modality_dims == {"audio": 128, "image": 128}
    assert int((np.diff(ds.train.indptr) == 0).sum()) == 10


# ---- bad input: one line on stderr naming the file, exit code 2, no run folder ----

def _mutate(tmp_path, change):
    train, val, test, feats = tiny_splits()
    path = write_json_dataset(str(tmp_path / "bad"), train, val, test, feats)
    change(path, train, val, test, feats)
    return path


def _write(path, name, text):
    with open(os.path.join(path, name), "w") as f:
        f.write(text)


def _json(path, name, obj):
    _write(path, name, json.dumps(obj))


BAD_INPUTS = {
    "missing test split": (lambda p, *s: os.remove(os.path.join(p, "test.json")), "test.json", "not found"),
    "missing features": (lambda p, *s: [os.remove(os.path.join(p, f)) for f in ("image_feat.npy", "text_feat.npy")],
                         "bad", "no modality features"),
    "unparsable json": (lambda p, *s: _write(p, "val.json", '{"0": [1, 2'), "val.json", "invalid JSON"),
    "negative item id": (lambda p, tr, *s: _json(p, "train.json", {**tr, "1": [-3]}), "train.json", "negative"),
    "negative user id": (lambda p, tr, *s: _json(p, "train.json", {**tr, "-1": [3]}), "train.json", "negative"),
    "item id out of range": (lambda p, tr, *s: _json(p, "train.json", {**tr, "1": [400]}), "train.json", "out of range"),
    "user id out of range": (lambda p, tr, *s: _json(p, "train.json", {**tr, "99999": [3]}), "train.json", "out of range"),
    "feature rows": (lambda p, tr, v, te, f: np.save(os.path.join(p, "image_feat.npy"), f["image"][:-1]),
                     "image_feat.npy", "rows"),
    "nan features": (lambda p, tr, v, te, f: np.save(os.path.join(p, "text_feat.npy"),
                                                     np.where(np.eye(40, 16) > 0, np.nan, f["text"])),
                     "text_feat.npy", "NaN"),
    "inf features": (lambda p, tr, v, te, f: np.save(os.path.join(p, "image_feat.npy"), f["image"] * np.inf),
                     "image_feat.npy", "infinite"),
    "empty train": (lambda p, *s: _json(p, "train.json", {}), "train.json", "empty"),
    "overlapping splits": (lambda p, tr, v, te, f: _json(p, "test.json", {**te, "0": te["0"] + v["0"]}),
                           "test.json", "disjoint"),
    "disagreeing train_mat": (lambda p, tr, *s: pickle.dump(split_matrix({**tr, "0": tr["1"]}, 30, 40),
                                                            open(os.path.join(p, "train_mat"), "wb")),
                              "train_mat", "disagrees"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    change, file, problem = BAD_INPUTS[case]
    path = _mutate(tmp_path, change)
    runs = tmp_path / "runs"
    code = main.main(["--data_path", str(tmp_path), "--dataset", "bad", "--runs_dir", str(runs),
                      "--stage", "teacher", "--epoch", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("warning")]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert file in err[0] and problem in err[0]
    assert not runs.exists()


def test_loader_raises_data_error_directly(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(str(tmp_path / "nowhere"))


def test_command_line_error_has_no_traceback(tmp_path):
    train, val, test, feats = tiny_splits()
    path = write_json_dataset(str(tmp_path / "d"), train, val, test, feats)
    _write(path, "train.json", "[1, 2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--data_path", str(tmp_path),
                           "--dataset", "d", "--runs_dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "train.json" in proc.stderr

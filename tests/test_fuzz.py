"""Malformed datasets, flags and files: each ends with exit code 2 and one line naming the file or flag
and the problem, with no traceback and no run folder left behind. Harmless oddities are warnings."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from utility import pipeline
from tinydata import ROOT, split_matrix, tiny_splits, write_json_dataset, write_pickle_dataset


def _write(path, name, text, mode="w"):
    with open(os.path.join(path, name), mode) as f:
        f.write(text)


def _json(path, name, obj):
    _write(path, name, json.dumps(obj))


def _npy(path, name, array):
    np.save(os.path.join(path, name), array)


def _pickle(path, name, obj):
    with open(os.path.join(path, name), "wb") as f:
        pickle.dump(obj, f)


def _truncate(path, name, keep=0.5):
    file = os.path.join(path, name)
    data = open(file, "rb").read()
    open(file, "wb").write(data[: int(len(data) * keep)])


# name -> (layout, change(path, train, val, test, feats), expected file or flag, expected problem)
CASES = {
    "truncated json": ("json", lambda p, *s: _truncate(p, "train.json"), "train.json", "invalid JSON"),
    "invalid json": ("json", lambda p, *s: _write(p, "val.json", "{'0': [1]}"), "val.json", "invalid JSON"),
    "empty json file": ("json", lambda p, *s: _write(p, "test.json", ""), "test.json", "invalid JSON"),
    "json list instead of object": ("json", lambda p, *s: _json(p, "train.json", [[1, 2]]), "train.json",
                                    "expected a JSON object"),
    "user id not an integer": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "alice": [1]}),
                               "train.json", "is not an integer"),
    "item id a string": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "2": ["5"]}), "train.json",
                         "is not an integer"),
    "item id a float": ("json", lambda p, tr, v, *s: _json(p, "val.json", {**v, "2": [5.5]}), "val.json",
                        "is not an integer"),
    "item list not a list": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "2": 7}), "train.json",
                             "expected a list"),
    "negative item id": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "1": [-3]}), "train.json",
                         "negative"),
    "negative user id": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "-1": [3]}), "train.json",
                         "negative"),
    "huge item id": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "1": [10 ** 12]}), "train.json",
                     "out of range"),
    "item id beyond int64": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "1": [10 ** 30]}),
                             "train.json", "out of range"),
    "huge user id": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, str(10 ** 30): [3]}), "train.json",
                     "out of range"),
    "sparse user ids": ("json", lambda p, tr, *s: _json(p, "train.json", {**tr, "99999": [3]}), "train.json",
                        "out of range"),
    "item id past the feature rows": ("json", lambda p, tr, v, te, f: _json(p, "test.json", {**te, "3": [40]}),
                                      "test.json", "out of range"),
    "same item for a user in two splits": ("json", lambda p, tr, v, te, f: _json(p, "test.json",
                                                                                  {**te, "0": te["0"] + v["0"]}),
                                           "test.json", "disjoint"),
    "empty training split": ("json", lambda p, *s: _json(p, "train.json", {}), "train.json", "empty"),
    "missing split file": ("json", lambda p, *s: os.remove(os.path.join(p, "val.json")), "val.json", "not found"),
    "no feature files": ("json", lambda p, *s: [os.remove(os.path.join(p, f)) for f in
                                                 ("image_feat.npy", "text_feat.npy")], "bad", "no modality features"),
    "features with too few rows": ("json", lambda p, tr, v, te, f: _npy(p, "image_feat.npy", f["image"][:-1]),
                                   "image_feat.npy", "rows"),
    "features with too many rows": ("json", lambda p, tr, v, te, f: [_npy(p, n, np.vstack([x, x[:1]]))
                                                                     for n, x in (("image_feat.npy", f["image"]),
                                                                                  ("text_feat.npy", f["text"]))],
                                    "image_feat.npy", "rows"),
    "modalities disagree on rows": ("json", lambda p, tr, v, te, f: _npy(p, "text_feat.npy", f["text"][:-2]),
                                    "text_feat.npy", "rows"),
    "features 1-d": ("json", lambda p, tr, v, te, f: _npy(p, "image_feat.npy", f["image"][:, 0]),
                     "image_feat.npy", "dimensions"),
    "features 3-d": ("json", lambda p, tr, v, te, f: _npy(p, "image_feat.npy", f["image"][:, :, None]),
                     "image_feat.npy", "dimensions"),
    "features object dtype": ("json", lambda p, tr, v, te, f: np.save(os.path.join(p, "image_feat.npy"),
                                                                      f["image"].astype(object), allow_pickle=True),
                              "image_feat.npy", "object array"),
    "features string dtype": ("json", lambda p, tr, v, te, f: _npy(p, "text_feat.npy", f["text"].astype(str)),
                              "text_feat.npy", "dtype"),
    "features nan": ("json", lambda p, tr, v, te, f: _npy(p, "text_feat.npy",
                                                         np.where(np.eye(40, 16) > 0, np.nan, f["text"])),
                     "text_feat.npy", "NaN"),
    "features inf": ("json", lambda p, tr, v, te, f: _npy(p, "image_feat.npy", f["image"] * np.inf),
                     "image_feat.npy", "infinite"),
    "features truncated file": ("json", lambda p, *s: _truncate(p, "image_feat.npy", 0.6), "image_feat.npy",
                                "not a readable .npy array"),
    "features zero columns": ("json", lambda p, tr, v, te, f: _npy(p, "image_feat.npy", np.zeros((40, 0), np.float32)),
                              "image_feat.npy", "zero feature columns"),
    "disagreeing train_mat": ("json", lambda p, tr, *s: _pickle(p, "train_mat", split_matrix({**tr, "0": tr["1"]}, 30, 40)),
                              "train_mat", "disagrees"),
    "pickled matrix of the wrong shape": ("pickle", lambda p, *s: _pickle(p, "valMat.pkl", sp.coo_matrix((30, 41))),
                                          "valMat.pkl", "shape"),
    "pickled matrix vs feature rows": ("pickle", lambda p, tr, v, te, f: [_pickle(p, n, sp.coo_matrix((30, 50)))
                                                                          for n in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")],
                                       "feat.npy", "rows"),
    "pickle that is not a matrix": ("pickle", lambda p, *s: _pickle(p, "tstMat.pkl", {"a": 1}), "tstMat.pkl",
                                    "expected a pickled scipy sparse matrix"),
    "pickle of garbage bytes": ("pickle", lambda p, *s: _write(p, "trnMat.pkl", b"\x00garbage", "wb"), "trnMat.pkl",
                                "cannot be unpickled"),
}


def make_dataset(tmp_path, layout, change):
    train, val, test, feats = tiny_splits()
    if layout == "json":
        path = write_json_dataset(str(tmp_path / "bad"), train, val, test, feats)
    else:
        path = write_pickle_dataset(str(tmp_path / "bad"), train, val, test, feats, 30, 40)
    change(path, train, val, test, feats)
    return path


def run_cli(tmp_path, capsys, *extra, dataset="bad"):
    runs = tmp_path / "runs"
    code = pipeline.run_command(["--data_path", str(tmp_path), "--dataset", dataset, "--runs_dir", str(runs),
                      "--epoch", "1", "--no_plot", *extra])
    err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("warning")]
    return code, err, runs


def assert_clean_failure(code, err, runs, what, problem):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert what in err[0] and problem in err[0], err[0]
    assert not runs.exists() or not any(runs.rglob("*.json")), "a run folder was left behind"


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_dataset(case, tmp_path, capsys):
    layout, change, what, problem = CASES[case]
    make_dataset(tmp_path, layout, change)
    assert_clean_failure(*run_cli(tmp_path, capsys), what, problem)


@pytest.fixture
def good(tmp_path):
    train, val, test, feats = tiny_splits()
    return write_json_dataset(str(tmp_path / "good"), train, val, test, feats)


FLAG_CASES = {
    "epoch zero": (["--epoch", "0"], "--epoch", "at least 1"),
    "negative learning rate": (["--lr", "-1"], "--lr", "positive"),
    "selection metric K not in top-k": (["--topk", "10", "50"], "--valid_metric", "not one of --topk"),
    "unknown selection metric": (["--valid_metric", "mrr@20"], "--valid_metric", "expected NAME@K"),
    "eval every zero": (["--eval_every", "0"], "--eval_every", "at least 1"),
    "negative kNN neighbours": (["--knn_k", "-1"], "--knn_k", "must not be negative"),
    "a removed flag": (["--dropout", "0.1"], "--dropout", "was removed"),
    "list KD without negatives": (["--neg_sample_num", "0"], "--neg_sample_num", "extra negative"),
    "missing dataset folder": (["--dataset", "nowhere"], "nowhere", "dataset folder not found"),
    "student stage without a teacher": (["--stage", "student"], "--teacher_ckpt", "needs"),
    "missing teacher checkpoint": (["--teacher_ckpt", "/nonexistent/teacher.pt"], "--teacher_ckpt", "not found"),
    "results json in a missing folder": (["--results_json", "/nonexistent/dir/r.json"], "--results_json",
                                         "cannot write"),
    "resume a folder that is not a run": (["--resume", "/tmp"], "--resume", "not found"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags(case, tmp_path, capsys, good):
    extra, what, problem = FLAG_CASES[case]
    dataset = "good" if "--dataset" not in extra else extra[extra.index("--dataset") + 1]
    extra = [a for i, a in enumerate(extra) if a != "--dataset" and (i == 0 or extra[i - 1] != "--dataset")]
    assert_clean_failure(*run_cli(tmp_path, capsys, *extra, dataset=dataset), what, problem)


def test_unwritable_run_folder(tmp_path, capsys, good):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = pipeline.run_command(["--data_path", str(tmp_path), "--dataset", "good", "--runs_dir", str(blocker / "runs"),
                      "--epoch", "1", "--no_plot"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--runs_dir" in err[0] and "cannot create" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys, good):
    assert_clean_failure(*run_cli(tmp_path, capsys, "--device", "cuda", dataset="good"), "--device cuda",
                         "not available")


def test_teacher_checkpoint_from_other_data_or_config(tmp_path, capsys, good):
    code, _, runs = run_cli(tmp_path, capsys, "--stage", "teacher", dataset="good")
    assert code == 0
    ckpt = str(next(runs.rglob("teacher.pt")))
    # other data: one interaction fewer
    train, val, test, feats = tiny_splits()
    train["0"] = train["0"][:-1]
    write_json_dataset(str(tmp_path / "other"), train, val, test, feats)
    code = pipeline.run_command(["--data_path", str(tmp_path), "--dataset", "other", "--runs_dir", str(tmp_path / "r2"),
                      "--stage", "student", "--teacher_ckpt", ckpt, "--no_plot"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--teacher_ckpt" in err[0] and "other data" in err[0]
    assert not (tmp_path / "r2").exists()
    # other config
    code = pipeline.run_command(["--data_path", str(tmp_path), "--dataset", "good", "--runs_dir", str(tmp_path / "r3"),
                      "--stage", "student", "--teacher_ckpt", ckpt, "--no_prompt", "--no_plot"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_prompt" in err[0]
    # not a checkpoint at all
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code = pipeline.run_command(["--data_path", str(tmp_path), "--dataset", "good", "--runs_dir", str(tmp_path / "r4"),
                      "--stage", "student", "--teacher_ckpt", str(junk), "--no_plot"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a readable checkpoint" in err[0]


# ---- oddities that are warnings, not errors ----

def test_duplicate_items_within_a_list_are_a_warning(tmp_path, capsys):
    train, val, test, feats = tiny_splits()
    train["3"] = train["3"] + train["3"][:1]
    write_json_dataset(str(tmp_path / "dup"), train, val, test, feats)
    with pytest.warns(UserWarning, match="repeated items"):
        code = pipeline.run_command(["--data_path", str(tmp_path), "--dataset", "dup", "--runs_dir", str(tmp_path / "runs"),
                          "--stage", "teacher", "--epoch", "1", "--no_plot"])
    assert code == 0


def test_corrupted_pca_cache_is_rebuilt_with_a_warning(tmp_path, capsys, good):
    args = ["--data_path", str(tmp_path), "--dataset", "good", "--runs_dir", str(tmp_path / "runs"),
            "--stage", "teacher", "--epoch", "1", "--no_plot"]
    assert pipeline.run_command(args) == 0
    caches = sorted((tmp_path / "good" / ".cache").glob("pca_*.npy"))
    assert len(caches) == 2
    caches[0].write_bytes(b"\x93NUMPY garbage")
    assert pipeline.run_command(args) == 0
    err = capsys.readouterr().err
    assert "PCA cache" in err and "rebuilding" in err
    np.load(caches[0])   # valid again


def test_errors_print_no_traceback_from_the_command_line(tmp_path):
    make_dataset(tmp_path, "json", CASES["features object dtype"][1])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--data_path", str(tmp_path),
                           "--dataset", "bad", "--runs_dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "image_feat.npy" in lines[0]

"""The loader on tiny datasets in both layouts, on the real Tiktok copy, and on bad input."""
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from tinydata import REAL_TIKTOK, tiny_splits, write_json_dataset
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


def test_loader_raises_data_error_directly(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(str(tmp_path / "nowhere"))


def test_unfamiliar_modality_names_train_end_to_end_with_knn_graphs(tmp_path):
    import json

    from utility import pipeline
    from tinydata import tiny_splits, write_json_dataset
    train, val, test, feats = tiny_splits()
    write_json_dataset(str(tmp_path / "mine"), train, val, test, {"metadata": feats["image"], "text": feats["text"]})
    runs = tmp_path / "runs"
    assert pipeline.run_command(["--data_path", str(tmp_path), "--dataset", "mine", "--runs_dir", str(runs), "--dry_run",
                      "--embed_size", "8", "--knn_k", "3", "--no_plot"]) == 0
    (run,) = (runs / "mine").iterdir()
    results = json.loads((run / "results.json").read_text())
    assert set(results["modalities"]) == {"metadata", "text"}
    assert "item-item kNN graphs" in results["setup_seconds"]
    assert len(list((tmp_path / "mine" / ".cache").glob("knn_*.npy"))) == 2   # one neighbour list per modality

"""The serving benchmark (bench/serve.py) on tiny catalogues: what it measures and writes."""
import json

import numpy as np
import pytest

from bench import serve

try:
    import faiss
except ImportError:   # the index comparison is then not measured
    faiss = None


def test_synthetic_catalogue_has_the_asked_shape():
    train, feats = serve.synthetic_data(50, 80, 400, {"image": 6, "audio": 3}, seed=0)
    assert train.shape == (50, 80) and 300 < train.nnz <= 400 and set(train.data) == {1.0}
    assert {m: x.shape for m, x in feats.items()} == {"image": (80, 6), "audio": (80, 3)}
    counts = np.asarray(train.sum(axis=0)).ravel()
    assert counts[:8].sum() > counts[-8:].sum()   # popular items first (Zipf-like)


def test_benchmark_writes_every_model_of_both_catalogues(tiny_json, tmp_path, capsys):
    out = tmp_path / "serve.json"
    argv = ["--data_path", str(tmp_path), "--dataset", "tiny", "--items", "300", "--users", "200",
            "--interactions", "2000", "--requests", "20", "--batch", "64", "--batches", "2", "--refreshes", "1",
            "--out", str(out)]
    assert serve.main(argv + (["--faiss", "--ann_queries", "25"] if faiss else [])) == 0
    result = json.loads(out.read_text())
    rows = {(r["catalogue"], r["model"]): r for r in result["rows"]}
    assert set(rows) == {(c, m) for c in ("data", "synthetic") for m in ("teacher", "student", "student d=16")}
    assert result["catalogues"]["data"]["n_items"] == 40 and result["catalogues"]["synthetic"]["n_items"] == 300
    for (catalogue, model), r in rows.items():
        assert r["dim"] == (16 if model == "student d=16" else 64)
        assert r["serving_state_mb"] == pytest.approx((r["n_users"] + r["n_items"]) * r["dim"] * 4 / 2**20)
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["users_per_s"] > 0 and r["refresh_s"] > 0
    for catalogue in ("data", "synthetic"):   # the teacher's refresh also reads the features
        assert rows[(catalogue, "teacher")]["refresh_inputs_mb"] > rows[(catalogue, "student")]["refresh_inputs_mb"]
    if faiss is not None:
        ann = rows[("data", "student")]["ann"]
        assert ann["flat"]["overlap"] == 1.0 and 0 < ann["hnsw ef=64"]["overlap"] <= 1.0
    assert "load average" in capsys.readouterr().out

"""The size sweep runs every variant at every size and draws its picture."""
import json
import os

import numpy as np
import pytest

from scripts import pareto


@pytest.mark.slow
def test_pareto_sweep(tmp_path, tiny_json):
    out = tmp_path / "pareto.png"
    pareto.main(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                 "--runs_dir", str(tmp_path / "runs"), "--out", str(out), "--seeds", "1", "2", "--sizes", "4", "8",
                 "--epoch", "1", "--embed_size", "8", "--batch_size", "64"])
    assert out.stat().st_size > 10_000
    points = json.loads((tmp_path / "pareto.json").read_text())
    assert len(points["teacher"]) == 2
    for label in pareto.VARIANTS:
        assert sorted(points[label]) == ["4", "8"]
        for d in (4, 8):
            runs = points[label][str(d)]
            assert len(runs) == 2
            # a lightgcn student holds one d-wide row per user and per item (tiny data: 30 + 40)
            assert all(params == 70 * d for _, params, _ in runs)
    text = (tmp_path / "pareto.md").read_text()
    assert "| random init, no KD | 4 |" in text and "| teacher |" in text
    # KD against its control at each size: seeds x test users, the control as A
    for d in (4, 8):
        effect = points["KD against no KD"][str(d)]
        assert effect["n_seeds"] == 2 and effect["n_users"] == 30 and len(effect["per_seed_rel_diff"]) == 2
        kd, control = (np.mean([recall for recall, _, _ in points[label][str(d)]])
                       for label in (pareto.KD, pareto.CONTROL))
        assert effect["mean_b"] == pytest.approx(kd) and effect["mean_a"] == pytest.approx(control)
        assert f"| {d} | {control:.4f} | {kd:.4f} | " in text


def test_mean_sd():
    assert pareto.mean_sd([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert pareto.mean_sd([5.0]) == (5.0, 0.0)

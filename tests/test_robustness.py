"""scripts/robustness.py: the setting whose worst relative validation score is best comes first."""
import json
import os
import shutil

import pytest

from scripts import robustness


def test_settings_are_ranked_by_their_worst_relative_score_not_their_best():
    settings = ["", "--a", "--b"]
    scores = {  # setting "--a" wins dataset x by far but is poor on y; "" is never best and never far off
        (0, "x"): [0.90, 0.94], (0, "y"): [0.47, 0.49],
        (1, "x"): [1.00, 1.00], (1, "y"): [0.30, 0.30],
        (2, "x"): [0.50, 0.50], (2, "y"): [0.50, 0.50],
    }
    rows = robustness.summarise(settings, ["x", "y"], scores)
    assert [r["setting"] for r in rows] == ["", "--a", "--b"]
    first = rows[0]
    assert first["scores"]["x"] == pytest.approx(0.92)                      # mean over seeds
    assert first["relative"] == pytest.approx({"x": 0.92, "y": 0.96})      # over each dataset's best mean
    assert first["worst"] == pytest.approx(0.92) and first["mean_relative"] == pytest.approx(0.94)
    assert first["sd"]["x"] == pytest.approx(0.02828, abs=1e-4) and first["sd"]["y"] == pytest.approx(0.01414, abs=1e-4)
    # its worst case is its mean on x (the best on x never varies): spread the standard error 0.02828 / sqrt(2);
    # it has the best worst case whatever the seeds
    assert first["worst_dataset"] == "x" and first["worst_se"] == pytest.approx(0.02, rel=0.1)
    assert first["p_best"] == 1.0 and rows[1]["p_best"] == 0.0
    assert rows[1]["worst_dataset"] == "y" and rows[1]["worst_se"] == pytest.approx(0.0, abs=1e-12)
    assert rows[1]["worst"] == pytest.approx(0.6)                          # 0.30 / 0.50 on y
    assert rows[2]["worst"] == pytest.approx(0.5)                          # 0.50 / 1.00 on x


@pytest.mark.slow
def test_a_sweep_scores_validation_only_and_resumes(tmp_path, tiny_json, capsys):
    data = os.path.dirname(tiny_json)
    shutil.copytree(tiny_json, os.path.join(data, "tiktok"))   # a preset's name: the sweep runs without it
    argv = ["--data_path", data, "--datasets", "tiny", "tiktok", "--settings", "", "--reg 1e-3",
            "--resume_dir", str(tmp_path / "sweep"), "--epoch", "1", "--embed_size", "8",
            "--batch_size", "64"]
    assert robustness.main(argv) == 0
    runs = sorted(p for p in os.listdir(tmp_path / "sweep") if p.endswith(".json") and p.startswith("s"))
    assert runs == ["s0-tiktok-seed1.json", "s0-tiny-seed1.json", "s1-tiktok-seed1.json", "s1-tiny-seed1.json"]
    with open(tmp_path / "sweep" / "s1-tiktok-seed1.json") as f:
        results = json.load(f)
    assert results["student"]["val"]["recall@20"] > 0
    assert results["student"]["test"] is None and results["teacher"]["test"] is None    # never evaluated
    with open(tmp_path / "sweep" / "robustness.json") as f:
        table = json.load(f)
    assert {r["setting"] for r in table["rows"]} == {"", "--reg 1e-3"}
    for dataset in ("tiny", "tiktok"):
        assert max(r["relative"][dataset] for r in table["rows"]) == 1.0
    mtime = os.path.getmtime(tmp_path / "sweep" / "s0-tiny-seed1.json")
    assert robustness.main(argv) == 0                       # resumed: nothing runs again
    assert os.path.getmtime(tmp_path / "sweep" / "s0-tiny-seed1.json") == mtime
    printed = capsys.readouterr().out
    assert "| defaults |" in printed and "| p best |" in printed


def test_flags_the_script_sets_are_refused(capsys):
    with pytest.raises(SystemExit, match="--seed is set by this script"):
        robustness.main(["--datasets", "x", "--settings", "", "--seed", "3"])

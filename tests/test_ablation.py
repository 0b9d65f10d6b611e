"""The ablation script runs every variant for every seed and writes its table."""
import json
import os

import numpy as np
import pytest

from scripts import ablation
from utility.stats import paired_test


def test_the_one_factor_rows_replace_the_student_without_kd():
    flags = dict(ablation.VARIANTS)
    assert flags["copy only"] == ["--no_kd"]
    assert flags["KD only"] == ["--student_init", "random"]
    assert flags["neither"] == ["--student_init", "random", "--no_kd"]
    assert "student without KD" not in flags and ablation.VARIANTS[0] == (ablation.FULL, [])


def test_seeds_and_seed_together_are_refused(tmp_path, tiny_json, capsys):
    code = ablation.main(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                          "--runs_dir", str(tmp_path / "runs"), "--seeds", "1", "2", "--seed", "3"])
    assert code != 0 and "either --seeds or --seed" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_table_over_two_seeds(tmp_path, tiny_json):
    out = tmp_path / "ablation.md"
    code = ablation.main(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                          "--runs_dir", str(tmp_path / "runs"), "--out", str(out), "--seeds", "1", "2",
                          "--epoch", "1", "--student_epoch", "1", "--embed_size", "8", "--batch_size", "64"])
    assert code == 0
    text = out.read_text()
    lines = text.splitlines()
    assert "teacher retrained per seed" in lines[0] and "seeds 1, 2: mean ± sd over seeds" in lines[0]
    assert "| p (Recall@20 vs full) |" in text
    for label, _ in ablation.VARIANTS:
        assert f"| {label} |" in text
    for label in ("copy only", "KD only", "neither"):
        assert f"| {label} | `{' '.join(dict(ablation.VARIANTS)[label])}` |" in text
    assert "| teacher |" in text and "| teacher (no prompt) |" in text
    full_row = next(line for line in lines if line.startswith(f"| {ablation.FULL} |"))
    assert full_row.split(" | ")[5] == "–" and "±" in full_row   # no p-value against itself

    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["seeds"] == [1, 2] and report["teacher"]["shared"] is False
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == [label for label, _ in ablation.VARIANTS]
    assert rows[ablation.FULL]["p_vs_full"]["p"] == 1.0
    for r in rows.values():
        assert r["flags"] == " ".join(dict(ablation.VARIANTS)[r["variant"]])
        assert [run["seed"] for run in r["runs"]] == [1, 2]
        values = [run["test"]["recall@20"] for run in r["runs"]]
        assert r["test"]["recall@20"]["values"] == values
        assert r["test"]["recall@20"]["mean"] == pytest.approx(np.mean(values))
        assert r["test"]["recall@20"]["sd"] == pytest.approx(np.std(values, ddof=1))
        assert 0 <= r["p_vs_full"]["p"] <= 1 and r["p_vs_full"]["n"] == 2 * 30
        assert not any(run["teacher_trained"] for run in r["runs"])

    # per seed, one teacher for every variant but w/o prompt, which distils its own; retrained per seed
    for i in range(2):
        ckpts = {label: r["runs"][i]["teacher_ckpt"] for label, r in rows.items()}
        assert len({c for label, c in ckpts.items() if label != "w/o prompt"}) == 1
        assert ckpts["w/o prompt"] != ckpts[ablation.FULL]
        assert all(os.path.isfile(c) for c in ckpts.values())
    assert rows[ablation.FULL]["runs"][0]["teacher_ckpt"] != rows[ablation.FULL]["runs"][1]["teacher_ckpt"]

    # the p-value is the pooled paired test of per-user Recall@20 over both seeds
    def per_user(label):
        return np.concatenate([np.load(os.path.join(run["run_dir"], "student_test_per_user.npz"))["recall@20"]
                               for run in rows[label]["runs"]])
    assert rows["neither"]["p_vs_full"]["p"] == pytest.approx(paired_test(per_user(ablation.FULL),
                                                                          per_user("neither"))["p"])

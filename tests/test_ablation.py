"""The ablation script runs every variant for every seed and writes its table."""
import json
import os

import numpy as np
import pytest

from scripts import ablation
from utility.stats import two_way_comparison


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
                          "--epoch", "1", "--embed_size", "8", "--batch_size", "64"])
    assert code == 0
    text = out.read_text()
    lines = text.splitlines()
    assert "teacher retrained per seed" in lines[0] and "seeds 1, 2: mean ± sd over seeds" in lines[0]
    assert "| Recall@20 vs full (%) | 95 % interval | same sign |" in text and "pooled" not in text
    for label, _ in ablation.VARIANTS:
        assert f"| {label} |" in text
    for label in ("copy only", "KD only", "neither"):
        assert f"| {label} | `{' '.join(dict(ablation.VARIANTS)[label])}` |" in text
    assert "| teacher |" in text and "| teacher (no prompt) |" in text
    full_row = next(line for line in lines if line.startswith(f"| {ablation.FULL} |"))
    assert full_row.split(" | ")[5:8] == ["–"] * 3 and "±" in full_row   # not compared with itself

    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["seeds"] == [1, 2] and report["teacher"]["shared"] is False
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == [label for label, _ in ablation.VARIANTS]
    assert rows[ablation.FULL]["vs_full"]["rel_diff"] == 0.0
    for r in rows.values():
        assert r["flags"] == " ".join(dict(ablation.VARIANTS)[r["variant"]])
        assert [run["seed"] for run in r["runs"]] == [1, 2]
        values = [run["test"]["recall@20"] for run in r["runs"]]
        assert r["test"]["recall@20"]["values"] == values
        assert r["test"]["recall@20"]["mean"] == pytest.approx(np.mean(values))
        assert r["test"]["recall@20"]["sd"] == pytest.approx(np.std(values, ddof=1))
        assert r["vs_full"]["n_seeds"] == 2 and r["vs_full"]["n_users"] == 30
        assert not any(run["teacher_trained"] for run in r["runs"])

    # per seed, one teacher for every variant but w/o prompt, which distils its own; retrained per seed
    for i in range(2):
        ckpts = {label: r["runs"][i]["teacher_ckpt"] for label, r in rows.items()}
        assert len({c for label, c in ckpts.items() if label != "w/o prompt"}) == 1
        assert ckpts["w/o prompt"] != ckpts[ablation.FULL]
        assert all(os.path.isfile(c) for c in ckpts.values())
    assert rows[ablation.FULL]["runs"][0]["teacher_ckpt"] != rows[ablation.FULL]["runs"][1]["teacher_ckpt"]

    # against the full model: the two-way bootstrap of per-user Recall@20, seeds x users, the full model as A
    def per_user(label):
        return np.stack([np.load(os.path.join(run["run_dir"], "student_test_per_user.npz"))["recall@20"]
                         for run in rows[label]["runs"]])
    expected = two_way_comparison(per_user(ablation.FULL), per_user("neither"))
    vs = rows["neither"]["vs_full"]
    assert vs["rel_diff"] == pytest.approx(expected["rel_diff"]) and vs["interval"] == pytest.approx(
        list(expected["interval"]))
    neither_row = next(line for line in lines if line.startswith("| neither |"))
    assert f"| {vs['rel_diff']:+.2f} | [{vs['interval'][0]:+.2f}, {vs['interval'][1]:+.2f}] | " in neither_row

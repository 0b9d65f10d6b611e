"""scripts/seeds.py: mean ± sd over seeds and paired Wilcoxon tests between two configurations."""
import json
import os

import numpy as np
import pytest

from scripts import seeds
from utility.stats import paired_test

TINY_FLAGS = ["--epoch", "1", "--student_epoch", "1", "--embed_size", "8", "--batch_size", "64"]


def data_flags(tmp_path, data):
    return ["--data_path", os.path.dirname(data), "--dataset", os.path.basename(data),
            "--runs_dir", str(tmp_path / "runs")]


def test_flag_helpers():
    assert seeds.glue_compare(["--seeds", "1", "--compare", "--no_kd --student_init random", "--epoch", "1"]) == \
        ["--seeds", "1", "--compare=--no_kd --student_init random", "--epoch", "1"]
    args, rest = seeds.build_parser().parse_known_args(seeds.glue_compare(["--seeds", "1", "2", "--compare",
                                                                           "--no_kd", "--epoch", "3"]))
    assert args.seeds == [1, 2] and args.compare == "--no_kd" and rest == ["--epoch", "3"]
    assert seeds.flag_value(["--teacher_ckpt", "a.pt", "--x"], "--teacher_ckpt") == "a.pt"
    assert seeds.flag_value(["--teacher_ckpt=b.pt"], "--teacher_ckpt") == "b.pt"
    assert seeds.teacher_mode(["--teacher_ckpt", "a.pt"], share_teacher=True) == "fixed"
    assert seeds.teacher_mode([], share_teacher=True) == "shared"
    assert seeds.teacher_mode([], share_teacher=False) == "per_seed"
    assert "repeated" in seeds.check_flags([1, 1], [], [])
    assert "--seeds" in seeds.check_flags([1], ["--seed", "3"], [])
    assert "--stage" in seeds.check_flags([1], [], ["--stage", "teacher"])
    assert "--teacher_ckpt" in seeds.check_flags([1], [], ["--teacher_ckpt", "a.pt"])
    assert seeds.check_flags([1, 2], ["--epoch", "1"], ["--no_kd"]) is None


def test_flags_main_py_rejects_fail_before_any_run(tmp_path, tiny_json, capsys):
    code = seeds.main(["--seeds", "1"] + data_flags(tmp_path, tiny_json) + ["--compare", "--no_such_flag"])
    assert code != 0
    assert "seeds: config B: main.py rejects its flags" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert seeds.main(["--seeds", "1", "--seed", "2"] + data_flags(tmp_path, tiny_json)) != 0


def test_a_failing_run_exits_non_zero_with_one_line(tmp_path, tiny_json, capsys):
    code = seeds.main(["--seeds", "1"] + data_flags(tmp_path, tiny_json) + TINY_FLAGS
                      + ["--teacher_ckpt", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("seeds: main.py ") and "failed with exit code" in err[-1]


def test_two_seeds_compared_with_a_shared_teacher(tmp_path, tiny_json, capsys):
    out = tmp_path / "seeds.md"
    code = seeds.main(["--seeds", "1", "2", "--compare", "--no_kd", "--share_teacher", "--out", str(out)]
                      + data_flags(tmp_path, tiny_json) + TINY_FLAGS)
    assert code == 0
    printed = capsys.readouterr().out
    for seed in (1, 2):
        assert f"seeds: seed {seed}, teacher for every configuration: " in printed
        for label in ("A", "B"):
            assert f"seeds: seed {seed}, config {label}: " in printed
    report = json.loads((tmp_path / "seeds.json").read_text())
    text = out.read_text()

    assert report["teacher"]["mode"] == "shared" and report["teacher"]["shared"] is True
    assert report["teacher"]["description"] == "teacher retrained per seed and shared by both configurations"
    assert report["teacher"]["description"] in text.splitlines()[0]
    assert report["seeds"] == [1, 2]
    configs = report["configs"]
    assert set(configs) == {"A", "B"}
    assert configs["A"]["flags"] == TINY_FLAGS and configs["B"]["flags"] == TINY_FLAGS + ["--no_kd"]
    for label, c in configs.items():
        assert [r["seed"] for r in c["runs"]] == [1, 2]
        for key, _, _ in seeds.QUANTITIES:
            s = c["summary"][key]
            values = [r["values"][key] for r in c["runs"]]
            assert s["values"] == values and len(values) == 2
            assert s["mean"] == pytest.approx(np.mean(values))
            assert s["sd"] == pytest.approx(np.std(values, ddof=1))
        assert f"| {label} | " in text

    # per seed, both configurations distilled the same teacher, trained for that seed
    ckpts = [[r["teacher_ckpt"] for r in configs[label]["runs"]] for label in ("A", "B")]
    assert ckpts[0] == ckpts[1] and ckpts[0][0] != ckpts[0][1]
    assert all(os.path.isfile(c) for c in ckpts[0])
    # each student run loaded that teacher rather than training one
    for r in configs["A"]["runs"] + configs["B"]["runs"]:
        with open(os.path.join(r["run_dir"], "results.json")) as f:
            results = json.load(f)
        assert "teacher_history" not in results and "student" in results

    # the teacher is shared, so only the student is tested; pooled over the (user, seed) pairs
    tests = report["paired_tests"]
    assert tests["models"] == ["student"] and "concatenated into one paired sample" in tests["note"]
    rows = tests["rows"]
    assert {r["model"] for r in rows} == {"student"}
    n_users = len(np.load(os.path.join(configs["A"]["runs"][0]["run_dir"], "student_test_per_user.npz"))["users"])
    assert n_users == 30
    for metric in seeds.METRICS:
        by_seed = {r["seed"]: r for r in rows if r["metric"] == metric}
        assert set(by_seed) == {1, 2, "pooled"}
        assert by_seed[1]["n"] == by_seed[2]["n"] == n_users and by_seed["pooled"]["n"] == 2 * n_users
        per_user = {label: [np.load(os.path.join(r["run_dir"], "student_test_per_user.npz"))[metric]
                            for r in configs[label]["runs"]] for label in ("A", "B")}
        pooled = paired_test(np.concatenate(per_user["A"]), np.concatenate(per_user["B"]))
        assert by_seed["pooled"]["p"] == pytest.approx(pooled["p"])
        assert by_seed["pooled"]["mean_diff"] == pytest.approx(
            configs["B"]["summary"][f"student_test_{metric}"]["mean"]
            - configs["A"]["summary"][f"student_test_{metric}"]["mean"])
        assert 0 <= by_seed["pooled"]["p"] <= 1
    assert "| student | pooled | 60 | recall@20 |" in text

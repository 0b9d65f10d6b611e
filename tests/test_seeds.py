"""scripts/seeds.py: mean ± sd over seeds and two configurations compared over seeds and test users."""
import json
import os

import numpy as np
import pytest

from scripts import seeds
from utility.stats import two_way_comparison

TINY_FLAGS = ["--epoch", "1", "--embed_size", "8", "--batch_size", "64"]


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

    # the teacher is shared, so only the student is compared: seeds x users, per metric
    comparison = report["comparison"]
    assert comparison["models"] == ["student"] and "only the student is compared" in comparison["note"]
    rows = comparison["rows"]
    assert [(r["model"], r["metric"]) for r in rows] == [("student", m) for m in seeds.METRICS]
    for r in rows:
        per_user = {label: np.stack([np.load(os.path.join(run["run_dir"], "student_test_per_user.npz"))[r["metric"]]
                                     for run in configs[label]["runs"]]) for label in ("A", "B")}
        assert per_user["A"].shape == (2, 30) and r["n_seeds"] == 2 and r["n_users"] == 30
        expected = two_way_comparison(per_user["A"], per_user["B"])
        assert r["rel_diff"] == pytest.approx(expected["rel_diff"]) and r["verdict"] == expected["verdict"]
        assert r["interval"] == pytest.approx(list(expected["interval"]))
        summary = {label: configs[label]["summary"][f"student_test_{r['metric']}"] for label in ("A", "B")}
        assert r["mean_b"] - r["mean_a"] == pytest.approx(summary["B"]["mean"] - summary["A"]["mean"])
        # each seed's difference is that seed's B − A of the run's own test metric, in % of A
        assert r["per_seed_rel_diff"] == pytest.approx(
            [100 * (b - a) / a for a, b in zip(summary["A"]["values"], summary["B"]["values"])])
        assert r["sign_agreement"] in (0, 1, 2)
        line = next(line for line in text.splitlines() if line.startswith(f"| student | {r['metric']} | 2 | 30 |"))
        assert r["verdict"] in line and f"{r['sign_agreement']} of 2" in line
    assert "pooled" not in text and "Wilcoxon" not in text


def test_configs_compared_on_the_users_every_seed_evaluated():
    users = np.arange(6)
    per_user = {"A": {}, "B": {}}
    rng = np.random.default_rng(0)
    for seed, kept in ((1, users), (2, users[[0, 2, 3, 5, 4]])):   # seed 2 sampled five users, in another order
        for label in ("A", "B"):
            per_user[label][seed] = {"student": {"users": kept, **{m: rng.random(kept.size) + 0.5
                                                                   for m in seeds.METRICS}}}
    rows = seeds.compare_configs(per_user, [1, 2], ["student"])
    assert rows[0]["n_seeds"] == 2 and rows[0]["n_users"] == 5
    a, b = seeds.seeds_by_users([per_user["A"][s]["student"] for s in (1, 2)],
                                [per_user["B"][s]["student"] for s in (1, 2)], "recall@20")
    assert a[1].tolist() == per_user["A"][2]["student"]["recall@20"][[0, 1, 2, 4, 3]].tolist()   # users 0 2 3 4 5
    assert a[0].tolist() == per_user["A"][1]["student"]["recall@20"][[0, 2, 3, 4, 5]].tolist()
    per_user["B"][2]["student"]["users"] = users[:5]
    with pytest.raises(seeds.RunFailed, match="seed 2: the student's test users differ between A and B"):
        seeds.compare_configs(per_user, [1, 2], ["student"])

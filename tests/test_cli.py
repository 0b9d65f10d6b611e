"""The command line as a user types it."""
import glob
import json
import os
import subprocess
import sys

import pytest

from tinydata import ROOT


@pytest.mark.slow
def test_dry_run_of_the_default_command(tmp_path):
    """`python main.py --dry_run`: the default movielens data (built on first use), one short epoch per stage."""
    proc = subprocess.run([sys.executable, "main.py", "--dry_run", "--no_plot", "--runs_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = glob.glob(os.path.join(str(tmp_path), "movielens", "*"))
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    for stage in ("teacher", "student"):
        assert results[stage]["epochs_run"] == 1 and results[stage]["best_epoch"] == 1
    assert "MostPopular" in proc.stdout and "student (lightgcn)" in proc.stdout


def test_deprecated_verbose_still_sets_eval_every():
    from utility.parser import parse_args
    with pytest.warns(FutureWarning, match="--eval_every"):
        args = parse_args(["--verbose", "3"])
    assert args.eval_every == 3
    assert parse_args(["--eval_every", "4"]).eval_every == 4


def _config(tmp_path, data):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_config_file_overrides_the_preset_and_the_command_line_overrides_it(tmp_path):
    from utility.parser import parse_args
    path = _config(tmp_path, {"lr": 0.02, "kd_list_weight": 0.3, "no_prompt": True, "topk": [10, 20], "dataset": "x"})
    args = parse_args(["--dataset", "movielens", "--config", path])   # movielens preset: lr 5e-3, kd_list 0.1
    assert (args.lr, args.kd_list_weight, args.no_prompt, args.topk) == (0.02, 0.3, True, [10, 20])
    assert args.dataset == "movielens"   # given on the command line
    args = parse_args(["--dataset", "movielens", "--config", path, "--lr", "0.1"])
    assert args.lr == 0.1 and args.kd_list_weight == 0.3


@pytest.mark.parametrize("data, problem", [
    ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ({"lr": "fast"}, "lr = \"fast\": expected a number"),
    ({"epoch": 2.5}, "epoch = 2.5: expected an integer"),
    ({"no_prompt": 1}, "no_prompt = 1: expected true or false"),
    ({"student_model_type": "gnn"}, "expected one of mlp, lightgcn"),
    ({"topk": 20}, "topk = 20: expected a non-empty list"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_config_file_is_a_one_line_error(tmp_path, capsys, data, problem):
    from utility import pipeline
    code = pipeline.run_command(["--config", _config(tmp_path, data), "--runs_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --config ") and problem in err[0], err
    assert not (tmp_path / "runs").exists()


def test_unreadable_config_file(tmp_path, capsys):
    from utility import pipeline
    (tmp_path / "bad.json").write_text("{not json")
    assert pipeline.run_command(["--config", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert pipeline.run_command(["--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_representation_kd_is_on_by_default_for_random_initialisation_only():
    from utility.parser import parse_args
    assert parse_args([]).kd_de_weight == 0.0
    assert parse_args(["--student_init", "random"]).kd_de_weight == 1.0
    assert parse_args(["--student_init", "random", "--kd_de_weight", "0.3"]).kd_de_weight == 0.3
    assert parse_args(["--kd_de_weight", "2"]).kd_de_weight == 2.0


def test_preset_none_gives_a_published_dataset_the_plain_defaults():
    from utility.parser import PRESETS, parse_args
    preset = parse_args(["--dataset", "tiktok"])
    plain = parse_args(["--dataset", "tiktok", "--preset", "none"])
    assert preset.preset == "tiktok" and plain.preset is None
    assert preset.lr == PRESETS["tiktok"]["lr"] and plain.lr == parse_args(["--dataset", "mine"]).lr != preset.lr
    assert parse_args(["--dataset", "mine", "--preset", "tiktok"]).lr == PRESETS["tiktok"]["lr"]

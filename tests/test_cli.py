"""The command line as a user types it."""
import glob
import json
import os
import subprocess
import sys

import pytest

from utility import pipeline

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


def test_a_removed_flag_is_a_one_line_error_naming_its_replacement(tmp_path, capsys):
    from utility.parser import REMOVED_FLAGS
    assert pipeline.run_command(["--verbose", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--verbose" in err and "was removed" in err and "--eval_every" in err
    assert pipeline.run_command(["--student_epoch=5"]) == 2
    assert "use --epoch" in capsys.readouterr().err
    assert pipeline.run_command(["--config", _config(tmp_path, {"kd_rank_weight": 1.0})]) == 2
    err = capsys.readouterr().err
    assert "--kd_rank_weight" in err and "best.json" in err and "was removed" in err
    assert pipeline.run_command(["--dataset", "some_dataset_with_knn_on_in_its_name", "--no_test", "--epoch", "0"]) == 2
    assert "was removed" not in capsys.readouterr().err            # values are not flags
    assert all(flag.startswith("--") and reason for flag, reason in REMOVED_FLAGS.items())


def test_help_lists_at_most_fifty_flags():
    from utility.parser import build_parser
    flags = [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(flags) <= 50


def test_config_dataclasses_and_flags_share_their_defaults():
    """With no flag and no preset, each config built from the flags is its dataclass's default."""
    from utility.config import KDConfig, StudentConfig, TeacherConfig, TrainConfig, flag_defaults
    from utility.parser import build_parser, parse_args
    args = parse_args(["--dataset", "mine"])
    assert TeacherConfig.from_args(args) == TeacherConfig()
    assert StudentConfig.from_args(args, TeacherConfig()) == StudentConfig()
    assert TrainConfig.from_args(args, "teacher") == TrainConfig()
    assert TrainConfig.from_args(args, "student") == TrainConfig()
    kd = KDConfig.from_args(args)
    assert kd == KDConfig(de_weight=0.0) and KDConfig().de_weight is None   # None: follows --student_init
    parser_defaults = {a.dest: a.default for a in build_parser()._actions}
    for flag, default in flag_defaults().items():
        assert parser_defaults[flag] == default, flag
    assert StudentConfig.from_args(parse_args(["--embed_size", "32"]), TeacherConfig(embed_size=32)).embed_size == 32


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
    ({"student_init": "gnn"}, "expected one of teacher, random"),
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
    from utility.config import KDConfig
    from utility.parser import parse_args
    assert KDConfig.from_args(parse_args([])).de_weight == 0.0
    assert KDConfig.from_args(parse_args(["--student_init", "random"])).de_weight == 1.0
    assert KDConfig.from_args(parse_args(["--student_init", "random", "--kd_de_weight", "0.3"])).de_weight == 0.3
    assert KDConfig.from_args(parse_args(["--kd_de_weight", "2"])).de_weight == 2.0
    assert KDConfig.from_args(parse_args(["--kd_de_weight", "2", "--no_kd"])).de_weight == 0.0


def test_preset_none_gives_a_published_dataset_the_plain_defaults():
    from utility.parser import PRESETS, parse_args
    preset = parse_args(["--dataset", "tiktok"])
    plain = parse_args(["--dataset", "tiktok", "--preset", "none"])
    assert preset.preset == "tiktok" and plain.preset is None
    assert preset.lr == PRESETS["tiktok"]["lr"] and plain.lr == parse_args(["--dataset", "mine"]).lr != preset.lr
    assert parse_args(["--dataset", "mine", "--preset", "tiktok"]).lr == PRESETS["tiktok"]["lr"]

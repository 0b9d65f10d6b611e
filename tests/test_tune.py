"""scripts/tune.py: a seeded, resumable, validation-only search whose best flags main.py reads back."""
import json
import os
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from scripts import tune  # noqa: E402
from utility.parser import parse_args  # noqa: E402


def test_search_space_names_main_flags_and_the_untuned_start_is_clipped_into_it():
    trial = optuna.trial.FixedTrial({"lr": 1e-3, "reg": 1e-4, "cf_layers": 2, "mm_layers": 1,
                                     "mm_fusion_weight": 0.5, "feat_prompt_weight": 0.1, "emb_prompt_weight": 0.1,
                                     "mm_loss_weight": 0.1, "prompt_loss_weight": 0.1})
    values = tune.suggest(trial, tune.TEACHER_SPACE)
    assert set(values) == set(tune.TEACHER_SPACE) and isinstance(values["cf_layers"], int)
    args = parse_args(["--cf_layers", "7", "--lr", "0.5"])
    start = tune.untuned(args, tune.TEACHER_SPACE)     # clipped into the space
    assert start["cf_layers"] == 3 and start["lr"] == 3e-2 and start["reg"] == args.reg
    for flag in list(tune.TEACHER_SPACE) + list(tune.STUDENT_SPACE):
        assert hasattr(args, flag), flag      # every searched name is a main.py flag


@pytest.mark.slow
def test_tune_writes_best_flags_never_tests_and_resumes(tmp_path, tiny_json, capsys):
    out = tmp_path / "best.json"
    flags = ["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
             "--runs_dir", str(tmp_path / "runs"), "--epoch", "2", "--batch_size", "64",
             "--embed_size", "8", "--threads", "1"]
    assert tune.main(["--timeout", "600", "--trials", "2", "--out", str(out)] + flags) == 0
    best = json.loads(out.read_text())
    assert set(best) == set(tune.TEACHER_SPACE) | set(tune.STUDENT_SPACE)
    args = parse_args(flags + ["--config", str(out)])      # main.py reads the file back
    assert args.lr == best["lr"] and args.kd_list_weight == best["kd_list_weight"]
    (folder,) = (tmp_path / "runs" / os.path.basename(tiny_json)).glob("tune-*")
    printed = capsys.readouterr().out
    assert printed.count("teacher trial") == 2 and printed.count("student trial") == 2
    # the test split is never evaluated: no per-user test metrics, no test numbers
    assert not list(folder.rglob("*_test_per_user.npz"))
    for results in folder.rglob("results.json"):
        r = json.loads(results.read_text())
        assert all(r[s]["test"] is None for s in ("teacher", "student") if s in r)
    # trial 0 of each stage is the untuned configuration
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{folder / 'study.db'}")
    assert study.trials[0].params["lr"] == pytest.approx(parse_args(flags).lr)
    # resuming adds trials to the same studies
    assert tune.main(["--timeout", "600", "--trials", "1", "--out", str(out), "--resume_dir", str(folder)] + flags) == 0
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{folder / 'study.db'}")
    assert len(study.trials) == 3


@pytest.mark.slow
def test_parallel_trials_run_the_untuned_start_once(tmp_path, tiny_json, capsys):
    """With --n_jobs 2 the queued untuned trial is claimed by one worker only: every trial has its
    own run folder, and the study's trials are all complete (a trial run twice fails when reported)."""
    flags = ["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
             "--runs_dir", str(tmp_path / "runs"), "--epoch", "1", "--batch_size", "64",
             "--embed_size", "8", "--threads", "1"]
    out = tmp_path / "best.json"
    assert tune.main(["--timeout", "600", "--trials", "3", "--n_jobs", "2", "--out", str(out)] + flags) == 0
    (folder,) = (tmp_path / "runs" / os.path.basename(tiny_json)).glob("tune-*")
    for stage in ("teacher", "student"):
        study = optuna.load_study(study_name=stage, storage=f"sqlite:///{folder / 'study.db'}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
        assert len({t.user_attrs["run_dir"] for t in study.trials}) == 3
    assert len(list((folder / "trials").rglob("results.json"))) == 6   # no trial ran twice
    for stage in ("teacher", "student"):   # the untuned trial ran alone, with both workers' threads
        study = optuna.load_study(study_name=stage, storage=f"sqlite:///{folder / 'study.db'}")
        configs = [os.path.join(t.user_attrs["run_dir"], "config.json") for t in study.trials]
        threads = [json.loads(Path(c).read_text())["threads"] for c in configs]
        assert threads == [2, 1, 1]

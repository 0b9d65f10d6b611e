"""The stage loop's selection and stopping rules."""
import json
import os

import pytest

from utility import pipeline
from utility.training import EarlyStopping


def test_early_stopping_keeps_the_first_best_and_counts_evaluations_without_improvement():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.1, 1) and stopper.update(0.2, 2)
    assert not stopper.update(0.2, 3)            # a tie is no improvement: the earlier epoch stays
    assert not stopper.should_stop
    assert not stopper.update(0.15, 4)
    assert stopper.should_stop and (stopper.best_epoch, stopper.best_score) == (2, 0.2)
    again = EarlyStopping(patience=2)
    again.load_state_dict(stopper.state_dict())
    assert again.should_stop and again.best_epoch == 2


@pytest.mark.parametrize("eval_every", [1, 2])
def test_a_stage_stops_patience_evaluations_after_its_best(tmp_path, tiny_json, eval_every):
    runs = tmp_path / "runs"
    code = pipeline.run_command(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                      "--runs_dir", str(runs), "--stage", "teacher", "--epoch", "60", "--batch_size", "64",
                      "--embed_size", "8", "--lr", "0.05", "--early_stopping_patience", "3",
                      "--eval_every", str(eval_every), "--no_plot"])
    assert code == 0
    (folder,) = (runs / os.path.basename(tiny_json)).iterdir()
    results = json.loads((folder / "results.json").read_text())
    teacher = results["teacher"]
    assert teacher["epochs_run"] < 60, "the planted run should stop early"
    assert teacher["epochs_run"] == teacher["best_epoch"] + 3 * eval_every
    evaluated = [h["val"]["recall@20"] for h in results["teacher_history"] if "val" in h]
    assert max(evaluated[-3:]) <= max(evaluated[:-3])


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing of the run's own handling runs after it."""


def _numbers(folder):
    r = json.loads((folder / "results.json").read_text())
    return {s: (r[s]["val"], r[s]["test"], r[s]["best_epoch"], [h["terms"] for h in r[f"{s}_history"]])
            for s in ("teacher", "student")}


def test_a_kill_between_the_two_end_of_epoch_writes_still_resumes_exactly(tmp_path, tiny_json, monkeypatch):
    """The end of an improving epoch writes <stage>.pt and checkpoint.pt; a kill after the first of
    the two must not pair a checkpoint with best weights of another epoch."""
    import utility.training as training
    flags = ["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json), "--epoch", "4",
             "--batch_size", "64", "--embed_size", "8", "--no_plot",
             "--student_init", "random", "--student_lr", "0.01"]
    assert pipeline.run_command(flags + ["--runs_dir", str(tmp_path / "straight")]) == 0
    (straight,) = (tmp_path / "straight" / os.path.basename(tiny_json)).iterdir()
    best = json.loads((straight / "results.json").read_text())["student"]["best_epoch"]
    assert best > 1, "the planted run should select a later student epoch"

    real_save = training.save_checkpoint

    def save_then_die(obj, path):
        real_save(obj, path)
        if obj["stage"] == "student" and obj["epoch"] == best:   # the end of the selected epoch
            raise _Killed()

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        pipeline.run_command(flags + ["--runs_dir", str(tmp_path / "killed")])
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    (killed,) = (tmp_path / "killed" / os.path.basename(tiny_json)).iterdir()
    assert pipeline.run_command(["--resume", str(killed)]) == 0
    assert _numbers(killed) == _numbers(straight)


def test_student_patience_and_batch_size_are_the_second_stage_own(tmp_path, tiny_json):
    runs = tmp_path / "runs"
    code = pipeline.run_command(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                      "--runs_dir", str(runs), "--epoch", "60", "--batch_size", "4096",
                      "--student_batch_size", "64", "--embed_size", "8", "--student_init", "random",
                      "--early_stopping_patience", "50", "--student_patience", "2", "--no_plot",
                      "--eval_users", "20"])
    assert code == 0
    (folder,) = (runs / os.path.basename(tiny_json)).iterdir()
    results = json.loads((folder / "results.json").read_text())
    student = results["student"]
    assert student["epochs_run"] == student["best_epoch"] + 2 < 60
    config = json.loads((folder / "config.json").read_text())
    assert (config["student_batch_size"], config["batch_size"]) == (64, 4096)
    assert results["eval_users"]["val"] == 20 < results["eval_users"]["val_total"]
    assert "evaluation on a fixed random sample (--eval_users 20" in (folder / "log.txt").read_text()


def test_train_config_of_each_stage_reads_its_own_flags():
    from utility.config import TrainConfig
    from utility.parser import parse_args
    args = parse_args(["--batch_size", "300", "--student_batch_size", "70", "--early_stopping_patience", "9",
                       "--student_patience", "4", "--lr", "0.5", "--student_lr", "0.25"])
    teacher, student = TrainConfig.from_args(args, "teacher"), TrainConfig.from_args(args, "student")
    assert (teacher.batch_size, teacher.patience, teacher.lr) == (300, 9, 0.5)
    assert (student.batch_size, student.patience, student.lr) == (70, 4, 0.25)
    args = parse_args(["--batch_size", "300", "--early_stopping_patience", "9"])   # unset: the teacher's values
    assert (args.student_batch_size, args.student_patience) == (300, 9)


def test_timed_serving_request_keeps_its_scores_within_the_budget():
    assert pipeline.inference_users(5000, 100) == 1024
    assert pipeline.inference_users(50, 100) == 50
    assert pipeline.inference_users(2_000_000, 1_000_000) == pipeline.INFER_SCORE_BUDGET // 1_000_000 < 1024


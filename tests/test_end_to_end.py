"""Short end-to-end runs of main.py on a tiny dataset."""
import json
import os

import pytest
import torch

import main


def run_main(tmp_path, data, *extra):
    runs = tmp_path / "runs"
    argv = ["--data_path", os.path.dirname(data), "--dataset", os.path.basename(data), "--runs_dir", str(runs),
            "--epoch", "2", "--student_epoch", "2", "--batch_size", "64", "--embed_size", "16",
            "--no_plot", *extra]
    code = main.main(argv)
    folders = sorted((runs / os.path.basename(data)).iterdir()) if runs.exists() else []
    return code, folders


METRIC_KEYS = {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit", "ndcg_legacy") for k in (10, 20, 40, 50)}


def test_teacher_stage_writes_the_run_folder(tmp_path, tiny_json):
    out = tmp_path / "copy.json"
    code, folders = run_main(tmp_path, tiny_json, "--stage", "teacher", "--results_json", str(out))
    assert code == 0 and len(folders) == 1
    files = set(os.listdir(folders[0]))
    assert {"log.txt", "config.json", "teacher.pt", "results.json"} <= files
    results = json.loads((folders[0] / "results.json").read_text())
    assert json.loads(out.read_text()) == results
    assert results["n_users"] == 30 and results["n_items"] == 40
    assert results["modalities"] == {"image": 4, "text": 16}
    teacher = results["teacher"]
    assert teacher["epochs_run"] == 2 and 1 <= teacher["best_epoch"] <= 2
    assert set(teacher["val"]) == METRIC_KEYS and set(teacher["test"]) == METRIC_KEYS
    assert teacher["params"] > 0 and teacher["seconds_per_epoch"] > 0 and teacher["eval_seconds"] > 0
    assert "student" not in results
    ckpt = torch.load(folders[0] / "teacher.pt", weights_only=False)
    assert {"model", "optimizer", "epoch", "best_score", "config"} <= set(ckpt)
    assert ckpt["epoch"] == teacher["best_epoch"]
    log = (folders[0] / "log.txt").read_text()
    assert "teacher epoch    1" in log and "val recall@20" in log


def test_both_stages_and_reuse_of_the_teacher(tmp_path, tiny_json):
    code, folders = run_main(tmp_path, tiny_json, "--stage", "all")
    assert code == 0
    results = json.loads((folders[0] / "results.json").read_text())
    student = results["student"]
    assert student["kind"] == "lightgcn" and set(student["test"]) == METRIC_KEYS
    eff = results["efficiency"]
    assert {"teacher_params", "student_params", "teacher_infer_ms", "student_infer_ms"} <= set(eff)
    assert "most_popular" in results

    # stage 2 froze every teacher weight but the prompt module's
    teacher = torch.load(folders[0] / "teacher.pt", weights_only=False)["model"]
    after = torch.load(folders[0] / "student.pt", weights_only=False)["teacher"]
    for name, value in teacher.items():
        assert torch.equal(value, after[name]) != name.startswith("prompt_module."), name

    code, folders2 = run_main(tmp_path, tiny_json, "--stage", "student", "--teacher_ckpt",
                              str(folders[0] / "teacher.pt"), "--student_model_type", "mlp")
    assert code == 0
    new = [f for f in folders2 if f not in folders]
    reused = json.loads((new[0] / "results.json").read_text())
    assert reused["teacher"]["test"] == pytest.approx(results["teacher"]["test"])
    assert reused["student"]["kind"] == "mlp"


def test_student_stage_needs_a_compatible_teacher(tmp_path, tiny_json, capsys):
    code, _ = run_main(tmp_path, tiny_json, "--stage", "student")
    assert code == 2 and "--teacher_ckpt" in capsys.readouterr().err
    code, folders = run_main(tmp_path, tiny_json, "--stage", "teacher")
    ckpt = str(folders[0] / "teacher.pt")
    code, _ = run_main(tmp_path, tiny_json, "--stage", "student", "--teacher_ckpt", ckpt, "--no_prompt")
    err = capsys.readouterr().err
    assert code == 2 and "--teacher_ckpt" in err and "no_prompt" in err


def test_same_seed_same_numbers(tmp_path, tiny_json):
    _, first = run_main(tmp_path, tiny_json, "--stage", "all")
    _, both = run_main(tmp_path, tiny_json, "--stage", "all")
    a, b = (json.loads((f / "results.json").read_text()) for f in both)
    for stage in ("teacher", "student"):
        assert a[stage]["val"] == b[stage]["val"] and a[stage]["test"] == b[stage]["test"]

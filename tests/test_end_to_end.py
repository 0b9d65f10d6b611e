"""Short end-to-end runs of main.py on a tiny dataset."""
import json
import os

import numpy as np
import pytest
import torch

from utility import pipeline


def run_main(tmp_path, data, *extra):
    runs = tmp_path / "runs"
    argv = ["--data_path", os.path.dirname(data), "--dataset", os.path.basename(data), "--runs_dir", str(runs),
            "--epoch", "2", "--batch_size", "64", "--embed_size", "16",
            "--no_plot", *extra]
    code = pipeline.run_command(argv)
    folders = sorted((runs / os.path.basename(data)).iterdir()) if runs.exists() else []
    return code, folders


CHECKPOINT_KEYS = {"stage", "epoch", "models", "optimizer", "best_score", "best_epoch", "stopper", "state", "rng",
                   "sampler", "config", "data"}
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
    history = [h["val"]["recall@20"] for h in results["teacher_history"]]
    assert teacher["epochs_run"] == 2 and teacher["best_epoch"] == 1 + history.index(max(history))
    assert teacher["val"] == results["teacher_history"][teacher["best_epoch"] - 1]["val"]
    assert set(teacher["val"]) == METRIC_KEYS and set(teacher["test"]) == METRIC_KEYS
    assert teacher["params"] > 0 and teacher["seconds_per_epoch"] > 0 and teacher["eval_seconds"] > 0
    assert "student" not in results
    ckpt = torch.load(folders[0] / "teacher.pt", weights_only=False)
    assert CHECKPOINT_KEYS <= set(ckpt) and set(ckpt["models"]) == {"teacher"}
    assert ckpt["stage"] == "teacher" and ckpt["best_epoch"] == ckpt["epoch"] == teacher["best_epoch"]
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
    for stage in ("teacher", "student"):   # per-user test metrics for paired tests
        per_user = np.load(folders[0] / f"{stage}_test_per_user.npz")
        for metric in ("recall@20", "ndcg@20"):
            assert per_user[metric].mean() == pytest.approx(results[stage]["test"][metric], abs=1e-9)
    # the paired comparison is the student against the teacher, metric by metric
    for metric, c in student["test_vs_teacher"].items():
        t, s = results["teacher"]["test"][metric], student["test"][metric]
        assert (c["mean_a"], c["mean_b"]) == (pytest.approx(t), pytest.approx(s))
        assert c["rel_diff"] == pytest.approx(100 * (s - t) / t) and 0 < c["p"] <= 1

    # stage 2 froze every teacher weight but the prompt module's
    teacher = torch.load(folders[0] / "teacher.pt", weights_only=False)["models"]["teacher"]
    student_ckpt = torch.load(folders[0] / "student.pt", weights_only=False)
    assert CHECKPOINT_KEYS <= set(student_ckpt) and student_ckpt["stage"] == "student"
    after = student_ckpt["models"]["teacher"]
    for name, value in teacher.items():
        assert torch.equal(value, after[name]) != name.startswith("prompt_module."), name

    # the teacher as distillation left it is evaluated and reported beside the stage-1 teacher
    after_stage_2 = results["teacher_after_distillation"]
    assert set(after_stage_2) == {"val", "test"} and after_stage_2["test"]["recall@20"] >= 0

    code, folders2 = run_main(tmp_path, tiny_json, "--stage", "student", "--teacher_ckpt",
                              str(folders[0] / "teacher.pt"), "--student_embed_size", "8")
    assert code == 0
    new = [f for f in folders2 if f not in folders]
    reused = json.loads((new[0] / "results.json").read_text())
    assert reused["teacher"]["test"] == pytest.approx(results["teacher"]["test"])
    assert torch.load(new[0] / "student.pt", weights_only=False)["models"]["student"]["user_emb"].shape[1] == 8


def test_student_stage_needs_a_compatible_teacher(tmp_path, tiny_json, capsys):
    code, _ = run_main(tmp_path, tiny_json, "--stage", "student")
    assert code == 2 and "--teacher_ckpt" in capsys.readouterr().err
    code, folders = run_main(tmp_path, tiny_json, "--stage", "teacher")
    ckpt = str(folders[0] / "teacher.pt")
    code, _ = run_main(tmp_path, tiny_json, "--stage", "student", "--teacher_ckpt", ckpt, "--no_prompt")
    err = capsys.readouterr().err
    assert code == 2 and "--teacher_ckpt" in err and "no_prompt" in err and "contradicts" in err
    code, _ = run_main(tmp_path, tiny_json, "--stage", "student", "--teacher_ckpt", ckpt, "--mm_fusion_weight", "0.5")
    err = capsys.readouterr().err
    assert code == 2 and "--mm_fusion_weight 0.5 contradicts the checkpoint" in err and "\n" not in err.strip()


def test_the_checkpoint_defines_the_teacher_and_the_students_width(tmp_path, tiny_json):
    """Without the flags, a loaded teacher keeps what it was trained with, and the student takes its width."""
    data = ["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json), "--epoch", "1",
            "--batch_size", "64", "--no_plot"]
    assert pipeline.run_command(data + ["--runs_dir", str(tmp_path / "t"), "--stage", "teacher", "--embed_size", "12",
                                        "--mm_fusion_weight", "0.3", "--no_prompt"]) == 0
    (folder,) = (tmp_path / "t" / os.path.basename(tiny_json)).iterdir()
    out = tmp_path / "s.json"
    for arm, flags in (("none", ["--item_teacher", "none"]), ("ease", [])):
        assert pipeline.run_command(data + ["--runs_dir", str(tmp_path / arm), "--stage", "student", "--teacher_ckpt",
                                            str(folder / "teacher.pt"), "--results_json", str(out)] + flags) == 0
        (student_folder,) = (tmp_path / arm / os.path.basename(tiny_json)).iterdir()
        config = json.loads((student_folder / "config.json").read_text())
        assert (config["teacher"]["embed_size"], config["teacher"]["mm_fusion_weight"]) == (12, 0.3)
        assert config["teacher"]["use_prompt"] is False
        state = torch.load(student_folder / "student.pt", weights_only=False)["models"]["student"]
        chosen = json.loads(out.read_text())["distilled_teacher"]
        # the graph teacher alone: the teacher's width; with EASE: the teacher's or twice it, as chosen
        assert state["user_emb"].shape[1] == chosen["width"] == (12 if arm == "none" else chosen["width"])
        assert chosen["width"] in (12, 24) and chosen["depth"] in (0, config["teacher"]["cf_layers"])


def test_same_seed_same_numbers(tmp_path, tiny_json):
    _, first = run_main(tmp_path, tiny_json, "--stage", "all")
    _, both = run_main(tmp_path, tiny_json, "--stage", "all")
    a, b = (json.loads((f / "results.json").read_text()) for f in both)
    for stage in ("teacher", "student"):
        assert a[stage]["val"] == b[stage]["val"] and a[stage]["test"] == b[stage]["test"]


def _evaluate_checkpoint(folder, data, stage, exclude_val=True):
    """Test metrics of the weights in ``<stage>.pt``, recomputed from the public parts."""
    from Models import LightGCNStudent
    from utility.evaluate import RankingEvaluator, dot_scores
    from utility.graph import build_graphs
    from utility.load_data import load_dataset

    ds = load_dataset(data)
    ckpt = torch.load(folder / f"{stage}.pt", weights_only=False)
    graphs = build_graphs(ds.train, torch.device("cpu"))
    state = ckpt["models"]["student"]
    student = LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"], state["user_emb"].shape[1],
                              ckpt["results"]["distilled_teacher"]["depth"])   # the depth chosen on validation
    student.load_state_dict(state)
    with torch.no_grad():
        user, item = student()
    exclude = [ds.train, ds.val] if exclude_val else [ds.train]
    return ckpt, RankingEvaluator(ds.test, exclude, [10, 20, 40, 50], torch.device("cpu"))(dot_scores(user, item))


def test_test_metrics_come_from_the_best_validation_weights(tmp_path, tiny_json):
    code, folders = run_main(tmp_path, tiny_json, "--epoch", "8", "--student_lr", "0.05",
                             "--student_init", "random")
    assert code == 0
    results = json.loads((folders[0] / "results.json").read_text())
    student = results["student"]
    assert student["best_epoch"] < student["epochs_run"]   # else the last weights would pass too
    ckpt, test = _evaluate_checkpoint(folders[0], tiny_json, "student")
    assert ckpt["epoch"] == ckpt["best_epoch"] == student["best_epoch"]
    assert test == pytest.approx(student["test"], abs=1e-6)
    last = torch.load(folders[0] / "checkpoint.pt", weights_only=False)
    assert last["epoch"] == student["epochs_run"] and last["state"]["done"]


def test_validation_items_are_excluded_at_test_time_unless_asked_not_to(tmp_path, tiny_json):
    for flag, exclude_val in (((), True), (("--no_exclude_val",), False)):
        runs = tmp_path / f"exclude-{exclude_val}"
        code = pipeline.run_command(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                          "--runs_dir", str(runs), "--epoch", "2", "--batch_size", "64",
                          "--embed_size", "16", "--no_plot", *flag])
        assert code == 0
        folder = next((runs / os.path.basename(tiny_json)).iterdir())
        results = json.loads((folder / "results.json").read_text())
        _, same = _evaluate_checkpoint(folder, tiny_json, "student", exclude_val)
        _, other = _evaluate_checkpoint(folder, tiny_json, "student", not exclude_val)
        assert results["student"]["test"] == pytest.approx(same, abs=1e-6)
        assert results["student"]["test"]["ndcg@10"] != pytest.approx(other["ndcg@10"], abs=1e-6)


def test_valid_metric_selects_the_epoch(tmp_path, tiny_json):
    code, folders = run_main(tmp_path, tiny_json, "--stage", "teacher", "--epoch", "6", "--valid_metric", "hit@10",
                             "--early_stopping_patience", "100")
    assert code == 0
    results = json.loads((folders[0] / "results.json").read_text())
    history = [h["val"]["hit@10"] for h in results["teacher_history"]]
    assert results["teacher"]["best_epoch"] == 1 + history.index(max(history))


@pytest.mark.slow
def test_trained_models_beat_most_popular_on_planted_data(tmp_path):
    """Users like one item cluster that the features reveal: personalised models must win."""
    from tinydata import tiny_splits, write_json_dataset
    data = write_json_dataset(str(tmp_path / "planted"), *tiny_splits(n_users=120, n_items=160, seed=5))
    code, folders = run_main(tmp_path, data, "--epoch", "30", "--lr", "0.01",
                             "--student_lr", "0.01")
    assert code == 0
    results = json.loads((folders[0] / "results.json").read_text())
    popular = results["most_popular"]["test"]["recall@20"]
    for stage in ("teacher", "student"):
        assert results[stage]["test"]["recall@20"] > popular + 0.1, (stage, results[stage]["test"], popular)


def test_an_empty_validation_split_is_an_error(tmp_path, capsys):
    from tinydata import tiny_splits, write_json_dataset
    train, val, test, feats = tiny_splits()
    data = write_json_dataset(str(tmp_path / "noval"), train, {u: [] for u in val}, test, feats)
    code, folders = run_main(tmp_path, data)
    err = capsys.readouterr().err
    assert code == 2 and "val.json" in err and "no interactions" in err and not folders


def test_eval_every_validates_on_its_epochs_and_the_last(tmp_path, tiny_json):
    code, folders = run_main(tmp_path, tiny_json, "--stage", "teacher", "--epoch", "5", "--eval_every", "2")
    assert code == 0
    history = json.loads((folders[0] / "results.json").read_text())["teacher_history"]
    assert [h["epoch"] for h in history if "val" in h] == [2, 4, 5]

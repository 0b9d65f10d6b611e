"""bench/peers.py and bench/mmrec_runner.py without MMRec: the conversion round-trips, the runner's
record becomes the right table row, and the runner's one-value-per-hyper-parameter rule."""
import types

import numpy as np
import pytest

from bench import mmrec_runner, peers
from tinydata import tiny_splits, write_json_dataset, write_pickle_dataset
from utility.errors import UserError
from utility.load_data import load_dataset


@pytest.mark.parametrize("layout", ["json", "pickle"])
def test_conversion_round_trips_every_split_and_the_features(tmp_path, layout):
    train, val, test, feats = tiny_splits()
    del train["7"], val["7"], test["7"]            # a user without any interaction is renumbered away
    folder = str(tmp_path / "tiny")
    if layout == "json":
        write_json_dataset(folder, train, val, test, feats)
    else:
        write_pickle_dataset(folder, train, val, test, feats, 30, 40)
    ds = load_dataset(folder)
    out = peers.convert(ds, str(tmp_path / "mmrec" / "tiny"), "image", "text")
    splits = peers.read_inter(out, "tiny")
    user_ids = np.load(f"{out}/users.npy")
    assert np.array_equal(np.unique(np.concatenate([u for u, _ in splits.values()])), np.arange(user_ids.size))
    assert 7 not in user_ids
    for name, label in peers.SPLIT_LABELS.items():
        users, items = splits[label]
        original = getattr(ds, name)
        assert users.size == original.nnz
        back = np.zeros(original.shape)
        back[user_ids[users], items] = 1
        assert np.array_equal(back, original.toarray())
    np.testing.assert_array_equal(np.load(f"{out}/image_feat.npy"), ds.modality_feats["image"])
    np.testing.assert_array_equal(np.load(f"{out}/text_feat.npy"), ds.modality_feats["text"])
    with open(f"{out}/tiny.inter") as f:
        assert f.readline().split() == ["userID", "itemID", "x_label"]


def test_the_yaml_points_mmrec_at_the_converted_files(tmp_path):
    text = peers.dataset_yaml("tiny", str(tmp_path / "data"))
    assert f"data_path: '{tmp_path}/data/'" in text
    for line in ("USER_ID_FIELD: userID", "ITEM_ID_FIELD: itemID", "inter_splitting_label: x_label",
                 "inter_file_name: 'tiny.inter'", "vision_feature_file: 'image_feat.npy'",
                 "text_feature_file: 'text_feat.npy'"):
        assert line in text.splitlines()


def test_modalities_default_to_image_and_text_and_must_differ():
    assert peers.choose_modalities({"image": 0, "text": 0}, None, None) == ("image", "text")
    assert peers.choose_modalities({"audio": 0, "image": 0}, None, None) == ("image", "audio")
    assert peers.choose_modalities({"genre": 0, "text": 0}, None, None) == ("genre", "text")
    assert peers.choose_modalities({"genre": 0, "text": 0}, "text", None) == ("text", "genre")
    with pytest.raises(UserError, match="--vision"):
        peers.choose_modalities({"genre": 0, "text": 0}, "image", None)
    with pytest.raises(UserError, match="two different"):
        peers.choose_modalities({"genre": 0, "text": 0}, "text", "text")


def _record(scores, epochs, stop_at=None):
    """A runner record whose validations have these scores (MMRec: improved when strictly above the best)."""
    history, best = [], -1.0
    for i, s in enumerate(scores):
        history.append(dict(valid_score=s, improved=s > best, stop=i == stop_at, time=0.0))
        best = max(best, s)
    metrics = {"recall@20": 0.3, "ndcg@20": 0.2, "recall@50": 0.5, "ndcg@50": 0.25}
    return dict(model="FREEDOM", history=history, epochs=epochs, best_valid=metrics, best_test=dict(metrics),
                settings={"dropout": 0.9}, seconds=1.0)


def test_a_run_stopped_by_patience_is_converged_at_its_best_validation_epoch():
    row = peers.peer_row(_record([0.1, 0.3, 0.2, 0.3, 0.25], epochs=1000, stop_at=4))
    assert row["best_epoch"] == 2 and row["epochs_run"] == 5 and row["converged"] and row["stopped"]
    assert row["note"] == "best epoch 2 of 5" and row["test"]["recall@20"] == 0.3


def test_a_run_that_reached_its_cap_is_capped_in_the_table():
    row = peers.peer_row(_record([0.1, 0.2, 0.3], epochs=3))
    assert row["best_epoch"] == 3 and not row["converged"]
    table = peers.baseline_table([row], "recall@20")
    assert "FREEDOM (MMRec) (capped)" in table and "best epoch 3 of 3" in table
    assert "recall@20" in table.splitlines()[0] and "0.3000" in table


def test_seeds_make_one_row_of_means_that_is_capped_when_any_seed_is():
    rows = [peers.peer_row(_record(scores, epochs=1000, stop_at=len(scores) - 1))
            for scores in ([0.1, 0.3, 0.2], [0.2, 0.1, 0.1, 0.1])]
    rows[0]["test"] = {"recall@20": 0.2, "ndcg@20": 0.1}
    rows[1]["test"] = {"recall@20": 0.4, "ndcg@20": 0.3}
    row = peers.over_seeds(rows)
    assert row["test"]["recall@20"] == pytest.approx([0.3, 0.1414], abs=1e-4) and row["converged"]
    assert row["note"] == "2 seeds, best epochs 2 of 3, 1 of 4"
    assert peers.over_seeds(rows[:1]) is rows[0]
    capped = peers.peer_row(_record([0.1, 0.2, 0.3], epochs=3))
    assert not peers.over_seeds([rows[0], capped])["converged"]


def test_runner_command_passes_one_value_per_setting():
    cmd = peers.runner_command("py", "FREEDOM", "tiny", "o.json", peers.PEER_SETTINGS["FREEDOM"])
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == ["dropout=0.9", "reg_weight=0.001"]
    assert cmd[cmd.index("--epochs") + 1] == "1000" and cmd[cmd.index("--stopping_step") + 1] == "20"
    assert cmd[cmd.index("--threads") + 1] == "1" and cmd[cmd.index("--seed") + 1] == "999"
    other = peers.runner_command("py", "FREEDOM", "tiny", "o.json", {}, seed=7)
    assert other[other.index("--seed") + 1] == "7"
    assert [mmrec_runner.parse_value(s.split("=", 1)[1]) for s in sets] == [0.9, 0.001]


def test_runner_refuses_a_grid_and_unwraps_single_values():
    config = {"seed": [999], "dropout": 0.9, "reg_weight": [0.0, 0.001]}
    with pytest.raises(SystemExit, match="reg_weight"):
        mmrec_runner.single_values(config, ["seed", "dropout", "reg_weight"])
    config["reg_weight"] = [0.001]
    mmrec_runner.single_values(config, ["seed", "dropout", "reg_weight"])
    assert config == {"seed": 999, "dropout": 0.9, "reg_weight": 0.001}


def test_runner_records_every_validation_of_the_trainers_stopping_rule():
    module = types.SimpleNamespace(early_stopping=lambda v, best, step, max_step, bigger=True:
                                   (max(v, best), 0 if v > best else step + 1, step + 1 > max_step, v > best))
    history = []
    mmrec_runner.record_validations(module, history)
    best, step = -1, 0
    for value in (0.1, 0.2, 0.15, 0.1):
        best, step, stop, _ = module.early_stopping(value, best, step, 1)
    assert [h["improved"] for h in history] == [True, True, False, False]
    assert [h["stop"] for h in history] == [False, False, False, True] and stop


def test_a_folder_that_is_not_mmrec_is_a_one_line_error(tiny_json, tmp_path, capsys):
    assert peers.main(["--dataset", "tiny", "--data_path", str(tmp_path), "--mmrec", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an MMRec checkout" in err

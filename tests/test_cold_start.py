"""New items: the item-cold split, the content mapper, the content baselines and the cold rankings."""
import filecmp
import json
import math
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from data.prepare import DatasetBuildError, choose_cold_items, item_cold_split, main as prepare_main, write_item_cold_copy
from utility.cold_start import (ColdBlend, ContentMapper, ContentScaler, MapperConfig, ServingMapper, cold_evaluator,
                                cold_scores, content_features, content_knn_scores, fit_mapper, items_without_training,
                                mapper_loss, masked_scores, popularity_tie_break_scores, read_cold_items, score_ratio,
                                serve_with_mapper)
from utility.errors import DataError
from utility.load_data import load_dataset


def random_splits(n_users=60, n_items=50, seed=0):
    """Disjoint binary train/val/test matrices (every user has items in each)."""
    rng = np.random.default_rng(seed)
    mats = [np.zeros((n_users, n_items), np.float32) for _ in range(3)]
    for u in range(n_users):
        items = rng.choice(n_items, size=10, replace=False)
        mats[0][u, items[:6]], mats[1][u, items[6:8]], mats[2][u, items[8:]] = 1, 1, 1
    return [sp.csr_matrix(m) for m in mats]


# ---------------------------------------------------------------- the split

def test_item_cold_split_holds_out_cold_items_with_all_their_interactions():
    train, val, test = random_splits()
    new_train, new_val, new_test, cold = item_cold_split(train, val, test, fraction=0.2, seed=3)
    assert cold["val"].size == 5 and cold["test"].size == 5             # 20 % of 50, halved
    assert np.intersect1d(cold["val"], cold["test"]).size == 0
    cold_items = np.concatenate([cold["val"], cold["test"]])
    assert new_train[:, cold_items].nnz == 0                            # no cold item is trained on
    everything = (train + val + test).toarray()
    # every interaction kept exactly once
    assert np.array_equal((new_train + new_val + new_test).toarray(), everything)
    assert new_train.nnz + new_val.nnz + new_test.nnz == train.nnz + val.nnz + test.nnz
    # a validation-cold item's interactions all in val, a test-cold item's all in test
    assert np.array_equal(new_val[:, cold["val"]].toarray(), everything[:, cold["val"]])
    assert np.array_equal(new_test[:, cold["test"]].toarray(), everything[:, cold["test"]])
    assert new_test[:, cold["val"]].nnz == 0 and new_val[:, cold["test"]].nnz == 0
    # warm items keep their per-user split
    warm = np.setdiff1d(np.arange(50), cold_items)
    for before, after in ((train, new_train), (val, new_val), (test, new_test)):
        assert np.array_equal(before[:, warm].toarray(), after[:, warm].toarray())


def test_cold_items_are_a_seeded_draw_among_items_with_interactions():
    interacted = np.array([1, 4, 5, 8, 9, 12, 13, 20, 21, 30])
    first = choose_cold_items(interacted, 0.4, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, choose_cold_items(interacted, 0.4, seed=7)))
    others = [choose_cold_items(interacted, 0.4, seed=s) for s in range(8, 14)]
    assert any(not np.array_equal(np.concatenate(first), np.concatenate(o)) for o in others)
    assert first[0].size == 2 and first[1].size == 2 and np.isin(np.concatenate(first), interacted).all()
    with pytest.raises(DatasetBuildError):
        choose_cold_items(interacted, 1.0, seed=7)


@pytest.mark.parametrize("layout", ["json", "pickle"])
def test_item_cold_copy_keeps_the_features_and_loads(tmp_path, tiny_json, tiny_pickle, layout):
    src = tiny_json if layout == "json" else tiny_pickle
    out = write_item_cold_copy(src, tmp_path / "cold", fraction=0.2, seed=1, verbose=False)
    before, after = load_dataset(src), load_dataset(str(out))
    assert after.layout == before.layout and after.n_items == before.n_items and after.n_users == before.n_users
    for name in before.modality_feats:                                  # features untouched, byte for byte
        assert filecmp.cmp(os.path.join(src, f"{name}_feat.npy"), out / f"{name}_feat.npy", shallow=False)
    cold = read_cold_items(str(out), after.n_items)
    assert after.train[:, np.concatenate([cold["val"], cold["test"]])].nnz == 0
    assert abs((after.train + after.val + after.test) - (before.train + before.val + before.test)).nnz == 0
    assert np.array_equal(np.sort(np.concatenate([cold["val"], cold["test"]])),
                          np.sort(np.setdiff1d(items_without_training(after.train),
                                               items_without_training(before.train))))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no staging folder left behind
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "cold"                    # the published name, not the staging folder's


def test_item_cold_command_refuses_bad_input_with_one_line(tmp_path, tiny_json, capsys):
    with pytest.raises(SystemExit) as stop:
        prepare_main(["item-cold", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(SystemExit) as stop:
        prepare_main(["item-cold", "--src", tiny_json, "--out", str(tmp_path / "taken")])
    assert stop.value.code == 2 and (tmp_path / "taken" / "file").exists()


def test_read_cold_items_names_the_file_when_the_sets_overlap(tmp_path):
    (tmp_path / "cold_items.json").write_text(json.dumps({"val": [1, 2], "test": [2, 3]}))
    with pytest.raises(DataError, match="cold_items.json: .*overlap"):
        read_cold_items(str(tmp_path), 10)
    with pytest.raises(DataError, match="not an item-cold dataset"):
        read_cold_items(str(tmp_path / "nowhere"), 10)


def test_synthetic_item_cold_option(tmp_path):
    from data.synthetic import main as synthetic_main
    out = tmp_path / "synth"
    assert synthetic_main(["--like", "tiktok", "--scale", "0.02", "--out", str(out), "--item_cold", "0.2",
                           "--quiet"]) == 0
    ds = load_dataset(str(out))
    cold = read_cold_items(str(out), ds.n_items)
    assert ds.train[:, np.concatenate([cold["val"], cold["test"]])].nnz == 0
    assert ds.val[:, cold["val"]].nnz > 0 and ds.test[:, cold["test"]].nnz > 0


# ---------------------------------------------------------------- the mapper

def test_mapper_loss_on_hand_worked_numbers():
    user = torch.tensor([[1.0]])
    target = torch.tensor([[0.0], [math.log(3.0)]])     # softmax [1/4, 3/4]
    mapped = torch.zeros(2, 1)                           # softmax [1/2, 1/2]
    terms = mapper_loss(mapped, target, user, score_weight=2.0)
    assert terms["emb"].item() == pytest.approx(math.log(3.0) ** 2 / 2)
    # KL(target || mapped); the reverse, 0.5 ln 2 + 0.5 ln(2/3), would be another number
    assert terms["score"].item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert terms["loss"].item() == pytest.approx(terms["emb"].item() + 2.0 * terms["score"].item())
    assert mapper_loss(target, target, user, 1.0)["score"].item() == pytest.approx(0.0, abs=1e-7)
    assert "score" not in mapper_loss(mapped, target, user, score_weight=0.0)


@pytest.mark.parametrize("score_weight", [0.0, 1.0])
def test_mapper_learns_a_known_linear_map(score_weight):
    rng = np.random.default_rng(0)
    content = torch.as_tensor(rng.normal(size=(400, 8)), dtype=torch.float32)
    weight = torch.as_tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
    target = content @ weight
    users = torch.as_tensor(rng.normal(size=(50, 4)) / 2, dtype=torch.float32)
    fit, held_out = np.arange(300), torch.arange(300, 400)

    def validate(mapper):   # negative held-out error: higher is better
        return -float(((mapper(content[held_out]) - target[held_out]) ** 2).mean())

    cfg = MapperConfig(hidden=64, score_weight=score_weight, lr=1e-2, weight_decay=0.0, batch_items=64,
                       batch_users=32, max_epochs=150, patience=20, seed=0)
    mapper, best_epoch, history = fit_mapper(content, users, target, fit, np.arange(50), validate, cfg)
    with torch.no_grad():
        error = ((mapper(content[held_out]) - target[held_out]) ** 2).mean() / (target[held_out] ** 2).mean()
    assert error < 0.02
    assert history[best_epoch - 1][2] == max(h[2] for h in history)   # the best validation epoch is kept


def test_serving_replaces_only_the_new_items_rows():
    table = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    content = torch.ones(6, 3)
    mapper = torch.nn.Linear(3, 2)
    served = serve_with_mapper(table, mapper, content, np.array([1, 4]), scale=2.0)
    assert torch.equal(served[[0, 2, 3, 5]], table[[0, 2, 3, 5]])
    assert torch.allclose(served[[1, 4]], 2.0 * mapper(content[[1, 4]]))


def test_blend_of_mapper_and_knn_on_hand_worked_numbers():
    # 2 users, 4 items; items 1 and 3 are new. The mapper maps content c to 2c.
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    table = torch.tensor([[1.0, 1.0], [9.0, 9.0], [0.0, 3.0], [9.0, 9.0]])
    content = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    mapper = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        mapper.weight.copy_(2 * torch.eye(2))
    knn = torch.tensor([[0.5, -0.5], [1.0, 0.0]])                 # users x new items (1, 3)
    knn_fn = lambda users: knn[users]                              # noqa: E731
    mapped = lambda users: user[users] @ (2 * content[[1, 3]]).T   # noqa: E731  [[2, 0], [0, 4]]
    users = torch.tensor([0, 1])
    blend = ColdBlend(weight=0.25, ratio=4.0)
    # (1 - 0.25) * mapper + 0.25 * 4 * knn
    assert torch.allclose(blend.cold_scores(mapped, knn_fn)(users), torch.tensor([[2.0, -0.5], [1.0, 3.0]]))
    assert ColdBlend(0.0, 4.0).cold_scores(mapped, knn_fn) is mapped
    mixed = blend.mixed_scores(user, table, mapper, content, np.array([1, 3]), knn_fn, scale=2.0)(users)
    # warm items 0 and 2 keep the student's scores; new ones are 2 x the blend above
    assert torch.allclose(mixed, torch.tensor([[1.0, 4.0, 0.0, -1.0], [2.0, 2.0, 6.0, 6.0]]))
    # the ratio: sd of the mapper's scores over sd of kNN's, on the same users
    assert score_ratio(mapped, knn_fn, users) == pytest.approx(float(torch.tensor([2.0, 0, 0, 4]).std()) /
                                                               float(knn.std()))
    assert score_ratio(mapped, lambda u: torch.ones(len(u), 2), users) == 1.0


def test_content_features_weigh_modalities_equally_with_warm_statistics():
    rng = np.random.default_rng(0)
    feats = {"a": rng.normal(3, 5, (20, 2)), "b": rng.normal(0, 1, (20, 50))}
    x = content_features(feats, np.arange(10))
    assert x.shape == (20, 52)
    assert np.allclose(x[:10].mean(0), 0, atol=1e-5)                  # centred on the warm rows only
    assert np.mean(np.sum(x[:10, :2] ** 2, 1)) == pytest.approx(1.0, rel=1e-4)
    assert np.mean(np.sum(x[:10, 2:] ** 2, 1)) == pytest.approx(1.0, rel=1e-4)


# ---------------------------------------------------------------- baselines and rankings

def test_content_knn_mean_and_max_on_toy_data():
    # items 0, 1 are trained unit vectors e1, e2; candidates 2 = e1 and 3 = (e1 + e2) / sqrt 2
    content = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 0, 0]], np.float32))
    users = torch.tensor([0, 1])
    mean = content_knn_scores(train, content, np.array([2, 3]), "mean")(users)
    best = content_knn_scores(train, content, np.array([2, 3]), "max")(users)
    root = 1 / math.sqrt(2)
    assert torch.allclose(mean, torch.tensor([[0.5, root], [0.0, 0.0]]))    # mean prefers candidate 3
    assert torch.allclose(best, torch.tensor([[1.0, root], [0.0, 0.0]]))    # max prefers candidate 2
    with pytest.raises(ValueError):
        content_knn_scores(train, content, np.array([2]), "median")


def test_a_model_that_scores_cold_items_perfectly_gets_recall_one():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 100
    truth = sp.csr_matrix((rng.random((n_users, n_items)) < 0.1).astype(np.float32))
    cold = np.arange(60, 90)
    evaluator = cold_evaluator(truth, cold)
    dense = torch.as_tensor(truth.toarray())
    perfect = evaluator(lambda users: dense[users][:, cold])
    assert perfect["recall@20"] == pytest.approx(1.0) and perfect["ndcg@20"] == pytest.approx(1.0)
    worst = evaluator(lambda users: -dense[users][:, cold])
    assert worst["recall@20"] < 0.5
    # only users with a held-out cold item count
    assert evaluator.users.numel() == int((truth[:, cold].getnnz(axis=1) > 0).sum())
    # an embedding model whose item vectors point at their users scores them first
    user_emb = torch.eye(n_users, 64)
    item_emb = torch.as_tensor(truth.toarray().T @ np.eye(n_users, 64), dtype=torch.float32)
    assert evaluator(cold_scores(user_emb, item_emb, cold))["recall@20"] == pytest.approx(1.0)


def test_popularity_is_a_random_order_among_cold_items_and_masking_hides_items():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32))
    scores = popularity_tie_break_scores(train, np.arange(5), seed=0)(torch.tensor([0]))[0]
    assert scores[0] > scores[1] > scores[2:].max()                    # popular first, then ties by chance
    orders = {tuple(popularity_tie_break_scores(train, np.arange(2, 5), s)(torch.tensor([0]))[0].argsort().tolist())
              for s in range(10)}
    assert len(orders) > 1
    masked = masked_scores(torch.ones(1, 2), torch.ones(5, 2), np.array([3]))(torch.tensor([0]))[0]
    assert torch.isinf(masked[3]) and masked[3] < 0 and torch.isfinite(masked[[0, 1, 2, 4]]).all()


@pytest.mark.slow
def test_the_script_on_a_tiny_item_cold_run(tmp_path, tiny_json):
    from scripts.cold_start import main as cold_start_main
    from utility import pipeline
    data = write_item_cold_copy(tiny_json, tmp_path / "data" / "tinycold", fraction=0.3, seed=0, verbose=False)
    runs = tmp_path / "runs"
    code = pipeline.run_command(["--data_path", str(data.parent), "--dataset", data.name, "--runs_dir", str(runs),
                                 "--epoch", "2", "--embed_size", "16", "--no_plot"])
    assert code == 0
    run_dir = str(next((runs / data.name).iterdir()))
    out = tmp_path / "cold.json"
    assert cold_start_main(["--dataset", data.name, "--seeds", "0", "--run_dirs", run_dir, "--out", str(out),
                            "--score_weights", "0", "1"]) == 0
    result = json.loads(out.read_text())
    for ranking in ("cold", "mixed"):
        for method, values in result["table"][ranking].items():
            assert 0.0 <= values["recall@20"][0] <= 1.0, (ranking, method)
    assert result["runs"][0]["choices"]["knn"] in ("mean", "max")
    mixed = result["per_user"]["0"]["mixed"]                          # served: promoted, or the warm-only lists
    served_as = "mapper + student, always promoted" if result["runs"][0]["choices"]["promoted"] else \
        "student, new items -inf"
    assert mixed["mapper + student"]["recall@20"] == mixed[served_as]["recall@20"]
    # the same mapper, fitted for serving: the run's new items get its vectors, warm items keep their rows
    from utility.recommend import Recommender, main as recommend_main
    assert recommend_main([run_dir, "--fit_mapper"]) == 0
    fitted, _ = ServingMapper.load(os.path.join(run_dir, "mapper.pt"))
    assert fitted.info["chosen_on"] == "validation-cold items"
    assert fitted.info["epoch"] == result["runs"][0]["choices"]["mapper_epoch"]
    plain, served = Recommender.load(run_dir), Recommender.load(run_dir, new_items=True)
    ds = load_dataset(str(data))
    new = items_without_training(ds.train)
    warm = np.setdiff1d(np.arange(ds.n_items), new)
    assert served.n_mapped == new.size > 0 and torch.equal(served.item_emb[warm], plain.item_emb[warm])
    with torch.no_grad():
        expected = fitted.scale * fitted.mapper(torch.from_numpy(content_features(ds.modality_feats, warm)[new]))
    assert torch.allclose(served.item_emb[new], expected, atol=1e-6)


def _summary(dataset, kNN, mapper, rel_diff):
    table = {"cold": {"content-kNN": {"recall@20": [kNN, 0.0]}, "mapper + student": {"recall@20": [mapper, 0.01]}}}
    comparison = dict(ranking="cold", control="content-kNN", treatment="mapper + student", metric="recall@20",
                      rel_diff=rel_diff)
    return dict(dataset=dataset, table=table, comparisons=[comparison])


def test_combining_item_splits_makes_the_split_the_replicate(tmp_path, capsys):
    from scripts.cold_start import combine_splits, main as cold_start_main
    from utility.errors import UserError
    summaries = [_summary("a", 0.10, 0.12, 20.0), _summary("b", 0.08, 0.09, 15.0), _summary("c", 0.09, 0.093, 12.0)]
    table, (row,) = combine_splits(summaries, ["a", "b", "c"])
    assert table["cold"]["mapper + student"]["recall@20"][0] == pytest.approx(0.101)   # mean of the splits' means
    assert table["cold"]["content-kNN"]["recall@20"][1] == pytest.approx(0.01)          # sd over the splits
    assert row["rel_diff"] == pytest.approx(47 / 3) and row["per_split_rel_diff"] == [20.0, 15.0, 12.0]
    half = 4.302653 * np.std([20.0, 15.0, 12.0], ddof=1) / np.sqrt(3)                  # t(0.975, 2 df)
    assert row["interval"] == pytest.approx((47 / 3 - half, 47 / 3 + half)) and row["df"] == 2
    assert row["verdict"] == "B above A"
    _, (row,) = combine_splits([_summary("a", 0.1, 0.1, 20.0), _summary("b", 0.1, 0.1, -15.0)], ["a", "b"])
    assert row["verdict"] == "no measurable difference"
    with pytest.raises(UserError, match="at least two"):
        combine_splits(summaries[:1], ["a"])
    broken = _summary("b", 0.1, 0.1, 1.0)
    broken["comparisons"][0]["control"] = "random"
    with pytest.raises(UserError, match="^b: no comparison"):
        combine_splits([summaries[0], broken], ["a", "b"])
    paths = []
    for s in summaries:
        paths.append(tmp_path / f"{s['dataset']}.json")
        paths[-1].write_text(json.dumps(s))
    out = tmp_path / "all.json"
    assert cold_start_main(["--combine", *map(str, paths), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["comparisons"][0]["rel_diff"] == pytest.approx(47 / 3)
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert cold_start_main(["--combine", str(paths[0]), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.json: not a cold-start summary" in err and "\n" not in err


def test_a_saved_mapper_gives_new_rows_the_same_scaled_vectors(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"a": rng.normal(2.0, 3.0, (12, 3)), "b": rng.normal(-1.0, 0.5, (12, 5))}
    warm = np.arange(8)
    scaler = ContentScaler.fit(feats, warm)
    torch.manual_seed(0)
    mapper = ServingMapper(ContentMapper(8, 4, hidden=6).eval(), scaler, 2.5, False, {"epoch": 3})
    rows = {m: x[[9, 10]] for m, x in feats.items()}                   # two items arriving later
    by_hand = np.hstack([(feats[m][[9, 10]] - feats[m][warm].mean(0)) / feats[m][warm].std(0) / np.sqrt(d)
                         for m, d in (("a", 3), ("b", 5))])
    with torch.no_grad():
        expected = 2.5 * mapper.mapper(torch.as_tensor(by_hand, dtype=torch.float32))
    assert torch.allclose(mapper.vectors(rows), expected, atol=1e-5)
    mapper.save(tmp_path / "mapper.pt", {"sha256": "x"})
    loaded, student = ServingMapper.load(tmp_path / "mapper.pt")
    assert student == {"sha256": "x"} and loaded.scale == 2.5 and loaded.promote is False
    assert torch.allclose(loaded.vectors(rows), expected, atol=1e-5)


def test_the_blend_weight_is_scored_by_mappers_chosen_on_the_other_fold(tiny_json, monkeypatch):
    from utility import cold_start
    ds = load_dataset(tiny_json)
    built = []
    real = cold_start.cold_evaluator
    monkeypatch.setattr(cold_start, "cold_evaluator", lambda truth, items, *a, **k: built.append(np.asarray(items))
                        or real(truth, items, *a, **k))
    torch.manual_seed(0)
    user, item = torch.randn(ds.n_users, 4), torch.randn(ds.n_items, 4)
    items = np.arange(20, 30)
    content = torch.from_numpy(content_features(ds.modality_feats, np.arange(20)))
    scores = cold_start.blend_weight_scores(ds, user, item, content, items, np.arange(20), "max", 0.0, 3,
                                            (0.0, 0.5), "cpu")
    chosen_a, scored_a, chosen_b, scored_b = built                  # per fold: the chooser, then the scored items
    assert np.array_equal(chosen_a, scored_b) and np.array_equal(scored_a, chosen_b)
    assert np.intersect1d(scored_a, scored_b).size == 0 and np.array_equal(np.union1d(scored_a, scored_b), items)
    assert set(scores) == {0.0, 0.5} and all(0.0 <= v <= 1.0 for v in scores.values())

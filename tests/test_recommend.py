"""Recommendations from a finished run (utility/recommend.py): loading, ranking, output, export."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tinydata import tiny_splits, write_json_dataset
from utility import pipeline, recommend
from utility.errors import UserError
from utility.evaluate import RankingEvaluator, dot_scores
from utility.load_data import load_dataset
from utility.recommend import Recommender

TOPK = [1, 5, 10, 20, 40, 50]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished run (both stages) on the tiny dataset."""
    root = tmp_path_factory.mktemp("rec")
    train, val, test, feats = tiny_splits()
    data = write_json_dataset(str(root / "data" / "tiny"), train, val, test, feats)
    runs = root / "runs"
    code = pipeline.run_command(["--data_path", os.path.dirname(data), "--dataset", "tiny", "--runs_dir", str(runs),
                                 "--epoch", "3", "--batch_size", "64", "--embed_size", "16", "--no_plot",
                                 "--topk", *map(str, TOPK)])
    assert code == 0
    (folder,) = (runs / "tiny").iterdir()
    return str(folder)


@pytest.fixture(scope="module")
def dataset(run_dir):
    config = json.load(open(os.path.join(run_dir, "config.json")))
    return load_dataset(os.path.join(config["data_path"], config["dataset"]))


def hand_recommender(user, item, train, id_map=None):
    """A Recommender over given embeddings and training matrix (no run folder)."""
    user, item = torch.tensor(user, dtype=torch.float32), torch.tensor(item, dtype=torch.float32)
    train = sp.csr_matrix(np.asarray(train, dtype=np.float32))
    signature = dict(n_users=user.shape[0], n_items=item.shape[0], n_train=int(train.nnz), modalities={})
    return Recommender("student", user, item, train, "hand", signature, "nowhere", id_map)


# ---------------------------------------------------------------- ranking on hand-worked numbers

def test_recommend_ranks_by_dot_product_and_leaves_out_seen_items():
    # user 0 = (1, 0.5): item scores 1, 0.5, 1.5, -1; item 2 seen -> 0, 1, 3
    # user 1 = (0, 1): item scores 0, 1, 1, 0; nothing seen; the tie 1-2 keeps both before 0 and 3
    rec = hand_recommender([[1, 0.5], [0, 1]], [[1, 0], [0, 1], [1, 1], [-1, 0]], [[0, 0, 1, 0], [0, 0, 0, 0]])
    ids, scores = rec.recommend([0, 1], k=3)
    assert ids[0].tolist() == [0, 1, 3] and np.allclose(scores[0], [1, 0.5, -1])
    assert set(ids[1, :2].tolist()) == {1, 2} and ids[1, 2] in (0, 3) and np.allclose(scores[1], [1, 1, 0])
    ids, scores = rec.recommend([0], k=2, exclude_seen=False)
    assert ids[0].tolist() == [2, 0] and np.allclose(scores[0], [1.5, 1])


def test_a_user_with_fewer_unseen_items_than_k_gets_empty_places():
    rec = hand_recommender([[1.0]], [[1.0], [2.0], [3.0]], [[1, 0, 1]])
    ids, scores = rec.recommend([0], k=3)
    assert ids[0].tolist() == [1, -1, -1] and scores[0, 0] == 2 and np.isneginf(scores[0, 1:]).all()
    assert recommend.list_rows(rec, np.array([0]), ids, scores, False) == [dict(user=0, rank=1, item=1, score=2.0)]


def test_similar_items_rank_by_cosine_without_the_item_itself():
    # cosines with item 0 = (1, 0): item 1 (2, 0.2) ~0.995, item 2 (1, 1) ~0.707, item 3 (0, 5) 0, item 4 (-1, 0) -1
    rec = hand_recommender([[1, 0]], [[1, 0], [2, 0.2], [1, 1], [0, 5], [-1, 0]], [[0] * 5])
    ids, sims = rec.similar_items(0, k=4)
    assert ids.tolist() == [1, 2, 3, 4] and np.allclose(sims, [2 / np.sqrt(4.04), 1 / np.sqrt(2), 0, -1])
    with pytest.raises(UserError, match="item 5 is not in hand"):
        rec.similar_items(5)


def test_unknown_users_are_refused():
    rec = hand_recommender([[1.0], [2.0]], [[1.0]], [[0], [0]])
    for bad in (2, -1):
        with pytest.raises(UserError, match=f"user {bad} is not in hand"):
            rec.recommend([0, bad])


def test_blocks_give_the_same_lists_as_one_block(monkeypatch):
    rng = np.random.default_rng(0)
    train = (rng.random((23, 17)) < 0.3).astype(np.float32)
    rec = hand_recommender(rng.normal(size=(23, 4)), rng.normal(size=(17, 4)), train)
    whole = rec.recommend(np.arange(23), k=5)
    monkeypatch.setattr(recommend, "SCORE_BUDGET", 17 * 4)   # four users a block
    assert recommend.block_size(17) == 4
    blocked = rec.recommend(np.arange(23), k=5)
    streamed = [np.concatenate(parts) for parts in zip(*((ids, s) for _, ids, s in rec.iter_all(k=5)))]
    for got in (blocked, streamed):
        assert np.array_equal(got[0], whole[0]) and np.array_equal(got[1], whole[1])
    assert not np.take_along_axis(train, np.maximum(whole[0], 0), 1).any()   # no seen item recommended


# ---------------------------------------------------------------- a finished run

def test_signature_matches_the_pipelines(dataset):
    assert recommend.dataset_signature(dataset) == pipeline.data_signature(dataset)


@pytest.mark.parametrize("model", ["student", "teacher"])
def test_loaded_model_reproduces_the_runs_own_metrics(run_dir, dataset, model):
    """The run's results.json holds each model's best-validation metrics: the loaded embeddings,
    evaluated by the run's evaluator, must give them back (wrong weights, depth or model would not)."""
    results = json.load(open(os.path.join(run_dir, "results.json")))
    rec = Recommender.load(run_dir, model)
    assert rec.model == model and rec.signature["modalities"] == results["modalities"]
    scores = dot_scores(rec.user_emb, rec.item_emb)
    val = RankingEvaluator(dataset.val, [dataset.train], TOPK, torch.device("cpu"))(scores)
    test = RankingEvaluator(dataset.test, [dataset.train, dataset.val], TOPK, torch.device("cpu"))(scores)
    for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert val[metric] == pytest.approx(results[model]["val"][metric], abs=1e-6)
        assert test[metric] == pytest.approx(results[model]["test"][metric], abs=1e-6)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_student_top_k_is_the_evaluators_top_k(run_dir, dataset, k):
    """With the user's recommended items as the held-out set, the evaluator (training items
    excluded) ranks exactly those k items first for every user: recall@k = 1."""
    rec = Recommender.load(run_dir)
    users = np.arange(dataset.n_users)
    ids, _ = rec.recommend(users, k)
    truth = sp.csr_matrix((np.ones(ids.size), (np.repeat(users, k), ids.ravel())), shape=dataset.train.shape)
    evaluator = RankingEvaluator(truth, [dataset.train], [k], torch.device("cpu"))
    assert evaluator.n_users_total == dataset.n_users
    assert evaluator(dot_scores(rec.user_emb, rec.item_emb))[f"recall@{k}"] == pytest.approx(1.0, abs=1e-12)
    assert not dataset.train[np.repeat(users, k), ids.ravel()].any()


def test_cli_prints_lists_in_each_format(run_dir, capsys):
    rec = Recommender.load(run_dir)
    ids, scores = rec.recommend([3, 17], k=4)
    assert recommend.main([run_dir, "--users", "3", "17", "--k", "4", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["3", "17"] and out["17"]["items"] == ids[1].tolist()
    assert np.allclose(out["3"]["scores"], scores[0], atol=1e-5)
    assert recommend.main([run_dir, "--users", "17", "--k", "4", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0] == "user,rank,item,score" and [int(line.split(",")[2]) for line in lines[1:]] == ids[1].tolist()
    assert recommend.main([run_dir, "--users", "3", "--k", "4", "--model", "teacher"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["user", "rank", "item", "score"] and len(table) == 5


def test_cli_users_file_and_include_seen(run_dir, dataset, tmp_path, capsys):
    file = tmp_path / "users.txt"
    file.write_text("0\n1 2\n")
    assert recommend.main([run_dir, "--users_file", str(file), "--k", "40", "--format", "json", "--include_seen"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["0", "1", "2"]
    assert set(dataset.train[0].indices) <= set(out["0"]["items"])   # all 40 items: the seen ones too
    file.write_text("0 x1\n")
    assert recommend.main([run_dir, "--users_file", str(file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {file}: 'x1' is not a user id (expected integers separated by white space)"


def test_unknown_user_is_a_one_line_error(run_dir, capsys):
    assert recommend.main([run_dir, "--users", "3", "30"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "error: user 30 is not in tiny (user ids are 0..29)\n"


def test_bad_run_folders_are_one_line_errors(run_dir, tmp_path, capsys):
    assert recommend.main([str(tmp_path / "missing"), "--users", "0"]) == 2
    assert "run folder not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "student.pt").write_bytes(b"not a checkpoint")
    assert recommend.main([str(broken), "--users", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "student.pt: not a readable checkpoint" in err


def test_other_data_is_refused(run_dir, tmp_path, capsys):
    """A dataset folder under the run's name whose training split differs (one interaction fewer)."""
    train, val, test, feats = tiny_splits()
    train["5"] = train["5"][1:]
    write_json_dataset(str(tmp_path / "tiny"), train, val, test, feats)
    assert recommend.main([run_dir, "--users", "0", "--data_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the data" in err and "n_train" in err


def test_all_users_are_streamed_to_csv_and_parquet(run_dir, tmp_path, monkeypatch, capsys):
    rec = Recommender.load(run_dir)
    ids, scores = rec.recommend(np.arange(rec.n_users), k=7)
    monkeypatch.setattr(recommend, "SCORE_BUDGET", 40 * 8)   # eight users a block: four blocks
    out = tmp_path / "all.csv"
    assert recommend.main([run_dir, "--all_users", "--k", "7", "--out", str(out)]) == 0
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert out.read_text().splitlines()[0] == "user,rank,item,score" and table.shape == (30 * 7, 4)
    assert np.array_equal(table[:, 0], np.repeat(np.arange(30), 7)) and np.array_equal(table[:, 1], np.tile(np.arange(1, 8), 30))
    assert np.array_equal(table[:, 2].reshape(30, 7), ids) and np.allclose(table[:, 3].reshape(30, 7), scores, rtol=1e-5)
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "all.parquet"
    assert recommend.main([run_dir, "--all_users", "--k", "7", "--out", str(out)]) == 0
    columns = pq.read_table(out).to_pydict()
    assert columns["item"] == ids.ravel().tolist() and np.allclose(columns["score"], scores.ravel())
    assert sorted(os.listdir(tmp_path)) == ["all.csv", "all.parquet"]   # no temporary files left


def test_original_ids_come_from_the_id_map(run_dir, tmp_path, capsys):
    data = tmp_path / "data"
    config = json.load(open(os.path.join(run_dir, "config.json")))
    shutil.copytree(os.path.join(config["data_path"], config["dataset"]), data / "tiny")
    id_map = dict(user=[1000 + u for u in range(30)], item=[500 + 2 * i for i in range(40)])
    (data / "tiny" / "id_map.json").write_text(json.dumps(id_map))
    assert recommend.main([run_dir, "--users", "4", "--k", "3", "--format", "json", "--original_ids",
                           "--data_path", str(data)]) == 0
    entry = json.loads(capsys.readouterr().out)["4"]
    assert entry["original_user"] == 1004 and entry["original_items"] == [500 + 2 * i for i in entry["items"]]
    assert recommend.main([run_dir, "--users", "4", "--original_ids"]) == 2
    assert "has no id_map.json" in capsys.readouterr().err


# ---------------------------------------------------------------- export

def test_export_rebuilds_the_same_lists(run_dir, tmp_path, capsys):
    rec = Recommender.load(run_dir)
    out = tmp_path / "export"
    assert recommend.main([run_dir, "--export", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "student" and manifest["dataset"] == "tiny" and manifest["dimension"] == 16
    assert manifest["signature"] == rec.signature and manifest["created_from"] == os.path.abspath(run_dir)
    user = np.load(out / manifest["files"]["user_embeddings"])
    item = np.load(out / manifest["files"]["item_embeddings"])
    seen = sp.load_npz(out / manifest["files"]["seen"]).tocsr()
    assert user.dtype == item.dtype == np.float32 and user.shape == (30, 16) and item.shape == (40, 16)
    scores = user @ item.T
    scores[seen.nonzero()] = -np.inf
    expected, _ = rec.recommend(np.arange(30), k=20)
    assert np.array_equal(np.argsort(-scores, axis=1, kind="stable")[:, :20], expected)
    assert recommend.main([run_dir, "--export", str(out)]) == 2   # never over an existing export
    assert "exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_index_finds_the_exact_top_items(run_dir, tmp_path, kind):
    faiss = pytest.importorskip("faiss")
    rec = Recommender.load(run_dir)
    out = tmp_path / "export"
    assert recommend.main([run_dir, "--export", str(out), "--faiss", kind]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["faiss_index"]["kind"] == kind and manifest["faiss_index"]["metric"] == "inner product"
    index = faiss.read_index(str(out / manifest["files"]["faiss_index"]))
    assert index.ntotal == 40
    found, scores = recommend.search_unseen(index, rec.user_emb.numpy(), rec.train, 20)
    exact, exact_scores = rec.recommend(np.arange(30), k=20)
    overlap = np.mean([len(set(f) & set(e)) / 20 for f, e in zip(found, exact)])
    assert overlap >= 0.99 and not rec.train[np.repeat(np.arange(30), 20), found.ravel()].any()
    if kind == "flat":
        assert np.allclose(scores, exact_scores, atol=1e-5)


@pytest.mark.parametrize("flags, message", [
    ([], "nothing to do"),
    (["--users", "0", "--k", "0"], "--k 0: must be at least 1"),
    (["--all_users"], "--all_users needs --out"),
    (["--all_users", "--out", "lists.txt"], "--out lists.txt: expected a .csv or .parquet file"),
    (["--users", "0", "--faiss"], "--faiss goes with --export"),
    (["--users", "0", "--add_items", "x"], "--add_items and --new_only go with --new_items"),
    (["--users", "0", "--new_only"], "--add_items and --new_only go with --new_items"),
    (["--users", "0", "--new_items", "--model", "teacher"], "are for the student"),
])
def test_flag_combinations_that_make_no_sense_are_one_line_errors(run_dir, capsys, flags, message):
    assert recommend.main([run_dir, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_serving_extras_are_named_and_nothing_is_left(run_dir, tmp_path, monkeypatch, capsys):
    for module in ("faiss", "pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, module, None)   # as if not installed
    assert recommend.main([run_dir, "--export", str(tmp_path / "export"), "--faiss"]) == 2
    assert "--faiss needs the faiss-cpu package" in capsys.readouterr().err
    assert recommend.main([run_dir, "--all_users", "--out", str(tmp_path / "all.parquet")]) == 2
    assert "parquet needs pyarrow" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_weights_that_do_not_fit_the_config_are_a_one_line_error(run_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    config["teacher"]["cf_layers"] += 1   # harmless to the weights' shapes: the student loads
    config["teacher"]["embed_size"] = 8   # the teacher's PCA tokens (and prompt module) are 8 wide now
    (moved / "config.json").write_text(json.dumps(config))
    assert recommend.main([str(moved), "--users", "0", "--model", "teacher"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {moved / 'teacher.pt'}: its weights do not fit") and err.count("\n") == 1
    (moved / "config.json").write_text("[1, 2]")
    assert recommend.main([str(moved), "--users", "0"]) == 2
    assert "config.json: not a run's config (not a JSON object)" in capsys.readouterr().err


# ---------------------------------------------------------------- new items from the content mapper

@pytest.fixture(scope="module")
def mapped_run(run_dir, tmp_path_factory):
    """A copy of the finished run with its content mapper fitted (``--fit_mapper``)."""
    copy = tmp_path_factory.mktemp("mapped") / "run"
    shutil.copytree(run_dir, copy)
    assert recommend.main([str(copy), "--fit_mapper"]) == 0
    return str(copy)


def by_hand_content(feats, warm, rows):
    """The mapper's input of ``rows``, written out: standardised with the warm items, / sqrt(width)."""
    blocks = []
    for name in sorted(feats):
        x = np.asarray(feats[name], dtype=np.float64)
        blocks.append((x[rows] - x[warm].mean(0)) / x[warm].std(0) / np.sqrt(x.shape[1]))
    return torch.as_tensor(np.hstack(blocks), dtype=torch.float32)


def test_the_mapper_is_chosen_on_held_out_items_it_never_fits(run_dir, dataset, monkeypatch):
    from utility import cold_start
    fitted_on = []
    real_fit = cold_start.fit_mapper
    monkeypatch.setattr(cold_start, "fit_mapper", lambda content, user, item, warm, *rest, **kw:
                        fitted_on.append(np.asarray(warm)) or real_fit(content, user, item, warm, *rest, **kw))
    rec = Recommender.load(run_dir)
    warm = np.setdiff1d(np.arange(40), cold_start.items_without_training(dataset.train))
    held, fit, how = cold_start.choice_items(dataset, warm, seed=5)
    assert held.size == 4 and "held out" in how and np.intersect1d(held, fit).size == 0
    assert np.array_equal(np.union1d(held, fit), warm) and dataset.val[:, held].sum(0).min() > 0
    fitted = cold_start.fit_serving_mapper(dataset, rec.user_emb, rec.item_emb, seed=5, score_weights=(0.0, 1.0))
    assert len(fitted_on) == 2 and all(np.array_equal(f, fit) for f in fitted_on)
    assert fitted.info["n_chosen_on"] == 4 and fitted.scale in cold_start.SERVING_SCALES
    assert fitted.info["gain"] == pytest.approx(fitted.info["scale_val"][str(fitted.scale)] - fitted.info["warm_only_val"])
    assert fitted.promote == (fitted.info["gain"] > fitted.info["gain_se"])
    assert set(fitted.info["val"]) == {"0.0", "1.0"} and fitted.info["score_weight"] in (0.0, 1.0)


def test_new_items_are_served_from_the_mapper_and_added_items_ranked(mapped_run, dataset, capsys):
    from utility.cold_start import ServingMapper, items_without_training
    plain = Recommender.load(mapped_run)
    rec = Recommender.load(mapped_run, new_items=True)
    mapper, _ = ServingMapper.load(os.path.join(mapped_run, "mapper.pt"))
    new = items_without_training(dataset.train)
    warm = np.setdiff1d(np.arange(40), new)
    assert rec.n_mapped == new.size == 0 and torch.equal(rec.item_emb, plain.item_emb)   # every item has training
    with torch.no_grad():                # interactions here; tests/test_cold_start.py serves the item-cold ones
        # two items arrive after training: the features of items 0 and 7, as new rows
        arrived = {m: x[[0, 7]] for m, x in dataset.modality_feats.items()}
        ids = rec.add_items(arrived)
        assert ids.tolist() == [40, 41] and rec.n_items == 42 and rec.train.shape == (30, 42)
        expected = mapper.scale * mapper.mapper(by_hand_content(dataset.modality_feats, warm, [0, 7]))
        assert torch.allclose(rec.item_emb[40:], expected, atol=1e-5)
        assert not torch.allclose(rec.item_emb[40], rec.item_emb[0])          # the mapper's vector, not the table's
    ids, scores = rec.recommend(np.arange(30), k=3, new_only=True)             # a shelf of the new items only
    assert (np.sort(ids[:, :2], axis=1) == [40, 41]).all() and (ids[:, 2] == -1).all()
    assert np.allclose(scores[:, :2], np.sort((rec.user_emb @ rec.item_emb[40:].T).numpy(), axis=1)[:, ::-1])
    ids, _ = rec.recommend(np.arange(30), k=42, exclude_seen=False)
    shown = (ids == 40).any(1) & (ids == 41).any(1)
    assert shown.all() if mapper.promote else not (ids >= 40).any()          # in mixed lists only when promoted
    with pytest.raises(UserError, match="text features of new items: expected \\(n, 16\\)"):
        rec.add_items({"image": arrived["image"], "text": arrived["text"][:, :5]})
    with pytest.raises(UserError, match="new items need the features"):
        rec.add_items({"image": arrived["image"]})
    with pytest.raises(UserError, match="load with new_items=True"):
        plain.add_items(arrived)


def test_new_items_on_the_command_line(mapped_run, dataset, tmp_path, capsys):
    folder = tmp_path / "arrived"
    folder.mkdir()
    for m, x in dataset.modality_feats.items():
        np.save(folder / f"{m}_feat.npy", x[[1, 2, 3]])
    assert recommend.main([mapped_run, "--users", "0", "--k", "5", "--new_items", "--add_items", str(folder),
                           "--new_only", "--format", "json"]) == 0
    out = capsys.readouterr()
    listed = json.loads(out.out)["0"]["items"]
    assert sorted(listed) == [40, 41, 42] and "ids 40..42" in out.err
    export = tmp_path / "export"
    assert recommend.main([mapped_run, "--export", str(export), "--new_items", "--add_items", str(folder)]) == 0
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["n_items"] == 43 and manifest["new_items"]["added"] == 3
    assert np.load(export / "new_items.npy").tolist() == [40, 41, 42]
    assert np.load(export / "item_embeddings.npy").shape == (43, 16)
    capsys.readouterr()
    np.save(folder / "text_feat.npy", np.zeros((3, 2), np.float32))
    assert recommend.main([mapped_run, "--users", "0", "--new_items", "--add_items", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: text features of new items") and err.count("error") == 1


def test_a_mapper_is_bound_to_its_student(mapped_run, run_dir, tmp_path, capsys):
    assert recommend.main([run_dir, "--users", "0", "--new_items"]) == 2             # none fitted there
    assert "mapper.pt: file not found (python -m utility.recommend RUN --fit_mapper" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(mapped_run, other)
    obj = torch.load(other / "mapper.pt", weights_only=False)
    obj["student"]["sha256"] = "0" * 64                                                # as if the student changed
    torch.save(obj, other / "mapper.pt")
    assert recommend.main([str(other), "--users", "0", "--new_items"]) == 2
    err = capsys.readouterr().err
    assert "fitted for another student.pt" in err and err.count("\n") == 1
    (other / "mapper.pt").write_bytes(b"not a mapper")
    assert recommend.main([str(other), "--users", "0", "--new_items"]) == 2
    assert "not a content mapper written by this program" in capsys.readouterr().err


def test_new_items_kept_out_of_mixed_lists_unless_validation_promotes_them():
    from types import SimpleNamespace
    # user 0 = (1, 0); items 0..3 score 3, 2, 1, 0; items 2 and 3 are the mapper's (new), item 0 seen
    rec = hand_recommender([[1.0, 0.0]], [[3, 0], [2, 0], [1, 0], [0, 0]], [[1, 0, 0, 0]])
    rec.new_ids = np.array([2, 3])
    rec.new_items = SimpleNamespace(promote=True)
    assert rec.recommend([0], k=3)[0][0].tolist() == [1, 2, 3]
    rec.new_items = SimpleNamespace(promote=False)
    ids, scores = rec.recommend([0], k=3)
    assert ids[0].tolist() == [1, -1, -1] and np.isneginf(scores[0, 1:]).all()
    assert rec.recommend([0], k=2, new_only=True)[0][0].tolist() == [2, 3]   # still ranked among themselves


def test_new_items_are_promoted_only_when_the_gain_exceeds_its_standard_error():
    from utility.cold_start import choose_scale

    class Values:                    # an evaluator whose score_fns are the per-user values themselves
        def per_user(self, values, names):
            return {"recall@20": np.asarray(values, dtype=float)}

    base = np.array([0.2, 0.4, 0.0, 0.6, 0.3, 0.5])
    noise = np.array([0.1, -0.1, 0.1, -0.1, 0.1, -0.05])          # mean +0.0083, se 0.039: noise
    clear = np.array([0.1, 0.12, 0.08, 0.1, 0.11, 0.09])          # mean +0.1, se 0.006
    out = choose_scale(Values(), {1.0: base + noise, 2.0: base - 0.1}.get, base, (1.0, 2.0))
    assert out["scale"] == 1.0 and not out["promote"] and out["gain"] == pytest.approx(noise.mean())
    assert out["se"] == pytest.approx(noise.std(ddof=1) / np.sqrt(6))
    out = choose_scale(Values(), {1.0: base + noise, 2.0: base + clear}.get, base, (1.0, 2.0))
    assert out["scale"] == 2.0 and out["promote"] and out["warm_only"] == pytest.approx(base.mean())

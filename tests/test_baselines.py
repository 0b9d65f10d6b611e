"""bench/baselines.py: EASE, ItemKNN and MostPop against direct computations, selection on validation
only, the exclusion protocol, and the LightGCN convergence rule."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bench import baselines as bl
from tinydata import ROOT, split_matrix, tiny_splits
from utility.evaluate import RankingEvaluator
from utility.load_data import Dataset


def random_binary(n_users=25, n_items=9, density=0.35, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float64)
    x[np.arange(n_items) % n_users, np.arange(n_items)] = 1.0   # every item has a user
    return x


def test_ease_matches_a_dense_numpy_solve_and_its_objective():
    x = random_binary()
    lam = 3.0
    b = bl.ease_weights(bl.gram(sp.csr_matrix(x)), lam).double().numpy()
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    np.testing.assert_allclose(b, np.eye(x.shape[1]) - p / np.diag(p)[None, :], atol=1e-5)
    # column j is the ridge regression of item j on the other items (the constrained least squares)
    for j in range(x.shape[1]):
        others = np.delete(np.arange(x.shape[1]), j)
        a = x[:, others]
        col = np.linalg.solve(a.T @ a + lam * np.eye(others.size), a.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], col, atol=1e-5)
    assert np.all(np.diag(b) == 0)


def test_ease_scores_are_the_users_rows_times_b():
    x = random_binary(seed=1)
    train = sp.csr_matrix(x)
    b = bl.ease_weights(bl.gram(train), 10.0)
    users = torch.tensor([4, 0, 17, 4])
    np.testing.assert_allclose(bl.item_item_scores(train, b)(users).numpy(), x[users.numpy()] @ b.double().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_dense_rows_gathers_any_users_in_any_order():
    x = sp.random(12, 7, density=0.4, format="csr", random_state=3)
    x.data[:] = 1
    ptr, idx = bl.csr_tensors(x)
    users = torch.tensor([11, 2, 2, 0, 5])
    np.testing.assert_array_equal(bl.dense_rows(ptr, idx, users, 7).numpy(), x[users.numpy()].toarray())


@pytest.mark.parametrize("k, shrink", [(1, 0.0), (3, 0.0), (5, 0.0), (3, 4.0)])
def test_itemknn_keeps_the_k_most_similar_items_of_each_target(k, shrink):
    x = random_binary(n_users=40, n_items=10, seed=2)
    train = sp.csr_matrix(x)
    values, indices = bl.knn_neighbours(train, max_k=6, shrink=shrink, block=3)
    s = bl.knn_weights(values, indices, k).to_dense().numpy()
    norms = np.linalg.norm(x, axis=0)
    cos = (x.T @ x) / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(cos, -np.inf)
    for j in range(x.shape[1]):
        kept = np.flatnonzero(s[:, j])
        assert kept.size == k                                      # all similarities here are positive
        assert j not in kept
        assert np.min(cos[kept, j]) >= np.sort(cos[:, j])[-k] - 1e-6   # the k largest
        np.testing.assert_allclose(s[kept, j], cos[kept, j], rtol=1e-5)
    users = torch.arange(x.shape[0])
    np.testing.assert_allclose(bl.item_item_scores(train, bl.knn_weights(values, indices, k))(users).numpy(),
                               x @ s, rtol=1e-5, atol=1e-6)


def test_itemknn_drops_items_without_training_interactions():
    x = random_binary(n_users=20, n_items=6, seed=4)
    x[:, 5] = 0
    values, indices = bl.knn_neighbours(sp.csr_matrix(x), max_k=5)
    s = bl.knn_weights(values, indices, 5).to_dense().numpy()
    assert not s[5].any() and not s[:, 5].any()


def test_most_popular_scores_are_a_copy_per_block():
    """The evaluator writes -inf into the scores; a broadcast view would mask every user's items at once."""
    train, val, _, _ = tiny_splits()
    train, val = split_matrix(train, 30, 40).tocsr(), split_matrix(val, 30, 40).tocsr()
    pop = bl.popularity(train)
    np.testing.assert_array_equal(pop.numpy(), np.asarray(train.sum(0)).ravel())
    evaluator = RankingEvaluator(val, [train], [5, 20], torch.device("cpu"))
    reference = evaluator(lambda users: pop[None, :].repeat(users.numel(), 1).clone())
    assert evaluator(bl.popularity_scores(pop)) == reference
    assert torch.equal(pop, bl.popularity(train))


def _fixed_ranking(order, n_items):
    """score_fn ranking ``order`` first, in that order, for every user."""
    scores = torch.zeros(n_items)
    scores[torch.tensor(order)] = torch.arange(len(order), 0, -1, dtype=torch.float32)
    return lambda users: scores[None, :].repeat(users.numel(), 1)


def _dataset(train, val, test):
    n_users, n_items = train.shape
    return Dataset(name="hand", path="", layout="json", n_users=n_users, n_items=n_items,
                   train=sp.csr_matrix(train), val=sp.csr_matrix(val), test=sp.csr_matrix(test))


def _one_item_per_user(n_users, n_items, item):
    m = np.zeros((n_users, n_items), np.float32)
    m[:, item] = 1
    return m


def test_selection_follows_validation_where_test_disagrees():
    """Grid value v ranks item v first. Validation's items are item 2, test's item 3: the choice must
    be 2, and the test split must be evaluated once, for it."""
    n_users, n_items = 5, 6
    ds = _dataset(_one_item_per_user(n_users, n_items, 0), _one_item_per_user(n_users, n_items, 2),
                  _one_item_per_user(n_users, n_items, 3))
    val_eval, test_eval = bl.make_evaluators(ds, [1], exclude_val=False)
    calls = []

    def counted_test(score_fn):
        calls.append(score_fn)
        return test_eval(score_fn)

    row = bl.tuned_baseline("hand", "v", [1, 3, 2, 4], lambda v: _fixed_ranking([v], n_items), val_eval,
                            counted_test, "recall@1")
    assert row["selected"] == 2 and row["val"]["recall@1"] == 1.0
    assert row["grid"] == {"1": 0.0, "3": 0.0, "2": 1.0, "4": 0.0}
    assert len(calls) == 1 and row["test"]["recall@1"] == 0.0   # test reported for the chosen value, not 3


def test_selection_keeps_the_first_of_tied_values():
    n_users, n_items = 3, 5
    ds = _dataset(_one_item_per_user(n_users, n_items, 0), _one_item_per_user(n_users, n_items, 2),
                  _one_item_per_user(n_users, n_items, 3))
    val_eval, _ = bl.make_evaluators(ds, [1], exclude_val=True)
    chosen, _, _ = bl.select_on_validation([4, 1, 2, 3], lambda v: _fixed_ranking([min(v, 2)], n_items),
                                           val_eval, "recall@1")
    assert chosen == 4     # 4, 2 and 3 all rank item 2 first


def test_training_items_are_excluded_and_validation_items_at_test_unless_kept():
    """The ranking puts the training item 0 first, the validation item 1 second, the test item 2 third."""
    n_users, n_items = 4, 6
    ds = _dataset(_one_item_per_user(n_users, n_items, 0), _one_item_per_user(n_users, n_items, 1),
                  _one_item_per_user(n_users, n_items, 2))
    ranking = _fixed_ranking([0, 1, 2], n_items)
    val_eval, test_eval = bl.make_evaluators(ds, [1], exclude_val=True)
    assert val_eval(ranking)["recall@1"] == 1.0        # training item skipped, the validation item is first
    assert test_eval(ranking)["recall@1"] == 1.0       # training and validation items skipped
    _, test_kept = bl.make_evaluators(ds, [1], exclude_val=False)
    assert test_kept(ranking)["recall@1"] == 0.0       # the validation item now takes the first place


@pytest.mark.parametrize("best, run, patience, cap, expected", [
    (10, 60, 50, 1000, True),      # stopped by patience
    (10, 59, 50, 1000, False),     # ended before its patience ran out
    (960, 1000, 50, 1000, False),  # still improving at the cap
    (950, 1000, 50, 1000, False),  # stopped exactly at the cap: cannot tell
    (949, 999, 50, 1000, True),
])
def test_lightgcn_is_converged_only_when_early_stopping_ended_it(best, run, patience, cap, expected):
    assert bl.converged(best, run, patience, cap) is expected


def test_lightgcn_command_is_the_teacher_without_modalities_under_the_same_protocol():
    args = bl.build_parser().parse_args(["--dataset", "d", "--data_path", "p", "--threads", "1", "--no_exclude_val",
                                         "--topk", "20", "50", "--lightgcn_patience", "7"])
    cmd = bl.lightgcn_command(args, 3, "r.json", "runs")
    for flag in ("--no_modalities", "--no_prompt", "--no_exclude_val"):
        assert flag in cmd
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["--stage"] == "teacher" and pairs["--preset"] == "none" and pairs["--seed"] == "3"
    assert pairs["--early_stopping_patience"] == "7" and pairs["--eval_every"] == "1" and pairs["--epoch"] == "1000"
    assert pairs["--topk"] == "20" and pairs["--threads"] == "1"
    args = bl.build_parser().parse_args(["--dataset", "d"])
    assert "--no_exclude_val" not in bl.lightgcn_command(args, 3, "r.json", "runs")


def test_mean_sd_over_seeds():
    out = bl.mean_sd([{"recall@20": 0.1}, {"recall@20": 0.2}, {"recall@20": 0.3}])
    np.testing.assert_allclose(out["recall@20"], [0.2, 0.1])


def test_command_line_on_tiny_data_prints_the_table_and_writes_json(tiny_json, tmp_path):
    """`python -m bench.baselines` as a user types it."""
    out = str(tmp_path / "b.json")
    proc = subprocess.run([sys.executable, "-m", "bench.baselines", "--dataset", "tiny", "--data_path",
                           os.path.dirname(tiny_json), "--models", "mostpop", "ease", "itemknn", "--ease_lambdas", "1",
                           "10", "--knn_ks", "3", "100", "--threads", "1", "--out", out],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("MostPop", "EASE", "ItemKNN", "recall@20", "ndcg@50", "lambda =", "k = "):
        assert name in proc.stdout
    with open(out) as f:
        result = json.load(f)
    rows = {r["name"]: r for r in result["baselines"]}
    assert rows["EASE"]["selected"] in (1, 10)
    assert tuple(rows["ItemKNN"]["selected"]) in {(k, s) for k in (3, 39) for s in bl.KNN_SHRINKS}   # k capped at 39
    assert result["exclude_val"] is True and set(rows["EASE"]["test"]) >= {"recall@20", "ndcg@20"}


def test_the_multi_modal_peers_train_per_seed_and_report_each_run(tiny_json, tmp_path, capsys):
    out = str(tmp_path / "p.json")
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "freedom", "dragon",
                    "--seeds", "1", "2", "--peer_epochs", "3", "--peer_patience", "5", "--threads", "1",
                    "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "FREEDOM seed 2 (image, text)" in printed and "DRAGON (capped)" in printed   # 3 epochs: capped
    with open(out) as f:
        rows = {r["name"]: r for r in json.load(f)["baselines"]}
    assert [r["seed"] for r in rows["DRAGON"]["runs"]] == [1, 2] and rows["FREEDOM"]["runs"][0]["epochs_run"] == 3
    assert rows["FREEDOM"]["test"]["recall@20"][0] == np.mean([r["test"]["recall@20"] for r in rows["FREEDOM"]["runs"]])
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "mostpop", "freedom",
                    "--vision", "audio"]) == 2
    captured = capsys.readouterr()
    assert "--vision audio" in captured.err and not captured.out   # refused before anything ran


def test_bad_input_is_a_one_line_error_and_writes_nothing(tiny_json, tmp_path, capsys):
    out = str(tmp_path / "b.json")
    assert bl.main(["--dataset", "missing", "--data_path", str(tmp_path), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "ease",
                    "--ease_max_items", "20", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--ease_max_items" in err and err.count("\n") == 1
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--valid_metric", "recall@30"]) == 2
    assert "--valid_metric" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_versus_sets_the_seeds_students_against_each_baseline_on_the_same_users(tiny_json, tmp_path, capsys):
    """--versus: a student that beats EASE on every user of every seed is 'above', by the right amount."""
    from utility.load_data import load_dataset
    ds = load_dataset(tiny_json)
    _, test_eval = bl.make_evaluators(ds, [20], True)
    ease = test_eval.per_user(bl.item_item_scores(ds.train, bl.ease_weights(bl.gram(ds.train), 10.0)))
    runs = []
    for seed, lift in enumerate((0.10, 0.12, 0.08)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps(dict(dataset="tiny", data_path=os.path.dirname(tiny_json),
                                                         teacher={}, exclude_val=True)))
        np.savez(run / "student_test_per_user.npz", users=ease["users"], **{
            m: ease[m] + lift for m in ("recall@20", "ndcg@20")})
        runs.append(str(run))
    out = tmp_path / "b.json"
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "ease",
                    "--ease_lambdas", "10", "--threads", "1", "--out", str(out), "--versus", *runs]) == 0
    printed = capsys.readouterr().out
    assert "student (3 seeds) vs EASE" in printed and "student above" in printed
    c = json.loads(out.read_text())["versus"]["comparisons"]["EASE"]["recall@20"]
    assert c["mean_b"] > c["mean_a"] and c["verdict"] == "B above A"
    assert np.isclose(c["mean_b"] - c["mean_a"], 0.10)
    # a run of other users is refused, as is a folder without the per-user file
    np.savez(tmp_path / "seed0" / "student_test_per_user.npz", users=ease["users"][:-1],
             **{m: ease[m][:-1] for m in ("recall@20", "ndcg@20")})
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "ease",
                    "--ease_lambdas", "10", "--versus", *runs]) == 2
    assert "test users differ" in capsys.readouterr().err
    os.remove(tmp_path / "seed0" / "student_test_per_user.npz")
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "ease",
                    "--ease_lambdas", "10", "--versus", *runs]) == 2
    assert "no student_test_per_user.npz" in capsys.readouterr().err
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "ease",
                    "--versus", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "seed1" / "config.json").write_text(json.dumps(dict(dataset="elsewhere", data_path=".", teacher={})))
    assert bl.main(["--dataset", "tiny", "--data_path", os.path.dirname(tiny_json), "--models", "ease",
                    "--versus", runs[1]]) == 2
    assert "a run on elsewhere, not on tiny" in capsys.readouterr().err


def test_versus_scores_a_run_again_under_another_masking(tiny_json, tmp_path, capsys):
    """A default run (validation items masked at test) compared under --no_exclude_val is scored
    again from its student: its own per-user file would mix two protocols on the same users."""
    from utility import pipeline
    from utility.evaluate import dot_scores
    from utility.load_data import load_dataset
    from utility.recommend import Recommender
    data = os.path.dirname(tiny_json)
    assert pipeline.run_command(["--data_path", data, "--dataset", "tiny", "--runs_dir", str(tmp_path / "runs"),
                                 "--epoch", "2", "--batch_size", "64", "--embed_size", "16", "--no_plot"]) == 0
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    ds = load_dataset(tiny_json)
    student = Recommender.load(str(run), "student")
    scores = dot_scores(student.user_emb, student.item_emb)
    expected = {}
    for exclude_val in (True, False):
        _, test_eval = bl.make_evaluators(ds, [20], exclude_val)
        expected[exclude_val] = test_eval.per_user(scores)["recall@20"].mean()
    assert expected[True] != expected[False]           # the two protocols differ on this data
    for flags, exclude_val in (([], True), (["--no_exclude_val"], False)):
        out = tmp_path / f"versus{exclude_val}.json"
        assert bl.main(["--dataset", "tiny", "--data_path", data, "--models", "ease", "--ease_lambdas", "10",
                        "--threads", "1", "--out", str(out), "--versus", str(run), *flags]) == 0
        c = json.loads(out.read_text())["versus"]["comparisons"]["EASE"]["recall@20"]
        assert c["mean_b"] == pytest.approx(expected[exclude_val], abs=1e-6)
    capsys.readouterr()

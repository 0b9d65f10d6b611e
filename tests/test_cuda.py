"""CUDA code paths. Skipped without a CUDA device; bench/gpu_check.sh runs them on one."""
import json
import os

import pytest
import torch

from utility import pipeline
from Models import Teacher
from tinydata import split_matrix, tiny_splits
from utility.config import TeacherConfig
from utility.evaluate import RankingEvaluator, dot_scores
from utility.features import item_hard_tokens
from utility.graph import build_graphs
from utility.objectives import teacher_terms

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _parts(device):
    train, _, _, feats = tiny_splits(n_users=60, n_items=80, seed=3)
    mat = split_matrix(train, 60, 80).tocsr()
    tokens = torch.from_numpy(item_hard_tokens(feats, 8)).to(device)
    return build_graphs(mat, device), {m: torch.from_numpy(x).to(device) for m, x in feats.items()}, tokens


def test_teacher_and_losses_match_cpu():
    cfg = TeacherConfig(embed_size=8, knn_k=0)
    outs = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        torch.manual_seed(0)
        teacher = Teacher(*_parts(device), cfg).to(device)
        teacher.eval()
        users = torch.tensor([0, 5, 9], device=device)
        pos, neg = torch.tensor([1, 2, 3], device=device), torch.tensor([70, 71, 72], device=device)
        out = teacher()
        loss = sum(teacher_terms(teacher, out, users, pos, neg, cfg).values())
        loss.backward()
        outs[name] = (out.user.detach().cpu(), loss.item(), teacher.user_emb.grad.cpu())
    assert torch.allclose(outs["cpu"][0], outs["cuda"][0], atol=1e-5)
    assert outs["cpu"][1] == pytest.approx(outs["cuda"][1], rel=1e-5)
    assert torch.allclose(outs["cpu"][2], outs["cuda"][2], atol=1e-6)


def test_evaluator_matches_cpu():
    import scipy.sparse as sp
    train = sp.random(50, 30, density=0.2, random_state=1, format="csr")
    test = sp.random(50, 30, density=0.1, random_state=2, format="csr")
    test = (test - test.multiply(train)).tocsr()
    test.eliminate_zeros()
    gen = torch.Generator().manual_seed(0)
    user, item = torch.randn(50, 8, generator=gen), torch.randn(30, 8, generator=gen)
    cpu = RankingEvaluator(test, [train], [5, 20], torch.device("cpu"))(dot_scores(user, item))
    gpu = RankingEvaluator(test, [train], [5, 20], torch.device("cuda"))(dot_scores(user.cuda(), item.cuda()))
    assert cpu == pytest.approx(gpu)


def test_end_to_end_on_cuda_matches_cpu(tmp_path, tiny_json):
    """The same run on both devices: the same initial weights and batches, so nearly the same numbers."""
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        code = pipeline.run_command(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                          "--runs_dir", str(tmp_path / "runs"), "--device", device, "--epoch", "3",
                          "--embed_size", "16", "--batch_size", "64",
                          "--results_json", str(out), "--no_plot"])
        assert code == 0
        results[device] = json.loads(out.read_text())
    assert results["cuda"]["device"].startswith("cuda")
    for stage in ("teacher", "student"):
        for split in ("val", "test"):
            for metric in ("recall@20", "ndcg@20"):
                assert results["cuda"][stage][split][metric] == pytest.approx(
                    results["cpu"][stage][split][metric], abs=0.03), (stage, split, metric)


def test_new_items_are_fitted_and_served_on_cuda(tmp_path, tiny_json):
    """The content mapper fitted and served on the GPU, and items added there, as on the CPU."""
    import numpy as np
    from utility import recommend
    from utility.load_data import load_dataset
    code = pipeline.run_command(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                                 "--runs_dir", str(tmp_path / "runs"), "--epoch", "2", "--embed_size", "16",
                                 "--no_plot"])
    assert code == 0
    (run_dir,) = (tmp_path / "runs" / os.path.basename(tiny_json)).iterdir()
    assert recommend.main([str(run_dir), "--fit_mapper", "--device", "cuda"]) == 0
    rec = recommend.Recommender.load(str(run_dir), device="cuda", new_items=True)
    feats = load_dataset(tiny_json).modality_feats
    ids = rec.add_items({m: x[:3] for m, x in feats.items()})
    top, _ = rec.recommend(np.arange(5), k=3, new_only=True)
    assert rec.item_emb.is_cuda and sorted(top[0].tolist()) == ids.tolist()
    cpu = recommend.Recommender.load(str(run_dir), new_items=True)
    cpu.add_items({m: x[:3] for m, x in feats.items()})
    assert torch.allclose(rec.item_emb.cpu(), cpu.item_emb, atol=1e-4)

"""Two CPU processes (Gloo) under torchrun against one process with the same global batch."""
import glob
import json
import os
import subprocess
import sys

import pytest

from data.synthetic import make_synthetic
from tinydata import ROOT

# --item_teacher none: the student then starts from the teacher's own embeddings. With the EASE blend it
# starts from a randomised SVD of the blended scores, whose basis (not its scores) moves with the last bits
# of the teacher's weights on data this small (near-equal singular values), and the embedding KD reads that
# basis.
COMMON = ["--epoch", "2", "--embed_size", "16", "--threads", "1", "--no_plot", "--item_teacher", "none"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic("tiktok", root / "synth", scale=0.02, seed=3, verbose=False)
    return str(root)


def results(runs):
    folders = glob.glob(os.path.join(str(runs), "synth", "*"))
    assert len(folders) == 1, folders          # exactly one run folder, written by rank 0
    with open(os.path.join(folders[0], "results.json")) as f:
        return json.load(f), folders[0]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PROMPTMM_CHECK_REPLICAS="1")   # every rank's weights compared per step
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          os.path.join(ROOT, "main.py"), "--data_path", dataset, "--dataset", "synth",
                          "--runs_dir", str(tmp_path / "ddp"), "--batch_size", "64", *COMMON],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--data_path", dataset, "--dataset", "synth",
                          "--runs_dir", str(tmp_path / "single"), "--batch_size", "128", *COMMON],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp, folder = results(tmp_path / "ddp")
    single, _ = results(tmp_path / "single")
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["world_size"] == 2
    for stage in ("teacher", "student"):
        for split in ("val", "test"):
            for metric, value in single[stage][split].items():
                assert ddp[stage][split][metric] == pytest.approx(value, rel=1e-3, abs=1e-4), (stage, split, metric)
        for a, b in zip(ddp[f"{stage}_history"], single[f"{stage}_history"]):
            assert a["terms"] == pytest.approx(b["terms"], rel=1e-4)
    log = open(os.path.join(folder, "log.txt")).read()
    assert "global batch 128" in log
    # the replica check ran after every step of both stages (a difference would have failed the run)
    steps = sum(-(-row_count(dataset) // 128) for _ in range(2))
    for stage in ("teacher", "student"):
        assert f"{stage}: parameters identical on all ranks after each of {steps} steps" in log


def row_count(dataset):
    from utility.load_data import load_dataset
    return int(load_dataset(os.path.join(dataset, "synth")).train.nnz)


@pytest.mark.parametrize("world, rows", [(2, 1), (2, 5), (3, 2), (4, 9), (2, 0)])
def test_ranks_take_each_row_of_a_batch_exactly_once(world, rows):
    """Also a final batch smaller than the world: its rows are not taken by every rank."""
    from utility.distributed import Distributed
    taken = []
    for rank in range(world):
        d = Distributed.__new__(Distributed)    # no process group needed to cut a batch
        d.rank, d.world_size = rank, world
        taken += list(range(rows))[d.shard(rows)]
    assert sorted(taken) == list(range(rows))


def _replica_worker(rank, port, perturb, outcome):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from utility.distributed import Distributed, exit_without_finalizing
    d = Distributed("cpu")
    params = [torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))]
    # gradients weighted by rows: rank 0 has 3 rows of gradient 1, rank 1 has 1 row of gradient 5
    params[0].grad = torch.full((2, 3), 1.0 if rank == 0 else 5.0)
    d.sync_gradients(params, 3 if rank == 0 else 1, 4)
    outcome[f"grad{rank}"] = params[0].grad[0, 0].item()
    if perturb and rank == 1:
        with torch.no_grad():
            params[0][0, 0] += 1e-6
    try:
        d.check_replicas(params)
        outcome[f"check{rank}"] = "same"
    except RuntimeError:
        outcome[f"check{rank}"] = "differ"
    dist.destroy_process_group()
    exit_without_finalizing(0)


@pytest.mark.parametrize("perturb", [False, True])
def test_gradient_weighting_and_replica_check(perturb):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = mp.Manager().dict()
    mp.spawn(_replica_worker, args=(port, perturb, outcome), nprocs=2, join=True)
    assert outcome["grad0"] == outcome["grad1"] == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)
    expected = "differ" if perturb else "same"
    assert outcome["check0"] == outcome["check1"] == expected

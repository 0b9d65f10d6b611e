"""Kill a run with SIGKILL mid-training, resume it, and get exactly the uninterrupted numbers."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from data.synthetic import make_synthetic
from tinydata import ROOT

ARGS = ["--epoch", "4", "--batch_size", "64", "--embed_size", "16",
        "--threads", "1", "--no_plot", "--early_stopping_patience", "10"]

pytestmark = pytest.mark.slow   # kills and resumes training subprocesses


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic("tiktok", root / "synth", scale=0.03, seed=1, verbose=False)
    return str(root)


def start(data_root, runs, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--data_path", data_root, "--dataset", "synth",
           "--runs_dir", str(runs), *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume(run_dir):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--resume", run_dir], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, runs, text, timeout=120):
    """The run folder, once its log.txt contains ``text``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = glob.glob(os.path.join(str(runs), "synth", "*", "log.txt"))
        if logs and text in open(logs[0]).read():
            return os.path.dirname(logs[0])
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared")


def epoch_seconds(run_dir, stage, epoch):
    line = next(l for l in open(os.path.join(run_dir, "log.txt")) if l.startswith(f"{stage:<7} epoch {epoch:4d}"))
    return float(line.rsplit("|", 1)[1].split("s")[0])


def numbers(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    out = {}
    for stage in ("teacher", "student"):
        out[stage] = dict(val=r[stage]["val"], test=r[stage]["test"], best=r[stage]["best_epoch"],
                          losses=[h["terms"] for h in r[f"{stage}_history"]],
                          curve=[h["val"] for h in r[f"{stage}_history"]])
    return out


@pytest.fixture(scope="module")
def expected(dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("straight")
    straight = start(dataset, runs)
    assert straight.wait(timeout=300) == 0, straight.communicate()
    return numbers(glob.glob(str(runs / "synth" / "*"))[0])


def test_sigkill_and_resume_reaches_the_same_numbers(dataset, expected, tmp_path):
    runs = tmp_path / "b"
    proc = start(dataset, runs)
    run_dir = wait_for_line(proc, runs, "teacher epoch    2")   # epoch 1's checkpoint is on disk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = resume(run_dir)
    wait_for_line(proc, runs, "student epoch    2")
    proc.send_signal(signal.SIGKILL)                      # inside the distillation stage
    proc.wait()
    proc = resume(run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert numbers(run_dir) == expected


def test_sigint_stops_at_a_batch_writes_a_checkpoint_and_says_how_to_resume(dataset, expected, tmp_path):
    runs = tmp_path / "c"
    proc = start(dataset, runs)
    run_dir = wait_for_line(proc, runs, "student epoch    1")
    time.sleep(0.3 * epoch_seconds(run_dir, "student", 1))    # about a third into student epoch 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"python main.py --resume {run_dir}" in out
    assert "Traceback" not in err
    assert os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    proc = resume(run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert re.search(r"from the student stage, epoch \d+ batch [1-9]", out), out   # resumed mid-epoch
    assert numbers(run_dir) == expected

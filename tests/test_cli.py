"""The command line as a user types it."""
import glob
import json
import os
import subprocess
import sys

import pytest

from tinydata import ROOT


@pytest.mark.slow
def test_dry_run_of_the_default_command(tmp_path):
    """`python main.py --dry_run`: the default movielens data (built on first use), one short epoch per stage."""
    proc = subprocess.run([sys.executable, "main.py", "--dry_run", "--no_plot", "--runs_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = glob.glob(os.path.join(str(tmp_path), "movielens", "*"))
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    for stage in ("teacher", "student"):
        assert results[stage]["epochs_run"] == 1 and results[stage]["best_epoch"] == 1
    assert "MostPopular" in proc.stdout and "student (lightgcn)" in proc.stdout


def test_deprecated_verbose_still_sets_eval_every():
    from utility.parser import parse_args
    with pytest.warns(FutureWarning, match="--eval_every"):
        args = parse_args(["--verbose", "3"])
    assert args.eval_every == 3
    assert parse_args(["--eval_every", "4"]).eval_every == 4

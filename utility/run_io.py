"""Run folders, the log, and atomic writes of checkpoints and JSON files."""
import json
import os
import sys
import tempfile
import time

import torch


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(obj, path):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def new_run_dir(runs_dir, dataset):
    """runs_dir/<dataset>/<YYYYmmdd-HHMMSS>[-N], created empty."""
    base = os.path.join(runs_dir, dataset, time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


class Logger:
    """Prints lines to stdout and appends them to ``log.txt`` once the run folder exists."""

    def __init__(self, enabled=True, echo=True):
        self.enabled = enabled   # False on the non-main ranks of a distributed run
        self.echo = echo         # False: log.txt only (e.g. the runs of a tuner)
        self.file = None
        self.path = None
        self.pending = []

    def open(self, path):
        if not self.enabled:
            return
        self.path = path
        self.file = open(path, "a", encoding="utf-8")
        for line in self.pending:
            self.file.write(line + "\n")
        self.pending = []
        self.file.flush()

    def __call__(self, line=""):
        if not self.enabled:
            return
        if self.echo:
            print(line, flush=True)
        if self.file is None:
            self.pending.append(line)
        else:
            self.file.write(line + "\n")
            self.file.flush()

    def warn(self, message):
        if not self.enabled:
            return
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if self.file is None:
            self.pending.append(f"warning: {message}")
        else:
            self.file.write(f"warning: {message}\n")
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def write_report(text, folder, name):
    """Print a benchmark's markdown report and write it to ``folder/name``."""
    print(text)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"written {path}")
    return path

"""Train one MMRec model with MMRec's own trainer and evaluator on CPU, one value per hyper-parameter,
and write its per-epoch validation record as JSON. Started by ``bench/peers.py`` in a subprocess,
with MMRec's python and MMRec's ``src`` folder as the working directory; nothing of the project
imports it, and it imports nothing of the project.

    python mmrec_runner.py --model FREEDOM --dataset NAME --epochs 1000 --stopping_step 20 \
        --set dropout=0.9 --set reg_weight=0.001 --threads 1 --out FILE.json

Compatibility with the current numpy, scipy and a CPU-only torch is restored at run time (MMRec's
files are not changed): ``np.float``, ``scipy.sparse.dok_matrix._update``, ``Tensor.cuda`` without a
GPU, and stand-ins for the image and plotting modules that the trainer and dataset import unused.
"""
import argparse
import ast
import json
import logging
import os
import sys
import time
import types

import numpy as np
import scipy.sparse as sp
import torch


def stand_in_attribute(name):
    """Any name imported from a stand-in module is a placeholder class; module dunders stay absent."""
    if name.startswith("__"):
        raise AttributeError(name)
    return object


def restore_compatibility():
    """What MMRec expects of older numpy / scipy and of a GPU build, on a CPU with today's packages."""
    np.float = float
    sp.dok_matrix._update = lambda self, entries: self._dict.update(entries)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    stand_in = types.ModuleType("stand_in")
    stand_in.__getattr__ = stand_in_attribute
    for name in ("matplotlib", "matplotlib.pyplot", "lmdb", "utils.data_utils"):
        sys.modules.setdefault(name, stand_in)


def parse_value(text):
    """A --set value as a Python literal (numbers, lists, strings)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def single_values(config, names):
    """Each hyper-parameter MMRec would loop over, as one value: selection happens outside, on validation."""
    for name in names:
        value = config[name]
        if isinstance(value, list):
            if len(value) != 1:
                raise SystemExit(f"error: {name} has {len(value)} values {value}; give one with --set {name}=VALUE")
            config[name] = value[0]


def record_validations(trainer_module, history):
    """Wrap the trainer's early-stopping rule so that every validation is recorded."""
    rule = trainer_module.early_stopping

    def recorded(value, best, cur_step, max_step, bigger=True):
        out = rule(value, best, cur_step, max_step, bigger)
        history.append(dict(valid_score=float(value), improved=bool(out[3]), stop=bool(out[2]), time=time.time()))
        return out

    trainer_module.early_stopping = recorded


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--stopping_step", type=int, default=20)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    restore_compatibility()
    sys.path.insert(0, os.getcwd())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    import common.trainer as trainer_module
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, init_seed

    settings = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = Config(args.model, args.dataset, dict(use_gpu=False, epochs=args.epochs, stopping_step=args.stopping_step,
                                                   eval_step=1, seed=args.seed, **settings))
    single_values(config, ["seed"] + list(config["hyper_parameters"]))
    logging.info(config)

    start = time.time()
    train, valid, test = RecDataset(config).split()
    for split in (train, valid, test):
        logging.info(split)   # describing a split also sets the counts its data loader reads
    train_data = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
    valid_data = EvalDataLoader(config, valid, additional_dataset=train, batch_size=config["eval_batch_size"])
    test_data = EvalDataLoader(config, test, additional_dataset=train, batch_size=config["eval_batch_size"])
    init_seed(config["seed"])
    train_data.pretrain_setup()
    model = get_model(config["model"])(config, train_data).to(config["device"])
    history = []
    record_validations(trainer_module, history)
    trainer = trainer_module.Trainer(config, model, False)
    _, best_valid, best_test = trainer.fit(train_data, valid_data=valid_data, test_data=test_data, saved=False)
    result = dict(model=args.model, dataset=args.dataset, settings=settings, seed=config["seed"], epochs=args.epochs,
                  stopping_step=args.stopping_step, valid_metric=config["valid_metric"].lower(),
                  history=history, best_valid=best_valid, best_test=best_test, seconds=time.time() - start,
                  n_valid_users=len(valid_data.eval_u) if hasattr(valid_data, "eval_u") else None)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()

"""One training loop for both stages: epochs of sampled batches, validation, early stopping,
and a resumable position (epoch, batch) that a checkpoint can capture at any batch boundary.

A :class:`Stage` says what is trained (modules, optimiser, loss, embeddings to evaluate); a
:class:`Run` holds what both stages share (data sampler, evaluators, log, run folder).
``train_stage`` runs epochs (``run_epoch``) and ends each (``end_epoch``: validate, log, stop
early, save); ``finish_stage`` reloads the best weights and tests them once.
"""
import copy
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from utility.config import TrainConfig
from utility.evaluate import dot_scores
from utility.run_io import atomic_write, save_checkpoint

CHECKPOINT = "checkpoint.pt"


class EarlyStopping:
    """Tracks the best validation score; stops after ``patience`` evaluations without improvement."""

    def __init__(self, patience):
        self.patience = patience
        self.best_score = float("-inf")
        self.best_epoch = 0
        self.bad_evals = 0

    def update(self, score, epoch):
        """Record one evaluation; True when it is a new best."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_evals = score, epoch, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self):
        return self.bad_evals >= self.patience

    def state_dict(self):
        return dict(best_score=self.best_score, best_epoch=self.best_epoch, bad_evals=self.bad_evals)

    def load_state_dict(self, state):
        self.best_score, self.best_epoch, self.bad_evals = state["best_score"], state["best_epoch"], state["bad_evals"]


class NonFiniteLoss(Exception):
    """A loss term became NaN or infinite and the policy is to stop."""

    exit_code = 3

    def __init__(self, stage, epoch, terms):
        self.stage, self.epoch, self.terms = stage, epoch, terms
        super().__init__(f"non-finite loss term(s) {', '.join(terms)} in the {stage} stage at epoch {epoch}; "
                         f"the last good checkpoint is kept (lower the learning rate)")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: training stopped at a batch boundary after writing a checkpoint."""

    def __init__(self, signum):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag that the loop checks after every batch."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:   # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@dataclass
class StageState:
    """Where a stage is: everything the loop needs to continue exactly from a checkpoint."""

    epoch: int = 1                    # epoch in progress (or next to start)
    batch: int = 0                    # next batch of that epoch
    sampler_state: dict = None        # sampler RNG state at the start of ``epoch``
    sums: dict = field(default_factory=dict)
    partial_seconds: float = 0.0
    history: list = field(default_factory=list)
    stopper: dict = None              # EarlyStopping.state_dict()
    train_seconds: list = field(default_factory=list)
    eval_seconds: list = field(default_factory=list)
    done: bool = False


@dataclass
class Stage:
    """What one stage trains; everything else about the loop is shared by both stages."""

    name: str                         # "teacher" or "student": the names of its files and log lines
    kind: str                         # what the summary calls the model ("teacher", "lightgcn", "mlp")
    modules: dict                     # name -> module, saved in checkpoints and restored on resume
    train_modules: list               # put in training mode for each epoch
    optimizer: torch.optim.Optimizer
    loss: Callable                    # (users, pos, neg, extra) -> {term name: weighted scalar}
    embeddings: Callable              # () -> (user, item) embeddings for evaluation
    cfg: TrainConfig
    extra_negatives: int = 0          # K extra negatives per row (list-wise KD)
    params: int = 0                   # parameter count reported in the summary
    best_models: dict = None          # state dicts of the best validation epoch so far


@dataclass
class Run:
    """The parts of a run every stage uses."""

    config: dict                      # the run's config, stored in every checkpoint
    data: dict                        # the dataset's signature, stored in every checkpoint
    device: torch.device
    sampler: Any
    val_eval: Any
    test_eval: Any
    log: Any
    run_dir: str
    results: dict
    dist: Any = None                  # utility.distributed.Distributed under torchrun
    resume: dict = None               # the checkpoint an interrupted run continues from
    monitor: Callable = None          # monitor(stage name, epoch, validation score) after each validation
    check_replicas: bool = False
    replica_checks: int = 0           # steps after which every rank was found to hold the same weights
    stop_flag: StopFlag = field(default_factory=StopFlag)

    @property
    def writer(self):
        """Only one process writes files."""
        return self.dist is None or self.dist.is_main

    def stop_requested(self):
        requested = self.stop_flag.signum is not None
        return requested if self.dist is None else self.dist.any(requested)


def format_metrics(metrics, keys=("recall@20", "ndcg@20")):
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


# ---------------------------------------------------------------- checkpoints

def rng_states():
    states = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint(stage, run, state):
    """The one checkpoint format: ``checkpoint.pt`` (every epoch) and ``<stage>.pt`` (best) alike."""
    stopper = state.stopper or EarlyStopping(stage.cfg.patience).state_dict()
    return dict(stage=stage.name, epoch=len(state.history), models={k: m.state_dict() for k, m in stage.modules.items()},
                optimizer=stage.optimizer.state_dict(), best_score=stopper["best_score"],
                best_epoch=stopper["best_epoch"], stopper=stopper, state=asdict(state), rng=rng_states(),
                sampler=run.sampler.get_state(), config=run.config, data=run.data, results=run.results)


def save(stage, run, state, *names):
    if run.writer:
        ckpt = checkpoint(stage, run, state)
        for name in names:
            save_checkpoint(ckpt, os.path.join(run.run_dir, name))


def start_stage(stage, run):
    """A fresh state, or the interrupted run's own when it stopped in this stage."""
    if run.resume is None or run.resume["stage"] != stage.name:
        return StageState()
    ckpt = run.resume
    for name, module in stage.modules.items():
        module.load_state_dict(ckpt["models"][name])
    stage.optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_states(ckpt["rng"])
    run.sampler.set_state(ckpt["sampler"])
    best_file = os.path.join(run.run_dir, f"{stage.name}.pt")
    if ckpt["best_epoch"] and os.path.isfile(best_file):
        stage.best_models = torch.load(best_file, map_location=run.device, weights_only=False)["models"]
    return StageState(**ckpt["state"])


# ---------------------------------------------------------------- the loop

def train_stage(stage, run):
    """Train until ``cfg.epochs`` or early stopping on the validation ``cfg.valid_metric``."""
    state = start_stage(stage, run)
    with run.stop_flag:
        while not state.done:
            end_epoch(stage, run, state, *run_epoch(stage, run, state))
    return state


def epoch_batches(stage, run, state):
    """The epoch's global batches from ``state.batch`` on, as (index, [users, pos, neg, extra]).

    The whole epoch is sampled at its start; resuming mid-epoch replays that sampling from the
    sampler state recorded when the epoch began, then skips the batches already trained.
    """
    if state.batch == 0:
        state.sampler_state = run.sampler.get_state()
    else:
        run.sampler.set_state(state.sampler_state)
    arrays = [None if a is None else torch.as_tensor(a, device=run.device)
              for a in run.sampler.epoch(stage.extra_negatives)]
    step = stage.cfg.batch_size * (1 if run.dist is None else run.dist.world_size)
    starts = list(range(0, arrays[0].numel(), step))[:stage.cfg.max_batches]
    batches = ((i, [None if a is None else a[starts[i]: starts[i] + step] for a in arrays])
               for i in range(state.batch, len(starts)))
    return len(starts), batches


def run_epoch(stage, run, state):
    """One epoch of steps: (row-weighted sums of each loss term, number of batches, seconds taken)."""
    start = time.perf_counter()
    n_batches, batches = epoch_batches(stage, run, state)
    for module in stage.train_modules:
        module.train()
    sums = {k: torch.as_tensor(v, device=run.device) for k, v in state.sums.items()}
    bad_terms = {}
    quiet = None if run.writer else True
    for index, batch in tqdm(batches, total=n_batches - state.batch, desc=f"{stage.name} epoch {state.epoch}",
                             leave=False, dynamic_ncols=True, disable=quiet):
        terms, share = train_step(stage, run, batch)
        for name, value in terms.items():
            value = value.detach()
            bad_terms[name] = bad_terms.get(name, False) | ~torch.isfinite(value)
            sums[name] = sums.get(name, 0.0) + value * share
        state.batch = index + 1
        if state.batch < n_batches and run.stop_requested():
            _check_finite(bad_terms, stage.name, state.epoch, run.dist)
            state.sums = {k: float(v) for k, v in sums.items()}
            state.partial_seconds += time.perf_counter() - start
            save(stage, run, state, CHECKPOINT)
            raise Interrupted(run.stop_flag.signum or signal.SIGTERM)
    _check_finite(bad_terms, stage.name, state.epoch, run.dist)
    return sums, n_batches, state.partial_seconds + time.perf_counter() - start


def train_step(stage, run, batch):
    """One optimiser step on this process's rows of a global batch.

    Returns (loss terms, this process's share of the batch's rows).
    """
    global_rows = batch[0].numel()
    if run.dist is not None:
        mine = run.dist.shard(global_rows)
        batch = [None if a is None else a[mine] for a in batch]
    local_rows = batch[0].numel()
    stage.optimizer.zero_grad(set_to_none=True)
    terms = stage.loss(*batch) if local_rows else {}
    loss = sum(terms.values()) if terms else torch.zeros((), device=run.device)
    if terms:
        loss.backward()
    params = None if run.dist is None else [p for group in stage.optimizer.param_groups for p in group["params"]]
    if run.dist is not None:
        run.dist.sync_gradients(params, local_rows, global_rows)
    stage.optimizer.step()
    if run.check_replicas and run.dist is not None:
        run.dist.check_replicas(params)   # raises when the ranks' parameters differ
        run.replica_checks += 1
    return terms, local_rows / global_rows


def epoch_losses(sums, n_batches, dist=None):
    """Each term's mean over the epoch's batches (summed over processes first)."""
    if dist is not None:   # every rank's share of each batch mean, summed
        names = loss_names(sums, dist)
        total = dist.sum(torch.stack([torch.as_tensor(sums.get(n, 0.0), dtype=torch.float32, device=dist.device)
                                      for n in names])) if names else []
        sums = dict(zip(names, total))
    return {name: float(value) / max(1, n_batches) for name, value in sums.items()}


def end_epoch(stage, run, state, sums, n_batches, seconds):
    """Validate (every ``eval_every`` epochs), log the epoch, stop early, and save."""
    cfg, epoch = stage.cfg, state.epoch
    stopper = EarlyStopping(cfg.patience)
    if state.stopper is not None:
        stopper.load_state_dict(state.stopper)
    losses = epoch_losses(sums, n_batches, run.dist)
    state.train_seconds.append(seconds)
    record = dict(epoch=epoch, loss=sum(losses.values()), terms=losses, seconds=seconds)
    line = f"{stage.name:<7} epoch {epoch:4d} | loss {record['loss']:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
    improved = False
    if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
        start = time.perf_counter()
        record["val"] = run.val_eval(dot_scores(*stage.embeddings()))
        state.eval_seconds.append(time.perf_counter() - start)
        improved = stopper.update(record["val"][cfg.valid_metric], epoch)
        if run.monitor is not None:   # e.g. a tuner's pruner, which may end the run by raising
            run.monitor(stage.name, epoch, record["val"][cfg.valid_metric])
        if improved:
            stage.best_models = {k: copy.deepcopy(m.state_dict()) for k, m in stage.modules.items()}
        keys = dict.fromkeys([cfg.valid_metric, "recall@20", "ndcg@20"])
        line += f" | val {format_metrics(record['val'], keys)} | {seconds:.1f}s+{state.eval_seconds[-1]:.2f}s"
        line += " *" if improved else ""
    else:
        line += f" | {seconds:.1f}s"
    run.log(line)
    state.history.append(record)
    state.epoch, state.batch, state.sums, state.partial_seconds = epoch + 1, 0, {}, 0.0
    state.stopper = stopper.state_dict()
    if stopper.should_stop:
        run.log(f"{stage.name}: early stopping at epoch {epoch}; best validation {cfg.valid_metric} "
                f"{stopper.best_score:.4f} at epoch {stopper.best_epoch}")
    state.done = stopper.should_stop or state.epoch > cfg.epochs
    # the best file first: a run killed between the two writes resumes from the previous epoch's
    # checkpoint and replays this epoch, which improves again and replaces the best weights
    save(stage, run, state, *([f"{stage.name}.pt"] if improved else []), CHECKPOINT)
    if not state.done and run.stop_requested():
        raise Interrupted(run.stop_flag.signum or signal.SIGTERM)


def finish_stage(stage, run, state):
    """Reload the best validation weights, test them once, and record the stage's summary."""
    stopper = state.stopper or {}
    best_epoch = stopper.get("best_epoch", 0)
    if not best_epoch:
        raise RuntimeError(f"{stage.name}: no validation ran, so no epoch was selected")
    for name, module in stage.modules.items():
        module.load_state_dict(stage.best_models[name])
    val = state.history[best_epoch - 1]["val"]
    test = test_once(stage.name, run, dot_scores(*stage.embeddings()))
    run.results[stage.name] = stage_summary(stage.kind, state, best_epoch, stage.params, val, test)
    run.results[f"{stage.name}_history"] = state.history
    if run.check_replicas and run.dist is not None:
        run.log(f"{stage.name}: parameters identical on all ranks after each of {run.replica_checks} steps")
        run.replica_checks = 0
    run.log(f"{stage.name} best epoch {best_epoch}: val {format_metrics(val)}"
            + ("" if test is None else f" | test {format_metrics(test)}"))
    return run.results[stage.name]


def test_once(name, run, score_fn):
    """The test metrics of a stage's selected model; each test user's Recall@20 and NDCG@20 go to
    ``<name>_test_per_user.npz`` for paired tests between runs (single-process runs). None, and
    nothing evaluated, in a run without a test split (--no_test)."""
    if run.test_eval is None:
        return None
    test = run.test_eval(score_fn)
    if run.dist is None:
        per_user = run.test_eval.per_user(score_fn)
        atomic_write(os.path.join(run.run_dir, f"{name}_test_per_user.npz"), lambda f: np.savez(f, **per_user))
    return test


def stage_summary(kind, state, best_epoch, params, val, test):
    return dict(kind=kind, best_epoch=best_epoch, epochs_run=len(state.history), params=params,
                seconds_per_epoch=float(np.mean(state.train_seconds)) if state.train_seconds else 0.0,
                eval_seconds=float(np.median(state.eval_seconds)) if state.eval_seconds else 0.0,
                val=val, test=test)


def loss_names(sums, dist):
    """The loss-term names of all ranks (a rank without rows in some batch may lack some), in order."""
    names = []
    for rank_names in dist.broadcast_all(list(sums)):
        names += [n for n in rank_names if n not in names]
    return names


def _check_finite(bad_terms, stage, epoch, dist=None):
    bad = [name for name, flag in bad_terms.items() if bool(flag)]
    if dist is not None:
        bad = sorted(set().union(*dist.broadcast_all(bad)))
    if bad:
        raise NonFiniteLoss(stage, epoch, bad)

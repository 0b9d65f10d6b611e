"""One training loop for both stages: epochs of sampled batches, validation, early stopping,
and a resumable position (epoch, batch) that a checkpoint can capture at any batch boundary."""
import signal
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm


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
                         f"the last good checkpoint is kept (lower the learning rate, or --nan_policy skip)")


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
    skipped: int = 0                  # batches skipped under --nan_policy skip (this epoch)
    history: list = field(default_factory=list)
    stopper: dict = None
    train_seconds: list = field(default_factory=list)
    eval_seconds: list = field(default_factory=list)
    done: bool = False


def format_metrics(metrics, keys=("recall@20", "ndcg@20")):
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys)


def train_stage(stage, *, train_modules, optimizer, loss_terms, sampler, batch_size, extra_negatives,
                evaluate_val, max_epochs, patience, verbose, on_best, save, log, device, state=None,
                stop_flag=None, nan_policy="stop", max_batches=None, dist=None, check_replicas=False):
    """Train until ``max_epochs`` or early stopping on validation Recall@20.

    loss_terms(users, pos, neg, extra) -> {name: scalar tensor}; their sum is minimised.
    evaluate_val() -> metrics; on_best(epoch, metrics) runs at each new best; save(state) writes a
    checkpoint (after every epoch, and when a stop is requested). ``state`` resumes a stage.
    With ``dist`` (utility.distributed.Distributed), ``batch_size`` is per rank: each global batch
    of world_size * batch_size rows is split across ranks and the gradients are all-reduced.
    Returns (state, early_stopping).
    """
    state = state or StageState()
    world = dist.world_size if dist is not None else 1
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stop_requested = ((lambda: stop_flag is not None and stop_flag.signum is not None) if dist is None else
                      (lambda: dist.any(stop_flag is not None and stop_flag.signum is not None)))
    stopper = EarlyStopping(patience)
    if state.stopper is not None:
        stopper.load_state_dict(state.stopper)
    while not state.done and state.epoch <= max_epochs and not stopper.should_stop:
        epoch = state.epoch
        if state.batch == 0:   # (sums, seconds and skips were reset when the previous epoch ended)
            state.sampler_state = sampler.get_state()
        else:  # resuming mid-epoch: replay the epoch's sampling from its starting state
            sampler.set_state(state.sampler_state)
        start = time.perf_counter()
        users, pos, neg, extra = (None if a is None else torch.as_tensor(a, device=device)
                                  for a in sampler.epoch(extra_negatives))
        for module in train_modules:
            module.train()
        step = batch_size * world
        starts = list(range(0, users.numel(), step))
        if max_batches is not None:
            starts = starts[:max_batches]
        sums = {k: torch.as_tensor(v, device=device) for k, v in state.sums.items()}
        bad_terms = {}
        for index in tqdm(range(state.batch, len(starts)), desc=f"{stage} epoch {epoch}", leave=False,
                          dynamic_ncols=True, disable=None if dist is None or dist.is_main else True):
            rows = slice(starts[index], starts[index] + step)
            global_rows = users[rows].numel()
            mine = slice(None) if dist is None else dist.shard(global_rows)
            batch = [None if a is None else a[rows][mine] for a in (users, pos, neg, extra)]
            local_rows = batch[0].numel()
            optimizer.zero_grad(set_to_none=True)
            terms = loss_terms(*batch) if local_rows else {}
            loss = sum(terms.values()) if terms else torch.zeros((), device=device)
            non_finite = nan_policy == "skip" and not bool(torch.isfinite(loss))
            if dist is not None and nan_policy == "skip":
                non_finite = dist.any(non_finite)
            if non_finite:
                state.skipped += 1
            else:
                if terms:
                    loss.backward()
                if dist is not None:
                    dist.sync_gradients(params, local_rows, global_rows)
                optimizer.step()
                if check_replicas and dist is not None:
                    dist.check_replicas(params)
                for name, value in terms.items():
                    value = value.detach()
                    bad_terms[name] = bad_terms.get(name, False) | ~torch.isfinite(value)
                    sums[name] = sums.get(name, 0.0) + value * (local_rows / global_rows)
            state.batch = index + 1
            if state.batch < len(starts) and stop_requested():
                _check_finite(bad_terms, stage, epoch, dist)
                state.sums = {k: float(v) for k, v in sums.items()}
                state.partial_seconds += time.perf_counter() - start
                state.stopper = stopper.state_dict()
                save(state)
                raise Interrupted(stop_flag.signum or signal.SIGTERM)
        _check_finite(bad_terms, stage, epoch, dist)
        n_batches = max(1, len(starts) - state.skipped)
        if dist is not None:   # every rank's share of each batch mean, summed
            names = loss_names(sums, dist)
            total = dist.sum(torch.stack([torch.as_tensor(sums.get(n, 0.0), device=device, dtype=torch.float32)
                                          for n in names])) if names else []
            sums = dict(zip(names, total))
        losses = {name: float(value) / n_batches for name, value in sums.items()}
        state.train_seconds.append(state.partial_seconds + time.perf_counter() - start)

        record = dict(epoch=epoch, loss=sum(losses.values()), terms=losses, seconds=state.train_seconds[-1])
        line = (f"{stage:<7} epoch {epoch:4d} | loss {record['loss']:.4f} "
                + " ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        if state.skipped:
            record["skipped_batches"] = state.skipped
            line += f" | skipped {state.skipped} non-finite batches"
        if epoch % verbose == 0 or epoch == max_epochs:
            start = time.perf_counter()
            metrics = evaluate_val()
            state.eval_seconds.append(time.perf_counter() - start)
            record["val"] = metrics
            improved = stopper.update(metrics["recall@20"], epoch)
            if improved:
                on_best(epoch, metrics)
            line += (f" | val {format_metrics(metrics)} | {state.train_seconds[-1]:.1f}s+{state.eval_seconds[-1]:.2f}s"
                     + (" *" if improved else ""))
        else:
            line += f" | {state.train_seconds[-1]:.1f}s"
        log(line)
        state.history.append(record)
        state.epoch, state.batch = epoch + 1, 0
        state.sums, state.partial_seconds, state.skipped = {}, 0.0, 0
        state.stopper = stopper.state_dict()
        if stopper.should_stop:
            log(f"{stage}: early stopping at epoch {epoch}; best validation recall@20 "
                f"{stopper.best_score:.4f} at epoch {stopper.best_epoch}")
        if stopper.should_stop or state.epoch > max_epochs:
            state.done = True
        save(state)
        if not state.done and stop_requested():
            raise Interrupted(stop_flag.signum or signal.SIGTERM)
    state.done = True
    return state, stopper


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

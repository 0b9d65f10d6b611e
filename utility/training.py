"""One training loop for both stages: epochs of sampled batches, validation, early stopping."""
import time
from collections import defaultdict

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


def format_metrics(metrics, keys=("recall@20", "ndcg@20")):
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys)


def train_stage(stage, *, train_modules, optimizer, loss_terms, sampler, batch_size, extra_negatives,
                evaluate_val, max_epochs, patience, verbose, on_best, log, device, max_batches=None):
    """Train until ``max_epochs`` or early stopping on validation Recall@20.

    loss_terms(users, pos, neg, extra) -> {name: scalar tensor}; their sum is minimised.
    evaluate_val() -> metrics dict; on_best(epoch, metrics) is called at each new best.
    Returns (history, early_stopping, train_seconds, eval_seconds).
    """
    stopper = EarlyStopping(patience)
    history, train_seconds, eval_seconds = [], [], []
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        users, pos, neg, extra = (None if a is None else torch.as_tensor(a, device=device)
                                  for a in sampler.epoch(extra_negatives))
        for module in train_modules:
            module.train()
        sums, n_batches = defaultdict(float), 0
        starts = range(0, users.numel(), batch_size)
        if max_batches is not None:
            starts = starts[:max_batches]
        for lo in tqdm(starts, desc=f"{stage} epoch {epoch}", leave=False, dynamic_ncols=True, disable=None):
            hi = lo + batch_size
            terms = loss_terms(users[lo:hi], pos[lo:hi], neg[lo:hi], None if extra is None else extra[lo:hi])
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums[name] + value.detach()
            n_batches += 1
        losses = {name: float(value) / n_batches for name, value in sums.items()}
        train_seconds.append(time.perf_counter() - start)

        record = dict(epoch=epoch, loss=sum(losses.values()), terms=losses, seconds=train_seconds[-1])
        line = (f"{stage:<7} epoch {epoch:4d} | loss {record['loss']:.4f} "
                + " ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        if epoch % verbose == 0 or epoch == max_epochs:
            start = time.perf_counter()
            metrics = evaluate_val()
            eval_seconds.append(time.perf_counter() - start)
            record["val"] = metrics
            improved = stopper.update(metrics["recall@20"], epoch)
            if improved:
                on_best(epoch, metrics)
            line += (f" | val {format_metrics(metrics)} | {train_seconds[-1]:.1f}s+{eval_seconds[-1]:.2f}s"
                     + (" *" if improved else ""))
        else:
            line += f" | {train_seconds[-1]:.1f}s"
        log(line)
        history.append(record)
        if stopper.should_stop:
            log(f"{stage}: early stopping at epoch {epoch}; best validation recall@20 "
                f"{stopper.best_score:.4f} at epoch {stopper.best_epoch}")
            break
    return history, stopper, train_seconds, eval_seconds

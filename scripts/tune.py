"""Validation-only hyper-parameter search with Optuna, stage by stage.

    python scripts/tune.py --dataset NAME [--data_path P] --timeout SECONDS [--trials N] [--n_jobs J]
                           --out best.json [any main.py flag held fixed]
    python main.py --dataset NAME [--data_path P] --config best.json    # the tuned run, tested once

First the teacher is searched (``--teacher_share`` of the time), then the student, distilled from
the best teacher's saved weights. Each trial is a ``main.py`` run in this process with
``--no_test``: the test split is never evaluated. The trial's score is the validation
``--valid_metric`` of its selected epoch; every validation is reported to Optuna's median pruner,
which ends a trial whose curve falls below the median of earlier trials at the same epoch. The
sampler is TPE, seeded by ``--seed``, and the first trial of each stage is the configuration
without tuning (the preset and the flags held fixed), so the best is at least as good on
validation. With ``--n_jobs`` J > 1, J trials run at once as threads of this process; the untuned
trial runs alone first, with J times ``--threads``. Threads share the process's random number
generators, so a trial's score can differ slightly from the same flags run on their own (as
``main.py --config`` does).

The studies live in ``runs/<dataset>/tune-<timestamp>/study.db`` (SQLite), beside each trial's run
folder; ``--resume_dir`` continues an interrupted search there (finished trials are kept). The best
flags of both stages go to ``--out`` as a JSON object for ``main.py --config``; flags given on the
command line of ``main.py`` still win over it.

Search space (flag: range; log: sampled on a log scale) -- the teacher:
    lr 1e-4..3e-2 log, reg 1e-6..1e-2 log (both stages), cf_layers 1..3, mm_layers 1..2,
    mm_fusion_weight (lambda_c) 0.01..1 log, feat_prompt_weight (lambda_f) 0..0.5,
    emb_prompt_weight (lambda_s) 0..0.5, mm_loss_weight (lambda_m) 0..0.5, prompt_loss_weight (lambda_p) 0..0.5;
the student:
    student_lr 1e-4..1e-2 log, kd_pair_weight 0..2, kd_list_weight 0..2, kd_emb_weight 0..1,
    kd_temperature 0.25..4 log, kd_de_weight 0..2.
"""
import argparse
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import optuna  # noqa: E402

from utility import pipeline  # noqa: E402
from utility.config import KDConfig  # noqa: E402
from utility.errors import UserError  # noqa: E402
from utility.parser import parse_args  # noqa: E402
from utility.run_io import Logger, write_json  # noqa: E402

# flag: (low, high, log scale); an int range when both bounds are ints
TEACHER_SPACE = {
    "lr": (1e-4, 3e-2, True), "reg": (1e-6, 1e-2, True),
    "cf_layers": (1, 3, False), "mm_layers": (1, 2, False), "mm_fusion_weight": (0.01, 1.0, True),
    "feat_prompt_weight": (0.0, 0.5, False), "emb_prompt_weight": (0.0, 0.5, False),
    "mm_loss_weight": (0.0, 0.5, False), "prompt_loss_weight": (0.0, 0.5, False),
}
STUDENT_SPACE = {
    "student_lr": (1e-4, 1e-2, True), "kd_pair_weight": (0.0, 2.0, False),
    "kd_list_weight": (0.0, 2.0, False), "kd_emb_weight": (0.0, 1.0, False), "kd_temperature": (0.25, 4.0, True),
    "kd_de_weight": (0.0, 2.0, False),
}


def suggest(trial, space):
    """{flag: value} drawn by the trial from a search space."""
    values = {}
    for flag, (low, high, log) in space.items():
        if isinstance(low, int) and isinstance(high, int):
            values[flag] = trial.suggest_int(flag, low, high, log=log)
        else:
            values[flag] = trial.suggest_float(flag, low, high, log=log)
    return values


def untuned(args, space):
    """The values the run takes without tuning (defaults, preset, fixed flags), clipped to the space."""
    # --kd_de_weight's default follows --student_init: the value the run resolves it to
    resolved = dict(vars(args), kd_de_weight=KDConfig.from_args(args).de_weight if args.kd_de_weight is None
                    else args.kd_de_weight)
    return {flag: min(max(resolved[flag], low), high) for flag, (low, high, _) in space.items()}


def as_flags(values):
    return [item for flag, value in values.items() for item in (f"--{flag}", str(value))]


class Tuner:
    """One stage's objective: a main.py run per trial, scored on validation, reported for pruning."""

    def __init__(self, fixed, folder, stage, space, extra=()):
        self.fixed, self.folder, self.stage, self.space, self.extra = list(fixed), folder, stage, space, list(extra)

    def with_threads(self, n):
        """The same objective with ``--threads n`` (later flags win over the fixed ones)."""
        return Tuner(self.fixed, self.folder, self.stage, self.space, self.extra + ["--threads", str(n)])

    def __call__(self, trial):
        values = suggest(trial, self.space)
        argv = self.fixed + list(self.extra) + as_flags(values) + [
            "--stage", self.stage, "--no_test", "--no_plot", "--runs_dir", os.path.join(self.folder, "trials")]
        args = parse_args(argv)

        def monitor(stage, epoch, score):
            if stage == self.stage:
                trial.report(score, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (validation {score:.4f})")

        log = Logger(echo=False)
        start = time.perf_counter()
        try:
            code = pipeline.run(args, log, monitor=monitor)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - start)
            if log.path:
                trial.set_user_attr("run_dir", os.path.dirname(log.path))
            log.close()
        if code:
            raise RuntimeError(f"trial {trial.number}: main.py exited with {code}")
        with open(os.path.join(trial.user_attrs["run_dir"], "results.json")) as f:
            results = json.load(f)
        return results[self.stage]["val"][args.valid_metric]


def print_trial(stage, metric):
    def callback(study, trial):
        seconds = trial.user_attrs.get("seconds", 0.0)
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = " *" if study.best_trial.number == trial.number else ""
            outcome = f"val {metric} {trial.value:.4f}{best}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            outcome = f"pruned after epoch {trial.last_step}"
        else:
            outcome = trial.state.name.lower()
        print(f"{stage} trial {trial.number:3d} | {outcome} | {seconds:.0f}s | {shown}", flush=True)
    return callback


def run_study(folder, stage, objective, start_values, b, timeout, metric):
    storage = f"sqlite:///{os.path.join(folder, 'study.db')}"
    study = optuna.create_study(study_name=stage, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=b.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=b.warmup_epochs))
    if not study.trials:
        study.enqueue_trial(start_values)   # the untuned configuration is trial 0
    run = dict(callbacks=[print_trial(stage, metric)], catch=())
    start, left = time.perf_counter(), b.trials
    queued = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    if queued and b.n_jobs > 1:
        # queued trials run one at a time: two workers of one process can both claim the same queued
        # trial (SQLite storage), run it twice and fail when the second reports it. Alone, a trial
        # takes every worker's threads.
        first = queued if left is None else min(queued, left)
        solo = objective.with_threads(b.threads * b.n_jobs) if b.threads else objective
        study.optimize(solo, n_trials=first, timeout=timeout, n_jobs=1, **run)
        left = None if left is None else left - first
    remaining = timeout - (time.perf_counter() - start)
    if remaining > 0 and left != 0:
        study.optimize(objective, n_trials=left, timeout=remaining, n_jobs=b.n_jobs, **run)
    return study


def table(study, stage, metric, top=5):
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=True)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    lines = [f"{stage}: {len(done)} complete, {pruned} pruned; best {min(top, len(done))} on validation {metric}:",
             f"{'trial':>7} {'val':>8}  flags"]
    for t in done[:top]:
        shown = " ".join(f"--{k} {v:.4g}" if isinstance(v, float) else f"--{k} {v}" for k, v in t.params.items())
        lines.append(f"{t.number:>7} {t.value:>8.4f}  {shown}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, required=True, help="seconds for the whole search (both stages)")
    p.add_argument("--out", required=True, help="JSON file for the best flags (for main.py --config)")
    p.add_argument("--trials", type=int, default=None, help="at most this many trials per stage")
    p.add_argument("--n_jobs", type=int, default=1, help="trials run at once (threads of this process)")
    p.add_argument("--teacher_share", type=float, default=0.6, help="share of --timeout for the teacher")
    p.add_argument("--warmup_epochs", type=int, default=10, help="no pruning before this epoch")
    p.add_argument("--resume_dir", default=None, help="continue the search of this tune-<timestamp> folder")
    b, fixed = p.parse_known_args(argv)
    if any(flag in fixed for flag in ("--stage", "--teacher_ckpt", "--resume", "--config")):
        p.error("--stage, --teacher_ckpt, --resume and --config are set by the tuner")
    try:
        base = parse_args(fixed)
    except UserError as e:
        p.error(str(e))
    b.seed, b.threads, metric = base.seed, base.threads, base.valid_metric
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = b.resume_dir or os.path.join(base.runs_dir, base.dataset,
                                          "tune-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(folder, exist_ok=True)
    print(f"tuning {base.dataset} on validation {metric}: studies in {folder}/study.db", flush=True)
    start = time.perf_counter()

    teacher = run_study(folder, "teacher", Tuner(fixed, folder, "teacher", TEACHER_SPACE),
                        untuned(base, TEACHER_SPACE), b, b.timeout * b.teacher_share, metric)
    best_teacher = teacher.best_trial
    ckpt = os.path.join(best_teacher.user_attrs["run_dir"], "teacher.pt")
    print(table(teacher, "teacher", metric), flush=True)

    remaining = max(1.0, b.timeout - (time.perf_counter() - start))
    student = run_study(folder, "student", Tuner(fixed, folder, "student", STUDENT_SPACE,
                                                 extra=["--teacher_ckpt", ckpt] + as_flags(best_teacher.params)),
                        untuned(base, STUDENT_SPACE), b, remaining, metric)
    print(table(student, "student", metric), flush=True)

    best = {**best_teacher.params, **student.best_trial.params}
    write_json(best, b.out)
    write_json(dict(best=best, teacher_val=best_teacher.value, student_val=student.best_trial.value,
                    teacher_trial=best_teacher.number, student_trial=student.best_trial.number,
                    teacher_ckpt=ckpt, fixed_flags=fixed, seconds=time.perf_counter() - start),
               os.path.join(folder, "best.json"))
    print(f"best flags written to {b.out} (validation {metric}: teacher {best_teacher.value:.4f}, student "
          f"{student.best_trial.value:.4f}); run them, tested once, with:\n"
          f"  python main.py {' '.join(fixed)} --config {b.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The PromptMM run as a library: ``prepare`` (data, graphs, features, evaluators, sampler, run
folder), ``fit_teacher`` or ``load_teacher``, ``distil``, ``report``.

``main.py`` parses the flags and calls :func:`execute`; scripts, benchmarks and tests call
:func:`run_command` with a list of flags, or :func:`run` with parsed flags.
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import numpy as np
import torch

from Models import Teacher, TeacherOutput, build_student, count_parameters, lightgcn_propagate
from utility.config import KDConfig, StudentConfig, TeacherConfig, TrainConfig, from_dict
from utility.errors import UserError
from utility.evaluate import RankingEvaluator, dot_scores
from utility.features import default_cache_dir, item_hard_tokens
from utility.graph import build_graphs, cached_knn_graphs, knn_tensors
from utility import item_item
from utility.load_data import JSON_FILES, PICKLE_FILES, load_dataset
from utility.objectives import Distillation, teacher_terms
from utility.parser import build_parser, parse_args, resolve_defaults, validate_args
from utility.plots import plot_curves
from utility.run_io import Logger, new_run_dir, write_json
from utility.sampler import TripleSampler
from utility.stats import compare_per_user
from utility.training import (CHECKPOINT, Interrupted, NonFiniteLoss, Run, Stage, StageState, finish_stage,
                              format_metrics, stage_summary, test_once, train_stage)


@dataclass
class Setup:
    """What the models are built from: the flags, the data and its tensors, the teacher's config."""

    args: argparse.Namespace
    ds: object
    graphs: dict
    feats: dict
    tokens: torch.Tensor
    teacher_cfg: TeacherConfig
    teacher_ckpt: dict = None


# ---------------------------------------------------------------- the run

def run(args, log, dist=None, monitor=None):
    """The whole run; ``monitor(stage, epoch, validation score)`` is called after each validation."""
    validate_args(args)
    resume = None
    if args.resume:
        args, resume = load_resume(args.resume)
    setup, ctx = prepare(args, log, dist, resume)
    ctx.monitor = monitor
    try:
        teacher = load_teacher(setup, ctx) if setup.teacher_ckpt else fit_teacher(setup, ctx)
        record_teacher_efficiency(ctx, teacher)
        if args.stage != "teacher":
            distil(setup, ctx, teacher)
        return report(setup, ctx)
    except BaseException:
        if ctx.writer and resume is None and not os.path.exists(os.path.join(ctx.run_dir, CHECKPOINT)):
            log.close()
            shutil.rmtree(ctx.run_dir, ignore_errors=True)   # nothing worth keeping yet
        raise


def prepare(args, log, dist, resume):
    """Everything that can fail is checked before the run folder exists."""
    device = resolve_device(args.device) if dist is None else dist.device
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    clock = PhaseClock()
    with clock("load data"):
        ds = load_dataset(dataset_folder(args), name=args.dataset)
    log(ds.summary())
    check_splits(ds)
    teacher_ckpt = load_teacher_checkpoint(args, ds) if args.teacher_ckpt else None
    teacher_cfg = TeacherConfig.from_args(args)
    if teacher_ckpt is not None:   # the checkpoint defines the teacher; a flag given against it is an error
        teacher_cfg = checkpoint_teacher_config(args, teacher_cfg, teacher_ckpt)
    check_student_flags(args)
    if args.stage != "teacher":   # the distillation terms can run (checked before anything is trained)
        Distillation.active_weights(KDConfig.from_args(args), teacher_cfg.use_modalities)
    setup = model_inputs(args, ds, teacher_cfg, teacher_ckpt, device, clock, log)
    with clock("evaluators and sampler"):
        val_eval, test_eval = evaluators(args, ds, device, dist)
        sampler = TripleSampler(ds.train, args.seed)   # the same epochs on every rank; each takes its rows
    run_dir = args.resume or open_run_dir(args, dist)
    log.open(os.path.join(run_dir, "log.txt"))
    config = run_config(args, device, run_dir, teacher_cfg, dist)
    results = (resume or {}).get("results") or new_results(args, ds, device, run_dir, clock, val_eval, test_eval)
    ctx = Run(config=config, data=data_signature(ds), device=device, sampler=sampler, val_eval=val_eval,
              test_eval=test_eval, log=log, run_dir=run_dir, results=results, dist=dist, resume=resume,
              check_replicas=os.environ.get("PROMPTMM_CHECK_REPLICAS") == "1")
    announce(ctx, args, resume)
    return setup, ctx


def model_inputs(args, ds, teacher_cfg, teacher_ckpt, device, clock, log):
    """The models' tensors: PCA hard tokens, the interaction graphs (and kNN graphs), the features."""
    with clock("PCA hard tokens"):
        tokens = hard_tokens(args, ds, teacher_cfg.embed_size, log)
    with clock("graphs"):
        graphs = build_graphs(ds.train, device)
    if teacher_cfg.knn_k and teacher_cfg.use_modalities:
        with clock("item-item kNN graphs"):
            graphs.update(knn_graphs(args, ds, teacher_cfg.knn_k, device))
    feats = {m: torch.from_numpy(x).to(device) for m, x in ds.modality_feats.items()}
    return Setup(args, ds, graphs, feats, torch.from_numpy(tokens).to(device), teacher_cfg, teacher_ckpt)


def new_results(args, ds, device, run_dir, clock, val_eval, test_eval):
    """results.json as a run starts: the data, the device, the set-up phases' seconds, the user sample."""
    results = dict(dataset=args.dataset, n_users=ds.n_users, n_items=ds.n_items, modalities=ds.modality_dims,
                   device=str(device), seed=args.seed, run_dir=run_dir, setup_seconds=clock.seconds)
    if args.eval_users is not None:
        results["eval_users"] = dict(sample=args.eval_users, seed=args.seed, val=val_eval.n_users_sampled,
                                     val_total=val_eval.n_users_total)
        if test_eval is not None:
            results["eval_users"].update(test=test_eval.n_users_sampled, test_total=test_eval.n_users_total)
    return results


def evaluators(args, ds, device, dist):
    """The validation and test evaluators (sharded under torchrun, on a user sample with --eval_users)."""
    shard, reduce = (None, None) if dist is None else ((dist.rank, dist.world_size), dist.sum)
    sample = None if args.eval_users is None else (args.eval_users, args.seed)
    val_eval = RankingEvaluator(ds.val, [ds.train], args.topk, device, shard=shard, reduce=reduce, sample=sample)
    test_exclude = [ds.train, ds.val] if args.exclude_val else [ds.train]
    test_eval = None if args.no_test else RankingEvaluator(ds.test, test_exclude, args.topk, device, shard=shard,
                                                           reduce=reduce, sample=sample)
    return val_eval, test_eval


def fit_teacher(setup, ctx):
    """Stage 1: train the teacher (or, resuming past stage 1, rebuild it from the checkpoint)."""
    args = setup.args
    teacher = new_teacher(setup, ctx)
    if ctx.resume is not None and ctx.resume["stage"] == "student":
        # the teacher as stage 2 began (stage 2 restores its own, prompt-tuned copy)
        best = torch.load(os.path.join(ctx.run_dir, "teacher.pt"), map_location=ctx.device, weights_only=False)
        teacher.load_state_dict(best["models"]["teacher"])
        return teacher
    train_cfg = TrainConfig.from_args(args, "teacher")
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=train_cfg.lr, weight_decay=0.0)
    stage = Stage("teacher", "teacher", {"teacher": teacher}, [teacher], optimizer,
                  loss=partial(teacher_loss, teacher, setup.teacher_cfg),
                  embeddings=partial(eval_embeddings, teacher), cfg=train_cfg, params=count_parameters(teacher))
    finish_stage(stage, ctx, train_stage(stage, ctx))
    return teacher


def load_teacher(setup, ctx):
    """Stage 1 skipped: the teacher of --teacher_ckpt, evaluated once on validation and test."""
    teacher = new_teacher(setup, ctx)
    teacher.load_state_dict(setup.teacher_ckpt["models"]["teacher"])
    if "teacher" not in ctx.results:
        ctx.log(f"teacher loaded from {setup.args.teacher_ckpt} (epoch {setup.teacher_ckpt['best_epoch']})")
        start = time.perf_counter()
        scores = dot_scores(*eval_embeddings(teacher))
        val = ctx.val_eval(scores)
        seconds = time.perf_counter() - start
        test = test_once("teacher", ctx, scores)
        ctx.results["teacher"] = stage_summary("teacher", StageState(eval_seconds=[seconds]),
                                               setup.teacher_ckpt["best_epoch"], count_parameters(teacher), val, test)
        t = ctx.results["teacher"]
        ctx.log(f"teacher best epoch {t['best_epoch']}: val {format_metrics(val)}"
                + ("" if test is None else f" | test {format_metrics(test)}"))
    return teacher


def distil(setup, ctx, teacher):
    """Stage 2: the student learns from the frozen teacher, whose prompts keep training. The teacher as
    distillation left it (its prompts at the student's best epoch) is evaluated too: reported beside
    the stage-1 teacher, which is the one the student is compared with."""
    stage = student_stage(setup, ctx, teacher)
    finish_stage(stage, ctx, train_stage(stage, ctx))
    user, item = eval_embeddings(teacher)   # the teacher as stage 2 left it
    blend = stage.loss.blend
    if blend is not None and blend.weight:   # the scores the student distilled
        scores = blend.full_scores(user @ item.T)
        val = ctx.val_eval(lambda users: scores[users].clone())
        test = test_once("distilled_teacher", ctx, lambda users: scores[users].clone())
        ctx.results["distilled_teacher"].update(val=val, test=test)
        ctx.log("teacher + EASE (the scores the student distilled): val " + format_metrics(val)
                + ("" if test is None else f" | test {format_metrics(test)}"))
        del scores
    scores = dot_scores(user, item)
    val, test = ctx.val_eval(scores), test_once("teacher_after_distillation", ctx, scores)
    ctx.results["teacher_after_distillation"] = dict(val=val, test=test)
    ctx.log("teacher after distillation (its prompts tuned in stage 2): val " + format_metrics(val)
            + ("" if test is None else f" | test {format_metrics(test)}"))
    student = stage.modules["student"]
    student.eval()
    ctx.results["efficiency"].update(
        student_params=stage.params,
        student_infer_ms=measure_inference_ms(partial(serve_student, student), setup.ds.n_users, setup.ds.n_items,
                                              ctx.device))


def report(setup, ctx):
    """MostPopular for reference, the summary table, the loss curves and results.json."""
    args, ds, results = setup.args, setup.ds, ctx.results
    if ctx.test_eval is None:
        ctx.log("--no_test: the test split was not evaluated")
    else:
        popularity = torch.as_tensor(np.asarray(ds.train.sum(axis=0)).ravel(), dtype=torch.float32, device=ctx.device)
        results["most_popular"] = dict(test=ctx.test_eval(partial(popularity_scores, popularity)))
        ctx.log(summary_table(results, args.topk))
        comparison = student_vs_teacher(ctx.run_dir) if "student" in results else None
        if comparison is not None:
            results["student"]["test_vs_teacher"] = comparison
            ctx.log(comparison_line(comparison))
    if not ctx.writer:
        return 0
    if not args.no_plot:
        histories = {"teacher": results.get("teacher_history", []), "student": results.get("student_history", [])}
        best_epochs = {stage: results[stage]["best_epoch"] for stage in ("teacher", "student") if stage in results}
        plot_curves(histories, best_epochs, os.path.join(ctx.run_dir, "curves.png"), title=f"PromptMM on {args.dataset}")
    write_json(results, os.path.join(ctx.run_dir, "results.json"))
    if args.results_json:
        write_json(results, args.results_json)
    ctx.log(f"run folder: {ctx.run_dir} (results.json, log.txt{'' if args.no_plot else ', curves.png'})")
    return 0


# ---------------------------------------------------------------- the two stages' parts

def new_teacher(setup, ctx):
    seed_everything(setup.args.seed)   # the same initial weights on every rank
    return Teacher(setup.graphs, setup.feats, setup.tokens, setup.teacher_cfg).to(ctx.device)


def teacher_loss(teacher, cfg, users, pos, neg, extra):
    return teacher_terms(teacher, teacher(), users, pos, neg, cfg)


def student_stage(setup, ctx, teacher):
    """The student, its optimiser (with the teacher's prompts) and its objective (:class:`Distillation`)."""
    cfg = StudentConfig.from_args(setup.args, setup.teacher_cfg)
    kd, train_cfg = KDConfig.from_args(setup.args), TrainConfig.from_args(setup.args, "student")
    teacher_user, teacher_item = eval_embeddings(teacher)
    blend, width, depth = choose_start(setup, ctx, kd, teacher_user, teacher_item)
    cfg = replace(cfg, embed_size=width, n_layers=depth)
    prompt_params = teacher.freeze_for_distillation()
    seed_everything(setup.args.seed + 1)   # the same student initialisation on every rank
    student = build_student(cfg, setup.graphs).to(ctx.device)
    if cfg.init == "teacher":
        if blend.weight or width != teacher_user.shape[1]:
            # the best width-wide factorisation of the distilled scores
            with torch.no_grad():
                student.init_embeddings(*item_item.truncate(blend.full_scores(teacher_user @ teacher_item.T), width))
        else:
            student.init_embeddings(teacher_user, teacher_item)
    modules, trained = {"student": student, "teacher": teacher}, [student]
    projector = None
    if cfg.embed_size != setup.teacher_cfg.embed_size:
        # maps student embeddings to the teacher's width for the embedding and representation KD only
        projector = modules["projector"] = torch.nn.Linear(cfg.embed_size, setup.teacher_cfg.embed_size,
                                                           bias=False).to(ctx.device)
        trained.append(projector)
    params = [p for m in trained for p in m.parameters()] + prompt_params
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=0.0)
    objective = Distillation(kd, student, teacher, cfg.reg, projector, blend if blend.weight else None)
    return Stage("student", "lightgcn", modules, trained, optimizer, loss=objective,
                 embeddings=partial(eval_embeddings, student), cfg=train_cfg,
                 extra_negatives=objective.extra_negatives, params=count_parameters(student))


def choose_start(setup, ctx, kd, teacher_user, teacher_item):
    """The scores the student distils and where it starts (utility/item_item.py), chosen on validation:
    EASE's blend with the graph teacher (unless --item_teacher none, or the data is too large for it:
    said in the log), the student's width (unless --student_embed_size) and its depth, 0 or the
    teacher's --cf_layers. Recorded in results.json as ``distilled_teacher``."""
    ds, args = setup.ds, setup.args
    lambdas = item_item.LAMBDAS
    reason = item_item.too_large(ds.n_users, ds.n_items)
    if kd.item_teacher == "none":
        lambdas = ()
    elif reason is not None:
        ctx.log(f"item-item teacher skipped: {reason}; the student distils the graph teacher alone")
        lambdas = ()
    tw = teacher_user.shape[1]
    if args.student_embed_size:
        widths = (args.student_embed_size,)
    elif lambdas:
        widths = tuple(f * tw for f in item_item.WIDTH_FACTORS)
    else:
        widths = (tw,)
    depths = sorted({0, setup.teacher_cfg.cf_layers})
    propagate = partial(lightgcn_propagate, setup.graphs["norm_ui"], setup.graphs["norm_iu"])
    seed_everything(args.seed)   # the randomised SVDs: the same choice on every rank and on resume
    start = time.perf_counter()
    with torch.no_grad():
        blend, width, depth, grid = item_item.choose(ds.train, teacher_user, teacher_item, ctx.val_eval,
                                                     args.valid_metric, widths, depths, propagate, log=ctx.log,
                                                     lambdas=lambdas)
    ctx.results["distilled_teacher"] = dict(
        ctx.results.get("distilled_teacher", {}), weight=blend.weight, lam=blend.lam, width=width, depth=depth,
        seconds=time.perf_counter() - start,
        grid=[dict(lam=k[0], weight=k[1], width=k[2], depth=k[3], val=v) for k, v in grid.items()])
    return blend, width, depth


def popularity_scores(popularity, users):
    """MostPopular: every user scores items by their training interaction count."""
    return popularity.repeat(users.numel(), 1)


def eval_embeddings(model):
    """Every user's and item's embedding, in evaluation mode."""
    model.eval()
    with torch.no_grad():
        out = model()
    return (out.user, out.item) if isinstance(out, TeacherOutput) else out


def serve_teacher(teacher, users):
    user, item = eval_embeddings(teacher)   # serving runs the teacher's whole forward pass
    return user[users], item


def serve_student(student, users):
    return student.embed(users, torch.arange(student.n_items, device=users.device))


def record_teacher_efficiency(ctx, teacher):
    ctx.results["efficiency"] = dict(
        teacher_params=count_parameters(teacher), infer_users=inference_users(teacher.n_users, teacher.n_items),
        teacher_infer_ms=measure_inference_ms(partial(serve_teacher, teacher), teacher.n_users, teacher.n_items,
                                              ctx.device))


INFER_SCORE_BUDGET = 1 << 28   # scores of the timed serving request (1 GiB): fewer than 1024 users at 10^6 items


def inference_users(n_users, n_items):
    """Users of the timed serving request: 1024, unless their scores would exceed the budget."""
    return max(1, min(1024, n_users, INFER_SCORE_BUDGET // max(1, n_items)))


def measure_inference_ms(serve_fn, n_users, n_items, device, repeats=5):
    """Median milliseconds to compute what serving needs and score every item for
    :func:`inference_users` users (1024 on datasets below 262,144 items).

    serve_fn(users) -> (embeddings of those users, embeddings of every item), computing everything
    the model needs at serving time (the teacher: its whole forward pass with the modality features).
    """
    users = torch.arange(inference_users(n_users, n_items), device=device)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            user, item = serve_fn(users)
            scores = user @ item.T
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
            del scores
    return float(np.median(times[1:]))


# ---------------------------------------------------------------- set-up helpers

class PhaseClock:
    """Seconds of each named set-up phase: ``with clock("graphs"): ...``; ``clock.seconds``."""

    def __init__(self):
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def resolve_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_folder(args):
    """The dataset's folder, building the datasets this project builds (movielens and its splits,
    the other domains of ``data/domains.py``) the first time they are asked for."""
    from data.prepare import DatasetBuildError, ensure_dataset
    try:
        return str(ensure_dataset(args.dataset, args.data_path))
    except DatasetBuildError as e:
        raise UserError(str(e)) from None


def check_splits(ds):
    """Model selection needs validation users, and a test needs test users."""
    files = JSON_FILES if ds.layout == "json" else PICKLE_FILES
    for split in ("val", "test"):
        if getattr(ds, split).nnz == 0:
            raise UserError(f"{os.path.join(ds.path, files[split])}: the {split} split has no interactions "
                            f"(a run needs {'validation to select epochs' if split == 'val' else 'a test split'})")


def check_student_flags(args):
    if args.stage == "student" and not args.teacher_ckpt:
        raise UserError("--stage student needs --teacher_ckpt PATH (a teacher.pt from an earlier run)")
    if args.results_json:
        folder = os.path.dirname(os.path.abspath(args.results_json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"--results_json {args.results_json}: cannot write into {folder}")


def cache_dir(args, ds):
    """Where derived inputs (PCA tokens, kNN neighbour lists) are cached: beside the data, or under
    the runs folder when the data's folder is read-only."""
    return default_cache_dir(ds.path, os.path.join(args.runs_dir, ".cache", args.dataset))


def hard_tokens(args, ds, dim, log):
    """The items' PCA hard tokens, cached (:func:`cache_dir`)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = item_hard_tokens(ds.modality_feats, dim, cache_dir(args, ds))
    for w in caught:
        log.warn(str(w.message))
    return tokens


def knn_graphs(args, ds, k, device):
    """{"knn_mean": the mean of the modalities' normalised item-item kNN graphs}, each modality's
    neighbour lists cached (:func:`cache_dir`)."""
    graphs = knn_tensors(cached_knn_graphs(ds.modality_feats, k, cache_dir(args, ds)))
    return {name: g.to(device) for name, g in graphs.items()}


def data_signature(ds):
    return dict(n_users=ds.n_users, n_items=ds.n_items, n_train=int(ds.train.nnz), modalities=ds.modality_dims)


def load_teacher_checkpoint(args, ds):
    """The checkpoint dict, after checking that it was trained on this data with a compatible config."""
    path = args.teacher_ckpt
    if not os.path.isfile(path):
        raise UserError(f"--teacher_ckpt {path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--teacher_ckpt {path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("stage") != "teacher" or "teacher" not in ckpt.get("models", {}):
        raise UserError(f"--teacher_ckpt {path}: not a teacher checkpoint written by this program")
    if ckpt.get("data") != data_signature(ds):
        raise UserError(f"--teacher_ckpt {path}: trained on other data ({ckpt.get('data')}); "
                        f"this run's {ds.name} has {data_signature(ds)}")
    return ckpt


# the teacher's stage-1 loss weights: they shape training, not the trained teacher (--reg also sets the student's)
STAGE_1_LOSS_WEIGHTS = ("mm_loss_weight", "prompt_loss_weight", "reg")


def checkpoint_teacher_config(args, flags_cfg, ckpt):
    """The checkpoint's TeacherConfig. An architecture flag given on the command line (or in --config)
    with another value than the checkpoint's is a one-line error: the loaded teacher is what it was
    trained as."""
    ckpt_cfg = from_dict(TeacherConfig, ckpt["config"]["teacher"])
    flag_of = {f.name: f.metadata["flag"] for f in fields(TeacherConfig)
               if "flag" in f.metadata and f.name not in STAGE_1_LOSS_WEIGHTS}
    flag_of.update(use_prompt="no_prompt", use_modalities="no_modalities")
    for name, flag in flag_of.items():
        mine, theirs = getattr(flags_cfg, name), getattr(ckpt_cfg, name)
        if flag in args.given and mine != theirs:
            shown = (f"--{flag}" if name.startswith("use_") else
                     f"--{flag} {mine}" if not isinstance(mine, bool) else f"--{'' if mine else 'no-'}{flag}")
            held = f"{name.replace('use_', 'has ')} = {theirs}" if name.startswith("use_") else f"{flag} = {theirs}"
            raise UserError(f"--teacher_ckpt {args.teacher_ckpt}: {shown} contradicts the checkpoint ({held}); "
                            "leave the flag out: the checkpoint defines the teacher")
    return ckpt_cfg


def load_resume(run_dir):
    """(args from the run's own config.json, the run's checkpoint) for --resume."""
    config_file, ckpt_file = os.path.join(run_dir, "config.json"), os.path.join(run_dir, CHECKPOINT)
    for file in (config_file, ckpt_file):
        if not os.path.isfile(file):
            raise UserError(f"--resume {run_dir}: {os.path.basename(file)} not found (not a run folder, or the run "
                            f"stopped before its first epoch ended: start it again)")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--resume {run_dir}: cannot read the run's config or checkpoint ({type(e).__name__})") from None
    args = build_parser().parse_args([])   # flags added since the run started get their defaults
    known = vars(args)
    args = resolve_defaults(argparse.Namespace(**{**known, **{k: v for k, v in config.items() if k in known}}))
    args.resume = run_dir
    return args, ckpt


def open_run_dir(args, dist=None):
    """A new run folder; under torchrun rank 0 creates it and tells the others."""
    failure, run_dir = None, None
    if dist is None or dist.is_main:
        try:
            run_dir = new_run_dir(args.runs_dir, args.dataset)
        except OSError as e:
            failure = f"--runs_dir {args.runs_dir}: cannot create the run folder ({e.strerror})"
    if dist is not None:
        failure, run_dir = dist.broadcast((failure, run_dir))
    if failure:
        raise UserError(failure)
    return run_dir


def run_config(args, device, run_dir, teacher_cfg, dist):
    """The run's flags and resolved settings, as written to config.json and into checkpoints."""
    config = dict(vars(args), device=str(device), run_dir=run_dir, teacher=asdict(teacher_cfg))
    config.pop("resume")
    if dist is not None:
        config["world_size"] = dist.world_size
    return config


def announce(ctx, args, resume):
    if resume is not None:
        ctx.log(f"resuming {ctx.run_dir} from the {resume['stage']} stage, epoch {resume['state']['epoch']} "
                f"batch {resume['state']['batch']}")
        return
    if ctx.writer:
        write_json(ctx.config, os.path.join(ctx.run_dir, "config.json"))
    dist = ctx.dist
    ctx.log(f"run folder: {ctx.run_dir} | device: {ctx.device} | seed: {args.seed}"
            + (f" | {dist.world_size} processes, global batch {dist.world_size * args.batch_size}" if dist else ""))
    if "eval_users" in ctx.results:
        e = ctx.results["eval_users"]
        ctx.log(f"evaluation on a fixed random sample (--eval_users {e['sample']}, seed {e['seed']}): "
                f"{e['val']} of {e['val_total']} validation users"
                + (f", {e['test']} of {e['test_total']} test users" if "test" in e else ""))


def summary_table(results, ks):
    """Teacher vs student (and MostPopular) on the test split, with size and inference time."""
    eff = results["efficiency"]
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (20, 50) if k in ks]
    rows = [("MostPopular", results["most_popular"]["test"], "-", "-"),
            ("teacher", results["teacher"]["test"], results["teacher"]["params"], eff["teacher_infer_ms"])]
    if "teacher_after_distillation" in results:
        rows.append(("teacher after stage 2", results["teacher_after_distillation"]["test"], "", ""))
    if results.get("distilled_teacher", {}).get("test"):
        rows.append(("teacher + EASE", results["distilled_teacher"]["test"], "", ""))
    if "student" in results:
        rows.append((f"student ({results['student']['kind']})", results["student"]["test"],
                     results["student"]["params"], eff["student_infer_ms"]))
    header = f"{'test':<22}" + "".join(f"{c:>11}" for c in cols) + f"{'params':>11}{'infer ms':>10}"
    lines = [header, "-" * len(header)]
    for name, test, params, ms in rows:
        ms = f"{ms:.1f}" if isinstance(ms, float) else ms
        lines.append(f"{name:<22}" + "".join(f"{test[c]:>11.4f}" for c in cols) + f"{params:>11}{ms:>10}")
    return "\n".join(lines)


def student_vs_teacher(run_dir):
    """The student against the teacher on the same test users (:func:`utility.stats.compare_per_user`),
    from the per-user files the run wrote (single-process runs with a test split); None without them."""
    files = [os.path.join(run_dir, f"{stage}_test_per_user.npz") for stage in ("teacher", "student")]
    if not all(os.path.exists(f) for f in files):
        return None
    teacher, student = (dict(np.load(f)) for f in files)
    return compare_per_user(teacher, student)


def comparison_line(comparison):
    """One log line: the student's relative test difference to the stage-1 teacher per metric, with its
    95 % interval over the test users and the paired p-value, and the standard error of the student's
    mean (how much sampling the test users alone moves one run's number; another seed moves it more)."""
    parts, errors = [], []
    for metric, c in comparison.items():
        rel = "n/a" if c["rel_diff"] is None else f"{c['rel_diff']:+.1f} %"
        ci = "" if c.get("interval") is None else " [{:+.1f}, {:+.1f}]".format(*c["interval"])
        parts.append(f"{metric} {rel}{ci} (p = {c['p']:.2g})")
        errors.append(f"{metric} {c['se_b']:.4f}" if c["se_b"] is not None else f"{metric} n/a")
    n = next(iter(comparison.values()))["n"]
    return (f"student vs the stage-1 teacher on the same {n:,} test users (95 % interval over users, paired Wilcoxon): " + ", ".join(parts)
            + "; standard error of the student's mean: " + ", ".join(errors))


# ---------------------------------------------------------------- entry points

def execute(args, dist=None, monitor=None):
    """Run with parsed flags; the exit code (0, 2 for a user error, 3 for a non-finite loss, 128 + signal
    when interrupted). Errors are one line on stderr (and in the run's log)."""
    log = Logger(enabled=dist is None or dist.is_main)
    try:
        return run(args, log, dist, monitor)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except NonFiniteLoss as e:
        log(f"error: {e}")
        return e.exit_code
    except Interrupted as e:
        run_dir = args.resume or (log.path and os.path.dirname(log.path))
        log(f"interrupted ({e}): checkpoint written; resume with:  python main.py --resume {run_dir}")
        return e.exit_code
    finally:
        log.close()


def run_command(argv):
    """``python main.py ARGV`` in this process (one process, no torchrun): the exit code."""
    try:
        args = parse_args(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return execute(args)

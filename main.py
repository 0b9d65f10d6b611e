"""PromptMM: pre-train a prompt-enhanced multi-modal graph teacher, then distil it into a
lightweight ID-only student with pair-wise, disentangled list-wise and embedding KD.

    python main.py                                   # both stages on the default movielens data
    python main.py --dataset tiktok --stage teacher  # stage 1 only
    python main.py --resume runs/tiktok/<timestamp>  # continue an interrupted run
"""
import argparse
import copy
import json
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict

import numpy as np
import torch

from Models import Teacher, build_student, count_parameters
from utility.errors import UserError
from utility.distributed import Distributed, exit_without_finalizing, launched_by_torchrun
from utility.evaluate import RankingEvaluator, dot_scores
from utility.features import default_cache_dir, item_hard_tokens
from utility.graph import mean_adj, sym_norm_blocks, to_torch_csr
from utility.load_data import load_dataset
from utility.objectives import student_terms, teacher_terms
from utility.parser import build_parser, parse_args, validate_args
from utility.plots import plot_curves
from utility.run_io import Logger, new_run_dir, save_checkpoint, write_json
from utility.sampler import TripleSampler
from utility.training import Interrupted, NonFiniteLoss, StageState, StopFlag, format_metrics, train_stage

# Flags that define the teacher's architecture and forward pass; a --teacher_ckpt supplies them.
TEACHER_ARCH = ("embed_size", "cf_layers", "mm_layers", "feat_prompt_weight", "emb_prompt_weight",
                "mm_fusion_weight", "item_residual", "no_prompt", "no_modalities", "dropout", "prompt_dropout")
CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------- set-up helpers

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


def dataset_folder(args):
    """The dataset's folder, building the default movielens data the first time it is asked for."""
    path = os.path.join(args.data_path, args.dataset)
    if args.dataset == "movielens":
        from data.prepare import DatasetBuildError, ensure_dataset
        try:
            path = str(ensure_dataset("movielens", args.data_path))
        except DatasetBuildError as e:
            raise UserError(str(e)) from None
    return path


def build_graphs(train, device):
    user_mean, item_mean = mean_adj(train)
    norm_ui, norm_iu = sym_norm_blocks(train)
    mats = dict(norm_ui=norm_ui, norm_iu=norm_iu, user_mean=user_mean, user_mean_t=user_mean.T,
                item_mean=item_mean, item_mean_t=item_mean.T)
    return {name: to_torch_csr(m).to(device) for name, m in mats.items()}


def build_teacher(cfg, graphs, feats, tokens):
    return Teacher(graphs, feats, tokens, embed_size=cfg["embed_size"], cf_layers=cfg["cf_layers"],
                   mm_layers=cfg["mm_layers"], feat_prompt_weight=cfg["feat_prompt_weight"],
                   emb_prompt_weight=cfg["emb_prompt_weight"], mm_fusion_weight=cfg["mm_fusion_weight"],
                   dropout=cfg["dropout"], prompt_dropout=cfg["prompt_dropout"],
                   item_residual=cfg["item_residual"],
                   # the prompts are built from the modality features: no modalities, no prompts
                   use_prompt=not (cfg["no_prompt"] or cfg["no_modalities"]),
                   use_modalities=not cfg["no_modalities"])


def data_signature(ds):
    return dict(n_users=ds.n_users, n_items=ds.n_items, n_train=int(ds.train.nnz), modalities=ds.modality_dims)


def load_teacher_checkpoint(path, args, ds):
    """The checkpoint dict, after checking that it was trained on this data with a compatible config."""
    if not os.path.isfile(path):
        raise UserError(f"--teacher_ckpt {path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--teacher_ckpt {path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("stage") != "teacher" or "model" not in ckpt:
        raise UserError(f"--teacher_ckpt {path}: not a teacher checkpoint written by this program")
    if ckpt.get("data") != data_signature(ds):
        raise UserError(f"--teacher_ckpt {path}: trained on other data ({ckpt.get('data')}); "
                        f"this run's {ds.name} has {data_signature(ds)}")
    if bool(ckpt["config"]["no_prompt"]) != bool(args.no_prompt):
        raise UserError(f"--teacher_ckpt {path}: teacher was trained with no_prompt={ckpt['config']['no_prompt']} "
                        f"but this run has --no_prompt={args.no_prompt}")
    return ckpt


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
    known = {a.dest for a in build_parser()._actions}
    args = argparse.Namespace(**{k: v for k, v in config.items() if k in known})
    args.resume = run_dir
    return args, ckpt


def open_run_dir(args):
    try:
        return new_run_dir(args.runs_dir, args.dataset)
    except OSError as e:
        raise UserError(f"--runs_dir {args.runs_dir}: cannot create the run folder ({e.strerror})") from None


def measure_inference_ms(serve_fn, n_users, device, repeats=5):
    """Median milliseconds to compute what serving needs and score every item for 1024 users.

    serve_fn(users) -> (embeddings of those users, embeddings of every item), computing everything
    the model needs at serving time (the teacher: its whole forward pass with the modality features).
    """
    users = torch.arange(min(1024, n_users), device=device)
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


def stage_summary(kind, state, best_epoch, params, val, test):
    return dict(kind=kind, best_epoch=best_epoch, epochs_run=len(state.history), params=params,
                seconds_per_epoch=float(np.mean(state.train_seconds)) if state.train_seconds else 0.0,
                eval_seconds=float(np.median(state.eval_seconds)) if state.eval_seconds else 0.0,
                val=val, test=test)


def summary_table(results, ks):
    """Teacher vs student (and MostPopular) on the test split, with size and inference time."""
    eff = results["efficiency"]
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (20, 50) if k in ks]
    rows = [("MostPopular", results["most_popular"]["test"], "-", "-"),
            ("teacher", results["teacher"]["test"], results["teacher"]["params"], eff["teacher_infer_ms"])]
    if "student" in results:
        rows.append((f"student ({results['student']['kind']})", results["student"]["test"],
                     results["student"]["params"], eff["student_infer_ms"]))
    header = f"{'test':<20}" + "".join(f"{c:>11}" for c in cols) + f"{'params':>11}{'infer ms':>10}"
    lines = [header, "-" * len(header)]
    for name, test, params, ms in rows:
        ms = f"{ms:.1f}" if isinstance(ms, float) else ms
        lines.append(f"{name:<20}" + "".join(f"{test[c]:>11.4f}" for c in cols) + f"{params:>11}{ms:>10}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the run

def run(args, log, dist=None):
    validate_args(args)
    resume = None
    if args.resume:
        args, resume = load_resume(args.resume)
    device = resolve_device(args.device) if dist is None else dist.device
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    # ---- everything that can fail is checked before the run folder exists ----
    ds = load_dataset(dataset_folder(args), name=args.dataset)
    log(ds.summary())
    if args.stage == "student" and not args.teacher_ckpt:
        raise UserError("--stage student needs --teacher_ckpt PATH (a teacher.pt from an earlier run)")
    teacher_ckpt = load_teacher_checkpoint(args.teacher_ckpt, args, ds) if args.teacher_ckpt else None
    teacher_cfg = {k: getattr(args, k) for k in TEACHER_ARCH}
    if teacher_ckpt is not None:
        teacher_cfg.update({k: teacher_ckpt["config"][k] for k in TEACHER_ARCH})
    if args.stage != "teacher" and args.student_init == "teacher" and args.student_embed_size > teacher_cfg["embed_size"]:
        raise UserError(f"--student_embed_size {args.student_embed_size}: larger than the teacher's "
                        f"{teacher_cfg['embed_size']}; cannot initialise from the teacher (use --student_init random)")
    if args.results_json:
        folder = os.path.dirname(os.path.abspath(args.results_json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"--results_json {args.results_json}: cannot write into {folder}")
    cache_dir = default_cache_dir(ds.path, os.path.join(args.runs_dir, ".cache", args.dataset))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = item_hard_tokens(ds.modality_feats, teacher_cfg["embed_size"], cache_dir)
    for w in caught:
        log.warn(str(w.message))
    graphs = build_graphs(ds.train, device)
    feats = {m: torch.from_numpy(x).to(device) for m, x in ds.modality_feats.items()}
    tokens = torch.from_numpy(tokens).to(device)
    shard = None if dist is None else (dist.rank, dist.world_size)
    reduce = None if dist is None else dist.sum
    val_eval = RankingEvaluator(ds.val, [ds.train], args.topk, device, args.eval_batch_size, shard, reduce)
    test_exclude = [ds.train, ds.val] if args.exclude_val else [ds.train]
    test_eval = RankingEvaluator(ds.test, test_exclude, args.topk, device, args.eval_batch_size, shard, reduce)
    sampler = TripleSampler(ds.train, args.seed)   # the same epochs on every rank; each takes its rows

    if dist is None:
        run_dir = args.resume or open_run_dir(args)
    else:   # only rank 0 writes; it creates the folder and tells the others
        failure, run_dir = None, args.resume
        if dist.is_main and run_dir is None:
            try:
                run_dir = open_run_dir(args)
            except UserError as e:
                failure = str(e)
        failure, run_dir = dist.broadcast((failure, run_dir))
        if failure:
            raise UserError(failure)
    log.open(os.path.join(run_dir, "log.txt"))
    config = dict(vars(args), device=str(device), run_dir=run_dir, teacher_arch=teacher_cfg)
    config.pop("resume")
    if dist is not None:
        config["world_size"] = dist.world_size
    if resume is None:
        if dist is None or dist.is_main:
            write_json(config, os.path.join(run_dir, "config.json"))
        log(f"run folder: {run_dir} | device: {device} | seed: {args.seed}"
            + (f" | {dist.world_size} processes, global batch {dist.world_size * args.batch_size}" if dist else ""))
    else:
        log(f"resuming {run_dir} from the {resume['stage']} stage, epoch {resume['state']['epoch']} "
            f"batch {resume['state']['batch']}")
    try:
        return train_and_report(args, log, device, ds, run_dir, config, teacher_cfg, teacher_ckpt, resume,
                                graphs, feats, tokens, val_eval, test_eval, sampler, dist)
    except BaseException:
        if (dist is None or dist.is_main) and resume is None and not os.path.exists(os.path.join(run_dir, CHECKPOINT)):
            log.close()
            shutil.rmtree(run_dir, ignore_errors=True)   # nothing worth keeping yet
        raise


def train_and_report(args, log, device, ds, run_dir, config, teacher_cfg, teacher_ckpt, resume,
                     graphs, feats, tokens, val_eval, test_eval, sampler, dist=None):
    weights = vars(args)
    writer = dist is None or dist.is_main         # only one process writes files
    parallel = dict(dist=dist, check_replicas=args.check_replicas)
    max_batches = 2 if args.dry_run else None
    stop_flag = StopFlag()
    results = (resume or {}).get("results") or dict(
        dataset=args.dataset, n_users=ds.n_users, n_items=ds.n_items, modalities=ds.modality_dims,
        device=str(device), seed=args.seed, run_dir=run_dir)

    # ---- stage 1: teacher ----
    seed_everything(args.seed)
    teacher = build_teacher(teacher_cfg, graphs, feats, tokens).to(device)
    teacher_params = count_parameters(teacher)
    if dist is not None:
        torch.manual_seed(args.seed + dist.rank)   # same initial weights everywhere, per-rank dropout

    def teacher_embeddings():
        teacher.eval()
        with torch.no_grad():
            out = teacher()
        return out.user, out.item

    def teacher_serving(users):
        user, item = teacher_embeddings()
        return user[users], item

    def checkpoint(stage, modules, optimizer, best, state):
        """Everything needed to continue this run exactly where it is."""
        if not writer:
            return
        save_checkpoint(dict(stage=stage, state=asdict(state), models={k: m.state_dict() for k, m in modules.items()},
                             optimizer=optimizer.state_dict(), best=best, rng=rng_states(),
                             sampler=sampler.get_state(), results=results),
                        os.path.join(run_dir, CHECKPOINT))

    def restore(modules, optimizer):
        for name, module in modules.items():
            module.load_state_dict(resume["models"][name])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_states(resume["rng"])
        sampler.set_state(resume["sampler"])
        return StageState(**resume["state"]), resume["best"]

    if teacher_ckpt is not None:
        teacher.load_state_dict(teacher_ckpt["model"])
        if "teacher" not in results:
            log(f"teacher loaded from {args.teacher_ckpt} (epoch {teacher_ckpt['epoch']})")
            start = time.perf_counter()
            val = val_eval(dot_scores(*teacher_embeddings()))
            state = StageState(eval_seconds=[time.perf_counter() - start])
            results["teacher"] = stage_summary("teacher", state, teacher_ckpt["epoch"], teacher_params, val,
                                               test_eval(dot_scores(*teacher_embeddings())))
    elif resume is None or resume["stage"] == "teacher":
        optimizer = torch.optim.AdamW(teacher.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        state, best = (StageState(), {}) if resume is None else restore({"teacher": teacher}, optimizer)

        def save_teacher_best(epoch, metrics):
            best["teacher"] = copy.deepcopy(teacher.state_dict())
            if writer:
                save_checkpoint(dict(stage="teacher", model=best["teacher"], optimizer=optimizer.state_dict(),
                                     epoch=epoch, best_score=metrics["recall@20"], val=metrics,
                                     config=config, data=data_signature(ds)),
                                os.path.join(run_dir, "teacher.pt"))

        def teacher_loss(users, pos, neg, extra):
            return teacher_terms(teacher, teacher(), users, pos, neg, weights)

        with stop_flag:
            state, stopper = train_stage(
                "teacher", train_modules=[teacher], optimizer=optimizer, loss_terms=teacher_loss,
                sampler=sampler, batch_size=args.batch_size, extra_negatives=0,
                evaluate_val=lambda: val_eval(dot_scores(*teacher_embeddings())),
                max_epochs=1 if args.dry_run else args.epoch, patience=args.early_stopping_patience,
                verbose=args.verbose, on_best=save_teacher_best,
                save=lambda st: checkpoint("teacher", {"teacher": teacher}, optimizer, best, st),
                log=log, device=device, state=state, stop_flag=stop_flag, nan_policy=args.nan_policy,
                max_batches=max_batches, **parallel)
        teacher.load_state_dict(best["teacher"])
        val = state.history[stopper.best_epoch - 1]["val"]
        results["teacher"] = stage_summary("teacher", state, stopper.best_epoch, teacher_params, val,
                                           test_eval(dot_scores(*teacher_embeddings())))
        results["teacher_history"] = state.history
    t = results["teacher"]
    log(f"teacher best epoch {t['best_epoch']}: val {format_metrics(t['val'])} | test {format_metrics(t['test'])}")

    results["efficiency"] = dict(teacher_params=teacher_params,
                                 teacher_infer_ms=measure_inference_ms(teacher_serving, ds.n_users, device))

    # ---- stage 2: distillation ----
    if args.stage in ("student", "all"):
        if resume is not None and resume["stage"] == "student":
            teacher.load_state_dict(resume["models"]["teacher"])
        teacher_user, teacher_item = teacher_embeddings()
        teacher.freeze_for_distillation()
        prompt_params = [p for p in teacher.parameters() if p.requires_grad]
        seed_everything(args.seed + 1)   # the same student initialisation on every rank
        student = build_student(args.student_model_type, ds.n_users, ds.n_items, args.student_embed_size,
                                graphs=graphs, n_layers=args.student_layers,
                                hidden=args.student_hidden).to(device)
        if args.student_init == "teacher":
            student.init_embeddings(teacher_user, teacher_item)
        modules = {"student": student, "teacher": teacher}
        groups = [dict(params=list(student.parameters()), lr=args.student_lr)]
        if args.student_embed_size != teacher_cfg["embed_size"]:
            # maps student embeddings to the teacher's width for the embedding KD only
            modules["projector"] = torch.nn.Linear(args.student_embed_size, teacher_cfg["embed_size"],
                                                   bias=False).to(device)
            groups[0]["params"] += list(modules["projector"].parameters())
        if prompt_params:
            groups.append(dict(params=prompt_params, lr=args.prompt_lr))
        optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
        if resume is not None and resume["stage"] == "student":
            state, best = restore(modules, optimizer)
        else:
            state, best = StageState(), {}
        # without trainable prompts the frozen teacher's outputs never change: compute them once
        fixed_teacher = None
        if not prompt_params:
            with torch.no_grad():
                fixed_teacher = teacher()

        def student_embeddings():
            student.eval()
            with torch.no_grad():
                return student()

        def save_student_best(epoch, metrics):
            best["student"] = copy.deepcopy(student.state_dict())
            best["teacher"] = copy.deepcopy(teacher.state_dict())
            if writer:
                save_checkpoint(dict(stage="student", model=best["student"], teacher=best["teacher"],
                                     optimizer=optimizer.state_dict(), epoch=epoch, best_score=metrics["recall@20"],
                                     val=metrics, config=config, data=data_signature(ds)),
                                os.path.join(run_dir, "student.pt"))

        def student_loss(users, pos, neg, extra):
            t_out = teacher() if fixed_teacher is None else fixed_teacher
            return student_terms(student, t_out, users, pos, neg, extra, weights, modules.get("projector"))

        with stop_flag:
            state, stopper = train_stage(
                "student", train_modules=[student] + ([modules["projector"]] if "projector" in modules else []),
                optimizer=optimizer, loss_terms=student_loss, sampler=sampler, batch_size=args.batch_size,
                extra_negatives=args.neg_sample_num,
                evaluate_val=lambda: val_eval(dot_scores(*student_embeddings())),
                max_epochs=1 if args.dry_run else args.student_epoch, patience=args.early_stopping_patience,
                verbose=args.verbose, on_best=save_student_best,
                save=lambda st: checkpoint("student", modules, optimizer, best, st),
                log=log, device=device, state=state, stop_flag=stop_flag, nan_policy=args.nan_policy,
                max_batches=max_batches, **parallel)
        student.load_state_dict(best["student"])
        teacher.load_state_dict(best["teacher"])
        val = state.history[stopper.best_epoch - 1]["val"]
        student_params = count_parameters(student)
        results["student"] = stage_summary(args.student_model_type, state, stopper.best_epoch, student_params,
                                           val, test_eval(dot_scores(*student_embeddings())))
        results["student_history"] = state.history
        all_items = torch.arange(ds.n_items, device=device)
        student.eval()
        results["efficiency"].update(student_params=student_params, student_infer_ms=measure_inference_ms(
            lambda users: student.embed(users, all_items), ds.n_users, device))
        s = results["student"]
        log(f"student best epoch {s['best_epoch']}: val {format_metrics(s['val'])} | test {format_metrics(s['test'])}")

    popularity = torch.as_tensor(np.asarray(ds.train.sum(axis=0)).ravel(), dtype=torch.float32, device=device)
    results["most_popular"] = dict(test=test_eval(lambda users: popularity.repeat(users.numel(), 1)))
    log(summary_table(results, args.topk))

    if not writer:
        return 0
    if not args.no_plot:
        histories = {"teacher": results.get("teacher_history", []), "student": results.get("student_history", [])}
        best_epochs = {stage: results[stage]["best_epoch"] for stage in ("teacher", "student") if stage in results}
        plot_curves(histories, best_epochs, os.path.join(run_dir, "curves.png"), title=f"PromptMM on {args.dataset}")
    results_path = os.path.join(run_dir, "results.json")
    write_json(results, results_path)
    if args.results_json:
        write_json(results, args.results_json)
    log(f"run folder: {run_dir} (results.json, log.txt{'' if args.no_plot else ', curves.png'})")
    return 0


def main(argv=None):
    args = parse_args(argv)
    dist = None
    if launched_by_torchrun():
        try:
            device = resolve_device(args.device)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        dist = Distributed(device.type)
    log = Logger(enabled=dist is None or dist.is_main)
    try:
        return run(args, log, dist)
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
        if dist is not None:
            dist.close()


if __name__ == "__main__":
    code = main()
    if launched_by_torchrun():
        exit_without_finalizing(code)
    sys.exit(code)

"""Every hyper-parameter of a run lives here.

Flags have typed defaults; a per-dataset preset (``PRESETS``) overrides those defaults, and
flags given on the command line override the preset. Only ``main.py`` calls
:func:`parse_args`; every other module receives plain values.
"""
import argparse
import json
import sys

from utility.config import flag_defaults
from utility.errors import UserError


# Canonical preset name for each accepted spelling of a published dataset.
DATASET_ALIASES = {
    "tiktok": "tiktok",
    "netflix": "netflix",
    "amazon": "amazon",
    "electronics": "amazon",
    "amazon-electronics": "amazon",
    "movielens": "movielens",
}

# Per-dataset settings, chosen on each dataset's validation split (README, "Design notes").
PRESETS = {
    "tiktok": dict(mm_fusion_weight=0.02, batch_size=16384, lr=8e-3, student_batch_size=2048, student_patience=5,
                   kd_list_weight=1.0, knn_k=0),
    "netflix": dict(),
    "amazon": dict(),
    "movielens": dict(lr=5e-3, early_stopping_patience=10, knn_k=0),
}


def preset_name(dataset):
    """The preset a dataset name selects, or None for a custom folder."""
    return DATASET_ALIASES.get(dataset.lower())


def build_parser():
    d = flag_defaults()   # the defaults of the flags that a config field owns (utility/config.py)
    p = argparse.ArgumentParser(
        description="PromptMM: multi-modal knowledge distillation for recommendation with prompt-tuning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data and run")
    g.add_argument("--dataset", default="movielens",
                   help="folder under --data_path; tiktok, netflix, amazon (electronics) and movielens also select a preset")
    g.add_argument("--data_path", default="data", help="folder that holds the dataset folders")
    g.add_argument("--config", default=None, metavar="JSON",
                   help="flag values from a JSON object {flag: value} (e.g. a tuned best.json); "
                        "they override the preset, and flags on the command line override them")
    g.add_argument("--preset", default=None,
                   help="use this dataset's preset for a folder of another name, or none (default: from --dataset)")
    g.add_argument("--runs_dir", default="runs", help="each run writes runs_dir/<dataset>/<timestamp>/")
    g.add_argument("--results_json", default=None, help="also write results.json to this path")
    g.add_argument("--stage", choices=["teacher", "student", "all"], default="all",
                   help="teacher: stage 1 only; student: stage 2 from --teacher_ckpt; all: both")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--seed", type=int, default=2024)
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    g.add_argument("--dry_run", action="store_true", help="one epoch of two batches per stage (smoke test)")
    g.add_argument("--no_plot", action="store_true", help="do not write curves.png into the run folder")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/checkpoint.pt with the run's own config")

    g = p.add_argument_group("evaluation")
    g.add_argument("--topk", type=int, nargs="+", default=[10, 20, 40, 50], help="cut-offs K of the metrics")
    g.add_argument("--no_test", action="store_true",
                   help="never evaluate the test split (tuning runs select on validation only)")
    g.add_argument("--no_exclude_val", dest="exclude_val", action="store_false",
                   help="do not exclude validation items when testing (what the original code did)")
    g.add_argument("--eval_users", type=int, default=None, metavar="N",
                   help="evaluate a fixed random sample of N users of each held-out split (drawn once from "
                        "--seed; recorded in results.json) instead of all of them: for very large datasets")
    g.add_argument("--eval_every", type=int, default=d["eval_every"], help="evaluate on validation every this many epochs")
    g.add_argument("--valid_metric", default=d["valid_metric"],
                   help="validation metric that selects the best epoch and drives early stopping "
                        "(recall, ndcg, precision, hit or ndcg_legacy @K, K one of --topk)")
    g.add_argument("--early_stopping_patience", type=int, default=d["early_stopping_patience"],
                   help="stop after this many evaluations without a better --valid_metric")
    g.add_argument("--epoch", type=int, default=d["epoch"], help="maximum epochs of each stage")

    g = p.add_argument_group("teacher (stage 1)")
    g.add_argument("--batch_size", type=int, default=d["batch_size"],
                   help="BPR triples per step (per process under torchrun: the global batch is N times this)")
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--reg", type=float, default=d["reg"], help="L2 penalty on the batch's ID embeddings (both stages)")
    g.add_argument("--embed_size", type=int, default=d["embed_size"])
    g.add_argument("--cf_layers", type=int, default=d["cf_layers"],
                   help="LightGCN layers of the CF branch (and of the student)")
    g.add_argument("--mm_layers", type=int, default=d["mm_layers"], help="user-item hops of the modality GNN")
    g.add_argument("--feat_prompt_weight", type=float, default=d["feat_prompt_weight"],
                   help="lambda_f: prompt added to features")
    g.add_argument("--emb_prompt_weight", type=float, default=d["emb_prompt_weight"],
                   help="lambda_s: prompt added to ID embeddings")
    g.add_argument("--mm_fusion_weight", type=float, default=d["mm_fusion_weight"],
                   help="lambda_c: modality knowledge in e^T")
    g.add_argument("--mm_loss_weight", type=float, default=d["mm_loss_weight"], help="lambda_m: BPR on each modality's f^m")
    g.add_argument("--prompt_loss_weight", type=float, default=d["prompt_loss_weight"], help="lambda_p: BPR on the prompts")
    g.add_argument("--item_residual", action=argparse.BooleanOptionalAction, default=d["item_residual"],
                   help="add h^m to f_I^m so that items without training interactions keep their content")
    g.add_argument("--knn_k", type=int, default=d["knn_k"],
                   help="item-item kNN graph of each modality's features (cosine, k neighbours, symmetrised) "
                        "smoothing the item ID embeddings; 0: off. Chosen across datasets on validation (docs/design.md)")
    g.add_argument("--no_prompt", action="store_true", help="run both stages without the prompt module")
    g.add_argument("--no_modalities", action="store_true",
                   help="switch the teacher's modality branch off, and with it the prompts built from the "
                        "features: an ID-only LightGCN teacher")

    g = p.add_argument_group("student (stage 2)")
    g.add_argument("--teacher_ckpt", default=None,
                   help="distil from this saved teacher instead of training one; the teacher's architecture "
                        "(and the student's default width) comes from the file")
    g.add_argument("--student_init", choices=["teacher", "random"], default=d["student_init"])
    g.add_argument("--student_embed_size", type=int, default=None, help="default: the teacher's width")
    g.add_argument("--student_lr", type=float, default=d["lr"], help="learning rate of the student and the prompts")
    g.add_argument("--student_batch_size", type=int, default=None,
                   help="triples per distillation step (default: --batch_size)")
    g.add_argument("--student_patience", type=int, default=None,
                   help="early-stopping patience of stage 2 (default: --early_stopping_patience)")
    g.add_argument("--neg_sample_num", type=int, default=d["neg_sample_num"], help="K extra negatives per row for list-wise KD")
    g.add_argument("--kd_temperature", type=float, default=d["kd_temperature"], help="tau of the pair- and list-wise KD")
    g.add_argument("--kd_pair_weight", type=float, default=d["kd_pair_weight"])
    g.add_argument("--kd_list_weight", type=float, default=d["kd_list_weight"],
                   help="chosen on validation of MovieLens without a preset (docs/design.md)")
    g.add_argument("--kd_emb_weight", type=float, default=d["kd_emb_weight"])
    g.add_argument("--kd_de_weight", type=float, default=d["kd_de_weight"],
                   help="representation KD: the student's embeddings (through the projector when narrower) "
                        "regress the fused teacher embeddings e^T of the batch's users and items "
                        "(default: 1 with --student_init random, 0 with the teacher's initialisation)")
    g.add_argument("--item_teacher", choices=["ease", "none"], default=d["item_teacher"],
                   help="blend EASE's item-item scores into the teacher's scores that the student distils; its "
                        "lambda, the blend weight (0 included) and the student's default width are chosen on "
                        "validation (docs/method.md); none: the graph teacher alone")
    g.add_argument("--no_kd", action="store_true",
                   help="switch every KD term off (the student learns from BPR alone): the one-factor control of KD")
    return p


# Flags that were removed (most belonged to experiments measured and not kept), and what replaced them.
REMOVED_FLAGS = {
    "--kd_rank_weight": "ranking KD was measured and not kept",
    "--kd_rank_k": "ranking KD was measured and not kept",
    "--kd_score_weight": "score KD was measured and not kept",
    "--knn_on": "the kNN graphs smooth the item ID embeddings; use --knn_k",
    "--knn_layers": "the kNN graphs take one hop; use --knn_k",
    "--dropout": "dropout was measured and not kept",
    "--prompt_dropout": "prompt dropout was measured and not kept",
    "--no_disentangle": "the list-wise KD is the disentangled one (the plain KL had the same value)",
    "--no_list_reweight": "the list-wise KD always re-weights its non-target part",
    "--paper_kd": "use --kd_de_weight 0 for the paper's three KD terms",
    "--verbose": "use --eval_every",
    "--max_steps_per_epoch": "bench/scale.py times a few steps through the library",
    "--check_replicas": "the distributed tests check the replicas",
    "--weight_decay": "use --reg",
    "--student_reg": "use --reg (both stages)",
    "--prompt_lr": "the prompts train with --student_lr",
    "--student_model_type": "the student is a LightGCN (the mlp student was measured and not kept)",
    "--student_hidden": "the student is a LightGCN (the mlp student was measured and not kept)",
    "--student_layers": "the student has the teacher's depth; use --cf_layers",
    "--student_epoch": "use --epoch (both stages)",
    "--eval_batch_size": "evaluation blocks are sized to a fixed memory budget",
    "--nan_policy": "a non-finite loss stops the run and keeps the last good checkpoint",
    "--sce_gamma": "the SCE exponent is fixed at the paper's 2",
}


def check_removed(flags, where="on the command line"):
    """A one-line error for a removed flag, naming what replaced it."""
    for flag in flags:
        name = "--" + str(flag).split("=")[0].lstrip("-")
        if name in REMOVED_FLAGS:
            raise UserError(f"{name} ({where}) was removed: {REMOVED_FLAGS[name]} (docs/experiments.md)")


def parse_args(argv=None):
    """Parse flags; a dataset's preset overrides the defaults, explicit flags override both.

    ``args.given`` lists the flag destinations set on the command line or by ``--config``: what a
    teacher checkpoint must agree with (a preset's values yield to the checkpoint)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    check_removed([a for a in argv if a.startswith("--")])
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    name = None if known.preset == "none" else preset_name(known.preset or known.dataset)
    if known.preset not in (None, "none") and name is None:
        raise UserError(f"--preset {known.preset}: unknown preset (choose from {', '.join(sorted(PRESETS))})")
    if name is not None:
        parser.set_defaults(**PRESETS[name])
    given = set()
    if known.config is not None:
        from_file = config_defaults(parser, known.config)
        parser.set_defaults(**from_file)
        given |= set(from_file)
    args = parser.parse_args(argv)
    args.preset = name
    args.given = sorted(given | command_line_dests(parser, argv))
    return resolve_defaults(args)


def command_line_dests(parser, argv):
    """The destinations of the flags that argv sets."""
    unset = object()
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            probe._add_action(action)
    probe.set_defaults(**{a.dest: unset for a in probe._actions})
    values, _ = probe.parse_known_args(argv)
    return {dest for dest, value in vars(values).items() if value is not unset}


def resolve_defaults(args):
    """Flags whose default follows another flag get their value (also for a resumed run's config
    written before such a flag existed)."""
    if args.student_batch_size is None:
        args.student_batch_size = args.batch_size
    if args.student_patience is None:
        args.student_patience = args.early_stopping_patience
    if not hasattr(args, "given"):
        args.given = []
    return args


def config_defaults(parser, path):
    """{flag destination: value} from a JSON config file, each value checked as its flag parses."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UserError(f"--config {path}: cannot read the file ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a JSON object of flag: value")
    check_removed(data, where=f"in {path}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "resume")}
    values = {}
    for key, value in data.items():
        action = actions.get(str(key).lstrip("-"))
        if action is None:
            raise UserError(f"--config {path}: unknown key {key!r} (not a flag of main.py)")
        problem = _bad_value(action, value)
        if problem:
            raise UserError(f"--config {path}: {key} = {json.dumps(value)}: {problem}")
        values[action.dest] = value
    return values


def _bad_value(action, value):
    """Why ``value`` cannot be this flag's value, or None."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return None if isinstance(value, bool) else "expected true or false"
    if value is None:
        return None if action.default is None else "expected a value"
    items = value if action.nargs in ("+", "*") else [value]
    if action.nargs in ("+", "*") and (not isinstance(value, list) or not value):
        return "expected a non-empty list"
    for item in items:
        kind = action.type or str
        ok = {int: isinstance(item, int) and not isinstance(item, bool),
              float: isinstance(item, (int, float)) and not isinstance(item, bool),
              str: isinstance(item, str)}.get(kind, True)
        if not ok:
            return f"expected {'a number' if kind is float else 'an integer' if kind is int else 'a string'}"
        if action.choices is not None and item not in action.choices:
            return f"expected one of {', '.join(map(str, action.choices))}"
    return None


def validate_args(args):
    """Flag values that parse but make no sense: a one-line UserError naming the flag."""
    from utility.metrics import METRIC_FUNCTIONS

    positive = ("epoch", "batch_size", "embed_size", "mm_layers", "eval_every", "early_stopping_patience",
                "student_batch_size", "student_patience")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.student_embed_size is not None and args.student_embed_size < 1:
        raise UserError(f"--student_embed_size {args.student_embed_size}: must be at least 1")
    non_negative = ("knn_k", "cf_layers", "neg_sample_num", "threads", "reg", "kd_pair_weight", "kd_list_weight",
                    "kd_emb_weight", "feat_prompt_weight", "emb_prompt_weight", "mm_fusion_weight", "mm_loss_weight",
                    "prompt_loss_weight")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise UserError(f"--{name} {getattr(args, name)}: must not be negative")
    if args.kd_de_weight is not None and args.kd_de_weight < 0:
        raise UserError(f"--kd_de_weight {args.kd_de_weight}: must not be negative")
    for name in ("lr", "student_lr", "kd_temperature"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name} {getattr(args, name)}: must be positive")
    if args.eval_users is not None and args.eval_users < 1:
        raise UserError(f"--eval_users {args.eval_users}: must be at least 1")
    if min(args.topk) < 1:
        raise UserError(f"--topk {args.topk}: every K must be at least 1")
    metric, _, k = args.valid_metric.partition("@")
    if metric not in METRIC_FUNCTIONS or not k.isdigit():
        raise UserError(f"--valid_metric {args.valid_metric}: expected NAME@K, NAME one of {', '.join(METRIC_FUNCTIONS)}")
    if int(k) not in args.topk:
        raise UserError(f"--valid_metric {args.valid_metric}: K={k} is not one of --topk {args.topk}")

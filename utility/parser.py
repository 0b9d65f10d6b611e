"""Every hyper-parameter of a run lives here.

Flags have typed defaults; a per-dataset preset (``PRESETS``) overrides those defaults, and
flags given on the command line override the preset. Only ``main.py`` calls
:func:`parse_args`; every other module receives plain values.
"""
import argparse
import json
import warnings

from utility.errors import UserError


class _DeprecatedAlias(argparse.Action):
    """An old flag name that still works, with a warning naming its replacement."""

    def __init__(self, option_strings, dest, replacement, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated; use {self.replacement}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)

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
    g.add_argument("--max_steps_per_epoch", type=int, default=None, metavar="N",
                   help="end every epoch after N steps (scale checks: time a few steps, project the epoch)")
    g.add_argument("--no_plot", action="store_true", help="do not write curves.png into the run folder")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/checkpoint.pt with the run's own config")
    g.add_argument("--check_replicas", action="store_true",
                   help="distributed runs: verify after every step that all ranks hold identical parameters (slow)")
    g.add_argument("--nan_policy", choices=["stop", "skip"], default="stop",
                   help="a non-finite loss stops the run (keeping the last good checkpoint) or skips the batch")

    g = p.add_argument_group("evaluation")
    g.add_argument("--topk", type=int, nargs="+", default=[10, 20, 40, 50], help="cut-offs K of the metrics")
    g.add_argument("--eval_batch_size", type=int, default=4096, help="users scored at once (capped by memory)")
    g.add_argument("--no_test", action="store_true",
                   help="never evaluate the test split (tuning runs select on validation only)")
    g.add_argument("--no_exclude_val", dest="exclude_val", action="store_false",
                   help="do not exclude validation items when testing (what the original code did)")
    g.add_argument("--eval_users", type=int, default=None, metavar="N",
                   help="evaluate a fixed random sample of N users of each held-out split (drawn once from "
                        "--seed; recorded in results.json) instead of all of them: for very large datasets")
    g.add_argument("--eval_every", type=int, default=1, help="evaluate on validation every this many epochs")
    g.add_argument("--verbose", dest="eval_every", type=int, action=_DeprecatedAlias, replacement="--eval_every",
                   help="deprecated alias of --eval_every")
    g.add_argument("--valid_metric", default="recall@20",
                   help="validation metric that selects the best epoch and drives early stopping "
                        "(recall, ndcg, precision, hit or ndcg_legacy @K, K one of --topk)")
    g.add_argument("--early_stopping_patience", type=int, default=20,
                   help="stop after this many evaluations without a better --valid_metric")

    g = p.add_argument_group("teacher (stage 1)")
    g.add_argument("--epoch", type=int, default=300, help="maximum teacher epochs")
    g.add_argument("--batch_size", type=int, default=2048,
                   help="BPR triples per step (per process under torchrun: the global batch is N times this)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    g.add_argument("--reg", type=float, default=1e-4, help="L2 penalty on the batch's ID embeddings")
    g.add_argument("--embed_size", type=int, default=64)
    g.add_argument("--cf_layers", type=int, default=2, help="LightGCN layers of the CF GNN")
    g.add_argument("--mm_layers", type=int, default=1, help="user-item hops of the modality GNN")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout after the feature reduction")
    g.add_argument("--prompt_dropout", type=float, default=0.0, help="dropout inside the prompt module")
    g.add_argument("--feat_prompt_weight", type=float, default=0.1, help="lambda_f: prompt added to features")
    g.add_argument("--emb_prompt_weight", type=float, default=0.1, help="lambda_s: prompt added to ID embeddings")
    g.add_argument("--mm_fusion_weight", type=float, default=1.0, help="lambda_c: modality knowledge in e^T")
    g.add_argument("--mm_loss_weight", type=float, default=0.1, help="lambda_m: BPR on each modality's f^m")
    g.add_argument("--prompt_loss_weight", type=float, default=0.1, help="lambda_p: BPR on the prompts")
    g.add_argument("--item_residual", action=argparse.BooleanOptionalAction, default=True,
                   help="add h^m to f_I^m so that items without training interactions keep their content")
    g.add_argument("--knn_k", type=int, default=10,
                   help="item-item kNN graph of each modality's features (cosine, k neighbours, symmetrised); "
                        "0: off. Chosen across datasets on validation (docs/design.md)")
    g.add_argument("--knn_layers", type=int, default=1, help="hops on the kNN graphs (with --knn_k)")
    g.add_argument("--knn_on", choices=["features", "ids", "both"], default="ids",
                   help="the kNN graphs smooth each modality's reduced features, the item ID embeddings "
                        "(over the modalities' mean graph), or both")
    g.add_argument("--no_prompt", action="store_true", help="run both stages without the prompt module")
    g.add_argument("--no_modalities", action="store_true",
                   help="switch the teacher's modality branch off, and with it the prompts built from the "
                        "features: an ID-only LightGCN teacher")

    g = p.add_argument_group("student (stage 2)")
    g.add_argument("--teacher_ckpt", default=None, help="distil from this saved teacher instead of training one")
    g.add_argument("--student_model_type", choices=["mlp", "lightgcn"], default="lightgcn")
    g.add_argument("--student_init", choices=["teacher", "random"], default="teacher")
    g.add_argument("--student_embed_size", type=int, default=None, help="default: --embed_size")
    g.add_argument("--student_layers", type=int, default=2, help="LightGCN layers of the lightgcn student")
    g.add_argument("--student_hidden", type=int, default=128, help="hidden width of the mlp student")
    g.add_argument("--student_epoch", type=int, default=300, help="maximum distillation epochs")
    g.add_argument("--student_lr", type=float, default=1e-3)
    g.add_argument("--student_batch_size", type=int, default=None,
                   help="triples per distillation step (default: --batch_size)")
    g.add_argument("--student_patience", type=int, default=None,
                   help="early-stopping patience of stage 2 (default: --early_stopping_patience)")
    g.add_argument("--student_reg", type=float, default=1e-4, help="L2 penalty on the batch's student embeddings")
    g.add_argument("--prompt_lr", type=float, default=None, help="learning rate of the prompts in stage 2 (default: --student_lr)")
    g.add_argument("--neg_sample_num", type=int, default=10, help="K extra negatives per row for list-wise KD")
    g.add_argument("--kd_temperature", type=float, default=1.0, help="tau of the pair- and list-wise KD")
    g.add_argument("--kd_pair_weight", type=float, default=1.0)
    g.add_argument("--kd_list_weight", type=float, default=0.1,
                   help="chosen on validation of MovieLens without a preset (docs/design.md)")
    g.add_argument("--kd_emb_weight", type=float, default=0.1)
    g.add_argument("--sce_gamma", type=float, default=2.0, help="exponent of the SCE embedding KD")
    g.add_argument("--kd_rank_weight", type=float, default=0.0,
                   help="ranking KD: the student ranks the teacher's top --kd_rank_k unseen items of each user, "
                        "in the teacher's order, above the list negatives")
    g.add_argument("--kd_score_weight", type=float, default=0.0,
                   help="score KD: KL between the fused teacher's and the student's softmax over each row's "
                        "positive, its list negatives and the user's top --kd_rank_k unseen items of the teacher")
    g.add_argument("--kd_de_weight", type=float, default=None,
                   help="representation KD: the student's embeddings (through the projector when narrower) "
                        "regress the fused teacher embeddings e^T of the batch's users and items "
                        "(default: 1 with --student_init random, 0 with the teacher's initialisation)")
    g.add_argument("--kd_rank_k", type=int, default=10, help="m: the teacher's top unseen items per user")
    g.add_argument("--paper_kd", action="store_true",
                   help="the paper's three KD terms only (pair-wise, list-wise, embedding): no ranking KD")
    g.add_argument("--no_kd", action="store_true",
                   help="switch every KD term off (the student learns from BPR alone): the one-factor control of KD")
    g.add_argument("--no_list_reweight", action="store_true",
                   help="weight the non-target list KD by 1 instead of the teacher's non-target mass")
    g.add_argument("--no_disentangle", action="store_true",
                   help="plain list-wise KL instead of the target / non-target decomposition")
    return p


def parse_args(argv=None):
    """Parse flags; a dataset's preset overrides the defaults, explicit flags override both."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    name = None if known.preset == "none" else preset_name(known.preset or known.dataset)
    if known.preset not in (None, "none") and name is None:
        raise UserError(f"--preset {known.preset}: unknown preset (choose from {', '.join(sorted(PRESETS))})")
    if name is not None:
        parser.set_defaults(**PRESETS[name])
    if known.config is not None:
        parser.set_defaults(**config_defaults(parser, known.config))
    args = parser.parse_args(argv)
    args.preset = name
    return resolve_defaults(args)


def resolve_defaults(args):
    """Flags whose default follows another flag get their value (also for a resumed run's config
    written before such a flag existed)."""
    if args.student_embed_size is None:
        args.student_embed_size = args.embed_size
    if args.prompt_lr is None:
        args.prompt_lr = args.student_lr
    if args.student_batch_size is None:
        args.student_batch_size = args.batch_size
    if args.student_patience is None:
        args.student_patience = args.early_stopping_patience
    if args.kd_de_weight is None:   # chosen on validation: see docs/design.md, "What distillation transfers"
        args.kd_de_weight = 1.0 if args.student_init == "random" else 0.0
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

    positive = ("epoch", "batch_size", "embed_size", "mm_layers", "student_epoch", "eval_batch_size",
                "eval_every", "early_stopping_patience", "student_embed_size", "student_hidden", "kd_rank_k",
                "student_batch_size", "student_patience", "knn_layers")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        raise UserError(f"--max_steps_per_epoch {args.max_steps_per_epoch}: must be at least 1")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: must be at least 1")
    non_negative = ("knn_k", "cf_layers", "student_layers", "neg_sample_num", "threads", "reg", "student_reg",
                    "weight_decay", "kd_pair_weight", "kd_list_weight", "kd_emb_weight", "kd_rank_weight", "kd_score_weight",
                    "kd_de_weight",
                    "feat_prompt_weight", "emb_prompt_weight", "mm_fusion_weight", "mm_loss_weight",
                    "prompt_loss_weight")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise UserError(f"--{name} {getattr(args, name)}: must not be negative")
    for name in ("lr", "student_lr", "prompt_lr", "kd_temperature"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name} {getattr(args, name)}: must be positive")
    for name in ("dropout", "prompt_dropout"):
        if not 0 <= getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: must be in [0, 1)")
    if not args.sce_gamma >= 1:   # below 1, |1 - cos|^gamma has an infinite slope at cos = 1
        raise UserError(f"--sce_gamma {args.sce_gamma}: must be at least 1")
    if args.eval_users is not None and args.eval_users < 1:
        raise UserError(f"--eval_users {args.eval_users}: must be at least 1")
    if min(args.topk) < 1:
        raise UserError(f"--topk {args.topk}: every K must be at least 1")
    metric, _, k = args.valid_metric.partition("@")
    if metric not in METRIC_FUNCTIONS or not k.isdigit():
        raise UserError(f"--valid_metric {args.valid_metric}: expected NAME@K, NAME one of {', '.join(METRIC_FUNCTIONS)}")
    if int(k) not in args.topk:
        raise UserError(f"--valid_metric {args.valid_metric}: K={k} is not one of --topk {args.topk}")
    if (args.kd_list_weight or args.kd_rank_weight or args.kd_score_weight) and args.neg_sample_num < 1:
        raise UserError("--neg_sample_num 0: the list-wise and ranking KD need at least one extra negative "
                        "(or set --kd_list_weight 0 --kd_rank_weight 0)")

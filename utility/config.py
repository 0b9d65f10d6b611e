"""Typed configuration of each part of a run, and the one source of every default.

The flags (``utility/parser.py``) are what a user edits; these dataclasses are what the code
reads. Each field that a flag sets names its flag in ``metadata["flag"]``, and the parser takes
that flag's default from the field (:func:`flag_defaults`), so the two cannot disagree. A model or
objective takes its own config and nothing else.
"""
from dataclasses import dataclass, field, fields


def _flag(default, flag):
    return field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's architecture and its stage-1 loss weights (docs/method.md, stage 1)."""

    embed_size: int = _flag(64, "embed_size")
    cf_layers: int = _flag(2, "cf_layers")                      # LightGCN layers of the CF branch
    mm_layers: int = _flag(1, "mm_layers")                      # user-item hops of the modality GNN
    feat_prompt_weight: float = _flag(0.1, "feat_prompt_weight")   # lambda_f
    emb_prompt_weight: float = _flag(0.1, "emb_prompt_weight")     # lambda_s
    mm_fusion_weight: float = _flag(1.0, "mm_fusion_weight")       # lambda_c
    item_residual: bool = _flag(True, "item_residual")
    knn_k: int = _flag(10, "knn_k")                             # neighbours of the item-item kNN graphs (0: none)
    mm_loss_weight: float = _flag(0.1, "mm_loss_weight")        # lambda_m
    prompt_loss_weight: float = _flag(0.1, "prompt_loss_weight")   # lambda_p
    reg: float = _flag(1e-4, "reg")
    use_prompt: bool = True                                     # --no_prompt
    use_modalities: bool = True                                 # --no_modalities

    @classmethod
    def from_args(cls, args):
        values = _flag_values(cls, args, exclude=("use_prompt", "use_modalities"))
        # the prompts are built from the modality features: no modalities, no prompts
        return cls(**values, use_prompt=not (args.no_prompt or args.no_modalities),
                   use_modalities=not args.no_modalities)


@dataclass(frozen=True)
class StudentConfig:
    """The student (a LightGCN on ID embeddings): width, depth, initialisation and L2 penalty."""

    embed_size: int = 64                # --student_embed_size, default: the teacher's width
    n_layers: int = 2                   # the teacher's --cf_layers, or 0 when chosen on validation
    init: str = _flag("teacher", "student_init")
    reg: float = 1e-4                   # --reg

    @classmethod
    def from_args(cls, args, teacher):
        """``teacher``: the :class:`TeacherConfig` distilled (from the flags or its checkpoint)."""
        return cls(embed_size=args.student_embed_size or teacher.embed_size, n_layers=teacher.cf_layers,
                   init=args.student_init, reg=args.reg)


@dataclass(frozen=True)
class KDConfig:
    """The distillation terms of stage 2 (docs/method.md, stage 2); a weight of 0 removes a term."""

    pair_weight: float = _flag(1.0, "kd_pair_weight")
    list_weight: float = _flag(0.1, "kd_list_weight")
    emb_weight: float = _flag(0.1, "kd_emb_weight")
    # representation KD; the flag's default None means 1 for a random student start, else 0
    de_weight: float = _flag(None, "kd_de_weight")
    temperature: float = _flag(1.0, "kd_temperature")           # tau of the pair- and list-wise KD
    sce_gamma: float = 2.0              # the SCE exponent, the paper's value
    neg_sample_num: int = _flag(10, "neg_sample_num")           # K extra negatives of each list
    item_teacher: str = _flag("ease", "item_teacher")           # blend EASE into the distilled scores ("none": off)

    @classmethod
    def from_args(cls, args):
        values = _flag_values(cls, args)
        if values["de_weight"] is None:
            values["de_weight"] = 1.0 if args.student_init == "random" else 0.0
        if args.no_kd:   # every KD term off, whatever its weight: the one-factor control of KD
            values.update(pair_weight=0.0, list_weight=0.0, emb_weight=0.0, de_weight=0.0)
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """How one stage is optimised, validated and stopped."""

    epochs: int = _flag(300, "epoch")
    lr: float = _flag(1e-3, "lr")
    batch_size: int = _flag(2048, "batch_size")
    patience: int = _flag(20, "early_stopping_patience")   # evaluations without a better validation score
    eval_every: int = _flag(1, "eval_every")
    valid_metric: str = _flag("recall@20", "valid_metric")
    max_batches: int = None             # --dry_run (and scale benchmarks): a few batches per epoch

    @classmethod
    def from_args(cls, args, stage):
        student = stage == "student"
        return cls(epochs=1 if args.dry_run else args.epoch,
                   lr=args.student_lr if student else args.lr,
                   batch_size=args.student_batch_size if student else args.batch_size,
                   patience=args.student_patience if student else args.early_stopping_patience,
                   eval_every=args.eval_every, valid_metric=args.valid_metric,
                   max_batches=2 if args.dry_run else getattr(args, "max_batches", None))


CONFIGS = (TeacherConfig, StudentConfig, KDConfig, TrainConfig)


def flag_defaults():
    """{flag destination: default} of every flag that a config field owns."""
    return {f.metadata["flag"]: f.default for cls in CONFIGS for f in fields(cls) if "flag" in f.metadata}


def _flag_values(cls, args, exclude=()):
    return {f.name: getattr(args, f.metadata["flag"]) for f in fields(cls)
            if "flag" in f.metadata and f.name not in exclude}


def from_dict(cls, values):
    """A config from a saved dict; keys the class does not know are ignored."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

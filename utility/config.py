"""Typed configuration of each part of a run, built once from the parsed flags.

The flags (``utility/parser.py``) are what a user edits; these dataclasses are what the code
reads. A model or objective takes its own config and nothing else.
"""
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's architecture and its stage-1 loss weights (docs/method.md, stage 1)."""

    embed_size: int = 64
    cf_layers: int = 2                  # LightGCN layers of the CF branch
    mm_layers: int = 1                  # user-item hops of the modality GNN
    feat_prompt_weight: float = 0.1     # lambda_f
    emb_prompt_weight: float = 0.1      # lambda_s
    mm_fusion_weight: float = 1.0       # lambda_c
    dropout: float = 0.0
    prompt_dropout: float = 0.0
    item_residual: bool = True
    use_prompt: bool = True
    use_modalities: bool = True
    mm_loss_weight: float = 0.1         # lambda_m
    prompt_loss_weight: float = 0.1     # lambda_p
    reg: float = 1e-4
    # The kNN fields keep the values of checkpoints written before they existed (the flags' defaults
    # are --knn_k 10 --knn_on ids); a Teacher with knn_k > 0 needs the graphs (main.knn_graphs).
    knn_k: int = 0                      # neighbours in each modality's item-item kNN graph (0: none)
    knn_layers: int = 1                 # hops on those graphs
    knn_on: str = "features"            # what they propagate: "features", "ids" or "both"

    @classmethod
    def from_args(cls, args):
        return cls(embed_size=args.embed_size, knn_k=args.knn_k, knn_layers=args.knn_layers, knn_on=args.knn_on,
                   cf_layers=args.cf_layers, mm_layers=args.mm_layers,
                   feat_prompt_weight=args.feat_prompt_weight, emb_prompt_weight=args.emb_prompt_weight,
                   mm_fusion_weight=args.mm_fusion_weight, dropout=args.dropout,
                   prompt_dropout=args.prompt_dropout, item_residual=args.item_residual,
                   # the prompts are built from the modality features: no modalities, no prompts
                   use_prompt=not (args.no_prompt or args.no_modalities),
                   use_modalities=not args.no_modalities, mm_loss_weight=args.mm_loss_weight,
                   prompt_loss_weight=args.prompt_loss_weight, reg=args.reg)


@dataclass(frozen=True)
class StudentConfig:
    """The student's architecture, initialisation and L2 penalty."""

    model_type: str = "lightgcn"        # "lightgcn" or "mlp"
    embed_size: int = 64
    n_layers: int = 2                   # LightGCN layers (lightgcn)
    hidden: int = 128                   # MLP hidden width (mlp)
    init: str = "teacher"               # "teacher" or "random"
    reg: float = 1e-4

    @classmethod
    def from_args(cls, args):
        return cls(model_type=args.student_model_type, embed_size=args.student_embed_size,
                   n_layers=args.student_layers, hidden=args.student_hidden, init=args.student_init,
                   reg=args.student_reg)


@dataclass(frozen=True)
class KDConfig:
    """The three distillation terms of stage 2 (docs/method.md, stage 2)."""

    pair_weight: float = 1.0
    list_weight: float = 1.0
    emb_weight: float = 0.1
    temperature: float = 1.0            # tau of the pair- and list-wise KD
    sce_gamma: float = 2.0
    neg_sample_num: int = 10            # K extra negatives of each list
    disentangle: bool = True
    list_reweight: bool = True
    rank_weight: float = 0.0            # ranking KD from the teacher's top items
    rank_k: int = 10                    # m: the teacher's top unseen items per user it ranks
    de_weight: float = 0.0              # the student's embeddings (projected) regress the teacher's e^T
    score_weight: float = 0.0           # list-wise KD of the fused teacher's scores over [pos, K negatives, top m]

    @property
    def active(self):
        """True when any KD term has a weight."""
        return bool(self.pair_weight or self.list_weight or self.emb_weight or self.rank_weight or self.score_weight
                    or self.de_weight)

    @property
    def needs_lists(self):
        """True when a term scores each row's list of K extra negatives."""
        return bool(self.list_weight or self.rank_weight or self.score_weight)

    @classmethod
    def from_args(cls, args):
        off = getattr(args, "no_kd", False)   # --no_kd: every KD term off, whatever its weight
        return cls(pair_weight=0.0 if off else args.kd_pair_weight, list_weight=0.0 if off else args.kd_list_weight,
                   emb_weight=0.0 if off else args.kd_emb_weight,
                   rank_weight=0.0 if off or args.paper_kd else args.kd_rank_weight, rank_k=args.kd_rank_k,
                   score_weight=0.0 if off or args.paper_kd else args.kd_score_weight,
                   de_weight=0.0 if off or args.paper_kd else args.kd_de_weight,
                   temperature=args.kd_temperature, sce_gamma=args.sce_gamma,
                   neg_sample_num=args.neg_sample_num, disentangle=not args.no_disentangle,
                   list_reweight=not args.no_list_reweight)


@dataclass(frozen=True)
class TrainConfig:
    """How one stage is optimised, validated and stopped."""

    epochs: int = 300
    lr: float = 1e-3
    batch_size: int = 2048
    weight_decay: float = 0.0
    patience: int = 20                  # evaluations without a better validation score
    eval_every: int = 1
    valid_metric: str = "recall@20"
    nan_policy: str = "stop"
    max_batches: int = None             # --dry_run, --max_steps_per_epoch: a few batches per epoch

    @classmethod
    def from_args(cls, args, stage):
        student = stage == "student"
        return cls(epochs=1 if args.dry_run else (args.student_epoch if student else args.epoch),
                   lr=args.student_lr if student else args.lr,
                   batch_size=args.student_batch_size if student else args.batch_size,
                   weight_decay=args.weight_decay,
                   patience=args.student_patience if student else args.early_stopping_patience,
                   eval_every=args.eval_every, valid_metric=args.valid_metric, nan_policy=args.nan_policy,
                   max_batches=2 if args.dry_run else args.max_steps_per_epoch)


def to_dict(cfg):
    return asdict(cfg)


def from_dict(cls, values):
    """A config from a saved dict; keys the class does not know are ignored."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

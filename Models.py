"""PromptMM models: the prompt module, the multi-modal graph teacher and the two students.

Models take sizes and tensors and return tensors. Graphs and modality features arrive as
tensors and are kept as non-persistent buffers: ``.to(device)`` moves them, checkpoints do not
store them.
"""
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utility.config import StudentConfig, TeacherConfig
from utility.sparse_ops import gather_rows, sparse_dense, spmm

def lightgcn_propagate(norm_ui, norm_iu, user, item, n_layers):
    """LightGCN: the mean of layers 0..L of propagation on the symmetric-normalised bipartite graph.

    norm_ui = D_U^-1/2 R D_I^-1/2 and norm_iu its transpose: a layer takes users from items and
    items from users, which is the (users + items) adjacency product in two blocks.
    """
    layer_user, layer_item = user, item
    total_user, total_item = user, item
    for _ in range(n_layers):
        layer_user, layer_item = spmm(norm_ui, norm_iu, layer_item), spmm(norm_iu, norm_ui, layer_user)
        total_user, total_item = total_user + layer_user, total_item + layer_item
    return total_user / (n_layers + 1), total_item / (n_layers + 1)


class PromptModule(nn.Module):
    """Soft prompts from hard tokens: P_U = f_u(H_U), P_I = f_i(H_I) (one linear layer each)."""

    def __init__(self, token_size, embed_size, dropout=0.0):
        super().__init__()
        self.user_proj = nn.Linear(token_size, embed_size)
        self.item_proj = nn.Linear(token_size, embed_size)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.user_proj, self.item_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, user_tokens, item_tokens):
        return self.dropout(self.user_proj(user_tokens)), self.dropout(self.item_proj(item_tokens))

    @property
    def is_linear(self):
        """True when P_I is exactly item_proj(H_I) (no active dropout)."""
        return not (self.training and self.dropout.p > 0)

    def item_context(self, token_feats, feat_sums):
        """P_I^T X = A (H_I^T X) + b (1^T X) for P_I = H_I A^T + b, without forming P_I^T X row by row.

        token_feats = H_I^T X and feat_sums = 1^T X are constants, so this costs d * d_tok * d_m
        instead of n_items * d * d_m. Exact only when :attr:`is_linear`.
        """
        return self.item_proj.weight @ token_feats + self.item_proj.bias[:, None] * feat_sums[None, :]


@dataclass
class TeacherOutput:
    """The teacher's representations; the fused e^T is formed only for the rows asked for.

    e^T = ebar + lambda_c sum_m norm(f^m) is row-wise, so a training step gathers its batch's rows
    and fuses just those (:meth:`fuse`) instead of materialising (and back-propagating through)
    full-size normalised copies; ``user`` / ``item`` give every row (evaluation).
    """
    cf_user: torch.Tensor                   # ebar_U, (n_users, d)
    cf_item: torch.Tensor                   # ebar_I, (n_items, d)
    mm_user: Dict[str, torch.Tensor]        # f^m_U per modality
    mm_item: Dict[str, torch.Tensor]        # f^m_I per modality
    prompt_user: Optional[torch.Tensor]     # P_U (None without the prompt module)
    prompt_item: Optional[torch.Tensor]     # P_I
    fusion_weight: float = 1.0              # lambda_c

    def fuse(self, cf, mm):
        """ebar + lambda_c sum_m norm(f^m) for matching rows of ebar and of each f^m."""
        for f in mm.values():
            cf = cf + self.fusion_weight * F.normalize(f, dim=-1)
        return cf

    @property
    def user(self):
        return self.fuse(self.cf_user, self.mm_user)

    @property
    def item(self):
        return self.fuse(self.cf_item, self.mm_item)


class Teacher(nn.Module):
    """The prompt-enhanced multi-modal graph teacher (docs/method.md, stage 1).

    graphs: dict of sparse tensors ``norm_ui`` / ``norm_iu`` (the symmetric-normalised bipartite
    adjacency's blocks, users x items and its transpose),
    ``user_mean`` / ``user_mean_t`` (row-normalised R and its transpose) and ``item_mean`` /
    ``item_mean_t`` (row-normalised R^T and its transpose). modality_feats: {name: (n_items, d_m)}.
    item_tokens: PCA hard tokens H_I, (n_items, token_size).
    """

    def __init__(self, graphs, modality_feats, item_tokens, cfg=TeacherConfig()):
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graphs["user_mean"].shape
        self.modalities = list(modality_feats) if cfg.use_modalities else []
        if cfg.knn_k and self.modalities and not {"knn_mean", *(f"knn_{m}" for m in self.modalities)} <= set(graphs):
            raise ValueError("knn_k > 0 needs the kNN graphs of every modality and their mean (utility.graph.knn_tensors)")
        for name, graph in graphs.items():
            self.register_buffer(name, graph, persistent=False)
        for name in self.modalities:
            feats = modality_feats[name]
            self.register_buffer(f"feat_{name}", feats, persistent=False)
            # constants of the prompt lift P_I^T X for a linear prompt module (see item_context)
            self.register_buffer(f"token_feat_{name}", item_tokens.T @ feats, persistent=False)
            self.register_buffer(f"feat_sum_{name}", feats.sum(0), persistent=False)
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        self.register_buffer("user_tokens", sparse_dense(graphs["user_mean"], item_tokens), persistent=False)

        d = cfg.embed_size
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.reducers = nn.ModuleDict({name: nn.Linear(modality_feats[name].shape[1], d)
                                       for name in self.modalities})
        for layer in self.reducers.values():
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        # the prompts are built from the modality features: no modalities, no prompts
        use_prompt = cfg.use_prompt and cfg.use_modalities
        self.prompt_module = PromptModule(item_tokens.shape[1], d, cfg.prompt_dropout) if use_prompt else None
        self.frozen = False
        self.use_frozen_parts = True   # off: stage 2 runs the straightforward forward pass

    def prompts(self):
        if self.prompt_module is None:
            return None, None
        return self.prompt_module(self.user_tokens, self.item_tokens)

    def feature_prompt_lift(self, name, prompt_item):
        """lambda_f norm(P_I (P_I^T X^m)) W_m, computed in the d-wide space.

        With C = P_I^T X, the lifted prompt p = P_I C has row norms sqrt(P_i (C C^T) P_i^T), and
        norm(p) W = diag(1/|p_i|) P_I (C W^T): the (n_items, d_m) lifted matrix is never formed.
        """
        if self.prompt_module.is_linear:
            context = self.prompt_module.item_context(getattr(self, f"token_feat_{name}"),
                                                      getattr(self, f"feat_sum_{name}"))
        else:
            context = prompt_item.T @ getattr(self, f"feat_{name}")
        sq_norms = ((prompt_item @ (context @ context.T)) * prompt_item).sum(1)
        norms = sq_norms.clamp_min(0).sqrt().clamp_min(1e-12)        # F.normalize's eps
        weight = self.reducers[name].weight
        return self.cfg.feat_prompt_weight * (prompt_item @ (context @ weight.T)) / norms[:, None]

    def reduce_features(self, name, prompt_item):
        """h^m = drop((X^m + lambda_f norm(P_I (P_I^T X^m))) W_m + b_m)."""
        h = self.reducers[name](getattr(self, f"feat_{name}"))
        if prompt_item is not None and self.cfg.feat_prompt_weight:
            h = h + self.feature_prompt_lift(name, prompt_item)
        return self.dropout(h)

    def propagate_modality(self, h, name):
        """The modality GNN on reduced item features h: (f^m_U, f^m_I), linear in h.

        With an item-item kNN graph S_m of the modality's features, f^m_I also gains S_m^L h: each
        item's content-similar items' reduced features (items without interactions included).
        """
        item = h
        for _ in range(self.cfg.mm_layers):
            user = spmm(self.user_mean, self.user_mean_t, item)      # Abar_ui f_I
            item = spmm(self.item_mean, self.item_mean_t, user)      # Abar_iu f_U
        if self.cfg.item_residual:
            item = item + h
        if self.cfg.knn_k and self.cfg.knn_on in ("features", "both"):
            item = item + self.knn_propagate(getattr(self, f"knn_{name}"), h)
        return user, item

    def knn_propagate(self, knn, x):
        """S^L x over an item-item kNN graph S (symmetric: its own transpose)."""
        for _ in range(self.cfg.knn_layers):
            x = spmm(knn, knn, x)
        return x

    def propagate_cf(self, ego_user, ego_item):
        """The CF branch: LightGCN on the ID embeddings. With ``--knn_on ids`` (or both) the items
        also gain S̄^L e_I, their ID embeddings smoothed over the mean of the modalities' kNN graphs,
        so that items with similar content share collaborative signal (as in FREEDOM)."""
        user, item = lightgcn_propagate(self.norm_ui, self.norm_iu, ego_user, ego_item, self.cfg.cf_layers)
        if self.cfg.knn_k and self.modalities and self.cfg.knn_on in ("ids", "both"):
            item = item + self.knn_propagate(self.knn_mean, ego_item)
        return user, item

    def forward(self):
        if self.from_frozen_parts():
            return self._forward_from_frozen_parts()
        prompt_user, prompt_item = self.prompts()
        ego_user, ego_item = self.user_emb, self.item_emb
        if prompt_user is not None and self.cfg.emb_prompt_weight:
            ego_user = ego_user + self.cfg.emb_prompt_weight * F.normalize(prompt_user, dim=1)
            ego_item = ego_item + self.cfg.emb_prompt_weight * F.normalize(prompt_item, dim=1)
        cf_user, cf_item = self.propagate_cf(ego_user, ego_item)
        mm_user, mm_item = {}, {}
        for name in self.modalities:
            mm_user[name], mm_item[name] = self.propagate_modality(self.reduce_features(name, prompt_item), name)
        return TeacherOutput(cf_user, cf_item, mm_user, mm_item, prompt_user, prompt_item,
                             self.cfg.mm_fusion_weight)

    # ------------------------------------------------------------ stage 2: the frozen parts

    def freeze_for_distillation(self):
        """Stage 2: every teacher weight frozen except the prompt module's.

        What the frozen weights alone determine is propagated once (:meth:`_propagate_frozen_parts`)
        into buffers that move with ``.to`` and are refreshed whenever weights are loaded.
        """
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("prompt_module."))
        self.frozen = True
        self._propagate_frozen_parts()

    def from_frozen_parts(self):
        """True when the forward pass starts from the frozen parts' constants: stage 2, unless
        ``use_frozen_parts`` is off or dropout on the reduced features is active (it is random)."""
        return self.frozen and self.use_frozen_parts and not (self.training and self.dropout.p > 0)

    def _propagate_frozen_parts(self):
        """LightGCN(E) of the CF branch and GNN(X^m W_m + b_m) of each modality branch, once."""
        with torch.no_grad():
            user, item = self.propagate_cf(self.user_emb, self.item_emb)
            self.register_buffer("frozen_cf_user", user, persistent=False)
            self.register_buffer("frozen_cf_item", item, persistent=False)
            for name in self.modalities:
                user, item = self.propagate_modality(self.reducers[name](getattr(self, f"feat_{name}")), name)
                self.register_buffer(f"frozen_mm_user_{name}", user, persistent=False)
                self.register_buffer(f"frozen_mm_item_{name}", item, persistent=False)

    def _forward_from_frozen_parts(self):
        """Stage 2's forward pass, exactly, from the frozen parts' constants.

        Both GNNs are linear. The CF branch propagates E + lambda_s norm(P): its output is the
        constant LightGCN(E) plus lambda_s LightGCN(norm(P)). Each modality branch propagates
        X^m W_m + b_m + (prompt lift): its output is the constant GNN(X^m W_m + b_m) plus
        GNN(prompt lift). Only the prompt-dependent terms are propagated at each step; with the
        prompts off, or their weights 0, nothing is.
        """
        prompt_user, prompt_item = self.prompts()
        cf_user, cf_item = self.frozen_cf_user, self.frozen_cf_item
        if prompt_user is not None and self.cfg.emb_prompt_weight:
            lift_user, lift_item = self.propagate_cf(F.normalize(prompt_user, dim=1), F.normalize(prompt_item, dim=1))
            cf_user = cf_user + self.cfg.emb_prompt_weight * lift_user
            cf_item = cf_item + self.cfg.emb_prompt_weight * lift_item
        mm_user, mm_item = {}, {}
        for name in self.modalities:
            mm_user[name], mm_item[name] = getattr(self, f"frozen_mm_user_{name}"), getattr(self, f"frozen_mm_item_{name}")
            if prompt_item is not None and self.cfg.feat_prompt_weight:
                lift_user, lift_item = self.propagate_modality(self.feature_prompt_lift(name, prompt_item), name)
                mm_user[name], mm_item[name] = mm_user[name] + lift_user, mm_item[name] + lift_item
        return TeacherOutput(cf_user, cf_item, mm_user, mm_item, prompt_user, prompt_item,
                             self.cfg.mm_fusion_weight)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.frozen:
            self._propagate_frozen_parts()
        return result


def _split_index(flat, indices):
    """Cut the concatenation of several index tensors back into one tensor per index (their shapes)."""
    out, start = [], 0
    for index in indices:
        out.append(flat[start: start + index.numel()].view(index.shape))
        start += index.numel()
    return out


class _IDEmbeddings(nn.Module):
    """User and item ID embedding tables shared by both students.

    A student's ``lookup(users, *items)`` gives the batch's user rows, an item table and one index
    into it per item index tensor; ``embed`` gathers those rows.
    """

    def init_embeddings(self, user, item):
        """Start from given embeddings (e.g. the teacher's e^T), compressed if narrower."""
        user, item = compress_embeddings(user, item, self.user_emb.shape[1])
        with torch.no_grad():
            self.user_emb.copy_(user)
            self.item_emb.copy_(item)

    def ego_embeddings(self, users, items):
        return gather_rows(self.user_emb, users), gather_rows(self.item_emb, items)

    def embed(self, users, *items):
        """Embeddings of the given users and of each given item index tensor (any shapes)."""
        user_rows, table, indices = self.lookup(users, *items)
        return (user_rows, *(gather_rows(table, index) for index in indices))


class MLPStudent(_IDEmbeddings):
    """ID embeddings refined by a small residual MLP shared by users and items; dot-product scores.

    Needs no graph at serving time. The MLP's output layer starts at zero, so a student
    initialised from the teacher's embeddings starts by reproducing the teacher's scores.
    """

    def __init__(self, n_users, n_items, embed_size=64, hidden=128):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, embed_size)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, embed_size)))
        self.mlp = nn.Sequential(nn.Linear(embed_size, hidden), nn.GELU(), nn.Linear(hidden, embed_size))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def refine(self, emb):
        return emb + self.mlp(emb)

    def lookup(self, users, *items):
        """(user rows, item table, one index into the table per item index tensor).

        The MLP runs once per distinct id of the batch, not once per occurrence: the item table
        holds the refined rows of the distinct items, and the indices point into it.
        """
        users, user_pos = torch.unique(users, return_inverse=True)
        ids, item_pos = torch.unique(torch.cat([i.reshape(-1) for i in items]), return_inverse=True)
        table = self.refine(gather_rows(self.item_emb, ids))
        return (gather_rows(self.refine(gather_rows(self.user_emb, users)), user_pos), table,
                _split_index(item_pos, items))

    def forward(self):
        return self.refine(self.user_emb), self.refine(self.item_emb)


class LightGCNStudent(_IDEmbeddings):
    """ID embeddings propagated on the symmetric-normalised graph (LightGCN)."""

    def __init__(self, norm_ui, norm_iu, embed_size=64, n_layers=2):
        super().__init__()
        self.n_users, self.n_items = norm_ui.shape
        self.n_layers = n_layers
        self.register_buffer("norm_ui", norm_ui, persistent=False)
        self.register_buffer("norm_iu", norm_iu, persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embed_size)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embed_size)))

    def forward(self):
        return lightgcn_propagate(self.norm_ui, self.norm_iu, self.user_emb, self.item_emb, self.n_layers)

    def lookup(self, users, *items):
        """(user rows, item table, the item index tensors): one propagation gives every item."""
        user, item = self()
        return gather_rows(user, users), item, items


def compress_embeddings(user, item, dim):
    """The best ``dim``-wide factorisation of the score matrix user @ item.T.

    With user = Q_U R_U and item = Q_I R_I (thin QR), the scores are Q_U (R_U R_I^T) Q_I^T, so the
    SVD A S B^T of the small d x d core gives the score matrix's own SVD. Its top ``dim`` terms
    are the closest rank-``dim`` scores (Eckart-Young), split evenly between the two sides:
    Q_U A_k S_k^1/2 and Q_I B_k S_k^1/2. A narrower student thus starts from the teacher's ranking
    as closely as ``dim`` dimensions allow.
    """
    if dim >= user.shape[1]:
        return user, item
    q_user, r_user = torch.linalg.qr(user)
    q_item, r_item = torch.linalg.qr(item)
    left, values, right_t = torch.linalg.svd(r_user @ r_item.T, full_matrices=False)
    root = values[:dim].sqrt()
    user, item = q_user @ (left[:, :dim] * root), q_item @ (right_t[:dim].T * root)
    # fewer users or items than dim: the scores' rank is lower still, and zero columns keep it
    return F.pad(user, (0, dim - user.shape[1])), F.pad(item, (0, dim - item.shape[1]))


def build_student(cfg: StudentConfig, n_users, n_items, graphs=None):
    if cfg.model_type == "mlp":
        return MLPStudent(n_users, n_items, cfg.embed_size, cfg.hidden)
    if cfg.model_type == "lightgcn":
        return LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"], cfg.embed_size, cfg.n_layers)
    raise ValueError(f"unknown student kind {cfg.model_type!r}")


def count_parameters(module, exclude_prefixes=()):
    return sum(p.numel() for name, p in module.named_parameters()
               if not any(name.startswith(prefix) for prefix in exclude_prefixes))

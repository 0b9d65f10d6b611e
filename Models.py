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

    def __init__(self, token_size, embed_size):
        super().__init__()
        self.user_proj = nn.Linear(token_size, embed_size)
        self.item_proj = nn.Linear(token_size, embed_size)
        for layer in (self.user_proj, self.item_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, user_tokens, item_tokens):
        return self.user_proj(user_tokens), self.item_proj(item_tokens)

    def item_context(self, token_feats, feat_sums):
        """P_I^T X = A (H_I^T X) + b (1^T X) for P_I = H_I A^T + b, without forming P_I^T X row by row.

        token_feats = H_I^T X and feat_sums = 1^T X are constants, so this costs d * d_tok * d_m
        instead of n_items * d * d_m.
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
        if cfg.knn_k and self.modalities and "knn_mean" not in graphs:
            raise ValueError("knn_k > 0 needs the mean kNN graph of the modalities (utility.graph.knn_tensors)")
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
        # the prompts are built from the modality features: no modalities, no prompts
        use_prompt = cfg.use_prompt and cfg.use_modalities
        self.prompt_module = PromptModule(item_tokens.shape[1], d) if use_prompt else None

    def prompts(self):
        if self.prompt_module is None:
            return None, None
        return self.prompt_module(self.user_tokens, self.item_tokens)

    def feature_prompt_lift(self, name, prompt_item):
        """lambda_f norm(P_I (P_I^T X^m)) W_m, computed in the d-wide space.

        With C = P_I^T X, the lifted prompt p = P_I C has row norms sqrt(P_i (C C^T) P_i^T), and
        norm(p) W = diag(1/|p_i|) P_I (C W^T): the (n_items, d_m) lifted matrix is never formed.
        """
        context = self.prompt_module.item_context(getattr(self, f"token_feat_{name}"), getattr(self, f"feat_sum_{name}"))
        sq_norms = ((prompt_item @ (context @ context.T)) * prompt_item).sum(1)
        norms = sq_norms.clamp_min(0).sqrt().clamp_min(1e-12)        # F.normalize's eps
        weight = self.reducers[name].weight
        return self.cfg.feat_prompt_weight * (prompt_item @ (context @ weight.T)) / norms[:, None]

    def reduce_features(self, name, prompt_item):
        """h^m = (X^m + lambda_f norm(P_I (P_I^T X^m))) W_m + b_m."""
        h = self.reducers[name](getattr(self, f"feat_{name}"))
        if prompt_item is not None and self.cfg.feat_prompt_weight:
            h = h + self.feature_prompt_lift(name, prompt_item)
        return h

    def propagate_modality(self, h):
        """The modality GNN on reduced item features h: (f^m_U, f^m_I)."""
        item = h
        for _ in range(self.cfg.mm_layers):
            user = spmm(self.user_mean, self.user_mean_t, item)      # Abar_ui f_I
            item = spmm(self.item_mean, self.item_mean_t, user)      # Abar_iu f_U
        if self.cfg.item_residual:
            item = item + h
        return user, item

    def propagate_cf(self, ego_user, ego_item):
        """The CF branch: LightGCN on the ID embeddings. With kNN graphs (``knn_k`` > 0) the items also
        gain S̄ e_I, their ID embeddings smoothed over the mean of the modalities' kNN graphs, so that
        items with similar content share collaborative signal (as in FREEDOM)."""
        user, item = lightgcn_propagate(self.norm_ui, self.norm_iu, ego_user, ego_item, self.cfg.cf_layers)
        if self.cfg.knn_k and self.modalities:
            item = item + spmm(self.knn_mean, self.knn_mean, ego_item)
        return user, item

    def forward(self):
        prompt_user, prompt_item = self.prompts()
        ego_user, ego_item = self.user_emb, self.item_emb
        if prompt_user is not None and self.cfg.emb_prompt_weight:
            ego_user = ego_user + self.cfg.emb_prompt_weight * F.normalize(prompt_user, dim=1)
            ego_item = ego_item + self.cfg.emb_prompt_weight * F.normalize(prompt_item, dim=1)
        cf_user, cf_item = self.propagate_cf(ego_user, ego_item)
        mm_user, mm_item = {}, {}
        for name in self.modalities:
            mm_user[name], mm_item[name] = self.propagate_modality(self.reduce_features(name, prompt_item))
        return TeacherOutput(cf_user, cf_item, mm_user, mm_item, prompt_user, prompt_item,
                             self.cfg.mm_fusion_weight)

    def freeze_for_distillation(self):
        """Stage 2: every teacher weight frozen except the prompt module's; those are returned."""
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("prompt_module."))
        return [p for p in self.parameters() if p.requires_grad]


class LightGCNStudent(nn.Module):
    """The student: ID embeddings propagated on the symmetric-normalised graph (LightGCN).

    ``lookup(users, *items)`` gives the batch's user rows, the propagated item table and the item
    index tensors into it; ``embed`` gathers those rows.
    """

    def __init__(self, norm_ui, norm_iu, embed_size=64, n_layers=2):
        super().__init__()
        self.n_users, self.n_items = norm_ui.shape
        self.n_layers = n_layers
        self.register_buffer("norm_ui", norm_ui, persistent=False)
        self.register_buffer("norm_iu", norm_iu, persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embed_size)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embed_size)))

    def init_embeddings(self, user, item):
        """Start from given embeddings (e.g. the teacher's e^T), compressed if narrower."""
        user, item = compress_embeddings(user, item, self.user_emb.shape[1])
        with torch.no_grad():
            self.user_emb.copy_(user)
            self.item_emb.copy_(item)

    def forward(self):
        return lightgcn_propagate(self.norm_ui, self.norm_iu, self.user_emb, self.item_emb, self.n_layers)

    def ego_embeddings(self, users, items):
        return gather_rows(self.user_emb, users), gather_rows(self.item_emb, items)

    def lookup(self, users, *items):
        """(user rows, item table, the item index tensors): one propagation gives every item."""
        user, item = self()
        return gather_rows(user, users), item, items

    def embed(self, users, *items):
        """Embeddings of the given users and of each given item index tensor (any shapes)."""
        user_rows, table, indices = self.lookup(users, *items)
        return (user_rows, *(gather_rows(table, index) for index in indices))


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


def build_student(cfg: StudentConfig, graphs):
    """The ID-only LightGCN student on the interaction graph's normalised blocks."""
    return LightGCNStudent(graphs["norm_ui"], graphs["norm_iu"], cfg.embed_size, cfg.n_layers)


def count_parameters(module, exclude_prefixes=()):
    return sum(p.numel() for name, p in module.named_parameters()
               if not any(name.startswith(prefix) for prefix in exclude_prefixes))

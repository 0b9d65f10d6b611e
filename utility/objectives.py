"""The training objective of each stage, composed from the pure losses in ``losses.py``.

Each function returns a dict of named loss terms (weighted, scalar tensors); the stage's loss is
their sum. The names are what the per-epoch log line and the loss curves show. Every full-size
representation is gathered once per batch for exactly the rows a term needs (slicing a large
gathered block would cost a full-size zero fill in the backward pass), and the teacher's fused
e^T is formed only for those rows. The list-wise logits are scored block by block
(``gather_dot``), so the (batch, list, d) gathered rows never exist at once.
"""
import torch

from utility.sparse_ops import gather_dot, gather_rows
from utility.errors import UserError
from utility.losses import (bpr_loss, disentangled_list_kd_loss, embedding_distance_loss, l2_penalty, pair_kd_loss,
                            sce_loss)


def _scores(user_rows, item_rows):
    """<u, i> for (B, d) users against (B, n, d) items: (B, n)."""
    return (user_rows[:, None, :] * item_rows).sum(-1)


def _modality_rows(out, users, pairs):
    """Each modality's f^m rows of the batch's users, (B, d), and (pos, neg) items, (B, 2, d)."""
    return ({m: gather_rows(f, users) for m, f in out.mm_user.items()},
            {m: gather_rows(f, pairs) for m, f in out.mm_item.items()})


def _fused_rows(out, users, pairs, mm_user, mm_pair):
    """e^T of the batch's users and (pos, neg) items from already gathered modality rows."""
    return (out.fuse(gather_rows(out.cf_user, users), mm_user),
            out.fuse(gather_rows(out.cf_item, pairs), mm_pair))


def teacher_terms(teacher, out, users, pos, neg, cfg):
    """BPR(e^T) + lambda_m sum_m BPR(f^m) + lambda_p BPR(P) + reg * ||batch ID embeddings||^2.

    ``cfg``: the teacher's :class:`~utility.config.TeacherConfig` (its loss weights).
    """
    pairs = torch.stack([pos, neg], dim=1)
    mm_user, mm_pair = _modality_rows(out, users, pairs)
    scores = _scores(*_fused_rows(out, users, pairs, mm_user, mm_pair))
    terms = {"bpr": bpr_loss(scores[:, 0], scores[:, 1])}
    if mm_user:
        mm = 0.0
        for m in mm_user:
            s = _scores(mm_user[m], mm_pair[m])
            mm = mm + bpr_loss(s[:, 0], s[:, 1])
        terms["mm"] = cfg.mm_loss_weight * mm
    if out.prompt_user is not None and cfg.prompt_loss_weight:
        s = _scores(gather_rows(out.prompt_user, users), gather_rows(out.prompt_item, pairs))
        terms["prompt"] = cfg.prompt_loss_weight * bpr_loss(s[:, 0], s[:, 1])
    terms["reg"] = cfg.reg * l2_penalty(
        [gather_rows(teacher.user_emb, users), gather_rows(teacher.item_emb, pairs)], users.numel())
    return terms


class Distillation:
    """Stage 2's objective, built once from the :class:`~utility.config.KDConfig`: which KD terms run,
    their weights, and what they read.

    The student's loss is BPR + reg plus every KD term whose weight is not 0: the paper's pair-wise,
    disentangled list-wise and SCE embedding KD, and the representation KD (``de_kd``). The list-wise
    and embedding terms read the teacher's modality knowledge f^m, so a teacher without modalities has
    neither. ``extra_negatives`` is K when a term scores each row's list [pos, K negatives], else 0.
    The teacher runs in evaluation mode with its prompts trainable (their gradients come from the KD
    terms); a teacher with nothing trainable is run once and its output reused.
    """

    def __init__(self, kd, student, teacher, reg, projector=None, blend=None):
        self.kd, self.student, self.teacher, self.reg, self.projector = kd, student, teacher, reg, projector
        self.blend = blend   # utility.item_item.Blend: the teacher's pair scores blended with EASE's
        self.weights = self.active_weights(kd, bool(teacher.modalities))
        self.extra_negatives = kd.neg_sample_num if "list_kd" in self.weights else 0
        self.teacher_trainable = any(p.requires_grad for p in teacher.parameters())
        self._constant_output = None

    @staticmethod
    def active_weights(kd, has_modalities):
        """{term: weight} of the KD terms that run; a one-line UserError for a configuration that cannot."""
        weights = dict(pair_kd=kd.pair_weight, list_kd=kd.list_weight if has_modalities else 0.0,
                       emb_kd=kd.emb_weight if has_modalities else 0.0, de_kd=kd.de_weight)
        weights = {name: w for name, w in weights.items() if w}
        if "list_kd" in weights and kd.neg_sample_num < 1:
            raise UserError("--neg_sample_num 0: the list-wise KD needs at least one extra negative "
                            "(or set --kd_list_weight 0)")
        return weights

    def teacher_output(self):
        """The teacher's forward pass for this step (None when no KD term runs)."""
        if not self.weights:
            return None
        if self.teacher_trainable:
            return self.teacher()
        if self._constant_output is None:
            with torch.no_grad():
                self._constant_output = self.teacher()
        return self._constant_output

    def __call__(self, users, pos, neg, extra):
        return self.terms(self.teacher_output(), users, pos, neg, extra)

    def terms(self, t_out, users, pos, neg, extra):
        """{term: weighted scalar} for a batch; ``extra``: (B, K) list negatives, or None."""
        student, weights, tau = self.student, self.weights, self.kd.temperature
        pairs = torch.stack([pos, neg], dim=1)                    # (B, 2)
        lists = pos[:, None] if extra is None else torch.cat([pos[:, None], extra], dim=1)   # (B, 1 + K)
        s_user, s_items, (pair_index, list_index) = student.lookup(users, pairs, lists)
        s_pair = gather_rows(s_items, pair_index)
        s_scores = _scores(s_user, s_pair)
        terms = {"bpr": bpr_loss(s_scores[:, 0], s_scores[:, 1])}
        ego_user, ego_pair = student.ego_embeddings(users, pairs)
        terms["reg"] = self.reg * l2_penalty([ego_user, ego_pair], users.numel())
        if not weights:
            return terms
        mm_user, mm_pair = _modality_rows(t_out, users, pairs)
        if "pair_kd" in weights or "de_kd" in weights:
            t_user, t_pair = _fused_rows(t_out, users, pairs, mm_user, mm_pair)
        if "de_kd" in weights or "emb_kd" in weights:   # the student's rows at the teacher's width
            e_user, e_pair = (s_user, s_pair) if self.projector is None else (self.projector(s_user),
                                                                                self.projector(s_pair))
        if "de_kd" in weights:   # the student's embeddings regress e^T
            terms["de_kd"] = weights["de_kd"] * (embedding_distance_loss(e_user, t_user)
                                                 + embedding_distance_loss(e_pair, t_pair)) / 2
        if "pair_kd" in weights:
            t_scores = _scores(t_user, t_pair)
            if self.blend is not None:
                t_scores = self.blend.pair_scores(t_scores, users, pairs)
            terms["pair_kd"] = weights["pair_kd"] * pair_kd_loss(
                t_scores[:, 0], t_scores[:, 1], s_scores[:, 0], s_scores[:, 1], tau)
        if "list_kd" in weights:
            s_list = gather_dot(s_user, s_items, list_index)
            total = sum(disentangled_list_kd_loss(gather_dot(mm_user[m], t_out.mm_item[m], lists), s_list, tau)
                        for m in mm_user)
            terms["list_kd"] = weights["list_kd"] * total / len(mm_user)
        if "emb_kd" in weights:
            e_item = e_pair.reshape(-1, e_pair.shape[-1])
            total = sum(sce_loss(mm_pair[m].reshape(-1, e_item.shape[-1]), e_item, self.kd.sce_gamma)
                        + sce_loss(mm_user[m], e_user, self.kd.sce_gamma) for m in mm_user)
            terms["emb_kd"] = weights["emb_kd"] * total / len(mm_user)
        return terms

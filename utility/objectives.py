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
from utility.losses import (bpr_loss, disentangled_list_kd_loss, embedding_distance_loss, l2_penalty,
                            listwise_kl_loss, pair_kd_loss, relaxed_ranking_loss, sce_loss)


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


def student_terms(student, t_out, users, pos, neg, extra, cfg, kd, projector=None, teacher_top=None):
    """BPR + reg, the paper's pair-wise, disentangled list-wise and SCE embedding KD, and the added
    representation, ranking and score KD; each KD term is present only when its weight is.

    ``cfg``: the :class:`~utility.config.StudentConfig` (its reg); ``kd``: the
    :class:`~utility.config.KDConfig` (weights, temperature, SCE gamma, list-KD variant).

    ``extra``: (batch, K) negatives; the list of each row is [pos, extra_1..K] (None when no term
    scores lists). ``teacher_top``: the (B, m) teacher's top unseen items of each row's user
    (ranking and score KD). ``projector`` maps student embeddings to the teacher's width for the
    embedding and representation KD when the two differ. Without any KD weight, ``t_out`` is not
    used (it may be None).
    """
    pairs = torch.stack([pos, neg], dim=1)                    # (B, 2)
    lists = pos[:, None] if extra is None else torch.cat([pos[:, None], extra], dim=1)   # (B, 1 + K)
    top = lists[:, :0] if teacher_top is None else teacher_top
    s_user, s_items, (pair_index, list_index, top_index) = student.lookup(users, pairs, lists, top)
    s_pair = gather_rows(s_items, pair_index)
    s_scores = _scores(s_user, s_pair)
    terms = {"bpr": bpr_loss(s_scores[:, 0], s_scores[:, 1])}
    ego_user, ego_pair = student.ego_embeddings(users, pairs)
    terms["reg"] = cfg.reg * l2_penalty([ego_user, ego_pair], users.numel())
    if not kd.active:
        return terms
    if kd.rank_weight and teacher_top is not None:
        terms["rank_kd"] = kd.rank_weight * relaxed_ranking_loss(gather_dot(s_user, s_items, top_index),
                                                                 gather_dot(s_user, s_items, list_index[:, 1:]))
    tau = kd.temperature
    modalities = list(t_out.mm_user)
    mm_user, mm_pair = _modality_rows(t_out, users, pairs)

    # the fused teacher rows and the projected student rows, formed once for the terms that use them
    if kd.pair_weight or kd.de_weight or kd.score_weight:
        t_user, t_pair = _fused_rows(t_out, users, pairs, mm_user, mm_pair)
    if kd.de_weight or (kd.emb_weight and modalities):
        e_user, e_pair = (s_user, s_pair) if projector is None else (projector(s_user), projector(s_pair))

    if kd.score_weight and teacher_top is not None:
        candidates = torch.cat([lists, teacher_top], dim=1)                     # (B, 1 + K + m)
        s_list = gather_dot(s_user, s_items, torch.cat([list_index, top_index], dim=1))
        t_items = t_out.fuse(gather_rows(t_out.cf_item, candidates),
                             {m: gather_rows(f, candidates) for m, f in t_out.mm_item.items()})
        terms["score_kd"] = kd.score_weight * listwise_kl_loss(_scores(t_user, t_items), s_list, tau)

    if kd.de_weight:   # the student's embeddings, mapped to the teacher's width, regress e^T
        terms["de_kd"] = kd.de_weight * (embedding_distance_loss(e_user, t_user)
                                         + embedding_distance_loss(e_pair, t_pair)) / 2

    if kd.pair_weight:
        t_scores = _scores(t_user, t_pair)
        terms["pair_kd"] = kd.pair_weight * pair_kd_loss(
            t_scores[:, 0], t_scores[:, 1], s_scores[:, 0], s_scores[:, 1], tau)

    if kd.list_weight and modalities:
        s_list = gather_dot(s_user, s_items, list_index)
        total = 0.0
        for m in modalities:
            t_list = gather_dot(mm_user[m], t_out.mm_item[m], lists)
            if kd.disentangle:
                total = total + disentangled_list_kd_loss(t_list, s_list, tau, reweight=kd.list_reweight)
            else:
                total = total + listwise_kl_loss(t_list, s_list, tau)
        terms["list_kd"] = kd.list_weight * total / len(modalities)

    if kd.emb_weight and modalities:
        e_item = e_pair.reshape(-1, e_pair.shape[-1])
        total = 0.0
        for m in modalities:
            total = total + sce_loss(mm_pair[m].reshape(-1, e_item.shape[-1]), e_item, kd.sce_gamma)
            total = total + sce_loss(mm_user[m], e_user, kd.sce_gamma)
        terms["emb_kd"] = kd.emb_weight * total / len(modalities)
    return terms

"""The training objective of each stage, composed from the pure losses in ``losses.py``.

Each function returns a dict of named loss terms (weighted, scalar tensors); the stage's loss is
their sum. The names are what the per-epoch log line and the loss curves show. Every full-size
representation is gathered once per batch (the rows the batch needs), and the teacher's fused
e^T is formed only for those rows.
"""
import torch

from Models import gather_rows
from utility.losses import (bpr_loss, disentangled_list_kd_loss, l2_penalty, listwise_kl_loss,
                            pair_kd_loss, sce_loss)


def _scores(user_rows, item_rows):
    """<u, i> for (B, d) users against (B, n, d) items: (B, n)."""
    return (user_rows[:, None, :] * item_rows).sum(-1)


def _teacher_rows(out, users, items):
    """The batch's rows of every teacher representation: modality knowledge and fused e^T."""
    mm_user = {m: gather_rows(f, users) for m, f in out.mm_user.items()}
    mm_item = {m: gather_rows(f, items) for m, f in out.mm_item.items()}
    fused_user = out.fuse(gather_rows(out.cf_user, users), mm_user)
    pair = items[:, :2]
    fused_item = out.fuse(gather_rows(out.cf_item, pair), {m: f[:, :2] for m, f in mm_item.items()})
    return fused_user, fused_item, mm_user, mm_item


def teacher_terms(teacher, out, users, pos, neg, weights):
    """BPR(e^T) + lambda_m sum_m BPR(f^m) + lambda_p BPR(P) + reg * ||batch ID embeddings||^2."""
    items = torch.stack([pos, neg], dim=1)
    fused_user, fused_item, mm_user, mm_item = _teacher_rows(out, users, items)
    scores = _scores(fused_user, fused_item)
    terms = {"bpr": bpr_loss(scores[:, 0], scores[:, 1])}
    if mm_user:
        mm = 0.0
        for m in mm_user:
            s = _scores(mm_user[m], mm_item[m])
            mm = mm + bpr_loss(s[:, 0], s[:, 1])
        terms["mm"] = weights["mm_loss_weight"] * mm
    if out.prompt_user is not None and weights["prompt_loss_weight"]:
        s = _scores(gather_rows(out.prompt_user, users), gather_rows(out.prompt_item, items))
        terms["prompt"] = weights["prompt_loss_weight"] * bpr_loss(s[:, 0], s[:, 1])
    terms["reg"] = weights["reg"] * l2_penalty(
        [gather_rows(teacher.user_emb, users), gather_rows(teacher.item_emb, items)], users.numel())
    return terms


def student_terms(student, t_out, users, pos, neg, extra, weights, projector=None):
    """BPR + reg + pair-wise ranking KD + disentangled list-wise KD + SCE embedding KD.

    ``extra``: (batch, K) negatives; the list of each row is [pos, extra_1..K]. ``projector`` maps
    student embeddings to the teacher's width for the embedding KD when the two differ.
    """
    items = torch.cat([pos[:, None], neg[:, None], extra], dim=1)          # (B, 2 + K)
    s_user, s_items = student.embed(users, items)
    s_logits = _scores(s_user, s_items)
    s_pos, s_neg = s_logits[:, 0], s_logits[:, 1]
    terms = {"bpr": bpr_loss(s_pos, s_neg)}
    ego_user, ego_items = student.ego_embeddings(users, items[:, :2])
    terms["reg"] = weights["student_reg"] * l2_penalty([ego_user, ego_items], users.numel())
    tau = weights["kd_temperature"]
    modalities = list(t_out.mm_user)
    needs_kd = weights["kd_pair_weight"] or ((weights["kd_list_weight"] or weights["kd_emb_weight"]) and modalities)
    if not needs_kd:
        return terms
    fused_user, fused_item, mm_user, mm_item = _teacher_rows(t_out, users, items)

    if weights["kd_pair_weight"]:
        t_logits = _scores(fused_user, fused_item)
        terms["pair_kd"] = weights["kd_pair_weight"] * pair_kd_loss(t_logits[:, 0], t_logits[:, 1], s_pos, s_neg, tau)

    if weights["kd_list_weight"] and modalities:
        def listed(x):   # columns [pos, extra_1..K] of a (B, 2 + K, ...) tensor
            return torch.cat([x[:, :1], x[:, 2:]], dim=1)
        s_list = listed(s_logits)
        total = 0.0
        for m in modalities:
            t_list = _scores(mm_user[m], listed(mm_item[m]))
            if weights["no_disentangle"]:
                total = total + listwise_kl_loss(t_list, s_list, tau)
            else:
                total = total + disentangled_list_kd_loss(t_list, s_list, tau,
                                                          reweight=not weights["no_list_reweight"])
        terms["list_kd"] = weights["kd_list_weight"] * total / len(modalities)

    if weights["kd_emb_weight"] and modalities:
        e_user, e_item = s_user, s_items[:, :2].reshape(-1, s_items.shape[-1])
        if projector is not None:
            e_user, e_item = projector(e_user), projector(e_item)
        total = 0.0
        for m in modalities:
            total = total + sce_loss(mm_item[m][:, :2].reshape(-1, e_item.shape[-1]), e_item, weights["sce_gamma"])
            total = total + sce_loss(mm_user[m], e_user, weights["sce_gamma"])
        terms["emb_kd"] = weights["kd_emb_weight"] * total / len(modalities)
    return terms

"""The training objective of each stage, composed from the pure losses in ``losses.py``.

Each function returns a dict of named loss terms (weighted, scalar tensors); the stage's loss is
their sum. The names are what the per-epoch log line and the loss curves show.
"""
import torch

from utility.losses import (bpr_loss, disentangled_list_kd_loss, l2_penalty, listwise_kl_loss,
                            pair_kd_loss, sce_loss)


def _pair_scores(user, item, users, pos, neg):
    u = user[users]
    return (u * item[pos]).sum(1), (u * item[neg]).sum(1)


def teacher_terms(teacher, out, users, pos, neg, weights):
    """BPR(e^T) + lambda_m sum_m BPR(f^m) + lambda_p BPR(P) + reg * ||batch ID embeddings||^2."""
    terms = {"bpr": bpr_loss(*_pair_scores(out.user, out.item, users, pos, neg))}
    if out.mm_user:
        mm = sum(bpr_loss(*_pair_scores(out.mm_user[m], out.mm_item[m], users, pos, neg)) for m in out.mm_user)
        terms["mm"] = weights["mm_loss_weight"] * mm
    if out.prompt_user is not None and weights["prompt_loss_weight"]:
        terms["prompt"] = weights["prompt_loss_weight"] * bpr_loss(
            *_pair_scores(out.prompt_user, out.prompt_item, users, pos, neg))
    terms["reg"] = weights["reg"] * l2_penalty(
        [teacher.user_emb[users], teacher.item_emb[pos], teacher.item_emb[neg]], users.numel())
    return terms


def student_terms(student, t_out, users, pos, neg, extra, weights, projector=None):
    """BPR + reg + pair-wise ranking KD + disentangled list-wise KD + SCE embedding KD.

    ``extra``: (batch, K) negatives; the list of each row is [pos, extra_1..K]. ``projector`` maps
    student embeddings to the teacher's width for the embedding KD when the two differ.
    """
    items = torch.cat([pos[:, None], neg[:, None], extra], dim=1)          # (B, 2 + K)
    s_user, s_items = student.embed(users, items)
    s_logits = (s_user[:, None, :] * s_items).sum(-1)
    s_pos, s_neg = s_logits[:, 0], s_logits[:, 1]
    terms = {"bpr": bpr_loss(s_pos, s_neg)}
    ego_user, ego_items = student.ego_embeddings(users, items[:, :2])
    terms["reg"] = weights["student_reg"] * l2_penalty([ego_user, ego_items], users.numel())
    tau = weights["kd_temperature"]

    if weights["kd_pair_weight"]:
        t_pos, t_neg = _pair_scores(t_out.user, t_out.item, users, pos, neg)
        terms["pair_kd"] = weights["kd_pair_weight"] * pair_kd_loss(t_pos, t_neg, s_pos, s_neg, tau)

    modalities = list(t_out.mm_user)
    if weights["kd_list_weight"] and modalities:
        list_items = torch.cat([pos[:, None], extra], dim=1)
        s_list = torch.cat([s_logits[:, :1], s_logits[:, 2:]], dim=1)
        total = 0.0
        for m in modalities:
            t_list = (t_out.mm_user[m][users][:, None, :] * t_out.mm_item[m][list_items]).sum(-1)
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
        batch_items = items[:, :2].reshape(-1)
        total = 0.0
        for m in modalities:
            total = total + sce_loss(t_out.mm_item[m][batch_items], e_item, weights["sce_gamma"])
            total = total + sce_loss(t_out.mm_user[m][users], e_user, weights["sce_gamma"])
        terms["emb_kd"] = weights["kd_emb_weight"] * total / len(modalities)
    return terms

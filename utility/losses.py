"""Loss functions of both stages, as pure functions of tensors. Each returns a scalar."""
import torch
import torch.nn.functional as F


def bpr_loss(pos_scores, neg_scores):
    """Bayesian personalised ranking: mean of -log sigma(s+ - s-) = softplus(s- - s+)."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_penalty(tensors, batch_size):
    """sum_t ||t||^2 / (2 * batch_size): the L2 regulariser on a batch's embeddings."""
    return sum(t.pow(2).sum() for t in tensors) / (2.0 * batch_size)


def bernoulli_kl_from_logits(teacher_logits, student_logits):
    """KL(Bern(sigma(a)) || Bern(sigma(b))) per element, computed with log-sigmoids for stability."""
    p = torch.sigmoid(teacher_logits)
    return (p * (F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits))
            + (1 - p) * (F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits)))


def pair_kd_loss(teacher_pos, teacher_neg, student_pos, student_neg, temperature=1.0):
    """Pair-wise ranking KD.

    With Delta = s(u, i+) - s(u, i-) for each model, sigma(Delta / tau) is the probability that
    i+ outranks i-. Loss = tau^2 * mean KL(sigma(Delta^T / tau) || sigma(Delta^S / tau)).
    """
    tau = temperature
    kl = bernoulli_kl_from_logits((teacher_pos - teacher_neg) / tau, (student_pos - student_neg) / tau)
    return kl.mean() * tau * tau


def listwise_kl_loss(teacher_logits, student_logits, temperature=1.0):
    """Plain list-wise KD: tau^2 * mean over rows of KL(softmax(y^T / tau) || softmax(y^S / tau))."""
    tau = temperature
    log_pt = F.log_softmax(teacher_logits / tau, dim=1)
    log_ps = F.log_softmax(student_logits / tau, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * tau * tau


def disentangled_list_kd_loss(teacher_logits, student_logits, temperature=1.0, reweight=True):
    """Target / non-target disentangled list-wise KD for lists whose column 0 is the positive.

    With p = softmax(y / tau), b = (p_0, 1 - p_0) and q = softmax(y_{1..K} / tau):
        L = tau^2 * mean[ KL(b^T || b^S) + w * KL(q^T || q^S) ],
    w = b^T_- = 1 - p^T_0 (the teacher's non-target mass, detached) when ``reweight``, else 1.
    With w = b^T_- the value equals :func:`listwise_kl_loss` (the chain rule of KL), but no
    gradient flows through w; with w = 1 the non-target part is no longer damped where the
    teacher is confident about the positive.
    """
    tau = temperature
    log_pt = F.log_softmax(teacher_logits / tau, dim=1)
    log_ps = F.log_softmax(student_logits / tau, dim=1)
    # log(1 - p_0) as the log-sum-exp of the non-target log-probabilities (no cancellation)
    t_target, t_rest = log_pt[:, 0], torch.logsumexp(log_pt[:, 1:], dim=1)
    s_target, s_rest = log_ps[:, 0], torch.logsumexp(log_ps[:, 1:], dim=1)
    target_kl = t_target.exp() * (t_target - s_target) + t_rest.exp() * (t_rest - s_rest)
    log_qt = F.log_softmax(teacher_logits[:, 1:] / tau, dim=1)
    log_qs = F.log_softmax(student_logits[:, 1:] / tau, dim=1)
    non_target_kl = (log_qt.exp() * (log_qt - log_qs)).sum(1)
    weight = t_rest.exp().detach() if reweight else 1.0
    return (target_kl + weight * non_target_kl).mean() * tau * tau


def sce_loss(a, b, gamma=2.0):
    """Scaled cosine error: mean over rows of (1 - cos(a, b)) ^ gamma."""
    return (1.0 - F.cosine_similarity(a, b, dim=1)).pow(gamma).mean()


def embedding_distance_loss(student, teacher):
    """Representation KD: mean over rows of the squared distance ||student - teacher||^2.

    ``student`` is the student's embedding mapped to the teacher's width; ``teacher`` is taken as
    a fixed target (no gradient reaches it).
    """
    return (student - teacher.detach()).pow(2).sum(-1).mean()

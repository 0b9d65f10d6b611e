"""Each loss against numbers worked out by hand."""
import math

import numpy as np
import pytest
import torch

from utility.losses import (bpr_loss, disentangled_list_kd_loss, l2_penalty, listwise_kl_loss, pair_kd_loss,
                            sce_loss)

t = torch.tensor


def test_bpr_loss():
    # softplus(1 - 2) = log(1 + e^-1); softplus(0) = log 2
    assert bpr_loss(t([2.0, 0.0]), t([1.0, 0.0])).item() == pytest.approx((math.log(1 + math.e ** -1) + math.log(2)) / 2)


def test_bpr_loss_is_stable_for_large_margins():
    assert bpr_loss(t([0.0]), t([1000.0])).item() == pytest.approx(1000.0)
    assert bpr_loss(t([1000.0]), t([0.0])).item() == pytest.approx(0.0)


def test_l2_penalty():
    assert l2_penalty([t([[1.0, 2.0]]), t([[2.0, 0.0]])], batch_size=2).item() == pytest.approx((5 + 4) / 4)


def test_pair_kd_loss():
    # teacher margin 0 -> p_T = 1/2; student margin log 3 -> p_S = 3/4
    # KL = 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4) = 1/2 log(4/3)
    got = pair_kd_loss(t([1.0]), t([1.0]), t([math.log(3)]), t([0.0]))
    assert got.item() == pytest.approx(0.5 * math.log(4 / 3))
    # temperature 2 with doubled student margin: the same probabilities, times tau^2 = 4
    got = pair_kd_loss(t([1.0]), t([1.0]), t([2 * math.log(3)]), t([0.0]), temperature=2.0)
    assert got.item() == pytest.approx(4 * 0.5 * math.log(4 / 3))
    assert pair_kd_loss(t([3.0]), t([1.0]), t([3.0]), t([1.0])).item() == pytest.approx(0.0, abs=1e-7)


TEACHER = t([[0.0, math.log(2), 0.0]])   # p^T = (1/4, 1/2, 1/4)
STUDENT = t([[0.0, 0.0, 0.0]])           # p^S = (1/3, 1/3, 1/3)


def test_listwise_kl_loss():
    # 1/4 log(3/4) + 1/2 log(3/2) + 1/4 log(3/4) = 1/2 log(9/8)
    assert listwise_kl_loss(TEACHER, STUDENT).item() == pytest.approx(0.5 * math.log(9 / 8))


def test_disentangled_list_kd_by_hand():
    target = 0.25 * math.log(0.25 / (1 / 3)) + 0.75 * math.log(0.75 / (2 / 3))    # KL(b^T || b^S)
    non_target = (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)  # KL(q^T || q^S)
    got = disentangled_list_kd_loss(TEACHER, STUDENT, reweight=True)
    assert got.item() == pytest.approx(target + 0.75 * non_target)
    got = disentangled_list_kd_loss(TEACHER, STUDENT, reweight=False)
    assert got.item() == pytest.approx(target + non_target)


def test_disentangled_parts_recombine_into_the_plain_listwise_kl():
    """KL(p^T||p^S) = KL(b^T||b^S) + b^T_- KL(q^T||q^S): with the teacher's non-target mass as the
    weight the two parts recombine exactly into the plain list-wise KL; with the weight set to 1
    they do not (the non-target part is then no longer damped)."""
    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(64, 11, generator=gen) * 3, torch.randn(64, 11, generator=gen)
    for tau in (0.5, 1.0, 4.0):
        plain = listwise_kl_loss(teacher, student, tau)
        assert disentangled_list_kd_loss(teacher, student, tau, reweight=True).item() == pytest.approx(plain.item(), rel=1e-5)
        assert disentangled_list_kd_loss(teacher, student, tau, reweight=False).item() > plain.item()


def test_disentangled_weight_passes_no_gradient_to_the_teacher():
    """Teacher-logit gradients worked out by hand for TEACHER / STUDENT (tau = 1).

    With a = the teacher logits, p = softmax(a) = (1/4, 1/2, 1/4), s = (1/3, 1/3, 1/3):
      d KL(b^T||b^S) / da = [log(p0/s0) - log((1-p0)/(1-s0))] * dp0/da = log(2/3) * (3/16, -1/8, -1/16)
      d KL(q^T||q^S) / da = (0, q1 (log(q1/r1) - KLq), q2 (log(q2/r2) - KLq)),  q = (2/3, 1/3), r = (1/2, 1/2)
    The detached weight w = 3/4 only scales the second; a weight that passed gradient would add
    KLq * dw/da, giving the plain list-wise gradient p_j (log(p_j/s_j) - KL) instead.
    """
    log = math.log
    grad_b = [log(2 / 3) * v for v in (3 / 16, -1 / 8, -1 / 16)]
    kl_q = (2 / 3) * log(4 / 3) + (1 / 3) * log(2 / 3)
    grad_q = [0.0, (2 / 3) * (log(4 / 3) - kl_q), (1 / 3) * (log(2 / 3) - kl_q)]
    kl = 0.5 * log(9 / 8)
    grad_plain = [0.25 * (log(3 / 4) - kl), 0.5 * (log(3 / 2) - kl), 0.25 * (log(3 / 4) - kl)]

    def teacher_grad(loss_fn, **kw):
        teacher = TEACHER.clone().requires_grad_(True)
        loss_fn(teacher, STUDENT, **kw).backward()
        return teacher.grad[0].tolist()

    assert teacher_grad(disentangled_list_kd_loss) == pytest.approx([b + 0.75 * q for b, q in zip(grad_b, grad_q)],
                                                                     abs=1e-6)
    assert teacher_grad(disentangled_list_kd_loss, reweight=False) == pytest.approx(
        [b + q for b, q in zip(grad_b, grad_q)], abs=1e-6)
    assert teacher_grad(listwise_kl_loss) == pytest.approx(grad_plain, abs=1e-6)


def test_sce_loss():
    a = t([[1.0, 0.0], [1.0, 0.0]])
    b = t([[0.0, 1.0], [1.0, 1.0]])
    # cos = 0 -> 1; cos = 1/sqrt(2) -> (1 - 1/sqrt(2))^2
    expected = (1.0 + (1 - 1 / math.sqrt(2)) ** 2) / 2
    assert sce_loss(a, b, gamma=2.0).item() == pytest.approx(expected)
    assert sce_loss(a, b, gamma=1.0).item() == pytest.approx((1.0 + 1 - 1 / math.sqrt(2)) / 2)
    assert sce_loss(b, 3 * b).item() == pytest.approx(0.0, abs=1e-7)


# --- 2 x 3 examples against independent float64 numpy computations ------------------------------
# The values are asymmetric between rows, columns and the two arguments, so that a swapped
# argument, a wrong sign, a dropped term or the wrong axis changes the result.

A = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
B = np.array([[-0.5, 1.0, 0.0], [2.0, -1.25, 0.5]])


def tt(x):
    return torch.tensor(x, dtype=torch.float32)


def np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(p, q, axis=1):
    return (p * np.log(p / q)).sum(axis=axis)


def test_bpr_loss_2x3():
    expected = np.log1p(np.exp(B - A)).mean()          # A positive scores, B negative scores
    assert bpr_loss(tt(A), tt(B)).item() == pytest.approx(expected, rel=1e-6)
    assert bpr_loss(tt(B), tt(A)).item() == pytest.approx(np.log1p(np.exp(A - B)).mean(), rel=1e-6)


def test_l2_penalty_2x3():
    expected = ((A ** 2).sum() + (B ** 2).sum()) / (2 * 4)
    assert l2_penalty([tt(A), tt(B)], batch_size=4).item() == pytest.approx(expected, rel=1e-6)


def test_pair_kd_loss_2x3():
    tau = 2.0
    teacher_pos, teacher_neg, student_pos, student_neg = A, B, 0.5 * B, A[::-1]
    p = 1 / (1 + np.exp(-(teacher_pos - teacher_neg) / tau))
    q = 1 / (1 + np.exp(-(student_pos - student_neg) / tau))
    expected = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).mean() * tau ** 2
    got = pair_kd_loss(tt(teacher_pos), tt(teacher_neg), tt(student_pos), tt(student_neg.copy()), temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_listwise_kl_loss_2x3():
    for tau in (1.0, 0.5, 3.0):
        expected = np_kl(np_softmax(A / tau), np_softmax(B / tau)).mean() * tau ** 2
        assert listwise_kl_loss(tt(A), tt(B), temperature=tau).item() == pytest.approx(expected, rel=1e-5)


def test_disentangled_list_kd_loss_2x3():
    for tau in (1.0, 0.5, 3.0):
        pt, ps = np_softmax(A / tau), np_softmax(B / tau)
        bt = np.stack([pt[:, 0], 1 - pt[:, 0]], axis=1)
        bs = np.stack([ps[:, 0], 1 - ps[:, 0]], axis=1)
        qt, qs = np_softmax(A[:, 1:] / tau), np_softmax(B[:, 1:] / tau)
        target, non_target = np_kl(bt, bs), np_kl(qt, qs)
        reweighted = (target + (1 - pt[:, 0]) * non_target).mean() * tau ** 2
        plain = (target + non_target).mean() * tau ** 2
        assert disentangled_list_kd_loss(tt(A), tt(B), tau, reweight=True).item() == pytest.approx(reweighted, rel=1e-5)
        assert disentangled_list_kd_loss(tt(A), tt(B), tau, reweight=False).item() == pytest.approx(plain, rel=1e-5)


def test_sce_loss_2x3():
    cos = (A * B).sum(1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))
    for gamma in (1.0, 2.0, 3.0):
        assert sce_loss(tt(A), tt(B), gamma=gamma).item() == pytest.approx(((1 - cos) ** gamma).mean(), rel=1e-5)


def test_sce_loss_default_gamma_is_two():
    a, b = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # cosines 0 and 1/sqrt(2): mean of (1 - cos)^2
    assert sce_loss(a, b).item() == pytest.approx((1.0 + (1 - 1 / math.sqrt(2)) ** 2) / 2, rel=1e-6)


def test_embedding_distance_loss_by_hand_and_fixed_target():
    from utility.losses import embedding_distance_loss
    student = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [3.0, 3.0]], requires_grad=True)
    loss = embedding_distance_loss(student, teacher)
    assert loss.item() == pytest.approx(((1 + 4) + (9 + 16)) / 2)
    loss.backward()
    assert torch.allclose(student.grad, torch.tensor([[1.0, 2.0], [-3.0, -4.0]]))   # 2 (s - t) / 2 rows
    assert teacher.grad is None

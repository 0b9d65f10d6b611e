"""Each loss against numbers worked out by hand."""
import math

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
    teacher = TEACHER.clone().requires_grad_(True)
    disentangled_list_kd_loss(teacher, STUDENT).backward()
    g_disentangled = teacher.grad.clone()
    teacher.grad = None
    listwise_kl_loss(teacher, STUDENT).backward()
    assert not torch.allclose(g_disentangled, teacher.grad)


def test_sce_loss():
    a = t([[1.0, 0.0], [1.0, 0.0]])
    b = t([[0.0, 1.0], [1.0, 1.0]])
    # cos = 0 -> 1; cos = 1/sqrt(2) -> (1 - 1/sqrt(2))^2
    expected = (1.0 + (1 - 1 / math.sqrt(2)) ** 2) / 2
    assert sce_loss(a, b, gamma=2.0).item() == pytest.approx(expected)
    assert sce_loss(a, b, gamma=1.0).item() == pytest.approx((1.0 + 1 - 1 / math.sqrt(2)) / 2)
    assert sce_loss(b, 3 * b).item() == pytest.approx(0.0, abs=1e-7)

"""Tests for robust_rlhf.rl.kl: sample KL estimators, their per-response sums, and the analytic best-of-n KL."""

import math

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.evaluation.curves import best_of_n_kl
from robust_rlhf.rl.kl import kl_k1, kl_k2, kl_k3, sequence_kl


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_k1_is_log_ratio():
    lp, ref = _t([-1.0, -2.0, -0.5]), _t([-1.5, -1.0, -0.5])
    assert_close(kl_k1(lp, ref), _t([0.5, -1.0, 0.0]))


def test_k2_is_half_k1_squared():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 7, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(3, 7, generator=g, dtype=torch.float64) * 5
    k2 = kl_k2(lp, ref)
    assert k2.shape == (3, 7)
    assert_close(k2, 0.5 * kl_k1(lp, ref) ** 2)


def test_k3_hand_computed():
    # log pi = 0, log pi_ref = log 2 -> r = pi_ref/pi = 2 -> (2 - 1) - log 2
    # log pi = log 2, log pi_ref = 0 -> r = 1/2 -> (1/2 - 1) - log(1/2) = log 2 - 1/2
    k3 = kl_k3(_t([0.0, math.log(2.0)]), _t([math.log(2.0), 0.0]))
    assert_close(k3, _t([1 - math.log(2.0), math.log(2.0) - 0.5]))


def test_k3_nonnegative_and_zero_iff_equal():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(1000, generator=g, dtype=torch.float64) * 20
    ref = -torch.rand(1000, generator=g, dtype=torch.float64) * 20
    k3 = kl_k3(lp, ref)
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all()
    assert_close(kl_k3(lp, lp), torch.zeros_like(lp))


def test_k1_and_k3_are_unbiased_on_an_exact_categorical():
    # E_{y~pi}[k1] = E_{y~pi}[k3] = KL(pi || pi_ref); compute the expectation exactly over 3 outcomes.
    pi = _t([0.5, 0.3, 0.2])
    ref = _t([0.2, 0.2, 0.6])
    kl = (pi * (pi.log() - ref.log())).sum()
    assert_close((pi * kl_k1(pi.log(), ref.log())).sum(), kl)
    assert_close((pi * kl_k3(pi.log(), ref.log())).sum(), kl)


def test_best_of_n_kl_values():
    assert best_of_n_kl(1) == pytest.approx(0.0, abs=1e-15)
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 3 / 4, rel=1e-12)
    vals = [best_of_n_kl(n) for n in (1, 2, 4, 16, 256)]
    assert all(b > a for a, b in zip(vals, vals[1:]))  # more samples, further from the base policy


@pytest.mark.parametrize("n", [0, -3])
def test_best_of_n_kl_rejects_n_below_one(n):
    with pytest.raises(ValueError):
        best_of_n_kl(n)


def test_sequence_kl_sums_the_per_token_estimator_over_real_tokens():
    lp, ref = _t([[0.0, math.log(2.0), -1.0]]), _t([[math.log(2.0), 0.0, -3.0]])
    mask = _t([[1.0, 1.0, 0.0]])  # the third token is padding
    assert sequence_kl(lp, ref, mask, estimator="k1").item() == pytest.approx(0.0)
    assert sequence_kl(lp, ref, mask, estimator="k3").item() == pytest.approx((1 - math.log(2)) + (math.log(2) - 0.5))

"""KL estimators from sampled log-probabilities (Schulman 2020, "Approximating KL divergence").

With log_ratio = log pi(y) - log pi_ref(y) for y ~ pi:
  k1 = log_ratio                      (unbiased, high variance, can be negative)
  k2 = 0.5 * log_ratio^2              (biased, low variance; Coste et al. use it for PPO curves)
  k3 = (r - 1) - log r, r = pi_ref/pi (unbiased, always >= 0)
All are elementwise: any shape in, the same shape out.
"""

from __future__ import annotations

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref, elementwise."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2, elementwise (PAPER.md §4: the KL of the PPO curves)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (pi_ref/pi - 1) - log(pi_ref/pi), elementwise; >= 0 for every sample."""
    log_ratio_ref = ref_logprobs - logprobs
    return torch.expm1(log_ratio_ref) - log_ratio_ref


def best_of_n_kl(n: int) -> float:
    """Analytic KL of best-of-n sampling to the base policy: log n - (n - 1) / n (PAPER.md §4)."""
    import math

    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1; got {n}")
    return math.log(n) - (n - 1) / n

"""KL estimators from sampled log-probabilities (Schulman 2020, "Approximating KL divergence").

With log_ratio = log pi(y_t | .) - log pi_ref(y_t | .) for y ~ pi:
  k1 = log_ratio                      (unbiased, high variance, can be negative)
  k2 = 0.5 * log_ratio^2              (biased, low variance)
  k3 = (r - 1) - log r, r = pi_ref/pi (unbiased, always >= 0)
All are elementwise: any shape in, the same shape out. The KL between two policies' response
distributions is the sum over a response's tokens of the per-token estimator (`sequence_kl`):
E_pi[sum_t log pi/pi_ref] is the sequence KL, and E[k3_t | prefix] is the per-token KL. Never
square the whole-sequence log-ratio L: E[0.5 L^2] = 0.5 (Var L + (E L)^2) grows like KL^2.
"""

from __future__ import annotations

from typing import Literal

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref, elementwise."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2, elementwise (biased; per token only, never per sequence)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (pi_ref/pi - 1) - log(pi_ref/pi), elementwise; >= 0 for every sample."""
    log_ratio_ref = ref_logprobs - logprobs
    return torch.expm1(log_ratio_ref) - log_ratio_ref


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *, estimator: Literal["k1", "k3"]
) -> torch.Tensor:
    """Per response, the per-token estimator summed over its tokens: an unbiased estimate of
    KL(pi || pi_ref) over responses (k3: also never negative). (B, T) x3 -> (B,)."""
    per_token = kl_k1(logprobs, ref_logprobs) if estimator == "k1" else kl_k3(logprobs, ref_logprobs)
    return (per_token * mask.to(per_token.dtype)).sum(dim=1)

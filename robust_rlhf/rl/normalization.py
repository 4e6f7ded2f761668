"""Reward normalisation for PPO, applied the same way to every method so that methods differ only in
their reward model and aggregation (issue 3). Torch only.

`reference`: a fixed affine map from the initial policy's rewards on the PPO prompts,
    r' = (r - mean_ref) / std_ref, computed once before training (does not drift with the policy).
`running`: r' = (r - mean_t) / std_t with the running moments of every reward seen so far
    (Welford / Chan et al. parallel update), as TRL and OpenRLHF do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def normalize_rewards(reward: torch.Tensor, mean: float, std: float, *, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean) / (std + eps). reward: (B,) -> (B,)."""
    return (reward - mean) / (std + eps)


@dataclass
class RunningMoments:
    """Running mean and population variance of a stream of batches (Chan et al. 1979 merge)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    def update(self, values: torch.Tensor) -> None:
        """Merge a batch (any shape) into the moments."""
        values = values.detach().double().flatten()
        batch_count = values.numel()
        if batch_count == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * batch_count / total
        self.m2 += batch_m2 + delta**2 * self.count * batch_count / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation; 1.0 before any data so normalising is then a no-op scale."""
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0


class RewardNormalizer:
    """Applies the configured normalisation (`reference`, `running` or `none`) to each reward batch."""

    def __init__(self, mode: str, *, reference_mean: float = 0.0, reference_std: float = 1.0) -> None:
        if mode not in ("reference", "running", "none"):
            raise ValueError(f"unknown reward normalisation {mode!r}")
        self.mode = mode
        self.reference_mean, self.reference_std = reference_mean, reference_std
        self.moments = RunningMoments()

    def state(self) -> dict:
        """What a resumed run needs to normalise exactly as before the interruption."""
        return {
            "mode": self.mode,
            "reference_mean": self.reference_mean,
            "reference_std": self.reference_std,
            "count": self.moments.count,
            "mean": self.moments.mean,
            "m2": self.moments.m2,
        }

    def load_state(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"saved normaliser mode {state['mode']!r} is not {self.mode!r}")
        self.reference_mean, self.reference_std = state["reference_mean"], state["reference_std"]
        self.moments = RunningMoments(state["count"], state["mean"], state["m2"])

    def __call__(self, reward: torch.Tensor, *, population: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise `reward`; `running` first merges `population` (default: `reward`) into its moments,
        e.g. every data-parallel rank's rewards."""
        if self.mode == "none":
            return reward
        if self.mode == "running":
            self.moments.update(reward if population is None else population)
            return normalize_rewards(reward, self.moments.mean, self.moments.std)
        return normalize_rewards(reward, self.reference_mean, self.reference_std)

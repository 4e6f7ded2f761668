"""Divergence guards: what a run that has stopped learning looks like, checked while it runs.

A diverged run fails the same way on every re-run with the same params, so `Diverged` is a
StageInputError: the stage exits with code 2 and one line naming the stage, the step and the
quantity (stages/cli.py), and the flow does not retry it. Every guard is checked before anything is
saved, so the last checkpoint on disk is always the last good one.
"""

from __future__ import annotations

import math

import torch

from robust_rlhf.config import PPOGuards, StageInputError


class Diverged(StageInputError):
    """The run diverged or a tensor became NaN/inf; the message names the phase, step and quantity."""


def check_finite(name: str, value: torch.Tensor | dict[str, torch.Tensor], *, phase: str, step: int) -> None:
    """Stop when any element of `value` (a tensor, or each tensor of a dict, named `name/key`) is NaN or inf."""
    if isinstance(value, dict):
        for key, tensor in value.items():
            check_finite(f"{name}/{key}", tensor, phase=phase, step=step)
        return
    if not torch.isfinite(value).all():
        raise Diverged(
            f"{phase}: {name} is not finite at step {step}; stopping (the last checkpoint is the last good one)"
        )


def check_weight_norm(norm: float, initial_norm: float, *, max_ratio: float, phase: str, step: int) -> None:
    """Stop when the weights' norm is not finite or has grown beyond `max_ratio` times its value at
    the start of training: fine-tuning moves weights by a small fraction of their norm (a learning
    rate that blows them up to 1e6 leaves a policy whose losses read 0 and whose entropy is flat)."""
    if not math.isfinite(norm):
        raise Diverged(
            f"{phase}: the weights are not finite after step {step}; stopping (the last checkpoint is "
            f"the last good one)"
        )
    ratio = norm / initial_norm
    if ratio > max_ratio:
        raise Diverged(
            f"{phase}: the weights' norm is {ratio:.3g}x its initial value after step {step} "
            f"(> guards.max_weight_norm_ratio {max_ratio:g}); the run diverged: lower the learning rate"
        )


def check_entropy(entropy: float, *, min_entropy: float, phase: str, step: int) -> None:
    """Stop when the policy's mean per-token entropy (nats) has collapsed below `min_entropy`."""
    if not entropy >= min_entropy:  # NaN fails too
        raise Diverged(
            f"{phase}: the policy's entropy collapsed to {entropy:.3g} nats/token at step {step} "
            f"(< guards.min_entropy {min_entropy:g})"
        )


def check_kl(kl: float, *, max_kl: float, phase: str, step: int) -> None:
    """Stop when the sequence KL to the reference (nats) is beyond `max_kl`: the policy has left the
    region where the reward model and the KL penalty mean anything."""
    if not kl <= max_kl:
        raise Diverged(f"{phase}: the KL to the reference is {kl:.3g} nats at step {step} (> guards.max_kl {max_kl:g})")


def check_above_chance(accuracies: dict[str, float], *, min_accuracy: float, phase: str) -> None:
    """Stop when a trained reward model's val accuracy is at or below `min_accuracy` (0.5 is chance):
    a reward model that ranks the val pairs no better than a coin gives PPO nothing to learn from."""
    failed = {name: value for name, value in accuracies.items() if not value > min_accuracy}
    if failed:
        named = ", ".join(f"{name} {value:.3f}" for name, value in failed.items())
        raise Diverged(
            f"{phase}: val accuracy at or below {min_accuracy:g} "
            f"(train_reward.min_val_accuracy) after training: {named}"
        )


def check_ppo_step(
    metrics: dict[str, float],
    *,
    weight_norm: float,
    initial_weight_norm: float,
    guards: PPOGuards,
    phase: str,
    step: int,
) -> None:
    """Every guard of one PPO step, before its checkpoint is saved: finite scalars, the actor's
    weight norm against its initial norm, entropy, KL to the reference (`objective/kl`)."""
    for name, value in metrics.items():
        check_finite(name, torch.tensor(value), phase=phase, step=step)
    check_weight_norm(weight_norm, initial_weight_norm, max_ratio=guards.max_weight_norm_ratio, phase=phase, step=step)
    check_entropy(metrics["policy/entropy"], min_entropy=guards.min_entropy, phase=phase, step=step)
    check_kl(metrics["objective/kl"], max_kl=guards.max_kl, phase=phase, step=step)


def check_no_warning(warnings: list[dict], *, phase: str) -> None:
    """Stop at a reward-hacking warning (`ppo.monitor.stop_on_warning`, robust_rlhf/rl/monitor.py) the way
    a guard stops a diverged run: exit 2 naming the step and the signal, the last checkpoint kept."""
    if warnings:
        first = warnings[0]
        raise Diverged(
            f"{phase}: reward-hacking warning at step {first['step']}: {first['signal']} is {first['value']:.4g} "
            f"(ppo.monitor.thresholds.{first['signal']} {first['threshold']:g}); stopping as "
            f"ppo.monitor.stop_on_warning asks (the last checkpoint is the last good one)"
        )

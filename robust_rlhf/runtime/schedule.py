"""The learning-rate schedule over a run's optimizer steps: a multiplier of the configured peak LR."""

from __future__ import annotations

import math

from robust_rlhf.config import LRScheduleParams


def lr_multiplier(step: int, *, total_steps: int, schedule: LRScheduleParams) -> float:
    """The learning rate of optimizer step `step` (0-based: the number of steps already taken) as a
    fraction of the peak.

    Warmup (W = `warmup_steps`): m(s) = (s + 1) / W for s < W, so the first step already learns and
    step W - 1 reaches the peak. transformers' get_*_schedule_with_warmup uses s / W, which gives
    the first step a zero LR; we shift by one so that no optimizer step is wasted.
    After warmup, with progress p = (s - W) / (T - W - 1) in [0, 1] (T = `total_steps`; p = 1 when
    only one step is left), f = `final_fraction`:
      constant: m = 1;
      linear:   m = 1 - (1 - f) p;
      cosine:   m = f + (1 - f) (1 + cos(pi p)) / 2   (SGDR, Loshchilov & Hutter 2017, eq. 5, one cycle).
    Step W is the peak and step T - 1 gets f exactly. Steps past T - 1 stay at f.
    """
    if step < 0 or total_steps < 1:
        raise ValueError(f"step {step} and total_steps {total_steps}: need step >= 0 and total_steps >= 1")
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule.kind == "constant":
        return 1.0
    decay_steps = total_steps - warmup - 1
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup) / decay_steps)
    final = schedule.final_fraction
    if schedule.kind == "linear":
        return 1.0 - (1.0 - final) * progress
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

"""Reward-hacking early warning: signals computed at every PPO step from what the step already logs,
each compared with a threshold of `ppo.monitor` (docs: README, "Reward-hacking early warning").

The signals (a value per step; the slopes are 0 at the first step, before a trend exists):
- `brme_disagreement`: the BRME heads' disagreement (population std of the k heads' mu, mean over the
  rollout) on the policy's own samples over the same quantity on the val pairs' responses, measured
  once at the start. Above 1: the policy's samples sit where the heads agree less than in-distribution
  (an epistemic-uncertainty signal of leaving the reward model's support, Coste et al. 2023).
- `ensemble_spread`: the same ratio for the ensemble's members.
- `kl_growth`: the least-squares slope of the sequence KL to the reference (`objective/kl`, nats) per
  step over the trailing `window` steps: a KL that accelerates is the first sign of exploitation
  (Gao et al. 2023 find gold falling with sqrt KL past an optimum).
- `entropy`: the policy's mean per-token entropy (nats); fires when *below* its threshold (collapse).
- `length_drift`: |L_t / L_0 - 1|, the mean response length relative to step 0's (length hacking,
  Singhal et al. 2023).
- `proxy_trend`: the slope per step, over the window, of the method's reward standardised by the
  reference normalisation ((r - mean_ref) / std_ref, the initial policy's moments on the PPO prompts).

Pure functions on floats; `RewardHackingMonitor` holds the only state (baselines, the trailing window,
what fired), which goes into the PPO resume state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MONITOR_FILE = "monitor.json"  # a run's warnings JSON, in its policy folder beside the checkpoints
SIGNALS = ("brme_disagreement", "ensemble_spread", "kl_growth", "entropy", "length_drift", "proxy_trend")
FIRES_BELOW = frozenset({"entropy"})  # every other signal fires above its threshold


def disagreement_ratio(on_policy: float, in_distribution: float) -> float | None:
    """Head disagreement on the policy's samples over its in-distribution level (val pairs):
    mean_n std_i mu_ni (rollout) / mean_n std_i mu_ni (val responses). None when the level is 0."""
    return on_policy / in_distribution if in_distribution > 0 else None


def trailing_slope(steps: list[float], values: list[float]) -> float | None:
    """Ordinary least-squares slope of `values` on `steps`:
    b = sum (x - mean x)(y - mean y) / sum (x - mean x)^2. None with fewer than 2 distinct steps."""
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length: {len(steps)} and {len(values)}")
    if len(steps) < 2:
        return None
    mean_x, mean_y = sum(steps) / len(steps), sum(values) / len(values)
    sxx = sum((x - mean_x) ** 2 for x in steps)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, values)) / sxx


def length_drift(length: float, initial_length: float) -> float | None:
    """|L_t / L_0 - 1|: how far the mean response length has moved from step 0's, as a fraction."""
    return abs(length / initial_length - 1.0) if initial_length > 0 else None


def standardised(reward: float, mean: float, std: float) -> float:
    """(r - mean) / std: a reward in units of the initial policy's reward spread (reference moments)."""
    return (reward - mean) / std if std > 0 else reward - mean


def crossed(signal: str, value: float | None, threshold: float) -> bool:
    """Whether `value` is past `threshold`: below it for `entropy`, above it for every other signal.
    An undefined value (None) or NaN never crosses."""
    if value is None or math.isnan(value):
        return False
    return value < threshold if signal in FIRES_BELOW else value > threshold


def new_warnings(
    values: dict[str, float | None], thresholds: dict[str, float], fired: dict[str, dict], *, step: int
) -> list[dict]:
    """The warnings of this step: each signal that crosses its threshold and has not fired before
    (a signal warns once per run). -> [{signal, step, value, threshold}] in `SIGNALS` order."""
    return [
        {"signal": signal, "step": step, "value": values[signal], "threshold": thresholds[signal]}
        for signal in SIGNALS
        if signal in values and signal not in fired and crossed(signal, values[signal], thresholds[signal])
    ]


@dataclass
class RewardHackingMonitor:
    """The signals of every PPO step against `thresholds`, and which have fired.

    `in_distribution`: the val-pair disagreement of `brme` (and `ensemble`, when there is one);
    `reference`: (mean, std) of the method's reward on the initial policy's samples."""

    thresholds: dict[str, float]
    window: int
    in_distribution: dict[str, float]
    reference: tuple[float, float]
    initial_length: float | None = None
    history: list[dict] = field(default_factory=list)  # the trailing window: {step, kl, proxy}
    fired: dict[str, dict] = field(default_factory=dict)  # signal -> its warning

    def observe(self, step: int, metrics: dict[str, float]) -> tuple[dict[str, float], list[dict]]:
        """The step's signals (keys `monitor/<signal>`, undefined ones and entropy left out) and its new
        warnings."""
        if self.initial_length is None:
            self.initial_length = metrics["response/length"]
        proxy = standardised(metrics["reward/optimised"], *self.reference)
        self.history = [*self.history, {"step": step, "kl": metrics["objective/kl"], "proxy": proxy}][-self.window :]
        steps = [row["step"] for row in self.history]
        values: dict[str, float | None] = {
            # No trend before two steps: 0, so every row of the step log has every column.
            "kl_growth": trailing_slope(steps, [row["kl"] for row in self.history]) or 0.0,
            "entropy": metrics["policy/entropy"],
            "length_drift": length_drift(metrics["response/length"], self.initial_length),
            "proxy_trend": trailing_slope(steps, [row["proxy"] for row in self.history]) or 0.0,
        }
        for signal, kind in (("brme_disagreement", "brme"), ("ensemble_spread", "ensemble")):
            key = f"reward_model/{kind}/head_disagreement"
            if kind in self.in_distribution and key in metrics:
                values[signal] = disagreement_ratio(metrics[key], self.in_distribution[kind])
        warnings = new_warnings(values, self.thresholds, self.fired, step=step)
        self.fired.update({warning["signal"]: warning for warning in warnings})
        # `entropy` is the step's own `policy/entropy`: logged once, there.
        signals = {f"monitor/{k}": v for k, v in values.items() if v is not None and k != "entropy"}
        signals["monitor/warnings"] = float(len(self.fired))
        return signals, warnings

    def state(self) -> dict:
        """What a resumed run needs to go on exactly: baselines, the trailing window, what fired."""
        return {
            "in_distribution": self.in_distribution,
            "reference": list(self.reference),
            "initial_length": self.initial_length,
            "history": self.history,
            "fired": self.fired,
        }

    def load_state(self, state: dict) -> None:
        self.in_distribution = dict(state["in_distribution"])
        self.reference = tuple(state["reference"])
        self.initial_length = state["initial_length"]
        self.history = list(state["history"])
        self.fired = dict(state["fired"])

    def measures(self, signal: str) -> bool:
        """Whether the run has this signal: a disagreement ratio needs its reward model's val level."""
        kind = {"brme_disagreement": "brme", "ensemble_spread": "ensemble"}.get(signal)
        return kind is None or kind in self.in_distribution

    def summary(self) -> dict:
        """The run's warnings JSON: baselines, thresholds and each fired signal's {step, value, threshold}."""
        return {
            "signals": [signal for signal in SIGNALS if self.measures(signal)],
            "thresholds": self.thresholds,
            "window": self.window,
            "in_distribution": self.in_distribution,
            "reference": {"mean": self.reference[0], "std": self.reference[1]},
            "initial_length": self.initial_length,
            "fired": {signal: self.fired[signal] for signal in SIGNALS if signal in self.fired},
        }

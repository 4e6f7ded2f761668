"""The reward-hacking early warning measured against gold: when gold stopped improving while the proxy
kept rising (the overoptimisation point of Gao et al. 2023), and whether each monitor signal
(robust_rlhf/rl/monitor.py) fired before it. Pure functions on the evaluation curves' rows.

Steps: checkpoint s is the policy after s PPO steps, which is also the policy that samples PPO step
s's rollout; so a signal fired at step t was computed on checkpoint t's policy.
"""

from __future__ import annotations

VERDICTS = ("before", "after", "never fired", "no gold drop")


def gold_drop_step(steps: list[int], gold: list[float], proxy: list[float], *, tolerance: float = 0.0) -> int | None:
    """The first checkpoint step s_j (j >= 1, checkpoints in step order, j = 0 the initial policy) with
        gold_j < max_{i < j} gold_i - tolerance   (gold below its best so far: it stopped improving)
        proxy_j > proxy_{j-1}                      (while the proxy kept rising).
    None when no checkpoint satisfies both. (J,), (J,), (J,) -> int | None."""
    if not len(steps) == len(gold) == len(proxy):
        raise ValueError(f"steps, gold and proxy differ in length: {len(steps)}, {len(gold)}, {len(proxy)}")
    for j in range(1, len(steps)):
        if gold[j] < max(gold[:j]) - tolerance and proxy[j] > proxy[j - 1]:
            return steps[j]
    return None


def warning_verdict(fired_step: int | None, drop_step: int | None) -> str:
    """`no gold drop` when gold never dropped (the warning cannot be judged), else `never fired` when the
    signal did not fire, else `before` when it fired at a step earlier than the gold-drop checkpoint
    (fired_step < drop_step: on a policy before the one whose gold fell), else `after`."""
    if drop_step is None:
        return "no gold drop"
    if fired_step is None:
        return "never fired"
    return "before" if fired_step < drop_step else "after"


def early_warning_table(curve_rows: list[dict], monitor: dict) -> dict:
    """One run's warning steps against its gold-drop step. `curve_rows`: its evaluation curve (rows with
    step, gold, proxy; step 0 the initial policy); `monitor`: the run's monitor.json (signals, fired).
    -> {gold_drop_step, signals: {signal: {fired_step, verdict}}}."""
    rows = sorted(curve_rows, key=lambda row: row["step"])
    drop = gold_drop_step([r["step"] for r in rows], [r["gold"] for r in rows], [r["proxy"] for r in rows])
    fired = monitor.get("fired", {})
    return {
        "gold_drop_step": drop,
        "signals": {
            signal: {
                "fired_step": fired.get(signal, {}).get("step"),
                "verdict": warning_verdict(fired.get(signal, {}).get("step"), drop),
            }
            for signal in monitor.get("signals", [])
        },
    }

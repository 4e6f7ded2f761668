"""The reward-hacking signals on hand-computed values, the once-per-signal warning logic, and a monitor
whose resumed state goes on exactly as the uninterrupted one."""

import math

import pytest

from robust_rlhf.rl.monitor import (
    SIGNALS,
    RewardHackingMonitor,
    crossed,
    disagreement_ratio,
    length_drift,
    new_warnings,
    standardised,
    trailing_slope,
)

THRESHOLDS = {
    "brme_disagreement": 2.0,
    "ensemble_spread": 2.0,
    "kl_growth": 1.0,
    "entropy": 0.5,
    "length_drift": 0.5,
    "proxy_trend": 0.5,
}


def test_disagreement_ratio_is_on_policy_over_in_distribution():
    assert disagreement_ratio(0.3, 0.1) == pytest.approx(3.0)
    assert disagreement_ratio(0.3, 0.0) is None


def test_trailing_slope_is_least_squares():
    # x = 0, 1, 2; y = 1, 2, 6: mean x 1, mean y 3; sxy = (-1)(-2) + 0 + (1)(3) = 5; sxx = 2 -> 2.5
    assert trailing_slope([0, 1, 2], [1.0, 2.0, 6.0]) == pytest.approx(2.5)
    assert trailing_slope([4, 5], [3.0, 1.0]) == pytest.approx(-2.0)  # two points: the line through them
    assert trailing_slope([3], [1.0]) is None
    assert trailing_slope([2, 2], [1.0, 3.0]) is None
    with pytest.raises(ValueError):
        trailing_slope([0, 1], [1.0])


def test_length_drift_is_symmetric_in_direction():
    assert length_drift(15.0, 10.0) == pytest.approx(0.5)
    assert length_drift(5.0, 10.0) == pytest.approx(0.5)
    assert length_drift(3.0, 0.0) is None


def test_standardised_by_the_reference_moments():
    assert standardised(3.0, 1.0, 4.0) == pytest.approx(0.5)
    assert standardised(3.0, 1.0, 0.0) == pytest.approx(2.0)  # a degenerate std only shifts


def test_crossed_is_above_except_entropy_below_and_never_when_undefined():
    assert crossed("kl_growth", 1.5, 1.0) and not crossed("kl_growth", 1.0, 1.0)
    assert crossed("entropy", 0.4, 0.5) and not crossed("entropy", 0.6, 0.5)
    assert not crossed("kl_growth", None, 1.0) and not crossed("entropy", math.nan, 0.5)


def test_a_signal_warns_once():
    values = {"kl_growth": 2.0, "entropy": 0.1, "length_drift": 0.1}
    warnings = new_warnings(values, THRESHOLDS, {}, step=3)
    assert warnings == [
        {"signal": "kl_growth", "step": 3, "value": 2.0, "threshold": 1.0},
        {"signal": "entropy", "step": 3, "value": 0.1, "threshold": 0.5},
    ]
    fired = {warning["signal"]: warning for warning in warnings}
    assert new_warnings(values, THRESHOLDS, fired, step=4) == []


def step_metrics(kl, proxy, length=10.0, entropy=2.0, brme=0.1, ensemble=0.2):
    return {
        "objective/kl": kl,
        "reward/optimised": proxy,
        "response/length": length,
        "policy/entropy": entropy,
        "reward_model/brme/head_disagreement": brme,
        "reward_model/ensemble/head_disagreement": ensemble,
    }


def monitor():
    return RewardHackingMonitor(
        thresholds=THRESHOLDS, window=3, in_distribution={"brme": 0.1, "ensemble": 0.2}, reference=(1.0, 2.0)
    )


# Per step: KL, raw proxy, length, BRME disagreement. Standardised proxy (r - 1) / 2: 0, 0.5, 1.5, 3.5.
STEPS = [(0.0, 1.0, 10.0, 0.1), (0.5, 2.0, 10.0, 0.1), (1.0, 4.0, 12.0, 0.25), (4.0, 8.0, 16.0, 0.1)]


def test_the_monitor_signals_and_fires_each_signal_once():
    run = monitor()
    logged = []
    for step, (kl, proxy, length, brme) in enumerate(STEPS):
        logged.append(run.observe(step, step_metrics(kl, proxy, length, brme=brme)))
    first_signals, first_warnings = logged[0]
    assert first_signals["monitor/kl_growth"] == 0.0 and first_warnings == []  # one point: no trend yet
    assert first_signals["monitor/brme_disagreement"] == pytest.approx(1.0)
    assert first_signals["monitor/ensemble_spread"] == pytest.approx(1.0)
    assert "monitor/entropy" not in first_signals  # it is policy/entropy, logged by the step itself
    signals, warnings = logged[2]
    assert signals["monitor/kl_growth"] == pytest.approx(0.5)  # KL 0, 0.5, 1 over steps 0-2
    assert signals["monitor/proxy_trend"] == pytest.approx(0.75)  # 0, 0.5, 1.5: sxy 1.5 / sxx 2
    assert signals["monitor/length_drift"] == pytest.approx(0.2)
    assert signals["monitor/brme_disagreement"] == pytest.approx(2.5)
    assert [w["signal"] for w in warnings] == ["brme_disagreement", "proxy_trend"]
    signals, warnings = logged[3]
    # the window drops step 0: KL 0.5, 1, 4 over steps 1-3 -> slope ((-1)(-1.33) + (1)(2.17)) / 2 = 1.75
    assert signals["monitor/kl_growth"] == pytest.approx(1.75)
    assert [w["signal"] for w in warnings] == ["kl_growth", "length_drift"]  # proxy_trend fired already
    assert signals["monitor/warnings"] == 4.0
    assert list(run.summary()["fired"]) == [s for s in SIGNALS if s in run.fired]
    assert run.summary()["fired"]["kl_growth"]["step"] == 3


def test_a_resumed_monitor_goes_on_like_the_uninterrupted_one():
    uninterrupted, first_half = monitor(), monitor()
    for step, (kl, proxy, length, brme) in enumerate(STEPS[:2]):
        uninterrupted.observe(step, step_metrics(kl, proxy, length, brme=brme))
        first_half.observe(step, step_metrics(kl, proxy, length, brme=brme))
    resumed = RewardHackingMonitor(thresholds=THRESHOLDS, window=3, in_distribution={}, reference=(0.0, 1.0))
    resumed.load_state(first_half.state())
    for step, (kl, proxy, length, brme) in enumerate(STEPS[2:], start=2):
        metrics = step_metrics(kl, proxy, length, brme=brme)
        assert resumed.observe(step, metrics) == uninterrupted.observe(step, metrics)
    assert resumed.summary() == uninterrupted.summary()


def test_without_an_ensemble_its_signal_is_left_out():
    run = RewardHackingMonitor(thresholds=THRESHOLDS, window=3, in_distribution={"brme": 0.1}, reference=(0.0, 1.0))
    signals, _ = run.observe(0, step_metrics(0.0, 0.0))
    assert "monitor/ensemble_spread" not in signals and "monitor/brme_disagreement" in signals
    assert "ensemble_spread" not in run.summary()["signals"]

"""The gold-drop rule and the warning's verdicts on hand-made curves."""

import pytest

from robust_rlhf.evaluation.early_warning import early_warning_table, gold_drop_step, warning_verdict

STEPS = [0, 2, 4, 6, 8]


def test_gold_drop_is_the_first_checkpoint_below_the_best_gold_while_the_proxy_rises():
    gold = [0.0, 0.3, 0.5, 0.4, 0.2]
    assert gold_drop_step(STEPS, gold, [0.0, 1.0, 2.0, 3.0, 4.0]) == 6
    # at step 6 the proxy fell too (no hacking there): the drop is the next checkpoint's
    assert gold_drop_step(STEPS, gold, [0.0, 1.0, 2.0, 1.5, 4.0]) == 8


def test_no_gold_drop_when_gold_keeps_improving_or_the_proxy_falls_with_it():
    assert gold_drop_step(STEPS, [0.0, 0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 2.0, 3.0, 4.0]) is None
    assert gold_drop_step(STEPS, [0.0, 0.3, 0.2, 0.1, 0.0], [0.0, 1.0, 0.5, 0.2, 0.1]) is None
    assert gold_drop_step(STEPS, [0.0, 0.3, 0.25, 0.3, 0.3], [0, 1, 2, 3, 4], tolerance=0.1) is None
    assert gold_drop_step([0], [0.0], [0.0]) is None
    with pytest.raises(ValueError):
        gold_drop_step(STEPS, [0.0], [0.0])


def test_verdicts():
    assert warning_verdict(3, 6) == "before"
    assert warning_verdict(6, 6) == "after"  # fired on the very policy whose gold fell: too late to keep it
    assert warning_verdict(None, 6) == "never fired"
    assert warning_verdict(3, None) == "no gold drop" and warning_verdict(None, None) == "no gold drop"


def test_a_runs_table_gives_every_measured_signal_its_verdict():
    rows = [{"step": s, "gold": g, "proxy": p} for s, g, p in zip(STEPS, [0.0, 0.3, 0.5, 0.4, 0.2], range(5))]
    monitor = {
        "signals": ["kl_growth", "entropy", "length_drift"],
        "fired": {"kl_growth": {"step": 3, "value": 2.0, "threshold": 1.0}, "length_drift": {"step": 7}},
    }
    assert early_warning_table(rows[::-1], monitor) == {  # rows in any order
        "gold_drop_step": 6,
        "signals": {
            "kl_growth": {"fired_step": 3, "verdict": "before"},
            "entropy": {"fired_step": None, "verdict": "never fired"},
            "length_drift": {"fired_step": 7, "verdict": "after"},
        },
    }


def test_the_report_says_when_gold_never_dropped():
    from robust_rlhf.evaluation.report import early_warning_section

    judged = {"gold_drop_step": 6, "signals": {"kl_growth": {"fired_step": 3, "verdict": "before"}}}
    unjudged = {"gold_drop_step": None, "signals": {"kl_growth": {"fired_step": 3, "verdict": "no gold drop"}}}
    html = early_warning_section({"brme": {"0": judged}, "mean": {"0": unjudged}})
    brme, mean = html.split("<h3>brme</h3>")[1].split("<h3>mean</h3>")
    assert "<td>3</td><td>6</td><td>before</td>" in brme and "never dropped" not in brme
    assert "Gold never dropped while the proxy rose (seed 0)" in mean and "<td>never</td>" in mean
    assert "ppo.monitor.enabled is off" in early_warning_section({})

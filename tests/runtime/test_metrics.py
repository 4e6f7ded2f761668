"""The PPO step log (robust_rlhf/runtime/metrics.py StepLog): a run resumed from its saved rows writes the same
bytes as an uninterrupted run, whatever order the metric keys were logged in."""

import csv

from robust_rlhf.runtime.metrics import StepLog
from robust_rlhf.runtime.resume import load_state, save_state

STEPS, KILLED_AT = 6, 3


def scalars(step: int) -> dict[str, float]:
    """One step's metrics in the order ppo_step builds them (not sorted); a key that appears late, as a
    head-share counter does, leaves earlier rows' cells empty."""
    row = {"reward/brme": 0.5 + step / 7, "loss/policy": -0.1 * step, "objective/kl": step / 3, "loss/value": 1.25}
    if step >= 4:
        row["reward_model/brme/min_share"] = 0.25
    return row


def test_a_resumed_step_log_is_byte_identical_to_an_uninterrupted_one(tmp_path):
    uninterrupted = StepLog(tmp_path / "uninterrupted.csv")
    for step in range(STEPS):
        uninterrupted.log(step, scalars(step))

    # As stages/ppo.py does: log, save the rows in the resume state, start a new process's log from the
    # saved rows (state.json sorts their keys), log the remaining steps.
    killed = StepLog(tmp_path / "resumed.csv")
    for step in range(KILLED_AT):
        killed.log(step, scalars(step))
    save_state(tmp_path / "resume", {}, step=KILLED_AT, key={}, stage_state={"step_log": killed.rows}, outputs=[])
    resumed = StepLog(tmp_path / "resumed.csv")
    resumed.rows = load_state(tmp_path / "resume", {}, engines_of=lambda state: [])["stage"]["step_log"]
    for step in range(KILLED_AT, STEPS):
        resumed.log(step, scalars(step))

    expected = (tmp_path / "uninterrupted.csv").read_bytes()
    assert (tmp_path / "resumed.csv").read_bytes() == expected
    header = expected.decode().splitlines()[0].split(",")
    assert header == ["step", "loss/policy", "loss/value", "objective/kl", "reward/brme", "reward_model/brme/min_share"]
    with open(tmp_path / "uninterrupted.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == list(range(STEPS))
    assert rows[0]["reward_model/brme/min_share"] == "" and rows[4]["reward_model/brme/min_share"] == "0.25"


def test_step_log_columns_do_not_depend_on_the_order_keys_were_logged(tmp_path):
    forward, backward = StepLog(tmp_path / "forward.csv"), StepLog(tmp_path / "backward.csv")
    for step in range(2):
        forward.log(step, scalars(step))
        backward.log(step, dict(reversed(scalars(step).items())))
    assert (tmp_path / "forward.csv").read_bytes() == (tmp_path / "backward.csv").read_bytes()

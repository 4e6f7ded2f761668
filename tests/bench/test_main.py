"""bench/__main__.py: the TRL-PPO rows' ratios with and without TRL's reward forward, on hand-made records."""

from pathlib import Path

import pytest

from bench.__main__ import TRL_PPO_ROW, trl_ppo_missing_row, trl_ppo_rows
from bench.ppo_workload import CRITIC, GENERATION, SCORING, VALUE_FORWARD
from bench.timing import TRAINING_REST


def record(step_seconds, splits, tokens, rss=1000.0):
    """A child's StepRecord as the parent reads it back from JSON (batch of 8)."""
    return {
        "workload": {"batch_size": 8},
        "step_seconds": step_seconds,
        "splits": splits,
        "response_tokens": tokens,
        "peak_rss_mb": rss,
    }


OURS = record([4.0, 4.0], [{GENERATION: 1.0, SCORING: 0.5, CRITIC: 1.0, TRAINING_REST: 1.5}] * 2, [64, 64])
THEIRS = record([8.0, 6.0], [{GENERATION: 2.0, SCORING: 3.0, VALUE_FORWARD: 0.5, TRAINING_REST: 2.5}] * 2, [96, 96])


def test_trl_ppo_rows_give_the_ratio_with_and_without_trls_reward_forward():
    rows = {row.benchmark: row for row in trl_ppo_rows(OURS, THEIRS, critic="separate", target=">= 1.5x")}
    main = rows[TRL_PPO_ROW.format(critic="separate")]
    assert main.ratio == pytest.approx((16 / 8.0) / (16 / 14.0)) and main.target == ">= 1.5x"
    assert main.ours.startswith("2.000 (16.0 tok/s)") and main.baseline.startswith("1.143 (13.7 tok/s)")
    bare = rows["  vs TRL PPO, separate: without TRL's reward forward"]
    assert bare.ratio == pytest.approx((16 / 8.0) / (16 / 8.0))  # ours whole, 2 x 3 s out of TRL's
    # only the sums of the critic and training phases compare: 2.5 s ours, 3.0 s TRL's
    assert rows["  vs TRL PPO, separate: critic + training s/step (speed-up)"].ratio == pytest.approx(3.0 / 2.5)
    assert rows[f"  vs TRL PPO, separate: {SCORING} s/step (speed-up)"].ratio == pytest.approx(6.0)
    assert rows[f"  vs TRL PPO, separate: {VALUE_FORWARD} s/step (speed-up)"].ratio is None  # ours has no such phase
    # a critic other than params' own is measured against TRL too, with no target
    other = trl_ppo_rows(OURS, THEIRS, critic="first 8 layers", target="")[0]
    assert other.benchmark == TRL_PPO_ROW.format(critic="first 8 layers") and other.target == ""
    assert "less work than TRL's" in other.note and "TRL's only kind" in main.note


def test_a_missing_trl_ppo_venv_is_a_row_naming_the_make_target():
    row = trl_ppo_missing_row(Path(".venv-trl-ppo"), critic="separate")
    assert row.benchmark == TRL_PPO_ROW.format(critic="separate") and row.ratio is None
    assert "make bench-trl-ppo-venv" in row.note and ".venv-trl-ppo" in row.baseline


def test_sampling_rows_compare_tokens_per_second_and_give_prepares_pairs_per_second():
    from bench.__main__ import sampling_rows
    from bench.sampling import SamplingRun

    runs = {
        "ours": [SamplingRun(rows=128, seconds=16.0, generated_tokens=4000, flops=1.6e12)],
        "generate": [SamplingRun(rows=128, seconds=32.0, generated_tokens=4000, flops=1.6e12)],
    }
    rows = {row.benchmark: row for row in sampling_rows(runs, 2e11, 2e10, step_bytes={128: 1e9}, stage_rows=128)}
    speed = rows["sampling tokens/s at 128 rows, ours vs generate"]
    assert speed.ratio == pytest.approx(2.0) and speed.ours.startswith("250 (50% of peak)")
    # compute bound 2e11 * 4000 / 1.6e12 = 500 tok/s; weight reads 128 * 2e10 / 1e9 = 2560 tok/s
    bounds = rows["  128 rows: bound by compute / by weight reads (tok/s)"]
    assert (bounds.ours, bounds.baseline, bounds.ratio) == ("500", "2560", pytest.approx(0.5))
    pairs = rows["prepare's pair sampling pairs/s (64 prompts x 2)"]
    assert (pairs.ours, pairs.baseline, pairs.ratio, pairs.target) == ("4.00", "2.00", pytest.approx(2.0), ">= 3x")


def test_sampling_rows_compare_the_small_batch_kernel_with_torchs_matmul_where_it_ran():
    from bench.__main__ import sampling_rows
    from bench.sampling import TORCH_MATMUL, SamplingRun

    runs = {
        "ours": [SamplingRun(8, 4.0, 256, 1e11), SamplingRun(128, 16.0, 4000, 1.6e12)],
        "generate": [SamplingRun(8, 6.0, 256, 1e11), SamplingRun(128, 32.0, 4000, 1.6e12)],
        TORCH_MATMUL: [SamplingRun(8, 6.4, 256, 1e11)],  # not at 128 rows: the kernel does not run there
    }
    step_bytes = {8: 1e9, 128: 1e9}
    rows = {row.benchmark: row for row in sampling_rows(runs, 2e11, 2e10, step_bytes=step_bytes, stage_rows=128)}
    kernel = rows["sampling tokens/s at 8 rows, small-batch kernel vs torch's matmul"]
    assert (kernel.ours, kernel.baseline, kernel.ratio) == ("64", "40", pytest.approx(1.6))
    assert "models.small_batch_linear" in kernel.note
    assert not any("128 rows, small-batch" in name for name in rows)


def test_a_stopped_contested_run_reads_as_at_least_its_timeout():
    from bench.__main__ import shared_machine_rows

    times = {
        "libgomp default spin": {"alone": 10.0, "contested": None, "timeout_factor": 4.0},
        "stages' settings": {"alone": 11.0, "contested": 22.0, "timeout_factor": 4.0},
    }
    default, ours = shared_machine_rows(times)
    assert (default.ours, default.ratio, default.target) == ("> 40.0 s", 4.0, "")
    assert (ours.ours, ours.ratio, ours.target) == ("22.0 s", pytest.approx(2.0), "<= 2.3x")


def test_the_ppo_section_runs_the_full_critic_the_cut_one_and_the_shared_head_and_knows_params_own():
    from types import SimpleNamespace

    from bench.__main__ import critics, default_critic

    assert list(critics([None, None])) == ["separate", "shared"]
    assert list(critics([8, 8])) == ["separate", "first 8 layers", "shared"]
    variants = critics([4, 8])  # a depth asked for beside params' own: both run
    assert list(variants) == ["separate", "first 8 layers", "first 4 layers", "shared"]
    assert variants["first 8 layers"] == ("--value-model", "separate", "--critic-layers", "8")
    assert default_critic(SimpleNamespace(value_model="separate", critic_layers=None)) == "separate"
    assert default_critic(SimpleNamespace(value_model="separate", critic_layers=8)) == "first 8 layers"
    assert default_critic(SimpleNamespace(value_model="shared", critic_layers=None)) == "shared"

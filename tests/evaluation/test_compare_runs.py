"""Two runs of the study compared sample by sample (robust_rlhf/evaluation/compare_runs.py): a null with
identical runs, a planted difference, and pairs that cannot be formed."""

import pytest

from robust_rlhf.evaluation.compare_runs import compare_runs, markdown, runs_by_step

SETTINGS = dict(num_resamples=200, seed=0, level=0.95)


def samples(gold_of, methods=("single", "brme"), prompts=4, spp=2, steps=(1, 2)):
    """evaluate's rows: the initial policy, then each method's checkpoints; the last step on every prompt, the
    earlier ones on the first two (the curves'). `gold_of(method, step, prompt, sample)` gives each gold."""
    rows = [
        {"method": "initial", "seed": 0, "step": 0, "prompt": f"p{p}", "gold": 0.1 * p + 0.01 * s}
        for p in range(prompts)
        for s in range(spp)
    ]
    for method in methods:
        for step in steps:
            on = prompts if step == steps[-1] else 2
            rows += [
                {"method": method, "seed": 0, "step": step, "prompt": f"p{p}", "gold": gold_of(method, step, p, s)}
                for p in range(on)
                for s in range(spp)
            ]
    return rows


def base(method, step, prompt, sample):
    return 0.2 * prompt - 0.05 * sample + (0.3 if method == "brme" else 0.0) + 0.1 * step


def test_identical_runs_differ_by_exactly_nothing():
    result = compare_runs(samples(base), samples(base), **SETTINGS)
    assert result["initial_max_abs_difference"] == 0.0 and result["runs_only_in_one"] == []
    for row in [*result["final"].values(), result["pooled"]]:
        assert (row["value"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
    assert result["curves"]["brme-seed0"]["1"]["value"] == 0.0


def test_a_planted_difference_is_found_per_run_and_pooled():
    # +0.5 for single on every sample, +0.1 for brme on prompt p1 only (1/4 of the prompts: +0.025 on average)
    def shifted(method, step, prompt, sample):
        bump = 0.5 if method == "single" else (0.1 if prompt == 1 else 0.0)
        return base(method, step, prompt, sample) + bump

    result = compare_runs(samples(base), samples(shifted), **SETTINGS)
    single, brme = result["final"]["single-seed0"], result["final"]["brme-seed0"]
    assert single["value"] == pytest.approx(0.5) and single["ci_low"] == pytest.approx(0.5)
    assert brme["value"] == pytest.approx(0.025) and brme["ci_low"] == 0.0 < brme["ci_high"]
    assert (single["step"], single["control"]) == (2, pytest.approx(0.2 * 1.5 - 0.025 + 0.2))
    assert result["pooled"]["value"] == pytest.approx((0.5 + 0.025) / 2) and result["pooled"]["runs"] == 2
    # the pooled interval is the bootstrap's, widened to t_1's small-sample width around the estimate
    boot_low, boot_high = result["pooled"]["bootstrap_ci"]
    assert result["pooled"]["ci_low"] < boot_low <= boot_high < result["pooled"]["ci_high"]
    assert result["curves"]["single-seed0"]["1"]["value"] == pytest.approx(0.5)
    table = markdown(result, 0.95)
    assert "| single-seed0 | 2 |" in table and "| pooled (2 runs, expanded interval) | final |" in table
    assert "+0.500" in table


def test_runs_that_move_apart_widen_the_pooled_interval_over_the_runs():
    # +0.3 for one run and -0.3 for the other: a pooled mean of 0 whose interval must hold the runs' spread
    def apart(method, step, prompt, sample):
        return base(method, step, prompt, sample) + (0.3 if method == "single" else -0.3)

    pooled = compare_runs(samples(base), samples(apart), **SETTINGS)["pooled"]
    assert pooled["value"] == pytest.approx(0.0, abs=1e-12)
    assert pooled["ci_low"] < -0.3 and pooled["ci_high"] > 0.3


def test_runs_of_other_lengths_are_refused_rather_than_compared_at_a_curve_step():
    with pytest.raises(ValueError, match="single-seed0: the runs end at other steps \\(2 and 3\\)"):
        compare_runs(samples(base), samples(base, steps=(1, 2, 3)), **SETTINGS)


def test_runs_in_one_file_only_are_named_and_left_out():
    result = compare_runs(samples(base), samples(base, methods=("single",)), **SETTINGS)
    assert list(result["final"]) == ["single-seed0"] and result["runs_only_in_one"] == ["brme-seed0"]


def test_samples_of_other_prompts_cannot_be_paired():
    other = samples(base)
    other[-1] = {**other[-1], "prompt": "elsewhere"}
    with pytest.raises(ValueError, match="brme-seed0 step 2: the two runs sampled other prompts"):
        compare_runs(samples(base), other, **SETTINGS)


def test_a_row_without_a_field_names_the_file_and_row():
    rows = samples(base)
    del rows[2]["gold"]
    with pytest.raises(ValueError, match="b.jsonl: row 3: no field 'gold'"):
        runs_by_step(rows, "b.jsonl")


def test_a_file_without_the_initial_policy_is_refused():
    rows = [row for row in samples(base) if row["method"] != "initial"]
    with pytest.raises(ValueError, match="b: no sample of the initial policy"):
        compare_runs(samples(base), rows, **SETTINGS)

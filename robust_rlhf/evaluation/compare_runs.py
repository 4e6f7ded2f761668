"""Two runs of the study compared policy by policy: the gold of each PPO run's checkpoints in one run's
`reports/eval_samples.jsonl` against the same run's in another (e.g. `dvc exp run -S ppo.critic_layers=8`
against the default). evaluate samples every policy with params `seed` on the same held-out prompts, so two
runs of the same data and params but one are paired sample by sample (common random numbers), as
`compare_methods` pairs methods within a run.

    python -m robust_rlhf.evaluation.compare_runs --params params.yaml CONTROL.jsonl TREATMENT.jsonl [--out F]

What the interval covers: prompts resampled as clusters, and, for the pooled row, the PPO runs (methods and
seeds) as replicates, its interval widened to the t interval's small-sample width over the runs
(`expanded_interval`: a bootstrap over five runs is otherwise too narrow). A single run's row holds its PPO
trajectory fixed, so a difference there mixes the change with that run's own draw: read the per-run rows
with the pooled one.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from robust_rlhf.config import policy_run_name
from robust_rlhf.runtime.atomic import atomic_write_json, read_jsonl
from robust_rlhf.statistics import expanded_interval, holm_adjust, paired_difference

INITIAL = "initial"


def runs_by_step(rows: list[dict], source: str) -> dict[str, dict[int, list[dict]]]:
    """evaluate's sample rows grouped as {run: {step: rows in file order}}; the run is `<method>-seed<seed>`,
    the initial policy's rows are `initial` at step 0. `source` names the file in errors."""
    runs: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ("method", "seed", "step", "prompt", "gold") if key not in row]
        if missing:
            raise ValueError(f"{source}: row {number}: no field {missing[0]!r} (not evaluate's eval_samples.jsonl?)")
        name = INITIAL if row["method"] == INITIAL else policy_run_name(row["method"], row["seed"])
        runs[name][int(row["step"])].append(row)
    return runs


def paired_gold(control: list[dict], treatment: list[dict], *, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gold of two policies' samples as (P, S) tensors, prompts in order and S samples each, after checking
    that both sampled the same prompts in the same order (else the pairing would be a lie). `where` names the
    policy in errors."""
    if [row["prompt"] for row in control] != [row["prompt"] for row in treatment]:
        raise ValueError(f"{where}: the two runs sampled other prompts or another order; they cannot be paired")
    prompts = list(dict.fromkeys(row["prompt"] for row in control))
    samples = len(control) // len(prompts)
    # evaluate writes a prompt's S samples together: anything else would pair samples of other prompts.
    if [row["prompt"] for row in control] != [prompt for prompt in prompts for _ in range(samples)]:
        raise ValueError(f"{where}: the samples are not S consecutive rows per prompt")
    shape = (len(prompts), samples)
    return (
        torch.tensor([row["gold"] for row in control], dtype=torch.float64).view(shape),
        torch.tensor([row["gold"] for row in treatment], dtype=torch.float64).view(shape),
    )


def compare_runs(
    control: list[dict], treatment: list[dict], *, num_resamples: int, seed: int, level: float, sources=("a", "b")
) -> dict:
    """Treatment minus control gold for every PPO run both hold: at its final checkpoint on every held-out
    prompt (Holm over the runs), at each earlier checkpoint on the curves' prompts, and pooled over the runs'
    final checkpoints (runs resampled as replicates). Also whether the initial policy's samples agree, which
    the pairing presumes."""
    settings = dict(num_resamples=num_resamples, seed=seed, level=level)
    control_runs, treatment_runs = runs_by_step(control, sources[0]), runs_by_step(treatment, sources[1])
    for source, runs in zip(sources, (control_runs, treatment_runs)):
        if INITIAL not in runs:
            raise ValueError(f"{source}: no sample of the initial policy (not evaluate's eval_samples.jsonl?)")
    initial_control, initial_treatment = paired_gold(
        control_runs[INITIAL][0], treatment_runs[INITIAL][0], where="the initial policy"
    )
    common = [name for name in control_runs if name != INITIAL and name in treatment_runs]
    finals, curves, stacked = {}, {}, ([], [])
    for name in common:
        last = max(control_runs[name])
        if max(treatment_runs[name]) != last:  # an earlier step holds only the curves' prompts: no final to pair
            raise ValueError(
                f"{name}: the runs end at other steps ({last} and {max(treatment_runs[name])}); compare runs of "
                "the same length"
            )
        steps = sorted(set(control_runs[name]) & set(treatment_runs[name]))
        a, b = paired_gold(control_runs[name][last], treatment_runs[name][last], where=f"{name} step {last}")
        finals[name] = {"step": last, **paired_difference(b[None], a[None], **settings).as_dict()}
        finals[name] |= {"control": float(a.mean()), "treatment": float(b.mean())}
        stacked[0].append(a), stacked[1].append(b)
        curves[name] = {}
        for step in steps[:-1]:  # earlier checkpoints: the curves' prompts only
            a, b = paired_gold(control_runs[name][step], treatment_runs[name][step], where=f"{name} step {step}")
            curves[name][str(step)] = paired_difference(b[None], a[None], **settings).as_dict()
    for row, p_holm in zip(finals.values(), holm_adjust([row["p_value"] for row in finals.values()])):
        row["p_holm"] = p_holm
    pooled = None
    if len(stacked[0]) >= 2:  # every final is on every held-out prompt: the shapes agree
        control_gold, treatment_gold = torch.stack(stacked[0]), torch.stack(stacked[1])
        bootstrap = paired_difference(treatment_gold, control_gold, **settings)
        low, high = expanded_interval(
            bootstrap.estimate, bootstrap.low, bootstrap.high, replicates=len(stacked[0]), level=level
        )
        pooled = {
            "value": bootstrap.estimate,
            "ci_low": low,
            "ci_high": high,
            "bootstrap_ci": [bootstrap.low, bootstrap.high],
            "runs": len(stacked[0]),
        }
    return {
        "initial_max_abs_difference": float((initial_treatment - initial_control).abs().max()),
        "runs_only_in_one": sorted(set(control_runs) ^ set(treatment_runs)),
        "final": finals,
        "pooled": pooled,
        "curves": curves,
    }


def markdown(comparison: dict, level: float) -> str:
    """The comparison as a Markdown table: a row per run and the pooled row."""
    lines = [
        f"| run | step | control gold | treatment gold | difference [{level:.0%} CI] | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in comparison["final"].items():
        lines.append(
            f"| {name} | {row['step']} | {row['control']:.3f} | {row['treatment']:.3f} | "
            f"{row['value']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] | {row['p_holm']:.2f} |"
        )
    pooled = comparison["pooled"]
    if pooled is not None:
        lines.append(
            f"| pooled ({pooled['runs']} runs, expanded interval) | final | | | "
            f"{pooled['value']:+.3f} [{pooled['ci_low']:+.3f}, {pooled['ci_high']:+.3f}] | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from robust_rlhf.config import load_params

    parser = argparse.ArgumentParser(prog="python -m robust_rlhf.evaluation.compare_runs", description=__doc__)
    parser.add_argument("control", type=Path, help="eval_samples.jsonl of the run compared against")
    parser.add_argument("treatment", type=Path, help="eval_samples.jsonl of the changed run")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `statistics:` set the interval")
    parser.add_argument("--out", type=Path, default=None, help="also write the whole comparison as JSON")
    args = parser.parse_args(argv)
    statistics, seed = (params := load_params(args.params)).statistics, params.seed
    comparison = compare_runs(
        read_jsonl(args.control),
        read_jsonl(args.treatment),
        num_resamples=statistics.bootstrap_resamples,
        seed=seed,
        level=statistics.confidence_level,
        sources=(str(args.control), str(args.treatment)),
    )
    if args.out is not None:
        atomic_write_json(args.out, comparison)
    if comparison["initial_max_abs_difference"] > 0:
        print(f"note: the initial policy's gold differs by up to {comparison['initial_max_abs_difference']:.2g}")
    print(markdown(comparison, statistics.confidence_level))


if __name__ == "__main__":
    main()

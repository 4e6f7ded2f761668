"""`python -m bench`: every benchmark of issue 7 in one run, then one table of ratios.

    python -m bench [--sections ppo,brme,pipeline] [--ppo-steps 2 --ppo-batch 8 --max-new-tokens 32 ...]

PPO (ours and TRL's) runs in child processes, one after the other, each with its own peak RSS; TRL's
PPO trainer runs in its own virtualenv (`make bench-trl-ppo-venv`), since its TRL needs an older transformers;
pipeline overhead and per-stage memory run on the tiny profile in a temp copy of the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.measure import run_measured
from bench.ppo_workload import (
    CRITIC,
    SCORING,
    VALUE_FORWARD,
    PPOWorkload,
    add_workload_args,
    workload_argv,
    workload_from_args,
)
from bench.table import Row, render
from bench.timing import TRAINING_REST, mean_split, samples_per_second

SECTIONS = ("ppo", "brme", "pipeline")
PPO_NOTE = (
    "same policy (SmolLM2-135M), prompts, batch, generation length, epochs and reward models; "
    "ours is PPO, so it also has a critic, which TRL's GRPO (beta = our kl_coef, so with its reference "
    "forward) lacks: `separate` (the default) trains a second 135M model, `shared` a value head on the "
    "actor's backbone (ppo.value_model); the old log-probs come from generate's logits in both"
)
VALUE_MODELS = ("separate", "shared")
TRL_PPO_ROW = "PPO step samples/s, ours (separate critic) vs TRL PPO"
TRL_PPO_NOTE = (
    "TRL 1.12's trl.experimental.ppo.PPOTrainer (the last TRL with PPO) on the same policy, prompts, batch, "
    "micro-batch x accumulation, generation length (stopping at EOS), epochs, kl_coef (k1), clip ranges, gamma, "
    "lambda and learning rate; its critic is a separate 135M model, as ours; its reward model must be a "
    "sequence classifier on the policy's tokenizer: the 135M policy with a random one-output head"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".bench"),
        help="where the bench's models are built (kept between runs: the GGUF is de-quantised once)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the measured children (1: on a busy 2-core machine torch's default "
        "2 threads were 10x slower, waiting on each other)",
    )
    parser.add_argument(
        "--torch-profile",
        action="store_true",
        help="profile the measured PPO steps (slows them): top ops to <work>/ppo_*_top_ops.txt",
    )
    parser.add_argument(
        "--trl-ppo-venv",
        type=Path,
        default=Path(".venv-trl-ppo"),
        help="virtualenv of TRL's PPO trainer (make bench-trl-ppo-venv); without it its rows say so",
    )
    parser.add_argument("--brme-batch", type=int, default=32, help="(prompt, response) pairs per scored batch")
    parser.add_argument("--brme-heads", default="1,3,5,10")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of each BRME scoring and log-prob forward (median)"
    )
    parser.add_argument(
        "--pipeline-profile",
        choices=("tiny", "default"),
        default="tiny",
        help="tiny: tiny random models (~3 min); default: the default models with every size cut "
        "(several minutes more), for each stage's peak RSS on the default models",
    )
    parser.add_argument(
        "--pipeline-methods",
        default="single,brme",
        help="methods kept in the tiny profile for the pipeline benchmark (one ppo stage each)",
    )
    add_workload_args(parser)
    parser.set_defaults(ppo_steps=2)
    return parser.parse_args(argv)


def child_env(threads: int) -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"),
        TOKENIZERS_PARALLELISM="false",
    )


def run_ppo_child(
    module: str,
    work: Path,
    workload: PPOWorkload,
    env: dict[str, str],
    *,
    profile: bool,
    extra: tuple[str, ...] = (),
    name: str | None = None,
    python: str = sys.executable,
) -> dict:
    """Run one implementation's PPO steps in a child (with interpreter `python`); its record plus the
    child's peak RSS."""
    name = name or module
    out, log = work / f"{name}.json", work / f"{name}.log"
    out.unlink(missing_ok=True)
    command = [
        python,
        "-m",
        f"bench.{module}",
        "--work",
        str(work),
        "--out",
        str(out),
        *(["--torch-profile", str(work / f"{name}_top_ops.txt")] if profile else []),
        *workload_argv(workload),
        *extra,
    ]
    measured = run_measured(command, cwd=Path.cwd(), env=env, log=log)
    if measured.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({measured.returncode}), see {log}:\n{measured.output_tail}")
    return json.loads(out.read_text()) | {"peak_rss_mb": measured.peak_rss_mb}


def record_rate(record: dict, without: tuple[str, ...] = ()) -> float:
    """A child's samples/s over its measured steps, without the phases named in `without`."""
    return samples_per_second(record["workload"]["batch_size"], record["step_seconds"], record["splits"], without)


def throughput(record: dict) -> tuple[float, float]:
    """(samples/s, response tokens/s) over the measured steps."""
    return record_rate(record), sum(record["response_tokens"]) / sum(record["step_seconds"])


def phase_rows(label: str, ours: dict, theirs: dict) -> list[Row]:
    """Each phase's seconds per step and share of the step on both sides, then both peak RSS."""
    our_split, our_step = mean_split(ours["splits"]), statistics.fmean(ours["step_seconds"])
    their_split, their_step = mean_split(theirs["splits"]), statistics.fmean(theirs["step_seconds"])
    rows = []
    for phase in dict.fromkeys([*our_split, *their_split]):
        mine, other = our_split.get(phase, 0.0), their_split.get(phase, 0.0)
        rows.append(
            Row(
                f"  {label}: {phase} s/step (speed-up)",
                f"{mine:.2f} s ({mine / our_step:.0%})",
                f"{other:.2f} s ({other / their_step:.0%})",
                other / mine if mine else None,
            )
        )
    rows.append(
        Row(
            f"  {label}: peak RSS of the PPO process, MB (TRL's / ours)",
            f"{ours['peak_rss_mb']:.0f}",
            f"{theirs['peak_rss_mb']:.0f}",
            theirs["peak_rss_mb"] / ours["peak_rss_mb"],
        )
    )
    return rows


def ppo_rows(ours_by_value_model: dict[str, dict], theirs: dict) -> list[Row]:
    """Throughput of each of our critics against TRL's, then each one's split per phase (seconds per
    step, share of the step) and peak RSS."""
    their_rate, their_tokens = throughput(theirs)
    rows = []
    for value_model, ours in ours_by_value_model.items():
        our_rate, our_tokens = throughput(ours)
        rows.append(
            Row(
                f"PPO step samples/s, ours ({value_model} critic) vs TRL GRPO",
                f"{our_rate:.3f} ({our_tokens:.1f} tok/s)",
                f"{their_rate:.3f} ({their_tokens:.1f} tok/s)",
                our_rate / their_rate,
                ">= 2x",
                PPO_NOTE if not rows else "",
            )
        )
    for value_model, ours in ours_by_value_model.items():
        if any(CRITIC in split for split in ours["splits"]):
            without_critic = record_rate(ours, (CRITIC,))
            rows.append(
                Row(
                    f"  {value_model}: samples/s without the critic's time",
                    f"{without_critic:.3f}",
                    f"{their_rate:.3f}",
                    without_critic / their_rate,
                    "",
                    "ours minus the measured critic phase (its rollout forward, update forward, backward, "
                    "step): the work GRPO does not do",
                )
            )
        rows += phase_rows(value_model, ours, theirs)
    return rows


def trl_ppo_rows(ours: dict, theirs: dict) -> list[Row]:
    """Our step with a separate critic against TRL's PPO trainer: throughput with and without each
    side's reward forward (the reward models differ), the critic and training phases together (TRL
    trains policy and critic in one forward and backward), then each phase and peak RSS."""
    (our_rate, our_tokens), (their_rate, their_tokens) = throughput(ours), throughput(theirs)
    our_bare, their_bare = record_rate(ours, (SCORING,)), record_rate(theirs, (SCORING,))
    our_split, their_split = mean_split(ours["splits"]), mean_split(theirs["splits"])
    our_training = our_split.get(CRITIC, 0.0) + our_split.get(TRAINING_REST, 0.0)
    their_training = their_split.get(VALUE_FORWARD, 0.0) + their_split.get(TRAINING_REST, 0.0)
    return [
        Row(
            TRL_PPO_ROW,
            f"{our_rate:.3f} ({our_tokens:.1f} tok/s)",
            f"{their_rate:.3f} ({their_tokens:.1f} tok/s)",
            our_rate / their_rate,
            ">= 1.5x",
            TRL_PPO_NOTE,
        ),
        Row(
            "  vs TRL PPO: samples/s without the reward forward",
            f"{our_bare:.3f}",
            f"{their_bare:.3f}",
            our_bare / their_bare,
            "",
            f"each side's step minus its {SCORING} phase: ours scores with the MiniLM BRME and ensemble, "
            "TRL's with its 135M sequence classifier",
        ),
        Row(
            "  vs TRL PPO: critic + training s/step (speed-up)",
            f"{our_training:.2f} s",
            f"{their_training:.2f} s",
            their_training / our_training if our_training else None,
            "",
            f"ours: {CRITIC} + {TRAINING_REST}; TRL's: {VALUE_FORWARD} + {TRAINING_REST} (policy and critic "
            "updated in one forward and backward), so only the sums compare",
        ),
        *phase_rows("vs TRL PPO", ours, theirs),
    ]


def trl_ppo_env(env: dict[str, str]) -> dict[str, str]:
    """The TRL-PPO child's environment: no PYTHONPATH, which could put another TRL or transformers before
    its venv's (the child runs from the repo root, so bench/ and robust_rlhf/ import without it)."""
    return {key: value for key, value in env.items() if key != "PYTHONPATH"} | {"TRL_EXPERIMENTAL_SILENCE": "1"}


def trl_ppo_missing_row(venv: Path) -> Row:
    """The row that stands in for TRL's PPO when its virtualenv is not built."""
    return Row(TRL_PPO_ROW, "not run", f"no {venv}", note="TRL's PPO runs in its own venv: make bench-trl-ppo-venv")


def optimizer_rows(times: dict[str, float]) -> list[Row]:
    """The optimizer change's before/after."""
    return [
        Row(
            "  AdamW step, default policy (speed-up)",
            f"{times['after']:.3f} s",
            f"{times['before']:.3f} s",
            times["before"] / times["after"],
            note="torch's fused AdamW (now) against the per-tensor loop DeepSpeed's torch_adam ran before, "
            "same parameters and gradients, same process",
        )
    ]


def response_logits_rows(times: dict[str, dict[str, float]]) -> list[Row]:
    """The library change's before/after: LM head on the response columns only."""
    note = (
        "forward_response before/after logits_to_keep (LM head on the response columns only), default policy, "
        "same batch and process; before = every column's logits, then sliced"
    )
    return [
        Row(
            "  log-prob forward, inference (speed-up)",
            f"{times['after']['inference']:.2f} s",
            f"{times['before']['inference']:.2f} s",
            times["before"]["inference"] / times["after"]["inference"],
            note=note,
        ),
        Row(
            "  log-prob forward + backward (speed-up)",
            f"{times['after']['train']:.2f} s",
            f"{times['before']['train']:.2f} s",
            times["before"]["train"] / times["after"]["train"],
        ),
    ]


def brme_rows(times: dict[str, dict[int, float]]) -> list[Row]:
    from bench.brme_scoring import scoring_ratios

    rows = []
    for k, (over_one_head, models_over_heads) in scoring_ratios(times).items():
        rows.append(
            Row(
                f"BRME k={k} heads / 1 head (time)",
                f"{times['heads'][k]:.3f} s",
                f"{times['heads'][1]:.3f} s",
                over_one_head,
                "<= 1.1x" if k == 5 else "",
            )
        )
        rows.append(
            Row(
                f"BRME {k} models / k={k} heads (speed-up)",
                f"{times['heads'][k]:.3f} s",
                f"{times['models'][k]:.3f} s",
                models_over_heads,
                ">= 4x" if k == 5 else "",
            )
        )
    return rows


def pipeline_rows(stages: dict, cached_repro: float, flow_run: float, flow_cli: float, profile: str) -> list[Row]:
    rows = [
        Row(f"dvc repro, all cached ({profile} profile)", f"{cached_repro:.2f} s", "3 s", cached_repro / 3.0, "<= 1x"),
        Row("Prefect flow, all cached, server up", f"{flow_run:.2f} s", "10 s", flow_run / 10.0, "<= 1x"),
        Row(
            "python -m flows.pipeline, all cached",
            f"{flow_cli:.2f} s",
            "",
            None,
            "",
            "the whole command: also starts Prefect's ephemeral server and imports the flow",
        ),
    ]
    rows += [
        Row(f"stage {stage}: peak RSS ({profile} profile)", f"{m.peak_rss_mb:.0f} MB", f"{m.wall_seconds:.1f} s wall")
        for stage, m in stages.items()
    ]
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; known {SECTIONS}")
    env = child_env(args.threads)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    if "ppo" in sections or "brme" in sections:
        from bench.workload import build_policy, build_reward_models, default_params

        params = default_params(Path.cwd())
        build_policy(params, work)
        build_reward_models(params, work)
    if "ppo" in sections:
        workload = workload_from_args(args)
        ours = {}
        for value_model in VALUE_MODELS:
            ours[value_model] = run_ppo_child(
                "ppo_ours",
                work,
                workload,
                env,
                profile=args.torch_profile,
                extra=("--value-model", value_model),
                name=f"ppo_ours_{value_model}",
            )
            print(f"ours ({value_model} critic): {ours[value_model]['step_seconds']}", flush=True)
        theirs = run_ppo_child("ppo_trl", work, workload, env, profile=args.torch_profile)
        print(f"trl: {theirs['step_seconds']}", flush=True)
        rows += ppo_rows(ours, theirs)
        trl_ppo_python = args.trl_ppo_venv.resolve() / "bin" / "python"
        if trl_ppo_python.exists():
            trl_ppo = run_ppo_child(
                "ppo_trl_ppo",
                work,
                workload,
                trl_ppo_env(env),
                profile=args.torch_profile,
                python=str(trl_ppo_python),
            )
            print(f"trl ppo: {trl_ppo['step_seconds']}", flush=True)
            rows += trl_ppo_rows(ours["separate"], trl_ppo)
        else:
            print(f"no {trl_ppo_python}: TRL's PPO not run (make bench-trl-ppo-venv)", flush=True)
            rows.append(trl_ppo_missing_row(args.trl_ppo_venv))
        import torch

        from bench.optimizer_step import optimizer_step_times
        from bench.response_logits import response_forward_times

        torch.set_num_threads(args.threads)
        optimizer_times = optimizer_step_times(work, repeats=args.repeats)
        print(f"optimizer step: {optimizer_times}", flush=True)
        rows += optimizer_rows(optimizer_times)
        logits_times = response_forward_times(
            work,
            batch_size=workload.batch_size,
            response_len=workload.max_new_tokens,
            max_prompt_tokens=params.prepare.max_prompt_tokens,
            repeats=args.repeats,
        )
        print(f"response logits: {logits_times}", flush=True)
        rows += response_logits_rows(logits_times)
    if "brme" in sections:
        import torch

        from bench.brme_scoring import scoring_times

        torch.set_num_threads(args.threads)
        times = scoring_times(
            params.models.reward_backbone,
            [int(k) for k in args.brme_heads.split(",")],
            batch_size=args.brme_batch,
            max_length=params.train_reward.max_length,
            repeats=args.repeats,
        )
        print(f"brme: {times}", flush=True)
        rows += brme_rows(times)
    if "pipeline" in sections:
        from bench.pipeline_overhead import bench_env, bench_repo, cached_repro_seconds, flow_seconds, run_stages

        with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
            repo = bench_repo(Path(tmp) / "repo", args.pipeline_profile, args.pipeline_methods.split(","))
            pipeline_env = bench_env(Path(tmp) / "prefect_home") | {key: env[key] for key in ("OMP_NUM_THREADS",)}
            logs = work / "pipeline_logs"
            logs.mkdir(exist_ok=True)
            stages = run_stages(repo, pipeline_env, logs)
            cached = cached_repro_seconds(repo, pipeline_env)
            flow_run, flow_cli = flow_seconds(repo, pipeline_env, logs)
        rows += pipeline_rows(stages, cached, flow_run, flow_cli, args.pipeline_profile)
    print()
    print(render(rows))


if __name__ == "__main__":
    main()

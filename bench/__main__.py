"""`python -m bench`: every benchmark of issue 7 in one run, then one table of ratios.

    python -m bench [--sections ppo,brme,pipeline] [--ppo-steps 2 --ppo-batch 8 --max-new-tokens 32 ...]

PPO (ours and TRL's) runs in child processes, one after the other, each with its own peak RSS;
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
from bench.ppo_workload import CRITIC, PPOWorkload, add_workload_args, workload_argv, workload_from_args
from bench.table import Row, render
from bench.timing import mean_split

SECTIONS = ("ppo", "brme", "pipeline")
PPO_NOTE = (
    "same policy (SmolLM2-135M), prompts, batch, generation length, epochs and reward models; "
    "ours is PPO, so it also has a critic, which TRL's GRPO (beta = our kl_coef, so with its reference "
    "forward) lacks: `separate` (the default) trains a second 135M model, `shared` a value head on the "
    "actor's backbone (ppo.value_model); the old log-probs come from generate's logits in both"
)
VALUE_MODELS = ("separate", "shared")


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
) -> dict:
    """Run one implementation's PPO steps in a child; its record plus the child's peak RSS."""
    name = name or module
    out, log = work / f"{name}.json", work / f"{name}.log"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
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


def throughput(record: dict) -> tuple[float, float]:
    """(samples/s, response tokens/s) over the measured steps."""
    seconds = sum(record["step_seconds"])
    samples = record["workload"]["batch_size"] * len(record["step_seconds"])
    return samples / seconds, sum(record["response_tokens"]) / seconds


def ppo_rows(ours_by_value_model: dict[str, dict], theirs: dict) -> list[Row]:
    """Throughput of each of our critics against TRL's, then each one's split per phase (seconds per
    step, share of the step) and peak RSS."""
    their_rate, their_tokens = throughput(theirs)
    their_split, their_step = mean_split(theirs["splits"]), statistics.fmean(theirs["step_seconds"])
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
        our_split, our_step = mean_split(ours["splits"]), statistics.fmean(ours["step_seconds"])
        if CRITIC in our_split:
            batch = ours["workload"]["batch_size"]
            without_critic = batch / (our_step - our_split[CRITIC])
            rows.append(
                Row(
                    f"  {value_model}: samples/s without the critic's time",
                    f"{without_critic:.3f}",
                    f"{batch / their_step:.3f}",
                    without_critic / (batch / their_step),
                    "",
                    "ours minus the measured critic phase (its rollout forward, update forward, backward, "
                    "step): the work GRPO does not do",
                )
            )
        for phase in dict.fromkeys([*our_split, *their_split]):
            mine, other = our_split.get(phase, 0.0), their_split.get(phase, 0.0)
            rows.append(
                Row(
                    f"  {value_model}: {phase} s/step (speed-up)",
                    f"{mine:.2f} s ({mine / our_step:.0%})",
                    f"{other:.2f} s ({other / their_step:.0%})",
                    other / mine if mine else None,
                )
            )
        rows.append(
            Row(
                f"  {value_model}: peak RSS of the PPO process, MB (TRL's / ours)",
                f"{ours['peak_rss_mb']:.0f}",
                f"{theirs['peak_rss_mb']:.0f}",
                theirs["peak_rss_mb"] / ours["peak_rss_mb"],
            )
        )
    return rows


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

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
from robust_rlhf.runtime.threads import configure_threads, physical_cores, thread_environment

configure_threads()  # before torch loads in this process (BRME and sampling run here)

SECTIONS = ("ppo", "sampling", "brme", "pipeline", "shared")
PPO_NOTE = (
    "same policy (SmolLM2-135M), prompts, batch, generation length, epochs and reward models; "
    "ours is PPO, so it also has a critic, which TRL's GRPO (beta = our kl_coef, so with its reference "
    "forward) lacks: `separate` trains a second 135M model, `first N layers` the policy's first N layers "
    "(ppo.critic_layers; params' own depth is the default critic), `shared` a value head on the actor's backbone "
    "(ppo.value_model); the old log-probs come from the sampler's own logits in all"
)
TRL_PPO_ROW = "PPO step samples/s, ours ({critic} critic) vs TRL PPO"
TRL_PPO_NOTE = (
    "TRL 1.12's trl.experimental.ppo.PPOTrainer (the last TRL with PPO) on the same policy, prompts, batch, "
    "micro-batch x accumulation, generation length (stopping at EOS), epochs, kl_coef (k1), clip ranges, gamma, "
    "lambda and learning rate; its critic is a separate 135M model (TRL's only kind), as our `separate`; its "
    "reward model must be a sequence classifier on the policy's tokenizer: the 135M policy with a random "
    "one-output head. The target is read against params' own critic"
)
CUT_CRITIC_NOTE = (
    "our critic here is the policy's first N layers and a value head (ppo.critic_layers), less work than TRL's "
    "135M critic: the like-for-like row is `separate`; what a cut critic does to gold is in docs/study.md"
)

FLOPS_NOTE = (
    "matmul FLOPs of the phase from the model's shape (bench/flops.py: 2N forward, 6N forward + backward, padded "
    "positions, the LM head on the kept columns) over its mean seconds, params' critic; the optimizer step and "
    "elementwise work count no FLOPs"
)
SAMPLING_NOTE = (
    "default policy, fp32, rows = queries x 2 samples, 32 new tokens, ancestral at T = 1 with the log-probs kept; "
    "generate = transformers' generate as `sample` ran it before (dynamic cache, multinomial, log-probs from the "
    "stored logits); % of the fp32 matmul peak measured above"
)
SHARED_NOTE = (
    "`python -m stages.prepare` on the default models (the policy de-quantised beforehand) with the pipeline "
    "bench's cut sizes, from scratch; the "
    "competitor is `while True: pass`; a fair share of the 2 cores is 2x; > : stopped at 2.5x its alone time"
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
        default=physical_cores(os.sched_getaffinity(0)),
        help="intra-op threads of the measurements (default: the cores this process may use, as the stages; "
        "they spin briefly, robust_rlhf/runtime/threads.py)",
    )
    parser.add_argument(
        "--torch-profile",
        action="store_true",
        help="profile the measured PPO steps (slows them) and one sampling call per implementation after the "
        "timed ones: top ops to <work>/ppo_*_top_ops.txt, <work>/sampling_*_top_ops.txt",
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
    parser.add_argument(
        "--critic-layers",
        type=int,
        default=None,
        help="depth of a cut critic measured beside the full one, params.yaml's own (ppo.critic_layers) and the "
        "shared head (the policy's first N layers)",
    )
    add_workload_args(parser)
    parser.set_defaults(ppo_steps=2)
    return parser.parse_args(argv)


def child_env(threads: int) -> dict[str, str]:
    return dict(
        os.environ | thread_environment(os.environ, threads),
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


def critics(cut_layers: list[int | None]) -> dict[str, tuple[str, ...]]:
    """The critics the PPO section runs, by label: their `bench.ppo_ours` flags. `separate` is a full copy of
    the policy's backbone, `first N layers` the same cut to its first N layers (ppo.critic_layers), one per
    depth in `cut_layers` (None: none)."""
    variants = {"separate": ("--value-model", "separate")}
    for layers in sorted({layers for layers in cut_layers if layers is not None}, reverse=True):
        variants[f"first {layers} layers"] = ("--value-model", "separate", "--critic-layers", str(layers))
    return variants | {"shared": ("--value-model", "shared")}


def default_critic(ppo) -> str:
    """The label (`critics`) of params' own critic: what the TRL-PPO target is read against."""
    if ppo.value_model == "shared":
        return "shared"
    return "separate" if ppo.critic_layers is None else f"first {ppo.critic_layers} layers"


def trl_ppo_rows(ours: dict, theirs: dict, *, critic: str, target: str) -> list[Row]:
    """Our step with a separate `critic` against TRL's PPO trainer: throughput with and without TRL's
    reward forward (its reward model must share the policy's tokenizer), the critic and training phases together (TRL
    trains policy and critic in one forward and backward), then each phase and peak RSS. `target` is empty
    for a critic that is not params' default."""
    (our_rate, our_tokens), (their_rate, their_tokens) = throughput(ours), throughput(theirs)
    their_bare = record_rate(theirs, (SCORING,))
    our_split, their_split = mean_split(ours["splits"]), mean_split(theirs["splits"])
    our_training = our_split.get(CRITIC, 0.0) + our_split.get(TRAINING_REST, 0.0)
    their_training = their_split.get(VALUE_FORWARD, 0.0) + their_split.get(TRAINING_REST, 0.0)
    label = f"vs TRL PPO, {critic}"
    return [
        Row(
            TRL_PPO_ROW.format(critic=critic),
            f"{our_rate:.3f} ({our_tokens:.1f} tok/s)",
            f"{their_rate:.3f} ({their_tokens:.1f} tok/s)",
            our_rate / their_rate,
            target,
            TRL_PPO_NOTE if critic == "separate" else CUT_CRITIC_NOTE,
        ),
        Row(
            f"  {label}: without TRL's reward forward",
            f"{our_rate:.3f}",
            f"{their_bare:.3f}",
            our_rate / their_bare,
            "",
            f"our whole step against TRL's minus its {SCORING} phase: TRL needs a sequence classifier on the "
            "policy's tokenizer (a 135M model), where ours scores with the MiniLM BRME and ensemble",
        ),
        Row(
            f"  {label}: critic + training s/step (speed-up)",
            f"{our_training:.2f} s",
            f"{their_training:.2f} s",
            their_training / our_training if our_training else None,
            "",
            f"ours: {CRITIC} + {TRAINING_REST}; TRL's: {VALUE_FORWARD} + {TRAINING_REST} (policy and critic "
            "updated in one forward and backward), so only the sums compare",
        ),
        *phase_rows(label, ours, theirs),
    ]


def trl_ppo_env(env: dict[str, str]) -> dict[str, str]:
    """The TRL-PPO child's environment: no PYTHONPATH, which could put another TRL or transformers before
    its venv's (the child runs from the repo root, so bench/ and robust_rlhf/ import without it)."""
    return {key: value for key, value in env.items() if key != "PYTHONPATH"} | {"TRL_EXPERIMENTAL_SILENCE": "1"}


def trl_ppo_missing_row(venv: Path, *, critic: str) -> Row:
    """The row that stands in for TRL's PPO when its virtualenv is not built."""
    return Row(
        TRL_PPO_ROW.format(critic=critic),
        "not run",
        f"no {venv}",
        note="TRL's PPO runs in its own venv: make bench-trl-ppo-venv",
    )


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


def machine_rows(peak_flops: float, bandwidth: float) -> list[Row]:
    """The machine's limits, measured in this run: what every achieved / peak below is against."""
    return [
        Row(
            "fp32 matmul peak (torch.mm 2048^2)",
            f"{peak_flops / 1e9:.1f} GFLOP/s",
            note="2 n^3 per mm, after a warm-up",
        ),
        Row("memory read bandwidth (sum of 512 MB)", f"{bandwidth / 1e9:.1f} GB/s"),
    ]


def ppo_flops_rows(record: dict, phase_flops: dict[str, int], peak_flops: float, *, critic: str) -> list[Row]:
    """Achieved FLOP/s of each PPO phase (bench/flops.py's count over the phase's mean seconds) / the peak."""
    split = mean_split(record["splits"])
    rows = []
    for phase, flops in phase_flops.items():
        if split.get(phase):
            achieved = flops / split[phase]
            rows.append(
                Row(
                    f"  {critic}: {phase} achieved / matmul peak",
                    f"{achieved / 1e9:.1f} GFLOP/s",
                    f"{peak_flops / 1e9:.1f} GFLOP/s",
                    achieved / peak_flops,
                    note=FLOPS_NOTE if not rows else "",
                )
            )
    return rows


def sampling_rows(
    runs: dict, peak_flops: float, bandwidth: float, step_bytes: dict[int, float], stage_rows: int
) -> list[Row]:
    """Per batch: our sampler's tokens/s against transformers' generate, its achieved FLOP/s / the peak and
    the bounds; then prepare's pairs/s at its own batch against the target."""
    rows = []
    for ours, theirs in zip(runs["ours"], runs["generate"]):
        ours_rate, their_rate = ours.generated_tokens / ours.seconds, theirs.generated_tokens / theirs.seconds
        compute_bound = peak_flops * ours.generated_tokens / ours.flops
        bandwidth_bound = ours.rows * bandwidth / step_bytes[ours.rows]
        rows.append(
            Row(
                f"sampling tokens/s at {ours.rows} rows, ours vs generate",
                f"{ours_rate:.0f} ({ours.flops / ours.seconds / peak_flops:.0%} of peak)",
                f"{their_rate:.0f} ({theirs.flops / theirs.seconds / peak_flops:.0%})",
                ours_rate / their_rate,
                note=SAMPLING_NOTE if not rows else "",
            )
        )
        rows.append(
            Row(
                f"  {ours.rows} rows: bound by compute / by weight reads (tok/s)",
                f"{compute_bound:.0f}",
                f"{bandwidth_bound:.0f}",
                ours_rate / min(compute_bound, bandwidth_bound),
                note="ratio: ours / the lower bound" if len(rows) == 1 else "",
            )
        )
    from bench.sampling import TORCH_MATMUL

    ours_at = {run.rows: run for run in runs["ours"]}
    for plain in runs.get(TORCH_MATMUL, []):
        kernel = ours_at[plain.rows]
        rows.append(
            Row(
                f"sampling tokens/s at {plain.rows} rows, small-batch kernel vs torch's matmul",
                f"{kernel.generated_tokens / kernel.seconds:.0f}",
                f"{plain.generated_tokens / plain.seconds:.0f}",
                plain.seconds / kernel.seconds,
                note="ours both sides; models.small_batch_linear (robust_rlhf/runtime/small_batch_linear.py) on "
                "against off: the decode steps' linears of <= 64 rows by our AVX2 kernel or by MKL's sgemm"
                if not any("small-batch kernel" in row.benchmark for row in rows)
                else "",
            )
        )
    stage = ours_at.get(stage_rows)
    before = {run.rows: run for run in runs["generate"]}.get(stage_rows)
    if stage and before:
        rows.append(
            Row(
                f"prepare's pair sampling pairs/s ({stage_rows // 2} prompts x 2)",
                f"{stage_rows / 2 / stage.seconds:.2f}",
                f"{stage_rows / 2 / before.seconds:.2f}",
                before.seconds / stage.seconds,
                ">= 3x",
                "prepare.batch_size prompts, two samples each, 32 tokens: `sample` now against what it ran before",
            )
        )
    return rows


def shared_machine_rows(times: dict) -> list[Row]:
    """prepare next to one CPU-bound competitor over prepare alone, per thread setting."""
    from bench.shared_machine import slowdown

    rows = []
    for name, entry in times.items():
        ratio, stopped = slowdown(entry)
        contested = (
            f"> {entry['contested'] or ratio * entry['alone']:.1f} s" if stopped else f"{entry['contested']:.1f} s"
        )
        rows.append(
            Row(
                f"prepare next to one busy process / alone, {name}",
                contested,
                f"{entry['alone']:.1f} s alone",
                ratio,
                "<= 2.3x" if name == "stages' settings" else "",
                SHARED_NOTE if not rows else "",
            )
        )
    return rows


def ppo_step_flops(work: Path, workload: PPOWorkload, params) -> dict[str, int]:
    """bench/flops.py's count of one measured PPO step of `ppo_ours` with params' critic: the policy's shape
    (a critic cut to N of L layers has N / L of its body's weights), the measured batches' padded prompt
    length and shared prefix (means), the response length."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from bench.flops import linear_weights, ppo_phase_flops
    from bench.workload import POLICY_DIR, bench_prompts
    from robust_rlhf.generation import encode_prompts, shared_prefix_length

    with torch.device("meta"):  # only the shapes are counted: no weights read
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work / POLICY_DIR))
    tokenizer = AutoTokenizer.from_pretrained(work / POLICY_DIR)
    prompts = bench_prompts(workload.batch_size * (workload.steps + 1))
    batches = [
        prompts[step * workload.batch_size : (step + 1) * workload.batch_size] for step in range(1, workload.steps + 1)
    ]
    limit = params.prepare.max_prompt_tokens
    queries = [encode_prompts(tokenizer, batch, max_prompt_tokens=limit) for batch in batches]
    prompt_len = statistics.fmean(ids.shape[1] for ids, _ in queries)
    shared_prefix = statistics.fmean(shared_prefix_length(ids, mask) for ids, mask in queries)
    body, head = linear_weights(model, model.config.vocab_size)
    critic_layers = params.ppo.critic_layers or model.config.num_hidden_layers
    return ppo_phase_flops(
        critic_body_weights=body * critic_layers // model.config.num_hidden_layers,
        body_weights=body,
        head_weights=head,
        rows=workload.batch_size,
        prompt_len=round(prompt_len),
        response_len=workload.max_new_tokens,
        epochs=workload.epochs,
        shared_prefix=round(shared_prefix),
    )


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
    try:
        measure(sections, args, env, work, rows)
    finally:  # what was measured is printed even when a later section fails
        print()
        print(render(rows))


def measure(sections: list[str], args: argparse.Namespace, env: dict[str, str], work: Path, rows: list[Row]) -> None:
    """Run the `sections`, appending their rows to `rows` as each one ends."""
    if {"ppo", "sampling", "brme", "shared"} & set(sections):
        import torch

        from bench.sampling import matmul_peak_flops, read_bandwidth
        from bench.workload import build_policy, build_reward_models, default_params

        params = default_params(Path.cwd())
        policy = build_policy(params, work)
        if {"ppo", "brme"} & set(sections):
            build_reward_models(params, work)
        torch.set_num_threads(args.threads)
    if {"ppo", "sampling"} & set(sections):  # the limits their achieved figures are read against
        peak_flops, bandwidth = matmul_peak_flops(), read_bandwidth()
        print(f"matmul peak {peak_flops / 1e9:.1f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
        rows += machine_rows(peak_flops, bandwidth)
    if "ppo" in sections:
        workload = workload_from_args(args)
        # params' own critic always runs: the TRL-PPO target and the FLOP rows read it
        variants = critics([args.critic_layers, params.ppo.critic_layers])
        default = default_critic(params.ppo)
        ours = {}
        for critic, flags in variants.items():
            ours[critic] = run_ppo_child(
                "ppo_ours",
                work,
                workload,
                env,
                profile=args.torch_profile,
                extra=flags,
                name=f"ppo_ours_{critic.replace(' ', '_')}",
            )
            print(f"ours ({critic} critic): {ours[critic]['step_seconds']}", flush=True)
        theirs = run_ppo_child("ppo_trl", work, workload, env, profile=args.torch_profile)
        print(f"trl: {theirs['step_seconds']}", flush=True)
        rows += ppo_rows(ours, theirs)
        rows += ppo_flops_rows(ours[default], ppo_step_flops(work, workload, params), peak_flops, critic=default)
        trl_ppo_python = args.trl_ppo_venv.resolve() / "bin" / "python"
        separate = [critic for critic in ours if critic != "shared"]
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
            for critic in separate:
                rows += trl_ppo_rows(
                    ours[critic], trl_ppo, critic=critic, target=">= 1.5x" if critic == default else ""
                )
        else:
            print(f"no {trl_ppo_python}: TRL's PPO not run (make bench-trl-ppo-venv)", flush=True)
            rows += [trl_ppo_missing_row(args.trl_ppo_venv, critic=critic) for critic in separate]
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
    if "sampling" in sections:
        from bench.sampling import sampling_runs
        from bench.workload import POLICY_DIR, bench_prompts

        stage_rows = 2 * params.prepare.batch_size
        rows_list = sorted({8, 32, 64, stage_rows})
        runs, step_bytes = sampling_runs(
            work / POLICY_DIR,
            bench_prompts(stage_rows // 2),
            rows_list,
            max_new_tokens=args.max_new_tokens,
            max_prompt_tokens=params.prepare.max_prompt_tokens,
            small_batch_linear=params.models.small_batch_linear,
            profile_to=work if args.torch_profile else None,
        )
        rows += sampling_rows(runs, peak_flops, bandwidth, step_bytes, stage_rows)
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
    if "shared" in sections:
        from bench.pipeline_overhead import bench_repo
        from bench.shared_machine import contention_times

        with tempfile.TemporaryDirectory(prefix="bench_shared_") as tmp:
            repo = bench_repo(Path(tmp) / "repo", "default", args.pipeline_methods.split(",")[:1], policy=str(policy))
            logs = work / "shared_logs"
            logs.mkdir(exist_ok=True)
            rows += shared_machine_rows(contention_times(repo, dict(os.environ), logs))


if __name__ == "__main__":
    main()

"""The PPO workload both implementations run (ours and TRL's), its command-line flags, and the
per-step record each writes as JSON for the parent `python -m bench` to compare."""

from __future__ import annotations

import argparse
import json
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.timing import phase_split

# Phase names shared by both implementations, so the table lines them up.
GENERATION, SCORING, LOGPROB_FORWARD = "generation", "reward scoring", "logprob/ref forward"
CRITIC = "critic forward+update"  # ours only: PPO's value model, which GRPO does not have
# TRL's PPO only: its critic's rollout forward; the critic's update shares the policy's training forward
VALUE_FORWARD = "value forward (rollout)"


@dataclass(frozen=True)
class PPOWorkload:
    """Same policy, prompts, batch, generation length and epochs on both sides."""

    steps: int = 3  # measured steps; one more warm-up step runs first and is not counted
    batch_size: int = 8  # rollouts per step (= samples per optimizer step)
    micro_batch_size: int = 4  # batch_size / micro_batch_size micro-batches accumulate into one step
    epochs: int = 1  # optimisation epochs over each rollout
    max_new_tokens: int = 32
    seed: int = 0

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    defaults = PPOWorkload()
    parser.add_argument("--ppo-steps", type=int, default=defaults.steps, help="measured PPO steps per implementation")
    parser.add_argument("--ppo-batch", type=int, default=defaults.batch_size, help="rollouts per step")
    parser.add_argument("--ppo-micro-batch", type=int, default=defaults.micro_batch_size)
    parser.add_argument("--ppo-epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)


def workload_from_args(args: argparse.Namespace) -> PPOWorkload:
    if args.ppo_batch % args.ppo_micro_batch:
        raise SystemExit(f"--ppo-batch {args.ppo_batch} must be a multiple of --ppo-micro-batch {args.ppo_micro_batch}")
    return PPOWorkload(
        steps=args.ppo_steps,
        batch_size=args.ppo_batch,
        micro_batch_size=args.ppo_micro_batch,
        epochs=args.ppo_epochs,
        max_new_tokens=args.max_new_tokens,
    )


def workload_argv(workload: PPOWorkload) -> list[str]:
    """The flags that hand `workload` to a child process."""
    return [
        "--ppo-steps",
        str(workload.steps),
        "--ppo-batch",
        str(workload.batch_size),
        "--ppo-micro-batch",
        str(workload.micro_batch_size),
        "--ppo-epochs",
        str(workload.epochs),
        "--max-new-tokens",
        str(workload.max_new_tokens),
    ]


def child_parser(prog: str) -> argparse.ArgumentParser:
    """Flags of an implementation's child process: the work folder, where its record goes, the workload."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--work", type=Path, required=True, help="folder with the built models (bench/workload.py)")
    parser.add_argument("--out", type=Path, required=True, help="JSON record of the measured steps")
    parser.add_argument(
        "--torch-profile", type=Path, default=None, help="write torch.profiler's top ops over the measured steps here"
    )
    add_workload_args(parser)
    return parser


@dataclass
class StepRecord:
    """What one implementation measured: wall seconds, phase split and response tokens per step."""

    implementation: str
    workload: dict
    step_seconds: list[float] = field(default_factory=list)
    splits: list[dict[str, float]] = field(default_factory=list)
    response_tokens: list[int] = field(default_factory=list)
    note: str = ""

    def add(self, step: int, wall: float, phases: dict[str, float], tokens: int) -> None:
        """One measured step: its wall seconds, split into `phases` plus the rest, and its response tokens."""
        self.step_seconds.append(wall)
        self.splits.append(phase_split(wall, phases))
        self.response_tokens.append(tokens)
        print(f"{self.implementation} step {step}: {wall:.2f} s {phases}", flush=True)

    def write(self, path: Path) -> None:
        payload = asdict(self) | {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        path.write_text(json.dumps(payload, indent=2))


def top_ops_table(profiler, rows: int = 15) -> str:
    """torch.profiler's ops by self CPU time: what the optimisation work looks at."""
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def start_profile():
    """A torch.profiler over CPU ops, entered: the measured steps run inside it."""
    import torch

    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    profiler.__enter__()
    return profiler


def finish_profile(profiler, path: Path) -> None:
    """Leave `profiler` (from `start_profile`) and write its top ops to `path`."""
    profiler.__exit__(None, None, None)
    path.write_text(top_ops_table(profiler))


def trl_training_arguments(workload: PPOWorkload, params, output_dir: str) -> dict:
    """The transformers TrainingArguments keywords both TRL trainers (GRPO, PPO) run with: CPU, fp32, no
    gradient checkpointing (ours has none), one optimizer step per rollout batch, our learning rate and
    clipping, and no saving, logging or data workers to time."""
    return dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=workload.micro_batch_size,
        gradient_accumulation_steps=workload.gradient_accumulation_steps,
        learning_rate=params.ppo.learning_rate,
        max_grad_norm=params.deepspeed.gradient_clipping,
        seed=workload.seed,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

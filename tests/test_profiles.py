"""The GPU profiles (profiles/gpu-1x.yaml, profiles/paper.yaml) on the CPU: their sizes cannot run here, but
every setting that is not a size can. Each is laid over the tiny profile and validated; the slow test runs
train_reward and two PPO steps with them on the tiny models (DeepSpeed's CPU accelerator)."""

import csv
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from robust_rlhf.config import load_params
from robust_rlhf.runtime.checkpoint import read_checkpoints
from robust_rlhf.runtime.launcher import deepspeed_launch_command
from tests.conftest import REPO, run_stage_ok, tiny_params, write_params

GPU_PROFILES = ("gpu-1x", "paper")
# What a profile sets that is not a size: the methods it compares (and so the reward models it trains), how the
# models are placed, cast, adapted and scheduled. Sizes (models, data, steps, lengths, batches, GPUs) stay the tiny
# profile's. Warmup lengths are sizes: see overlay().
NON_SIZE_KEYS = (
    "methods",
    "train_reward.ensemble_size",
    "models.attn_implementation",
    "deepspeed.precision",
    "deepspeed.zero_stage",
    "deepspeed.offload_optimizer",
    "deepspeed.offload_param",
    "ppo.value_model",
    "ppo.gradient_checkpointing",
    "ppo.lora",
    "ppo.lr_schedule.kind",
    "ppo.lr_schedule.final_fraction",
    "train_reward.finetune_backbone",
    "train_reward.gradient_checkpointing",
    "train_reward.lora",
    "train_reward.lr_schedule.kind",
    "train_reward.lr_schedule.final_fraction",
    "train_reward.stage2.freeze_backbone",
    "launcher.device_memory_gib",
)
WARMUPS = ("ppo.lr_schedule.warmup_steps", "train_reward.lr_schedule.warmup_steps")


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())


def value_at(raw: dict, dotted: str):
    for key in dotted.split("."):
        raw = raw[key]
    return raw


def overlay(name: str, **overrides) -> dict:
    """The tiny profile with `name`'s non-size settings; a warmup becomes 1 optimizer step when the profile
    warms up at all (its own length is longer than a tiny run), so the tiny run warms up and then decays."""
    source = profile(name)
    settings = {key: value_at(source, key) for key in NON_SIZE_KEYS}
    settings |= {key: min(value_at(source, key), 1) for key in WARMUPS}
    return tiny_params(**settings, **overrides)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_a_gpu_profiles_settings_validate_on_the_tiny_sizes(tmp_path, name):
    params = load_params(write_params(tmp_path / "params.yaml", overlay(name))).model_dump(
        by_alias=True, exclude_unset=True
    )
    source, tiny = profile(name), tiny_params()
    for key in NON_SIZE_KEYS:
        assert value_at(params, key) == value_at(source, key), key
    for size in ("models.policy", "ppo.steps", "ppo.rollout_batch_size", "launcher.num_gpus", "launcher.num_nodes"):
        assert value_at(params, size) == value_at(tiny, size), size
    # what the profiles are for: bf16 and a ZeRO stage that shards, warmup then decay
    assert params["deepspeed"]["precision"] == "bf16" and params["deepspeed"]["zero_stage"] >= 2
    assert params["ppo"]["lr_schedule"]["kind"] == "cosine" and params["ppo"]["lr_schedule"]["warmup_steps"] == 1


def test_the_profiles_set_what_the_issue_asks():
    one, paper = (load_params(REPO / "profiles" / f"{name}.yaml") for name in GPU_PROFILES)
    assert (one.deepspeed.zero_stage, one.launcher.world_size, one.launcher.device_memory_gib) == (2, 1, 80)
    assert (paper.deepspeed.zero_stage, paper.launcher.device_memory_gib) == (3, 80)
    assert paper.launcher.num_nodes > 1 and paper.launcher.hostfile is not None
    # the paper's: 5 heads, 800 steps of 128 rollouts in all (rollout_batch_size is per process)
    assert paper.train_reward.num_heads == 5 and paper.ppo.steps == 800
    assert paper.ppo.rollout_batch_size * paper.launcher.world_size == 128
    assert [(s.name, s.layout) for s in paper.prepare.sources] == [
        ("Anthropic/hh-rlhf", "conversation_pair"),
        ("HuggingFaceH4/ultrafeedback_binarized", "messages"),
    ]
    for params in (one, paper):
        assert params.prepare.task == "preference_data" and params.deepspeed.precision == "bf16"
        assert params.ppo.lr_schedule.warmup_steps < params.ppo.optimizer_steps


def test_the_hostfile_example_has_the_paper_profiles_nodes_and_slots():
    launcher = load_params(REPO / "profiles" / "paper.yaml").launcher
    text = (REPO / "profiles" / "hostfile.example").read_text()
    hosts = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert len(hosts) == launcher.num_nodes
    assert all(len(host) == 2 and host[1] == f"slots={launcher.num_gpus}" for host in hosts)
    command = deepspeed_launch_command(launcher, "stages.ppo", ["--params", "params.yaml"], python="py", master_port=1)
    assert command[command.index("--hostfile") + 1] == launcher.hostfile
    assert command[command.index("--num_nodes") + 1] == str(launcher.num_nodes)


@pytest.mark.slow
@pytest.mark.parametrize("name", GPU_PROFILES)
def test_train_reward_and_ppo_run_with_a_gpu_profiles_settings(pipeline_run, tmp_path, name):
    # The session's tiny data and initial policy; this profile's reward models, then 2 PPO steps on them.
    params = write_params(tmp_path / "params.yaml", overlay(name, **{"ppo.steps": 2, "ppo.checkpoint_every": 1}))
    reward, ensemble = tmp_path / "reward", tmp_path / "ensemble"
    run_stage_ok(
        "train_reward",
        params,
        data=pipeline_run["data"],
        policy=pipeline_run["policy_init"],
        reward=reward,
        ensemble=ensemble,
        reliability=tmp_path / "reliability",
        metrics=tmp_path / "train_reward.json",
        resume=tmp_path / ".reward.resume",
    )
    run_stage_ok(
        "ppo",
        params,
        method="brme",
        seed="0",
        data=pipeline_run["data"],
        policy_init=pipeline_run["policy_init"],
        reward=reward,
        ensemble=ensemble,
        policy=tmp_path / "policy",
        steps=tmp_path / "steps.csv",
        metrics=tmp_path / "ppo.json",
        resume=tmp_path / ".ppo.resume",
    )
    with open(tmp_path / "steps.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(value)) for row in rows for value in row.values())
    # The final checkpoint is a causal LM like the initial policy, and training moved it: compared in bf16,
    # which the profile trains in (an fp32 copy of bf16 weights differs from the fp32 init by rounding alone).
    initial = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    final = load_file(
        str(tmp_path / "policy" / read_checkpoints(tmp_path / "policy")[-1]["path"] / "model.safetensors")
    )
    assert initial.keys() <= final.keys()
    moved = [key for key in initial if not torch.equal(initial[key].bfloat16(), final[key].bfloat16())]
    assert moved, "PPO changed no parameter of the policy"

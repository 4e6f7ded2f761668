"""The deepspeed launch command built from `launcher:` params, and the data-parallel split of PPO."""

import pytest
import torch

from robust_rlhf.config import LauncherParams
from robust_rlhf.rl.normalization import RewardNormalizer
from robust_rlhf.rl.ppo import rank_sampling_seed, rollout_prompts
from robust_rlhf.runtime.distributed import gather_from_ranks, mean_over_ranks
from robust_rlhf.runtime.launcher import deepspeed_launch_command, launch_environment, launched_by_launcher
from tests.conftest import tiny_section

STAGE_ARGV = ["--params", "params.yaml", "--method", "brme"]


def _launcher(**fields) -> LauncherParams:
    return LauncherParams(**tiny_section("launcher", **fields))


def test_one_node_command_runs_the_stage_module_on_num_gpus_processes():
    command = deepspeed_launch_command(
        _launcher(num_gpus=2), "stages.ppo", STAGE_ARGV, python="/venv/python", master_port=29511
    )
    assert command == [
        "/venv/python",
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        "29511",
        "--module",
        "stages.ppo",
        *STAGE_ARGV,
    ]


def test_multi_node_command_names_the_hostfile_nodes_and_master():
    launcher = _launcher(num_gpus=8, num_nodes=2, hostfile="/etc/hosts.ds", master_addr="10.0.0.1")
    command = deepspeed_launch_command(launcher, "stages.ppo", STAGE_ARGV, python="py", master_port=29500)
    assert command[:5] == ["py", "-m", "deepspeed.launcher.runner", "--num_gpus", "8"]
    assert command[5:11] == ["--hostfile", "/etc/hosts.ds", "--num_nodes", "2", "--master_addr", "10.0.0.1"]
    assert command[-len(STAGE_ARGV) - 2 :] == ["--module", "stages.ppo", *STAGE_ARGV]
    assert launcher.world_size == 16


def test_nodes_without_a_hostfile_are_refused():
    with pytest.raises(ValueError, match="hostfile"):
        _launcher(num_nodes=2)


def test_cpu_accelerator_is_told_how_many_ranks_a_node_runs():
    assert launch_environment(_launcher(num_gpus=3), {"DS_ACCELERATOR": "cpu"})["LOCAL_SIZE"] == "3"
    assert "LOCAL_SIZE" not in launch_environment(_launcher(num_gpus=3), {"DS_ACCELERATOR": "cuda"})


def test_a_rank_started_by_a_launcher_does_not_launch_again():
    assert launched_by_launcher({"LOCAL_RANK": "1"}) and launched_by_launcher({"RANK": "0"})
    assert not launched_by_launcher({"PATH": "/bin"})


def test_rollout_prompts_give_each_rank_its_own_block_and_match_one_process():
    prompts = [f"p{i}" for i in range(10)]
    # one process: blocks of 4 in order, cycling
    assert rollout_prompts(prompts, step=0, rank=0, world_size=1, rollout_batch_size=4) == ["p0", "p1", "p2", "p3"]
    assert rollout_prompts(prompts, step=2, rank=0, world_size=1, rollout_batch_size=4) == ["p8", "p9", "p0", "p1"]
    # two ranks: step 0 reads blocks 0 and 1, step 1 blocks 2 and 3
    assert rollout_prompts(prompts, step=0, rank=1, world_size=2, rollout_batch_size=4) == ["p4", "p5", "p6", "p7"]
    assert rollout_prompts(prompts, step=1, rank=0, world_size=2, rollout_batch_size=4) == ["p8", "p9", "p0", "p1"]


def test_rank_sampling_seeds_differ_per_rank_and_step():
    seeds = {rank_sampling_seed(0, rank=r, step=s) for r in (1, 2, 3) for s in range(5)}
    assert len(seeds) == 15
    assert rank_sampling_seed(7, rank=1, step=3) == (7 * 1_000_003 + 10_007 + 3) % 2**31


def test_one_process_reductions_are_identities():
    assert mean_over_ranks({"a": 1.5, "b": -2.0}) == {"a": 1.5, "b": -2.0}
    tensor = torch.tensor([1.0, 2.0])
    assert gather_from_ranks(tensor) is tensor


def test_running_normaliser_takes_its_moments_from_the_population():
    normalizer = RewardNormalizer("running")
    out = normalizer(torch.tensor([1.0, 3.0]), population=torch.tensor([1.0, 3.0, 5.0, 7.0]))
    # moments of the population: mean 4, population std sqrt(5)
    assert normalizer.moments.mean == pytest.approx(4.0)
    assert out.tolist() == pytest.approx([(1 - 4) / 5**0.5, (3 - 4) / 5**0.5])

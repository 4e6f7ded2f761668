import subprocess
import sys
import textwrap

import pytest

from robust_rlhf.config import DeepSpeedParams
from robust_rlhf.runtime.distributed import deepspeed_config
from tests.conftest import tiny_section


def _config(**deepspeed_overrides) -> dict:
    return deepspeed_config(
        deepspeed=DeepSpeedParams(**tiny_section("deepspeed", **deepspeed_overrides)),
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        world_size=1,
        learning_rate=1e-3,
        weight_decay=0.0,
    )


def test_offload_off_adds_no_key():
    assert _config(zero_stage=3)["zero_optimization"] == {"stage": 3}


def test_offload_cpu_sets_devices_and_keeps_torch_adamw():
    config = _config(zero_stage=3, offload_optimizer="cpu", offload_param="cpu")
    pinned = {"device": "cpu", "pin_memory": False}  # no CUDA on the test machine: nothing to pin for
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": pinned, "offload_param": pinned}
    assert config["optimizer"]["params"]["torch_adam"] is True


def _run(tmp_path, body: str) -> str:
    """`body` in a fresh process (one deepspeed.initialize family per process), after the shared setup."""
    script = textwrap.dedent("""
        import torch
        from robust_rlhf.config import DeepSpeedParams
        from robust_rlhf.generation import sample
        from robust_rlhf.models import build_tiny_policy, build_tiny_tokenizer
        from robust_rlhf.runtime.distributed import (
            deepspeed_config, gathered_for_generation, init_distributed, initialize_engine)

        init_distributed()
        tokenizer = build_tiny_tokenizer(["hello world", "the cat sat on the mat", "a b c d e f"] * 20)
        query = torch.tensor([[5, 6, 7], [8, 9, 10]])

        def engine(zero_stage, learning_rate=None, offload="none"):
            config = deepspeed_config(
                deepspeed=DeepSpeedParams(zero_stage=zero_stage, precision="fp32", gradient_clipping=1.0,
                                          offload_optimizer=offload if zero_stage else "none",
                                          offload_param=offload if zero_stage == 3 else "none"),
                micro_batch_size=2, gradient_accumulation_steps=1, world_size=1,
                learning_rate=learning_rate, weight_decay=0.0 if learning_rate else None)
            # The tiny model's tensors are all under DeepSpeed's persistence threshold (1e5 elements),
            # which would keep them gathered for good; 0 partitions every one, as for a real model.
            config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
            model = build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa")
            if learning_rate is None:
                model.eval().requires_grad_(False)
            return initialize_engine(model, config)

        def draw(module, max_new_tokens):
            torch.manual_seed(1)
            return sample(module, query, torch.ones_like(query), max_new_tokens=max_new_tokens, temperature=1.0,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).ids

        def losses(engine, steps=3):
            out = []
            for _ in range(steps):
                loss = engine(input_ids=torch.cat([query, query], 1), labels=torch.cat([query, query], 1)).loss
                engine.backward(loss)
                engine.step()
                out.append(loss.item())
            return out
    """) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:]
    )
    return result.stdout


@pytest.mark.slow
def test_gathered_sampling_matches_zero0_and_gathers_once(tmp_path):
    _run(
        tmp_path,
        """
        reference = engine(0).module
        partitioned = engine(3).module
        gathers = [0]
        for parameter in partitioned.parameters():  # every ZeRO-3 fetch goes through these two
            for name in ("all_gather", "all_gather_coalesced"):
                def counted(*args, _gather=getattr(parameter, name), **kwargs):
                    gathers[0] += 1
                    return _gather(*args, **kwargs)
                setattr(parameter, name, counted)
        counts = {}
        for max_new_tokens in (2, 6):
            expected = draw(reference, max_new_tokens)
            for gathered in (False, True):
                gathers[0] = 0
                if gathered:
                    with gathered_for_generation(partitioned) as module:
                        ids = draw(module, max_new_tokens)
                else:
                    ids = draw(partitioned, max_new_tokens)
                assert torch.equal(ids, expected), (max_new_tokens, gathered, ids, expected)
                counts[max_new_tokens, gathered] = gathers[0]
        assert counts[6, False] > counts[2, False], counts  # the hooks gather per token
        assert counts[2, True] == counts[6, True] == 1, counts  # the context once per rollout
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
        statuses = {p.ds_status for p in partitioned.parameters()}
        assert statuses == {ZeroParamStatus.NOT_AVAILABLE}, statuses  # released again on exit
        print("ok")
    """,
    )


@pytest.mark.slow
def test_zero3_trains_the_same_after_a_gathered_rollout(tmp_path):
    _run(
        tmp_path,
        """
        never, after = engine(3, learning_rate=1e-2), engine(3, learning_rate=1e-2)
        with gathered_for_generation(after.module) as module:
            draw(module, 4)
        first, second = losses(never), losses(after)
        assert first == second and first[-1] < first[0], (first, second)
        print("ok")
    """,
    )


@pytest.mark.slow
def test_zero3_with_cpu_offload_trains_as_zero0(tmp_path):
    _run(
        tmp_path,
        """
        offloaded = losses(engine(3, learning_rate=1e-2, offload="cpu"))
        plain = losses(engine(0, learning_rate=1e-2))
        torch.testing.assert_close(torch.tensor(offloaded), torch.tensor(plain), rtol=1e-4, atol=1e-5)
        assert offloaded[-1] < offloaded[0], offloaded
        print("ok")
    """,
    )


@pytest.mark.slow
def test_a_submodule_is_gathered_through_its_engine_root(tmp_path):
    # PPO samples `policy_module(actor)`: the causal LM inside a shared-value-head actor engine.
    _run(
        tmp_path,
        """
        from robust_rlhf.rl.ppo import PolicyWithValueHead
        reference = engine(0).module
        config = deepspeed_config(
            deepspeed=DeepSpeedParams(zero_stage=3, precision="fp32", gradient_clipping=1.0,
                                      offload_optimizer="none", offload_param="none"),
            micro_batch_size=2, gradient_accumulation_steps=1, world_size=1, learning_rate=1e-2, weight_decay=0.0)
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        policy = build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa")
        actor = initialize_engine(PolicyWithValueHead(policy), config)
        with gathered_for_generation(actor.module.policy) as module:
            assert torch.equal(draw(module, 4), draw(reference, 4))
        ids = torch.cat([query, query], 1)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        logits, values = actor(ids, torch.ones_like(ids), positions, logits_to_keep=3)
        actor.backward(values.sum() + logits.float().logsumexp(-1).sum())  # the hooks are back: it trains
        actor.step()
        print("ok")
    """,
    )

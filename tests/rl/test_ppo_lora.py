"""PPO under `ppo.lora`: the reference policy (the actor with its adapters disabled) gives the initial
policy's log-probs exactly, before and after the adapters have trained, in a plain loop and inside a
DeepSpeed engine, whose save/restore (the resume state) round-trips the adapted actor."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from robust_rlhf.config import LoRAParams
from robust_rlhf.generation import forward_response
from robust_rlhf.rl.ppo import build_actor_critic, ppo_update, reference_policy
from tests.conftest import REPO, PlainEngine
from tests.rl.test_ppo_update import fixed_rollout, ppo_config

LORA = LoRAParams(enabled=True, rank=4, alpha=8.0, target_modules=["all-linear"])


def test_reference_is_the_initial_policy_after_an_update(tiny_tokenizer, tiny_policy):
    from robust_rlhf.models import build_tiny_policy

    config = ppo_config()
    actor_module, critic_module = build_actor_critic(
        lambda: build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"),
        lambda: build_tiny_policy(tiny_tokenizer, seed=1, attn_implementation="sdpa").model,
        "separate",
        lora=LORA,
    )
    actor, critic = PlainEngine(actor_module, lr=1e-2), PlainEngine(critic_module, lr=1e-2)
    reference = reference_policy(actor)
    rollout = fixed_rollout(actor.module, len(tiny_tokenizer), config)
    batch = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)

    def logprobs(model):
        with torch.inference_mode():
            return forward_response(model, *batch, temperature=config.temperature)[0]

    base = logprobs(tiny_policy)
    assert torch.equal(logprobs(reference), base) and torch.equal(rollout.logprobs, base)  # B = 0 at init
    ppo_update(0, actor, critic, rollout, config)
    assert not torch.allclose(logprobs(actor.module), base, atol=1e-4)  # the adapters moved the actor
    assert torch.equal(logprobs(reference), base)  # ... and not the reference
    assert all(p.grad is None for p in actor.module.parameters() if not p.requires_grad)


@pytest.mark.slow
def test_deepspeed_actor_with_adapters_updates_references_and_resumes(tmp_path):
    # In a subprocess: DeepSpeed engines join a process group, which must not outlive the test.
    script = textwrap.dedent("""
        import json
        from pathlib import Path
        import torch
        from robust_rlhf.config import DeepSpeedParams, LRScheduleParams
        from robust_rlhf.data.task import tokenizer_corpus
        from robust_rlhf.generation import forward_response
        from robust_rlhf.models import build_tiny_policy, build_tiny_tokenizer
        from robust_rlhf.rl.ppo import build_actor_critic, ppo_update, reference_policy
        from robust_rlhf.runtime.distributed import full_state_dict, init_distributed, training_engine
        from robust_rlhf.runtime.resume import restore_engines, save_state
        from tests.rl.test_ppo_lora import LORA
        from tests.rl.test_ppo_update import fixed_rollout, ppo_config
        init_distributed()
        tokenizer = build_tiny_tokenizer(tokenizer_corpus())
        config = ppo_config()
        deepspeed = DeepSpeedParams(zero_stage=0, precision="fp32", gradient_clipping=1.0,
                                    offload_optimizer="none", offload_param="none")

        def engines():
            torch.manual_seed(3)
            modules = build_actor_critic(lambda: build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa"),
                                         lambda: build_tiny_policy(tokenizer, seed=1, attn_implementation="sdpa").model,
                                         "separate", lora=LORA)
            schedule = LRScheduleParams(kind="constant", warmup_steps=0, final_fraction=1.0)
            return [training_engine(m, deepspeed=deepspeed, micro_batch_size=4, gradient_accumulation_steps=1,
                                    world_size=1, learning_rate=1e-2, weight_decay=0.0, lr_schedule=schedule,
                                    total_steps=config.optimizer_steps) for m in modules]

        actor, critic = engines()
        reference = reference_policy(actor)
        rollout = fixed_rollout(actor.module, len(tokenizer), config)
        batch = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)
        base = build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa").eval()

        def logprobs(model):
            with torch.inference_mode():
                return forward_response(model, *batch, temperature=config.temperature)[0]

        torch.manual_seed(5)
        ppo_update(0, actor, critic, rollout, config)
        assert torch.equal(logprobs(reference), logprobs(base))
        assert not torch.allclose(logprobs(actor.module), logprobs(base), atol=1e-4)
        folder = Path("resume")
        save_state(folder, {"actor": actor, "critic": critic}, step=1, key={"k": 1}, stage_state={}, outputs=[])
        torch.manual_seed(6)
        ppo_update(1, actor, critic, rollout, config)
        after_two = [full_state_dict(e) for e in (actor, critic)]

        fresh_actor, fresh_critic = engines()
        state = json.loads((folder / "state.json").read_text())
        restore_engines(folder, {"actor": fresh_actor, "critic": fresh_critic}, state)
        torch.manual_seed(6)
        ppo_update(1, fresh_actor, fresh_critic, rollout, config)
        for expected, engine in zip(after_two, (fresh_actor, fresh_critic)):
            got = full_state_dict(engine)
            assert set(got) == set(expected)
            for name in expected:
                assert torch.equal(got[name], expected[name]), name
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:]
    )

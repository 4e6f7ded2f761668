"""`ppo_update` on a fixed, hand-written rollout with tiny models: the numbers of its first micro-batch,
that it trains, and that DeepSpeed's gradient accumulation gives the weights one larger micro-batch gives."""

import os
import subprocess
import sys
import textwrap

import pydantic
import pytest
import torch

from robust_rlhf.config import PPOParams
from robust_rlhf.generation import forward_response
from robust_rlhf.rl.ppo import Rollout, ValueModel, ppo_update
from tests.conftest import REPO, PlainEngine, tiny_params

# Four responses of T = 4 tokens, each with 3 real tokens then padding (the same token count in every
# row, so a micro-batch's token mean does not depend on which rows the seeded shuffle puts together).
# The 9s sit under the padding: a loss that read them would be off.
MASK = torch.tensor([[1, 1, 1, 0]] * 4)
ADVANTAGES = torch.tensor([[1.0, 2.0, 3.0, 9.0], [-1.0, 0.0, 4.0, 9.0], [0.5, 0.5, -2.0, 9.0], [2.0, -3.0, 1.0, 9.0]])
RETURNS = torch.tensor([[2.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, 9.0], [0.0, 0.0, -1.0, 9.0], [1.0, 1.0, 1.0, 9.0]])
# By hand over the 12 real tokens: advantages sum to 6 + 3 - 1 + 0 = 8, so -mean(A) = -2/3; the squared
# returns sum to 4 + 1 + 1 + 3 = 9, so the value loss at V = V_old = 0 is 0.5 * 9/12 = 0.375.
POLICY_LOSS_AT_RATIO_1 = -8 / 12
VALUE_LOSS_AT_V0 = 0.5 * 9 / 12


def ppo_config(**overrides) -> PPOParams:
    """The tiny profile's ppo section, one rollout of 4, with `overrides`."""
    section = {
        **tiny_params()["ppo"],
        "rollout_batch_size": 4,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "ppo_epochs": 1,
        **overrides,
    }
    return PPOParams.model_validate(section)


def fixed_rollout(policy, vocab_size: int, config: PPOParams) -> Rollout:
    """Queries and responses of seeded random tokens; old log-probs are the policy's own (so the first
    micro-batch's ratio is exactly 1), V_old = 0 (the critic's zero-initialised head)."""
    generator = torch.Generator().manual_seed(0)
    query_ids = torch.randint(3, vocab_size, (4, 5), generator=generator)
    response_ids = torch.randint(3, vocab_size, (4, 4), generator=generator)
    query_mask = torch.ones_like(query_ids)
    with torch.no_grad():
        logprobs, _ = forward_response(
            policy, query_ids, query_mask, response_ids, MASK, temperature=config.temperature
        )
    return Rollout(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=MASK,
        logprobs=logprobs,
        values=torch.zeros(4, 4),
        advantages=ADVANTAGES.clone(),
        returns=RETURNS.clone(),
    )


def actor_and_critic(tokenizer):
    from robust_rlhf.models import build_tiny_policy

    policy = build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa")
    critic = ValueModel(build_tiny_policy(tokenizer, seed=1, attn_implementation="sdpa").model)
    return PlainEngine(policy, lr=1e-2), PlainEngine(critic, lr=1e-2)


def test_one_micro_batch_at_ratio_1_gives_minus_the_mean_advantage(tiny_tokenizer):
    config = ppo_config()
    actor, critic = actor_and_critic(tiny_tokenizer)
    rollout = fixed_rollout(actor.module, len(tiny_tokenizer), config)
    stats = ppo_update(0, actor, critic, rollout, config)
    # One micro-batch, one epoch: the returned losses are those of the first micro-batch, before any step.
    assert stats["loss/policy"] == pytest.approx(POLICY_LOSS_AT_RATIO_1, abs=1e-6)
    assert stats["loss/value"] == pytest.approx(VALUE_LOSS_AT_V0, abs=1e-6)
    assert stats["policy/clipfrac"] == 0.0 and stats["critic/clipfrac"] == 0.0
    assert stats["policy/approx_kl_to_old"] == pytest.approx(0.0, abs=1e-10)


def test_an_epoch_moves_the_weights_and_zero_epochs_are_refused(tiny_tokenizer):
    # ppo_epochs >= 1 is validated, so "zero epochs leave the weights unchanged" cannot be reached by a
    # run: it is tested as the refusal, and one epoch as the update that does move every weight it trains.
    with pytest.raises(pydantic.ValidationError, match="ppo_epochs"):
        ppo_config(ppo_epochs=0)
    config = ppo_config()
    actor, critic = actor_and_critic(tiny_tokenizer)
    rollout = fixed_rollout(actor.module, len(tiny_tokenizer), config)
    actor_before = {name: p.detach().clone() for name, p in actor.module.named_parameters()}
    critic_before = {name: p.detach().clone() for name, p in critic.module.named_parameters()}
    ppo_update(0, actor, critic, rollout, config)
    unchanged = [name for name, p in actor.module.named_parameters() if torch.equal(p, actor_before[name])]
    assert unchanged == []
    # The critic's head starts at 0, so the first step's gradient reaches the head only, not the backbone.
    critic_now = dict(critic.module.named_parameters())
    assert not torch.equal(critic_now["value_head.weight"], critic_before["value_head.weight"])
    assert not torch.equal(critic_now["value_head.bias"], critic_before["value_head.bias"])
    assert all(
        torch.equal(critic_now[name], before) for name, before in critic_before.items() if name.startswith("backbone.")
    )


@pytest.mark.slow
def test_two_accumulated_micro_batches_give_the_weights_of_one_twice_as_large(tmp_path):
    # In a subprocess: DeepSpeed engines join a process group, which must not outlive the test. Two epochs,
    # so the second optimizer step's Adam moments depend on the gradients' sizes, not only their signs.
    # micro 2 without accumulation (two optimizer steps per epoch) is the control that must differ.
    script = textwrap.dedent("""
        import torch
        from robust_rlhf.config import DeepSpeedParams, LRScheduleParams
        from robust_rlhf.data.task import tokenizer_corpus
        from robust_rlhf.models import build_tiny_policy, build_tiny_tokenizer
        from robust_rlhf.rl.ppo import ValueModel, ppo_update
        from robust_rlhf.runtime.distributed import full_state_dict, init_distributed, training_engine
        from tests.rl.test_ppo_update import fixed_rollout, ppo_config
        init_distributed()
        tokenizer = build_tiny_tokenizer(tokenizer_corpus())

        def trained(micro_batch_size, gradient_accumulation_steps):
            config = ppo_config(micro_batch_size=micro_batch_size, ppo_epochs=2,
                                gradient_accumulation_steps=gradient_accumulation_steps)
            deepspeed = DeepSpeedParams(zero_stage=0, precision="fp32", gradient_clipping=1.0,
                                        offload_optimizer="none", offload_param="none")
            engines = [training_engine(model, deepspeed=deepspeed, micro_batch_size=micro_batch_size,
                                       gradient_accumulation_steps=gradient_accumulation_steps, world_size=1,
                                       learning_rate=1e-2, weight_decay=0.0, total_steps=config.optimizer_steps,
                                       lr_schedule=LRScheduleParams(kind="constant", warmup_steps=0,
                                                                    final_fraction=1.0))
                       for model in (build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa"),
                                     ValueModel(build_tiny_policy(tokenizer, seed=1,
                                                                  attn_implementation="sdpa").model))]
            torch.manual_seed(5)  # the minibatch order's seed: the same permutations in every run
            ppo_update(0, *engines, fixed_rollout(engines[0].module, len(tokenizer), config), config)
            return [full_state_dict(engine) for engine in engines]

        one, accumulated, stepped = trained(4, 1), trained(2, 2), trained(2, 1)
        for a, b in zip(one, accumulated):
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
        assert any(not torch.allclose(one[0][name], stepped[0][name], rtol=1e-4, atol=1e-5) for name in one[0])
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:]
    )

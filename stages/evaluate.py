"""DVC stage `evaluate`: the initial and the final policy on held-out prompts, under the gold scorer
and the proxy reward model, with KL to the reference (the initial policy).

Writes --metrics (initial, final and their difference) and --samples (every scored response).
"""

from __future__ import annotations

from pathlib import Path

from robust_rlhf.atomic import atomic_write_jsonl, read_jsonl
from robust_rlhf.config import Params
from robust_rlhf.distributed import deepspeed_config, init_distributed, initialize_engine
from robust_rlhf.evaluation import evaluate_policy
from robust_rlhf.models import load_causal_lm, load_tokenizer
from robust_rlhf.reward_model import load_reward_model
from robust_rlhf.stage_cli import stage_main


def run(params: Params, *, data: Path, policy_init: Path, policy: Path, reward: Path, samples: Path) -> dict:
    config, remote = params.evaluate, params.models.trust_remote_code
    world_size = init_distributed()
    frozen_config = deepspeed_config(deepspeed=params.deepspeed, micro_batch_size=config.batch_size,
                                     gradient_accumulation_steps=1, world_size=world_size, learning_rate=None)
    frozen = lambda model: initialize_engine(model.eval(), frozen_config).module  # noqa: E731
    tokenizer = load_tokenizer(policy_init, trust_remote_code=remote)
    ref_model = frozen(load_causal_lm(policy_init, trust_remote_code=remote))
    reward_model, reward_tokenizer = load_reward_model(reward, trust_remote_code=remote)
    reward_model = frozen(reward_model)
    prompts = [row["prompt"] for row in read_jsonl(data / "eval_prompts.jsonl")]
    common = dict(samples_per_prompt=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
                  temperature=config.temperature, batch_size=config.batch_size, gold=params.prepare.gold,
                  max_prompt_tokens=params.prepare.max_prompt_tokens, ppo_config=params.ppo, seed=params.seed)

    results = {"initial": evaluate_policy(ref_model, ref_model, tokenizer, reward_model, reward_tokenizer, prompts,
                                          desc="evaluate initial policy", **common)}
    final_policy = frozen(load_causal_lm(policy, trust_remote_code=remote))
    results["final"] = evaluate_policy(final_policy, ref_model, tokenizer, reward_model, reward_tokenizer, prompts,
                                       desc=f"evaluate {params.ppo.method} policy", **common)
    atomic_write_jsonl(samples, [{"policy": name, **row} for name, result in results.items()
                                 for row in result["samples"]])
    initial, final = results["initial"]["metrics"], results["final"]["metrics"]
    return {
        "method": params.ppo.method,
        "initial": initial,
        "final": final,
        "gain": {"gold": final["gold"] - initial["gold"],
                 "proxy": final["proxy"][params.ppo.method] - initial["proxy"][params.ppo.method]},
    }


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate", run, ["data", "policy_init", "policy", "reward", "samples"], argv)


if __name__ == "__main__":
    main()

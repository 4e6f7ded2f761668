"""DVC stage `evaluate`: every method's policy checkpoints and the initial policy on held-out prompts,
under the gold scorer and the proxy reward models, with KL to the reference (the initial policy).

Writes one metrics file per method to --table (so `dvc metrics show` has a row per method), the
initial policy's to --metrics, gold/proxy-vs-sqrt(KL) curves per method to --curves, and every
scored response to --samples.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from robust_rlhf.atomic import atomic_directory, atomic_write_jsonl, read_jsonl
from robust_rlhf.checkpoint import MANIFEST, read_checkpoints
from robust_rlhf.config import Params
from robust_rlhf.distributed import deepspeed_config, init_distributed, initialize_engine
from robust_rlhf.evaluation import evaluate_policy
from robust_rlhf.gold import GoldScorer
from robust_rlhf.metrics import write_csv, write_metrics
from robust_rlhf.models import load_causal_lm, load_tokenizer
from robust_rlhf.reward_scoring import load_reward_models
from robust_rlhf.stage_cli import stage_main

logger = logging.getLogger(__name__)


def run(params: Params, *, data: Path, policy_init: Path, policies: Path, reward: Path, ensemble: Path,
        table: Path, curves: Path, samples: Path) -> dict:
    config, remote = params.evaluate, params.models.trust_remote_code
    world_size = init_distributed()
    frozen_config = deepspeed_config(deepspeed=params.deepspeed, micro_batch_size=config.batch_size,
                                     gradient_accumulation_steps=1, world_size=world_size, learning_rate=None)
    frozen = lambda model: initialize_engine(model.eval().requires_grad_(False), frozen_config).module  # noqa: E731
    tokenizer = load_tokenizer(policy_init, trust_remote_code=remote)
    ref_model = frozen(load_causal_lm(policy_init, trust_remote_code=remote))
    reward_models = load_reward_models(reward, ensemble, trust_remote_code=remote, prepare=frozen)
    prompts = [row["prompt"] for row in read_jsonl(data / "eval_prompts.jsonl")]
    gold = GoldScorer(params.gold, reference_model=ref_model, tokenizer=tokenizer,
                      max_prompt_tokens=params.prepare.max_prompt_tokens, batch_size=config.batch_size)

    def evaluate(policy, desc: str) -> dict:
        # The same seed for every policy: methods are compared on the same prompts and sampling noise.
        return evaluate_policy(policy, ref_model, tokenizer, reward_models, prompts, methods=params.methods,
                               samples_per_prompt=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, batch_size=config.batch_size,
                               max_prompt_tokens=params.prepare.max_prompt_tokens, gold=gold,
                               ppo_config=params.ppo, seed=params.seed, desc=desc)

    initial = evaluate(ref_model, "evaluate initial policy")
    all_samples = [{"method": "initial", "step": 0, **row} for row in initial["samples"]]
    curve_rows: dict[str, list[dict]] = {}
    final_rows: dict[str, dict] = {}
    # A flow run may train a subset of the methods (`--methods`): evaluate those, and say which not.
    not_run = [method for method in params.methods if not (policies / method / MANIFEST).exists()]
    for method in not_run:
        logger.warning("method %s has no PPO checkpoints under %s: not evaluated", method, policies / method)
    for method in (m for m in params.methods if m not in not_run):
        curve_rows[method] = [_curve_point(0, initial["metrics"], method)]
        for checkpoint in read_checkpoints(policies / method):
            policy = frozen(load_causal_lm(policies / method / checkpoint["path"], trust_remote_code=remote))
            result = evaluate(policy, f"evaluate {method} step {checkpoint['step']}")
            del policy
            gc.collect()
            curve_rows[method].append(_curve_point(checkpoint["step"], result["metrics"], method))
            all_samples += [{"method": method, "step": checkpoint["step"], **row} for row in result["samples"]]
        final = result["metrics"]
        final_rows[method] = {
            "reward_model": params.methods[method].reward_model, "aggregation": params.methods[method].aggregation,
            "steps": checkpoint["step"], "gold": final["gold"], "gold_gain": final["gold"] - initial["metrics"]["gold"],
            "proxy": final["proxy"][method], "proxy_gain": final["proxy"][method] - initial["metrics"]["proxy"][method],
            "kl_k1": final["kl_k1"], "kl_k2": final["kl_k2"], "sqrt_kl": final["sqrt_kl"],
        }

    with atomic_directory(table) as table_tmp:
        for method, row in final_rows.items():
            write_metrics(table_tmp / f"{method}.json", row)
    with atomic_directory(curves) as curves_tmp:
        for method, rows in curve_rows.items():
            write_csv(curves_tmp / f"{method}.csv", rows)
    atomic_write_jsonl(samples, all_samples)
    if not final_rows:
        raise FileNotFoundError(f"no method under {policies} has PPO checkpoints; run the ppo stages first")
    return {"initial": initial["metrics"], "best_gold_method": max(final_rows, key=lambda m: final_rows[m]["gold"]),
            "methods_not_run": not_run}


def _curve_point(step: int, metrics: dict, method: str) -> dict:
    return {"step": step, "sqrt_kl": metrics["sqrt_kl"], "kl_k2": metrics["kl_k2"], "gold": metrics["gold"],
            "proxy": metrics["proxy"][method]}


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate", run, ["data", "policy_init", "policies", "reward", "ensemble", "table", "curves",
                                 "samples"], argv)


if __name__ == "__main__":
    main()

"""DVC stage `evaluate`: every method's policy checkpoints (every PPO seed) and the initial policy on
held-out prompts, under the gold scorer and the proxy reward models, with KL to the reference (the
initial policy); best-of-n from the initial policy picked by each method's reward.

Writes one metrics file per method to --table (so `dvc metrics show` has a row per method), the
initial policy's to --metrics, gold/proxy-vs-sqrt(KL) curves per method and seed to --curves,
best-of-n curves per method to --best-of-n, and every scored response to --samples.
"""

from __future__ import annotations

import gc
import logging
import math
from pathlib import Path

import torch

from robust_rlhf.atomic import atomic_directory, atomic_write_jsonl, read_jsonl
from robust_rlhf.checkpoint import MANIFEST, read_checkpoints
from robust_rlhf.config import Params, policy_run_name
from robust_rlhf.curves import best_of_n_expected_gold, best_of_n_kl, mean_and_spread, win_rate
from robust_rlhf.distributed import deepspeed_config, init_distributed, initialize_engine
from robust_rlhf.evaluation import evaluate_policy
from robust_rlhf.gold import GoldScorer
from robust_rlhf.metrics import write_csv, write_metrics
from robust_rlhf.models import load_causal_lm, load_tokenizer
from robust_rlhf.reward_scoring import load_reward_models
from robust_rlhf.stage_cli import stage_main
from robust_rlhf.statistics import ClusterBootstrap, bootstrap_ratio_of_means, cluster_ids

logger = logging.getLogger(__name__)


def run(params: Params, *, data: Path, policy_init: Path, policies: Path, reward: Path, ensemble: Path,
        table: Path, curves: Path, best_of_n: Path, samples: Path) -> dict:
    config, remote = params.evaluate, params.models.trust_remote_code
    world_size = init_distributed()
    frozen_config = deepspeed_config(deepspeed=params.deepspeed, micro_batch_size=config.batch_size,
                                     gradient_accumulation_steps=1, world_size=world_size, learning_rate=None)
    frozen = lambda model: initialize_engine(model.eval().requires_grad_(False), frozen_config).module  # noqa: E731
    tokenizer = load_tokenizer(policy_init, trust_remote_code=remote)
    ref_model = frozen(load_causal_lm(policy_init, trust_remote_code=remote))
    reward_models = load_reward_models(reward, ensemble, trust_remote_code=remote, prepare=frozen)
    prompts = [row["prompt"] for row in read_jsonl(data / "eval_prompts.jsonl")]
    bootstrap = ClusterBootstrap(params.statistics.bootstrap_resamples, params.statistics.confidence_level, params.seed)
    gold = GoldScorer(params.gold, reference_model=ref_model, tokenizer=tokenizer,
                      max_prompt_tokens=params.prepare.max_prompt_tokens, batch_size=config.batch_size)

    def evaluate(policy, desc: str, samples_per_prompt: int) -> dict:
        # The same seed for every policy: methods are compared on the same prompts and sampling noise.
        return evaluate_policy(policy, ref_model, tokenizer, reward_models, prompts, methods=params.methods,
                               samples_per_prompt=samples_per_prompt, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, batch_size=config.batch_size,
                               max_prompt_tokens=params.prepare.max_prompt_tokens, gold=gold,
                               ppo_config=params.ppo, seed=params.seed, desc=desc)

    # The initial policy gets N = max(samples_per_prompt, best_of_n) samples per prompt: the first
    # `best_of_n` feed the best-of-n curves, the first `samples_per_prompt` pair with each policy's
    # samples for the win rate.
    per_prompt = max(config.samples_per_prompt, config.best_of_n)
    initial = evaluate(ref_model, "evaluate initial policy", per_prompt)
    initial_gold = initial["gold"].view(len(prompts), per_prompt)
    paired_initial_gold = initial_gold[:, :config.samples_per_prompt].reshape(-1)
    all_samples = [{"method": "initial", "seed": params.seed, "step": 0, **row} for row in initial["samples"]]

    # A flow run may train a subset of the methods or seeds: evaluate what ran, and say what not.
    runs = {method: [seed for seed in params.ppo_seeds
                     if (policies / policy_run_name(method, seed) / MANIFEST).exists()] for method in params.methods}
    not_run = [policy_run_name(m, s) for m in params.methods for s in params.ppo_seeds if s not in runs[m]]
    for name in not_run:
        logger.warning("%s has no PPO checkpoints under %s: not evaluated", name, policies)

    best_of_n_rows: dict[str, list[dict]] = {}
    curve_rows: dict[str, list[dict]] = {}
    final_rows: dict[str, dict] = {}
    for method in (m for m in params.methods if runs[m]):
        best_of_n_rows[method] = best_of_n_curve(initial_gold[:, :config.best_of_n],
                                                 initial["proxy"][method].view(len(prompts), per_prompt)[:, :config.best_of_n])
        finals: list[dict] = []
        for seed in runs[method]:
            name = policy_run_name(method, seed)
            rows = curve_rows[name] = [_curve_point(0, initial["metrics"], method, win=0.5)]
            for checkpoint in read_checkpoints(policies / name):
                policy = frozen(load_causal_lm(policies / name / checkpoint["path"], trust_remote_code=remote))
                result = evaluate(policy, f"evaluate {name} step {checkpoint['step']}", config.samples_per_prompt)
                del policy
                gc.collect()
                rows.append(_curve_point(checkpoint["step"], result["metrics"], method,
                                         win=win_rate(result["gold"], paired_initial_gold)))
                all_samples += [{"method": method, "seed": seed, "step": checkpoint["step"], **row}
                                for row in result["samples"]]
            finals.append({**result, "step": checkpoint["step"]})
        final_rows[method] = {**_method_row(params, method, finals, initial, paired_initial_gold, best_of_n_rows[method]),
                              **disagreement_ratios(finals, initial, prompts, samples_per_prompt=config.samples_per_prompt,
                                                    per_prompt=per_prompt, bootstrap=bootstrap)}

    with atomic_directory(table) as table_tmp:
        for method, row in final_rows.items():
            write_metrics(table_tmp / f"{method}.json", row)
    with atomic_directory(curves) as curves_tmp:
        for name, rows in curve_rows.items():
            write_csv(curves_tmp / f"{name}.csv", rows)
    with atomic_directory(best_of_n) as best_of_n_tmp:
        for method, rows in best_of_n_rows.items():
            write_csv(best_of_n_tmp / f"{method}.csv", rows)
    atomic_write_jsonl(samples, all_samples)
    if not final_rows:
        raise FileNotFoundError(f"no method under {policies} has PPO checkpoints; run the ppo stages first")
    return {"initial": initial["metrics"], "best_gold_method": max(final_rows, key=lambda m: final_rows[m]["gold"]),
            "runs_not_evaluated": not_run}


def best_of_n_curve(gold: torch.Tensor, proxy: torch.Tensor) -> list[dict]:
    """Rows n = 1..N: KL, sqrt(KL), expected gold and proxy of the proxy's pick among n samples."""
    rows = []
    for n in range(1, gold.shape[1] + 1):
        kl = best_of_n_kl(n)
        rows.append({"n": n, "kl": kl, "sqrt_kl": math.sqrt(kl), "gold": best_of_n_expected_gold(gold, proxy, n),
                     "proxy": best_of_n_expected_gold(proxy, proxy, n)})
    return rows


def disagreement_ratios(finals: list[dict], initial: dict, prompts: list[str], *, samples_per_prompt: int,
                        per_prompt: int, bootstrap: ClusterBootstrap) -> dict:
    """Off-distribution head disagreement of each multi-head reward model: its mean disagreement on
    the final policies' samples over that on the initial policy's paired samples (same prompts, same
    sample index), with a cluster-bootstrap interval over prompts; seeds pooled."""
    ratios = {}
    sample_prompts = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    for kind, initial_disagreement in initial["disagreement"].items():
        paired = initial_disagreement.view(len(prompts), per_prompt)[:, :samples_per_prompt].reshape(-1)
        final = torch.cat([result["disagreement"][kind] for result in finals])
        ratios[f"{kind}_disagreement_ratio"] = bootstrap_ratio_of_means(
            final, paired.repeat(len(finals)), cluster_ids(sample_prompts * len(finals)),
            num_resamples=bootstrap.num_resamples, seed=bootstrap.seed, level=bootstrap.level).as_dict()
    return ratios


def _curve_point(step: int, metrics: dict, method: str, *, win: float) -> dict:
    return {"step": step, "sqrt_kl": metrics["sqrt_kl"], "kl_k2": metrics["kl_k2"], "gold": metrics["gold"],
            "proxy": metrics["proxy"][method], "win_rate": win}


def _method_row(params: Params, method: str, finals: list[dict], initial: dict, paired_initial_gold: torch.Tensor,
                best_of_n_rows: list[dict]) -> dict:
    """One row of the comparison table: the last checkpoint of every seed, averaged over seeds."""
    mean = lambda values: mean_and_spread(values)[0]  # noqa: E731
    gold_values = [final["metrics"]["gold"] for final in finals]
    proxy_values = [final["metrics"]["proxy"][method] for final in finals]
    pooled_gold = torch.cat([final["gold"] for final in finals])
    gold_mean, gold_seed_std = mean_and_spread(gold_values)
    return {
        "reward_model": params.methods[method].reward_model, "aggregation": params.methods[method].aggregation,
        "seeds": len(finals), "steps": finals[0]["step"],
        "gold": gold_mean, "gold_seed_std": gold_seed_std,
        "gold_standard_error": float(pooled_gold.std(unbiased=True) / math.sqrt(pooled_gold.numel()))
        if pooled_gold.numel() > 1 else 0.0,
        "gold_gain": gold_mean - initial["metrics"]["gold"],
        "win_rate": mean([win_rate(final["gold"], paired_initial_gold) for final in finals]),
        "proxy": mean(proxy_values), "proxy_gain": mean(proxy_values) - initial["metrics"]["proxy"][method],
        "kl_k1": mean([final["metrics"]["kl_k1"] for final in finals]),
        "kl_k2": mean([final["metrics"]["kl_k2"] for final in finals]),
        "sqrt_kl": mean([final["metrics"]["sqrt_kl"] for final in finals]),
        "best_of_n": best_of_n_rows[-1]["n"], "best_of_n_gold": best_of_n_rows[-1]["gold"],
        "best_of_n_sqrt_kl": best_of_n_rows[-1]["sqrt_kl"],
    }


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate", run, ["data", "policy_init", "policies", "reward", "ensemble", "table", "curves",
                                 "best_of_n", "samples"], argv)


if __name__ == "__main__":
    main()

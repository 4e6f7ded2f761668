"""The `evaluate` run: the initial policy and every method's PPO checkpoints on held-out prompts,
the best-of-n study, and the paired comparisons the report states (docs/study.md).

- Final checkpoints and the initial policy: every held-out prompt x `samples_per_prompt`, the same
  sampling seed for every policy (common random numbers), so each method is compared with the
  initial policy and brme with each baseline *paired by prompt and sample*, with a cluster
  bootstrap over prompts (PPO seeds as replicates) and Holm's correction within each family.
- Earlier checkpoints: the first `curve_prompts` prompts (the curves' shape, not the headline).
- Best-of-n: `best_of_n` samples per prompt from the initial policy on the first
  `best_of_n_prompts` prompts, scored once; each method picks by its own reward.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from robust_rlhf.config import Params, policy_run_name
from robust_rlhf.data.gold import GoldScorer
from robust_rlhf.evaluation.curves import best_of_n_grid, best_of_n_kl, best_of_n_per_prompt, mean_and_spread, win_rate
from robust_rlhf.evaluation.early_warning import early_warning_table
from robust_rlhf.evaluation.policy import evaluate_policy
from robust_rlhf.generation import for_sampling
from robust_rlhf.models import load_causal_lm, load_tokenizer, model_options
from robust_rlhf.reward.pretrained import read_run_affines, score_key, used_reward_models
from robust_rlhf.reward.scoring import load_reward_models
from robust_rlhf.rl.monitor import MONITOR_FILE
from robust_rlhf.runtime.atomic import atomic_directory, atomic_write_jsonl, read_jsonl
from robust_rlhf.runtime.checkpoint import MANIFEST, read_checkpoints
from robust_rlhf.runtime.distributed import frozen_model, init_distributed
from robust_rlhf.runtime.metrics import write_csv, write_metrics
from robust_rlhf.statistics import (
    ClusterBootstrap,
    bootstrap_mean,
    bootstrap_ratio_of_means,
    cluster_ids,
    holm_adjust,
    paired_difference,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluatePaths:
    data: Path
    policy_init: Path
    policies: Path
    reward: Path
    ensemble: Path
    table: Path
    curves: Path
    best_of_n: Path
    samples: Path


def run_evaluate(params: Params, paths: EvaluatePaths) -> dict:
    config, remote = params.evaluate, params.models.trust_remote_code
    world_size = init_distributed()

    def frozen(model: torch.nn.Module) -> torch.nn.Module:
        return frozen_model(
            model, deepspeed=params.deepspeed, micro_batch_size=config.batch_size, world_size=world_size
        )

    tokenizer = load_tokenizer(paths.policy_init, trust_remote_code=remote)
    ref_model = frozen(
        for_sampling(
            load_causal_lm(paths.policy_init, **model_options(params)),
            small_batch_linear=params.models.small_batch_linear,
        )
    )
    reward_models = load_reward_models(
        paths.reward,
        paths.ensemble,
        **model_options(params),
        prepare=frozen,
        pretrained=used_reward_models(params.methods, params.reward_models),
    )
    # A mixture is scored with the affine its PPO runs fitted on the initial policy's samples.
    reward_models.mixtures.update(
        read_run_affines(paths.policies, [policy_run_name(m, s) for m in params.methods for s in params.ppo_seeds])
    )
    prompts = [row["prompt"] for row in read_jsonl(paths.data / "eval_prompts.jsonl")]
    curve_prompts, bon_prompts = prompts[: config.curve_prompts], prompts[: config.best_of_n_prompts]
    bootstrap = ClusterBootstrap(params.statistics.bootstrap_resamples, params.statistics.confidence_level, params.seed)
    gold = GoldScorer(
        params.gold,
        reference_model=ref_model,
        tokenizer=tokenizer,
        max_prompt_tokens=params.prepare.max_prompt_tokens,
        batch_size=config.batch_size,
    )

    def evaluate(policy, desc: str, on: list[str], samples_per_prompt: int) -> dict:
        # The same seed for every policy: methods are compared on the same prompts and sampling noise.
        return evaluate_policy(
            policy,
            ref_model,
            tokenizer,
            reward_models,
            on,
            methods=params.methods,
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            batch_size=config.batch_size,
            max_prompt_tokens=params.prepare.max_prompt_tokens,
            gold=gold,
            aggregation=params.aggregation,
            seed=params.seed,
            desc=desc,
        )

    spp = config.samples_per_prompt
    initial = evaluate(ref_model, "evaluate initial policy", prompts, spp)
    all_samples = [{"method": "initial", "seed": params.seed, "step": 0, **row} for row in initial["samples"]]
    best_of_n_pool = evaluate(ref_model, "best-of-n samples", bon_prompts, config.best_of_n)

    # A flow run may train a subset of the methods or seeds: evaluate what ran, and say what not.
    runs = {
        method: [
            seed for seed in params.ppo_seeds if (paths.policies / policy_run_name(method, seed) / MANIFEST).exists()
        ]
        for method in params.methods
    }
    not_run = [policy_run_name(m, s) for m in params.methods for s in params.ppo_seeds if s not in runs[m]]
    for name in not_run:
        logger.warning("%s has no PPO checkpoints under %s: not evaluated", name, paths.policies)

    curve_rows: dict[str, list[dict]] = {}
    finals: dict[str, list[dict]] = {}
    for method in (m for m in params.methods if runs[m]):
        finals[method] = []
        for seed in runs[method]:
            name = policy_run_name(method, seed)
            rows = curve_rows[name] = [curve_point(0, _head(initial, len(curve_prompts) * spp), method)]
            checkpoints = read_checkpoints(paths.policies / name)
            for index, checkpoint in enumerate(checkpoints):
                last = index == len(checkpoints) - 1
                saved = paths.policies / name / checkpoint["path"]
                policy = frozen(
                    for_sampling(
                        load_causal_lm(saved, **model_options(params)),
                        small_batch_linear=params.models.small_batch_linear,
                    )
                )
                result = evaluate(
                    policy, f"evaluate {name} step {checkpoint['step']}", prompts if last else curve_prompts, spp
                )
                del policy
                gc.collect()
                rows.append(curve_point(checkpoint["step"], _head(result, len(curve_prompts) * spp), method))
                all_samples += [
                    {"method": method, "seed": seed, "step": checkpoint["step"], **row} for row in result["samples"]
                ]
            finals[method].append({**result, "step": checkpoint["step"]})

    best_of_n_rows = {
        method: best_of_n_curve(best_of_n_pool, method, bootstrap, config.best_of_n, bon_prompts) for method in finals
    }
    comparisons = compare_methods(finals, initial, prompts, spp, bootstrap)
    # Each run's monitor warnings against the step at which its gold fell while its proxy rose.
    early_warning = {
        method: {
            str(seed): early_warning_table(
                curve_rows[policy_run_name(method, seed)],
                json.loads((paths.policies / policy_run_name(method, seed) / MONITOR_FILE).read_text()),
            )
            for seed in seeds
            if (paths.policies / policy_run_name(method, seed) / MONITOR_FILE).exists()
        }
        for method, seeds in runs.items()
        if seeds
    }
    table = {
        method: method_row(
            params, method, results, initial, comparisons, best_of_n_rows[method], prompts, spp, bootstrap
        )
        for method, results in finals.items()
    }
    with atomic_directory(paths.table) as table_tmp:
        for method, row in table.items():
            write_metrics(table_tmp / f"{method}.json", row)
    with atomic_directory(paths.curves) as curves_tmp:
        for name, rows in curve_rows.items():
            write_csv(curves_tmp / f"{name}.csv", rows)
    with atomic_directory(paths.best_of_n) as best_of_n_tmp:
        for method, rows in best_of_n_rows.items():
            write_csv(best_of_n_tmp / f"{method}.csv", rows)
    atomic_write_jsonl(paths.samples, all_samples)
    if not finals:
        raise FileNotFoundError(f"no method under {paths.policies} has PPO checkpoints; run the ppo stages first")
    return {
        "initial": initial["metrics"],
        "comparisons": comparisons,
        "runs_not_evaluated": not_run,
        "prompts": {"final": len(prompts), "curves": len(curve_prompts), "best_of_n": len(bon_prompts)},
        "near_identical_objectives": near_identical_objectives(params),
        "early_warning": early_warning,
    }


def _head(result: dict, rows: int) -> dict:
    """The metrics of `result`'s first `rows` samples (the curves' prompts), from its per-sample tensors."""
    kl = result["kl"][:rows]
    return {
        "gold": float(result["gold"][:rows].mean()),
        "kl": float(kl.mean()),
        "sqrt_kl": math.sqrt(max(float(kl.mean()), 0.0)),
        "proxy": {name: float(value[:rows].mean()) for name, value in result["proxy"].items()},
        "disagreement": {kind: float(value[:rows].mean()) for kind, value in result["disagreement"].items()},
        "facets": {name: float(value[:rows].mean()) for name, value in result["facets"].items()},
    }


def curve_point(step: int, metrics: dict, method: str) -> dict:
    """One row of a PPO curve: gold, the method's proxy, facets and head disagreement vs sqrt(KL)."""
    return {
        "step": step,
        "kl": metrics["kl"],
        "sqrt_kl": metrics["sqrt_kl"],
        "gold": metrics["gold"],
        "proxy": metrics["proxy"][method],
        **{f"gold_{name}": value for name, value in metrics["facets"].items()},
        **{f"disagreement_{kind}": value for kind, value in metrics["disagreement"].items()},
    }


def best_of_n_curve(
    pool: dict, method: str, bootstrap: ClusterBootstrap, samples: int, prompts: list[str]
) -> list[dict]:
    """Rows over the n grid: KL bound, expected gold (with its interval over prompts), the picker's
    proxy and the BRME's head disagreement of the pick."""
    shape = (len(prompts), samples)
    gold, proxy = pool["gold"].view(shape), pool["proxy"][method].view(shape)
    clusters = torch.arange(len(prompts))
    rows = []
    for n in best_of_n_grid(samples):
        kl = best_of_n_kl(n)
        interval = bootstrap_mean(
            best_of_n_per_prompt(gold, proxy, n),
            clusters,
            num_resamples=bootstrap.num_resamples,
            seed=bootstrap.seed,
            level=bootstrap.level,
        )
        row = {
            "n": n,
            "kl": kl,
            "sqrt_kl": math.sqrt(kl),
            "gold": interval.estimate,
            "gold_ci_low": interval.low,
            "gold_ci_high": interval.high,
            "proxy": float(best_of_n_per_prompt(proxy, proxy, n).mean()),
        }
        for kind, disagreement in pool["disagreement"].items():
            row[f"disagreement_{kind}"] = float(best_of_n_per_prompt(disagreement.view(shape), proxy, n).mean())
        rows.append(row)
    return rows


def _stacked(results: list[dict], key: str, prompts: int, spp: int) -> torch.Tensor:
    """(K seeds, P prompts, S samples) of a per-sample tensor."""
    return torch.stack([result[key].view(prompts, spp) for result in results])


def compare_methods(
    finals: dict[str, list[dict]], initial: dict, prompts: list[str], spp: int, bootstrap: ClusterBootstrap
) -> dict:
    """Gold of every method vs the initial policy, and of brme vs every baseline: paired differences
    with intervals and p-values, Holm-adjusted within each family."""
    settings = dict(num_resamples=bootstrap.num_resamples, seed=bootstrap.seed, level=bootstrap.level)
    control = initial["gold"].view(1, len(prompts), spp)
    families = {
        "vs_initial": {
            method: paired_difference(_stacked(results, "gold", len(prompts), spp), control, **settings)
            for method, results in finals.items()
        }
    }
    if "brme" in finals:
        brme = _stacked(finals["brme"], "gold", len(prompts), spp)
        families["brme_vs"] = {}
        for method, results in finals.items():
            other = _stacked(results, "gold", len(prompts), spp)
            if method != "brme" and other.shape == brme.shape:  # paired by seed too
                families["brme_vs"][method] = paired_difference(brme, other, **settings)
    out = {}
    for family, comparisons in families.items():
        adjusted = holm_adjust([c.p_value for c in comparisons.values()])
        out[family] = {name: {**c.as_dict(), "p_holm": p} for (name, c), p in zip(comparisons.items(), adjusted)}
    return out


def method_row(
    params: Params,
    method: str,
    results: list[dict],
    initial: dict,
    comparisons: dict,
    best_of_n_rows: list[dict],
    prompts: list[str],
    spp: int,
    bootstrap: ClusterBootstrap,
) -> dict:
    """One row of the comparison table: the last checkpoint of every seed (seeds pooled)."""
    mean = lambda values: mean_and_spread(values)[0]  # noqa: E731
    gold_mean, gold_seed_std = mean_and_spread([r["metrics"]["gold"] for r in results])
    paired_initial = initial["gold"]
    peak = max(best_of_n_rows, key=lambda row: row["gold"])
    return {
        "reward_model": params.methods[method].reward_model,
        "aggregation": params.methods[method].aggregation,
        "seeds": len(results),
        "steps": results[0]["step"],
        "prompts": len(prompts),
        "samples_per_prompt": spp,
        "gold": gold_mean,
        "gold_seed_std": gold_seed_std,
        "gold_gain": comparisons["vs_initial"][method]["value"],
        "gold_gain_interval": comparisons["vs_initial"][method],
        "facet_gains": {
            name: mean([r["metrics"]["facets"][name] for r in results]) - value
            for name, value in initial["metrics"]["facets"].items()
        },
        "win_rate": mean([win_rate(r["gold"], paired_initial) for r in results]),
        "proxy": mean([r["metrics"]["proxy"][method] for r in results]),
        "proxy_gain": mean([r["metrics"]["proxy"][method] for r in results]) - initial["metrics"]["proxy"][method],
        "kl": mean([r["metrics"]["kl"] for r in results]),
        "kl_k1": mean([r["metrics"]["kl_k1"] for r in results]),
        "sqrt_kl": mean([r["metrics"]["sqrt_kl"] for r in results]),
        "truncated": mean([r["metrics"]["truncated"] for r in results]),
        "best_of_n": best_of_n_rows[-1]["n"],
        "best_of_n_gold": best_of_n_rows[-1]["gold"],
        "best_of_n_peak_n": peak["n"],
        "best_of_n_peak_gold": peak["gold"],
        "best_of_n_peaks_before_n": peak["n"] < best_of_n_rows[-1]["n"],
        **disagreement_ratios(results, initial, prompts, spp, bootstrap),
    }


def disagreement_ratios(
    results: list[dict], initial: dict, prompts: list[str], spp: int, bootstrap: ClusterBootstrap
) -> dict:
    """Off-distribution head disagreement of each multi-head reward model: its mean disagreement on
    the final policies' samples over that on the initial policy's paired samples (same prompt, same
    sample index), with a cluster-bootstrap interval over prompts; seeds pooled."""
    sample_prompts = [prompt for prompt in prompts for _ in range(spp)]
    return {
        f"{kind}_disagreement_ratio": bootstrap_ratio_of_means(
            torch.cat([r["disagreement"][kind] for r in results]),
            initial_disagreement.repeat(len(results)),
            cluster_ids(sample_prompts * len(results)),
            num_resamples=bootstrap.num_resamples,
            seed=bootstrap.seed,
            level=bootstrap.level,
        ).as_dict()
        for kind, initial_disagreement in initial["disagreement"].items()
    }


def near_identical_objectives(params: Params) -> list[str]:
    """Methods whose objectives agree to second order: kl_dro at beta and uwo at c = 1 / (2 beta) on
    the same reward model (-beta log mean exp(-mu / beta) = mean - var / (2 beta) + O(beta^-2))."""
    coefficients = params.aggregation
    notes = []
    for dro, dro_method in params.methods.items():
        for uwo, uwo_method in params.methods.items():
            if (
                dro_method.aggregation == "kl_dro"
                and uwo_method.aggregation == "uwo"
                and score_key(dro_method) == score_key(uwo_method)
                and math.isclose(coefficients.uwo_coef, 1 / (2 * coefficients.kl_dro_beta))
            ):
                notes.append(
                    f"{dro} (kl_dro, beta {coefficients.kl_dro_beta}) and {uwo} (uwo, c "
                    f"{coefficients.uwo_coef}) optimise the same objective to second order"
                )
    return notes

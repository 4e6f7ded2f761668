"""What every benchmark runs on: the default profile's models, built by the library's own loader,
and the task's prompts. Built once per bench run into a work folder and shared with subprocesses.

The reward models get random heads (no `train_reward`): scoring and PPO cost do not depend on the
heads' values, and the bench must run on a fresh clone without the 37-minute default pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

from robust_rlhf.config import load_params
from robust_rlhf.data.task import all_prompts
from robust_rlhf.runtime.atomic import atomic_directory

POLICY_DIR = "policy_init"
REWARD_DIR = "reward"
ENSEMBLE_DIR = "reward_ensemble"


def default_params(repo: Path):
    """The validated params of the repo's default profile (params.yaml)."""
    return load_params(repo / "params.yaml")


def bench_prompts(count: int) -> list[str]:
    """`count` prompts of the default task, in the task's fixed order (cycled if too few)."""
    prompts = all_prompts()
    return [prompts[i % len(prompts)] for i in range(count)]


def build_policy(params, work: Path) -> Path:
    """The initial policy as safetensors (GGUF de-quantised once, as `prepare` does)."""
    from robust_rlhf.data.task import tokenizer_corpus
    from robust_rlhf.models import materialise_policy

    out = work / POLICY_DIR
    if not (out / "config.json").exists():
        with atomic_directory(out) as tmp:
            materialise_policy(
                params.models.policy,
                tmp,
                seed=params.seed,
                corpus=tokenizer_corpus(),
                trust_remote_code=params.models.trust_remote_code,
                attn_implementation=params.models.attn_implementation,
            )
    return out


def new_reward_model(backbone_spec: str, num_heads: int, *, max_length: int, seed: int, options: dict):
    """A BRME on a fresh copy of the backbone with `num_heads` random Gaussian heads; `options`: the
    loader keywords (robust_rlhf/models.py model_options)."""
    from robust_rlhf.models import load_backbone
    from robust_rlhf.reward.model import BRMERewardModel, RewardModelConfig, resolve_pooling

    backbone = load_backbone(backbone_spec, **options)
    config = RewardModelConfig(
        num_heads=num_heads, sigma_min=0.01, max_length=max_length, pooling=resolve_pooling("auto", backbone.config)
    )
    return BRMERewardModel(backbone, config, seed=seed).eval()


def build_reward_models(params, work: Path) -> tuple[Path, Path]:
    """The BRME (`train_reward.num_heads` heads) and the `ensemble_size` independent members, written
    as `train_reward` writes them, so `load_reward_models` reads them as in the ppo stage."""
    from robust_rlhf.models import load_tokenizer, model_options
    from robust_rlhf.reward.model import save_reward_model
    from robust_rlhf.reward.scoring import ENSEMBLE_MANIFEST

    config, spec, options = params.train_reward, params.models.reward_backbone, model_options(params)
    tokenizer = load_tokenizer(spec, padding_side="right")
    reward, ensemble = work / REWARD_DIR, work / ENSEMBLE_DIR
    if not (reward / "reward_config.json").exists():
        with atomic_directory(reward) as tmp:
            brme = new_reward_model(
                spec, config.num_heads, max_length=config.max_length, seed=params.seed, options=options
            )
            save_reward_model(brme, tokenizer, tmp, brme.state_dict())
    if not (ensemble / "ensemble.json").exists():
        with atomic_directory(ensemble) as tmp:
            names = [f"member_{index}" for index in range(config.ensemble_size)]
            for index, name in enumerate(names):
                member = new_reward_model(
                    spec, 0, max_length=config.max_length, seed=params.seed + 1 + index, options=options
                )
                save_reward_model(member, tokenizer, tmp / name, member.state_dict())
            (tmp / ENSEMBLE_MANIFEST).write_text(json.dumps({"members": names}))
    return reward, ensemble

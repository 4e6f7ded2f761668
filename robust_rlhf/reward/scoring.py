"""Scoring with every reward model a method can name, and the methods' rewards from those scores.

Reward-model kinds:
- `brme`: the BRME's k Gaussian heads, (mu, sigma) each (B, k);
- `single`: the BRME's stage-1 Bradley-Terry reward model, mu (B, 1) (the ordinary RLHF baseline);
- `ensemble`: M Bradley-Terry reward models (Coste et al.), mu (B, M), centred (and scaled) on the
  training responses: linear heads on the stage-1 backbone's frozen features, each on its own
  bootstrap resample (`layout: heads`, scored in the same backbone forward), or models fine-tuned
  apart, seeds apart (`layout: models`);
- `pretrained:<name>`: a reward model the pipeline does not train (params `reward_models:`), mu (B, 1), raw;
- `mixture:<members>`: a mixture's members centred and scaled on the initial policy's samples
  (robust_rlhf/reward/pretrained.py), once its affine is fitted.
Kinds without a learned sigma get sigma = 1, which no aggregation that applies to them reads (in a
mixture, NO_SIGMA: `nominal` then picks among the BRME's heads).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from robust_rlhf.config import AggregationParams, MethodParams, PretrainedRewardModelParams
from robust_rlhf.reward.aggregation import AGGREGATIONS, aggregate_rewards
from robust_rlhf.reward.model import BRMERewardModel, load_reward_model, score_texts
from robust_rlhf.reward.pretrained import (
    MIXTURE_PREFIX,
    PRETRAINED_PREFIX,
    MixtureAffine,
    PretrainedRewardModel,
    load_pretrained_reward_model,
    mixture_members,
    mixture_scores,
    score_key,
)

ENSEMBLE_MANIFEST = "ensemble.json"
MEMBER_HEADS_FILE = "member_heads.safetensors"  # layout `heads`: weight (M, H), bias (M,)
STAGE1_FOLDER = "stage1"  # inside the BRME's folder, when stage 2 retrained the backbone


@dataclass
class RewardModels:
    """The BRME (with its stage-1 head), the ensemble's members, and the stage-1 model when it is
    not the BRME's own backbone; one tokenizer. Pretrained members bring their own tokenizers, and each
    mixture with a fitted affine is scored from its members' scores."""

    brme: BRMERewardModel
    tokenizer: object
    ensemble: list[BRMERewardModel] = field(default_factory=list)  # members with backbones of their own
    stage1: BRMERewardModel | None = None
    pretrained: dict[str, PretrainedRewardModel] = field(default_factory=dict)
    mixtures: dict[str, MixtureAffine] = field(default_factory=dict)  # mixture kind -> its fitted affine

    @torch.inference_mode()
    def score(
        self, prompts: list[str], responses: list[str], *, batch_size: int
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(mu, sigma) of every reward-model kind for each (prompt, response); shapes (B, heads)."""
        brme = score_texts(self.brme, self.tokenizer, prompts, responses, batch_size=batch_size)
        stage1 = (
            brme
            if self.stage1 is None
            else score_texts(self.stage1, self.tokenizer, prompts, responses, batch_size=batch_size)
        )
        scores = {
            "brme": (brme["mu"], brme["sigma"]),
            "single": (stage1["bt_reward"][:, None], torch.ones_like(stage1["bt_reward"][:, None])),
        }
        if "members" in stage1:
            scores["ensemble"] = (stage1["members"], torch.ones_like(stage1["members"]))
        elif self.ensemble:
            members = [
                score_texts(member, self.tokenizer, prompts, responses, batch_size=batch_size)["bt_reward"]
                for member in self.ensemble
            ]
            mu = torch.stack(members, dim=1)
            scores["ensemble"] = (mu, torch.ones_like(mu))
        for name, member in self.pretrained.items():
            mu = member.score(prompts, responses, batch_size=batch_size)[:, None]
            scores[PRETRAINED_PREFIX + name] = (mu, torch.ones_like(mu))
        return self.with_mixtures(scores)

    def with_mixtures(
        self, scores: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """`scores` and, from them, every mixture whose affine is fitted."""
        return {**scores, **mixture_scores(scores, self.mixtures)}


def load_member_heads(ensemble_dir: Path) -> nn.Linear:
    """The ensemble's members of layout `heads` as one (H -> M) linear map."""
    from safetensors.torch import load_file

    state = load_file(str(Path(ensemble_dir) / MEMBER_HEADS_FILE))
    heads = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    heads.load_state_dict(state)
    return heads


def load_reward_models(
    brme_dir: Path,
    ensemble_dir: Path,
    *,
    trust_remote_code: bool,
    attn_implementation: str,
    dtype: torch.dtype,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model,
    pretrained: Mapping[str, PretrainedRewardModelParams] = {},  # noqa: B006 - read only
) -> RewardModels:
    """Load what `train_reward` wrote, backbones in `dtype` with `attn_implementation` (models.py
    `model_options`), and the `pretrained` members (never with remote code); `prepare` wraps each
    model (e.g. in a DeepSpeed inference engine)."""
    options = dict(trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, dtype=dtype)
    brme, tokenizer = load_reward_model(brme_dir, **options)
    stage1 = None
    if (Path(brme_dir) / STAGE1_FOLDER).exists():
        stage1 = load_reward_model(Path(brme_dir) / STAGE1_FOLDER, **options)[0]
    manifest = json.loads((Path(ensemble_dir) / ENSEMBLE_MANIFEST).read_text())
    members = []
    if manifest.get("layout") == "heads":
        (stage1 or brme).attach_member_head(load_member_heads(ensemble_dir).eval())
    else:
        members = [prepare(load_reward_model(Path(ensemble_dir) / name, **options)[0]) for name in manifest["members"]]
    loaded = {}
    for name, spec in pretrained.items():
        member = load_pretrained_reward_model(name, spec, attn_implementation=attn_implementation, dtype=dtype)
        member.model = prepare(member.model)
        loaded[name] = member
    return RewardModels(
        prepare(brme), tokenizer, members, prepare(stage1) if stage1 is not None else None, pretrained=loaded
    )


def applicable_aggregations(kind: str) -> list[str]:
    """Aggregations that make sense for a reward-model kind: `single` only for one head, the sigma-based
    ones (`nominal`, `brme`) only for the BRME and the mixtures that include it; a pretrained member alone
    has one head."""
    if kind == "single" or kind.startswith(PRETRAINED_PREFIX):
        return ["single"]
    names = [name for name in AGGREGATIONS if name != "single"]
    with_sigma = kind == "brme" or (kind.startswith(MIXTURE_PREFIX) and "brme" in mixture_members(kind))
    return names if with_sigma else [name for name in names if name not in ("nominal", "brme")]


def every_aggregation(
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]], coefficients: AggregationParams
) -> dict[str, torch.Tensor]:
    """The reward under every applicable aggregation of every reward model, keyed `kind/aggregation`."""
    return {
        f"{kind}/{name}": _aggregate(name, mu, sigma, coefficients)
        for kind, (mu, sigma) in scores.items()
        for name in applicable_aggregations(kind)
    }


def method_rewards(
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]],
    methods: dict[str, MethodParams],
    coefficients: AggregationParams,
) -> dict[str, torch.Tensor]:
    """Each method's sequence reward (B,): its reward model's heads under its aggregation."""
    return {
        name: _aggregate(method.aggregation, *scores[score_key(method)], coefficients)
        for name, method in methods.items()
        if score_key(method) in scores
    }


def _aggregate(name: str, mu: torch.Tensor, sigma: torch.Tensor, coefficients: AggregationParams) -> torch.Tensor:
    return aggregate_rewards(
        name,
        mu,
        sigma,
        brme_lambda=coefficients.brme_lambda,
        uwo_coef=coefficients.uwo_coef,
        kl_dro_beta=coefficients.kl_dro_beta,
    )

"""The Bayesian Reward Model Ensemble (BRME, docs/method.md): one backbone, k Gaussian heads.

Head i maps the pooled representation h(x, y) to mu_i = w_i.h + b_i and
sigma_i = softplus(v_i.h + c_i) + sigma_min (our choice). A separate scalar `bt_head` is the stage-1
Bradley-Terry reward model (the `single` baseline). When the ensemble baseline's members are heads
on the same frozen features, they ride along as `member_head` (M outputs), so one backbone forward
scores every reward model.
Saved as the backbone (transformers, safetensors) + `heads.safetensors` + `reward_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robust_rlhf.lora import is_adapted, save_merged
from robust_rlhf.reward.losses import anchor_penalty, l2_penalty

ENCODER_TYPES = {"bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "deberta", "deberta-v2", "electra"}


@dataclass(frozen=True)
class RewardModelConfig:
    num_heads: int
    sigma_min: float
    pooling: str  # "last" or "mean", resolved from "auto" at build time
    max_length: int


class GaussianHeads(nn.Module):
    """k Gaussian reward heads as one batched linear map: k heads cost one matmul, not k backbones."""

    def __init__(
        self, hidden_size: int, num_heads: int, *, sigma_min: float, init_std: float = 0.02, seed: int = 0
    ) -> None:
        super().__init__()
        self.sigma_min = sigma_min
        self.mu_weight = nn.Parameter(torch.empty(num_heads, hidden_size))
        self.mu_bias = nn.Parameter(torch.zeros(num_heads))
        self.s_weight = nn.Parameter(torch.empty(num_heads, hidden_size))
        self.s_bias = nn.Parameter(torch.zeros(num_heads))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # Each head has its own random init: one source of the heads' disagreement off-distribution.
            for weight in (self.mu_weight, self.s_weight):
                weight.copy_(torch.randn(weight.shape, generator=generator) * init_std)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) -> mu (B, k), sigma (B, k) with sigma = softplus(s) + sigma_min."""
        mu = pooled @ self.mu_weight.T + self.mu_bias
        sigma = F.softplus(pooled @ self.s_weight.T + self.s_bias) + self.sigma_min
        return mu, sigma

    def weights(self) -> list[torch.Tensor]:
        """The parameters an anchored prior applies to, each (k, H): mu's and sigma's weights. The
        biases are left free: a pairwise likelihood cannot see mu's, and sigma's sets the noise level."""
        return [self.mu_weight, self.s_weight]


class AnchoredGaussianHeads(GaussianHeads):
    """GaussianHeads as stage 2 trains them: started at their anchors, and `forward` also returns the
    anchored prior term (`anchor_penalty`). The term is computed inside the heads' own forward, where
    ZeRO-3 has gathered their weights; its state dict is GaussianHeads' (the anchors are buffers that
    are not saved)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        sigma_min: float,
        anchors: dict[str, torch.Tensor],
        prior_std: float,
        num_items: int,
    ) -> None:
        super().__init__(hidden_size, num_heads, sigma_min=sigma_min)
        self.load_state_dict({key: anchors[key] for key in ("mu_weight", "mu_bias", "s_weight", "s_bias")})
        self.register_buffer("anchor_mu_weight", anchors["mu_weight"].clone(), persistent=False)
        self.register_buffer("anchor_s_weight", anchors["s_weight"].clone(), persistent=False)
        self.prior_std, self.num_items = prior_std, num_items

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, H) -> mu (B, k), sigma (B, k), the prior term (scalar, fp32)."""
        mu, sigma = super().forward(pooled)
        penalty = anchor_penalty(
            [w.float() for w in self.weights()],
            [self.anchor_mu_weight.float(), self.anchor_s_weight.float()],
            prior_std=self.prior_std,
            num_items=self.num_items,
        )
        return mu, sigma, penalty


class L2LinearHeads(nn.Linear):
    """M linear reward heads as stage 1 and the members train them on frozen features: `forward` also
    returns the L2 term 0.5 * l2_coef * mean_m ||w_m||^2, computed where ZeRO-3 has the weight gathered.
    Its state dict is nn.Linear's."""

    def __init__(self, heads: nn.Linear, *, l2_coef: float) -> None:
        super().__init__(heads.in_features, heads.out_features)
        self.load_state_dict(heads.state_dict())
        self.l2_coef = l2_coef

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) -> rewards (B, M), the L2 term (scalar, fp32)."""
        return super().forward(pooled), l2_penalty(self.weight.float(), l2_coef=self.l2_coef)


class BRMERewardModel(nn.Module):
    """Backbone + stage-1 scalar head (`bt_head`) + k Gaussian heads, scoring tokenised texts."""

    def __init__(
        self, backbone: nn.Module, config: RewardModelConfig, *, head_init_std: float = 0.02, seed: int = 0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        hidden = backbone.config.hidden_size
        self.bt_head = linear_heads(hidden, 1, init_std=head_init_std, seed=seed)
        self.heads = GaussianHeads(
            hidden, config.num_heads, sigma_min=config.sigma_min, init_std=head_init_std, seed=seed + 1
        )
        self.member_head: nn.Linear | None = None  # attached by `attach_member_head`

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled representation, (B, L) -> (B, H): last real token (decoders) or masked mean (encoders)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # A backbone loaded in bf16 (deepspeed.precision bf16) scored outside DeepSpeed meets the fp32
        # heads: the features go to the heads' dtype (a no-op, no copy, when the two already agree).
        return pool_hidden(hidden, attention_mask, self.config.pooling).to(self.bt_head.weight.dtype)

    def bt_reward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Stage-1 scalar reward. (B, H) -> (B,)."""
        return self.bt_head(pooled).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pooled(input_ids, attention_mask)
        mu, sigma = self.heads(pooled)
        scores = {"bt_reward": self.bt_reward(pooled), "mu": mu, "sigma": sigma}
        if self.member_head is not None:
            scores["members"] = self.member_head(pooled)  # (B, M)
        return scores

    def attach_member_head(self, member_head: nn.Linear) -> None:
        """Score the ensemble's members (linear BT heads on this backbone's pooled features) in the
        same forward."""
        self.member_head = member_head


def linear_heads(hidden_size: int, num_outputs: int, *, init_std: float, seed: int) -> nn.Linear:
    """M scalar reward heads as one (H -> M) linear map, weights N(0, init_std^2) from `seed`, biases 0."""
    heads = nn.Linear(hidden_size, num_outputs)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        heads.weight.copy_(torch.randn(heads.weight.shape, generator=generator) * init_std)
        heads.bias.zero_()
    return heads


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, H), (B, L) -> (B, H). `last` takes the last position whose mask is 1 (either padding side)."""
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(attention_mask)
        last = (positions * attention_mask).argmax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; expected 'last' or 'mean'")


def resolve_pooling(pooling: str, backbone_config) -> str:
    """`auto` -> masked mean for encoder backbones, last token for decoders."""
    if pooling != "auto":
        return pooling
    return "mean" if getattr(backbone_config, "model_type", "") in ENCODER_TYPES else "last"


def tokenize_pairs(tokenizer, prompts: list[str], responses: list[str], *, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, response) as a text pair, right-padded to the batch's longest.

    Over `max_length`, tokens go from the left of the longer text first, so the response end that
    `last` pooling reads survives.
    """
    tokenizer.truncation_side = "left"
    return tokenizer(
        prompts,
        responses,
        return_tensors="pt",
        padding=True,
        padding_side="right",
        truncation="longest_first",
        max_length=max_length,
    )


@torch.inference_mode()
def score_texts(
    model: BRMERewardModel, tokenizer, prompts: list[str], responses: list[str], *, batch_size: int
) -> dict[str, torch.Tensor]:
    """Score (prompt, response) texts in batches. Returns bt_reward (N,), mu (N, k), sigma (N, k)
    and, with a member head attached, members (N, M)."""
    device = next(model.parameters()).device
    outputs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_pairs(
            tokenizer,
            prompts[start : start + batch_size],
            responses[start : start + batch_size],
            max_length=model.config.max_length,
        )
        scored = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for key, value in scored.items():
            outputs.setdefault(key, []).append(value.float().cpu())
    return {key: torch.cat(value) for key, value in outputs.items()}


def save_reward_model(model: BRMERewardModel, tokenizer, out_dir: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write backbone (safetensors), tokenizer, heads and config to `out_dir` (a fresh folder)."""
    from safetensors.torch import save_file

    backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    if is_adapted(model.backbone):  # merged (train_reward.lora): the saved backbone loads without peft
        save_merged(model.backbone, backbone_state, out_dir / "backbone")
    else:
        model.backbone.save_pretrained(out_dir / "backbone", state_dict=backbone_state, safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "backbone")
    heads = {k: v.contiguous() for k, v in state_dict.items() if not k.startswith("backbone.")}
    save_file(heads, str(out_dir / "heads.safetensors"))
    (out_dir / "reward_config.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n")


def load_reward_model(
    model_dir: str | Path, *, trust_remote_code: bool = False, attn_implementation: str, dtype: torch.dtype
):
    """Load a reward model saved by `save_reward_model`, its backbone in `dtype` (robust_rlhf/models.py
    `model_options`). Returns (model in eval mode, tokenizer)."""
    from safetensors.torch import load_file

    from robust_rlhf.models import load_backbone, load_tokenizer

    model_dir = Path(model_dir)
    config = RewardModelConfig(**json.loads((model_dir / "reward_config.json").read_text()))
    backbone = load_backbone(
        model_dir / "backbone",
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        dtype=dtype,
    )
    model = BRMERewardModel(backbone, config)
    missing, unexpected = model.load_state_dict(load_file(str(model_dir / "heads.safetensors")), strict=False)
    if unexpected or any(not key.startswith("backbone.") for key in missing):
        raise ValueError(
            f"{model_dir}/heads.safetensors does not match the BRME: missing {missing}, unexpected {unexpected}"
        )
    tokenizer = load_tokenizer(model_dir / "backbone", trust_remote_code=trust_remote_code, padding_side="right")
    return model.eval(), tokenizer

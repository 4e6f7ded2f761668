"""The Bayesian Reward Model Ensemble (BRME, PAPER.md §2): one backbone, k Gaussian heads.

Head i maps the pooled representation h(x, y) to mu_i = w_i.h + b_i and
sigma_i = softplus(v_i.h + c_i) + sigma_min (our choice, PAPER.md §2). A separate scalar `bt_head` is the stage-1
Bradley-Terry reward model whose rewards the stage-2 `gaussian_nll` loss regresses.
Saved as the backbone (transformers, safetensors) + `heads.safetensors` + `reward_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_TYPES = {"bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "deberta", "deberta-v2", "electra"}


@dataclass(frozen=True)
class RewardModelConfig:
    num_heads: int
    sigma_min: float
    pooling: str  # "last" or "mean", resolved from "auto" at build time
    max_length: int


class GaussianHeads(nn.Module):
    """k Gaussian reward heads as one batched linear map: k heads cost one matmul, not k backbones."""

    def __init__(self, hidden_size: int, num_heads: int, *, sigma_min: float, init_std: float = 0.02,
                 seed: int = 0) -> None:
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


class BRMERewardModel(nn.Module):
    """Backbone + stage-1 scalar head (`bt_head`) + k Gaussian heads, scoring tokenised texts."""

    def __init__(self, backbone: nn.Module, config: RewardModelConfig, *, head_init_std: float = 0.02,
                 seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        hidden = backbone.config.hidden_size
        self.bt_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            self.bt_head.weight.copy_(torch.randn(self.bt_head.weight.shape, generator=generator) * head_init_std)
            self.bt_head.bias.zero_()
        self.heads = GaussianHeads(hidden, config.num_heads, sigma_min=config.sigma_min,
                                   init_std=head_init_std, seed=seed + 1)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled representation, (B, L) -> (B, H): last real token (decoders) or masked mean (encoders)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden(hidden, attention_mask, self.config.pooling)

    def bt_reward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Stage-1 scalar reward. (B, H) -> (B,)."""
        return self.bt_head(pooled).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pooled(input_ids, attention_mask)
        mu, sigma = self.heads(pooled)
        return {"bt_reward": self.bt_reward(pooled), "mu": mu, "sigma": sigma}


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
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer(prompts, responses, return_tensors="pt", padding=True, truncation="longest_first",
                     max_length=max_length)


@torch.inference_mode()
def score_texts(model: BRMERewardModel, tokenizer, prompts: list[str], responses: list[str], *,
                batch_size: int) -> dict[str, torch.Tensor]:
    """Score (prompt, response) texts in batches. Returns bt_reward (N,), mu (N, k), sigma (N, k)."""
    device = next(model.parameters()).device
    outputs: dict[str, list[torch.Tensor]] = {"bt_reward": [], "mu": [], "sigma": []}
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_pairs(tokenizer, prompts[start:start + batch_size], responses[start:start + batch_size],
                               max_length=model.config.max_length)
        scored = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for key in outputs:
            outputs[key].append(scored[key].float().cpu())
    return {key: torch.cat(value) for key, value in outputs.items()}


def save_reward_model(model: BRMERewardModel, tokenizer, out_dir: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write backbone (safetensors), tokenizer, heads and config to `out_dir` (a fresh folder)."""
    from safetensors.torch import save_file

    backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    model.backbone.save_pretrained(out_dir / "backbone", state_dict=backbone_state, safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "backbone")
    heads = {k: v.contiguous() for k, v in state_dict.items() if not k.startswith("backbone.")}
    save_file(heads, str(out_dir / "heads.safetensors"))
    (out_dir / "reward_config.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n")


def load_reward_model(model_dir: str | Path, *, trust_remote_code: bool = False):
    """Load a reward model saved by `save_reward_model`. Returns (model in eval mode, tokenizer)."""
    from safetensors.torch import load_file

    from robust_rlhf.models import load_backbone, load_tokenizer

    model_dir = Path(model_dir)
    config = RewardModelConfig(**json.loads((model_dir / "reward_config.json").read_text()))
    backbone = load_backbone(model_dir / "backbone", trust_remote_code=trust_remote_code)
    model = BRMERewardModel(backbone, config)
    missing, unexpected = model.load_state_dict(load_file(str(model_dir / "heads.safetensors")), strict=False)
    if unexpected or any(not key.startswith("backbone.") for key in missing):
        raise ValueError(f"{model_dir}/heads.safetensors does not match the BRME: missing {missing}, unexpected {unexpected}")
    tokenizer = load_tokenizer(model_dir / "backbone", trust_remote_code=trust_remote_code, padding_side="right")
    return model.eval(), tokenizer

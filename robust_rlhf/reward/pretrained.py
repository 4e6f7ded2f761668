"""Reward models the pipeline does not train, and `mixture` methods that combine them with the trained
ones (docs/method.md#pretrained-reward-models).

A pretrained member (params `reward_models.<name>`) is any transformers AutoModelForSequenceClassification
with one output, from a local folder or the hub, with its own tokenizer. It loads from safetensors only
(`use_safetensors=True`; a folder of pickles is refused before anything is read) and never runs remote
code (a config with an `auto_map` is refused, whatever `models.trust_remote_code` says).

Each member reads the (prompt, response) as its own tokenizer renders it: with the tokenizer's chat
template when it has one (a user turn, then an assistant turn), else as the tokenizer's text pair
(BERT-style `[CLS] prompt [SEP] response [SEP]`; a plain concatenation of the two texts' tokens for
tokenizers without pair tokens, such as GPT-2's). Over `max_length`, tokens go from the left.

A mixture's columns are its members' rewards in order: `single` and each pretrained member one column,
`ensemble` its M members, `brme` its k heads' means (with their sigmas). Each column is centred and
scaled on the initial policy's samples for the PPO prompts (`centring_affine`), since the members'
offsets and scales are arbitrary and any aggregation across them would otherwise mix them. The ppo
stage fits the affine on the samples it draws for the reference moments anyway, seeded by params
`seed` (not the PPO seed), so every seed of a method fits the same one; it is saved with the run
(`reward_affine.json` in the policy folder, and in the resume state) and evaluate reads it back.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from robust_rlhf.config import TRAINED_REWARD_MODELS, MethodParams, PretrainedRewardModelParams, StageInputError
from robust_rlhf.reward.centering import centring_affine
from robust_rlhf.reward.model import tokenize_pairs

logger = logging.getLogger(__name__)

DVC_REWARD_MODELS_DIR = "reward_models"  # a dep of ppo and evaluate in dvc.yaml: local members belong here
PRETRAINED_PREFIX = "pretrained:"  # score kind of one pretrained member's raw reward, (B, 1)
MIXTURE_PREFIX = "mixture:"  # score kind of a mixture: `mixture:` + its members joined by `+`
AFFINE_FILE = "reward_affine.json"  # in a PPO run's policy folder: its mixture's fitted affine
# The sigma of a column without a learned one: finite (the aggregations refuse inf), and never the
# argmin, so `nominal` picks among the BRME's heads while `min` still sees every member.
NO_SIGMA = float(torch.finfo(torch.float32).max)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class PretrainedRewardModelError(StageInputError):
    """A pretrained reward model cannot be used; the message names the member and its param."""


@dataclass
class PretrainedRewardModel:
    """One loaded member: a sequence classifier with one output and its own tokenizer."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    max_length: int

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str], *, batch_size: int) -> torch.Tensor:
        """The member's reward of each (prompt, response), (N,) in fp32 on the CPU."""
        device = next(self.model.parameters()).device
        rewards = []
        for start in range(0, len(prompts), batch_size):
            batch = member_inputs(
                self.tokenizer,
                prompts[start : start + batch_size],
                responses[start : start + batch_size],
                max_length=self.max_length,
            )
            # token_type_ids too, where the model reads them: a BERT pair's second segment is type 1.
            accepted = inspect.signature(self.model.forward).parameters
            logits = self.model(**{key: value.to(device) for key, value in batch.items() if key in accepted}).logits
            rewards.append(logits[:, 0].float().cpu())
        return torch.cat(rewards)


def render_conversations(tokenizer, prompts: list[str], responses: list[str]) -> list[str]:
    """Each (prompt, response) as one user and one assistant turn of the tokenizer's chat template."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        for prompt, response in zip(prompts, responses)
    ]


def member_inputs(tokenizer, prompts: list[str], responses: list[str], *, max_length: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (B, L), right-padded: the chat template's text when the tokenizer has
    one (its special tokens are the template's, none added), else the tokenizer's text pair."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenize_pairs(tokenizer, prompts, responses, max_length=max_length)
    tokenizer.truncation_side = "left"
    return tokenizer(
        render_conversations(tokenizer, prompts, responses),
        add_special_tokens=False,
        return_tensors="pt",
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=max_length,
    )


def check_safetensors_folder(name: str, folder: Path) -> None:
    """Refuse a local member folder without safetensors weights, before transformers reads anything."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    what = f"only pickled weights ({', '.join(pickles)})" if pickles else "no weights"
    raise PretrainedRewardModelError(
        f"reward_models.{name}.source: {folder} holds {what}; reward models load from safetensors only "
        "(re-save the model with save_pretrained(..., safe_serialization=True))"
    )


def _where(name: str, spec: PretrainedRewardModelParams) -> str:
    revision = f" at revision {spec.revision!r}" if spec.revision else ""
    hub_offline = os.environ.get("HF_HUB_OFFLINE") and not Path(spec.source).is_dir()
    offline = " (HF_HUB_OFFLINE is set: the hub cannot be reached)" if hub_offline else ""
    return f"reward_models.{name}.source: reward model {name!r} ({spec.source!r}{revision}){offline}"


def load_pretrained_reward_model(
    name: str, spec: PretrainedRewardModelParams, *, attn_implementation: str, dtype: torch.dtype
) -> PretrainedRewardModel:
    """Load member `name` (a local folder or a hub name) in eval mode, weights in `dtype`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

    if Path(spec.source).is_dir():
        check_safetensors_folder(name, Path(spec.source))
        if not Path(spec.source).resolve().is_relative_to(Path(DVC_REWARD_MODELS_DIR).resolve()):
            logger.warning(
                "reward_models.%s.source: %s is not under %s/, so it is no DVC dep of ppo and evaluate: "
                "add it to their deps in dvc.yaml",
                name,
                spec.source,
                DVC_REWARD_MODELS_DIR,
            )
    where = _where(name, spec)
    hub = dict(revision=spec.revision, trust_remote_code=False)
    try:
        raw_config, _ = PretrainedConfig.get_config_dict(spec.source, revision=spec.revision)
    except Exception as error:  # noqa: BLE001 - hub clients raise many types; say which member failed
        raise PretrainedRewardModelError(f"{where}: cannot read its config: {type(error).__name__}: {error}") from error
    if raw_config.get("auto_map"):
        raise PretrainedRewardModelError(
            f"{where}: its config needs remote code (auto_map {sorted(raw_config['auto_map'])}); reward models "
            "never run remote code (trust_remote_code is off for them): pick a model transformers implements"
        )
    try:
        config = AutoConfig.from_pretrained(spec.source, **hub)
        if config.num_labels != 1:
            raise PretrainedRewardModelError(
                f"{where}: a reward model has one output; this sequence classifier has num_labels = {config.num_labels}"
            )
        tokenizer = AutoTokenizer.from_pretrained(spec.source, **hub)
        model = AutoModelForSequenceClassification.from_pretrained(
            spec.source, **hub, use_safetensors=True, dtype=dtype, attn_implementation=attn_implementation
        )
    except PretrainedRewardModelError:
        raise
    except Exception as error:  # noqa: BLE001 - as above
        raise PretrainedRewardModelError(f"{where}: cannot load it: {type(error).__name__}: {error}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder classifiers score the last non-pad token, which they find by the config's pad id.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return PretrainedRewardModel(name, model.eval(), tokenizer, spec.max_length)


def used_reward_models(
    methods: Mapping[str, MethodParams], reward_models: Mapping[str, PretrainedRewardModelParams]
) -> dict[str, PretrainedRewardModelParams]:
    """The pretrained members some method's mixture names, in params order (the others are not loaded)."""
    named = {member for method in methods.values() for member in method.members}
    return {name: spec for name, spec in reward_models.items() if name in named}


def mixture_key(members: list[str]) -> str:
    """The score kind of a mixture: every method with these members shares its scores and affine."""
    return MIXTURE_PREFIX + "+".join(members)


def mixture_members(kind: str) -> list[str]:
    """The members of a mixture's score kind (`mixture_key`'s inverse)."""
    return kind.removeprefix(MIXTURE_PREFIX).split("+")


def score_key(method: MethodParams) -> str:
    """The kind in `RewardModels.score`'s output that a method's reward reads."""
    return mixture_key(method.members) if method.reward_model == "mixture" else method.reward_model


def mixture_columns(
    scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]], members: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mixture's raw columns from the scores of every kind: mu (B, C), sigma (B, C) and which columns
    carry a learned sigma (C,), bool (the BRME's heads)."""
    mus, sigmas, learned = [], [], []
    for member in members:
        kind = member if member in TRAINED_REWARD_MODELS else PRETRAINED_PREFIX + member
        if kind not in scores:
            raise KeyError(f"mixture member {member!r} has no scores (kinds scored: {sorted(scores)})")
        mu, sigma = scores[kind]
        mus.append(mu)
        sigmas.append(sigma if member == "brme" else torch.ones_like(mu))
        learned.append(torch.full((mu.shape[1],), member == "brme"))
    return torch.cat(mus, dim=1), torch.cat(sigmas, dim=1), torch.cat(learned)


@dataclass(frozen=True)
class MixtureAffine:
    """r' = (r - offset_c) / scale_c per column c of a mixture (and sigma' = sigma_c / scale_c)."""

    members: list[str]
    offset: list[float]
    scale: list[float]


def fit_mixture_affine(scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]], members: list[str]) -> MixtureAffine:
    """The affine mapping each column to mean 0, population std 1 on the scored samples (the initial
    policy's, for the PPO prompts): `centring_affine` with scale."""
    mu, _, _ = mixture_columns(scores, members)
    offset, scale = centring_affine(mu.double(), scale=True)
    return MixtureAffine(list(members), offset.tolist(), scale.tolist())


def centred_mixture(
    scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]], affine: MixtureAffine
) -> tuple[torch.Tensor, torch.Tensor]:
    """A mixture's centred (mu, sigma), each (B, C): mu' = (mu - offset) / scale, sigma' = sigma / scale
    for the BRME's heads and NO_SIGMA for the columns without a learned sigma."""
    mu, sigma, learned = mixture_columns(scores, affine.members)
    if mu.shape[1] != len(affine.offset):
        raise ValueError(f"mixture {affine.members} has {mu.shape[1]} columns, its affine {len(affine.offset)}")
    offset = torch.tensor(affine.offset, dtype=mu.dtype)
    scale = torch.tensor(affine.scale, dtype=mu.dtype)
    return (mu - offset) / scale, torch.where(learned, sigma / scale, torch.full_like(sigma, NO_SIGMA))


def mixture_scores(
    scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]], affines: Mapping[str, MixtureAffine]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The centred (mu, sigma) of every mixture with a fitted affine, keyed by its `mixture_key`."""
    return {key: centred_mixture(scores, affine) for key, affine in affines.items()}


def write_affine(folder: Path, affine: MixtureAffine) -> None:
    """Save a run's mixture affine into its policy folder (evaluate reads it back)."""
    (folder / AFFINE_FILE).write_text(json.dumps({mixture_key(affine.members): asdict(affine)}, indent=2) + "\n")


def read_affine(folder: Path) -> dict[str, MixtureAffine]:
    """The mixture affine a PPO run saved, keyed by its mixture; {} when the run has none."""
    path = Path(folder) / AFFINE_FILE
    if not path.exists():
        return {}
    return {key: MixtureAffine(**value) for key, value in json.loads(path.read_text()).items()}


def affine_from_state(state: dict | None) -> dict[str, MixtureAffine]:
    """A resume state's affine (`asdict` of a MixtureAffine, or None) keyed by its mixture."""
    return {} if state is None else {mixture_key(state["members"]): MixtureAffine(**state)}


def read_run_affines(policies: Path, run_names: list[str]) -> dict[str, MixtureAffine]:
    """Every mixture's affine from the first of `run_names` (folders under `policies`) that saved it;
    every seed of a method fits the same one (see the module doc)."""
    affines: dict[str, MixtureAffine] = {}
    for name in run_names:
        for key, affine in read_affine(Path(policies) / name).items():
            affines.setdefault(key, affine)
    return affines

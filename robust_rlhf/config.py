"""Typed, validated parameters: one pydantic model per `params.yaml` section, unknown keys rejected.

Each field is documented once, here; its value lives once, in the params file: a field has no code
default (a file that leaves it out is refused, naming it), except the preference-data `source`, which
applies only to `prepare.task: preference_data`, and a method's `members`, which only a `mixture` has.
`load_params` validates the whole file before a stage does any work, so a typo anywhere fails fast with
the dotted key that is wrong and the value it holds.

Validation is strict: an int field takes only ints (not `true`, not `6.5`, not `"6"`), a bool field
only `true`/`false` (not `"yes"`, not `1`), a str field only strings; a float field takes floats and
ints (`kl_coef: 1`) but never inf or NaN. Every numeric field that sizes the compute or scales a loss
has an upper bound (below).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class _Section(BaseModel):
    # strict: no coercion (YAML `true` is not 1, "yes" is not true); allow_inf_nan=False covers every
    # float field of every section, so `.inf`/`.nan` never reach a learning rate or a KL coefficient.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)


# Upper bounds: generous limits that no real run (a multi-GPU one included) comes near, so a value past
# one is a typo (an extra zero, 1e4 for 1e-4), refused before any work rather than run for days or OOM.
MAX_TOKENS = 65_536  # token lengths: prompts, responses, RM inputs (64k, past any model here)
MAX_BATCH = 65_536  # any batch size (per micro-batch, rollout or generation batch)
MAX_ACCUMULATION = 4_096  # gradient accumulation steps
MAX_PPO_STEPS = 1_000_000  # PPO iterations (InstructGPT-scale runs use ~10^3-10^4)
MAX_EPOCHS = 10_000  # epochs over a dataset (reward models) or over a rollout (PPO)
MAX_LEARNING_RATE = 1.0  # Adam(W) steps; real runs use 1e-6 .. 1e-2
MAX_TEMPERATURE = 10.0  # sampling temperature; past ~2 samples are noise
MAX_COUNT = 10_000_000  # pairs, prompts, samples, resamples
MAX_COEF = 1_000.0  # weights and scales of loss terms, penalties and priors
MAX_HEADS = 1_024  # reward heads or ensemble members
MAX_LAYERS = 1_024  # transformer layers of a model (the largest open LLMs have ~130)
MAX_SEED = 2**31 - 1  # numpy seeds must be < 2**32; derived seeds (seed * 1000 + i) stay in torch's range
MAX_PROCESSES = 65_536  # GPUs per node, nodes, parallel workers
SECONDS_PER_DAY = 86_400.0  # the longest retry delay
MINUTES_PER_YEAR = 525_600.0  # the longest schedule interval or flow timeout

CROSS_FIELD = "cross_field"  # pydantic error type of a check across fields (see cross_field_error)


def cross_field_error(message: str, key: str, values: Mapping[str, object]) -> PydanticCustomError:
    """The error of a check across fields: `key` is the field to change and `values` the fields involved
    with their values, both dotted relative to the validated model; load_params prefixes them with the
    model's own path, so the message names `ppo.micro_batch_size`, never the whole section's input."""
    return PydanticCustomError(CROSS_FIELD, message, {"key": key, "values": dict(values)})


class ModelsParams(_Section):
    policy: str = Field(
        description="Initial policy: `tiny-random` (a tiny random Llama built locally, for tests), "
        "a local directory saved by transformers, or a hub model name."
    )
    reward_backbone: str = Field(
        description="Reward-model backbone: `policy` (the initial policy's own backbone), a local "
        "directory, or a hub model name."
    )
    trust_remote_code: bool = Field(description="Passed to transformers loaders.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        description="Attention kernel of every transformers model loaded (policy, reference, critic, reward "
        "backbone): `sdpa` (torch's scaled_dot_product_attention; CPU and GPU), `eager`, or `flash_attention_2` "
        "(needs the flash-attn package and a GPU; refused at load time otherwise)."
    )
    small_batch_linear: bool = Field(
        description="Run a sampling policy's linear layers through our small-batch CPU kernel when a no-grad "
        "product has few rows, as a decode step's (robust_rlhf/runtime/small_batch_linear.py: its MAX_ROWS, "
        "its speed against MKL's matmul): x86-64 CPUs with AVX2, results equal to torch's up to rounding. Built "
        "on first use with the C++ compiler; where it cannot run (another CPU, no compiler) torch's matmul "
        "runs, with a warning. false: torch's matmul always (GPU profiles)."
    )


class DeepSpeedParams(_Section):
    # An int range, not Literal[0, 1, 2, 3]: a Literal matches by equality, so even strict mode lets `true` be 1.
    zero_stage: int = Field(ge=0, le=3, description="ZeRO stage of every DeepSpeed engine.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        description="Training precision; fp32 on CPUs without AMX (bf16 is ~10x slower there)."
    )
    gradient_clipping: float = Field(gt=0, le=MAX_COEF, description="Global gradient-norm clip.")
    offload_optimizer: Literal["none", "cpu"] = Field(
        description="ZeRO-Offload of the optimizer states (and the optimizer step) to CPU memory (ZeRO >= 1): "
        "frees 12 bytes per trained parameter on the device, at the cost of PCIe traffic every step."
    )
    offload_param: Literal["none", "cpu"] = Field(
        description="ZeRO-3 parameter offload: each parameter's shard lives in CPU memory and is fetched to "
        "the device for its layer's forward and backward (ZeRO-Infinity without NVMe). ZeRO-3 only."
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedParams:
        if self.offload_optimizer != "none" and self.zero_stage < 1:
            raise cross_field_error(
                "optimizer offload needs ZeRO stage >= 1",
                "offload_optimizer",
                {"offload_optimizer": self.offload_optimizer, "zero_stage": self.zero_stage},
            )
        if self.offload_param != "none" and self.zero_stage != 3:
            raise cross_field_error(
                "parameter offload needs ZeRO stage 3",
                "offload_param",
                {"offload_param": self.offload_param, "zero_stage": self.zero_stage},
            )
        return self


class LRScheduleParams(_Section):
    """The learning rate over a run's optimizer steps (robust_rlhf/runtime/schedule.py): a linear warmup
    from 0, then constant, linear or cosine decay to `final_fraction` of the peak at the last step."""

    kind: Literal["constant", "linear", "cosine"] = Field(
        description="After warmup: `constant` (the peak), `linear` or `cosine` decay (Coste et al.: cosine)."
    )
    warmup_steps: int = Field(
        ge=0, le=MAX_PPO_STEPS, description="Optimizer steps of linear warmup from 0 to the peak (0: none)."
    )
    final_fraction: float = Field(
        ge=0.0, le=1.0, description="linear, cosine: the learning rate at the last step as a fraction of the peak."
    )


class LoRAParams(_Section):
    """Low-rank adapters (the `peft` library; Hu et al. 2021): the pretrained weights stay frozen and only
    W + (alpha / rank) B A is trained, so gradients and optimizer states cover the adapters alone."""

    enabled: bool = Field(description="Train adapters instead of the full weights.")
    rank: int = Field(ge=1, le=4_096, description="r, the adapters' rank.")
    alpha: float = Field(gt=0, le=MAX_COEF * 4, description="alpha; the update is scaled by alpha / r.")
    target_modules: list[str] = Field(
        min_length=1,
        description="The modules adapted: names of linear layers (`q_proj`, `v_proj`, ...) or "
        "[all-linear] (every linear layer but the output head).",
    )


class ColumnMapping(_Section):
    """Which source column holds each field (robust_rlhf/data/sources.py)."""

    prompt: str | None = Field("prompt", description="The prompt column (layout `columns` only).")
    chosen: str = Field("chosen", description="The preferred response (or conversation, or message list).")
    rejected: str = Field("rejected", description="The other response (or conversation, or message list).")


class SourceParams(_Section):
    """Preference data from a hub dataset or local files (prepare.task: preference_data)."""

    kind: Literal["hub", "files"] = Field(
        description="hub: datasets.load_dataset (or a save_to_disk folder); files: local JSONL/JSON/CSV/Parquet files."
    )
    name: str | None = Field(None, description="hub: the dataset name, or a folder written by save_to_disk.")
    config: str | None = Field(None, description="hub: the dataset config (subset).")
    split: str = Field("train", description="hub: the split to read.")
    revision: str | None = Field(None, description="hub: a git revision (tag, branch or commit) to pin.")
    files: list[str] = Field([], description="files: paths of the files, read in order.")
    layout: Literal["columns", "conversation_pair", "messages"] = Field(
        "columns",
        description="columns: prompt/chosen/rejected text columns; conversation_pair: HH-RLHF "
        "style conversations sharing the prompt; messages: role/content message lists.",
    )
    columns: ColumnMapping = ColumnMapping()
    max_text_tokens: int = Field(512, ge=1, le=MAX_TOKENS, description="Token limit of a prompt or response.")
    too_long: Literal["reject", "truncate"] = Field("reject", description="What happens to a text over the limit.")
    max_reject_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Above this fraction of rejected rows the stage fails."
    )

    @model_validator(mode="after")
    def _source_named(self) -> SourceParams:
        if self.kind == "hub" and not self.name:
            raise cross_field_error(
                "a hub source needs the dataset name (or a save_to_disk folder)",
                "name",
                {"kind": self.kind, "name": self.name},
            )
        if self.kind == "files" and not self.files:
            raise cross_field_error(
                "a files source needs at least one file", "files", {"kind": self.kind, "files": self.files}
            )
        return self


# `prepare.source` is one source (a mapping) or a list of them: a union picked by the value's own type, so an
# error is reported against that branch alone. pydantic puts the branch's tag into an error's location;
# `_problem` leaves these tags out, so a bad key reads `prepare.source.name` or `prepare.source.1.name`.
ONE_SOURCE_TAG, SOURCE_LIST_TAG = "<one source>", "<source list>"
UNION_BRANCH_TAGS = (ONE_SOURCE_TAG, SOURCE_LIST_TAG)
SourceSpec = Annotated[
    Annotated[SourceParams, Tag(ONE_SOURCE_TAG)]
    | Annotated[list[SourceParams], Tag(SOURCE_LIST_TAG), Field(min_length=1)],
    Discriminator(lambda value: SOURCE_LIST_TAG if isinstance(value, list) else ONE_SOURCE_TAG),
]


class StatisticsParams(_Section):
    """Intervals of every reported figure (robust_rlhf/statistics.py): cluster bootstrap over prompts."""

    bootstrap_resamples: int = Field(ge=100, le=100_000, description="Bootstrap resamples per interval.")
    confidence_level: float = Field(gt=0.5, lt=1.0, description="Coverage of every interval.")


class PrepareParams(_Section):
    task: Literal["synthetic_gold", "preference_data"] = Field(
        description="synthetic_gold: the offline task of docs/study.md#task-and-gold (pairs sampled "
        "from the policy, labelled by the gold scorer); preference_data: pairs read from `source`."
    )
    source: SourceSpec | None = Field(
        None,
        description="Where preference_data reads its pairs: one source, or a list of sources (each with its own "
        "kind, layout and limits) read in order and pooled before the split (a pair already read from an earlier "
        "source is a duplicate_pair reject).",
    )
    num_train_pairs: int = Field(
        ge=2, le=MAX_COUNT, description="Preference pairs in the train split (preference_data: at most)."
    )
    num_val_pairs: int = Field(ge=2, le=MAX_COUNT, description="Preference pairs in the val split.")
    num_test_pairs: int = Field(ge=2, le=MAX_COUNT, description="Preference pairs in the test split.")
    num_ppo_prompts: int = Field(ge=1, le=MAX_COUNT, description="Prompts for PPO rollouts.")
    num_eval_prompts: int = Field(ge=1, le=MAX_COUNT, description="Held-out prompts for evaluate.")
    label_mode: Literal["argmax_flip", "bt_sample"] = Field(
        description="argmax_flip: the higher gold score wins, then `label_noise` of labels flipped "
        "(Coste et al.); bt_sample: the winner drawn with P = sigmoid(gold_a - gold_b).",
    )
    label_noise: float = Field(ge=0.0, le=0.5, description="Fraction of labels flipped (argmax_flip).")
    max_prompt_tokens: int = Field(ge=4, le=MAX_TOKENS, description="Prompts longer than this are left-truncated.")
    max_new_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Length of the sampled responses.")
    temperature: float = Field(gt=0, le=MAX_TEMPERATURE, description="Sampling temperature of the initial policy.")
    batch_size: int = Field(ge=1, le=MAX_BATCH, description="Generation batch size.")
    num_shift_samples: int = Field(
        ge=0,
        le=MAX_COUNT,
        description="synthetic_gold: responses sampled at `shift_temperature` for the val prompts, an "
        "off-distribution set on which train_reward measures head disagreement (0: none).",
    )
    shift_temperature: float = Field(
        gt=0, le=MAX_TEMPERATURE, description="Sampling temperature of the shifted responses."
    )

    @property
    def sources(self) -> list[SourceParams]:
        """`source` as a list, in reading order: empty, the one source, or the sources listed."""
        if self.source is None:
            return []
        return list(self.source) if isinstance(self.source, list) else [self.source]

    @model_validator(mode="after")
    def _source_for_preference_data(self) -> PrepareParams:
        if self.task == "preference_data" and self.source is None:
            raise cross_field_error(
                "task preference_data needs a source (hub or files)", "source", {"task": self.task, "source": None}
            )
        return self


class GoldParams(_Section):
    """The gold scorer that stands in for human raters (robust_rlhf/data/gold.py documents each)."""

    name: Literal["lexicon", "composite"] = Field(
        description="lexicon: word-list sentiment - repetition (no model); composite: VADER sentiment + "
        "fluency under the initial policy - bigram repetition."
    )
    fluency_weight: float = Field(ge=0, le=MAX_COEF, description="composite: weight of the fluency facet.")
    fluency_scale: float = Field(
        gt=0, le=MAX_COEF, description="composite: fluency = clamp(mean logprob / scale + 1, -1, 1)."
    )
    repetition_weight: float = Field(
        ge=0, le=MAX_COEF, description="composite: weight of the bigram-repetition penalty."
    )


class Stage1Params(_Section):
    epochs: int = Field(ge=1, le=MAX_EPOCHS, description="Epochs of Bradley-Terry training of the single-head RM.")
    learning_rate: float = Field(gt=0, le=MAX_LEARNING_RATE)
    micro_batch_size: int = Field(ge=1, le=MAX_BATCH, description="Pairs per micro-batch.")
    gradient_accumulation_steps: int = Field(ge=1, le=MAX_ACCUMULATION, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(ge=0, le=MAX_COEF, description="AdamW's decoupled weight decay.")
    l2_coef: float = Field(
        ge=0,
        le=MAX_COEF,
        description="lambda of the L2 penalty 0.5 lambda ||w||^2 (per pair) on the reward heads' weights "
        "with a frozen backbone (stage 1 and the ensemble's members): fewer noisy pairs than twice the feature "
        "dimension are linearly separable, so an unpenalised linear head fits the flipped labels.",
    )


class Stage2Params(_Section):
    loss: Literal["thurstone", "bt_sampled", "gaussian_nll"] = Field(
        description="Stage-2 objective of our reconstruction (docs/method.md): `thurstone`, the labels' "
        "probit likelihood with the heads' sigmas in it; `bt_sampled`, the Bradley-Terry marginal likelihood over "
        "Gaussian rewards (Monte Carlo); `gaussian_nll`, regression onto the stage-1 reward (degenerate with a "
        "frozen backbone: every head becomes the stage-1 head; kept to show it)."
    )
    prior_scale: float = Field(
        ge=0,
        le=MAX_COEF,
        description="Anchored-ensemble prior (Pearce et al. 2018): each head starts at, and is pulled "
        "toward, its own random anchor around the stage-1 head, whose spread moves a head's reward on the training "
        "responses by prior_scale x the stage-1 reward's std. 0: no anchors (random init with head_init_std).",
    )
    noise_floor: float = Field(
        gt=0,
        le=10.0,
        description="s0 in the Thurstone likelihood Phi((mu_c - mu_r) / sqrt(sigma_c^2 + "
        "sigma_r^2 + s0^2)). 1.702, where Phi(x / 1.702) ~ sigmoid(x): at sigma = 0 a head is a Bradley-Terry "
        "model, and sigma > 0 says a response's label is noisier than that (it cannot make a head sharper, so "
        "sigma cannot collapse to buy confidence the anchored prior refuses the means).",
    )
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(gt=0, le=MAX_LEARNING_RATE)
    micro_batch_size: int = Field(ge=1, le=MAX_BATCH, description="Pairs per micro-batch.")
    gradient_accumulation_steps: int = Field(ge=1, le=MAX_ACCUMULATION, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(ge=0, le=MAX_COEF, description="AdamW's decoupled weight decay.")
    freeze_backbone: bool = Field(description="Train only the Gaussian heads in stage 2.")
    bootstrap: bool = Field(description="Each head trains on its own bootstrap resample.")
    num_noise_samples: int = Field(ge=1, le=MAX_BATCH, description="Reparameterised samples per pair (bt_sampled).")


class TrainRewardParams(_Section):
    seed: int = Field(
        ge=0,
        le=MAX_SEED,
        description="Seed of the reward models (head inits and anchors, bootstrap resamples, "
        "batch order), apart from the data seed, so a reward model's draw can be varied alone.",
    )
    finetune_backbone: bool = Field(
        description="true: stage 1 and every ensemble member fine-tune the backbone (members seeds apart, as "
        "Coste et al.). false: the backbone stays as pretrained; its features of the training pairs are computed "
        "once and stage 1, the BRME's heads and the members (each on its own bootstrap resample) are linear "
        "heads on them."
    )
    member_normalization: Literal["standardize", "center", "none"] = Field(
        description="Each ensemble member's rewards mapped to mean 0 (center) and std 1 "
        "(standardize) on the training responses before any aggregation; the BRME's heads are always centred."
    )
    num_heads: int = Field(ge=1, le=MAX_HEADS, description="k, the Gaussian heads of the BRME (the paper: 5).")
    ensemble_size: int = Field(
        ge=0,
        le=MAX_HEADS,
        description="Independent Bradley-Terry reward models that differ only by seed (Coste et al.: "
        "5), for the `ensemble` reward model; 0 trains none.",
    )
    sigma_min: float = Field(gt=0, le=MAX_COEF, description="sigma_i = softplus(s_i) + sigma_min.")
    head_init_std: float = Field(gt=0, le=MAX_COEF, description="Std of each head's own random init.")
    pooling: Literal["auto", "last", "mean"] = Field(
        description="Backbone pooling: last token (decoders), masked mean (encoders), or auto."
    )
    max_length: int = Field(ge=8, le=MAX_TOKENS, description="Tokens of prompt + response seen by the RM.")
    checkpoint_every: int = Field(
        ge=1,
        le=MAX_COUNT,
        description="Save a resume checkpoint every N optimizer steps of each training phase (stage 1, "
        "stage 2, each ensemble member) and at the end of each phase; a killed run goes on from the last one.",
    )
    min_val_accuracy: float = Field(
        ge=0,
        lt=1,
        description="Stop (exit 2) when the single RM's, the BRME's or the ensemble's mean val accuracy "
        "on the labels is at or below this after training (0.5 is chance): such a reward model gives PPO nothing "
        "to learn from. A check, not a param of what is trained.",
    )
    gradient_checkpointing: bool = Field(
        description="Recompute the backbone's activations in the backward pass instead of keeping them "
        "(finetune_backbone only): memory of one layer's activations instead of all, for ~30% more compute."
    )
    lora: LoRAParams = Field(description="Adapters on the fine-tuned backbone (finetune_backbone only).")
    lr_schedule: LRScheduleParams = Field(
        description="Learning rate over each training phase's optimizer steps (stage 1, stage 2, each member)."
    )
    stage1: Stage1Params
    stage2: Stage2Params

    @model_validator(mode="after")
    def _backbone_options_need_finetuning(self) -> TrainRewardParams:
        # Both act on the backbone's training: on frozen features they would silently do nothing.
        for key, on in (("gradient_checkpointing", self.gradient_checkpointing), ("lora.enabled", self.lora.enabled)):
            if on and not self.finetune_backbone:
                raise cross_field_error(
                    f"{key} acts on the backbone's training: set finetune_backbone: true",
                    key,
                    {key: on, "finetune_backbone": self.finetune_backbone},
                )
        return self


class AggregationParams(_Section):
    """The coefficients of the reward aggregations (robust_rlhf/reward/aggregation.py), one per aggregation that
    has one; ppo optimises and logs them, evaluate scores with them. Validated here only."""

    brme_lambda: float = Field(
        ge=0.0,
        le=1.0,
        description="lambda of brme = lambda * nominal + (1 - lambda) * min; 1 = nominal-only, 0 = worst case.",
    )
    uwo_coef: float = Field(ge=0, le=MAX_COEF, description="c in uwo = mean - c * var (Coste et al.: 0.5, 0.1).")
    kl_dro_beta: float = Field(gt=0, le=MAX_COEF, description="beta of kl_dro = -beta log mean exp(-mu / beta).")


AggregationName = Literal["single", "mean", "min", "uwo", "nominal", "brme", "kl_dro"]


TRAINED_REWARD_MODELS = ("brme", "single", "ensemble")  # what train_reward writes; a mixture's other members


class PretrainedRewardModelParams(_Section):
    """A reward model the pipeline does not train (robust_rlhf/reward/pretrained.py): a transformers
    AutoModelForSequenceClassification with one output, with its own tokenizer and chat template;
    safetensors weights only, and never remote code (whatever `models.trust_remote_code` says)."""

    source: str = Field(
        description="A local folder written by transformers' save_pretrained (safetensors weights), or a hub "
        "model name (`org/name`): a path that is not a folder is a hub name."
    )
    revision: str | None = Field(
        description="hub: a git revision (tag, branch or commit) to pin; null: the default branch. Must be null "
        "for a local folder."
    )
    max_length: int = Field(
        ge=8,
        le=MAX_TOKENS,
        description="Tokens of the rendered prompt + response this member reads; over it, tokens go from the "
        "left, so the response's end survives.",
    )

    @model_validator(mode="after")
    def _revision_is_for_the_hub(self) -> PretrainedRewardModelParams:
        if self.revision is not None and Path(self.source).is_dir():
            raise cross_field_error(
                "a local folder has no revision: set revision: null",
                "revision",
                {"source": self.source, "revision": self.revision},
            )
        return self


class MethodParams(_Section):
    """One compared method: which reward model scores a response, and how its heads are aggregated."""

    reward_model: Literal["brme", "single", "ensemble", "mixture"] = Field(
        description="brme: the BRME's k Gaussian heads; single: the BRME's stage-1 Bradley-Terry RM (one "
        "head, ordinary RLHF); ensemble: the independent reward models (Coste et al.); mixture: the reward "
        "models named in `members`, each centred and scaled on the initial policy's samples "
        "(robust_rlhf/reward/pretrained.py)."
    )
    aggregation: AggregationName = Field(
        description="Aggregation of the reward model's heads (robust_rlhf/reward/aggregation.py)."
    )
    # The one field with a code default: only a mixture has members, and every other method leaves it out.
    members: list[str] = Field(
        [],
        description="mixture only: its members, in order, each a name under `reward_models:` (one head) or a "
        "trained kind: `single` (one head), `ensemble` (its M members), `brme` (its k heads' means, with their "
        "sigmas; nominal and brme aggregations need it).",
    )

    @model_validator(mode="after")
    def _aggregation_fits_reward_model(self) -> MethodParams:
        # The pair is wrong, not one field: the error names the method and shows both values.
        pair = {"reward_model": self.reward_model, "aggregation": self.aggregation}
        if (self.aggregation == "single") != (self.reward_model == "single"):
            raise cross_field_error("aggregation `single` goes with reward_model `single`, and only with it", "", pair)
        carries_sigma = self.reward_model == "brme" or (self.reward_model == "mixture" and "brme" in self.members)
        if self.aggregation in ("nominal", "brme") and not carries_sigma:
            raise cross_field_error(
                f"aggregation `{self.aggregation}` needs the BRME's sigmas: reward_model `brme`, or a mixture "
                "with member `brme`",
                "",
                pair,
            )
        if (self.reward_model == "mixture") != bool(self.members):
            raise cross_field_error(
                "reward_model `mixture` needs `members`, and only a mixture has them",
                "members",
                {**pair, "members": self.members},
            )
        if len(set(self.members)) != len(self.members):
            raise cross_field_error("a mixture's members must be distinct", "members", {"members": self.members})
        return self


class PPOGuards(_Section):
    """What a diverged PPO run looks like (robust_rlhf/runtime/guards.py): crossing one stops the stage
    with exit code 2, naming the step and the quantity, and keeps the last good checkpoint. Checks, not
    params of what is trained."""

    max_kl: float = Field(
        gt=0,
        le=MAX_COEF * MAX_TOKENS,
        description="Largest sequence KL to the reference (nats, k3 summed) a step's rollout may have.",
    )
    min_entropy: float = Field(
        ge=0, le=MAX_COEF, description="Smallest mean per-token entropy (nats) of the policy on a rollout."
    )
    max_weight_norm_ratio: float = Field(
        gt=1,
        le=MAX_COEF,
        description="Largest ratio of the actor's weight norm to its initial norm after an optimizer step.",
    )


class MonitorThresholds(_Section):
    """Where each reward-hacking signal warns (robust_rlhf/rl/monitor.py): above the value, or below it
    for `entropy`."""

    brme_disagreement: float = Field(
        gt=0, le=MAX_COEF, description="BRME head disagreement on the policy's samples / on the val pairs."
    )
    ensemble_spread: float = Field(
        gt=0, le=MAX_COEF, description="Ensemble members' spread on the policy's samples / on the val pairs."
    )
    kl_growth: float = Field(
        gt=0, le=MAX_COEF * MAX_TOKENS, description="Slope of the sequence KL (nats per step) over the window."
    )
    entropy: float = Field(ge=0, le=MAX_COEF, description="Mean per-token entropy (nats); warns below it.")
    length_drift: float = Field(gt=0, le=MAX_COEF, description="|mean response length / step 0's - 1| (a fraction).")
    # standardised: (r - mean) / std with the initial policy's moments on the PPO prompts
    proxy_trend: float = Field(gt=0, le=MAX_COEF, description="Slope per step of the standardised method reward.")


class PPOMonitor(_Section):
    """The reward-hacking early warning (robust_rlhf/rl/monitor.py): signals logged at every step as
    `monitor/*`, each warning once when it crosses its threshold; evaluate measures the warnings
    against the gold reward. Checks, not params of what is trained (unless `stop_on_warning`)."""

    enabled: bool = Field(description="Compute and log the signals (and score the val pairs once at the start).")
    window: int = Field(ge=2, le=MAX_PPO_STEPS, description="Trailing steps of the KL and proxy slopes.")
    stop_on_warning: bool = Field(
        description="Stop the run at the first warning, as a divergence guard does: exit code 2, the last "
        "good checkpoint kept, nothing published."
    )
    thresholds: MonitorThresholds


class PPOParams(_Section):
    steps: int = Field(ge=1, le=MAX_PPO_STEPS, description="PPO iterations (one rollout batch each).")
    rollout_batch_size: int = Field(ge=1, le=MAX_BATCH, description="Prompts per rollout.")
    micro_batch_size: int = Field(ge=1, le=MAX_BATCH, description="Rollout samples per forward/backward.")
    gradient_accumulation_steps: int = Field(ge=1, le=MAX_ACCUMULATION, description="Micro-batches per optimizer step.")
    ppo_epochs: int = Field(ge=1, le=MAX_EPOCHS, description="Optimisation epochs over each rollout.")
    learning_rate: float = Field(gt=0, le=MAX_LEARNING_RATE, description="Actor learning rate.")
    critic_learning_rate: float = Field(
        gt=0, le=MAX_LEARNING_RATE, description="Learning rate of the separate critic (value_model: separate)."
    )
    weight_decay: float = Field(
        ge=0,
        le=MAX_COEF,
        description="AdamW's decoupled weight decay of the actor and the critic (InstructGPT and "
        "Coste et al.: none, the KL penalty is the regulariser).",
    )
    value_model: Literal["separate", "shared"] = Field(
        description="The critic. `separate`: a second copy of the policy's backbone with a value head and its "
        "own optimizer (critic_learning_rate), as InstructGPT and Coste et al. `shared`: a value head on the "
        "actor's own backbone, trained through the actor's loss (policy loss + value_loss_coef * value loss): "
        "one model, one forward and one backward instead of two, at the price of the value loss's gradient also "
        "moving the policy."
    )
    critic_layers: int | None = Field(
        ge=1,
        le=MAX_LAYERS,
        description="Depth of the separate critic: the policy's first N transformer layers (and its final norm) "
        "with a value head, for roughly N / layers of a full critic's compute (DeepSpeed-Chat trains a 350M critic "
        "for a 13B actor: a critic need not be the actor's size). null: every layer. Must be null when value_model "
        "is shared, and at most the policy's layer count.",
    )
    value_loss_coef: float = Field(
        gt=0,
        le=MAX_COEF,
        description="Weight of the value loss in the actor's loss when value_model is shared (unused when separate).",
    )
    kl_coef: float = Field(ge=0, le=MAX_COEF, description="beta of the per-token KL penalty to the reference.")
    clip_range: float = Field(gt=0, le=MAX_COEF, description="epsilon of the clipped policy ratio.")
    clip_range_value: float = Field(gt=0, le=MAX_COEF, description="Clip of the value update around the old values.")
    gamma: float = Field(gt=0, le=1, description="Discount of GAE.")
    gae_lambda: float = Field(ge=0, le=1, description="lambda of GAE.")
    max_new_tokens: int = Field(ge=1, le=MAX_TOKENS)
    temperature: float = Field(gt=0, le=MAX_TEMPERATURE, description="Sampling temperature.")
    reward_normalization: Literal["reference", "running", "none"] = Field(
        description="How every method's reward is scaled before PPO (robust_rlhf/rl/normalization.py): "
        "`reference` by the initial policy's reward mean/std on the PPO prompts, `running` by running moments."
    )
    checkpoint_every: int = Field(
        ge=1,
        le=MAX_PPO_STEPS,
        description="Save the policy every N PPO steps (and after the last): the points of the study's curves.",
    )
    resume_every: int = Field(
        ge=1,
        le=MAX_PPO_STEPS,
        description="Save a resume state (actor, critic, optimizer states, RNGs) every N "
        "PPO steps; a killed run goes on from the last one. Not a param of what is trained.",
    )
    gradient_checkpointing: bool = Field(
        description="Recompute the actor's and the critic's activations in the backward pass instead of "
        "keeping them: activation memory of one layer instead of all, for ~30% more training compute."
    )
    lora: LoRAParams = Field(
        description="Adapters on the actor and on the critic's backbone; the reference policy is then the actor "
        "with its adapters disabled (one copy of the pretrained weights, not two)."
    )
    lr_schedule: LRScheduleParams = Field(
        description="Learning rate of the actor and the critic over the run's optimizer steps "
        "(steps x ppo_epochs x rollout_batch_size / (micro_batch_size x gradient_accumulation_steps))."
    )
    guards: PPOGuards
    monitor: PPOMonitor

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (per process), the length of the learning-rate schedule."""
        return self.steps * self.ppo_epochs * (self.rollout_batch_size // self.minibatch_size)

    @property
    def minibatch_size(self) -> int:
        """Rollout samples per optimizer step (per process)."""
        return self.micro_batch_size * self.gradient_accumulation_steps

    @model_validator(mode="after")
    def _critic_layers_need_a_separate_critic(self) -> PPOParams:
        # A shared value head sits on the actor's full backbone: a depth for it would be silently ignored.
        if self.value_model == "shared" and self.critic_layers is not None:
            raise cross_field_error(
                "critic_layers must be null when value_model is shared (the value head reads the actor's last layer)",
                "critic_layers",
                {"value_model": self.value_model, "critic_layers": self.critic_layers},
            )
        return self

    @model_validator(mode="after")
    def _rollout_splits_into_optimizer_steps(self) -> PPOParams:
        # Otherwise the last micro-batches of an epoch would leave a partial gradient accumulation.
        if self.rollout_batch_size % self.minibatch_size:
            raise cross_field_error(
                f"rollout_batch_size must be a multiple of micro_batch_size * gradient_accumulation_steps "
                f"({self.minibatch_size})",
                "rollout_batch_size",
                {
                    "rollout_batch_size": self.rollout_batch_size,
                    "micro_batch_size": self.micro_batch_size,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                },
            )
        return self


class EvaluateParams(_Section):
    samples_per_prompt: int = Field(
        ge=1,
        le=MAX_BATCH,
        description="Responses sampled per held-out prompt, for the initial "
        "policy and every final checkpoint (the headline, paired comparisons).",
    )
    curve_prompts: int = Field(
        ge=1,
        le=MAX_COUNT,
        description="The first N held-out prompts evaluate every earlier checkpoint "
        "(the PPO curves); the final checkpoint and the initial policy's points of the curves "
        "are their rows on the same prompts.",
    )
    max_new_tokens: int = Field(ge=1, le=MAX_TOKENS)
    temperature: float = Field(gt=0, le=MAX_TEMPERATURE, description="Sampling temperature.")
    batch_size: int = Field(ge=1, le=MAX_BATCH, description="Generation and scoring batch size.")
    best_of_n: int = Field(
        ge=1,
        le=MAX_BATCH,
        description="N of the best-of-n study: samples per prompt from the initial policy, picked by each "
        "method's reward for n on a grid up to N.",
    )
    best_of_n_prompts: int = Field(
        ge=1, le=MAX_COUNT, description="The first N held-out prompts of the best-of-n study."
    )


class LauncherParams(_Section):
    """How DeepSpeed stages are launched (robust_rlhf/runtime/launcher.py). One process by default; more go
    through the `deepspeed` launcher, which starts them with RANK/WORLD_SIZE set."""

    num_gpus: int = Field(
        ge=1,
        le=MAX_PROCESSES,
        description="Processes per node: one per GPU (CPU processes on DeepSpeed's "
        "CPU accelerator, where it also sets LOCAL_SIZE).",
    )
    num_nodes: int = Field(ge=1, le=MAX_PROCESSES, description="Nodes to use; > 1 needs `hostfile`.")
    hostfile: str | None = Field(
        description="A DeepSpeed hostfile (`host slots=N` per line) for multi-node "
        "runs (null: one node); the launcher reaches the other hosts over ssh (pdsh)."
    )
    master_addr: str | None = Field(description="Rank 0's address for multi-node runs (null: the first host).")
    master_port: int | None = Field(ge=1024, le=65535, description="Rendezvous port; null picks a free one.")
    device_memory_gib: float | None = Field(
        gt=0,
        le=1_048_576,
        description="Memory of one accelerator (GiB) that the memory plan checks each stage against "
        "(robust_rlhf/runtime/memory_plan.py); null: the GPU's own, and no check on DeepSpeed's CPU accelerator.",
    )

    @property
    def world_size(self) -> int:
        return self.num_gpus * self.num_nodes

    @model_validator(mode="after")
    def _nodes_need_a_hostfile(self) -> LauncherParams:
        if self.num_nodes > 1 and self.hostfile is None:
            raise cross_field_error(
                "num_nodes > 1 needs a hostfile (the hosts to launch on)",
                "hostfile",
                {"num_nodes": self.num_nodes, "hostfile": None},
            )
        return self


class ScheduleParams(_Section):
    """When the served `pipeline` deployment runs by itself (flows/serve.py); both None: on demand only."""

    cron: str | None = Field(description="A cron string, e.g. '0 3 * * *' (03:00 every day); null: none.")
    interval_minutes: float | None = Field(gt=0, le=MINUTES_PER_YEAR, description="Run every N minutes; null: none.")
    timezone: str = Field(description="Timezone of the cron schedule.")

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleParams:
        if self.cron is not None and self.interval_minutes is not None:
            raise cross_field_error(
                "set cron or interval_minutes, not both",
                "interval_minutes",
                {"cron": self.cron, "interval_minutes": self.interval_minutes},
            )
        return self


class OrchestrationParams(_Section):
    """The Prefect flows (flows/): retries, timeout, schedule, sweep concurrency. No stage reads it, so
    changing it re-runs nothing."""

    task_retries: int = Field(
        ge=0,
        le=100,
        description="Retries of a stage that failed for a transient reason "
        "(bad params and bad input data are never retried).",
    )
    retry_delay_seconds: float = Field(
        ge=0, le=SECONDS_PER_DAY, description="First retry delay; doubled for each later retry, with +-20% jitter."
    )
    flow_timeout_minutes: float | None = Field(
        gt=0, le=MINUTES_PER_YEAR, description="Fail a pipeline flow run after this long (null: never)."
    )
    schedule: ScheduleParams
    sweep_max_parallel: int = Field(
        ge=1, le=MAX_PROCESSES, description="DVC experiments of a sweep run at once (queue workers)."
    )


RESUME_ROOT = ".resume"  # dvc.yaml's --resume folders; gitignored and dvcignored (robust_rlhf/runtime/resume.py)


def resume_folder_of(stage: str) -> Path:
    """Where DVC stage `stage` (e.g. `ppo@brme-0`) keeps its resume state while it runs."""
    return Path(RESUME_ROOT) / stage


def policy_run_name(method: str, seed: int) -> str:
    """The name of one PPO run (its checkpoint folder, curve and metrics files): `<method>-seed<seed>`."""
    return f"{method}-seed{seed}"


class Params(_Section):
    profile: str = Field(description="Name of this parameter set, shown in reports (e.g. `tiny`).")
    seed: int = Field(ge=0, le=MAX_SEED, description="Seed of the data, the reward models and evaluation sampling.")
    ppo_seeds: list[Annotated[int, Field(le=MAX_SEED)]] = Field(
        min_length=1,
        description="One PPO run per method and seed (DVC stages ppo@<method>-<seed>); "
        "the report shows the spread over seeds when there are several.",
    )
    models: ModelsParams
    gold: GoldParams
    methods: dict[str, MethodParams] = Field(
        min_length=1, description="The methods compared, by name; `dvc.yaml` runs one PPO stage per entry."
    )
    reward_models: dict[str, PretrainedRewardModelParams] = Field(
        description="Reward models the pipeline does not train, by name, for `mixture` methods' `members` "
        "({}: none; robust_rlhf/reward/pretrained.py)."
    )
    deepspeed: DeepSpeedParams
    prepare: PrepareParams
    train_reward: TrainRewardParams
    aggregation: AggregationParams
    ppo: PPOParams
    evaluate: EvaluateParams
    statistics: StatisticsParams
    launcher: LauncherParams
    orchestration: OrchestrationParams

    @model_validator(mode="after")
    def _methods_are_runnable(self) -> Params:
        # Checks across sections: the keys are dotted from the top level.
        if len(set(self.ppo_seeds)) != len(self.ppo_seeds) or min(self.ppo_seeds) < 0:
            raise cross_field_error("seeds must be distinct and >= 0", "ppo_seeds", {"ppo_seeds": self.ppo_seeds})
        for name, method in self.methods.items():
            if not name.replace("_", "").isalnum():
                raise cross_field_error(
                    "a method name is letters, digits and _ (it names files)", f"methods.{name}", {}
                )
            for member in method.members:
                if member not in TRAINED_REWARD_MODELS and member not in self.reward_models:
                    raise cross_field_error(
                        f"methods.{name}: member {member!r} is neither a trained kind "
                        f"({', '.join(TRAINED_REWARD_MODELS)}) nor a name under `reward_models:`",
                        f"methods.{name}.members",
                        {f"methods.{name}.members": method.members, "reward_models": sorted(self.reward_models)},
                    )
            uses_ensemble = method.reward_model == "ensemble" or "ensemble" in method.members
            if uses_ensemble and self.train_reward.ensemble_size < 2:
                raise cross_field_error(
                    f"methods.{name} uses the ensemble; set train_reward.ensemble_size >= 2",
                    "train_reward.ensemble_size",
                    {
                        f"methods.{name}.reward_model": method.reward_model,
                        "train_reward.ensemble_size": self.train_reward.ensemble_size,
                    },
                )
        for name in self.reward_models:
            if not name.replace("_", "").isalnum() or name in (*TRAINED_REWARD_MODELS, "mixture"):
                raise cross_field_error(
                    "a reward model's name is letters, digits and _, and not a trained kind (it names metric keys)",
                    f"reward_models.{name}",
                    {},
                )
        return self


class StageInputError(ValueError):
    """Bad params or bad input data: a stage fails the same way every time, so it exits with code 2
    and its message alone (stages/cli.py), and the flow does not retry it."""


class ParamsError(StageInputError):
    """A params file failed validation; the message names the file and every bad key."""


class _ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 (PyYAML) reads `1e-4` and `1.0e4` as strings (its floats need a dot and a signed
    exponent); YAML 1.2 and DVC read them as floats. Strict float fields would refuse the strings, so
    here they are floats too. A quoted "1e-4" stays a string (and is refused)."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)

ERROR_VALUE_CHARS = 60  # a value quoted in an error is cut to this many characters


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= ERROR_VALUE_CHARS else text[: ERROR_VALUE_CHARS - 3] + "..."


def _dotted(*parts: object) -> str:
    return ".".join(str(part) for part in parts if part != "")


def _problem(item: Mapping) -> str:
    """One line per pydantic error: the dotted key, the message and the offending value, shortened.

    A section's own input (a mapping) is never echoed: pydantic gives it as the input of a model
    validator's error and of a missing field, and on one line it is the whole section."""
    where = [str(part) for part in item["loc"] if part not in UNION_BRANCH_TAGS]
    if item["type"] == CROSS_FIELD:
        context = item["ctx"]
        involved = ", ".join(f"{_dotted(*where, key)} = {_shown(value)}" for key, value in context["values"].items())
        return f"{_dotted(*where, context['key'])}: {item['msg']}" + (f" (got {involved})" if involved else "")
    key = _dotted(*where) or "(top level)"
    message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
    value = item.get("input")
    if item["type"] == "missing" or isinstance(value, Mapping):
        return f"{key}: {message}"
    return f"{key}: {message} (got {_shown(value)})"


def load_params(path: str | Path) -> Params:
    """Read and validate a params file; raise ParamsError naming each bad dotted key and its value."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, yaml.YAMLError) as error:
        raise ParamsError(f"{path}: cannot read params: {error}") from error
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = [f"  {_problem(item)}" for item in error.errors()]
        raise ParamsError(f"{path}: invalid params\n" + "\n".join(problems)) from None

"""The `train_reward` run: the BRME (stage 1, then its k Gaussian heads) and the ensemble baseline's
members, each phase on its own DeepSpeed engine and resumable, then centred, saved and evaluated
(docs/method.md).

Phases, in order. With a frozen backbone (`finetune_backbone: false`): `features` (the pooled
features of every training pair, computed once), `stage1` (a Bradley-Terry head on them), `stage2`
(the Gaussian heads), `ensemble` (M Bradley-Terry heads, each on its own bootstrap resample). With
a fine-tuned backbone: `stage1` (backbone + head; the features are then the stage-1 backbone's),
`stage2`, then `member_0` .. `member_{M-1}`, each a backbone fine-tuned apart, seeds apart.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from robust_rlhf.config import Params, Stage1Params, Stage2Params
from robust_rlhf.lora import add_lora
from robust_rlhf.models import enable_gradient_checkpointing, load_backbone, load_tokenizer, model_options
from robust_rlhf.reward.centering import anchored_heads, centring_affine, fold_affine
from robust_rlhf.reward.evaluation import evaluate_reward_models
from robust_rlhf.reward.model import (
    AnchoredGaussianHeads,
    BRMERewardModel,
    GaussianHeads,
    L2LinearHeads,
    RewardModelConfig,
    linear_heads,
    resolve_pooling,
    save_reward_model,
)
from robust_rlhf.reward.scoring import ENSEMBLE_MANIFEST, MEMBER_HEADS_FILE, STAGE1_FOLDER, RewardModels
from robust_rlhf.reward.training import (
    PhaseProgress,
    bootstrap_weights,
    bt_objective,
    checkpoint_due,
    phase_optimizer_steps,
    pooled_features,
    stage2_objective,
    train_heads_on_features,
    train_stage1,
    train_stage2_unfrozen,
)
from robust_rlhf.runtime.atomic import atomic_directory, atomic_write_json, read_jsonl
from robust_rlhf.runtime.distributed import full_state_dict, init_distributed, training_engine
from robust_rlhf.runtime.guards import Diverged, check_above_chance, check_finite
from robust_rlhf.runtime.live import LiveLog
from robust_rlhf.runtime.metrics import write_csv
from robust_rlhf.runtime.resume import PhasedResume, prune_finished, run_key
from robust_rlhf.statistics import ClusterBootstrap

logger = logging.getLogger(__name__)

# Ensemble member i is seeded with seed + ENSEMBLE_SEED_OFFSET + i (the heads layout uses the offset
# alone for its one engine); the BRME's head init, bootstrap and anchors use seed, seed + 1, seed + 2.
ENSEMBLE_SEED_OFFSET = 1000
ANCHOR_SEED_OFFSET = 2
SHIFT_FILE = "shift_responses.jsonl"
# What the stage reads from --data (the resume key hashes each)
INPUT_FILES = ("prefs_train.jsonl", "prefs_val.jsonl", "prefs_test.jsonl", SHIFT_FILE)


@dataclass(frozen=True)
class RewardPaths:
    data: Path
    policy: Path
    reward: Path
    ensemble: Path
    reliability: Path
    resume: Path
    live: Path | None = None  # DVCLive's folder: every phase's loss per micro-batch, while the run runs


def run_train_reward(params: Params, paths: RewardPaths) -> dict:
    """Train, centre, save and evaluate every reward model; returns the stage's metrics."""
    run = _RewardRun(params, paths)
    stage1_state, features = run.train_stage1()
    responses_features = torch.cat([features["pooled_chosen"], features["pooled_rejected"]])
    stage1_model = run.factory.loaded(run.factory.brme(run.seed), stage1_state)
    anchors, prior_std = run.anchors(stage1_model, responses_features)
    run.train_stage2(stage1_model, stage1_state, features, anchors, prior_std)
    run.train_members(features)
    models, centering = run.assemble(stage1_model, responses_features)
    val_report = run.evaluate(models, centering)
    run.resume.remove()
    return {**val_report, "centering": centering, "train": run.train_summary(prior_std)}


class _RewardRun:
    """One train_reward run: its inputs, its model factory and its resume state, shared by the phases,
    which run in this order (each is skipped when the resume state has it finished)."""

    def __init__(self, params: Params, paths: RewardPaths) -> None:
        self.params, self.paths = params, paths
        self.config, remote = params.train_reward, params.models.trust_remote_code
        self.world_size = init_distributed()
        self.train_pairs = read_jsonl(paths.data / "prefs_train.jsonl")
        source = paths.policy if params.models.reward_backbone == "policy" else params.models.reward_backbone
        self.tokenizer = load_tokenizer(source, trust_remote_code=remote, padding_side="right")
        self.factory = _ModelFactory(source, model_options(params), self.config)
        self.seed = self.config.seed
        self.member_names = [f"member_{index}" for index in range(self.config.ensemble_size)]
        phases = (
            ["stage1", "stage2", *self.member_names]
            if self.config.finetune_backbone
            else ["features", "stage1", "stage2", "ensemble"]
        )
        # A run killed after a checkpoint goes on from it: finished phases' results, the interrupted
        # phase's engine (model, optimizer, scheduler), its data position and the RNGs.
        prune_finished(paths.resume.parent, keep=paths.resume)
        self.resume = PhasedResume(
            paths.resume,
            run_key(
                resume_params(params, world_size=self.world_size),
                {
                    **{name: paths.data / name for name in INPUT_FILES if (paths.data / name).exists()},
                    **({"backbone": Path(source)} if Path(source).is_dir() else {}),
                },
            ),
            phases,
            [paths.reward, paths.ensemble],
        )
        if self.resume.saved is not None:
            logger.info(
                "resuming train_reward from step %d: phase %s at %s (%s)",
                self.resume.saved["step"],
                self.resume.phase,
                _position_text(self.resume.position),
                self.resume.folder,
            )
        # The resume state's losses are the one source: the live folder restarts from them, so a resumed
        # run's series hold no micro-batch twice.
        self.live = None if paths.live is None else LiveLog(paths.live)
        self.live_logged = {phase: len(losses) for phase, losses in restored_losses(self.resume).items()}
        if self.live is not None:
            self.live.rewrite(loss_rows(restored_losses(self.resume)))

    def train_phase(self, phase: str, stage: Stage1Params | Stage2Params, new_model: Callable, train: Callable):
        """Train `phase`'s model on a fresh engine, going on from its checkpoint when it has one, and
        checkpoint every `checkpoint_every` optimizer steps. Returns (engine, losses)."""
        self.resume.start(phase)
        engine = training_engine(
            new_model(),
            deepspeed=self.params.deepspeed,
            micro_batch_size=stage.micro_batch_size,
            world_size=self.world_size,
            gradient_accumulation_steps=stage.gradient_accumulation_steps,
            learning_rate=stage.learning_rate,
            weight_decay=stage.weight_decay,
            lr_schedule=self.config.lr_schedule,
            total_steps=phase_optimizer_steps(
                len(self.train_pairs),
                epochs=stage.epochs,
                micro_batch_size=stage.micro_batch_size,
                gradient_accumulation_steps=stage.gradient_accumulation_steps,
            ),
        )
        progress = PhaseProgress(**(self.resume.restore(phase, engine) or {}))

        def on_step(reached: PhaseProgress) -> None:
            if self.live is not None:
                first = self.live_logged.get(phase, 0)
                for row in loss_rows({phase: reached.losses[first:]}, first=first):
                    self.live.log(row["step"], {key: value for key, value in row.items() if key != "step"})
                self.live_logged[phase] = len(reached.losses)
            if checkpoint_due(
                len(reached.losses),
                gradient_accumulation_steps=stage.gradient_accumulation_steps,
                checkpoint_every=self.config.checkpoint_every,
            ):
                self.resume.checkpoint(phase, engine, position=asdict(reached), micro_batches=len(reached.losses))

        return engine, train(engine, phase=f"train_reward {phase}", progress=progress, on_step=on_step)

    def _train_bt_on_features(self, features: dict, *, seed: int, objective) -> Callable:
        stage1 = self.config.stage1
        return partial(
            train_heads_on_features,
            features=features,
            epochs=stage1.epochs,
            micro_batch_size=stage1.micro_batch_size,
            seed=seed,
            loss_name="bt",
            objective=objective,
        )

    def _train_bt_finetuned(self, *, seed: int) -> Callable:
        stage1 = self.config.stage1
        return partial(
            train_stage1,
            pairs=self.train_pairs,
            tokenizer=self.tokenizer,
            epochs=stage1.epochs,
            micro_batch_size=stage1.micro_batch_size,
            max_length=self.config.max_length,
            seed=seed,
        )

    def train_stage1(self) -> tuple[dict, dict]:
        """Stage 1: the single Bradley-Terry reward model, and every training pair's pooled features.
        Returns the stage-1 model's state and the features."""
        config, resume, factory, seed = self.config, self.resume, self.factory, self.seed
        stage1 = config.stage1
        if config.finetune_backbone:
            if not resume.finished("stage1"):
                engine1, losses = self.train_phase(
                    "stage1", stage1, lambda: _bt_only(factory.brme(seed)), self._train_bt_finetuned(seed=seed)
                )
                engine1.eval()
                features = pooled_features(
                    engine1.module,
                    self.train_pairs,
                    self.tokenizer,
                    batch_size=stage1.micro_batch_size,
                    max_length=config.max_length,
                )
                check_finite("features", features, phase="train_reward stage1", step=len(losses))
                resume.finish("stage1", losses, {"stage1": full_state_dict(engine1), "features": features})
        else:
            if not resume.finished("features"):
                features = pooled_features(
                    factory.brme(seed).eval(),
                    self.train_pairs,
                    self.tokenizer,
                    batch_size=stage1.micro_batch_size,
                    max_length=config.max_length,
                )
                check_finite("features", features, phase="train_reward features", step=0)  # never saved non-finite
                resume.finish("features", [], {"features": features})
            if not resume.finished("stage1"):
                engine1, losses = self.train_phase(
                    "stage1",
                    stage1,
                    lambda: factory.linear_heads(1, seed),
                    self._train_bt_on_features(
                        resume.tensors("features"),
                        seed=seed,
                        objective=bt_objective(torch.ones(len(self.train_pairs), 1)),
                    ),
                )
                model = factory.brme(seed)
                model.bt_head.load_state_dict(full_state_dict(engine1))
                resume.finish("stage1", losses, {"stage1": model.state_dict()})
        return resume.tensors("stage1"), resume.tensors("features")

    def anchors(self, stage1_model: BRMERewardModel, responses_features: torch.Tensor):
        """The anchored-ensemble prior of stage 2 around the stage-1 head: (anchors, prior std), or
        (None, 0.0) without one."""
        config = self.config
        if config.stage2.prior_scale <= 0:
            return None, 0.0
        return anchored_heads(
            stage1_model.bt_head.weight.detach(),
            stage1_model.bt_head.bias.detach(),
            responses_features,
            num_heads=config.num_heads,
            prior_scale=config.stage2.prior_scale,
            sigma_min=config.sigma_min,
            seed=self.seed + ANCHOR_SEED_OFFSET,
        )

    def train_stage2(
        self, stage1_model: BRMERewardModel, stage1_state: dict, features: dict, anchors, prior_std: float
    ) -> None:
        """Stage 2: the k Gaussian heads, each on its own bootstrap resample, anchored around the stage-1 head."""
        config, stage2, seed, factory = self.config, self.config.stage2, self.seed, self.factory
        if self.resume.finished("stage2"):
            return
        num_pairs = len(self.train_pairs)
        with torch.no_grad():
            targets = {side: stage1_model.bt_reward(features[f"pooled_{side}"]) for side in ("chosen", "rejected")}
        objective = stage2_objective(
            stage2.loss,
            bootstrap_weights(num_pairs, config.num_heads, seed=seed, enabled=stage2.bootstrap),
            targets=targets,
            noise_floor=stage2.noise_floor,
            num_noise_samples=stage2.num_noise_samples,
        )
        common = dict(epochs=stage2.epochs, micro_batch_size=stage2.micro_batch_size, seed=seed)
        if stage2.freeze_backbone:
            engine2, losses = self.train_phase(
                "stage2",
                stage2,
                lambda: factory.heads(seed, anchors, prior_std, num_pairs),
                partial(
                    train_heads_on_features, features=features, objective=objective, loss_name=stage2.loss, **common
                ),
            )
            brme_state = {**stage1_state, **{f"heads.{k}": v for k, v in full_state_dict(engine2).items()}}
        else:
            engine2, losses = self.train_phase(
                "stage2",
                stage2,
                lambda: factory.stage2_model(seed, stage1_state, anchors, prior_std, num_pairs),
                partial(
                    train_stage2_unfrozen,
                    pairs=self.train_pairs,
                    tokenizer=self.tokenizer,
                    objective=objective,
                    max_length=config.max_length,
                    **common,
                ),
            )
            brme_state = full_state_dict(engine2)
        self.resume.finish("stage2", losses, {"brme": brme_state})

    def train_members(self, features: dict) -> None:
        """The ensemble baseline's members: backbones fine-tuned seeds apart, or linear BT heads on the
        frozen features, each on its own bootstrap resample."""
        config, resume, factory, stage1 = self.config, self.resume, self.factory, self.config.stage1
        if config.finetune_backbone:
            for index, name in enumerate(self.member_names):
                if not resume.finished(name):
                    member_seed = self.seed + ENSEMBLE_SEED_OFFSET + index
                    member_engine, losses = self.train_phase(
                        name,
                        stage1,
                        partial(lambda s: _bt_only(factory.member(s)), member_seed),
                        self._train_bt_finetuned(seed=member_seed),
                    )
                    resume.finish(name, losses, {name: full_state_dict(member_engine)})
        elif self.member_names and not resume.finished("ensemble"):
            member_seed = self.seed + ENSEMBLE_SEED_OFFSET
            weights = bootstrap_weights(len(self.train_pairs), len(self.member_names), seed=member_seed, enabled=True)
            engine, losses = self.train_phase(
                "ensemble",
                stage1,
                lambda: factory.linear_heads(len(self.member_names), member_seed),
                self._train_bt_on_features(features, seed=member_seed, objective=bt_objective(weights)),
            )
            resume.finish("ensemble", losses, {"ensemble": full_state_dict(engine)})

    def assemble(self, stage1_model: BRMERewardModel, responses_features: torch.Tensor) -> tuple[RewardModels, dict]:
        """Every model rebuilt from its saved weights, so a resumed run and an uninterrupted one publish
        the same tensors; then centred on the training responses before anything aggregates them, and
        saved. Returns the models and the centring."""
        config, factory, resume, tokenizer = self.config, self.factory, self.resume, self.tokenizer
        stage2 = config.stage2
        brme = factory.loaded(factory.brme(self.seed), resume.tensors("brme"))
        brme_features = (
            responses_features
            if stage2.freeze_backbone
            else _responses_features(brme, self.train_pairs, tokenizer, config)
        )
        centering = {"brme": centre_brme_heads(brme, brme_features)}
        separate_stage1 = None if stage2.freeze_backbone else stage1_model
        members: list[BRMERewardModel] = []
        scale, enabled = config.member_normalization == "standardize", config.member_normalization != "none"
        if config.finetune_backbone:
            members = [factory.loaded(factory.member(0), resume.tensors(name)) for name in self.member_names]
            centering["ensemble"] = centre_separate_members(
                members,
                [_responses_features(member, self.train_pairs, tokenizer, config) for member in members],
                scale=scale,
                enabled=enabled,
            )
        elif self.member_names:
            member_head = linear_heads(factory.hidden, len(self.member_names), init_std=config.head_init_std, seed=0)
            member_head.load_state_dict(resume.tensors("ensemble"))
            centering["ensemble"] = centre_linear_heads(member_head, responses_features, scale=scale, enabled=enabled)
            (separate_stage1 or brme).attach_member_head(member_head.eval())
        save_reward_models(
            brme,
            separate_stage1,
            members,
            self.member_names,
            tokenizer,
            reward=self.paths.reward,
            ensemble=self.paths.ensemble,
        )
        return RewardModels(brme, tokenizer, members, separate_stage1), centering

    def evaluate(self, models: RewardModels, centering: dict) -> dict:
        """Val and test metrics with intervals, and the reliability diagrams; a reward model no better
        than chance on val stops the stage and unpublishes every model."""
        params, paths, config = self.params, self.paths, self.config
        val_report, reliability_rows = evaluate_reward_models(
            models,
            {split: read_jsonl(paths.data / f"prefs_{split}.jsonl") for split in ("val", "test")},
            read_jsonl(paths.data / SHIFT_FILE) if (paths.data / SHIFT_FILE).exists() else [],
            noise_floor=config.stage2.noise_floor,
            batch_size=config.stage1.micro_batch_size,
            likelihood_scales={
                "ensemble": torch.tensor(centering["ensemble"]["scales"])
                if centering.get("ensemble", {}).get("applied")
                else torch.ones(len(self.member_names))
            },
            bootstrap=ClusterBootstrap(
                params.statistics.bootstrap_resamples, params.statistics.confidence_level, self.seed
            ),
        )
        try:
            check_above_chance(
                val_accuracies(val_report["val"]), min_accuracy=config.min_val_accuracy, phase="train_reward"
            )
        except Diverged:
            for published in (paths.reward, paths.ensemble):  # nothing downstream may use them
                shutil.rmtree(published, ignore_errors=True)
            raise
        with atomic_directory(paths.reliability) as reliability_tmp:
            for kind in dict.fromkeys(row["reward_model"] for row in reliability_rows):
                write_csv(reliability_tmp / f"{kind}.csv", [r for r in reliability_rows if r["reward_model"] == kind])
        return val_report

    def train_summary(self, prior_std: float) -> dict:
        config, losses = self.config, self.resume.losses
        member_phases = self.member_names if config.finetune_backbone else ["ensemble"] * bool(self.member_names)
        return {
            "pairs": len(self.train_pairs),
            "stage1_final_loss": losses["stage1"][-1],
            "stage2_final_loss": losses["stage2"][-1],
            "stage2_loss": config.stage2.loss,
            "stage2_prior_std": prior_std,
            "ensemble_layout": "models" if config.finetune_backbone else "heads",
            **(
                {"ensemble_final_loss_mean": sum(losses[p][-1] for p in member_phases) / len(member_phases)}
                if member_phases
                else {}
            ),
        }


class _ModelFactory:
    """Fresh reward models on a fresh copy of the backbone, all of one config; under `train_reward.lora`
    each backbone carries its own adapters (the same keys in every model, so states move between phases)."""

    def __init__(self, source, options: dict, config) -> None:
        # options: the loader keywords (robust_rlhf/models.py model_options)
        self.source, self.options, self.config = source, options, config
        backbone_config = self.backbone().config
        self.pooling = resolve_pooling(config.pooling, backbone_config)
        self.hidden = backbone_config.hidden_size

    def backbone(self):
        backbone = load_backbone(self.source, **self.options)
        # The params allow both only with finetune_backbone, where the backbone is trained.
        if self.config.gradient_checkpointing:
            backbone = enable_gradient_checkpointing(backbone)
        return add_lora(backbone, self.config.lora) if self.config.lora.enabled else backbone

    def _config(self, num_heads: int) -> RewardModelConfig:
        return RewardModelConfig(
            num_heads=num_heads,
            sigma_min=self.config.sigma_min,
            pooling=self.pooling,
            max_length=self.config.max_length,
        )

    def brme(self, seed: int) -> BRMERewardModel:
        """Same seed -> same head init every time."""
        return BRMERewardModel(
            self.backbone(), self._config(self.config.num_heads), head_init_std=self.config.head_init_std, seed=seed
        )

    def member(self, seed: int) -> BRMERewardModel:
        return BRMERewardModel(self.backbone(), self._config(0), head_init_std=self.config.head_init_std, seed=seed)

    def linear_heads(self, num_outputs: int, seed: int) -> L2LinearHeads:
        """M linear BT heads on frozen features, with stage 1's L2 term."""
        heads = linear_heads(self.hidden, num_outputs, init_std=self.config.head_init_std, seed=seed)
        return L2LinearHeads(heads, l2_coef=self.config.stage1.l2_coef)

    def heads(
        self, seed: int, anchors: dict[str, torch.Tensor] | None, prior_std: float, num_items: int
    ) -> GaussianHeads:
        """The Gaussian heads to train: started at their anchors and pulled toward them when there are
        some (Pearce et al. start each member at its anchor), else at their seeded random init."""
        if anchors is not None:
            return AnchoredGaussianHeads(
                self.hidden,
                self.config.num_heads,
                sigma_min=self.config.sigma_min,
                anchors=anchors,
                prior_std=prior_std,
                num_items=num_items,
            )
        return GaussianHeads(
            self.hidden,
            self.config.num_heads,
            sigma_min=self.config.sigma_min,
            init_std=self.config.head_init_std,
            seed=seed + 1,
        )

    def stage2_model(self, seed: int, stage1_state: dict, anchors, prior_std: float, num_items: int) -> BRMERewardModel:
        """Unfrozen stage 2 trains backbone + Gaussian heads from the stage-1 weights; the BT head stays."""
        model = self.brme(seed)
        model.load_state_dict(stage1_state)
        model.heads = self.heads(seed, anchors, prior_std, num_items)
        model.bt_head.requires_grad_(False)
        return model

    @staticmethod
    def loaded(model: BRMERewardModel, state: dict) -> BRMERewardModel:
        model.load_state_dict(state)
        return model.eval()


def _bt_only(model: BRMERewardModel) -> BRMERewardModel:
    """Stage 1 (and an ensemble member) trains backbone + scalar head only."""
    model.heads.requires_grad_(False)
    return model


def _responses_features(model: BRMERewardModel, pairs: list[dict], tokenizer, config) -> torch.Tensor:
    features = pooled_features(
        model, pairs, tokenizer, batch_size=config.stage1.micro_batch_size, max_length=config.max_length
    )
    return torch.cat([features["pooled_chosen"], features["pooled_rejected"]])


@torch.no_grad()
def centre_brme_heads(brme: BRMERewardModel, features: torch.Tensor) -> dict:
    """Subtract each Gaussian head's mean reward on the training responses from its bias; the scale
    stays, tied to the heads' sigmas by the likelihood they were fitted with. Returns the offsets."""
    heads = brme.heads
    offset, scale = centring_affine(features @ heads.mu_weight.T + heads.mu_bias, scale=False)
    weight, bias = fold_affine(heads.mu_weight, heads.mu_bias, offset, scale)
    heads.mu_weight.copy_(weight)
    heads.mu_bias.copy_(bias)
    return {"offsets": offset.tolist()}


@torch.no_grad()
def centre_linear_heads(heads: torch.nn.Linear, features: torch.Tensor, *, scale: bool, enabled: bool) -> dict:
    """Map each head's rewards on the training responses to mean 0 (and std 1 with `scale`), folded
    into the weights. Returns the raw offsets and scales."""
    offset, spread = centring_affine(features @ heads.weight.T + heads.bias, scale=scale)
    if enabled:
        weight, bias = fold_affine(heads.weight, heads.bias, offset, spread)
        heads.weight.copy_(weight)
        heads.bias.copy_(bias)
    return {"offsets": offset.tolist(), "scales": spread.tolist(), "applied": enabled}


def centre_separate_members(
    members: list[BRMERewardModel], features: list[torch.Tensor], *, scale: bool, enabled: bool
) -> dict:
    """`centre_linear_heads` for members with backbones of their own, each on its own features."""
    rows = [
        centre_linear_heads(member.bt_head, member_features, scale=scale, enabled=enabled)
        for member, member_features in zip(members, features)
    ]
    return {
        "offsets": [row["offsets"][0] for row in rows],
        "scales": [row["scales"][0] for row in rows],
        "applied": enabled,
    }


def save_reward_models(
    brme: BRMERewardModel,
    separate_stage1: BRMERewardModel | None,
    members: list[BRMERewardModel],
    member_names: list[str],
    tokenizer,
    *,
    reward: Path,
    ensemble: Path,
) -> None:
    """The BRME (and the stage-1 model beside it when stage 2 retrained the backbone) to `reward`;
    the members to `ensemble`: one linear map (layout `heads`) or one folder each (layout `models`)."""
    owner = separate_stage1 or brme
    with atomic_directory(reward) as reward_tmp:
        save_reward_model(brme, tokenizer, reward_tmp, _without_member_head(brme.state_dict()))
        if separate_stage1 is not None:
            save_reward_model(
                separate_stage1,
                tokenizer,
                reward_tmp / STAGE1_FOLDER,
                _without_member_head(separate_stage1.state_dict()),
            )
    with atomic_directory(ensemble) as ensemble_tmp:
        if owner.member_head is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in owner.member_head.state_dict().items()},
                str(ensemble_tmp / MEMBER_HEADS_FILE),
            )
            atomic_write_json(ensemble_tmp / ENSEMBLE_MANIFEST, {"members": member_names, "layout": "heads"})
        else:
            for name, member in zip(member_names, members):
                save_reward_model(member, tokenizer, ensemble_tmp / name, member.state_dict())
            atomic_write_json(ensemble_tmp / ENSEMBLE_MANIFEST, {"members": member_names, "layout": "models"})


def _without_member_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.startswith("member_head.")}


def restored_losses(resume: PhasedResume) -> dict[str, list[float]]:
    """Every phase's micro-batch losses as the resume state has them: finished phases' and, when a phase
    was checkpointed inside, its losses up to that checkpoint."""
    losses = dict(resume.losses)
    if resume.position is not None:
        losses[resume.phase] = resume.position["losses"]
    return losses


def loss_rows(losses: dict[str, list[float]], *, first: int = 0) -> list[dict]:
    """DVCLive rows of micro-batch losses: {"step": first + i, "loss/<phase>": loss i}, phase by phase."""
    return [
        {"step": first + index, f"loss/{phase}": loss}
        for phase, values in losses.items()
        for index, loss in enumerate(values)
    ]


def resume_params(params: Params, *, world_size: int) -> dict:
    """The params a saved train_reward state depends on. Not `checkpoint_every` (when checkpoints are
    taken) nor `min_val_accuracy` (a check after training): neither changes what is trained."""
    return {
        "seed": params.seed,
        "models": params.models.model_dump(include={"reward_backbone", "trust_remote_code", "attn_implementation"}),
        "deepspeed": params.deepspeed.model_dump(),
        "train_reward": params.train_reward.model_dump(exclude={"checkpoint_every", "min_val_accuracy"}),
        "world_size": world_size,
    }


def val_accuracies(val: dict) -> dict[str, float]:
    """The val accuracy (on the labels) of every reward model PPO can use: the single RM, the BRME's
    and the ensemble's mean."""
    accuracies = {
        "single": val["single"]["accuracy"]["value"],
        "brme mean": val["brme"]["aggregates"]["mean"]["accuracy"]["value"],
    }
    if "ensemble" in val:
        accuracies["ensemble mean"] = val["ensemble"]["aggregates"]["mean"]["accuracy"]["value"]
    return accuracies


def _position_text(position: dict | None) -> str:
    if position is None:
        return "its start"
    return f"epoch {position['epoch'] + 1}, batch {position['batch']}"

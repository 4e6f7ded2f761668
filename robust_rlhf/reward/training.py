"""Reward-model training loops on DeepSpeed engines (docs/method.md): the BRME's two stages and the
ensemble baseline's members.

Stage 1: a scalar head with the Bradley-Terry loss, on a fine-tuned backbone (`train_stage1`) or on
frozen features computed once (`train_heads_on_features` with `bt_objective`).
Stage 2: the k Gaussian heads, each on its own bootstrap resample and anchored around the stage-1
head, with `thurstone` (the labels' probit likelihood, sigma explaining label noise), `bt_sampled`
(the BT marginal likelihood over Gaussian rewards) or the degenerate `gaussian_nll`.

Every training loop can start part-way (a `PhaseProgress` from a checkpoint) and reports its
progress after each micro-batch to `on_step`, which decides when to checkpoint (`checkpoint_due`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from robust_rlhf.reward.losses import (
    bradley_terry_heads_loss,
    bradley_terry_loss,
    bt_sampled_loss,
    gaussian_nll_loss,
    thurstone_nll_loss,
)
from robust_rlhf.reward.model import BRMERewardModel, tokenize_pairs
from robust_rlhf.runtime.guards import check_finite

logger = logging.getLogger(__name__)


@dataclass
class PhaseProgress:
    """How far one training phase got: the next epoch and batch to run and the loss of every
    micro-batch so far. Stage 2 adds its generator's state (noise, and frozen stage 2's shuffles) and
    frozen stage 2 the current epoch's row order, which that generator drew."""

    epoch: int = 0
    batch: int = 0
    losses: list[float] = field(default_factory=list)
    generator: list[int] | None = None
    order: list[int] | None = None


OnStep = Callable[[PhaseProgress], None]


def checkpoint_due(micro_batches: int, *, gradient_accumulation_steps: int, checkpoint_every: int) -> bool:
    """Whether the micro-batch just run completed an optimizer step whose number is a multiple of
    `checkpoint_every`. Only at an accumulation boundary: a DeepSpeed checkpoint holds no partly
    accumulated gradients."""
    optimizer_steps, pending = divmod(micro_batches, gradient_accumulation_steps)
    return pending == 0 and optimizer_steps % checkpoint_every == 0


def remaining_batches(epoch: int, num_batches: int, progress: PhaseProgress) -> range:
    """Indices of `epoch`'s batches still to run: all of them, or those after `progress.batch` in the
    epoch the phase stopped in."""
    return range(progress.batch if epoch == progress.epoch else 0, num_batches)


def _generator(seed: int, progress: PhaseProgress) -> torch.Generator:
    """A generator seeded by `seed`, or in the state a checkpoint saved."""
    generator = torch.Generator().manual_seed(seed)
    if progress.generator is not None:
        generator.set_state(torch.tensor(progress.generator, dtype=torch.uint8))
    return generator


@dataclass
class PairBatch:
    """Tokenised chosen and rejected texts of B pairs, each (B, L), plus the pairs' row indices (B,)."""

    chosen: dict[str, torch.Tensor]
    rejected: dict[str, torch.Tensor]
    rows: torch.Tensor


def pair_batches(pairs: list[dict], tokenizer, *, batch_size: int, max_length: int, seed: int | None):
    """Yield PairBatch over `pairs` in micro-batches; shuffled by `seed`, in order when seed is None."""
    order = list(range(len(pairs)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        prompts = [pairs[i]["prompt"] for i in rows]
        chosen = tokenize_pairs(tokenizer, prompts, [pairs[i]["chosen"] for i in rows], max_length=max_length)
        rejected = tokenize_pairs(tokenizer, prompts, [pairs[i]["rejected"] for i in rows], max_length=max_length)
        yield PairBatch(dict(chosen), dict(rejected), torch.tensor(rows))


def remaining_pair_batches(
    pairs: list[dict],
    tokenizer,
    *,
    epochs: int,
    micro_batch_size: int,
    max_length: int,
    seed: int,
    phase: str,
    progress: PhaseProgress,
):
    """Yield (epoch, batch index, PairBatch) for every micro-batch still to run from `progress` on;
    epoch e is shuffled by seed + e, so a resumed run sees the batches an uninterrupted one does."""
    for epoch in range(progress.epoch, epochs):
        batches = list(
            pair_batches(pairs, tokenizer, batch_size=micro_batch_size, max_length=max_length, seed=seed + epoch)
        )
        todo = remaining_batches(epoch, len(batches), progress)
        for index in tqdm(
            todo, desc=f"{phase} epoch {epoch + 1}/{epochs}", unit="batch", initial=todo.start, total=len(batches)
        ):
            yield epoch, index, batches[index]


def bootstrap_weights(num_items: int, num_heads: int, *, seed: int, enabled: bool) -> torch.Tensor:
    """(N, k) counts: column i is head i's bootstrap resample (multinomial N draws), or all ones."""
    if not enabled:
        return torch.ones(num_items, num_heads)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, num_items, (num_heads, num_items), generator=generator)
    counts = torch.zeros(num_heads, num_items)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=counts.dtype))
    return counts.T.contiguous()


def phase_optimizer_steps(
    num_pairs: int, *, epochs: int, micro_batch_size: int, gradient_accumulation_steps: int
) -> int:
    """Optimizer steps of one training phase, the length of its learning-rate schedule: every epoch runs
    ceil(num_pairs / micro_batch_size) micro-batches (the last may be short) and DeepSpeed steps the
    optimizer at every gradient_accumulation_steps-th micro-batch of the phase, across epochs."""
    return epochs * -(-num_pairs // micro_batch_size) // gradient_accumulation_steps


def backward_and_step(engine, loss: torch.Tensor, name: str, *, phase: str, losses: list[float]) -> None:
    """Stop on a non-finite loss before it reaches the weights (the last checkpoint stays the last good
    one), else backward and step `engine` and append the loss to `losses`."""
    check_finite(name, loss, phase=phase, step=len(losses))
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())


def train_stage1(
    engine,
    pairs: list[dict],
    tokenizer,
    *,
    epochs: int,
    micro_batch_size: int,
    max_length: int,
    seed: int,
    phase: str = "train_reward stage1",
    progress: PhaseProgress | None = None,
    on_step: OnStep | None = None,
) -> list[float]:
    """Bradley-Terry training of backbone + bt_head through `engine` (wrapping a BRMERewardModel),
    from `progress` on. Returns the loss of every micro-batch of the phase."""
    model: BRMERewardModel = engine.module
    progress = progress or PhaseProgress()
    losses = list(progress.losses)
    engine.train()
    for epoch, index, batch in remaining_pair_batches(
        pairs,
        tokenizer,
        epochs=epochs,
        micro_batch_size=micro_batch_size,
        max_length=max_length,
        seed=seed,
        phase=phase,
        progress=progress,
    ):
        reward_chosen = model.bt_reward(model.pooled(**_to(batch.chosen, engine.device))).float()
        reward_rejected = model.bt_reward(model.pooled(**_to(batch.rejected, engine.device))).float()
        loss = bradley_terry_loss(reward_chosen, reward_rejected)
        backward_and_step(engine, loss, "loss/bt", phase=phase, losses=losses)
        if on_step is not None:
            on_step(PhaseProgress(epoch, index + 1, losses))
    return losses


@torch.inference_mode()
def pooled_features(
    model: BRMERewardModel, pairs: list[dict], tokenizer, *, batch_size: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Pooled features of every pair's chosen and rejected response, in row order, each (N, H)."""
    out: dict[str, list[torch.Tensor]] = {"pooled_chosen": [], "pooled_rejected": []}
    device = next(model.parameters()).device
    for batch in pair_batches(pairs, tokenizer, batch_size=batch_size, max_length=max_length, seed=None):
        for side in ("chosen", "rejected"):
            out[f"pooled_{side}"].append(model.pooled(**_to(getattr(batch, side), device)).float().cpu())
    return {key: torch.cat(value) for key, value in out.items()}


# A head objective maps (head module, its outputs on a micro-batch's chosen and rejected features, the
# micro-batch's row indices, the phase's generator) to the loss.
HeadObjective = Callable[..., torch.Tensor]


def bt_objective(weights: torch.Tensor) -> HeadObjective:
    """Bradley-Terry on M linear reward heads at once, head m on its own bootstrap weights (N, M), plus
    the L2 term that `L2LinearHeads` returns beside its rewards (once, from the chosen side's call)."""

    def objective(module, chosen, rejected, rows, generator):
        (reward_chosen, l2_term), (reward_rejected, _) = chosen, rejected
        reward_chosen, reward_rejected = reward_chosen.float(), reward_rejected.float()
        return bradley_terry_heads_loss(reward_chosen, reward_rejected, weights[rows].to(reward_chosen)) + l2_term

    return objective


def stage2_objective(
    loss_name: str,
    weights: torch.Tensor,
    *,
    targets: dict[str, torch.Tensor] | None,
    noise_floor: float,
    num_noise_samples: int,
) -> HeadObjective:
    """The BRME stage-2 objective on the Gaussian heads' outputs: the selected loss on each head's
    bootstrap weights (N, k), plus the anchored prior term when the heads return one
    (`AnchoredGaussianHeads`, once, from the chosen side's call). See docs/method.md."""

    def objective(heads, chosen, rejected, rows, generator):
        (mu_c, sigma_c), (mu_r, sigma_r) = _as_float(chosen[:2]), _as_float(rejected[:2])
        row_weights = weights[rows].to(mu_c)
        if loss_name == "thurstone":
            loss = thurstone_nll_loss(mu_c, sigma_c, mu_r, sigma_r, row_weights, noise_floor=noise_floor)
        elif loss_name == "gaussian_nll":
            loss = gaussian_nll_loss(
                torch.cat([mu_c, mu_r]),
                torch.cat([sigma_c, sigma_r]),
                torch.cat([targets["chosen"][rows], targets["rejected"][rows]]).to(mu_c),
                torch.cat([row_weights, row_weights]),
            )
        else:
            noise_shape = (num_noise_samples, *mu_c.shape)
            eps_c = torch.randn(noise_shape, generator=generator).to(mu_c)
            eps_r = torch.randn(noise_shape, generator=generator).to(mu_c)
            loss = bt_sampled_loss(mu_c, sigma_c, mu_r, sigma_r, eps_c, eps_r, row_weights)
        return loss + chosen[2] if len(chosen) == 3 else loss

    return objective


def train_heads_on_features(
    engine,
    features: dict[str, torch.Tensor],
    objective: HeadObjective,
    *,
    loss_name: str,
    epochs: int,
    micro_batch_size: int,
    seed: int,
    phase: str,
    progress: PhaseProgress | None = None,
    on_step: OnStep | None = None,
) -> list[float]:
    """Train a head module (`engine` wraps GaussianHeads or linear heads) on precomputed pooled
    features, from `progress` on: the backbone is frozen, so its features are computed once and
    reused by every epoch and head. Returns the loss of every micro-batch of the phase."""
    progress = progress or PhaseProgress()
    generator = _generator(seed, progress)
    num_pairs = features["pooled_chosen"].shape[0]
    num_batches = -(-num_pairs // micro_batch_size)
    # Features were stored in fp32; under bf16/fp16 the heads engine holds half-precision weights.
    feature_dtype = next(engine.module.parameters()).dtype
    losses = list(progress.losses)
    engine.train()
    for epoch in range(progress.epoch, epochs):
        # The generator drew this epoch's order before the checkpoint: take the saved one, not a new draw.
        resumed_epoch = epoch == progress.epoch and progress.order is not None
        order = torch.tensor(progress.order) if resumed_epoch else torch.randperm(num_pairs, generator=generator)
        todo = remaining_batches(epoch, num_batches, progress)
        for index in tqdm(
            todo,
            desc=f"{phase} epoch {epoch + 1}/{epochs}",
            unit="batch",
            initial=todo.start,
            total=num_batches,
            mininterval=5,
        ):
            rows = order[index * micro_batch_size : (index + 1) * micro_batch_size]
            chosen = engine(features["pooled_chosen"][rows].to(engine.device, feature_dtype))
            rejected = engine(features["pooled_rejected"][rows].to(engine.device, feature_dtype))
            loss = objective(engine.module, chosen, rejected, rows, generator)
            backward_and_step(engine, loss, f"loss/{loss_name}", phase=phase, losses=losses)
            if on_step is not None:
                on_step(PhaseProgress(epoch, index + 1, losses, generator.get_state().tolist(), order.tolist()))
    return losses


def train_stage2_unfrozen(
    engine,
    pairs: list[dict],
    tokenizer,
    objective: HeadObjective,
    *,
    epochs: int,
    micro_batch_size: int,
    max_length: int,
    seed: int,
    phase: str = "train_reward stage2",
    progress: PhaseProgress | None = None,
    on_step: OnStep | None = None,
) -> list[float]:
    """Train backbone + Gaussian heads (`engine` wraps a BRMERewardModel) with the stage-2 objective,
    from `progress` on. Returns the loss of every micro-batch of the phase."""
    model: BRMERewardModel = engine.module
    progress = progress or PhaseProgress()
    generator = _generator(seed, progress)
    losses = list(progress.losses)
    engine.train()
    for epoch, index, batch in remaining_pair_batches(
        pairs,
        tokenizer,
        epochs=epochs,
        micro_batch_size=micro_batch_size,
        max_length=max_length,
        seed=seed,
        phase=phase,
        progress=progress,
    ):
        chosen = model.heads(model.pooled(**_to(batch.chosen, engine.device)))
        rejected = model.heads(model.pooled(**_to(batch.rejected, engine.device)))
        loss = objective(model.heads, chosen, rejected, batch.rows, generator)
        backward_and_step(engine, loss, "loss/stage2", phase=phase, losses=losses)
        if on_step is not None:
            on_step(PhaseProgress(epoch, index + 1, losses, generator.get_state().tolist()))
    return losses


def _as_float(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses in fp32 whatever the engine's precision (log sigma and small margins lose bits in bf16)."""
    return pair[0].float(), pair[1].float()


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

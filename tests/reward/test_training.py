"""The reward-training loops' resume bookkeeping: when a checkpoint is due, which batches remain, and
that a loop restarted from a reported PhaseProgress goes on exactly as the uninterrupted loop."""

import copy

import torch

from robust_rlhf.reward.model import GaussianHeads
from robust_rlhf.reward.training import (
    PhaseProgress,
    checkpoint_due,
    phase_optimizer_steps,
    remaining_batches,
    stage2_objective,
    train_heads_on_features,
)
from tests.conftest import PlainEngine


def test_checkpoint_due_every_n_optimizer_steps_at_accumulation_boundaries():
    due = [m for m in range(1, 13) if checkpoint_due(m, gradient_accumulation_steps=2, checkpoint_every=3)]
    assert due == [6, 12]  # optimizer steps 3 and 6; never after a micro-batch that leaves gradients pending
    assert [m for m in range(1, 5) if checkpoint_due(m, gradient_accumulation_steps=1, checkpoint_every=1)] == [
        1,
        2,
        3,
        4,
    ]


def test_remaining_batches_skips_only_in_the_interrupted_epoch():
    progress = PhaseProgress(epoch=1, batch=2)
    assert list(remaining_batches(1, 5, progress)) == [2, 3, 4]
    assert list(remaining_batches(2, 5, progress)) == [0, 1, 2, 3, 4]
    assert list(remaining_batches(1, 5, PhaseProgress(epoch=1, batch=5))) == []


def frozen_stage2(engine, **kwargs):
    generator = torch.Generator().manual_seed(7)
    features = {
        "pooled_chosen": torch.randn(10, 4, generator=generator),
        "pooled_rejected": torch.randn(10, 4, generator=generator),
    }
    # bt_sampled draws noise from the phase's generator: a resume must restore its state too
    objective = stage2_objective("bt_sampled", torch.ones(10, 3), targets=None, noise_floor=1.0, num_noise_samples=2)
    return train_heads_on_features(
        engine,
        features,
        objective,
        loss_name="bt_sampled",
        epochs=3,
        micro_batch_size=4,
        seed=0,
        phase="stage2",
        **kwargs,
    )


def test_frozen_stage2_restarted_from_a_checkpoint_goes_on_like_the_uninterrupted_loop():
    """Mid-epoch (batch 2 of 3 in epoch 2): the saved row order and generator state must both be used."""
    uninterrupted = PlainEngine(GaussianHeads(4, 3, sigma_min=0.01))
    expected = frozen_stage2(uninterrupted)

    saved = {}

    def checkpoint_at_step_5(progress: PhaseProgress) -> None:
        if len(progress.losses) == 5:
            saved.update(progress=copy.deepcopy(progress), engine=copy.deepcopy(first))

    first = PlainEngine(GaussianHeads(4, 3, sigma_min=0.01))
    frozen_stage2(first, on_step=checkpoint_at_step_5)
    progress = saved["progress"]
    assert (progress.epoch, progress.batch) == (1, 2) and progress.order is not None

    resumed = frozen_stage2(saved["engine"], progress=progress)
    assert resumed == expected and len(expected) == 9
    for name, value in uninterrupted.module.state_dict().items():
        assert torch.equal(value, saved["engine"].module.state_dict()[name]), name


def test_phase_optimizer_steps_counts_accumulation_boundaries_across_epochs():
    # 10 pairs at micro-batch 4: 3 micro-batches an epoch (4, 4, 2); 2 epochs = 6; at accumulation 4,
    # DeepSpeed steps at micro-batches 4 only (the 2 left over never reach a boundary).
    assert phase_optimizer_steps(10, epochs=2, micro_batch_size=4, gradient_accumulation_steps=4) == 1
    assert phase_optimizer_steps(10, epochs=2, micro_batch_size=4, gradient_accumulation_steps=1) == 6
    assert phase_optimizer_steps(8, epochs=3, micro_batch_size=4, gradient_accumulation_steps=2) == 3

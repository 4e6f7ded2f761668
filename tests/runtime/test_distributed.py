import pytest

from robust_rlhf.config import DeepSpeedParams
from robust_rlhf.runtime.distributed import deepspeed_config, frozen_deepspeed
from tests.conftest import tiny_section


def test_deepspeed_config_batch_identity_and_optimizer():
    deepspeed = DeepSpeedParams(**tiny_section("deepspeed", zero_stage=2, precision="bf16"))
    config = deepspeed_config(
        deepspeed=deepspeed,
        micro_batch_size=4,
        gradient_accumulation_steps=3,
        world_size=2,
        learning_rate=1e-5,
        weight_decay=0.1,
    )
    assert config["train_batch_size"] == 4 * 3 * 2
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["optimizer"]["params"] == {"lr": 1e-5, "weight_decay": 0.1, "torch_adam": True, "fused": True}
    assert config["gradient_clipping"] == 1.0


def test_inference_config_has_no_optimizer():
    config = deepspeed_config(
        deepspeed=DeepSpeedParams(**tiny_section("deepspeed")),
        micro_batch_size=8,
        gradient_accumulation_steps=1,
        world_size=1,
        learning_rate=None,
    )
    assert "optimizer" not in config and "gradient_clipping" not in config
    assert config["bf16"]["enabled"] is False


@pytest.mark.parametrize(("stage", "frozen_stage"), [(0, 0), (1, 0), (2, 0), (3, 3)])
def test_a_frozen_model_is_sharded_only_by_zero_3(stage, frozen_stage):
    # DeepSpeed refuses ZeRO 1/2 without an optimizer ("zero stage 2 requires an optimizer"): a frozen model has
    # nothing those stages partition; ZeRO 3 partitions its parameters. Precision and clipping are kept.
    offload = "cpu" if stage else "none"
    deepspeed = DeepSpeedParams(
        **tiny_section("deepspeed", zero_stage=stage, precision="bf16", offload_optimizer=offload)
    )
    frozen = frozen_deepspeed(deepspeed)
    assert frozen.zero_stage == frozen_stage and frozen.precision == "bf16"
    assert frozen.offload_optimizer == ("cpu" if stage == 3 else "none")


def test_zero_stage_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="zero_stage"):
        DeepSpeedParams(**tiny_section("deepspeed", zero_stage=4))


@pytest.mark.slow
def test_engines_step_with_torchs_fused_adamw(tmp_path):
    # In a subprocess: a DeepSpeed engine joins a process group, which must not outlive the test.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from robust_rlhf.config import DeepSpeedParams, LRScheduleParams
        from robust_rlhf.runtime.distributed import init_distributed, training_engine
        init_distributed()
        for zero_stage in (0, 2):
            engine = training_engine(torch.nn.Linear(3, 1), deepspeed=DeepSpeedParams(
                                         zero_stage=zero_stage, precision='fp32', gradient_clipping=1.0,
                                         offload_optimizer='none', offload_param='none'),
                                     micro_batch_size=2, gradient_accumulation_steps=1, world_size=1,
                                     learning_rate=0.1, weight_decay=0.0, total_steps=1,
                                     lr_schedule=LRScheduleParams(kind="constant", warmup_steps=0,
                                                                  final_fraction=1.0))
            weight, bias = (p.detach().clone() for p in (engine.module.weight, engine.module.bias))
            engine.backward(engine(torch.ones(2, 3)).sum())
            engine.step()
            optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps torch's
            assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"], optimizer.defaults
            # By hand: the gradient is 2 for each of the 4 parameters, clipped (norm 4 > 1.0) to 0.5; Adam's
            # first step is lr * g / (|g| + eps), so every weight moves down by the learning rate, 0.1
            # (SGD would move it 0.05, an unclipped SGD 0.2).
            torch.testing.assert_close(engine.module.weight.detach(), weight - 0.1, atol=1e-6, rtol=0)
            torch.testing.assert_close(engine.module.bias.detach(), bias - 0.1, atol=1e-6, rtol=0)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:]
    )


@pytest.mark.slow
def test_one_process_skips_the_gradient_all_reduce_and_trains_bit_for_bit_alike(tmp_path):
    # In a subprocess (an engine joins a process group). The same model and batches, with DeepSpeed's
    # all-reduce after each backward (as before) and without it: every parameter equal after 3 steps.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from robust_rlhf.config import DeepSpeedParams, LRScheduleParams
        from robust_rlhf.runtime.distributed import init_distributed, training_engine
        init_distributed()
        def trained(reduce):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
            engine = training_engine(model, deepspeed=DeepSpeedParams(zero_stage=0, precision='fp32',
                                         gradient_clipping=1.0, offload_optimizer='none', offload_param='none'),
                                     micro_batch_size=2, gradient_accumulation_steps=2, world_size=1,
                                     learning_rate=0.01, weight_decay=0.0, total_steps=3,
                                     lr_schedule=LRScheduleParams(kind="constant", warmup_steps=0,
                                                                  final_fraction=1.0))
            assert engine.enable_backward_allreduce is False
            engine.enable_backward_allreduce = reduce
            calls = []
            engine.allreduce_gradients = lambda *a, f=engine.allreduce_gradients, **k: calls.append(1) or f(*a, **k)
            generator = torch.Generator().manual_seed(1)
            for _ in range(6):
                engine.backward(engine(torch.randint(0, 50, (2, 5), generator=generator)).pow(2).mean())
                engine.step()
            return [p.detach().clone() for p in engine.module.parameters()], len(calls)
        (reduced, reductions), (skipped, no_reductions) = trained(True), trained(False)
        assert reductions > 0 and no_reductions == 0, (reductions, no_reductions)
        assert all(torch.equal(a, b) for a, b in zip(reduced, skipped))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:]
    )


def test_only_one_fp32_zero_0_process_skips_the_gradient_reduction():
    from robust_rlhf.runtime.distributed import skips_gradient_reduction

    def params(zero_stage, precision):
        return DeepSpeedParams(
            zero_stage=zero_stage, precision=precision, gradient_clipping=1.0, offload_optimizer="none",
            offload_param="none",
        )  # fmt: skip

    assert skips_gradient_reduction(params(0, "fp32"), world_size=1)
    assert not skips_gradient_reduction(params(0, "fp32"), world_size=2)
    assert not skips_gradient_reduction(params(0, "bf16"), world_size=1)
    assert not skips_gradient_reduction(params(2, "fp32"), world_size=1)


_SCHEDULED_ENGINE = """
import sys
import torch
from robust_rlhf.config import DeepSpeedParams, LRScheduleParams
from robust_rlhf.runtime.distributed import init_distributed, training_engine
init_distributed()
folder, mode = sys.argv[1], sys.argv[2]
engine = training_engine(
    torch.nn.Linear(3, 1),
    deepspeed=DeepSpeedParams(zero_stage=2, precision="fp32", gradient_clipping=1.0,
                              offload_optimizer="none", offload_param="none"),
    micro_batch_size=2, gradient_accumulation_steps=2, world_size=1, learning_rate=0.1, weight_decay=0.0,
    lr_schedule=LRScheduleParams(kind="linear", warmup_steps=2, final_fraction=0.5), total_steps=5,
)
if mode == "resume":
    engine.load_checkpoint(folder, tag="t", load_optimizer_states=True, load_lr_scheduler_states=True)
seen = []
for micro_batch in range(6):  # 3 optimizer steps at accumulation 2
    seen.append(engine.get_lr()[0])
    engine.backward(engine(torch.ones(2, 3)).sum())
    engine.step()
if mode == "save":
    engine.save_checkpoint(folder, tag="t")
print("lrs", ",".join(repr(lr) for lr in seen))
"""


@pytest.mark.slow
def test_lr_schedule_steps_per_optimizer_step_and_resumes(tmp_path):
    # Each run in its own subprocess: a second deepspeed.initialize in one process fails.
    import subprocess
    import sys

    def lrs(mode: str) -> list[float]:
        result = subprocess.run(
            [sys.executable, "-c", _SCHEDULED_ENGINE, str(tmp_path / "ckpt"), mode],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith("lrs "))
        return [float(value) for value in line.split(" ", 1)[1].split(",")]

    # By hand, lr 0.1 x lr_multiplier: warmup (s + 1) / 2 at steps 0, 1; then linear over steps 2..4,
    # p = (s - 2) / 2, 1 - 0.5 p. Each optimizer step's LR holds for its 2 micro-batches.
    first = lrs("save")
    assert first == pytest.approx([0.05, 0.05, 0.1, 0.1, 0.1, 0.1])
    resumed = lrs("resume")  # goes on at optimizer step 3: 0.075, then 0.05 (the final fraction), and stays
    assert resumed == pytest.approx([0.075, 0.075, 0.05, 0.05, 0.05, 0.05])

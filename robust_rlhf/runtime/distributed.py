"""DeepSpeed glue: the config builder (pure) and engine creation. One place for every stage.

On a machine without a GPU the same calls run on DeepSpeed's CPU accelerator with gloo.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import torch

from robust_rlhf.config import DeepSpeedParams, LRScheduleParams
from robust_rlhf.runtime.jit_build_lock import build_guard
from robust_rlhf.runtime.launcher import free_port
from robust_rlhf.runtime.schedule import lr_multiplier


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass


def deepspeed_config(
    *,
    deepspeed: DeepSpeedParams,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    learning_rate: float | None,
    weight_decay: float | None = None,
) -> dict:
    """Build a DeepSpeed config dict from params.

    train_batch_size = micro_batch_size * gradient_accumulation_steps * world_size (DeepSpeed
    checks this identity). With learning_rate None the engine has no optimizer (inference only).
    The optimizer is DeepSpeed's AdamW with `torch_adam`, which needs no JIT-compiled op, and torch's
    fused kernel (CPU and CUDA): DeepSpeed's default torch AdamW is the per-tensor loop, 0.53 s per step
    for a 135M model on 2 CPU cores against 0.10 s fused (what transformers' Trainer, so TRL, uses).
    """
    config: dict = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "zero_optimization": {"stage": deepspeed.zero_stage},
        "bf16": {"enabled": deepspeed.precision == "bf16"},
        "fp16": {"enabled": deepspeed.precision == "fp16"},
        "steps_per_print": 10**9,  # our own progress lines say what matters
        "wall_clock_breakdown": False,
    }
    # ZeRO-Offload keeps `torch_adam`: DeepSpeed builds the config's optimizer as torch's AdamW on the
    # CPU-resident fp32 partitions (engine.get_optimizer_configuration returns it before choosing
    # DeepSpeedCPUAdam), so offload needs no JIT-compiled op; the fused kernel runs on CPU tensors too.
    # Pinned host memory makes the device<->host copies asynchronous; it exists only with CUDA.
    if deepspeed.offload_optimizer == "cpu":
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if deepspeed.offload_param == "cpu":
        config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if learning_rate is not None:
        if weight_decay is None:
            raise ValueError("a DeepSpeed config with an optimizer needs its weight_decay")
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": learning_rate, "weight_decay": weight_decay, "torch_adam": True, "fused": True},
        }
        config["gradient_clipping"] = deepspeed.gradient_clipping
    return config


def init_distributed() -> int:
    """Join (or create) the process group; return the world size.

    Under `deepspeed`/`torchrun` the launcher sets RANK etc. A plain `python -m stages.x` gets
    single-process defaults, else DeepSpeed falls back to MPI discovery and fails without mpi4py.
    """
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        defaults = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
        }
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # DeepSpeed JIT-loads its CPU comm op inside init_distributed; load it first, under the guard,
        # and outside the rendezvous (which waits for every rank, so must not hold the flock).
        from torch.utils.cpp_extension import _get_build_directory

        with build_guard(Path(_get_build_directory("deepspeed_shm_comm", verbose=False))):
            from deepspeed.comm.torch import build_shm_op

            build_shm_op()  # cached by DeepSpeed's op builder: init_distributed reuses the loaded module
        deepspeed.init_distributed(dist_backend=backend)
    return dist.get_world_size()


def initialize_engine(model: torch.nn.Module, config: dict, *, lr_scheduler: Callable | None = None):
    """Wrap `model` in a DeepSpeed engine; with an optimizer in `config`, its trainable parameters are trained.

    `lr_scheduler`: optimizer -> torch scheduler, which DeepSpeed builds on the optimizer it makes from
    `config` and steps once per optimizer step (at gradient-accumulation boundaries, never on a skipped
    fp16 overflow step); save_checkpoint / load_checkpoint carry its state.
    """
    import deepspeed

    if "optimizer" in config:
        trainable = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=trainable, config=config, lr_scheduler=lr_scheduler
        )
    else:
        engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine


def training_engine(
    model: torch.nn.Module,
    *,
    deepspeed: DeepSpeedParams,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    learning_rate: float,
    weight_decay: float,
    lr_schedule: LRScheduleParams,
    total_steps: int,
):
    """The DeepSpeed engine that trains `model` (actor, critic, reward model): every stage builds it here.

    The learning rate of optimizer step s is `learning_rate` * lr_multiplier(s) over `total_steps`
    optimizer steps (robust_rlhf/runtime/schedule.py).
    """

    def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        # LambdaLR calls the lambda with the number of scheduler steps taken, 0 at construction.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total_steps=total_steps, schedule=lr_schedule)
        )

    engine = initialize_engine(
        model,
        deepspeed_config(
            deepspeed=deepspeed,
            micro_batch_size=micro_batch_size,
            world_size=world_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
        ),
        lr_scheduler=scheduler,
    )
    if skips_gradient_reduction(deepspeed, world_size=world_size):
        engine.enable_backward_allreduce = False
    return engine


def skips_gradient_reduction(deepspeed: DeepSpeedParams, *, world_size: int) -> bool:
    """Whether an engine may skip DeepSpeed's gradient all-reduce after each backward: with one process there
    is nothing to reduce, yet ZeRO-0 still flattens every gradient into a buffer, all-reduces it over the one
    rank, scales it by 1 / 1 and copies it back (the PPO step's profile: `cat`, `fill_`, `add`, `mul`).
    The gradients are the same bit for bit either way. fp32 only: bf16's optimizer reduces its own fp32
    copies, and ZeRO >= 1 partitions in its own reduction."""
    return world_size == 1 and deepspeed.zero_stage == 0 and deepspeed.precision == "fp32"


def frozen_deepspeed(deepspeed: DeepSpeedParams) -> DeepSpeedParams:
    """The DeepSpeed params of a frozen model's engine. ZeRO 1 and 2 partition optimizer states and gradients,
    of which a frozen model has none (DeepSpeed refuses them without an optimizer), so it gets stage 0 and no
    optimizer offload; ZeRO 3 also partitions the parameters, which is what it is for here, and stays."""
    if deepspeed.zero_stage in (0, 3):
        return deepspeed
    return deepspeed.model_copy(update={"zero_stage": 0, "offload_optimizer": "none"})


def frozen_model(
    model: torch.nn.Module, *, deepspeed: DeepSpeedParams, micro_batch_size: int, world_size: int
) -> torch.nn.Module:
    """`model` in eval mode without gradients, placed and cast by a DeepSpeed engine without an optimizer
    (the reference policy, the reward models, the sampler): the engine's module, not the engine."""
    return initialize_engine(
        model.eval().requires_grad_(False),
        deepspeed_config(
            deepspeed=frozen_deepspeed(deepspeed),
            micro_batch_size=micro_batch_size,
            gradient_accumulation_steps=1,
            world_size=world_size,
            learning_rate=None,
        ),
    ).module


def _zero3_offload(module: torch.nn.Module):
    """The DeepSpeedZeRoOffload whose ZeRO-3 hooks sit on `module` or a module inside it (the engine's
    module, a submodule such as the policy inside a shared-value-head actor, or a wrapper around one);
    None if there are none.

    `frozen_model` hands back the engine's module, not the engine, so the offload object is found from
    the module: each of its forward pre-hooks is a closure over it (parameter_offload.py,
    `setup_zero_stage3_hooks` and `_register_deepspeed_module`)."""
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

    # A wrapper outside the engine (LoRA's AdaptersDisabled reference) holds the hooked module as a child.
    # The hooks come wrapped (instrument_w_nvtx, torch.compiler.disable): look through the wrappers too.
    functions = [hook for submodule in module.modules() for hook in submodule._forward_pre_hooks.values()]
    seen = set()
    while functions:
        function = functions.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        for cell in getattr(function, "__closure__", None) or ():
            contents = cell.cell_contents
            if isinstance(contents, DeepSpeedZeRoOffload):
                return contents
            if callable(contents):
                functions.append(contents)
        if hasattr(function, "__wrapped__"):
            functions.append(function.__wrapped__)
    return None


def zero3_partitioned(module: torch.nn.Module) -> bool:
    """Whether any parameter of `module` is a ZeRO-3 partition (DeepSpeed tags those with `ds_id`): each
    forward then all-gathers collectively, so every rank must run the same sequence of forwards."""
    return any(hasattr(parameter, "ds_id") for parameter in module.parameters())


@contextlib.contextmanager
def gathered_for_generation(module: torch.nn.Module):
    """Hold every ZeRO-3 parameter of `module` gathered for a whole rollout; a no-op for unpartitioned ones.

    ZeRO-3's per-submodule hooks fetch a layer's parameters before its forward and release them after,
    so sampling T tokens all-gathers the model T times. Here it is gathered once and the hooks are
    removed meanwhile (as TRL's unwrap_model_for_generation does), then re-registered on exit so that
    training forwards and backwards partition again. Memory: the full model on every rank for the
    duration.
    """
    if not zero3_partitioned(module):
        yield module
        return
    import deepspeed

    offload = _zero3_offload(module)
    if offload is None:
        raise RuntimeError("a ZeRO-3 partitioned module without DeepSpeed's hooks: pass the engine's module")
    # The whole engine module (a submodule's hooks are its root's), so no hook is left that would
    # release a parameter the submodule shares with its root.
    root = offload.module
    with deepspeed.zero.GatheredParameters(list(root.parameters())):
        # The root's start-of-forward hook (the coordinator's step reset) stays; the per-submodule fetch
        # and release hooks go, and the record of which submodules hold a parameter with them.
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        for parameter in root.parameters():
            parameter.ds_active_sub_modules.clear()
        try:
            yield module
        finally:
            # Re-registering on the root also invalidates the coordinator's recorded fetch order.
            offload._register_deepspeed_module(root)


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's full state dict on CPU; under ZeRO-3 the partitioned parameters are gathered first."""
    import deepspeed

    module = engine.module
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def weight_norm(engine) -> float:
    """sqrt(sum_i ||p_i||^2) over an engine's parameters: each tensor's squared norm in its own dtype's
    float32 reduction, summed in float64 (no float64 copy of the weights on the hot path). Under
    ZeRO-3 a rank holds a shard of each parameter (`p.ds_tensor`), so the squares are summed over ranks."""
    import torch.distributed as dist

    squares = torch.zeros((), dtype=torch.float64)
    for parameter in engine.module.parameters():
        tensor = getattr(parameter, "ds_tensor", parameter).detach()
        squares += torch.linalg.vector_norm(tensor, dtype=torch.float32).double() ** 2
    if engine.zero_optimization_stage() == 3 and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(squares)
    return float(squares.sqrt())


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each scalar averaged over the data-parallel ranks (the same keys on every rank); unchanged on one
    process."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    stacked = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64)
    dist.all_reduce(stacked)
    return {key: float(total) / dist.get_world_size() for key, total in zip(keys, stacked)}


def gather_from_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape on each) concatenated along dim 0, in rank order."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)

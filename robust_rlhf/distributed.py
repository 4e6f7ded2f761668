"""DeepSpeed glue: the config builder (pure) and engine creation. One place for every stage.

On a machine without a GPU the same calls run on DeepSpeed's CPU accelerator with gloo.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

from robust_rlhf.config import DeepSpeedParams


def deepspeed_config(
    *,
    deepspeed: DeepSpeedParams,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    learning_rate: float | None,
    weight_decay: float = 0.0,
) -> dict:
    """Build a DeepSpeed config dict from params.

    train_batch_size = micro_batch_size * gradient_accumulation_steps * world_size (DeepSpeed
    checks this identity). With learning_rate None the engine has no optimizer (inference only).
    The optimizer is DeepSpeed's AdamW with `torch_adam`, which needs no JIT-compiled op.
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
    if learning_rate is not None:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": learning_rate, "weight_decay": weight_decay, "torch_adam": True},
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
        defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                    "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    return dist.get_world_size()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def initialize_engine(model: torch.nn.Module, config: dict, parameters: Iterable[torch.nn.Parameter] | None = None):
    """Wrap `model` in a DeepSpeed engine; with an optimizer in `config`, `parameters` are trained."""
    import deepspeed

    if "optimizer" in config:
        trainable = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
    else:
        engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's full state dict on CPU; under ZeRO-3 the partitioned parameters are gathered first."""
    import deepspeed

    module = engine.module
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0

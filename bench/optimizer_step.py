"""Before/after of the optimizer change the PPO profile called for: DeepSpeed's `torch_adam` AdamW
ran torch's per-tensor loop; the engines now ask for torch's fused kernel (robust_rlhf/runtime/distributed.py). Both on
the default policy's parameters, same gradients, same process."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.timing import median_seconds
from bench.workload import POLICY_DIR, default_params


def optimizer_step_times(work: Path, *, repeats: int) -> dict[str, float]:
    """Median seconds of one AdamW step over every parameter of the default policy: `before` (the
    per-tensor loop) and `after` (fused)."""
    from robust_rlhf.models import load_causal_lm, model_options

    model = load_causal_lm(work / POLICY_DIR, **model_options(default_params(Path.cwd())))
    parameters = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
    times = {}
    for name, options in {"before": {"foreach": False}, "after": {"fused": True}}.items():
        optimizer = torch.optim.AdamW(parameters, lr=1e-5, **options)
        times[name] = median_seconds(optimizer.step, repeats)
    return times

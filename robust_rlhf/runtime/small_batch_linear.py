"""Linear layers at a decode step's batch size on the CPU: every weight read once for all rows.

A decode step multiplies a few rows of activations (8 for a PPO rollout) by every weight of the model.
MKL's sgemm reads a weight at a third of the memory bandwidth there: SmolLM2-135M's 211 linears took
~85 ms a step at 8 rows (4-7 GB/s of weights, ~30 GFLOP/s, even with the weights hot in L3), the
bulk of a 105-114 ms step. `csrc/small_batch_linear.cpp` streams each thread's band of W's rows once,
every row of x against a 3-row tile of W held in L1: those linears, fed random rows, took 34-38 ms
against MKL's 66-72 at 8 rows (2-core AMD EPYC, AVX2, nothing else running, one process); 1.7x at
16 rows, 1.4x at 32, 1.2x at 64, 0.95x at 128, hence `MAX_ROWS`. The bench prints the sampler's
tokens/s with and without it on the machine it runs on (`bench/sampling.py`).

It is a C++ extension built by torch's JIT loader on first use (~40 s, once per TORCH_EXTENSIONS_DIR;
`make setup` builds it), for x86-64 CPUs with AVX2 and FMA. It sums in another order than MKL, so its
results differ from torch's by rounding (~1e-6 relative); params `models.small_batch_linear` chooses it,
and where it cannot run (another CPU, no compiler) torch's matmul runs instead, with a warning.

The rule is per product, not per phase: any no-grad fp32 CPU product of at most MAX_ROWS rows takes the
kernel, which is every decode step at the pipeline's batches, and also a prefill or a `forward_response`
small enough (a few short prompts, as in the tiny test profile).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from robust_rlhf.runtime.jit_build_lock import build_guard

logger = logging.getLogger(__name__)

# Rows of x up to which the kernel runs; above it MKL's blocked sgemm is as fast or faster (see above).
MAX_ROWS = 64
SOURCE = Path(__file__).parent / "csrc" / "small_batch_linear.cpp"
BUILD_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]  # -fopenmp: at::parallel_for is OpenMP's in torch's CPU build
NAME = "robust_rlhf_small_batch_linear"


def build_directory() -> Path:
    """Where the extension is built: under TORCH_EXTENSIONS_DIR (torch's default root without it), one folder
    per Python version, the same for every checkout, so that copies of the repository share one build."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return root / f"{NAME}_py{sys.version_info.major}{sys.version_info.minor}"


def unavailable_reason() -> str | None:
    """Why the kernel cannot run on this machine (not x86-64, no AVX2 + FMA), or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"a {platform.machine()} CPU (the kernel is AVX2 + FMA)"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"torch reports CPU capability {torch.backends.cpu.get_cpu_capability()}, not AVX2"
    return None


@functools.cache
def load_kernel():
    """The compiled extension (built on first call, then loaded from TORCH_EXTENSIONS_DIR), or None with a
    warning when it cannot run or build here."""
    reason = unavailable_reason()
    if reason is None:
        from torch.utils.cpp_extension import load_inline

        directory = build_directory()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # The source's text, not its path: torch writes it into the build folder only when it changed, so
            # every checkout (and the pipeline tests' copies of the repository) reuses one build.
            with build_guard(directory):
                return load_inline(
                    NAME,
                    cpp_sources=[SOURCE.read_text(encoding="utf-8")],
                    extra_cflags=BUILD_FLAGS,
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(directory),
                )
        except Exception as error:  # no compiler, a failed build: torch's matmul still computes the same function
            reason = f"its build failed ({type(error).__name__}: {str(error).strip().splitlines()[-1][:200]})"
    logger.warning("models.small_batch_linear: the small-batch kernel cannot run: %s; torch's matmul runs", reason)
    return None


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) = x W^T + b by the kernel: x (..., K), weight (N, K), bias (N,), fp32 CPU
    tensors -> (..., N). Raises RuntimeError when the kernel cannot run here (`unavailable_reason`)."""
    kernel = load_kernel()
    if kernel is None:
        raise RuntimeError("the small-batch linear kernel cannot run here (see the warning logged)")
    return kernel.small_batch_linear(x, weight, bias)


def takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `SmallBatchLinear` hands this product to the kernel: no autograd (the kernel has no backward),
    no CPU autocast (F.linear would compute in bf16 there), fp32 CPU tensors, a contiguous weight, and at most
    MAX_ROWS rows of x."""
    return (
        not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.is_contiguous()
        and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
        and x.dim() >= 1
        and x.shape[-1] > 0
        and 0 < x.numel() // x.shape[-1] <= MAX_ROWS
    )


class SmallBatchLinear(torch.nn.Linear):
    """nn.Linear that runs a no-grad product of at most MAX_ROWS rows through the kernel, anything else
    (training, prefill, other dtypes and devices) through F.linear. Same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes(x, self.weight, self.bias) and load_kernel() is not None:
            return load_kernel().small_batch_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def kernel_in_use(enabled: bool) -> bool:
    """Whether params `models.small_batch_linear: enabled` runs the kernel on this machine (a resume key's
    fact: the kernel and torch's matmul round differently)."""
    return enabled and load_kernel() is not None


def use_small_batch_linears(model: torch.nn.Module) -> int:
    """Make every plain nn.Linear of `model` a SmallBatchLinear, in place (its class only: parameters, tied
    weights, hooks and state-dict keys stay), and build the kernel now rather than mid-rollout. Subclasses
    (a LoRA layer, a ZeRO-3 wrapper) keep their own forward. Returns how many layers changed; 0 with the
    warning where the kernel cannot run, leaving the model as it was."""
    if load_kernel() is None:
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = SmallBatchLinear
            changed += 1
    return changed

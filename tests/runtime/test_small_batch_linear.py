"""The small-batch linear kernel (robust_rlhf/runtime/small_batch_linear.py): the product torch computes, on
hand-computed values and against F.linear over the shapes its tiling splits (tails of K, of W's 3-row tiles
and of x's 4-row groups); the layer that dispatches to it; and sampling through it."""

from __future__ import annotations

import copy
import logging
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from robust_rlhf.generation import encode_prompts, for_sampling, forward_response, sample
from robust_rlhf.runtime import small_batch_linear as sbl
from tests.runtime.test_jit_build_lock import holding_the_build_lock

# The fallback tests run anywhere; the kernel's need it built (an x86-64 CPU with AVX2 and a C++ compiler).
needs_kernel = pytest.mark.skipif(sbl.load_kernel() is None, reason="the kernel cannot run here (see the warning)")


class CountingKernel:
    """The real kernel, counting its calls."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def small_batch_linear(self, x, weight, bias):
        self.calls += 1
        return self.kernel.small_batch_linear(x, weight, bias)


@pytest.fixture
def counted(monkeypatch):
    counting = CountingKernel(sbl.load_kernel())
    monkeypatch.setattr(sbl, "load_kernel", lambda: counting)
    return counting


@needs_kernel
def test_the_kernel_computes_x_w_transposed_plus_b_on_hand_computed_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    bias = torch.tensor([0.5, 0.0, -1.0, 0.25])
    # row 1: (1, 2, 3, 0) + b; row 2: (3, 4, 7, 2) + b
    expected = torch.tensor([[1.5, 2.0, 2.0, 0.25], [3.5, 4.0, 6.0, 2.25]])
    assert torch.equal(sbl.small_batch_linear(x, weight, bias), expected)
    assert torch.equal(sbl.small_batch_linear(x, weight), expected - bias)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 13, 16, 64])
@pytest.mark.parametrize(
    ("out_features", "in_features"), [(1, 1), (2, 7), (3, 8), (4, 9), (5, 17), (64, 64), (385, 576)]
)
def test_the_kernel_equals_torchs_linear_across_the_tilings_tails(rows, out_features, in_features):
    generator = torch.Generator().manual_seed(rows * 1000 + out_features * 10 + in_features)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    # Against the float64 product: fp32 sums of K products of unit normals round by ~1e-7 sqrt(K) per term.
    tolerance = 1e-5 * in_features**0.5
    for b in (bias, None):
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
        out = sbl.small_batch_linear(x, weight, b)
        assert out.dtype == torch.float32 and out.shape == (rows, out_features)
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=tolerance)
        torch.testing.assert_close(F.linear(x, weight, b).double(), exact, rtol=1e-5, atol=tolerance)  # torch's too


@needs_kernel
def test_the_kernel_keeps_the_leading_dimensions_and_reads_a_non_contiguous_input():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 40, generator=generator).transpose(0, 1)  # (2, 3, 40), not contiguous
    weight = torch.randn(11, 40, generator=generator)
    out = sbl.small_batch_linear(x, weight)
    assert out.shape == (2, 3, 11)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_two_threads_split_the_weights_rows_and_compute_the_same_product():
    generator = torch.Generator().manual_seed(1)
    x, weight = torch.randn(8, 576, generator=generator), torch.randn(385, 576, generator=generator)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sbl.small_batch_linear(x, weight)
        torch.set_num_threads(2)  # 128 tiles of 3 rows: two bands
        two = sbl.small_batch_linear(x, weight)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each output is summed by one thread in the same order either way
    torch.testing.assert_close(two, F.linear(x, weight), rtol=1e-5, atol=1e-3)


@needs_kernel
def test_the_kernel_refuses_what_it_cannot_compute():
    with pytest.raises(RuntimeError, match="fp32"):
        sbl.small_batch_linear(torch.ones(2, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        sbl.small_batch_linear(torch.ones(2, 4), torch.ones(4, 3).t())
    with pytest.raises(RuntimeError, match="last dimension"):
        sbl.small_batch_linear(torch.ones(2, 5), torch.ones(3, 4))
    with pytest.raises(RuntimeError, match="bias of N"):
        sbl.small_batch_linear(torch.ones(2, 4), torch.ones(3, 4), torch.ones(1, 3))
    with pytest.raises(RuntimeError, match="K = 0"):
        sbl.small_batch_linear(torch.ones(2, 0), torch.ones(3, 0))


@needs_kernel
def test_the_layer_runs_the_kernel_only_without_autograd_and_up_to_max_rows(counted):
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 10)
    plain = copy.deepcopy(layer)
    layer.__class__ = sbl.SmallBatchLinear
    few, many = torch.randn(sbl.MAX_ROWS, 24), torch.randn(sbl.MAX_ROWS + 1, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(few), plain(few), rtol=1e-5, atol=1e-5)
        assert counted.calls == 1
        assert torch.equal(layer(many), plain(many))  # torch's own matmul: bit-equal
        assert counted.calls == 1
    # With autograd: torch's matmul, and the same gradients as nn.Linear's.
    out, reference = layer(few), plain(few)
    assert counted.calls == 1 and torch.equal(out, reference)
    out.square().sum().backward()
    reference.square().sum().backward()
    assert torch.equal(layer.weight.grad, plain.weight.grad) and torch.equal(layer.bias.grad, plain.bias.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: torch's, in bf16
        assert layer(few).dtype == torch.bfloat16
    with torch.no_grad():  # another dtype: torch's
        layer.double()(few.double())
    assert counted.calls == 1


@needs_kernel
def test_only_plain_linears_change_class_and_the_state_dict_and_tied_weights_stay(tiny_tokenizer):
    from robust_rlhf.models import build_tiny_policy

    model = build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa")

    class OwnLinear(torch.nn.Linear):  # a subclass (as a LoRA layer) keeps its own forward
        pass

    model.model.layers[0].mlp.down_proj.__class__ = OwnLinear
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    plain = sum(type(module) is torch.nn.Linear for module in model.modules())
    assert sbl.use_small_batch_linears(model) == plain > 0
    assert type(model.model.layers[0].mlp.down_proj) is OwnLinear
    assert not any(type(module) is torch.nn.Linear for module in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert type(copy.deepcopy(model).lm_head) is sbl.SmallBatchLinear


@needs_kernel
def test_sampling_through_the_kernel_keeps_the_tokens_and_log_probs_of_torchs_matmul(
    tiny_policy, tiny_tokenizer, counted
):
    prompts = ["Write a short review of the library.", "Give your honest opinion of a long flight today."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    kernel_policy = for_sampling(copy.deepcopy(tiny_policy), small_batch_linear=True)
    kwargs = dict(
        max_new_tokens=8,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        with_logprobs=True,
        samples_per_query=2,
    )
    torch.manual_seed(3)
    plain = sample(tiny_policy, query_ids, query_mask, **kwargs)
    assert counted.calls == 0
    torch.manual_seed(3)
    through_kernel = sample(kernel_policy, query_ids, query_mask, **kwargs)
    assert counted.calls > 0
    assert torch.equal(through_kernel.ids, plain.ids) and torch.equal(through_kernel.mask, plain.mask)
    torch.testing.assert_close(through_kernel.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)
    # ... and those of one full forward of torch's matmul.
    queries = [t.repeat_interleave(2, dim=0) for t in (query_ids, query_mask)]
    with torch.no_grad():
        full, _ = forward_response(tiny_policy, *queries, through_kernel.ids, through_kernel.mask)
    keep = through_kernel.mask.bool()
    torch.testing.assert_close(through_kernel.logprobs[keep], full[keep], rtol=1e-4, atol=1e-4)


@needs_kernel
def test_lora_adapters_still_apply_on_a_kernel_policy(tiny_tokenizer):
    from robust_rlhf.config import LoRAParams
    from robust_rlhf.lora import add_lora
    from robust_rlhf.models import build_tiny_policy

    lora = LoRAParams(enabled=True, rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    adapted = add_lora(
        for_sampling(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), small_batch_linear=True),
        lora,
    ).eval()
    reference = add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), lora).eval()
    for module in (adapted, reference):  # non-zero adapters, the same in both
        torch.manual_seed(1)
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa").eval()(ids).logits
        out, expected = adapted(ids).logits, reference(ids).logits
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, base, atol=1e-3)  # the adapters moved the logits


def test_where_the_kernel_cannot_run_torchs_matmul_runs_with_a_warning(monkeypatch, caplog, tiny_tokenizer):
    from robust_rlhf.models import build_tiny_policy

    sbl.load_kernel.cache_clear()
    monkeypatch.setattr(sbl, "unavailable_reason", lambda: "a test CPU")
    try:
        with caplog.at_level(logging.WARNING, logger=sbl.__name__):
            model = build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa")
            assert for_sampling(model, small_batch_linear=True) is model
        assert sbl.use_small_batch_linears(model) == 0
        assert any(type(module) is torch.nn.Linear for module in model.modules())
        assert "cannot run: a test CPU" in caplog.text
        with pytest.raises(RuntimeError, match="cannot run here"):
            sbl.small_batch_linear(torch.ones(1, 2), torch.ones(1, 2))
    finally:
        sbl.load_kernel.cache_clear()


def test_a_failed_build_is_reported_and_leaves_torchs_matmul(monkeypatch, caplog):
    import torch.utils.cpp_extension

    def failing_build(*args, **kwargs):
        raise RuntimeError("Error building extension 'robust_rlhf_small_batch_linear'\ng++: not found")

    sbl.load_kernel.cache_clear()
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", failing_build)
    try:
        with caplog.at_level(logging.WARNING, logger=sbl.__name__):
            assert sbl.load_kernel() is None
        assert "its build failed (RuntimeError: g++: not found)" in caplog.text
    finally:
        sbl.load_kernel.cache_clear()


def test_one_build_serves_every_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    directory = sbl.build_directory()
    assert directory.parent == tmp_path and str(sbl.SOURCE.parent) not in str(directory)


@needs_kernel
def test_a_loader_killed_holding_torchs_build_lock_does_not_block_the_next_stage():
    # A stage SIGKILLed while loading the kernel (as `tests/stages/test_prepare_kill.py` does, once the
    # policy is published) leaves torch's `lock` in the shared build folder; the next stage then waited on
    # it forever. Here the lock is fresh, so no age rule could call it stale: only its dead holder tells.
    with holding_the_build_lock(sbl.build_directory()) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (sbl.build_directory() / "lock").exists()
    next_stage = subprocess.run(
        [
            sys.executable,
            "-c",
            "from robust_rlhf.runtime import small_batch_linear as s; print(s.load_kernel() is not None)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert next_stage.returncode == 0 and next_stage.stdout.strip() == "True", next_stage.stderr[-2000:]
    assert not (sbl.build_directory() / "lock").exists()


def test_the_resume_key_records_whether_the_kernel_runs(monkeypatch):
    sbl.load_kernel.cache_clear()
    monkeypatch.setattr(sbl, "unavailable_reason", lambda: "a test CPU")
    try:
        assert not sbl.kernel_in_use(True) and not sbl.kernel_in_use(False)
    finally:
        sbl.load_kernel.cache_clear()
    assert sbl.kernel_in_use(True) == (sbl.load_kernel() is not None)

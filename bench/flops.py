"""FLOPs of the work the CPU benchmarks time, counted from the model's shape: the matmuls only (Kaplan
et al. 2020: 2N per token forward, 6N forward + backward of trained weights), with attention and
elementwise work left out, as in MFU's usual count. Padded positions count: the matmuls run on them."""

from __future__ import annotations

from bench.ppo_workload import CRITIC, GENERATION, LOGPROB_FORWARD
from bench.timing import TRAINING_REST


def linear_weights(model, vocab_size: int) -> tuple[int, int]:
    """(weights of the linear layers other than the LM head, weights of the LM head)."""
    from torch import nn

    body = head = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if module.out_features == vocab_size:
                head += module.in_features * module.out_features
            else:
                body += module.in_features * module.out_features
    return body, head


def sampling_flops(*, body_weights: int, head_weights: int, prefill_tokens: int, decoded_tokens: int) -> int:
    """Sampling: 2 * body per prefilled token (its logits are not computed) and 2 * (body + head) per
    decoded token."""
    return 2 * body_weights * prefill_tokens + 2 * (body_weights + head_weights) * decoded_tokens


def ppo_phase_flops(
    *,
    body_weights: int,
    head_weights: int,
    rows: int,
    prompt_len: int,
    response_len: int,
    epochs: int,
    critic_body_weights: int | None = None,
    shared_prefix: int = 0,
) -> dict[str, int]:
    """One PPO step's FLOPs per timed phase, separate critic (the policy's body, or `critic_body_weights`
    for a critic cut to the policy's first layers; no LM head), over `rows` sequences of `prompt_len` +
    `response_len` padded tokens; the LM head runs on the response_len + 1 kept columns (logits_to_keep) in
    a forward over [query; response]. The `shared_prefix` S tokens every query starts with run once, not
    per row, in the passes without gradients (generation's prefill and the reference forward):
    generation   2 (B Tq - (B - 1) S) body + 2 B T (body + head)
    ref forward  2 (B (Tq + T) - (B - 1) S) body + 2 B (T + 1) head
    critic       2 B (Tq + T) critic + epochs x 6 B (Tq + T) critic
    training     epochs x 6 B ((Tq + T) body + (T + 1) head)   (the actor's update)"""
    critic_weights = body_weights if critic_body_weights is None else critic_body_weights
    tokens = rows * (prompt_len + response_len)
    head_columns = rows * (response_len + 1)
    skipped = (rows - 1) * shared_prefix
    return {
        GENERATION: sampling_flops(
            body_weights=body_weights,
            head_weights=head_weights,
            prefill_tokens=rows * prompt_len - skipped,
            decoded_tokens=rows * response_len,
        ),
        LOGPROB_FORWARD: 2 * (body_weights * (tokens - skipped) + head_weights * head_columns),
        CRITIC: 2 * critic_weights * tokens + epochs * 6 * critic_weights * tokens,
        TRAINING_REST: epochs * 6 * (body_weights * tokens + head_weights * head_columns),
    }

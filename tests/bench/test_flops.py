import pytest
import torch
from torch import nn

from bench.flops import linear_weights, ppo_phase_flops, sampling_flops
from bench.ppo_workload import CRITIC, GENERATION, LOGPROB_FORWARD
from bench.timing import TRAINING_REST


def test_linear_weights_split_the_lm_head_from_the_body():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 10))
    assert linear_weights(model, vocab_size=10) == (4 * 6 + 6 * 4, 40)


def test_sampling_and_ppo_phase_flops_by_hand():
    # body 100, head 10; 2 rows, prompts of 3, responses of 4, one epoch
    assert sampling_flops(body_weights=100, head_weights=10, prefill_tokens=6, decoded_tokens=8) == 1200 + 1760
    flops = ppo_phase_flops(body_weights=100, head_weights=10, rows=2, prompt_len=3, response_len=4, epochs=1)
    assert flops[GENERATION] == 2 * 2 * (3 * 100 + 4 * 110)  # 2960
    assert flops[LOGPROB_FORWARD] == 2 * (100 * 14 + 10 * 10)  # 14 tokens, 10 kept LM-head columns: 3000
    assert flops[CRITIC] == 2 * 100 * 14 + 6 * 100 * 14  # 11200
    assert flops[TRAINING_REST] == 6 * (100 * 14 + 10 * 10)  # 9000
    cut = ppo_phase_flops(
        body_weights=100, head_weights=10, rows=2, prompt_len=3, response_len=4, epochs=1, critic_body_weights=25
    )
    assert cut[CRITIC] == 2 * 25 * 14 + 6 * 25 * 14 and cut[TRAINING_REST] == flops[TRAINING_REST]  # 2800
    assert ppo_phase_flops(body_weights=100, head_weights=10, rows=2, prompt_len=3, response_len=4, epochs=2)[
        TRAINING_REST
    ] == pytest.approx(18000)
    shared = ppo_phase_flops(
        body_weights=100, head_weights=10, rows=2, prompt_len=3, response_len=4, epochs=1, shared_prefix=2
    )
    assert shared[GENERATION] == 2 * 100 * (6 - 2) + 2 * 8 * 110  # the second row skips 2 prefix tokens: 2560
    assert shared[LOGPROB_FORWARD] == 2 * (100 * 12 + 10 * 10)  # 2600
    assert shared[CRITIC] == flops[CRITIC] and shared[TRAINING_REST] == flops[TRAINING_REST]  # with gradients


def test_padded_tokens_count_a_shared_prefix_once():
    from bench.sampling import padded_tokens

    query_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert padded_tokens(query_mask, response_mask) == (12, 9)
    assert padded_tokens(query_mask, response_mask, shared_prefix=1) == (10, 9)  # 2 of 3 queries skip it

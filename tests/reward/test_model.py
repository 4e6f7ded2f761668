import pytest
import torch

from robust_rlhf.reward.model import GaussianHeads, pool_hidden
from robust_rlhf.reward.training import bootstrap_weights


def test_last_pooling_reads_the_last_real_token_on_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # value = position + 4 * row
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_hidden(hidden, right_padded, "last").flatten().tolist() == [1.0, 7.0]
    assert pool_hidden(hidden, left_padded, "last").flatten().tolist() == [3.0, 7.0]


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool_hidden(hidden, torch.tensor([[1, 1, 0]]), "mean").item() == 2.0


def test_gaussian_heads_shapes_and_sigma_floor():
    heads = GaussianHeads(hidden_size=3, num_heads=5, sigma_min=0.05, seed=0)
    with torch.no_grad():
        heads.s_bias.fill_(-50.0)  # softplus -> 0, so sigma sits at its floor
    mu, sigma = heads(torch.randn(4, 3))
    assert mu.shape == sigma.shape == (4, 5)
    torch.testing.assert_close(sigma, torch.full((4, 5), 0.05))


def test_heads_have_distinct_seeded_inits():
    a, b = GaussianHeads(8, 3, sigma_min=0.01, seed=0), GaussianHeads(8, 3, sigma_min=0.01, seed=0)
    assert torch.equal(a.mu_weight, b.mu_weight)
    assert not torch.equal(a.mu_weight[0], a.mu_weight[1])


def test_bootstrap_weights_are_per_head_resamples():
    weights = bootstrap_weights(50, 4, seed=0, enabled=True)
    assert weights.shape == (50, 4)
    assert (weights.sum(dim=0) == 50).all()  # each head draws N items with replacement
    assert not torch.equal(weights[:, 0], weights[:, 1])
    assert torch.equal(bootstrap_weights(50, 4, seed=0, enabled=False), torch.ones(50, 4))


def test_anchored_heads_start_at_their_anchors_return_the_prior_term_and_save_as_gaussian_heads():
    from robust_rlhf.reward.losses import anchor_penalty
    from robust_rlhf.reward.model import AnchoredGaussianHeads

    g = torch.Generator().manual_seed(0)
    anchors = {
        "mu_weight": torch.randn(3, 4, generator=g),
        "mu_bias": torch.zeros(3),
        "s_weight": torch.randn(3, 4, generator=g),
        "s_bias": torch.ones(3),
    }
    heads = AnchoredGaussianHeads(4, 3, sigma_min=0.01, anchors=anchors, prior_std=0.5, num_items=10)
    mu, sigma, penalty = heads(torch.randn(2, 4, generator=g))
    assert mu.shape == sigma.shape == (2, 3) and penalty.item() == 0.0  # at the anchor
    with torch.no_grad():
        heads.mu_weight.add_(1.0)
    expected = anchor_penalty(
        [heads.mu_weight, heads.s_weight], [anchors["mu_weight"], anchors["s_weight"]], prior_std=0.5, num_items=10
    )
    assert heads(torch.zeros(1, 4))[2].item() == pytest.approx(expected.item()) and expected.item() > 0
    assert set(heads.state_dict()) == set(GaussianHeads(4, 3, sigma_min=0.01).state_dict())


def test_l2_linear_heads_return_the_l2_term_and_keep_linear_keys():
    from robust_rlhf.reward.model import L2LinearHeads, linear_heads

    base = linear_heads(2, 2, init_std=1.0, seed=0)
    heads = L2LinearHeads(base, l2_coef=0.1)
    rewards, term = heads(torch.ones(3, 2))
    assert torch.equal(rewards, base(torch.ones(3, 2)))
    assert term.item() == pytest.approx(0.05 * base.weight.pow(2).sum(dim=1).mean().item())
    assert set(heads.state_dict()) == {"weight", "bias"}


def test_reward_model_with_adapted_backbone_saves_merged_and_scores_the_same_after_reload(tiny_tokenizer, tmp_path):
    from robust_rlhf.config import LoRAParams
    from robust_rlhf.lora import add_lora
    from robust_rlhf.models import build_tiny_policy
    from robust_rlhf.reward.model import (
        BRMERewardModel,
        RewardModelConfig,
        load_reward_model,
        save_reward_model,
        score_texts,
    )

    lora = LoRAParams(enabled=True, rank=4, alpha=8.0, target_modules=["all-linear"])
    backbone = add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa").model, lora)
    config = RewardModelConfig(num_heads=3, sigma_min=0.01, pooling="last", max_length=32)
    model = BRMERewardModel(backbone, config, seed=0).eval()
    with torch.no_grad():  # trained adapters: B != 0, so the merged backbone differs from the base
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    save_reward_model(model, tiny_tokenizer, tmp_path, model.state_dict())
    reloaded, tokenizer = load_reward_model(tmp_path, attn_implementation="sdpa", dtype=torch.float32)
    assert not any("lora" in name for name in reloaded.state_dict())  # a plain backbone: no peft to load it
    texts = (["Rate this.", "And this one?"], ["great fun", "awful, really"])
    expected = score_texts(model, tokenizer, *texts, batch_size=2)
    got = score_texts(reloaded, tokenizer, *texts, batch_size=2)
    for key in ("mu", "sigma"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
    base = BRMERewardModel(
        build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa").model, config, seed=0
    ).eval()
    assert not torch.allclose(score_texts(base, tokenizer, *texts, batch_size=2)["mu"], got["mu"], atol=1e-4)

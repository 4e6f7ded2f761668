"""The ppo stage on a `mixture` method (two tiny pretrained reward models with different tokenizers, mixed
with the session's trained single RM and ensemble), then evaluate's scoring of the same mixture: one PPO
step through the CLI, the affine it fits saved with the policy, and evaluate's proxy reading it back."""

import csv
import json

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.config import load_params
from robust_rlhf.data.gold import GoldScorer
from robust_rlhf.evaluation.policy import evaluate_policy
from robust_rlhf.models import load_causal_lm, load_tokenizer
from robust_rlhf.reward.pretrained import AFFINE_FILE, mixture_key, read_run_affines, used_reward_models
from robust_rlhf.reward.scoring import load_reward_models
from robust_rlhf.runtime.atomic import read_jsonl
from tests.conftest import tiny_params, write_params
from tests.reward.tiny_reward_models import save_tiny_bert_rm, save_tiny_llama_rm
from tests.stages.test_ppo import run_ppo

MEMBERS = ["chat", "pair", "single", "ensemble"]


def test_a_mixture_of_pretrained_and_trained_members_trains_and_evaluates(pipeline_run, tmp_path, tiny_tokenizer):
    from robust_rlhf.data.task import tokenizer_corpus

    folders = {
        "chat": save_tiny_llama_rm(tmp_path / "rm" / "chat", tiny_tokenizer),
        "pair": save_tiny_bert_rm(tmp_path / "rm" / "pair", tokenizer_corpus()),
    }
    raw = tiny_params(**{"ppo.steps": 1})
    raw["reward_models"] = {name: {"source": str(f), "revision": None, "max_length": 64} for name, f in folders.items()}
    raw["methods"] = {"mix": {"reward_model": "mixture", "members": MEMBERS, "aggregation": "min"}}
    params_file = write_params(tmp_path / "params.yaml", raw)
    result = run_ppo(pipeline_run, tmp_path, params_file, method="mix")
    assert result.returncode == 0, result.stderr[-3000:]

    kind = mixture_key(MEMBERS)
    affine = json.loads((tmp_path / "p" / AFFINE_FILE).read_text())[kind]  # saved with the policy, unrounded
    ensemble_size = raw["train_reward"]["ensemble_size"]
    assert affine["members"] == MEMBERS and len(affine["offset"]) == 3 + ensemble_size
    assert all(scale > 0 for scale in affine["scale"]) and len(set(affine["offset"])) > 1
    logged = json.loads((tmp_path / "m.json").read_text())["reward_affine"]  # the metrics file rounds
    assert logged["offset"] == pytest.approx(affine["offset"], abs=1e-5)
    with open(tmp_path / "s.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["reward/optimised"]) == float(row[f"reward/{kind}/min"])
    assert "reward/pretrained:chat/single" in row and f"reward_model/{kind}/head_disagreement" in row

    # evaluate's scoring: the same loader, the affine read back from the run's folder.
    params = load_params(params_file)
    reward_models = load_reward_models(
        pipeline_run["reward"],
        pipeline_run["ensemble"],
        attn_implementation="sdpa",
        dtype=torch.float32,
        trust_remote_code=False,
        pretrained=used_reward_models(params.methods, params.reward_models),
    )
    reward_models.mixtures.update(read_run_affines(tmp_path, ["p"]))
    policy = load_causal_lm(pipeline_run["policy_init"], attn_implementation="sdpa", dtype=torch.float32).eval()
    tokenizer = load_tokenizer(pipeline_run["policy_init"])
    prompts = [row["prompt"] for row in read_jsonl(pipeline_run["data"] / "eval_prompts.jsonl")][:2]
    evaluated = evaluate_policy(
        policy,
        policy,
        tokenizer,
        reward_models,
        prompts,
        methods=params.methods,
        samples_per_prompt=2,
        max_new_tokens=8,
        temperature=1.0,
        batch_size=4,
        max_prompt_tokens=params.prepare.max_prompt_tokens,
        gold=GoldScorer(params.gold),
        aggregation=params.aggregation,
        seed=0,
        desc="mixture",
    )
    # The proxy is the min over the members' columns, each (raw - offset) / scale, by hand.
    samples = evaluated["samples"]
    scores = reward_models.score([s["prompt"] for s in samples], [s["response"] for s in samples], batch_size=4)
    raw_columns = torch.cat(
        [scores["pretrained:chat"][0], scores["pretrained:pair"][0], scores["single"][0], scores["ensemble"][0]], dim=1
    )
    centred = (raw_columns - torch.tensor(affine["offset"])) / torch.tensor(affine["scale"])
    assert_close(evaluated["proxy"]["mix"], centred.min(dim=1).values.float(), atol=1e-5, rtol=1e-5)
    assert kind in evaluated["disagreement"]

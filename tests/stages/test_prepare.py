import json

import torch

from robust_rlhf.models import load_causal_lm, load_tokenizer
from robust_rlhf.runtime.atomic import read_jsonl
from tests.conftest import tiny_params


def test_prepare_writes_every_split_with_the_requested_rows(pipeline_run):
    data, config = pipeline_run["data"], tiny_params()["prepare"]
    metrics = json.loads((pipeline_run["metrics"] / "prepare.json").read_text())
    rejects = read_jsonl(data / "rejects.jsonl")
    for split in ("train", "val", "test"):
        rows = read_jsonl(data / f"prefs_{split}.jsonl")
        split_rejects = [r for r in rejects if r["split"] == split]
        # Every requested pair is either a row or a counted reject: nothing is dropped silently.
        assert len(rows) + len(split_rejects) == config[f"num_{split}_pairs"]
        assert metrics["rows"][split] == len(rows)
        for row in rows:
            assert set(row) >= {"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "label_flipped"}
            assert row["chosen"] != row["rejected"]
    assert metrics["rejects"]["total"] == len(rejects)
    assert len(read_jsonl(data / "ppo_prompts.jsonl")) == config["num_ppo_prompts"]
    assert len(read_jsonl(data / "eval_prompts.jsonl")) == config["num_eval_prompts"]


def test_prepare_labels_follow_gold_unless_flipped(pipeline_run):
    for split in ("train", "val", "test"):
        for row in read_jsonl(pipeline_run["data"] / f"prefs_{split}.jsonl"):
            if row["gold_chosen"] != row["gold_rejected"]:
                assert (row["gold_chosen"] > row["gold_rejected"]) != row["label_flipped"]


def test_prepare_prompt_sets_are_disjoint(pipeline_run):
    data = pipeline_run["data"]
    sets = {
        split: {r["prompt"] for r in read_jsonl(data / f"prefs_{split}.jsonl")} for split in ("train", "val", "test")
    }
    sets |= {name: {r["prompt"] for r in read_jsonl(data / f"{name}_prompts.jsonl")} for name in ("ppo", "eval")}
    names = list(sets)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not sets[first] & sets[second], f"{first} and {second} share prompts"


def test_prepare_saves_a_loadable_initial_policy(pipeline_run):
    policy_dir = pipeline_run["policy_init"]
    assert (policy_dir / "model.safetensors").exists()
    model, tokenizer = (
        load_causal_lm(policy_dir, attn_implementation="sdpa", dtype=torch.float32),
        load_tokenizer(policy_dir),
    )
    assert model.config.vocab_size == len(tokenizer)


def test_prepare_samples_shifted_responses_for_the_val_prompts(pipeline_run):
    data, config = pipeline_run["data"], tiny_params()["prepare"]
    shifted = read_jsonl(data / "shift_responses.jsonl")
    assert len(shifted) == config["num_shift_samples"]
    val_prompts = {r["prompt"] for r in read_jsonl(data / "prefs_val.jsonl")}
    assert {row["prompt"] for row in shifted} <= val_prompts
    assert all(set(row) == {"prompt", "response"} for row in shifted)
    metrics = json.loads((pipeline_run["metrics"] / "prepare.json").read_text())
    assert metrics["rows"]["shift_responses"] == len(shifted)
    assert metrics["distinct_prompts"]["eval"] == len({r["prompt"] for r in read_jsonl(data / "eval_prompts.jsonl")})

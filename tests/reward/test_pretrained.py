"""Tests for robust_rlhf.reward.pretrained: loading and scoring pretrained reward models (each with its own
tokenizer), what is refused (pickles, remote code, several outputs, an unreachable hub), the mixture's
centring on the initial samples, and methods that mix pretrained and trained members, by hand."""

import json
import shutil

import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from robust_rlhf.config import (
    AggregationParams,
    MethodParams,
    Params,
    ParamsError,
    PretrainedRewardModelParams,
    load_params,
)
from robust_rlhf.reward.pretrained import (
    NO_SIGMA,
    PretrainedRewardModelError,
    centred_mixture,
    fit_mixture_affine,
    load_pretrained_reward_model,
    mixture_key,
    mixture_scores,
    read_affine,
    write_affine,
)
from robust_rlhf.reward.scoring import applicable_aggregations, every_aggregation, method_rewards
from tests.conftest import tiny_params, write_params
from tests.reward.tiny_reward_models import save_tiny_bert_rm, save_tiny_llama_rm

PROMPTS = ["Write a short review of the library.", "In one sentence, how was a rainy weekend?"]
RESPONSES = ["It was lovely and calm, I liked it a lot.", "bad"]


def _spec(source, **overrides) -> PretrainedRewardModelParams:
    return PretrainedRewardModelParams(**{"source": str(source), "revision": None, "max_length": 64, **overrides})


def _load(name, source, **overrides):
    return load_pretrained_reward_model(
        name, _spec(source, **overrides), attn_implementation="sdpa", dtype=torch.float32
    )


@pytest.fixture(scope="module")
def member_folders(tmp_path_factory, tiny_tokenizer):
    from robust_rlhf.data.task import tokenizer_corpus

    root = tmp_path_factory.mktemp("pretrained")
    return {
        "chat": save_tiny_llama_rm(root / "chat", tiny_tokenizer),
        "pair": save_tiny_bert_rm(root / "pair", tokenizer_corpus()),
    }


# ---------------------------------------------------------------- loading and scoring


def test_each_member_scores_with_its_own_tokenizer_and_rendering(member_folders):
    chat, pair = _load("chat", member_folders["chat"]), _load("pair", member_folders["pair"])
    assert chat.tokenizer.chat_template and not getattr(pair.tokenizer, "chat_template", None)
    assert len(chat.tokenizer) != len(pair.tokenizer)  # two vocabularies
    for member in (chat, pair):
        batched = member.score(PROMPTS, RESPONSES, batch_size=2)  # padded batch, as PPO scores it
        for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
            if member is chat:  # the chat template's text: a user turn, an assistant turn
                text = f"<bos>user: {prompt}<eos><bos>assistant: {response}<eos>"
                ids = chat.tokenizer(text, add_special_tokens=False, return_tensors="pt")
            else:  # BERT's own text pair: [CLS] prompt [SEP] response [SEP]
                ids = pair.tokenizer(prompt, response, return_tensors="pt")
                assert ids["input_ids"][0, 0] == pair.tokenizer.cls_token_id
            with torch.no_grad():
                expected = member.model(**ids).logits[0, 0]
            assert_close(batched[i], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        chat.score(PROMPTS, RESPONSES, batch_size=2), pair.score(PROMPTS, RESPONSES, batch_size=2)
    )


def test_a_folder_of_pickles_is_refused_naming_the_member(member_folders, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(member_folders["pair"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(
        PretrainedRewardModelError, match=r"reward_models\.mine\.source: .* only pickled weights \(pytorch_model\.bin\)"
    ):
        _load("mine", folder)


def test_remote_code_is_refused_even_when_the_model_type_exists(member_folders, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(member_folders["pair"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedRewardModelError, match=r"reward_models\.mine\.source: .*needs remote code"):
        _load("mine", folder)


def test_a_classifier_with_two_outputs_is_refused(member_folders, tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(member_folders["pair"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedRewardModelError, match="num_labels = 2"):
        _load("mine", folder)


def test_a_hub_name_offline_is_an_error_naming_the_member(monkeypatch):
    # The same loader on a name: offline, it stops at the hub client's call, and says which member.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        PretrainedRewardModelError,
        match=r"reward_models\.judge\.source: reward model 'judge' \('someorg/some-rm' at revision 'v1'\) "
        r"\(HF_HUB_OFFLINE is set.*cannot read its config",
    ):
        _load("judge", "someorg/some-rm", revision="v1")


# ---------------------------------------------------------------- params


def _params(**overrides) -> dict:
    return tiny_params(**overrides)


def test_a_mixture_method_validates_with_pretrained_and_trained_members(member_folders):
    params = Params.model_validate(
        _params(
            reward_models={"chat": {"source": str(member_folders["chat"]), "revision": None, "max_length": 64}},
            methods={
                "mix": {"reward_model": "mixture", "members": ["chat", "brme", "ensemble"], "aggregation": "brme"}
            },
        )
    )
    assert params.methods["mix"].members == ["chat", "brme", "ensemble"]


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"reward_model": "mixture", "members": ["nobody"], "aggregation": "mean"}, "members: .*'nobody' is neither"),
        ({"reward_model": "mixture", "members": [], "aggregation": "mean"}, "members: .*needs `members`"),
        ({"reward_model": "ensemble", "members": ["single"], "aggregation": "mean"}, "members: .*only a mixture"),
        ({"reward_model": "mixture", "members": ["single", "single"], "aggregation": "mean"}, "members: .*distinct"),
        ({"reward_model": "mixture", "members": ["single", "ensemble"], "aggregation": "nominal"}, ": .*member `brme`"),
        ({"reward_model": "mixture", "members": ["single"], "aggregation": "single"}, ": aggregation `single`"),
    ],
)
def test_bad_mixtures_are_refused_naming_the_param(tmp_path, method, message):
    with pytest.raises(ParamsError, match=r"\n  methods\.mix\.?" + message):
        load_params(write_params(tmp_path / "params.yaml", _params(methods={"mix": method})))


def test_a_hub_member_has_a_revision_a_folder_none(tmp_path):
    assert _spec("org/name", revision="abc123").revision == "abc123"
    with pytest.raises(ValidationError, match="a local folder has no revision"):
        _spec(tmp_path, revision="abc123")
    taken = _params(reward_models={"single": {"source": "o/n", "revision": None, "max_length": 64}})
    with pytest.raises(ParamsError, match=r"reward_models\.single: .*not a trained kind"):
        load_params(write_params(tmp_path / "params.yaml", taken))


# ---------------------------------------------------------------- centring and mixing, by hand


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# N = 4 initial samples. single [1, 3, 1, 3]: mean 2, std 1; pretrained `a` [0, 4, 0, 4]: mean 2, std 2;
# brme heads [2, 2, 2, 2] (no spread: scale stays 1) and [0, 1, 2, 3] (mean 1.5, std sqrt(1.25)).
INITIAL = {
    "single": (_t([[1.0], [3.0], [1.0], [3.0]]), torch.ones(4, 1, dtype=torch.float64)),
    "pretrained:a": (_t([[0.0], [4.0], [0.0], [4.0]]), torch.ones(4, 1, dtype=torch.float64)),
    "brme": (_t([[2.0, 0.0], [2.0, 1.0], [2.0, 2.0], [2.0, 3.0]]), _t([[0.5, 0.1]] * 4)),
}


def test_the_affine_centres_and_scales_each_column_on_the_initial_samples():
    affine = fit_mixture_affine(INITIAL, ["a", "single", "brme"])
    assert affine.offset == pytest.approx([2.0, 2.0, 2.0, 1.5])
    assert affine.scale == pytest.approx([2.0, 1.0, 1.0, 1.25**0.5])
    mu, sigma = centred_mixture(INITIAL, affine)
    spread = mu[:, [0, 1, 3]]
    assert_close(spread.mean(dim=0), torch.zeros(3, dtype=torch.float64))
    assert_close(spread.std(dim=0, unbiased=False), torch.ones(3, dtype=torch.float64))
    assert_close(mu[:, 2], torch.zeros(4, dtype=torch.float64))  # a constant head: centred, not scaled
    # The BRME's sigmas scale with their heads; the other members carry none.
    assert_close(sigma[0], _t([NO_SIGMA, NO_SIGMA, 0.5, 0.1 / 1.25**0.5]))


def _coefficients() -> AggregationParams:
    return AggregationParams(brme_lambda=0.25, uwo_coef=0.5, kl_dro_beta=2.0)


def test_methods_mix_a_pretrained_member_with_trained_ones_through_the_registry():
    affine = fit_mixture_affine(INITIAL, ["a", "single"])
    assert mixture_key(["a", "single"]) == "mixture:a+single"
    # New samples: a [6, 2] -> [(6-2)/2, (2-2)/2] = [2, 0]; single [0, 4] -> [-2, 2].
    later = {"single": (_t([[0.0], [4.0]]), torch.ones(2, 1)), "pretrained:a": (_t([[6.0], [2.0]]), torch.ones(2, 1))}
    scores = {**later, **mixture_scores(later, {mixture_key(["a", "single"]): affine})}
    methods = {
        agg: MethodParams(reward_model="mixture", members=["a", "single"], aggregation=agg)
        for agg in ("mean", "min", "uwo")
    }
    rewards = method_rewards(scores, methods, _coefficients())
    assert_close(rewards["mean"], _t([0.0, 1.0]))
    assert_close(rewards["min"], _t([-2.0, 0.0]))
    assert_close(rewards["uwo"], _t([0.0 - 0.5 * 4.0, 1.0 - 0.5 * 1.0]))  # population var of [2, -2], [0, 2]
    assert "mixture:a+single/mean" in every_aggregation(scores, _coefficients())


def test_brme_aggregation_of_a_mixture_takes_the_nominal_from_the_brme_and_the_min_over_all():
    members = ["a", "brme"]
    affine = fit_mixture_affine(INITIAL, members)
    # a [2] -> 0; brme heads [2, 1.5 + sqrt(1.25)] -> [0, 1], sigmas [0.5, 0.05 * sqrt(1.25)] -> [0.5, 0.05].
    later = {
        "pretrained:a": (_t([[2.0]]), torch.ones(1, 1)),
        "brme": (_t([[2.0, 1.5 + 1.25**0.5]]), _t([[0.5, 0.05 * 1.25**0.5]])),
    }
    scores = mixture_scores(later, {mixture_key(members): affine})
    method = MethodParams(reward_model="mixture", members=members, aggregation="brme")
    # nominal = head 2 (smallest sigma) = 1; min over a and both heads = 0 -> 0.25 * 1 + 0.75 * 0
    assert_close(method_rewards(scores, {"m": method}, _coefficients())["m"], _t([0.25]))
    assert "brme" in applicable_aggregations(mixture_key(members))
    assert "brme" not in applicable_aggregations(mixture_key(["a", "single"]))
    assert applicable_aggregations("pretrained:a") == ["single"]


def test_the_affine_round_trips_through_the_policy_folder(tmp_path):
    affine = fit_mixture_affine(INITIAL, ["a", "single"])
    write_affine(tmp_path, affine)
    assert read_affine(tmp_path) == {"mixture:a+single": affine}
    assert read_affine(tmp_path / "elsewhere") == {}

import math
import random

import pytest

from robust_rlhf.config import GoldParams
from robust_rlhf.data.gold import EMPTY_RESPONSE_SCORE, GoldScorer, bigram_repetition, fluency_facet, lexicon_gold_score
from robust_rlhf.data.pairs import label_pair, preference_stats
from robust_rlhf.data.task import all_prompts, distinct_prompt_counts, split_prompts
from tests.conftest import tiny_section


def _gold(name: str) -> GoldParams:
    return GoldParams(**tiny_section("gold", name=name))


def test_split_prompts_is_disjoint_sized_and_seeded():
    sizes = {"train": 48, "val": 16, "ppo": 16, "eval": 8}
    sets = split_prompts(0, sizes)
    assert {name: len(prompts) for name, prompts in sets.items()} == sizes
    names = list(sets)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not set(sets[first]) & set(sets[second])
    assert split_prompts(0, sizes) == sets and split_prompts(1, sizes) != sets


def test_distinct_prompt_counts_give_small_sets_one_prompt_per_row_and_split_the_rest():
    # 100 prompts: eval 10 and ppo 20 fit an equal share (25, then 35); train 300 / val 100 split 70 as 3:1
    counts = distinct_prompt_counts(100, {"train": 300, "val": 100, "ppo": 20, "eval": 10})
    assert counts == {"train": 52, "val": 17, "ppo": 20, "eval": 10}
    assert distinct_prompt_counts(100, {"a": 30, "b": 40}) == {"a": 30, "b": 40}  # everything fits


def test_split_prompts_gives_the_default_eval_and_ppo_sets_distinct_prompts():
    sets = split_prompts(0, {"train": 640, "val": 160, "test": 160, "ppo": 32, "eval": 16})
    assert len(set(sets["eval"])) == 16 and len(set(sets["ppo"])) == 32
    assert len(set(sets["train"])) > 200 and len(all_prompts()) == 480


def test_split_prompts_refuses_more_sets_than_prompts():
    with pytest.raises(ValueError, match="disjoint"):
        split_prompts(0, {f"s{i}": 1 for i in range(len(all_prompts()) + 1)})


def test_lexicon_gold_hand_values():
    # 4 words, 2 positive, 0 negative, all distinct: 2 / sqrt(4) - 0 = 1.0
    assert lexicon_gold_score("Great food, lovely staff") == pytest.approx(1.0)
    # 4 words, 0 positive, 2 negative ("rude" twice), 3 distinct: -2 / sqrt(4) - (1 - 3/4) = -1.25
    assert lexicon_gold_score("rude rude waiter here") == pytest.approx(-1.25)
    assert lexicon_gold_score("  ...  ") == EMPTY_RESPONSE_SCORE


def test_unknown_gold_is_refused_by_params():
    with pytest.raises(ValueError, match="name"):
        _gold("vibes")


def test_lexicon_scorer_scores_each_pair():
    gold = GoldScorer(_gold("lexicon"))
    assert gold(["p", "q"], ["great fun", "awful"]) == [lexicon_gold_score("great fun"), lexicon_gold_score("awful")]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        gold(["p", "q"], ["x"])


def test_composite_facets_hand_values():
    # "a b a b": bigrams ab, ba, ab -> 2 distinct of 3 -> repetition 1/3
    assert bigram_repetition("a b a b") == pytest.approx(1 / 3)
    assert bigram_repetition("one") == 0.0
    # mean log p -2.5 at scale 5: -2.5/5 + 1 = 0.5; -20 clamps to -1; +1 clamps to 1
    assert fluency_facet(-2.5, scale=5.0) == 0.5
    assert fluency_facet(-20.0, scale=5.0) == -1.0 and fluency_facet(1.0, scale=5.0) == 1.0


def test_composite_gold_prefers_positive_fluent_text(tiny_policy, tiny_tokenizer):
    gold = GoldScorer(_gold("composite"), reference_model=tiny_policy, tokenizer=tiny_tokenizer)
    positive, negative, empty = gold(["Review the park."] * 3, ["A lovely calm park.", "A dirty awful park.", "..."])
    # Same length and structure: the VADER facet decides, fluency under a random model differs little.
    assert positive > negative
    assert empty < negative


def test_composite_gold_reads_given_log_probs_instead_of_running_the_policy(tiny_policy, tiny_tokenizer):
    gold = GoldScorer(_gold("composite"), reference_model=tiny_policy, tokenizer=tiny_tokenizer)
    # mean log p -2.5 -> fluency 0.5; "good" alone: VADER compound 0.4404, no bigrams
    assert gold(["p"], ["good"], mean_logprobs=[-2.5]) == [pytest.approx(0.4404 + 0.5 * 0.5)]
    computed = gold(["Review the park."], ["A lovely calm park."])
    own = gold._mean_logprobs(["Review the park."], ["A lovely calm park."])
    assert gold(["Review the park."], ["A lovely calm park."], mean_logprobs=own) == computed
    with pytest.raises(ValueError, match="2 mean log-probs for 1 responses"):
        gold(["p"], ["good"], mean_logprobs=[-1.0, -2.0])


def test_composite_gold_needs_the_initial_policy():
    with pytest.raises(ValueError, match="initial policy"):
        GoldScorer(_gold("composite"))


def test_label_pair_argmax_flip_rate():
    rng = random.Random(0)
    results = [label_pair(1.0, 0.0, mode="argmax_flip", label_noise=0.25, rng=rng) for _ in range(4000)]
    assert all(a_wins != flipped for a_wins, flipped in results)  # a has the higher gold: wins unless flipped
    assert sum(flipped for _, flipped in results) / 4000 == pytest.approx(0.25, abs=0.03)


def test_label_pair_bt_sample_probability():
    rng = random.Random(0)
    wins = sum(label_pair(1.0, 0.0, mode="bt_sample", label_noise=0.0, rng=rng)[0] for _ in range(4000))
    assert wins / 4000 == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)


def test_preference_stats_ignores_ties_for_agreement():
    pairs = [
        {"gold_chosen": 1.0, "gold_rejected": 0.0, "label_flipped": False, "chosen": "ab", "rejected": "c"},
        {"gold_chosen": 0.0, "gold_rejected": 1.0, "label_flipped": True, "chosen": "a", "rejected": "bc"},
        {"gold_chosen": 0.0, "gold_rejected": 0.0, "label_flipped": False, "chosen": "a", "rejected": "b"},
    ]
    stats = preference_stats(pairs)
    assert stats["gold_ties"] == 1 and stats["gold_agreement"] == 0.5
    assert stats["flipped_fraction"] == pytest.approx(1 / 3)

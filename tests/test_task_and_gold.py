import math
import random

import pytest

from robust_rlhf.gold import EMPTY_RESPONSE_SCORE, gold_scores, lexicon_gold_score
from robust_rlhf.preferences import label_pair, preference_stats
from robust_rlhf.task import all_prompts, split_prompts


def test_split_prompts_is_disjoint_sized_and_seeded():
    sizes = {"train": 48, "val": 16, "ppo": 16, "eval": 8}
    sets = split_prompts(0, sizes)
    assert {name: len(prompts) for name, prompts in sets.items()} == sizes
    names = list(sets)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not set(sets[first]) & set(sets[second])
    assert split_prompts(0, sizes) == sets and split_prompts(1, sizes) != sets


def test_split_prompts_refuses_more_sets_than_prompts():
    with pytest.raises(ValueError, match="disjoint"):
        split_prompts(0, {f"s{i}": 1 for i in range(len(all_prompts()) + 1)})


def test_lexicon_gold_hand_values():
    # 4 words, 2 positive, 0 negative, all distinct: 2 / sqrt(4) - 0 = 1.0
    assert lexicon_gold_score("p", "Great food, lovely staff") == pytest.approx(1.0)
    # 4 words, 0 positive, 2 negative ("rude" twice), 3 distinct: -2 / sqrt(4) - (1 - 3/4) = -1.25
    assert lexicon_gold_score("p", "rude rude waiter here") == pytest.approx(-1.25)
    assert lexicon_gold_score("p", "  ...  ") == EMPTY_RESPONSE_SCORE


def test_gold_scores_rejects_unknown_scorer():
    with pytest.raises(ValueError, match="unknown gold scorer"):
        gold_scores("vibes", ["p"], ["r"])


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
    pairs = [{"gold_chosen": 1.0, "gold_rejected": 0.0, "label_flipped": False, "chosen": "ab", "rejected": "c"},
             {"gold_chosen": 0.0, "gold_rejected": 1.0, "label_flipped": True, "chosen": "a", "rejected": "bc"},
             {"gold_chosen": 0.0, "gold_rejected": 0.0, "label_flipped": False, "chosen": "a", "rejected": "b"}]
    stats = preference_stats(pairs)
    assert stats["gold_ties"] == 1 and stats["gold_agreement"] == 0.5
    assert stats["flipped_fraction"] == pytest.approx(1 / 3)

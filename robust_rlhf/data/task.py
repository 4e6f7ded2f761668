"""The built-in synthetic-gold task (docs/study.md#task-and-gold): prompts that ask for a short,
positive, varied reply about a topic. A deterministic gold scorer (robust_rlhf/data/gold.py) judges it.

Prompts are templates x topics, shuffled by seed and cut into disjoint sets, so the preference
splits, the PPO prompts and the held-out eval prompts never share a prompt.
"""

from __future__ import annotations

import random

TEMPLATES = (
    "Write a short review of {topic}.",
    "Tell a friend what you think about {topic}.",
    "Describe your experience with {topic} in one sentence.",
    "Give your honest opinion of {topic}.",
    "What would you say about {topic} to a stranger?",
    "Summarise how you feel about {topic}.",
    "In one sentence, how was {topic}?",
    "Would you recommend {topic}? Answer briefly.",
    "Write a one-line comment about {topic}.",
    "Briefly describe {topic} to a colleague.",
    "What is your short verdict on {topic}?",
    "Share a quick impression of {topic}.",
)

TOPICS = (
    "the new cafe downtown",
    "a rainy weekend",
    "the museum tour",
    "your morning train",
    "the hotel breakfast",
    "a long flight",
    "the city park",
    "the concert last night",
    "a cheap umbrella",
    "the library",
    "a hiking trail",
    "the office printer",
    "a street market",
    "the football match",
    "a cooking class",
    "your old laptop",
    "the beach in winter",
    "a bicycle repair shop",
    "the night bus",
    "a board game evening",
    "the corner bakery",
    "a school reunion",
    "the science fair",
    "a ferry crossing",
    "the new phone app",
    "a camping trip",
    "the art gallery",
    "a yoga class",
    "the village festival",
    "a used bookshop",
    "the dentist visit",
    "a road trip",
    "the pizza place",
    "a garden party",
    "the swimming pool",
    "a train station cafe",
    "the weekend market",
    "a pottery workshop",
    "the airport lounge",
    "a movie premiere",
)

POSITIVE_WORDS = (
    "good",
    "great",
    "excellent",
    "wonderful",
    "lovely",
    "happy",
    "friendly",
    "beautiful",
    "amazing",
    "pleasant",
    "fantastic",
    "delightful",
    "enjoyable",
    "nice",
    "fun",
    "best",
    "love",
    "enjoyed",
    "helpful",
    "calm",
    "fresh",
    "clean",
    "bright",
    "perfect",
)

NEGATIVE_WORDS = (
    "bad",
    "terrible",
    "awful",
    "horrible",
    "sad",
    "rude",
    "ugly",
    "boring",
    "dirty",
    "annoying",
    "poor",
    "worst",
    "hate",
    "broken",
    "slow",
    "noisy",
    "cold",
    "disappointing",
    "expensive",
    "crowded",
    "late",
    "dull",
    "angry",
    "tired",
)

NEUTRAL_WORDS = (
    "the",
    "a",
    "it",
    "was",
    "is",
    "and",
    "but",
    "very",
    "really",
    "quite",
    "there",
    "we",
    "I",
    "they",
    "time",
    "place",
    "people",
    "food",
    "day",
    "service",
    "again",
    "too",
    "so",
    "with",
    "of",
    "to",
    "in",
    "on",
    "not",
    "felt",
    "found",
    "think",
    "would",
    "go",
    "back",
)


def all_prompts() -> list[str]:
    """Every prompt of the task, in a fixed order."""
    return [template.format(topic=topic) for template in TEMPLATES for topic in TOPICS]


def split_prompts(seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Shuffle the prompts by `seed` and cut disjoint sets of the given sizes, in the given order.

    If more prompts are asked for than exist, prompts repeat within (never across) the sets by
    cycling over each set's own slice, so sets stay disjoint; `distinct_prompt_counts` decides how
    many distinct prompts each set gets.
    """
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    counts = distinct_prompt_counts(len(prompts), sizes)
    sets, start = {}, 0
    for name, size in sizes.items():
        own = prompts[start : start + counts[name]]
        start += len(own)
        sets[name] = [own[i % len(own)] for i in range(size)]
    return sets


def distinct_prompt_counts(available: int, sizes: dict[str, int]) -> dict[str, int]:
    """How many distinct prompts each set gets (water-filling): a set no larger than an equal share
    of the prompts still unallotted gets one distinct prompt per row; the sets that are larger split
    what is left in proportion to their sizes (at least one each)."""
    if len(sizes) > available:
        raise ValueError(f"cannot cut {len(sizes)} disjoint prompt sets from {available} prompts")
    counts: dict[str, int] = {}
    pending, remaining = dict(sizes), available
    while pending:
        share = remaining / len(pending)
        fitting = {name: size for name, size in pending.items() if size <= share}
        if not fitting:
            total = sum(pending.values())
            counts.update({name: max(1, remaining * size // total) for name, size in pending.items()})
            break
        counts.update(fitting)
        remaining -= sum(fitting.values())
        pending = {name: size for name, size in pending.items() if name not in fitting}
    return {name: counts[name] for name in sizes}


def topic_of(prompt: str) -> str | None:
    """The task topic a prompt is about (None for a prompt not from the task's templates)."""
    return next((topic for topic in TOPICS if topic in prompt), None)


def tokenizer_corpus() -> list[str]:
    """Text that the tiny test tokenizer is trained on: the prompts and every lexicon word."""
    words = " ".join(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS)
    return all_prompts() + [words, words.capitalize() + "."]

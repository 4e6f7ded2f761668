"""Gold scorers: deterministic judges that stand in for human raters (DESIGN.md §4).

`lexicon` (simple form, issue 2): it judges two facets of a response,
  sentiment  = (#positive words - #negative words) / sqrt(#words)
  repetition = 1 - #distinct words / #words
  gold = sentiment - repetition, and -1 for an empty response.
It is a fixed function of the text, independent of every proxy reward model.
"""

from __future__ import annotations

import math
import re
from typing import Callable

from robust_rlhf.task import NEGATIVE_WORDS, POSITIVE_WORDS

_WORD = re.compile(r"[a-z']+")
_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)

EMPTY_RESPONSE_SCORE = -1.0


def lexicon_gold_score(prompt: str, response: str) -> float:
    """Gold score of `response` to `prompt` under the lexicon scorer (see the module docstring)."""
    words = _WORD.findall(response.lower())
    if not words:
        return EMPTY_RESPONSE_SCORE
    sentiment = (sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)) / math.sqrt(len(words))
    repetition = 1.0 - len(set(words)) / len(words)
    return sentiment - repetition


GOLD_SCORERS: dict[str, Callable[[str, str], float]] = {"lexicon": lexicon_gold_score}


def gold_scores(name: str, prompts: list[str], responses: list[str]) -> list[float]:
    """Score each (prompt, response) with the gold scorer `name`."""
    if name not in GOLD_SCORERS:
        raise ValueError(f"unknown gold scorer {name!r}; known: {sorted(GOLD_SCORERS)}")
    scorer = GOLD_SCORERS[name]
    return [scorer(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]

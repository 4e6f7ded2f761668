"""Gold scorers: deterministic judges that stand in for human raters (docs/study.md#task-and-gold).

Both are fixed functions of (prompt, response), independent of every proxy reward model (nothing
is trained on the preference labels), and judge more than one facet of a response, so that a proxy
fitted to on-policy samples is under-specified off-distribution.

`lexicon` (tiny profile; no model): sentiment = (#positive - #negative lexicon words) / sqrt(#words),
    repetition = 1 - #distinct words / #words; gold = sentiment - repetition; -1 for an empty reply.
`composite` (default profile): the task asks for a positive, fluent, non-repetitive reply:
    gold = vader_compound(response)                                   in [-1, 1]
         + fluency_weight * clamp(mean log p_init(response | prompt) / fluency_scale + 1, -1, 1)
         - repetition_weight * (1 - #distinct word bigrams / #word bigrams)
    with `EMPTY_RESPONSE_SCORE` for a reply with no words. VADER (Hutto & Gilbert 2014) is a
    rule-based sentiment lexicon; fluency is the initial policy's own per-token log-likelihood of
    the response's tokens as sampled (EOS included when the response ended with it). Callers that
    sampled the response pass those log-probs (`mean_logprobs`: generate's own when the sampler is
    the initial policy, the KL reference forward's otherwise); for bare texts the scorer re-tokenises
    the response, taken as complete (EOS appended), and runs the initial policy itself.
"""

from __future__ import annotations

import math
import re

import torch

from robust_rlhf.data.task import NEGATIVE_WORDS, POSITIVE_WORDS

_WORD = re.compile(r"[a-z']+")
_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)

EMPTY_RESPONSE_SCORE = -1.0


def lexicon_gold_score(response: str) -> float:
    """Gold score of `response` under the lexicon scorer (see the module docstring)."""
    words = _WORD.findall(response.lower())
    if not words:
        return EMPTY_RESPONSE_SCORE
    sentiment = (sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)) / math.sqrt(len(words))
    repetition = 1.0 - len(set(words)) / len(words)
    return sentiment - repetition


def lexicon_repetition(response: str) -> float:
    """The lexicon gold's repetition facet: 1 - #distinct words / #words (0 for no words)."""
    words = _WORD.findall(response.lower())
    return 1.0 - len(set(words)) / len(words) if words else 0.0


def bigram_repetition(text: str) -> float:
    """1 - distinct word bigrams / word bigrams; 0 for fewer than two words."""
    words = _WORD.findall(text.lower())
    bigrams = list(zip(words, words[1:]))
    return 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def fluency_facet(mean_logprob: float, *, scale: float) -> float:
    """Map a mean per-token log-likelihood to [-1, 1]: clamp(mean_logprob / scale + 1, -1, 1)."""
    return max(-1.0, min(1.0, mean_logprob / scale + 1.0))


class GoldScorer:
    """Scores (prompt, response) pairs with the gold named in params (`gold:` section).

    The composite gold needs the initial policy and its tokenizer for the fluency facet.
    """

    def __init__(
        self, config, *, reference_model=None, tokenizer=None, max_prompt_tokens: int = 64, batch_size: int = 8
    ) -> None:
        self.config = config
        self.reference_model, self.tokenizer = reference_model, tokenizer
        self.max_prompt_tokens, self.batch_size = max_prompt_tokens, batch_size
        if config.name == "composite":
            if reference_model is None or tokenizer is None:
                raise ValueError("the composite gold needs the initial policy and its tokenizer (fluency facet)")
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._vader = SentimentIntensityAnalyzer()

    def __call__(
        self, prompts: list[str], responses: list[str], *, mean_logprobs: list[float] | None = None
    ) -> list[float]:
        """Gold scores of (prompt, response) pairs; `mean_logprobs`, when given, are the responses'
        mean per-token log p_init (see the module docstring)."""
        return self.facets(prompts, responses, mean_logprobs=mean_logprobs)["gold"]

    def facets(
        self, prompts: list[str], responses: list[str], *, mean_logprobs: list[float] | None = None
    ) -> dict[str, list[float]]:
        """The gold and its facets per response: `sentiment`, `repetition` and (composite) `fluency`,
        with gold = sentiment [+ fluency_weight * fluency] - repetition_weight * repetition. A reply
        with no words has sentiment -1 (and fluency -1), repetition 0."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.config.name == "lexicon":
            gold = [lexicon_gold_score(r) for r in responses]
            repetition = [lexicon_repetition(r) for r in responses]
            return {"gold": gold, "sentiment": [g + rep for g, rep in zip(gold, repetition)], "repetition": repetition}
        if mean_logprobs is not None and len(mean_logprobs) != len(responses):
            raise ValueError(f"{len(mean_logprobs)} mean log-probs for {len(responses)} responses")
        mean_logprobs = self._mean_logprobs(prompts, responses) if mean_logprobs is None else mean_logprobs
        facets: dict[str, list[float]] = {"gold": [], "sentiment": [], "fluency": [], "repetition": []}
        for response, mean_logprob in zip(responses, mean_logprobs):
            if _WORD.search(response.lower()):
                sentiment = self._vader.polarity_scores(response)["compound"]
                fluency = fluency_facet(mean_logprob, scale=self.config.fluency_scale)
                repetition = bigram_repetition(response)
            else:
                sentiment, fluency, repetition = EMPTY_RESPONSE_SCORE, -1.0, 0.0
            facets["sentiment"].append(sentiment)
            facets["fluency"].append(fluency)
            facets["repetition"].append(repetition)
            facets["gold"].append(
                sentiment + self.config.fluency_weight * fluency - self.config.repetition_weight * repetition
            )
        return facets

    @torch.inference_mode()
    def _mean_logprobs(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Mean per-token log p_init(response | prompt), re-tokenising the response text."""
        from robust_rlhf.generation import encode_prompts, forward_response

        device = next(self.reference_model.parameters()).device
        means: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            batch_prompts, batch_responses = (
                prompts[start : start + self.batch_size],
                responses[start : start + self.batch_size],
            )
            query_ids, query_mask = encode_prompts(
                self.tokenizer, batch_prompts, max_prompt_tokens=self.max_prompt_tokens
            )
            encoded = self.tokenizer(
                [r + (self.tokenizer.eos_token or "") for r in batch_responses],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            )
            logprobs, _ = forward_response(
                self.reference_model,
                query_ids.to(device),
                query_mask.to(device),
                encoded["input_ids"].to(device),
                encoded["attention_mask"].to(device),
            )
            mask = encoded["attention_mask"].to(device)
            means += masked_token_mean(logprobs, mask).tolist()
        return means


def masked_token_mean(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-prob per response over its real tokens: (B, T), (B, T) -> (B,)."""
    mask = mask.to(logprobs.dtype)
    return (logprobs * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

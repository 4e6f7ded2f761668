"""BRME scoring cost: k Gaussian heads on one backbone vs k separate reward models, on the default
reward backbone (all-MiniLM-L6-v2), through the library's own `score_texts`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.timing import interleaved_median_seconds, median_seconds
from bench.workload import bench_prompts, default_params, new_reward_model

# A response of about the default generation length (32 tokens) for every prompt.
RESPONSE = (
    "The food was really good and the service was friendly, but the place was too loud and we "
    "waited a long time for the table, so I think we would go back on a quiet day."
)


def scoring_times(
    backbone_spec: str, head_counts: list[int], *, batch_size: int, max_length: int, repeats: int
) -> dict[str, dict[int, float]]:
    """Seconds to score one batch: `heads[k]` with k heads on one backbone, `models[k]` with k
    separate one-head reward models scored one after another (as an ensemble is)."""
    from robust_rlhf.models import load_tokenizer, model_options
    from robust_rlhf.reward.model import BRMERewardModel, score_texts

    options = model_options(default_params(Path.cwd()))

    tokenizer = load_tokenizer(backbone_spec, padding_side="right")
    prompts = bench_prompts(batch_size)
    responses = [RESPONSE] * batch_size

    def score(models):
        return lambda: [score_texts(model, tokenizer, prompts, responses, batch_size=batch_size) for model in models]

    one_head = new_reward_model(backbone_spec, 1, max_length=max_length, seed=0, options=options)
    # k heads share the one backbone: a new BRME around the same backbone module. Timed in rounds, since the
    # rows divide each k by k = 1's time.
    heads = interleaved_median_seconds(
        {
            k: score([BRMERewardModel(one_head.backbone, replace(one_head.config, num_heads=k), seed=k).eval()])
            for k in head_counts
        },
        repeats,
    )
    models = {}
    for k in head_counts:
        separate = [one_head] + [
            new_reward_model(backbone_spec, 1, max_length=max_length, seed=i, options=options) for i in range(1, k)
        ]
        models[k] = median_seconds(score(separate), repeats)
        del separate
    return {"heads": heads, "models": models}


def scoring_ratios(times: dict[str, dict[int, float]]) -> dict[int, tuple[float, float]]:
    """Per k: (k heads / 1 head, k models / k heads): the heads' overhead and the ensemble's cost over them."""
    heads, models = times["heads"], times["models"]
    return {k: (heads[k] / heads[1], models[k] / heads[k]) for k in heads}

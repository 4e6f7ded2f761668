"""The run of stage `prepare`: the initial policy and the preference data, either of the synthetic-gold
task (pairs sampled from the policy, labelled by the gold scorer) or read from a hub dataset or
local files (`prepare.task: preference_data`, robust_rlhf/data/sources.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from robust_rlhf.config import Params
from robust_rlhf.data.gold import GoldScorer
from robust_rlhf.data.pairs import preference_stats, reject_counts, sample_preference_pairs, sample_shifted_responses
from robust_rlhf.data.sources import SourceError, TooManyRejects, load_sources, split_pairs
from robust_rlhf.data.task import split_prompts, tokenizer_corpus, topic_of
from robust_rlhf.generation import for_sampling
from robust_rlhf.models import load_causal_lm, load_tokenizer, materialise_policy, model_options
from robust_rlhf.runtime.atomic import atomic_directory, atomic_write_jsonl
from robust_rlhf.runtime.distributed import frozen_model, init_distributed
from robust_rlhf.runtime.memory_plan import check_stage_fits

SPLITS = ("train", "val", "test")
DVC_SOURCES_DIR = "data_sources"  # a dep of prepare in dvc.yaml: local preference files belong here
logger = logging.getLogger(__name__)


def run_prepare(params: Params, *, data: Path, policy: Path) -> dict:
    """Materialise the initial policy into `policy` and write the data splits into `data`; return the metrics."""
    config = params.prepare
    check_stage_fits(params, "prepare")  # before any model loads: refuse a run that cannot fit
    world_size = init_distributed()
    with atomic_directory(policy) as policy_tmp:
        materialise_policy(
            params.models.policy,
            policy_tmp,
            seed=params.seed,
            corpus=tokenizer_corpus(),
            trust_remote_code=params.models.trust_remote_code,
            attn_implementation=params.models.attn_implementation,
        )
    tokenizer = load_tokenizer(policy, trust_remote_code=params.models.trust_remote_code)
    if config.task == "preference_data":
        return _prepare_from_source(params, data, tokenizer)
    # The sampler and the gold's fluency model: the initial policy, placed and cast by DeepSpeed.
    sampler = frozen_model(
        for_sampling(
            load_causal_lm(policy, **model_options(params)), small_batch_linear=params.models.small_batch_linear
        ),
        deepspeed=params.deepspeed,
        micro_batch_size=config.batch_size,
        world_size=world_size,
    )
    gold = GoldScorer(
        params.gold,
        reference_model=sampler,
        tokenizer=tokenizer,
        max_prompt_tokens=config.max_prompt_tokens,
        batch_size=config.batch_size,
    )
    prompt_sets = split_prompts(
        params.seed,
        {
            "train": config.num_train_pairs,
            "val": config.num_val_pairs,
            "test": config.num_test_pairs,
            "ppo": config.num_ppo_prompts,
            "eval": config.num_eval_prompts,
        },
    )
    metrics: dict = {"rows": {}, "label_quality": {}}
    all_rejects: list[dict] = []
    with atomic_directory(data) as data_tmp:
        for index, split in enumerate(SPLITS):
            pairs, rejects = sample_preference_pairs(
                sampler,
                tokenizer,
                prompt_sets[split],
                gold=gold,
                label_mode=config.label_mode,
                label_noise=config.label_noise,
                seed=params.seed * 1000 + index,
                max_prompt_tokens=config.max_prompt_tokens,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                batch_size=config.batch_size,
                desc=f"sample {split} pairs",
            )
            atomic_write_jsonl(data_tmp / f"prefs_{split}.jsonl", pairs)
            all_rejects += [{"split": split, **reject} for reject in rejects]
            metrics["rows"][split] = len(pairs)
            metrics["label_quality"][split] = preference_stats(pairs)
        for split in ("ppo", "eval"):
            atomic_write_jsonl(data_tmp / f"{split}_prompts.jsonl", [{"prompt": p} for p in prompt_sets[split]])
            metrics["rows"][f"{split}_prompts"] = len(prompt_sets[split])
        # Off-distribution responses for the reward models' disagreement: the val prompts, sampled hot.
        val_prompts = list(dict.fromkeys(prompt_sets["val"]))
        shift_prompts = [val_prompts[i % len(val_prompts)] for i in range(config.num_shift_samples)]
        shifted = sample_shifted_responses(
            sampler,
            tokenizer,
            shift_prompts,
            seed=params.seed * 1000 + len(SPLITS),
            max_prompt_tokens=config.max_prompt_tokens,
            max_new_tokens=config.max_new_tokens,
            temperature=config.shift_temperature,
            batch_size=config.batch_size,
            desc="sample shifted responses",
        )
        atomic_write_jsonl(data_tmp / "shift_responses.jsonl", shifted)
        metrics["rows"]["shift_responses"] = len(shifted)
        metrics["distinct_prompts"] = {split: len(set(prompt_sets[split])) for split in prompt_sets}
        # Prompts are disjoint across sets; topics are not (a topic recurs under other templates).
        seen_topics = {topic_of(p) for split in ("train", "val", "test", "ppo") for p in prompt_sets[split]}
        eval_prompts = set(prompt_sets["eval"])
        metrics["eval_prompts_with_a_topic_seen_in_training"] = sum(
            topic_of(p) in seen_topics for p in eval_prompts
        ) / len(eval_prompts)
        atomic_write_jsonl(data_tmp / "rejects.jsonl", all_rejects)
    metrics["rejects"] = {"total": len(all_rejects), **reject_counts(all_rejects)}
    return metrics


def _prepare_from_source(params: Params, data: Path, tokenizer) -> dict:
    """Pairs from the configured source (or sources, pooled in order): validated, rejects kept, split by
    prompt; PPO prompts from the train split's prompts and evaluation prompts from the test split's. Every
    row read is used, rejected or counted as unused (`rows/unused_over_cap`: valid pairs beyond the split
    caps)."""
    config = params.prepare
    local_files = [file for source in config.sources if source.kind == "files" for file in source.files]
    for outside in files_outside(local_files, DVC_SOURCES_DIR):
        logger.warning(
            "%s is not under %s/, so it is no DVC dependency of prepare: `dvc repro` will not notice "
            "when it changes; move it there or add it to prepare's deps in dvc.yaml",
            outside,
            DVC_SOURCES_DIR,
        )
    kept_on_failure = failed_run_rejects_path(data)
    try:
        loaded = load_sources(config.sources, tokenizer, trust_remote_code=params.models.trust_remote_code)
    except TooManyRejects as error:
        atomic_write_jsonl(kept_on_failure, error.rejects)
        raise SourceError(
            f"{error}. All {len(error.rejects)} rejects (row, field, reason, raw) are in {kept_on_failure}"
        ) from None
    splits = split_pairs(
        loaded.pairs,
        seed=params.seed,
        sizes={"train": config.num_train_pairs, "val": config.num_val_pairs, "test": config.num_test_pairs},
    )
    empty = [split for split in SPLITS if not splits[split]]
    if empty:
        atomic_write_jsonl(kept_on_failure, loaded.rejects)
        raise SourceError(
            f"{len(loaded.pairs)} valid pairs (of {loaded.rows_read} rows) leave no pairs for "
            f"the {', '.join(empty)} split(s); lower prepare.num_val_pairs / num_test_pairs. The "
            f"rejects ({len(loaded.rejects)}) are in {kept_on_failure}"
        )
    unused = len(loaded.pairs) - sum(len(splits[split]) for split in SPLITS)
    if unused:
        logger.info(
            "%d of %d valid pairs are not used: the splits are full (prepare.num_train_pairs %d, "
            "num_val_pairs %d, num_test_pairs %d)",
            unused,
            len(loaded.pairs),
            config.num_train_pairs,
            config.num_val_pairs,
            config.num_test_pairs,
        )
    prompt_sets = {
        "ppo": _distinct_prompts(splits["train"], config.num_ppo_prompts),
        "eval": _distinct_prompts(splits["test"], config.num_eval_prompts),
    }
    with atomic_directory(data) as data_tmp:
        for split in SPLITS:
            atomic_write_jsonl(data_tmp / f"prefs_{split}.jsonl", splits[split])
        for split, prompts in prompt_sets.items():
            atomic_write_jsonl(data_tmp / f"{split}_prompts.jsonl", [{"prompt": p} for p in prompts])
        atomic_write_jsonl(data_tmp / "rejects.jsonl", loaded.rejects)
    # This run's rejects are in data/rejects.jsonl now; an earlier failed run's copy would mislead.
    kept_on_failure.unlink(missing_ok=True)
    return {
        "rows": {
            "read": loaded.rows_read,
            **{split: len(splits[split]) for split in SPLITS},
            "unused_over_cap": unused,
            **{f"{split}_prompts": len(prompts) for split, prompts in prompt_sets.items()},
        },
        "rejects": {"total": len(loaded.rejects), **loaded.reject_counts()},
        "ignored_columns": sum(map(len, loaded.ignored_columns.values())),
    }


def failed_run_rejects_path(data: str | Path) -> Path:
    """Where a failed preference-data run keeps its rejects: `.rejects/prepare/rejects.jsonl` beside
    the --data folder, i.e. at the repo root under DVC. DVC deletes its outputs before it runs a
    stage and the stage publishes --data only on success, so the file must lie outside every output
    (it is in .gitignore and .dvcignore)."""
    return Path(data).parent / ".rejects" / "prepare" / "rejects.jsonl"


def files_outside(files: list[str], folder: str | Path) -> list[str]:
    """The files not inside `folder` (both resolved against the working directory, the repo root
    under DVC)."""
    root = Path(folder).resolve()
    return [file for file in files if not Path(file).resolve().is_relative_to(root)]


def _distinct_prompts(pairs: list[dict], limit: int) -> list[str]:
    return list(dict.fromkeys(pair["prompt"] for pair in pairs))[:limit]

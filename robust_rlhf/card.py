"""Model cards for exported policies, in the hub's format: YAML front matter (the metadata the hub
indexes: base_model, library_name, tags, ...) between `---` lines, then markdown sections.

`card_facts` gathers what a card says about one PPO run from the params (and, once evaluate has run,
the method's row of the comparison table); `model_card` turns those facts into the markdown, a pure
function of them. The ppo stage writes a card without the study's numbers into the final checkpoint
(evaluate runs after it); `python -m stages.export_policy` writes the full one.
"""

from __future__ import annotations

import hashlib
import json

import yaml

from robust_rlhf.config import Params, policy_run_name

CARD_FILE = "README.md"
# A model source that is a hub name: `owner/name`, not a local path, a package resource or the test model.
_NOT_HUB_PREFIXES = ("package:", "/", ".", "~")

REWARD_MODELS = {
    "single": "one Bradley-Terry reward model",
    "ensemble": "an ensemble of {size} Bradley-Terry reward models, each on its own bootstrap resample",
    "brme": "the BRME: a Bradley-Terry head (nominal reward) and {heads} Gaussian heads (mean and sigma each)",
}


def params_sha256(params: Params, method: str, seed: int) -> str:
    """SHA-256 of the validated params that made the run, as canonical JSON: every section upstream of
    and in ppo, with only this run's method and seed (other methods, other seeds and evaluate's settings
    change nothing in its weights)."""
    made_by = params.model_dump(mode="json", exclude={"methods", "ppo_seeds", "evaluate"})
    made_by |= {"method": {method: params.methods[method].model_dump(mode="json")}, "ppo_seed": seed}
    return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()


def hub_name(source: str) -> str | None:
    """`source` when it names a hub repository (`owner/name`), else None."""
    if source.startswith(_NOT_HUB_PREFIXES) or source.count("/") != 1:
        return None
    return source


def reward_model_lines(params: Params, method: str) -> list[str]:
    """One line per reward model a method's reward reads: the trained kind, or each member of a
    mixture (trained kinds and pretrained models by source)."""
    method_params = params.methods[method]
    kinds = method_params.members if method_params.reward_model == "mixture" else [method_params.reward_model]
    lines = []
    for kind in kinds:
        if kind in REWARD_MODELS:
            trained = REWARD_MODELS[kind].format(
                size=params.train_reward.ensemble_size, heads=params.train_reward.num_heads
            )
            lines.append(f"{trained} on `{params.models.reward_backbone}`")
        else:
            member = params.reward_models[kind]
            revision = f" at revision `{member.revision}`" if member.revision else ""
            lines.append(f"`{member.source}`{revision}: a pretrained reward model (`{kind}`), not trained here")
    if method_params.reward_model == "mixture":
        lines.append(
            "combined as a mixture: each centred and scaled on the initial policy's samples, then "
            f"`{method_params.aggregation}`"
        )
    return lines


def card_facts(params: Params, method: str, seed: int, *, study: dict | None = None) -> dict:
    """Everything a card states about run `method`-`seed`; `study` is the method's row of evaluate's
    table (metrics/eval/<method>.json), None before evaluate has run."""
    method_params = params.methods[method]
    facts = {
        "run": policy_run_name(method, seed),
        "profile": params.profile,
        "method": method,
        "seed": seed,
        "base_model": params.models.policy,
        "reward_backbone": params.models.reward_backbone,
        "reward_models": reward_model_lines(params, method),
        "aggregation": method_params.aggregation,
        "steps": params.ppo.steps,
        "lora": params.ppo.lora.enabled,
        "params_sha256": params_sha256(params, method, seed),
        "confidence_level": params.statistics.confidence_level,
        "study": None,
    }
    if study is not None:
        facts["study"] = {
            key: study[key]
            for key in ("gold", "gold_gain_interval", "win_rate", "kl", "proxy_gain", "seeds", "prompts")
            if key in study
        }
        facts["study"]["samples_per_prompt"] = study.get("samples_per_prompt")
    return facts


def front_matter(facts: dict) -> dict:
    """The card's metadata block: what the hub indexes."""
    meta = {}
    if (base := hub_name(facts["base_model"])) is not None:
        meta["base_model"] = base
    meta |= {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["robust-rlhf", "rlhf", "ppo", f"reward-aggregation-{facts['aggregation']}"],
    }
    return meta


def _interval(row: dict, level: float) -> str:
    text = f"{row['value']:+.4f} ({level:.0%} CI {row['ci_low']:+.4f} to {row['ci_high']:+.4f}"
    return text + (f", Holm-adjusted p = {row['p_holm']:.3g})" if "p_holm" in row else ")")


def _study_section(facts: dict) -> list[str]:
    study = facts["study"]
    if study is None:
        return [
            "The study's numbers are not in this card: it was written by the `ppo` stage, before `evaluate`",
            f"ran. `python -m stages.export_policy --run {facts['method']}-{facts['seed']} --to DIR` writes the",
            "card with them.",
        ]
    level = facts["confidence_level"]
    lines = [
        f"Method `{facts['method']}` on {study['prompts']} held-out prompts x {study['samples_per_prompt']} samples,",
        f"pooled over {study['seeds']} PPO seed(s) (this run is one of them); intervals are cluster-bootstrap",
        "intervals over prompts. Gold is the study's held-out gold scorer; the proxy is the reward PPO optimised.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| gold reward | {study['gold']:.4f} |",
    ]
    if "gold_gain_interval" in study:
        lines.append(f"| gold gain over the initial policy | {_interval(study['gold_gain_interval'], level)} |")
    for key, label in (("win_rate", "gold win rate over the initial policy"), ("kl", "KL to the initial policy")):
        if key in study:
            lines.append(f"| {label} | {study[key]:.4f} |")
    if "proxy_gain" in study:
        lines.append(f"| proxy reward gain | {study['proxy_gain']:+.4f} |")
    return lines


def model_card(facts: dict) -> str:
    """The model card (README.md) of one exported policy, from `card_facts`' facts."""
    meta = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True)
    weights = "merged from LoRA adapters (the adapters are in `adapter/`)" if facts["lora"] else "full fine-tune"
    lines = [
        "---",
        meta.rstrip("\n"),
        "---",
        "",
        f"# {facts['run']}",
        "",
        f"A policy trained with PPO by robust-rlhf (run `ppo@{facts['method']}-{facts['seed']}`,",
        f"profile `{facts['profile']}`) on a reward aggregated with `{facts['aggregation']}`.",
        "",
        "## Training",
        "",
        f"- Base model: `{facts['base_model']}`",
        f"- Method: `{facts['method']}` (aggregation `{facts['aggregation']}`), PPO seed {facts['seed']},"
        f" {facts['steps']} PPO steps",
        "- Reward models: " + "; ".join(facts["reward_models"]),
        f"- Weights: {weights}",
        f"- Params hash: `sha256:{facts['params_sha256']}`",
        "",
        "## Evaluation",
        "",
        *_study_section(facts),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        "```",
        "",
    ]
    return "\n".join(lines)

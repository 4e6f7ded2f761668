"""DVC stage `prepare`: the initial policy and the preference data, either of the synthetic-gold
task (pairs sampled from the policy, labelled by the gold scorer) or read from a hub dataset or
local files (`prepare.task: preference_data`, robust_rlhf/data/sources.py).

Writes, under --data: prefs_{train,val,test}.jsonl (prompt, chosen, rejected + gold scores or the
source row), ppo_prompts.jsonl, eval_prompts.jsonl, rejects.jsonl (every rejected row, its source
row number and reason); under --policy: the initial policy (safetensors + tokenizer), which PPO
starts from and evaluate compares against. When preference data fails on its rejects, they are
kept in `failed_run_rejects_path(--data)` instead, since the failed stage leaves no --data.
"""

from __future__ import annotations

from robust_rlhf.data.run import run_prepare
from stages.cli import stage_main


def main(argv: list[str] | None = None) -> None:
    stage_main("prepare", run_prepare, ["data", "policy"], argv)


if __name__ == "__main__":
    main()

"""On the session's pipeline run: `stages.export_policy` assembles a folder transformers loads as it is,
with the full model card (the study's numbers for the run's method) beside the weights; ppo's own card
in the final checkpoint says it has none yet. The live folders DVC reads are there, with the numbers the
step log holds."""

import csv
import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

from robust_rlhf.card import CARD_FILE
from robust_rlhf.runtime.checkpoint import read_checkpoints
from stages.export_policy import main


def test_export_writes_the_final_policy_with_its_full_card(pipeline_run, tmp_path):
    params = yaml.safe_load(pipeline_run["params"].read_text())
    method = next(iter(params["methods"]))
    args = ["--run", f"{method}-0", "--params", str(pipeline_run["params"])]
    args += ["--policies", str(pipeline_run["policies"]), "--table", str(pipeline_run["table"])]
    main([*args, "--to", str(tmp_path / "out")])

    card = (tmp_path / "out" / CARD_FILE).read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert (
        meta["library_name"] == "transformers"
        and f"reward-aggregation-{params['methods'][method]['aggregation']}" in (meta["tags"])
    )
    row = json.loads((pipeline_run["table"] / f"{method}.json").read_text())
    assert f"| gold reward | {row['gold']:.4f} |" in card
    assert f"| gold gain over the initial policy | {row['gold_gain_interval']['value']:+.4f} (" in card
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # publishable as it is

    run_dir = pipeline_run["policies"] / f"{method}-seed0"
    ppo_card = (run_dir / read_checkpoints(run_dir)[-1]["path"] / CARD_FILE).read_text()
    assert "not in this card" in ppo_card and ppo_card.split("## Evaluation")[0] == card.split("## Evaluation")[0]

    with pytest.raises(SystemExit) as refused:  # never over an existing folder
        main([*args, "--to", str(tmp_path / "out")])
    assert refused.value.code == 2


def test_the_pipelines_live_folders_hold_the_step_logs_numbers(pipeline_run):
    live = pipeline_run["live"]
    stage1 = (live / "train_reward/plots/metrics/loss/stage1.tsv").read_text().splitlines()
    assert stage1[0] == "step\tstage1" and [line.split("\t")[0] for line in stage1[1:]] == [
        str(step) for step in range(len(stage1) - 1)
    ]
    for steps in sorted(pipeline_run["steps"].glob("*.csv")):
        with open(steps) as handle:
            last = list(csv.DictReader(handle))[-1]
        summary = json.loads((live / "ppo" / steps.stem / "metrics.json").read_text())
        assert summary["step"] == int(last["step"])
        assert summary["objective"]["kl"] == pytest.approx(float(last["objective/kl"]), abs=1e-6)

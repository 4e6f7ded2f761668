"""The sweep: its grid, the -S overrides, DVC output parsing, and a real two-experiment sweep through
DVC's queue on the tiny profile."""

import json
import subprocess

import pytest
import yaml

from flows.sweep import (
    SweepPoint,
    comparison_row,
    experiment_rows,
    parse_queue_status,
    set_param_overrides,
    sweep,
    sweep_points,
)
from robust_rlhf.config import Params
from tests.conftest import copy_repo, tiny_params

PARAMS = Params.model_validate(tiny_params())


def test_lambda_is_swept_only_for_methods_that_read_it():
    points = sweep_points(PARAMS, ["brme", "single"], [0.2, 0.8], [0, 1])
    assert points == [
        SweepPoint("brme", 0.2, 0),
        SweepPoint("brme", 0.2, 1),
        SweepPoint("brme", 0.8, 0),
        SweepPoint("brme", 0.8, 1),
        SweepPoint("single", None, 0),
        SweepPoint("single", None, 1),
    ]


def test_bad_methods_and_lambdas_are_refused():
    with pytest.raises(ValueError, match="unknown methods \\['nope'\\]"):
        sweep_points(PARAMS, ["nope"], [0.5], [0])
    with pytest.raises(ValueError, match="aggregation.brme_lambda must be in \\[0, 1\\], got \\[1.5, -0.1\\]"):
        sweep_points(PARAMS, ["brme"], [0.5, 1.5, -0.1], [0])


def test_overrides_narrow_params_to_one_point():
    overrides = set_param_overrides(PARAMS, SweepPoint("brme", 0.2, 3))
    assert overrides == [f"~methods.{m}" for m in PARAMS.methods if m != "brme"] + [
        "ppo_seeds=[3]",
        "aggregation.brme_lambda=0.2",
    ]
    assert "brme_lambda" not in " ".join(set_param_overrides(PARAMS, SweepPoint("single", None, 0)))


def test_experiment_names_are_git_ref_safe():
    assert SweepPoint("brme", 0.25, 1).experiment_name("sweep1") == "sweep1-brme-l0p25-s1"
    assert SweepPoint("single", None, 0).experiment_name("sweep1") == "sweep1-single-s0"


def test_queue_status_and_exp_show_parsing():
    status = (
        "Task     Name          Created    Status\n"
        "c19192f  sw-brme-s0    02:40 PM   Success\n"
        "d6c7324  sw-single-s0  02:40 PM   Failed\n\nWorker status: 0 active, 0 idle\n"
    )
    assert parse_queue_status(status) == {"sw-brme-s0": "Success", "sw-single-s0": "Failed"}
    shown = [
        {"rev": "workspace", "experiments": None},
        {
            "rev": "abc",
            "experiments": [
                {
                    "revs": [
                        {
                            "name": "sw-brme-s0",
                            "data": {
                                "params": {"params.yaml": {"data": {"seed": 0}}},
                                "metrics": {"metrics/eval/brme.json": {"data": {"gold": 0.5, "win_rate": 0.75}}},
                            },
                        }
                    ]
                }
            ],
        },
    ]
    rows = experiment_rows(shown, {"sw-brme-s0"})
    assert rows == {
        "sw-brme-s0": {"params": {"seed": 0}, "metrics": {"metrics/eval/brme.json": {"gold": 0.5, "win_rate": 0.75}}}
    }
    row = comparison_row(SweepPoint("brme", 0.5, 0), "sw-brme-s0", "Success", rows["sw-brme-s0"])
    assert row["gold"] == 0.5 and row["win_rate"] == 0.75 and row["proxy"] == "-" and row["lambda"] == 0.5


@pytest.mark.slow
def test_sweep_runs_each_point_as_a_dvc_experiment(tmp_path, prefect_server):
    repo = copy_repo(tmp_path)
    table = sweep(repo=str(repo), methods=["brme"], lambdas=[0.0, 1.0], seeds=[0], max_parallel=1)
    assert [(row["method"], row["lambda"], row["seed"], row["status"]) for row in table] == [
        ("brme", 0.0, 0, "Success"),
        ("brme", 1.0, 0, "Success"),
    ]
    assert all(isinstance(row["gold"], float) and isinstance(row["sqrt_kl"], float) for row in table)
    # both are DVC experiments with their own params, listed by `dvc exp show`
    shown = json.loads(
        subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True).stdout
    )
    rows = experiment_rows(shown, {row["experiment"] for row in table})
    assert {name: row["params"]["aggregation"]["brme_lambda"] for name, row in rows.items()} == {
        table[0]["experiment"]: 0.0,
        table[1]["experiment"]: 1.0,
    }
    assert all(list(row["params"]["methods"]) == ["brme"] for row in rows.values())
    # lambda 0 (worst case) and 1 (nominal) optimise different rewards: different policies
    assert table[0]["proxy"] != table[1]["proxy"]
    # the workspace is left as it was
    assert yaml.safe_load((repo / "params.yaml").read_text()) == tiny_params()

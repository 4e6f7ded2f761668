import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from robust_rlhf.runtime.checkpoint import read_checkpoints
from tests.conftest import run_stage, tiny_params, write_params

METHODS = list(tiny_params()["methods"])
REQUIRED_COLUMNS = {
    "step",
    "reward/optimised",
    "reward/normalised",
    "objective/kl",
    "policy/entropy",
    "loss/policy",
    "loss/value",
    "policy/clipfrac",
}
# Every run logs the reward under every aggregation of every reward model, not only its own.
EVERY_AGGREGATION = {
    "reward/single/single",
    *(f"reward/ensemble/{a}" for a in ("mean", "min", "uwo", "kl_dro")),
    *(f"reward/brme/{a}" for a in ("mean", "min", "uwo", "kl_dro", "nominal", "brme")),
}


def run_ppo(pipeline_run, tmp_path, params, method="brme", seed="0"):
    """The ppo stage on the session's data and reward models, its outputs under tmp_path."""
    return run_stage(
        "ppo",
        params,
        method=method,
        seed=seed,
        data=pipeline_run["data"],
        policy_init=pipeline_run["policy_init"],
        reward=pipeline_run["reward"],
        ensemble=pipeline_run["ensemble"],
        policy=tmp_path / "p",
        steps=tmp_path / "s.csv",
        metrics=tmp_path / "m.json",
        resume=tmp_path / ".p.resume",
    )


def read_steps(pipeline_run, method):
    with open(pipeline_run["steps"] / f"{method}-seed0.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", METHODS)
def test_ppo_logs_every_step_and_every_aggregation(pipeline_run, method):
    rows = read_steps(pipeline_run, method)
    assert len(rows) == tiny_params()["ppo"]["steps"]
    assert REQUIRED_COLUMNS | EVERY_AGGREGATION <= set(rows[0])
    assert [int(row["step"]) for row in rows] == list(range(len(rows)))
    for row in rows:
        assert all(math.isfinite(float(value)) for value in row.values())
    k, members = tiny_params()["train_reward"]["num_heads"], tiny_params()["train_reward"]["ensemble_size"]
    for kind, heads in (("brme", k), ("ensemble", members)):
        shares = [float(rows[0][f"reward_model/{kind}/min_share_{i}"]) for i in range(heads)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)  # which head is the min, on each batch
    assert sum(float(rows[0][f"reward_model/brme/nominal_share_{i}"]) for i in range(k)) == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["reward_model/brme/head_disagreement"]) > 0
    # PPO starts from the reference: the first rollout has zero KL, up to the float rounding between
    # generate's cached pass (the old log-probs) and the reference's full forward.
    assert abs(float(rows[0]["objective/kl"])) < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_ppo_optimises_its_own_methods_reward(pipeline_run, method):
    spec = tiny_params()["methods"][method]
    metrics = json.loads((pipeline_run["metrics"] / "ppo" / f"{method}-seed0.json").read_text())
    assert (metrics["method"], metrics["reward_model"], metrics["aggregation"]) == (
        method,
        spec["reward_model"],
        spec["aggregation"],
    )
    own_column = f"reward/{spec['reward_model']}/{spec['aggregation']}"
    assert metrics["final"]["reward/optimised"] == pytest.approx(metrics["final"][own_column], abs=1e-6)
    normalization = metrics["reward_normalization"]
    expected = (metrics["final"]["reward/optimised"] - normalization["reference_mean"]) / normalization["reference_std"]
    assert metrics["final"]["reward/normalised"] == pytest.approx(expected, abs=1e-4)


def test_ppo_checkpoints_every_n_steps_and_changes_the_policy(pipeline_run):
    config = tiny_params()["ppo"]
    run_dir = pipeline_run["policies"] / "brme-seed0"
    checkpoints = read_checkpoints(run_dir)
    assert [c["step"] for c in checkpoints] == list(
        range(config["checkpoint_every"], config["steps"] + 1, config["checkpoint_every"])
    )
    initial = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    final = load_file(str(run_dir / checkpoints[-1]["path"] / "model.safetensors"))
    assert initial.keys() <= final.keys()  # a tied lm_head may be written out explicitly
    unchanged = [name for name in initial if torch.equal(initial[name], final[name])]
    assert not unchanged, f"parameters PPO did not update: {unchanged}"


def test_unknown_method_is_refused(pipeline_run, tmp_path):
    result = run_ppo(pipeline_run, tmp_path, pipeline_run["params"], method="nope")
    assert result.returncode == 2 and "'nope' is not under `methods:`" in result.stderr


@pytest.mark.parametrize("mode", ["running", "none"])
def test_ppo_reward_normalisation_modes(pipeline_run, tmp_path, mode):
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"ppo.reward_normalization": mode, "ppo.steps": 2}))
    result = run_ppo(pipeline_run, tmp_path, params)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((tmp_path / "m.json").read_text())["final"]
    if mode == "none":
        assert final["reward/normalised"] == final["reward/optimised"]
    else:
        assert final["reward/normalised"] != final["reward/optimised"]


def test_seed_outside_ppo_seeds_is_refused(pipeline_run, tmp_path):
    result = run_ppo(pipeline_run, tmp_path, pipeline_run["params"], seed="7")
    assert result.returncode == 2 and "--seed 7 is not in `ppo_seeds:`" in result.stderr


def test_another_seed_is_another_run_from_the_same_reward_models(pipeline_run, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"ppo_seeds": [0, 1], "ppo.steps": 1}))
    result = run_ppo(pipeline_run, tmp_path, params, seed="1")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "s.csv") as handle:
        seed1 = next(csv.DictReader(handle))
    seed0 = read_steps(pipeline_run, "brme")[0]
    assert json.loads((tmp_path / "m.json").read_text())["seed"] == 1
    # Same prompts, same reward models, other samples: the first rollout's rewards differ.
    assert seed1["reward/optimised"] != seed0["reward/optimised"]


def test_a_shared_value_head_trains_one_model_and_checkpoints_the_policy_alone(pipeline_run, tmp_path):
    params = write_params(
        tmp_path / "params.yaml",
        tiny_params(**{"ppo.value_model": "shared", "ppo.steps": 2, "ppo.checkpoint_every": 1}),
    )
    result = run_ppo(pipeline_run, tmp_path, params)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["value_model"] == "shared"
    with open(tmp_path / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(row["loss/value"])) for row in rows)
    assert float(rows[0]["loss/value"]) > 0  # V starts at 0, the returns do not
    # the checkpoints are the causal LM alone (loadable like the initial policy), moved by the training
    initial = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    final = load_file(str(tmp_path / "p" / read_checkpoints(tmp_path / "p")[-1]["path"] / "model.safetensors"))
    assert initial.keys() <= final.keys() and not any(key.startswith(("value_head", "policy.")) for key in final)
    assert [name for name in initial if torch.equal(initial[name], final[name])] == []


def test_a_critic_of_the_policys_first_layers_trains(pipeline_run, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"ppo.critic_layers": 1, "ppo.steps": 2}))
    result = run_ppo(pipeline_run, tmp_path, params)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "critic: the policy's first 1 layers and a value head" in result.stderr
    with open(tmp_path / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(row["loss/value"])) for row in rows)
    assert float(rows[0]["loss/value"]) > 0  # V starts at 0, the returns do not


def test_a_critic_deeper_than_the_policy_is_refused_naming_the_param(pipeline_run, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"ppo.critic_layers": 3, "ppo.steps": 1}))
    result = run_ppo(pipeline_run, tmp_path, params)
    assert result.returncode == 2 and "ppo.critic_layers: 3 layers asked of a model with 2" in result.stderr


def test_a_critic_deeper_than_the_policy_is_refused_before_any_model_loads(pipeline_run, tmp_path, monkeypatch):
    import robust_rlhf.rl.run as ppo_run
    from robust_rlhf.config import Params, StageInputError

    def loaded(*args, **kwargs):
        raise AssertionError("a model loaded before ppo.critic_layers was checked")

    for loader in ("load_tokenizer", "load_causal_lm", "load_backbone"):
        monkeypatch.setattr(ppo_run, loader, loaded)
    params = Params.model_validate(tiny_params(**{"ppo.critic_layers": 3}))
    paths = ppo_run.PPOPaths(
        data=tmp_path,
        policy_init=pipeline_run["policy_init"],
        reward=tmp_path / "reward",
        ensemble=tmp_path / "ensemble",
        policy=tmp_path / "policy",
        steps=tmp_path / "steps.csv",
        resume=tmp_path / "resume",
    )
    with pytest.raises(StageInputError, match="ppo.critic_layers: 3 layers asked of a model with 2"):
        ppo_run.build_ppo_models(params, paths, world_size=1)

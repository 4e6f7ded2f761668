import pytest

from robust_rlhf.config import ParamsError, load_params
from tests.conftest import REPO, run_stage, tiny_params, write_params


@pytest.mark.parametrize("path", [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))],
                         ids=lambda path: path.name)
def test_shipped_params_validate(path):
    params = load_params(path)
    assert 0.0 <= params.ppo.robust.lam <= 1.0


def test_unknown_key_is_named(tmp_path):
    raw = tiny_params()
    raw["ppo"]["learning_rat"] = 1e-4
    with pytest.raises(ParamsError, match=r"ppo\.learning_rat: unknown key"):
        load_params(write_params(tmp_path / "p.yaml", raw))


def test_out_of_range_value_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"ppo\.robust\.lambda: .*less than or equal to 1"):
        load_params(write_params(tmp_path / "p.yaml", tiny_params(**{"ppo.robust.lambda": 1.5})))


def test_wrong_literal_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"train_reward\.stage2\.loss"):
        load_params(write_params(tmp_path / "p.yaml", tiny_params(**{"train_reward.stage2.loss": "mse"})))


def test_rollout_batch_must_split_into_optimizer_steps(tmp_path):
    with pytest.raises(ParamsError, match=r"ppo.*rollout_batch_size"):
        load_params(write_params(tmp_path / "p.yaml", tiny_params(**{"ppo.rollout_batch_size": 6,
                                                                      "ppo.micro_batch_size": 4})))


def test_stage_refuses_bad_params_before_any_work(tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_params(**{"prepare.label_noise": 0.9}))
    result = run_stage("prepare", params, data=tmp_path / "data", policy=tmp_path / "policy",
                       metrics=tmp_path / "m.json")
    assert result.returncode == 2
    assert "prepare.label_noise" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "policy").exists()

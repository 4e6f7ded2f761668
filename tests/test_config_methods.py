"""Tests for the `methods:` part of robust_rlhf.config: which reward model goes with which aggregation,
the Params-level checks (ensemble size, method names), and the dotted keys load_params reports."""

import pytest
from pydantic import ValidationError

from robust_rlhf.config import MethodParams, Params, ParamsError, load_params
from tests.conftest import tiny_params, write_params

# Every (reward_model, aggregation) pair, written out: single only with single; nominal and brme only
# on the BRME (they read its sigmas); mean, min, uwo and kl_dro on the BRME or the ensemble.
VALID = [
    ("single", "single"),
    ("brme", "mean"),
    ("brme", "min"),
    ("brme", "uwo"),
    ("brme", "kl_dro"),
    ("brme", "nominal"),
    ("brme", "brme"),
    ("ensemble", "mean"),
    ("ensemble", "min"),
    ("ensemble", "uwo"),
    ("ensemble", "kl_dro"),
]
INVALID = [
    ("single", "mean"),
    ("single", "min"),
    ("single", "uwo"),
    ("single", "kl_dro"),
    ("single", "nominal"),
    ("single", "brme"),
    ("brme", "single"),
    ("ensemble", "single"),
    ("ensemble", "nominal"),
    ("ensemble", "brme"),
]


@pytest.mark.parametrize(("reward_model", "aggregation"), VALID)
def test_valid_pairs_are_accepted(reward_model, aggregation):
    method = MethodParams(reward_model=reward_model, aggregation=aggregation)
    assert (method.reward_model, method.aggregation) == (reward_model, aggregation)


@pytest.mark.parametrize(("reward_model", "aggregation"), INVALID)
def test_invalid_pairs_are_rejected(reward_model, aggregation):
    with pytest.raises(ValidationError):
        MethodParams(reward_model=reward_model, aggregation=aggregation)


def test_table_covers_every_pair():
    reward_models = ("single", "brme", "ensemble")
    aggregations = ("single", "mean", "min", "uwo", "nominal", "brme", "kl_dro")
    assert sorted(VALID + INVALID) == sorted((rm, agg) for rm in reward_models for agg in aggregations)


def test_single_aggregation_error_message():
    with pytest.raises(ValidationError, match="aggregation `single` goes with reward_model `single`"):
        MethodParams(reward_model="ensemble", aggregation="single")
    with pytest.raises(ValidationError, match="aggregation `single` goes with reward_model `single`"):
        MethodParams(reward_model="single", aggregation="mean")


def test_sigma_aggregations_name_the_brme():
    with pytest.raises(ValidationError, match="aggregation `nominal` needs the BRME's sigmas: reward_model `brme`"):
        MethodParams(reward_model="ensemble", aggregation="nominal")


def test_unknown_reward_model_aggregation_or_key_rejected():
    with pytest.raises(ValidationError):
        MethodParams(reward_model="gold", aggregation="mean")
    with pytest.raises(ValidationError):
        MethodParams(reward_model="brme", aggregation="median")
    with pytest.raises(ValidationError):
        MethodParams.model_validate({"reward_model": "brme", "aggregation": "mean", "lambda": 0.5})


# ---------------------------------------------------------------- Params-level checks


@pytest.mark.parametrize("size", [0, 1])
def test_ensemble_method_needs_two_members(size):
    # the first ensemble method in params.yaml's order is `mean`
    with pytest.raises(ValidationError, match=r"methods\.mean uses the ensemble; set train_reward\.ensemble_size >= 2"):
        Params.model_validate(tiny_params(**{"train_reward.ensemble_size": size}))


def test_ensemble_size_two_is_enough():
    assert Params.model_validate(tiny_params(**{"train_reward.ensemble_size": 2})).train_reward.ensemble_size == 2


def test_no_ensemble_method_allows_no_ensemble():
    methods = {
        "single": {"reward_model": "single", "aggregation": "single"},
        "brme": {"reward_model": "brme", "aggregation": "brme"},
    }
    params = Params.model_validate(tiny_params(**{"methods": methods, "train_reward.ensemble_size": 0}))
    assert list(params.methods) == ["single", "brme"]


def test_ensemble_error_names_the_offending_method():
    methods = {
        "brme": {"reward_model": "brme", "aggregation": "brme"},
        "my_wco": {"reward_model": "ensemble", "aggregation": "min"},
    }
    with pytest.raises(ValidationError, match=r"methods\.my_wco uses the ensemble"):
        Params.model_validate(tiny_params(**{"methods": methods, "train_reward.ensemble_size": 1}))


@pytest.mark.parametrize("name", ["brme-05", "ens/min", "a b", ""])
def test_method_names_must_be_file_safe(name):
    raw = tiny_params(**{f"methods.{name}": {"reward_model": "brme", "aggregation": "brme"}})
    with pytest.raises(ValidationError, match="a method name is letters, digits and _"):
        Params.model_validate(raw)


def test_method_names_with_underscores_and_digits_are_fine():
    raw = tiny_params(
        **{
            "methods.brme_lam_05": {"reward_model": "brme", "aggregation": "brme"},
            "methods.kl_dro2": {"reward_model": "ensemble", "aggregation": "kl_dro"},
        }
    )
    assert {"brme_lam_05", "kl_dro2"} <= set(Params.model_validate(raw).methods)


def test_at_least_one_method():
    with pytest.raises(ValidationError):
        Params.model_validate(tiny_params(methods={}))


# ---------------------------------------------------------------- load_params names the key


def test_load_params_names_a_bad_method_pair(tmp_path):
    raw = tiny_params(**{"methods.wco": {"reward_model": "ensemble", "aggregation": "nominal"}})
    with pytest.raises(ParamsError, match=r"methods\.wco: .*needs the BRME's sigmas") as info:
        load_params(write_params(tmp_path / "p.yaml", raw))
    assert str(tmp_path / "p.yaml") in str(info.value)


def test_load_params_names_a_method_with_a_bad_name(tmp_path):
    raw = tiny_params(**{"methods.brme-05": {"reward_model": "brme", "aggregation": "brme"}})
    with pytest.raises(ParamsError, match=r"methods\.brme-05: a method name is letters, digits and _"):
        load_params(write_params(tmp_path / "p.yaml", raw))


def test_load_params_names_the_ensemble_method(tmp_path):
    with pytest.raises(ParamsError, match=r"methods\.mean uses the ensemble"):
        load_params(write_params(tmp_path / "p.yaml", tiny_params(**{"train_reward.ensemble_size": 1})))


def test_load_params_names_an_unknown_method_key(tmp_path):
    raw = tiny_params(**{"methods.brme": {"reward_model": "brme", "aggregation": "brme", "lamda": 0.5}})
    with pytest.raises(ParamsError, match=r"methods\.brme\.lamda: unknown key"):
        load_params(write_params(tmp_path / "p.yaml", raw))


@pytest.mark.parametrize("seeds, message", [([0, 0], "distinct"), ([-1], "distinct and >= 0"), ([], "ppo_seeds")])
def test_ppo_seeds_must_be_distinct_non_negative_and_present(tmp_path, seeds, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write_params(tmp_path / "params.yaml", tiny_params(ppo_seeds=seeds)))


def test_policy_run_names_pair_method_and_seed():
    from robust_rlhf.config import policy_run_name

    assert policy_run_name("kl_dro", 3) == "kl_dro-seed3"

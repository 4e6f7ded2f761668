import math
import types
import typing

import pytest
import yaml
from pydantic import BaseModel

from robust_rlhf.config import Params, ParamsError, load_params
from tests.conftest import REPO, run_stage, tiny_params, write_params


@pytest.mark.parametrize(
    "path", [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))], ids=lambda path: path.name
)
def test_shipped_params_validate(path):
    params = load_params(path)
    assert 0.0 <= params.aggregation.brme_lambda <= 1.0


def test_unknown_key_is_named(tmp_path):
    raw = tiny_params()
    raw["ppo"]["learning_rat"] = 1e-4
    with pytest.raises(ParamsError, match=r"ppo\.learning_rat: unknown key"):
        load_params(write_params(tmp_path / "p.yaml", raw))


@pytest.mark.parametrize(("value", "bound"), [(1.5, "less than or equal to 1"), (-0.1, "greater than or equal to 0")])
def test_out_of_range_value_is_named(tmp_path, value, bound):
    # lambda's range is checked here only: brme_reward and the sweep rely on this one check.
    with pytest.raises(ParamsError, match=rf"aggregation\.brme_lambda: .*{bound}"):
        load_params(write_params(tmp_path / "p.yaml", tiny_params(**{"aggregation.brme_lambda": value})))


def test_wrong_literal_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"train_reward\.stage2\.loss"):
        load_params(write_params(tmp_path / "p.yaml", tiny_params(**{"train_reward.stage2.loss": "mse"})))


def test_rollout_batch_must_split_into_optimizer_steps(tmp_path):
    with pytest.raises(ParamsError, match=r"ppo.*rollout_batch_size"):
        load_params(
            write_params(tmp_path / "p.yaml", tiny_params(**{"ppo.rollout_batch_size": 6, "ppo.micro_batch_size": 4}))
        )


@pytest.mark.slow
def test_stage_refuses_bad_params_before_any_work(tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_params(**{"prepare.label_noise": 0.9}))
    result = run_stage(
        "prepare", params, data=tmp_path / "data", policy=tmp_path / "policy", metrics=tmp_path / "m.json"
    )
    assert result.returncode == 2
    assert "prepare.label_noise" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "policy").exists()


# ---------------------------------------------------------------- strict values, bounds, short messages

SHIPPED = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]
MAX_PROBLEM_CHARS = 300


def problem_lines(error: ParamsError) -> list[str]:
    """The per-key lines of a ParamsError (its first line names the file)."""
    header, *lines = str(error).splitlines()
    assert header.endswith("invalid params"), header
    return [line.strip() for line in lines]


def refused(tmp_path, raw: dict) -> list[str]:
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path / "p.yaml", raw))
    return problem_lines(info.value)


def assert_same_values(raw: dict, loaded: dict, prefix: str = "") -> None:
    """Every value written in `raw` is the validated value, of the same type (an int may become a float)."""
    for key, written in raw.items():
        got = loaded[key]
        if isinstance(written, dict):
            assert_same_values(written, got, f"{prefix}{key}.")
        elif isinstance(written, list) and any(isinstance(item, dict) for item in written):  # prepare.source's list
            assert len(got) == len(written), f"{prefix}{key}"
            for index, (item, loaded_item) in enumerate(zip(written, got)):
                assert_same_values(item, loaded_item, f"{prefix}{key}.{index}.")
        else:
            assert got == written, f"{prefix}{key}: {got!r} != {written!r}"
            assert type(got) is type(written) or (type(written), type(got)) == (int, float), f"{prefix}{key}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_params_load_with_exactly_the_values_written(path):
    assert_same_values(yaml.safe_load(path.read_text()), load_params(path).model_dump(by_alias=True))


# Each class of bad value over representative keys of every kind (learning rates, coefficients,
# temperatures, lengths, batch sizes, steps, epochs, seeds, flags), as a params file writes them.
BAD_VALUES = {
    "inf": [
        ("ppo.learning_rate", math.inf),
        ("ppo.critic_learning_rate", math.inf),
        ("ppo.kl_coef", math.inf),
        ("ppo.kl_coef", -math.inf),
        ("train_reward.stage1.learning_rate", math.inf),
        ("prepare.temperature", math.inf),
        ("deepspeed.gradient_clipping", math.inf),
        ("gold.fluency_scale", math.inf),
        ("orchestration.retry_delay_seconds", math.inf),
    ],
    "nan": [
        ("ppo.learning_rate", math.nan),
        ("ppo.kl_coef", math.nan),
        ("ppo.gamma", math.nan),
        ("aggregation.brme_lambda", math.nan),
        ("aggregation.uwo_coef", math.nan),
        ("train_reward.stage2.noise_floor", math.nan),
        ("evaluate.temperature", math.nan),
        ("statistics.confidence_level", math.nan),
    ],
    "bool-as-number": [
        ("ppo.steps", True),
        ("ppo.micro_batch_size", True),
        ("prepare.num_train_pairs", True),
        ("train_reward.num_heads", True),
        ("evaluate.best_of_n", True),
        ("seed", False),
        ("deepspeed.zero_stage", True),
        ("ppo.kl_coef", True),
        ("ppo.learning_rate", False),
    ],
    "float-as-int": [
        ("ppo.steps", 6.5),
        ("ppo.rollout_batch_size", 8.0),
        ("prepare.max_new_tokens", 12.5),
        ("train_reward.stage1.epochs", 2.0),
        ("launcher.num_gpus", 1.5),
        ("seed", 0.5),
    ],
    "string-as-bool": [
        ("models.trust_remote_code", "yes"),
        ("train_reward.finetune_backbone", "no"),
        ("train_reward.stage2.freeze_backbone", "true"),
        ("train_reward.stage2.bootstrap", 1),
    ],
    "string-as-number": [("ppo.steps", "6"), ("ppo.learning_rate", "0.0001"), ("ppo.kl_coef", "0.05")],
    "over-upper-bound": [
        ("ppo.temperature", 1000.0),
        ("prepare.temperature", 11),
        ("evaluate.temperature", 10.5),
        ("ppo.max_new_tokens", 10**6),
        ("prepare.max_new_tokens", 10**6),
        ("evaluate.max_new_tokens", 10**6),
        ("ppo.steps", 10**7),
        ("ppo.rollout_batch_size", 10**6),
        ("prepare.batch_size", 10**6),
        ("train_reward.stage1.micro_batch_size", 10**6),
        ("ppo.learning_rate", 2.0),
        ("ppo.critic_learning_rate", 10.0),
        ("train_reward.stage2.learning_rate", 1e3),
        ("ppo.ppo_epochs", 10**5),
        ("train_reward.stage1.epochs", 10**6),
        ("ppo.kl_coef", 1e4),
        ("seed", 2**40),
        ("ppo.gradient_accumulation_steps", 10**5),
    ],
    "below-lower-bound": [
        ("ppo.steps", 0),
        ("ppo.learning_rate", 0.0),
        ("ppo.kl_coef", -0.1),
        ("prepare.temperature", 0.0),
        ("evaluate.max_new_tokens", 0),
        ("train_reward.stage1.micro_batch_size", 0),
        ("ppo.gamma", -0.5),
        ("seed", -1),
    ],
}
BAD_CASES = [
    pytest.param(key, value, id=f"{kind}-{key}={value!r}") for kind, cases in BAD_VALUES.items() for key, value in cases
]


@pytest.mark.parametrize(("key", "value"), BAD_CASES)
def test_a_bad_value_is_refused_naming_its_dotted_key_and_value(tmp_path, key, value):
    (line,) = refused(tmp_path, tiny_params(**{key: value}))
    assert line.startswith(f"{key}: "), line
    assert line.endswith(f"(got {value!r})"), line
    assert len(line) < MAX_PROBLEM_CHARS


@pytest.mark.parametrize(
    ("key", "value"),
    [("ppo.kl_coef", 1), ("ppo.gamma", 1), ("gold.fluency_scale", 5), ("train_reward.stage2.prior_scale", 0)],
)
def test_an_int_is_a_float(tmp_path, key, value):
    params = load_params(write_params(tmp_path / "p.yaml", tiny_params(**{key: value})))
    section, *rest = key.split(".")
    got = getattr(params, section)
    for name in rest:
        got = getattr(got, name)
    assert got == value and isinstance(got, float)


def test_exponents_without_a_dot_are_floats_and_quoted_ones_are_not(tmp_path):
    # PyYAML reads `1e-4` and `1.0e4` as strings; DVC (YAML 1.2) reads them as floats, and so do we.
    text = (REPO / "profiles" / "tiny.yaml").read_text()
    line = "  critic_learning_rate: 1.0e-4\n"
    assert line in text

    def written(name: str, value: str):
        (tmp_path / name).write_text(text.replace(line, f"  critic_learning_rate: {value}\n"))
        return tmp_path / name

    assert load_params(written("plain.yaml", "1e-4")).ppo.critic_learning_rate == 1e-4
    with pytest.raises(ParamsError, match=r"ppo\.critic_learning_rate: Input should be less than or equal to 1"):
        load_params(written("big.yaml", "1.0e4"))
    with pytest.raises(ParamsError, match=r"ppo\.critic_learning_rate: .*\(got '1e-4'\)"):
        load_params(written("quoted.yaml", '"1e-4"'))


# Checks across fields: (overrides, the key to change, the keys and values shown beside it).
CROSS_FIELD = [
    pytest.param(
        {"ppo.rollout_batch_size": 6, "ppo.micro_batch_size": 4},
        "ppo.rollout_batch_size",
        ["ppo.rollout_batch_size = 6", "ppo.micro_batch_size = 4", "ppo.gradient_accumulation_steps = 1"],
        id="ppo-batches",
    ),
    pytest.param(
        {"methods.wco": {"reward_model": "ensemble", "aggregation": "nominal"}},
        "methods.wco",
        ["methods.wco.reward_model = 'ensemble'", "methods.wco.aggregation = 'nominal'"],
        id="method-pair",
    ),
    pytest.param(
        {"train_reward.ensemble_size": 1},
        "train_reward.ensemble_size",
        ["methods.mean.reward_model = 'ensemble'", "train_reward.ensemble_size = 1"],
        id="ensemble-size",
    ),
    pytest.param({"ppo_seeds": [0, 0]}, "ppo_seeds", ["ppo_seeds = [0, 0]"], id="ppo-seeds"),
    pytest.param(
        {"ppo.value_model": "shared", "ppo.critic_layers": 1},
        "ppo.critic_layers",
        ["ppo.value_model = 'shared'", "ppo.critic_layers = 1"],
        id="critic-layers-shared",
    ),
    pytest.param(
        {"methods.brme-05": {"reward_model": "brme", "aggregation": "brme"}}, "methods.brme-05", [], id="method-name"
    ),
    pytest.param(
        {"launcher.num_nodes": 2},
        "launcher.hostfile",
        ["launcher.num_nodes = 2", "launcher.hostfile = None"],
        id="hostfile",
    ),
    pytest.param(
        {"orchestration.schedule.interval_minutes": 5.0},
        "orchestration.schedule.interval_minutes",
        ["orchestration.schedule.cron = '0 3 * * *'", "orchestration.schedule.interval_minutes = 5.0"],
        id="schedule",
    ),
    pytest.param(
        {"deepspeed.offload_optimizer": "cpu"},
        "deepspeed.offload_optimizer",
        ["deepspeed.offload_optimizer = 'cpu'", "deepspeed.zero_stage = 0"],
        id="offload-optimizer",
    ),
    pytest.param(
        {"deepspeed.zero_stage": 2, "deepspeed.offload_param": "cpu"},
        "deepspeed.offload_param",
        ["deepspeed.offload_param = 'cpu'", "deepspeed.zero_stage = 2"],
        id="offload-param",
    ),
    pytest.param(
        {"train_reward.lora.enabled": True},
        "train_reward.lora.enabled",
        ["train_reward.lora.enabled = True", "train_reward.finetune_backbone = False"],
        id="reward-lora",
    ),
    pytest.param(
        {"train_reward.gradient_checkpointing": True},
        "train_reward.gradient_checkpointing",
        ["train_reward.gradient_checkpointing = True", "train_reward.finetune_backbone = False"],
        id="reward-checkpointing",
    ),
    pytest.param(
        {"prepare.task": "preference_data"}, "prepare.source", ["prepare.task = 'preference_data'"], id="prepare-source"
    ),
    pytest.param(
        {"prepare.task": "preference_data", "prepare.source": {"kind": "hub"}},
        "prepare.source.name",
        ["prepare.source.kind = 'hub'", "prepare.source.name = None"],
        id="hub-name",
    ),
    pytest.param(
        {"prepare.task": "preference_data", "prepare.source": [{"kind": "hub", "name": "a"}, {"kind": "files"}]},
        "prepare.source.1.files",
        ["prepare.source.1.kind = 'files'", "prepare.source.1.files = []"],
        id="second-source-files",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "shown"), CROSS_FIELD)
def test_a_cross_field_error_names_its_keys_not_the_section(tmp_path, overrides, key, shown):
    (line,) = refused(tmp_path, tiny_params(**overrides))
    assert line.startswith(f"{key}: "), line
    assert all(fragment in line for fragment in shown), line
    assert "{" not in line and len(line) < MAX_PROBLEM_CHARS, line  # no section's input echoed


def test_a_missing_key_does_not_echo_its_section(tmp_path):
    raw = tiny_params()
    del raw["ppo"]["steps"]
    assert refused(tmp_path, raw) == ["ppo.steps: Field required"]


def test_a_long_bad_value_is_shortened(tmp_path):
    (line,) = refused(tmp_path, tiny_params(**{"ppo.steps": list(range(1000))}))
    assert line.startswith("ppo.steps: Input should be a valid integer (got [0, 1, 2,") and line.endswith("...)")
    assert len(line) < MAX_PROBLEM_CHARS


@pytest.mark.slow
def test_every_bad_value_of_a_file_gets_its_own_short_line_and_the_stage_exits_2(tmp_path):
    raw = tiny_params(
        **{
            "ppo.learning_rate": math.inf,
            "prepare.batch_size": True,
            "evaluate.temperature": 1000.0,
            "train_reward.stage2.freeze_backbone": "yes",
            "methods.wco": {"reward_model": "ensemble", "aggregation": "nominal"},
        }
    )
    params = write_params(tmp_path / "p.yaml", raw)
    result = run_stage(
        "prepare", params, data=tmp_path / "data", policy=tmp_path / "policy", metrics=tmp_path / "m.json"
    )
    assert result.returncode == 2
    stderr = result.stderr.splitlines()
    header = next(index for index, line in enumerate(stderr) if line.endswith("p.yaml: invalid params"))
    lines = [line.strip() for line in stderr[header + 1 :] if line.startswith("  ")]
    assert sorted(line.split(":")[0] for line in lines) == [
        "evaluate.temperature",
        "methods.wco",
        "ppo.learning_rate",
        "prepare.batch_size",
        "train_reward.stage2.freeze_backbone",
    ]
    assert all(len(line) < MAX_PROBLEM_CHARS for line in lines), lines
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- every value once

PARAMS_YAML = REPO / "params.yaml"
# The only fields with a code default: the preference-data source, which applies only when
# prepare.task is preference_data (the GPU profiles set it; params.yaml and tiny do not), and a
# method's members, which only a mixture has.
OPTIONAL_PREFIXES = ("prepare.source", "methods.*.members")


def _section_model(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The model class a field holds (through `X | None`), and whether it holds a dict of them."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict:
        return _section_model(args[1])[0], True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [model for model, _ in map(_section_model, args) if model is not None]
        return (models[0] if models else None), False
    return (annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None), False


def model_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, field) of every field of `model` and its sections; a dict's entries are `*`."""
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        yield path, field
        section, is_dict = _section_model(field.annotation)
        if section is not None:
            yield from model_fields(section, path + (".*." if is_dict else "."))


def key_paths(raw: dict, prefix: str = "") -> list[str]:
    """Every dotted key a params file writes, sections included; a method's (and a reward model's) name is `*`."""
    paths = []
    for key, value in raw.items():
        path = prefix + key
        paths.append(path)
        if path in ("methods", "reward_models"):
            for entry in value.values():
                paths += key_paths(entry, path + ".*.")
        elif isinstance(value, dict):
            paths += key_paths(value, path + ".")
    return sorted(set(paths))


def test_every_key_params_yaml_sets_has_no_code_default():
    fields = dict(model_fields(Params))
    written = key_paths(yaml.safe_load(PARAMS_YAML.read_text()))
    assert written and set(written) <= set(fields)
    defaulted = [path for path in written if not fields[path].is_required()]
    assert defaulted == [], f"set in params.yaml and defaulted in config.py: {defaulted}"


def test_only_the_preference_data_source_has_code_defaults():
    defaulted = sorted(path for path, field in model_fields(Params) if not field.is_required())
    assert defaulted and all(path.startswith(OPTIONAL_PREFIXES) for path in defaulted), defaulted
    # ... and params.yaml writes every field that has none
    required = {path for path, field in model_fields(Params) if field.is_required()}
    missing = required - set(key_paths(yaml.safe_load(PARAMS_YAML.read_text())))
    # params.yaml names no pretrained reward model (`reward_models: {}`), so their fields are not written.
    assert not {path for path in missing if not path.startswith((*OPTIONAL_PREFIXES, "reward_models.*"))}, missing


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda path: path.name)
def test_every_profile_sets_the_same_keys_as_params_yaml(profile):
    # ... but for prepare.source, which only a profile whose prepare.task is preference_data sets.
    def required(raw: dict) -> list[str]:
        return [path for path in key_paths(raw) if not path.startswith(OPTIONAL_PREFIXES)]

    raw = yaml.safe_load(profile.read_text())
    assert required(raw) == required(yaml.safe_load(PARAMS_YAML.read_text()))
    assert ("source" in raw["prepare"]) == (raw["prepare"]["task"] == "preference_data")


def test_params_yaml_is_the_only_copy_of_its_profile():
    profile = yaml.safe_load(PARAMS_YAML.read_text())["profile"]
    assert not (REPO / "profiles" / f"{profile}.yaml").exists()
    assert all(yaml.safe_load(path.read_text())["profile"] != profile for path in (REPO / "profiles").glob("*.yaml"))


def _without(raw: dict, dotted: str) -> dict:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[leaf]
    return raw


def _written_keys(raw: dict, prefix: str = "") -> list[str]:
    """Every dotted key of `raw` that a field is named by (under `methods`, a method's own fields)."""
    keys = []
    for key, value in raw.items():
        path = prefix + key
        keys.append(path)
        if path == "methods":  # a method's name is not a field; its own fields are
            keys += [
                method_key for name, method in value.items() for method_key in _written_keys(method, f"methods.{name}.")
            ]
        elif isinstance(value, dict):
            keys += _written_keys(value, path + ".")
    return keys


@pytest.mark.parametrize("key", _written_keys(yaml.safe_load(PARAMS_YAML.read_text())))
def test_removing_any_key_of_params_yaml_is_refused_naming_it(tmp_path, key):
    raw = _without(yaml.safe_load(PARAMS_YAML.read_text()), key)
    assert refused(tmp_path, raw) == [f"{key}: Field required"]

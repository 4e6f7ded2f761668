"""bench/pipeline_overhead.py: the default models cut small must still be valid params."""

import yaml

from bench.pipeline_overhead import DEFAULT_MODELS_SMALL, merged
from robust_rlhf.config import load_params
from tests.conftest import REPO


def test_merged_keeps_untouched_keys_and_replaces_nested_ones():
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": 4}
    assert merged(base, {"a": {"c": {"d": 9}}}) == {"a": {"b": 1, "c": {"d": 9, "e": 3}}, "f": 4}
    assert base["a"]["c"]["d"] == 2  # not modified in place


def test_default_models_cut_small_validate(tmp_path):
    params = merged(yaml.safe_load((REPO / "params.yaml").read_text()), DEFAULT_MODELS_SMALL)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = load_params(tmp_path / "params.yaml")
    assert loaded.ppo.steps == 1 and loaded.models.policy == params["models"]["policy"]

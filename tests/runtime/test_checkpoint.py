"""Tests for robust_rlhf.runtime.checkpoint: folder names, and the manifest kept over successive saves."""

import json

from robust_rlhf.runtime.checkpoint import MANIFEST, checkpoint_name, read_checkpoints, save_policy_checkpoint


def test_checkpoint_name_is_zero_padded_to_five_digits():
    assert checkpoint_name(0) == "step_00000"
    assert checkpoint_name(2) == "step_00002"
    assert checkpoint_name(123) == "step_00123"
    assert checkpoint_name(12345) == "step_12345"


def test_checkpoint_names_sort_like_steps():
    steps = [10, 2, 100, 9]
    assert sorted(checkpoint_name(s) for s in steps) == [checkpoint_name(s) for s in sorted(steps)]


def _save(policy, tokenizer, run_dir, step):
    save_policy_checkpoint(policy, tokenizer, state_dict=policy.state_dict(), run_dir=run_dir, step=step)


def test_two_saves_are_listed_in_order(tmp_path, tiny_policy, tiny_tokenizer):
    run_dir = tmp_path / "run"
    _save(tiny_policy, tiny_tokenizer, run_dir, 2)
    _save(tiny_policy, tiny_tokenizer, run_dir, 4)
    assert read_checkpoints(run_dir) == [{"step": 2, "path": "step_00002"}, {"step": 4, "path": "step_00004"}]
    for name in ("step_00002", "step_00004"):
        assert (run_dir / name / "model.safetensors").is_file()
        assert (run_dir / name / "config.json").is_file()
    assert not list(run_dir.glob(".*.tmp"))  # the atomic writer left no temp file


def test_resaving_a_step_does_not_duplicate_it(tmp_path, tiny_policy, tiny_tokenizer):
    run_dir = tmp_path / "run"
    for step in (2, 4, 2):
        _save(tiny_policy, tiny_tokenizer, run_dir, step)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert [entry["step"] for entry in manifest["checkpoints"]] == [2, 4]


def test_out_of_order_save_is_listed_in_step_order(tmp_path, tiny_policy, tiny_tokenizer):
    run_dir = tmp_path / "run"
    _save(tiny_policy, tiny_tokenizer, run_dir, 4)
    _save(tiny_policy, tiny_tokenizer, run_dir, 2)
    assert [entry["path"] for entry in read_checkpoints(run_dir)] == ["step_00002", "step_00004"]


def test_saved_weights_are_the_given_state_dict_not_the_module_weights(tmp_path, tiny_policy, tiny_tokenizer):
    # Under ZeRO-3 the module's own tensors are shards; the gathered `state_dict` argument must be saved.
    from safetensors.torch import load_file

    state = {key: value.detach().clone() for key, value in tiny_policy.state_dict().items()}
    name = "model.norm.weight" if "model.norm.weight" in state else next(iter(state))
    state[name] += 1.0
    expected = state[name].clone()  # transformers' save_pretrained empties the dict it is given
    run_dir = tmp_path / "run"
    save_policy_checkpoint(tiny_policy, tiny_tokenizer, state_dict=state, run_dir=run_dir, step=1)
    saved = load_file(run_dir / "step_00001" / "model.safetensors")
    assert (saved[name] == expected).all()
    assert not (saved[name] == tiny_policy.state_dict()[name]).all()

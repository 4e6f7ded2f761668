import json
import random

import pytest
import torch

from robust_rlhf.resume import (PhasedResume, ResumeRefused, differing_keys, load_state, resume_folder, rng_state,
                                set_rng_state)
from robust_rlhf.config import StageInputError


def test_resume_folder_sits_beside_the_output_hidden(tmp_path):
    assert resume_folder(tmp_path / "models/policy/brme-seed0") == tmp_path / "models/policy/.brme-seed0.resume"


def test_differing_keys_names_nested_changes():
    saved = {"ppo": {"learning_rate": 1e-4, "steps": 6}, "seed": 0}
    assert differing_keys(saved, {"ppo": {"learning_rate": 5e-4, "steps": 6}, "seed": 0}) == ["ppo.learning_rate"]
    assert differing_keys(saved, {"ppo": {"learning_rate": 1e-4}, "seed": 1}) == ["ppo.steps", "seed"]
    assert differing_keys(saved, saved) == []


def test_rng_state_round_trips_through_json():
    random.seed(3)
    torch.manual_seed(3)
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    set_rng_state(state)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])


def test_load_state_resumes_matching_params_and_refuses_others(tmp_path):
    assert load_state(tmp_path, {"seed": 0}) is None
    (tmp_path / "state.json").write_text(json.dumps({"step": 4, "params": {"seed": 0, "ppo": {"steps": 6}}}))
    assert load_state(tmp_path, {"seed": 0, "ppo": {"steps": 6}})["step"] == 4
    with pytest.raises(ResumeRefused, match=r"interrupted at step 4 .*changed: ppo.steps.*delete") as raised:
        load_state(tmp_path, {"seed": 0, "ppo": {"steps": 8}})
    assert isinstance(raised.value, StageInputError)  # exit code 2, not retried


def test_phased_resume_records_finished_phases_and_goes_on_after_them(tmp_path):
    folder, params = tmp_path / ".reward.resume", {"seed": 0}
    run = PhasedResume(folder, params, ["stage1", "stage2", "member_0"])
    assert run.saved is None and not run.finished("stage1")
    torch.manual_seed(5)
    run.finish("stage1", [0.7, 0.6], {"stage1": {"w": torch.arange(3.0)}, "features": {"f": torch.ones(2, 2)}})
    assert run.finished("stage1") and not run.finished("stage2")
    expected = torch.rand(2)  # what stage2 draws first in the run that was not stopped
    again = PhasedResume(folder, params, ["stage1", "stage2", "member_0"])
    assert again.saved["step"] == 2 and again.phase == "stage2" and again.position is None
    assert again.finished("stage1") and torch.equal(again.tensors("stage1")["w"], torch.arange(3.0))
    assert again.restore("stage2", engine=None) is None  # stopped between phases: no engine to restore
    torch.manual_seed(99)
    again.start("stage2")  # the RNGs as they were when stage 1 ended, once
    assert torch.equal(torch.rand(2), expected)
    torch.manual_seed(99)
    again.start("stage2")
    assert not torch.equal(torch.rand(2), expected)

    with pytest.raises(ResumeRefused, match="changed: seed"):
        PhasedResume(folder, {"seed": 1}, ["stage1", "stage2", "member_0"])
    again.remove()
    assert not folder.exists()

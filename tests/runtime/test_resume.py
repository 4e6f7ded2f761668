import json
import pickle
import random
import subprocess
import sys

import pytest
import torch

from robust_rlhf.runtime.resume import (
    PhasedResume,
    differing_keys,
    dvc_force_flag,
    force_requested,
    load_state,
    prune_finished,
    rng_state,
    run_key,
    safe_torch_load,
    set_rng_state,
    tree_sha256,
)
from tests.conftest import REPO


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


def write_state(folder, key, step=4, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"step": step, "tag": f"step_{step}", "key": key, **extra}))


NO_ENGINES = lambda state: []  # noqa: E731


def test_load_state_resumes_the_same_run_and_discards_another_with_one_line(tmp_path, caplog):
    folder, key = tmp_path / "run", {"params": {"seed": 0, "ppo": {"steps": 6}}, "inputs": {"reward": "aa"}}
    assert load_state(folder, key, engines_of=NO_ENGINES) is None
    write_state(folder, key)
    assert load_state(folder, key, engines_of=NO_ENGINES)["step"] == 4
    for changed, name in (
        ({**key, "inputs": {"reward": "bb"}}, "inputs.reward"),
        ({**key, "params": {"seed": 0, "ppo": {"steps": 8}}}, "params.ppo.steps"),
    ):
        write_state(folder, key)
        caplog.clear()
        with caplog.at_level("INFO"):
            assert load_state(folder, changed, engines_of=NO_ENGINES) is None
        # Only the resume module's records: a library may log at INFO in the same window.
        assert [
            f"(step 4): it is from another run (changed: {name}); starting over" in r.message
            for r in caplog.records
            if r.name == "robust_rlhf.runtime.resume"
        ] == [True]
        assert not folder.exists()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"step": 2}), json.dumps([1, 2])])
def test_an_unreadable_state_file_means_starting_over(tmp_path, caplog, content):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "state.json").write_text(content)
    with caplog.at_level("INFO"):
        assert load_state(folder, {"params": {}}, engines_of=NO_ENGINES) is None
    assert "resume state unreadable" in caplog.text and "starting over" in caplog.text and not folder.exists()


def test_a_folder_killed_before_its_first_state_is_started_over(tmp_path):
    (tmp_path / "run/policy/step_1").mkdir(parents=True)
    assert load_state(tmp_path / "run", {}, engines_of=NO_ENGINES) is None and not (tmp_path / "run").exists()


class Payload:
    """Pickles to a call of os.system: unpickling it runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_is_never_run_and_the_state_is_started_over(tmp_path, caplog):
    folder, key, marker = tmp_path / "run", {"params": {"seed": 0}}, tmp_path / "pwned"
    write_state(folder, key)
    (folder / "actor/step_4").mkdir(parents=True)
    torch.save(
        {"module": {"w": torch.ones(2)}, "x": Payload(marker)}, folder / "actor/step_4/mp_rank_00_model_states.pt"
    )
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(folder / "actor/step_4/mp_rank_00_model_states.pt")
    with caplog.at_level("INFO"):
        assert load_state(folder, key, engines_of=lambda state: ["actor"]) is None
    assert not marker.exists()
    assert "resume state unreadable: " + str(folder / "actor/step_4/mp_rank_00_model_states.pt") in caplog.text
    assert not folder.exists()


def test_an_engine_checkpoint_that_is_missing_means_starting_over(tmp_path):
    folder, key = tmp_path / "run", {"params": {}}
    write_state(folder, key)
    assert load_state(folder, key, engines_of=lambda state: ["actor", "critic"]) is None


def test_safe_load_reads_tensors_and_containers(tmp_path):
    torch.save({"w": torch.arange(3.0), "meta": {"step": 2, "names": ["a"], "shape": (1, 2)}}, tmp_path / "ok.pt")
    loaded = safe_torch_load(tmp_path / "ok.pt")
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["meta"] == {
        "step": 2,
        "names": ["a"],
        "shape": (1, 2),
    }


def test_the_key_hashes_the_content_of_every_input(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model/weights.bin").write_bytes(b"abc")
    (tmp_path / "prompts.jsonl").write_text("{}\n")
    inputs = {"model": tmp_path / "model", "prompts": tmp_path / "prompts.jsonl"}
    key = run_key({"seed": 0}, inputs)
    assert run_key({"seed": 0}, inputs) == key and set(key) == {"params", "inputs", "code", "libraries"}
    (tmp_path / "model/weights.bin").write_bytes(b"abd")  # one byte of one file
    assert differing_keys(key, run_key({"seed": 0}, inputs)) == ["inputs.model"]
    (tmp_path / "model/weights.bin").rename(tmp_path / "model/other.bin")  # same bytes as before, another name
    assert tree_sha256(tmp_path / "model") != key["inputs"]["model"]


@pytest.mark.parametrize(
    "argv, forced",
    [
        (["/venv/bin/python", "/venv/bin/dvc", "repro", "-f"], True),
        (["dvc", "repro", "--force", "-s", "ppo@brme-0"], True),
        (["dvc", "repro", "-sf", "ppo@brme-0"], True),
        (["python", "-m", "dvc", "exp", "run", "-f"], True),
        (["dvc", "repro", "-s", "ppo@brme-0"], False),
        (["dvc", "repro", "--force-downstream"], False),
        (["dvc", "status", "-f"], False),
        (["python", "-m", "stages.ppo", "-f"], False),
    ],
)
def test_dvc_force_flag_reads_repro_and_exp_run(argv, forced):
    assert dvc_force_flag(argv) is forced


@pytest.mark.slow
def test_force_is_read_from_the_ancestors_argv(tmp_path):
    # DVC runs a stage through a shell, as a child of its own process: a fake `dvc` does the same.
    fake = tmp_path / "dvc"
    fake.write_text(
        f'#!/bin/sh\n"{sys.executable}" -c "from robust_rlhf.runtime.resume import force_requested; '
        f'print(force_requested())"\n'
    )
    fake.chmod(0o755)
    run = lambda *args: subprocess.run([str(fake), *args], capture_output=True, text=True, cwd=REPO).stdout.strip()  # noqa: E731
    assert run("repro", "-f", "-s", "ppo@brme-0") == "True"
    assert run("repro", "-s", "ppo@brme-0") == "False"
    assert force_requested() is False  # pytest is no dvc


def test_prune_removes_states_whose_outputs_all_exist(tmp_path):
    finished, running, keep = tmp_path / "ppo@a-0", tmp_path / "ppo@b-0", tmp_path / "ppo@c-0"
    (tmp_path / "out_a").mkdir()
    write_state(finished, {}, outputs=[str(tmp_path / "out_a")])
    write_state(running, {}, outputs=[str(tmp_path / "out_b")])
    write_state(keep, {}, outputs=[str(tmp_path / "out_a")])
    assert prune_finished(tmp_path, keep=keep) == [finished]
    assert running.exists() and keep.exists() and not finished.exists()


def test_phased_resume_records_finished_phases_and_goes_on_after_them(tmp_path):
    folder, params = tmp_path / ".reward.resume", {"params": {"seed": 0}}
    run = PhasedResume(folder, params, ["stage1", "stage2", "member_0"], [tmp_path / "reward"])
    assert run.saved is None and not run.finished("stage1")
    torch.manual_seed(5)
    run.finish("stage1", [0.7, 0.6], {"stage1": {"w": torch.arange(3.0)}, "features": {"f": torch.ones(2, 2)}})
    assert run.finished("stage1") and not run.finished("stage2")
    expected = torch.rand(2)  # what stage2 draws first in the run that was not stopped
    again = PhasedResume(folder, params, ["stage1", "stage2", "member_0"], [tmp_path / "reward"])
    assert again.saved["step"] == 2 and again.phase == "stage2" and again.position is None
    assert again.finished("stage1") and torch.equal(again.tensors("stage1")["w"], torch.arange(3.0))
    assert again.restore("stage2", engine=None) is None  # stopped between phases: no engine to restore
    torch.manual_seed(99)
    again.start("stage2")  # the RNGs as they were when stage 1 ended, once
    assert torch.equal(torch.rand(2), expected)
    torch.manual_seed(99)
    again.start("stage2")
    assert not torch.equal(torch.rand(2), expected)

    again.remove()
    assert not folder.exists()
    run = PhasedResume(folder, params, ["stage1", "stage2", "member_0"], [tmp_path / "reward"])
    run.finish("stage1", [0.7], {"stage1": {"w": torch.arange(3.0)}})
    other = PhasedResume(folder, {"params": {"seed": 1}}, ["stage1", "stage2", "member_0"], [tmp_path / "reward"])
    assert other.saved is None and other.phase == "stage1" and not folder.exists()  # another run: started over


@pytest.mark.slow
def test_deepspeed_checkpoints_of_every_zero_stage_load_without_unpickling(tmp_path):
    # In a subprocess: engines join a process group, which must not outlive the test. Every file
    # DeepSpeed writes must pass the weights_only reader, and restoring through it gives the weights back.
    import textwrap

    script = textwrap.dedent("""
        import json, sys, torch
        from pathlib import Path
        from robust_rlhf.config import DeepSpeedParams
        from robust_rlhf.runtime.distributed import (deepspeed_config, full_state_dict, init_distributed,
                                                     initialize_engine)
        from robust_rlhf.runtime.resume import load_state, restore_engines, save_state
        init_distributed()
        for zero_stage in (0, 2, 3):
            for precision in ("fp32", "bf16"):
                folder = Path(f"z{zero_stage}-{precision}")
                deepspeed = DeepSpeedParams(zero_stage=zero_stage, precision=precision, gradient_clipping=1.0,
                                            offload_optimizer='none', offload_param='none')
                config = deepspeed_config(deepspeed=deepspeed,
                                          micro_batch_size=2, gradient_accumulation_steps=1, world_size=1,
                                          learning_rate=0.1, weight_decay=0.0)
                torch.manual_seed(0)
                engine = initialize_engine(torch.nn.Linear(3, 2), config)
                dtype = next(engine.module.parameters()).dtype
                engine.backward(engine(torch.ones(2, 3, dtype=dtype)).float().sum())
                engine.step()
                save_state(folder, {"actor": engine}, step=1, key={"k": 1}, stage_state={}, outputs=[])
                saved = load_state(folder, {"k": 1}, engines_of=lambda state: ["actor"])
                assert saved is not None, (zero_stage, precision)
                torch.manual_seed(1)
                fresh = initialize_engine(torch.nn.Linear(3, 2), config)
                restore_engines(folder, {"actor": fresh}, saved)
                expected, got = full_state_dict(engine), full_state_dict(fresh)
                assert all(torch.equal(expected[name], got[name]) for name in expected), (zero_stage, precision)
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:]
    )

"""A train_reward stage killed with SIGKILL resumes from its last checkpoint and publishes what an
uninterrupted run publishes; a state from another run (a changed backbone) is discarded; a NaN loss
and a reward model at chance stop the stage with exit 2, naming what failed, and keep the last good
state."""

import json
import shutil
import subprocess

import pytest
from safetensors.torch import load_file, save_file

from robust_rlhf.data.task import NEGATIVE_WORDS, POSITIVE_WORDS, TEMPLATES, TOPICS, tokenizer_corpus
from robust_rlhf.models import TINY_POLICY, materialise_policy
from robust_rlhf.runtime.atomic import atomic_write_jsonl
from tests.conftest import REPO, kill_after_checkpoint, run_stage, stage_command, tiny_params, write_params

# 24 train pairs in micro-batches of 8: 3 batches an epoch, so 6 micro-batches in each of stage1,
# stage2 and the ensemble's one phase (frozen features: `ensemble`; fine-tuned: `member_0`), a
# checkpoint after every one.
PHASE_STEPS = 6
TOTAL_STEPS = 3 * PHASE_STEPS
SMALL = {
    "train_reward.stage1.epochs": 2,
    "train_reward.stage2.epochs": 2,
    "train_reward.ensemble_size": 1,
    "train_reward.checkpoint_every": 1,
    "methods": {"brme": {"reward_model": "brme", "aggregation": "brme"}},
}


def preference_pairs(count: int, offset: int) -> list[dict]:
    """Pairs whose chosen reply is positive and rejected one negative, with gold scores."""
    pairs = []
    for index in range(offset, offset + count):
        prompt = TEMPLATES[index % len(TEMPLATES)].format(topic=TOPICS[index % len(TOPICS)])
        good, bad = POSITIVE_WORDS[index % len(POSITIVE_WORDS)], NEGATIVE_WORDS[index % len(NEGATIVE_WORDS)]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": f"It was {good} and {good}.",
                "rejected": f"It was {bad}.",
                "gold_chosen": 1.0,
                "gold_rejected": -1.0,
            }
        )
    return pairs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny policy (the reward backbone) and preference splits, built in-process: no prepare run."""
    root = tmp_path_factory.mktemp("train_reward_inputs")
    materialise_policy(
        TINY_POLICY,
        root / "policy_init",
        seed=0,
        corpus=tokenizer_corpus(),
        trust_remote_code=False,
        attn_implementation="sdpa",
    )
    atomic_write_jsonl(root / "data/prefs_train.jsonl", preference_pairs(24, 0))
    atomic_write_jsonl(root / "data/prefs_val.jsonl", preference_pairs(8, 100))
    atomic_write_jsonl(root / "data/prefs_test.jsonl", preference_pairs(8, 200))
    return {
        "params": write_params(root / "params.yaml", tiny_params(**SMALL)),
        "data": root / "data",
        "policy": root / "policy_init",
        "root": root,
    }


def stage_paths(inputs, out):
    return {
        "data": inputs["data"],
        "policy": inputs["policy"],
        "reward": out / "reward",
        "ensemble": out / "ensemble",
        "reliability": out / "reliability",
        "metrics": out / "metrics.json",
        "resume": out / ".reward.resume",
        "live": out / "live",
    }


def saved_state(out):
    return json.loads((out / ".reward.resume/state.json").read_text())


def kill_train_reward(params, paths, at_least_step):
    return kill_after_checkpoint(
        stage_command("train_reward", params, **paths), paths["resume"] / "state.json", at_least_step
    )


def published(out) -> dict:
    """Every tensor and CSV row the stage published (DVCLive's series and summary too), and its metrics
    without the wall time."""
    tensors = {str(path.relative_to(out)): load_file(str(path)) for path in sorted(out.rglob("*.safetensors"))}
    tables = [*out.rglob("*.csv"), *out.rglob("*.tsv"), out / "live" / "metrics.json"]
    csvs = {str(path.relative_to(out)): path.read_text() for path in sorted(tables)}
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("wall_seconds")
    return {"tensors": tensors, "csvs": csvs, "metrics": metrics}


def assert_same_outputs(expected: dict, got: dict, *, files: int) -> None:
    assert got["tensors"].keys() == expected["tensors"].keys() and len(expected["tensors"]) == files
    for file, tensors in expected["tensors"].items():
        assert tensors.keys() == got["tensors"][file].keys()
        assert all((tensors[name] == got["tensors"][file][name]).all() for name in tensors), file
    assert got["csvs"] == expected["csvs"] and got["metrics"] == expected["metrics"]


# (layout, last phase, published safetensors): frozen features publish the backbone, the BRME's heads
# and the members' heads; a fine-tuned ensemble publishes each member's backbone and heads too.
LAYOUTS = [
    ({}, "ensemble", 3),
    ({"train_reward.finetune_backbone": True, "train_reward.stage1.learning_rate": 1e-3}, "member_0", 4),
]


@pytest.mark.parametrize("overrides, last_phase, files", LAYOUTS, ids=["frozen", "finetuned"])
def test_killed_run_resumes_and_publishes_what_an_uninterrupted_run_does(
    inputs, tmp_path, overrides, last_phase, files
):
    params = write_params(tmp_path / "params.yaml", tiny_params(**SMALL, **overrides))
    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    with open(reference / "stderr.log", "w") as log:  # runs beside the killed one, to save time
        uninterrupted = subprocess.Popen(
            stage_command("train_reward", params, **stage_paths(inputs, reference)),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        out = tmp_path / "killed"
        paths = stage_paths(inputs, out)
        # in the last phase, after its 2nd micro-batch: stage1 and stage2 finished, its engine mid-way
        killed_at = kill_train_reward(params, paths, at_least_step=2 * PHASE_STEPS + 2)
        assert uninterrupted.wait(timeout=600) == 0, (reference / "stderr.log").read_text()[-3000:]
    assert killed_at < TOTAL_STEPS and not paths["reward"].exists()  # nothing published for DVC to cache
    assert saved_state(out)["stage"]["phase"] == last_phase and not (reference / ".reward.resume").exists()

    resumed = run_stage("train_reward", params, **paths)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming train_reward from step {killed_at}: phase {last_phase}" in resumed.stderr
    assert not paths["resume"].exists()
    # engines, optimizer states, RNGs, data positions and finished phases all came back
    assert_same_outputs(published(reference), published(out), files=files)
    # the live series continue from the checkpoint: each phase's micro-batches once, in order
    steps = [
        line.split("\t")[0] for line in (out / f"live/plots/metrics/loss/{last_phase}.tsv").read_text().splitlines()
    ]
    assert steps == ["step", *map(str, range(PHASE_STEPS))]


def test_non_finite_features_stop_the_stage_before_anything_is_saved(inputs, tmp_path):
    # A backbone with a NaN weight: every pooled feature is NaN, and no phase may save it.
    backbone = tmp_path / "policy_init"
    shutil.copytree(inputs["policy"], backbone)
    weights = next(backbone.rglob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(name for name, tensor in tensors.items() if tensor.is_floating_point() and tensor.dim() == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(weights))
    params = write_params(tmp_path / "params.yaml", tiny_params(**SMALL))
    paths = stage_paths(inputs, tmp_path / "out")
    result = run_stage("train_reward", params, **{**paths, "policy": backbone})
    assert result.returncode == 2, result.stderr[-3000:]  # fails alike every time: the flow does not retry it
    assert "train_reward features: features/" in result.stderr and "is not finite at step 0" in result.stderr
    assert "Traceback" not in result.stderr and not paths["reward"].exists()
    assert not (paths["resume"] / "state.json").exists() and not list(paths["resume"].rglob("*.safetensors"))
    # an absurd learning rate is refused before any work, naming the key
    absurd = write_params(tmp_path / "absurd.yaml", tiny_params(**SMALL, **{"train_reward.stage1.learning_rate": 1e30}))
    refused = run_stage("train_reward", absurd, **paths)
    assert (
        refused.returncode == 2
        and "train_reward.stage1.learning_rate: Input should be less than or equal to 1" in refused.stderr
    )


def test_a_changed_backbone_discards_the_state(inputs, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(**SMALL))
    paths = stage_paths(inputs, tmp_path / "killed")
    killed_at = kill_train_reward(params, paths, at_least_step=2)
    # prepare re-ran between the kill and the re-run: another initial policy (the RM's backbone), same path
    backbone = tmp_path / "policy_init"
    shutil.copytree(inputs["policy"], backbone)
    weights = next(backbone.rglob("*.safetensors"))
    save_file(
        {
            name: tensor * 1.5 if tensor.is_floating_point() else tensor
            for name, tensor in load_file(str(weights)).items()
        },
        str(weights),
    )
    rerun = run_stage("train_reward", params, **{**paths, "policy": backbone})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (
        f"(step {killed_at}): it is from another run (changed: inputs.backbone); starting over" in rerun.stderr
    ) and "resuming" not in rerun.stderr


def test_a_reward_model_at_chance_stops_the_stage_and_publishes_nothing(inputs, tmp_path):
    # No reward model here ranks 99% of the val pairs right: the guard must fire, naming each model.
    params = write_params(tmp_path / "params.yaml", tiny_params(**SMALL, **{"train_reward.min_val_accuracy": 0.99}))
    paths = stage_paths(inputs, tmp_path)
    result = run_stage("train_reward", params, **paths)
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if line.startswith("stage train_reward: "))
    assert "val accuracy at or below 0.99" in line and "single " in line and "brme mean " in line
    assert not paths["reward"].exists() and not paths["ensemble"].exists()
    assert saved_state(tmp_path)["stage"]["phase"] == "done"  # the trained models stay in the resume state

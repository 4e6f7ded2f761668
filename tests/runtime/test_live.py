"""DVCLive's layout from our step logs (robust_rlhf/runtime/live.py): the files are the ones DVC reads
(`dvc metrics show`, `dvc plots show` in a DVC repo), and a run resumed from its saved rows leaves the
same files as an uninterrupted one, with no step twice, though the killed run had logged past its
checkpoint."""

import json

from robust_rlhf.reward.run import loss_rows
from robust_rlhf.runtime.live import LiveLog
from robust_rlhf.runtime.metrics import StepLog
from robust_rlhf.runtime.resume import load_state, save_state


def test_live_log_writes_dvclives_summary_and_series(tmp_path):
    live = LiveLog(tmp_path / "live")
    live.log(0, {"reward/brme": 0.5, "loss": -1.0})
    live.log(1, {"reward/brme": 0.75, "loss": -2.0})
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {
        "step": 1,
        "loss": -2.0,
        "reward": {"brme": 0.75},
    }
    series = tmp_path / "live" / "plots" / "metrics"
    assert (series / "reward" / "brme.tsv").read_text() == "step\tbrme\n0\t0.5\n1\t0.75\n"
    assert (series / "loss.tsv").read_text() == "step\tloss\n0\t-1.0\n1\t-2.0\n"


def test_without_series_only_the_summary_is_written(tmp_path):
    live = LiveLog(tmp_path / "live", series=False)
    live.log(3, {"kl": 0.25})
    assert [path.name for path in (tmp_path / "live").rglob("*")] == ["metrics.json"]
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {"kl": 0.25, "step": 3}


def scalars(step: int) -> dict[str, float]:
    return {"reward/brme": 0.5 + step / 8, "objective/kl": step / 4}


def test_a_resumed_step_log_continues_its_live_files_with_no_step_twice(tmp_path):
    uninterrupted = StepLog(tmp_path / "full.csv", live=LiveLog(tmp_path / "full"))
    for step in range(5):
        uninterrupted.log(step, scalars(step))

    killed = StepLog(tmp_path / "run.csv", live=LiveLog(tmp_path / "run"))
    for step in range(2):
        killed.log(step, scalars(step))
    save_state(tmp_path / "resume", {}, step=2, key={}, stage_state={"step_log": killed.rows}, outputs=[])
    killed.log(2, scalars(2))  # logged, then killed before the next checkpoint
    resumed = StepLog(tmp_path / "run.csv", live=LiveLog(tmp_path / "run"))
    resumed.restore(load_state(tmp_path / "resume", {}, engines_of=lambda state: [])["stage"]["step_log"])
    for step in range(2, 5):
        resumed.log(step, scalars(step))

    files = sorted(path.relative_to(tmp_path / "full") for path in (tmp_path / "full").rglob("*.*"))
    assert [str(path) for path in files] == [
        "metrics.json",
        "plots/metrics/objective/kl.tsv",
        "plots/metrics/reward/brme.tsv",
    ]
    for path in files:
        assert (tmp_path / "run" / path).read_text() == (tmp_path / "full" / path).read_text()
    steps = [line.split("\t")[0] for line in (tmp_path / "run/plots/metrics/objective/kl.tsv").read_text().splitlines()]
    assert steps == ["step", "0", "1", "2", "3", "4"]
    assert (tmp_path / "run.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()


def test_loss_rows_number_each_phases_micro_batches_from_its_first():
    assert loss_rows({"stage1": [0.7, 0.6], "stage2": [1.5]}) == [
        {"step": 0, "loss/stage1": 0.7},
        {"step": 1, "loss/stage1": 0.6},
        {"step": 0, "loss/stage2": 1.5},
    ]
    assert loss_rows({"member_0": [0.4]}, first=3) == [{"step": 3, "loss/member_0": 0.4}]


def test_dvc_reads_the_live_folder_as_metrics_and_plots(tmp_path):
    from dvc.repo import Repo

    repo = Repo.init(tmp_path, no_scm=True)
    (tmp_path / "dvc.yaml").write_text(
        "metrics:\n  - live/metrics.json\nplots:\n  - live/plots/metrics:\n      x: step\n"
    )
    live = LiveLog(tmp_path / "live")
    for step in range(3):
        live.log(step, scalars(step))
    repo = Repo(tmp_path)
    (shown,) = repo.metrics.show().values()  # the workspace, the only revision without git
    assert shown["data"]["live/metrics.json"]["data"] == {"step": 2, "objective": {"kl": 0.5}, "reward": {"brme": 0.75}}
    sources = repo.plots.show()["workspace"]["sources"]["data"]
    assert sorted(sources) == ["live/plots/metrics/objective/kl.tsv", "live/plots/metrics/reward/brme.tsv"]
    assert sources["live/plots/metrics/reward/brme.tsv"]["data"] == [
        {"step": "0", "brme": "0.5"},
        {"step": "1", "brme": "0.625"},
        {"step": "2", "brme": "0.75"},
    ]

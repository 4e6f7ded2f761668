"""A run's step metrics in DVCLive's folder layout, so `dvc exp show`, `dvc plots` and DVC's VS Code
extension show a run while it runs: `metrics.json` (the latest value of every scalar and its `step`,
what `dvc exp show` reads) and, for a series, `plots/metrics/<name>.tsv` (one `step<TAB>value` row per
step, what `dvc plots` reads with `x: step`).

The files are written with dvclive's own `Metric` writer, not through `dvclive.Live`: a `Live` opens
the DVC repo (and `dvc init`s a bare git checkout), may post to DVC Studio and, at its end, git-commits
an experiment; a pipeline stage must do none of that. The caller's step log stays the single source of
the numbers (its rows are what the resume state restores): a resumed run rewrites the folder from the
restored rows (`rewrite`), so the live files continue with no step twice.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from robust_rlhf.runtime.atomic import atomic_write_json

SUMMARY_FILE = "metrics.json"
# dvc.yaml gives every stage its --live folder under this one.
LIVE_ROOT = "live"


class LiveLog:
    """DVCLive's layout in `folder`; with `series` off only `metrics.json` is written (a stage whose
    series DVC already plots from another file keeps one writer per number)."""

    def __init__(self, folder: str | Path, *, series: bool = True) -> None:
        self.folder, self.series = Path(folder), series
        self.summary: dict = {}
        self._metrics: dict = {}

    @property
    def plots_dir(self) -> Path:
        return self.folder / "plots"

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Append `scalars` at `step` to their series and write the summary (atomically: DVC may read it
        mid-run)."""
        for name, value in scalars.items():
            if self.series:
                metric = self._metrics.get(name) or self._metrics.setdefault(name, _metric()(name, self.plots_dir))
                metric.step = step
                metric.dump(value)
            _set_nested(self.summary, name.split("/"), value)
        self.summary["step"] = step
        atomic_write_json(self.folder / SUMMARY_FILE, self.summary)

    def rewrite(self, rows: Iterable[Mapping]) -> None:
        """Replace the folder's contents with `rows` ({"step": s, name: value, ...}), in order: what a
        resumed run does with the rows its resume state restored, before it logs the next step."""
        if self.series:
            shutil.rmtree(self.plots_dir / _metric().subfolder, ignore_errors=True)
        (self.folder / SUMMARY_FILE).unlink(missing_ok=True)
        self.summary, self._metrics = {}, {}
        for row in rows:
            self.log(row["step"], {key: value for key, value in row.items() if key != "step"})


def _set_nested(tree: dict, keys: list[str], value) -> None:
    """tree[k0][k1]...[kn] = value: DVCLive's summary nests a metric named `a/b` as {"a": {"b": ...}},
    the path its series has under plots/metrics/."""
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _metric():
    """dvclive's series writer, imported when a series is written: dvclive imports pandas (about a second
    at every stage start), and ppo writes only the summary."""
    from dvclive.plots import Metric

    return Metric

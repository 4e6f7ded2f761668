"""Metric writers in formats DVC reads: JSON for `metrics:`, CSV rows for `plots:`."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

from robust_rlhf.runtime.atomic import atomic_write_json, atomic_write_text


def write_metrics(path: str | Path, metrics: Mapping) -> None:
    """Write a (nested) metrics mapping as JSON, atomically, with floats rounded for stable diffs."""
    atomic_write_json(path, _rounded(metrics))


def _rounded(value):
    if isinstance(value, Mapping):
        return {str(key): _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    return value


def write_csv(path: str | Path, rows: list[Mapping], columns: list[str] | None = None) -> None:
    """Write rows (dicts) as CSV, atomically; `columns` defaults to the union of the rows' keys in the
    order first seen. A row without a column's key leaves that cell empty."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class StepLog:
    """Per-step scalars kept in memory and rewritten whole as CSV after each step (small files).

    Its columns are `step`, then every other key of any row, sorted: a function of the rows' contents
    alone. A resumed run's rows come back from state.json, whose keys are sorted (atomic_write_json), so
    an order of first-seen keys would differ between a resumed and an uninterrupted run; this one does
    not, and the two files are byte-identical.

    A `live` log (robust_rlhf/runtime/live.py) gets every row too, from this one writer: after a resume
    `restore` rewrites it from the restored rows, so it never holds a step twice."""

    def __init__(self, path: str | Path, live=None) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        self.live = live

    def columns(self) -> list[str]:
        return ["step", *sorted({key for row in self.rows for key in row} - {"step"})]

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        row = {"step": step, **{key: round(float(value), 6) for key, value in scalars.items()}}
        self.rows.append(row)
        write_csv(self.path, self.rows, columns=self.columns())
        if self.live is not None:
            self.live.log(step, {key: value for key, value in row.items() if key != "step"})

    def restore(self, rows: list[dict]) -> None:
        """Go on from the rows a resume state saved: the files are rewritten from them, dropping any step
        a killed run logged after its last checkpoint."""
        self.rows = [dict(row) for row in rows]
        write_csv(self.path, self.rows, columns=self.columns())
        if self.live is not None:
            self.live.rewrite(self.rows)

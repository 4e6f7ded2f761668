"""Metric writers in formats DVC reads: JSON for `metrics:`, CSV rows for `plots:`."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Mapping

from robust_rlhf.atomic import atomic_write_json, atomic_write_text


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


def write_csv(path: str | Path, rows: list[Mapping]) -> None:
    """Write rows (dicts) as CSV with the union of their keys as columns, atomically."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class StepLog:
    """Per-step scalars kept in memory and rewritten whole as CSV after each step (small files)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.rows.append({"step": step, **{key: round(float(value), 6) for key, value in scalars.items()}})
        write_csv(self.path, self.rows)

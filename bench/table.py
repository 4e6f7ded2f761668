"""The benchmark's report: rows of (benchmark, ours, theirs or baseline, ratio, target, verdict),
rendered as a fixed-width text table. Pure functions, no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table. `ratio` is ours over the baseline in the direction the `target` states."""

    benchmark: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""  # e.g. ">= 2.00x" or "<= 1.10x"; empty when there is none
    note: str = ""


def meets(ratio: float | None, target: str) -> str:
    """`yes`/`NO` when the row has a target like `>= 2x` or `<= 1.1x`, else empty."""
    if ratio is None or not target:
        return ""
    op, _, value = target.partition(" ")
    bound = float(value.rstrip("xs"))
    ok = ratio >= bound if op == ">=" else ratio <= bound
    return "yes" if ok else "NO"


def format_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def render(rows: list[Row]) -> str:
    """Fixed-width table with a header; notes go below it, numbered, so the columns stay narrow."""
    header = ("benchmark", "ours", "baseline", "ratio", "target", "met")
    cells = [header]
    notes: list[str] = []
    for row in rows:
        name = row.benchmark
        if row.note:
            notes.append(row.note)
            name = f"{name} [{len(notes)}]"
        cells.append((name, row.ours, row.baseline, format_ratio(row.ratio), row.target, meets(row.ratio, row.target)))
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    lines += [f"[{index}] {note}" for index, note in enumerate(notes, start=1)]
    return "\n".join(lines)

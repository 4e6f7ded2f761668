"""Wall-clock accounting of a step's phases (generation, reward scoring, rollout forwards, training).

Phases are measured by wrapping the real library functions, so the benchmark runs the code the
pipeline runs, not a copy of it. Torch only at import.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TRAINING_REST = "training (rest)"


class PhaseTimer:
    """Exclusive wall time per named phase: a phase entered inside another is charged to itself and
    taken out of the enclosing one, so the phases of a step never double count."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, start, time spent in nested phases]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        frame = [name, self.clock(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = self.clock() - frame[1]
            self.totals[name] += elapsed - frame[2]
            if self._stack:
                self._stack[-1][2] += elapsed

    def wrap(self, fn: Callable, name: str, when: Callable[[], bool] = lambda: True) -> Callable:
        """`fn` timed as phase `name` on the calls where `when()` holds (else it runs untimed, i.e.
        charged to whatever phase encloses it)."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not when():
                return fn(*args, **kwargs)
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed

    def reset(self) -> None:
        self.totals.clear()


def median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one untimed warm-up call (first-call
    allocations and lazy initialisation are not what a repeated call costs)."""
    fn()
    times = []
    for _ in range(repeats):
        started = clock()
        fn()
        times.append(clock() - started)
    return statistics.median(times)


def interleaved_median_seconds(
    fns: dict, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[object, float]:
    """Median wall time of each `fns[key]()`, the calls taken in rounds (every key once per round, in order)
    after one untimed warm-up call each: a ratio of two keys then compares calls made minutes apart by at
    most one round, not by the whole of the other's repeats, which on this VM moved a ratio by +-0.3."""
    for fn in fns.values():
        fn()
    times: dict[object, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            started = clock()
            fn()
            times[key].append(clock() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def phase_split(wall: float, measured: dict[str, float]) -> dict[str, float]:
    """The step's wall time split into the measured phases plus `training (rest)`, everything not in
    a measured phase (the optimisation epochs, and the small glue around them). Sums to `wall`."""
    rest = wall - sum(measured.values())
    if rest < -1e-6 * max(wall, 1.0):
        raise ValueError(f"phases sum to {sum(measured.values()):.3f} s, more than the step's {wall:.3f} s")
    return {**measured, TRAINING_REST: max(rest, 0.0)}


def mean_split(splits: list[dict[str, float]]) -> dict[str, float]:
    """Per-phase mean over steps (a phase missing from a step counts 0)."""
    names = list(dict.fromkeys(name for split in splits for name in split))
    return {name: statistics.fmean(split.get(name, 0.0) for split in splits) for name in names}


def samples_per_second(batch_size: int, step_seconds: list[float], splits: list[dict[str, float]], without=()) -> float:
    """Samples per second over the measured steps, the phases named in `without` taken out of each
    step's wall time (a phase a step lacks takes out 0): batch * steps / sum_s (wall_s - sum_p in
    without split_s[p])."""
    seconds = sum(wall - sum(split.get(name, 0.0) for name in without) for wall, split in zip(step_seconds, splits))
    return batch_size * len(step_seconds) / seconds

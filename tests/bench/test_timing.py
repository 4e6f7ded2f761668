"""bench/timing.py: exclusive phase accounting and the step split, on a fake clock."""

import pytest

from bench.timing import (
    TRAINING_REST,
    PhaseTimer,
    interleaved_median_seconds,
    mean_split,
    median_seconds,
    phase_split,
    samples_per_second,
)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_nested_phase_is_charged_to_itself_and_taken_out_of_the_outer_one():
    clock = FakeClock()
    timer = PhaseTimer(clock)
    with timer.phase("outer"):
        clock.advance(1.0)
        with timer.phase("inner"):
            clock.advance(2.0)
        clock.advance(0.5)
    assert timer.totals == {"outer": 1.5, "inner": 2.0}


def test_wrap_times_only_the_calls_where_the_condition_holds():
    clock = FakeClock()
    timer = PhaseTimer(clock)
    enabled = {"on": True}

    def work(seconds):
        clock.advance(seconds)
        return seconds

    timed = timer.wrap(work, "work", when=lambda: enabled["on"])
    assert timed(3.0) == 3.0
    enabled["on"] = False
    timed(10.0)
    assert timer.totals == {"work": 3.0}
    timer.reset()
    assert timer.totals == {}


def test_phase_split_puts_the_rest_in_training_and_sums_to_the_wall_time():
    split = phase_split(10.0, {"generation": 4.0, "reward scoring": 1.0})
    assert split == {"generation": 4.0, "reward scoring": 1.0, TRAINING_REST: 5.0}
    assert sum(split.values()) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="more than the step"):
        phase_split(1.0, {"generation": 2.0})


def test_mean_split_counts_a_missing_phase_as_zero():
    assert mean_split([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 2.0, "b": 1.0}


def test_median_seconds_skips_the_warm_up_call():
    clock = FakeClock()
    costs = iter([100.0, 1.0, 3.0, 2.0])  # the first (warm-up) call is slow and must not count
    assert median_seconds(lambda: clock.advance(next(costs)), repeats=3, clock=clock) == 2.0


def test_interleaved_medians_time_every_key_once_per_round_after_one_warm_up_each():
    clock, order = FakeClock(), []
    costs = {"a": iter([50.0, 1.0, 5.0, 3.0]), "b": iter([60.0, 2.0, 2.0, 9.0])}  # first call: the warm-up

    def timed(key):
        return lambda: (order.append(key), clock.advance(next(costs[key])))

    medians = interleaved_median_seconds({"a": timed("a"), "b": timed("b")}, repeats=3, clock=clock)
    assert medians == {"a": 3.0, "b": 2.0}
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-ups, then three rounds of a, b


def test_samples_per_second_takes_the_named_phases_out_of_each_step():
    steps, splits = [10.0, 6.0], [{"generation": 4.0, "reward scoring": 2.0}, {"generation": 2.0}]
    assert samples_per_second(8, steps, splits) == pytest.approx(16 / 16.0)
    # the second step has no reward phase: it loses nothing, the first loses 2 s
    assert samples_per_second(8, steps, splits, without=("reward scoring",)) == pytest.approx(16 / 14.0)
    assert samples_per_second(8, steps, splits, without=("reward scoring", "generation")) == pytest.approx(16 / 8.0)
    assert samples_per_second(8, steps, splits, without=("absent",)) == samples_per_second(8, steps, splits)

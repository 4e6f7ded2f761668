import math

import pytest

from robust_rlhf.config import LRScheduleParams
from robust_rlhf.runtime.schedule import lr_multiplier


def _schedule(kind: str, warmup: int, final: float = 0.0) -> LRScheduleParams:
    return LRScheduleParams(kind=kind, warmup_steps=warmup, final_fraction=final)


def test_constant_without_warmup_is_exactly_one():
    # The default run relies on it: lr * 1.0 is the configured lr, bit for bit.
    schedule = _schedule("constant", 0, 0.3)
    assert all(lr_multiplier(s, total_steps=7, schedule=schedule) == 1.0 for s in range(7))


def test_warmup_starts_nonzero_and_reaches_the_peak():
    schedule = _schedule("constant", 4)
    assert [lr_multiplier(s, total_steps=10, schedule=schedule) for s in range(6)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
    ]


def test_linear_decay_by_hand():
    # W = 2, T = 7: decay over steps 2..6, p = (s - 2) / 4, f = 0.2: m = 1 - 0.8 p.
    schedule = _schedule("linear", 2, 0.2)
    values = [lr_multiplier(s, total_steps=7, schedule=schedule) for s in range(7)]
    assert values == pytest.approx([0.5, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert values[-1] == pytest.approx(0.2)


def test_cosine_decay_by_hand():
    # W = 0, T = 5: p = s / 4, f = 0.1: m = 0.1 + 0.45 (1 + cos(pi p)).
    schedule = _schedule("cosine", 0, 0.1)
    values = [lr_multiplier(s, total_steps=5, schedule=schedule) for s in range(5)]
    half = 0.5 * math.sqrt(2)
    assert values == pytest.approx([1.0, 0.1 + 0.45 * (1 + half), 0.55, 0.1 + 0.45 * (1 - half), 0.1])


def test_final_step_reaches_final_fraction_and_stays():
    for kind in ("linear", "cosine"):
        schedule = _schedule(kind, 3, 0.25)
        assert lr_multiplier(9, total_steps=10, schedule=schedule) == pytest.approx(0.25)
        assert lr_multiplier(12, total_steps=10, schedule=schedule) == pytest.approx(0.25)


def test_single_decay_step_is_the_final_fraction():
    schedule = _schedule("linear", 2, 0.5)
    assert [lr_multiplier(s, total_steps=3, schedule=schedule) for s in range(3)] == [0.5, 1.0, 0.5]


def test_negative_step_is_an_error():
    with pytest.raises(ValueError, match="step -1"):
        lr_multiplier(-1, total_steps=3, schedule=_schedule("constant", 0))

"""Schedules: exact values at the landmarks, monotonic pieces, clamping, purity."""

import itertools
import math
import random

import pytest

from jepa.config import from_dict
from jepa.train.schedules import Schedules, cosine_ramp, linear_ramp, warmup_cosine

CFG = from_dict({
    "optim": {"total_steps": 1000, "warmup_steps": 100, "lr": 1e-3, "start_lr": 2e-4, "final_lr": 1e-6,
              "weight_decay": 0.04, "final_weight_decay": 0.4},
    "ema": {"momentum": 0.996, "final_momentum": 1.0},
})


@pytest.fixture
def s() -> Schedules:
    return Schedules.from_config(CFG)


def test_lr_landmarks(s):
    assert s.lr(0) == pytest.approx(2e-4, rel=1e-12)
    assert s.lr(50) == pytest.approx(6e-4, rel=1e-12)  # half way through the linear warmup
    assert s.lr(100) == pytest.approx(1e-3, rel=1e-12)  # end of warmup = peak
    assert s.lr(550) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-12)  # cosine midpoint
    assert s.lr(1000) == pytest.approx(1e-6, rel=1e-12)


def test_wd_and_momentum_landmarks(s):
    assert s.wd(0) == pytest.approx(0.04, rel=1e-12)
    assert s.wd(500) == pytest.approx(0.22, rel=1e-12)
    assert s.wd(1000) == pytest.approx(0.4, rel=1e-12)
    assert s.ema_momentum(0) == pytest.approx(0.996, rel=1e-12)
    assert s.ema_momentum(500) == pytest.approx(0.998, rel=1e-12)
    assert s.ema_momentum(1000) == pytest.approx(1.0, rel=1e-12)


def test_monotonic_pieces(s):
    lrs = [s.lr(i) for i in range(1001)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101])), "warmup must rise strictly"
    assert all(a > b for a, b in zip(lrs[100:1000], lrs[101:1001])), "cosine must fall strictly"
    wds = [s.wd(i) for i in range(1001)]
    ms = [s.ema_momentum(i) for i in range(1001)]
    assert all(a < b for a, b in zip(wds, wds[1:]))
    assert all(a < b for a, b in zip(ms, ms[1:]))


@pytest.mark.parametrize("step", [1000, 1001, 5000, 10**9])
def test_clamps_past_total(s, step):
    assert s.lr(step) == 1e-6
    assert s.wd(step) == 0.4
    assert s.ema_momentum(step) == 1.0


STEPS = list(range(0, 1200, 7))  # landmarks, both pieces of the lr, and steps past total_steps


def values(sched, steps):
    return {i: (sched.lr(i), sched.wd(i), sched.ema_momentum(i)) for i in steps}


def in_order_then_shuffled(make):
    """Values of a fresh object asked in step order, then of shuffled orders, twice, asked again of
    that reused object and of fresh ones (as after a resume)."""
    reused = make()
    in_order = values(reused, STEPS)
    shuffled = []
    for seed in (0, 1):
        order = STEPS.copy()
        random.Random(seed).shuffle(order)
        shuffled += [values(reused, order), values(make(), order)]
    return in_order, shuffled


class GeneratorSchedules:
    """A stateful schedule as in the reference repos: one generator per value, advanced per call."""

    def __init__(self):
        pure = Schedules.from_config(CFG)
        self._lr = (pure.lr(i) for i in itertools.count())
        self._wd = (pure.wd(i) for i in itertools.count())
        self._m = (pure.ema_momentum(i) for i in itertools.count())

    def lr(self, step):
        return next(self._lr)

    def wd(self, step):
        return next(self._wd)

    def ema_momentum(self, step):
        return next(self._m)


def test_pure_any_order():
    in_order, shuffled = in_order_then_shuffled(lambda: Schedules.from_config(CFG))
    assert all(got == in_order for got in shuffled)  # exact equality, step by step
    for i, (lr, wd, m) in in_order.items():  # and they are the closed forms, not merely consistent
        t = min(i, 1000) / 1000
        assert m == pytest.approx(0.996 + 0.004 * t, rel=1e-12)
        assert wd == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * t)), rel=1e-12)
        assert lr == pytest.approx(2e-4 + 8e-4 * i / 100 if i < 100 else
                                   1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * (min(i, 1000) - 100) / 900)),
                                   rel=1e-12)
    # The same check catches a schedule that depends on how often it was asked, not on the step.
    in_order, shuffled = in_order_then_shuffled(GeneratorSchedules)
    assert not any(got == in_order for got in shuffled)


def test_no_warmup_starts_at_peak():
    assert warmup_cosine(0, start=0.0, peak=1.0, final=0.0, warmup_steps=0, total_steps=10) == 1.0
    assert warmup_cosine(5, start=0.0, peak=1.0, final=0.0, warmup_steps=0, total_steps=10) == pytest.approx(0.5)


def test_warmup_spanning_whole_run():
    assert warmup_cosine(5, start=0.0, peak=1.0, final=0.1, warmup_steps=10, total_steps=10) == 0.5
    assert warmup_cosine(10, start=0.0, peak=1.0, final=0.1, warmup_steps=10, total_steps=10) == 0.1


@pytest.mark.parametrize("fn,kwargs", [
    (warmup_cosine, dict(start=0.0, peak=1.0, final=0.0, warmup_steps=1, total_steps=2)),
    (cosine_ramp, dict(begin=0.0, end=1.0, total_steps=2)),
    (linear_ramp, dict(begin=0.0, end=1.0, total_steps=2)),
])
def test_negative_step_is_an_error(fn, kwargs):
    with pytest.raises(ValueError, match="step=-1"):
        fn(-1, **kwargs)


def test_cosine_ramp_formula():
    for step in (0, 3, 7, 10):
        want = 1.0 + 0.5 * (0.0 - 1.0) * (1 + math.cos(math.pi * step / 10))
        assert cosine_ramp(step, begin=0.0, end=1.0, total_steps=10) == pytest.approx(want, abs=1e-15)

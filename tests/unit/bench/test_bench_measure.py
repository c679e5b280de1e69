"""bench/testbed_bench/measure: when a time-bounded steady-state window stops, and the rates it
reports, on synthetic completion times whose rates are known."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from testbed_bench.measure import Window, _rates  # noqa: E402 (after sys.path)


def _first_stop(window: Window, done: list[float], batch: int = 1) -> int | None:
    """How many completions the stream had when `window` ended it (None: never)."""
    for k in range(2, len(done) + 1):
        rate, (a, b) = _rates(done[:k], batch)
        if window.done(k - 1, done[k - 1] - done[0], abs(a - b) / rate):
            return k
    return None


def test_even_completions_give_their_rate_and_no_spread():
    done = [5.0 + 2.0 * i for i in range(11)]  # the fill ends at 5 s, then one per 2 s
    rate, halves = _rates(done, batch=3)
    assert rate == 1.5 and halves == (1.5, 1.5)


def test_halves_are_the_rates_of_each_half_of_the_intervals():
    done = [0.0, 1.0, 2.0, 4.0, 6.0]  # 1 s apart, then 2 s apart
    rate, halves = _rates(done, batch=1)
    assert rate == 4 / 6 and halves == (1.0, 0.5)


def test_a_slow_pipeline_stops_at_its_minimum_items_a_fast_one_at_its_time():
    window = Window(min_intervals=4, target_s=15.0, max_s=60.0, tolerance=0.1)
    slow = [30.0 + 12.0 * i for i in range(20)]  # one per 12 s: 4 intervals take 48 s
    assert _first_stop(window, slow) == 5
    fast = [10.0 + 0.5 * i for i in range(100)]  # one per 0.5 s: 15 s hold 30 intervals
    assert _first_stop(window, fast) == 31


def test_halves_that_disagree_extend_the_window_up_to_its_longest():
    window = Window(min_intervals=4, target_s=15.0, max_s=60.0, tolerance=0.1)
    # A slow first interval (3 s, then 1 s apart): at 15 s the halves are 0.75 vs 1 item/s;
    # the window goes on until the slow one is diluted to within 10% (~40 s)
    done = [0.0] + [3.0 + i for i in range(100)]
    k = _first_stop(window, done)
    assert k is not None and 20.0 < done[k - 1] < 60.0
    rate, (a, b) = _rates(done[:k], 1)
    assert abs(a - b) / rate <= 0.1
    rate, (a, b) = _rates(done[:k - 1], 1)
    assert abs(a - b) / rate > 0.1  # one completion earlier they did not agree yet
    # Four slow intervals (3 s) first: the halves still disagree at 60 s, where it stops
    done = [3.0 * i for i in range(5)] + [12.0 + i for i in range(1, 100)]
    k = _first_stop(window, done)
    assert k is not None and done[k - 1] == 60.0
    rate, (a, b) = _rates(done[:k], 1)
    assert abs(a - b) / rate > 0.1

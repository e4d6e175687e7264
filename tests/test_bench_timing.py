"""The benchmarks' timing helpers, on a fake clock (no real timing in tests)."""

import pytest

import benchmarks._common as common


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_blocked_times_skips_the_first_call_of_each_block(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    seen = {"a": [], "b": []}

    def make(name, cost):
        def call(i):
            seen[name].append(i)
            clock.now += 100.0 if len(seen[name]) % 2 == 1 else cost  # a block's first call is slow (cold)
        return call

    times = common.blocked_times({"a": make("a", 1.0), "b": make("b", 2.0)}, rounds=4, block=2)
    assert times == {"a": 1.0, "b": 2.0}
    assert seen["a"] == list(range(8)) and seen["b"] == list(range(8))  # running index per candidate


def test_blocked_times_rejects_a_block_of_one():
    with pytest.raises(ValueError, match="block must be >= 2"):
        common.blocked_times({"a": lambda i: None}, block=1)

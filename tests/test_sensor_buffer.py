"""The sensor ring buffers (edge_runtime/sources/buffer.py) against an independent model: a
``collections.deque(maxlen=capacity)`` per channel. Appends wrap past the capacity many times over;
every read (ordered copy, ``since`` filter, latest) must equal the model's."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edge_runtime.sources.buffer import Ring, SensorBuffers


def test_a_ring_wrapped_past_its_capacity_keeps_the_newest_in_order() -> None:
    ring = Ring(4)
    for i in range(11):  # wraps twice and lands mid-ring: the write position is 3
        ring.append(float(i), 10.0 * i)
    t, v = ring.ordered()
    assert t.tolist() == [7.0, 8.0, 9.0, 10.0]
    assert v.tolist() == [70.0, 80.0, 90.0, 100.0]
    assert ring.count == 4 and ring.latest() == (10.0, 100.0)
    t, v = ring.ordered(since=8.5)
    assert t.tolist() == [9.0, 10.0] and v.tolist() == [90.0, 100.0]
    assert ring.ordered(since=100.0)[0].size == 0
    # copies: changing what was returned changes nothing inside
    t[:] = -1.0
    assert ring.ordered()[0].tolist() == [7.0, 8.0, 9.0, 10.0]


def test_a_ring_refuses_a_capacity_below_two() -> None:
    with pytest.raises(ValueError, match="ring capacity must be at least 2, got 1"):
        Ring(1)


def test_an_empty_ring_and_an_unknown_channel() -> None:
    ring = Ring(3)
    assert ring.latest() is None and ring.ordered()[0].size == 0
    buffers = SensorBuffers(3, ["ax"])
    assert buffers.latest("nope") is None
    t, v = buffers.window("nope")
    assert t.size == 0 and v.size == 0


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(2, 9),
    steps=st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=60),
    since=st.floats(-1.0, 70.0, allow_nan=False),
)
def test_any_number_of_appends_reads_like_a_bounded_deque(
    capacity: int, steps: list[float], since: float
) -> None:
    ring = Ring(capacity)
    model: deque[tuple[float, float]] = deque(maxlen=capacity)
    now = 0.0
    for i, step in enumerate(steps):  # times never go backwards, as the sources stamp them
        now += step
        ring.append(now, float(i))
        model.append((now, float(i)))
    t, v = ring.ordered()
    assert list(zip(t.tolist(), v.tolist(), strict=True)) == list(model)
    t, v = ring.ordered(since=since)
    assert list(zip(t.tolist(), v.tolist(), strict=True)) == [p for p in model if p[0] >= since]
    assert ring.latest() == (model[-1] if model else None)
    assert ring.count == len(model)


class BuffersMachine(RuleBasedStateMachine):
    """SensorBuffers with channels that appear later, lines holding some channels only, and reads
    between the appends."""

    @initialize(capacity=st.integers(2, 6))
    def setup(self, capacity: int) -> None:
        self.buffers = SensorBuffers(capacity, ["ax"])
        self.model: dict[str, deque[tuple[float, float]]] = {"ax": deque(maxlen=capacity)}
        self.capacity = capacity
        self.now = 0.0

    @rule(
        channels=st.sets(st.sampled_from(["ax", "ay", "temp"]), min_size=1),
        step=st.floats(0.0, 0.5, allow_nan=False),
        value=st.floats(-1e6, 1e6, allow_nan=False),
    )
    def append(self, channels: set[str], step: float, value: float) -> None:
        self.now += step
        self.buffers.append(self.now, {c: value for c in channels})
        for c in channels:
            self.model.setdefault(c, deque(maxlen=self.capacity)).append((self.now, value))

    @precondition(lambda self: self.now > 0)
    @rule(back=st.floats(0.0, 3.0, allow_nan=False), channel=st.sampled_from(["ax", "ay", "temp"]))
    def window(self, back: float, channel: str) -> None:
        since = self.now - back
        t, v = self.buffers.window(channel, since)
        expected = [p for p in self.model.get(channel, ()) if p[0] >= since]
        assert list(zip(t.tolist(), v.tolist(), strict=True)) == expected

    @invariant()
    def matches_the_model(self) -> None:
        assert sorted(self.buffers.channels) == sorted(self.model)
        for channel, pairs in self.model.items():
            t, v = self.buffers.window(channel)
            assert isinstance(t, np.ndarray) and t.dtype == np.float64
            assert list(zip(t.tolist(), v.tolist(), strict=True)) == list(pairs)
            assert self.buffers.latest(channel) == (pairs[-1] if pairs else None)


TestSensorBuffers = BuffersMachine.TestCase
TestSensorBuffers.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)

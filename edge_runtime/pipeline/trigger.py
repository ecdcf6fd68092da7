"""The trigger of a pipeline with one source or a period: what the worker waits for.

A camera triggers on each new frame, with the frame's own capture time; a sensor source on each
new sample; ``every_s`` at a fixed period. Several camera sources are :mod:`.fanin`'s.
"""

from __future__ import annotations

import threading
import time

from edge_runtime.config import EveryTrigger, SourceTrigger
from edge_runtime.pipeline.results import Triggered
from edge_runtime.sources.base import FrameSource, Source


class SingleTrigger:
    """Waits for the next firing of a period or of one source, counting frames never seen."""

    def __init__(self, trigger: EveryTrigger | SourceTrigger, source: Source | None) -> None:
        self.trigger = trigger
        self.source = source
        self.last_seq = 0
        self.dropped = 0  # frames of the source released while the pipeline was busy
        self._next_tick: float | None = None

    def wait(self, stopping: threading.Event, fired: int) -> Triggered | None:
        """The next firing (the ``fired + 1``-th of a period), or None after a short wait."""
        trigger = self.trigger
        if isinstance(trigger, EveryTrigger):
            now = time.monotonic()
            next_t = now if self._next_tick is None else self._next_tick
            if next_t > now and stopping.wait(next_t - now):
                return None
            self._next_tick = max(next_t + trigger.every_s, time.monotonic())
            return Triggered(time.monotonic(), time.time(), "every", fired + 1, None)
        source = self.source
        assert source is not None
        if isinstance(source, FrameSource):  # a camera: each new frame, with its own capture time
            frame = source.get(self.last_seq, 0.5)
            if frame is None:
                return None
            if frame.seq > self.last_seq + 1:  # frames this pipeline never saw
                self.dropped += frame.seq - self.last_seq - 1
            self.last_seq = frame.seq
            return Triggered(frame.t_mono, frame.t_wall, source.name, frame.seq, frame)
        seq = source.wait_for(self.last_seq, 0.5)
        if seq == self.last_seq or source.last_sample_mono is None:
            return None
        self.last_seq = seq
        t_mono = source.last_sample_mono
        return Triggered(t_mono, time.time() - (time.monotonic() - t_mono), source.name, seq, None)

    def finished(self) -> bool:
        """Whether the source has ended (frames it released after the last one taken are dropped)."""
        source = self.source
        if source is None or not source.finished:
            return False
        if isinstance(source, FrameSource) and source.seq > self.last_seq:
            self.dropped += source.seq - self.last_seq
            self.last_seq = source.seq
        return True

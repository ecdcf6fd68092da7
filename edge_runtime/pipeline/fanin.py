"""Several camera sources into one pipeline (``trigger = ["cam1", "cam2"]``): round-robin.

Each source keeps only its latest frame (the camera's own semantics); the pipeline takes the next
new frame by scanning the sources in a fixed order that starts after the source served last. When
demand exceeds what the pipeline can do, every source with a frame waiting is served once per
round, so each gets the same share whatever its frame rate (a fast source's frames in between are
replaced and counted as dropped); a source with nothing new is skipped at once. Within a source,
frames are taken in capture order and none is taken twice. :meth:`RoundRobin.take` takes up to
``most`` new frames at once for a batched invoke, at most one per source, in the same order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from edge_runtime.errors import PipelineError
from edge_runtime.pipeline.results import Triggered
from edge_runtime.sources.base import FrameSource, Source


class RoundRobin:
    """The trigger of a pipeline with several camera sources."""

    def __init__(self, where: str, sources: Sequence[Source]) -> None:
        self.sources: list[Source] = []
        self._cameras: list[FrameSource] = []  # the same objects, seen as frame sources
        self.news = threading.Event()  # set by every source on each new frame
        self.last_seqs: dict[str, int] = {}
        self.dropped = 0
        self.taken: dict[str, int] = {}  # per source: frames taken
        self.dropped_by: dict[str, int] = {}  # per source: frames replaced before they were taken
        self._next = 0
        for source in sources:
            if not isinstance(source, FrameSource):
                raise PipelineError(f"{where}: trigger source {source.name!r} is not a camera")
            source.add_news_event(self.news)
            self.sources.append(source)
            self._cameras.append(source)
            self.last_seqs[source.name] = 0
            self.taken[source.name] = 0
            self.dropped_by[source.name] = 0

    @property
    def names(self) -> list[str]:
        return list(self.last_seqs)

    def finished(self) -> bool:
        return all(s.finished for s in self.sources)

    def wait(self, stopping: threading.Event, timeout: float = 0.5) -> Triggered | None:
        """The next new frame, or None after ``timeout`` s, on stop or once every source finished."""
        taken = self.take(stopping, 1, timeout)
        return taken[0] if taken else None

    def take(self, stopping: threading.Event, most: int, timeout: float = 0.5) -> list[Triggered]:
        """Up to ``most`` new frames, at most one per source, in round-robin order: waits (up to
        ``timeout`` s) for the first only; empty on timeout, on stop or once every source finished."""
        deadline = time.monotonic() + timeout
        while True:
            self.news.clear()  # before the scan: a frame that arrives during it sets it again
            first = self._scan(set())
            if first is not None:
                batch = [first]
                seen = {first.source}
                while len(batch) < most:
                    more = self._scan(seen)
                    if more is None:
                        break
                    batch.append(more)
                    seen.add(more.source)
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stopping.is_set() or self.finished():
                return []
            self.news.wait(min(remaining, 0.05))  # bounded: a source that finishes sets nothing

    def _scan(self, skip: set[str]) -> Triggered | None:
        """The first new frame of a source not in ``skip``, from the one after the last served."""
        count = len(self.sources)
        for k in range(count):
            i = (self._next + k) % count
            source = self.sources[i]
            name = source.name
            if name in skip:
                continue
            last = self.last_seqs[name]
            frame = self._cameras[i].get(last, 0.0)
            if frame is None:
                continue
            self._next = (i + 1) % count
            if frame.seq > last + 1:
                self.dropped += frame.seq - last - 1
                self.dropped_by[name] += frame.seq - last - 1
            self.last_seqs[name] = frame.seq
            self.taken[name] += 1
            return Triggered(frame.t_mono, frame.t_wall, name, frame.seq, frame)
        return None

    def count_released(self) -> None:
        """At the end: frames released after the last one taken are dropped."""
        for source in self.sources:
            name = source.name
            self.dropped_by[name] += max(0, source.seq - self.last_seqs[name])
            self.dropped += max(0, source.seq - self.last_seqs[name])
            self.last_seqs[name] = source.seq

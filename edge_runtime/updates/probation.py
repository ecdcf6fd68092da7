"""Probation: the first results of a newly swapped-in model are watched before it is committed.

A model fails probation on invoke errors of its pipeline, NaN or infinite outputs, outputs that
never vary (when configured), or an invoke p95 over a factor of the previous model's (after a
warm-up, and only when over an absolute floor); it passes only after ``required`` real results
(results the pipeline emitted from this very model: a paused pipeline produces none, so it cannot
pass).

A :class:`Probation` is also the watch of the pipeline OBJECT that serves the candidate
(:meth:`~edge_runtime.updates.host.UpdatablePipeline.begin_watch`): when that pipeline is paused,
stopped or replaced by a reload, it calls :meth:`Probation.end` and the probation is over without
a commit. :meth:`Probation.commit` runs the commit under the same lock, so an end and a commit
cannot interleave: either the commit happened first (and a reload afterwards reads the committed
model), or the end did (and nothing is committed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edge_runtime.runtime.model import TensorSpec
from edge_runtime.runtime.quant import dequantize

T = TypeVar("T")


class Watched(Protocol):
    """The pipeline serving the candidate: its error count and last error."""

    @property
    def errors(self) -> int: ...

    @property
    def last_error(self) -> str: ...


class Probation:
    """Watches the new model's first results: invoke errors, latency, NaN and constant outputs."""

    def __init__(self, pipeline: Watched, baseline_p95_ms: float | None, specs: Sequence[TensorSpec]) -> None:
        self.pipeline = pipeline
        self.baseline = baseline_p95_ms
        self.specs = specs
        self.errors_at_start = pipeline.errors
        self.latencies: list[float] = []
        self.first: bytes | None = None
        self.varied = False
        self.nan = 0
        self.lock = threading.Lock()
        self.ended = ""  # why the pipeline stopped serving the candidate, "" while it does
        self.committed = False
        self._changed = threading.Event()

    def observe(self, outputs: list[npt.NDArray[Any]], invoke_ms: float) -> None:
        blob = b"".join(np.ascontiguousarray(a).tobytes() for a in outputs)
        with self.lock:
            if self.ended or self.committed:
                return
            self.latencies.append(invoke_ms)
            if self.first is None:
                self.first = blob
            elif blob != self.first:
                self.varied = True
            for spec, array in zip(self.specs, outputs, strict=False):
                values = dequantize(array, spec.quant) if spec.quant else np.asarray(array, dtype=np.float64)
                if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                    self.nan += 1
                    break
        self._changed.set()

    def end(self, reason: str) -> None:
        """The pipeline no longer serves the candidate (paused, stopped, reloaded): no commit.
        Ignored once the commit happened."""
        with self.lock:
            if self.committed or self.ended:
                return
            self.ended = reason or "the pipeline stopped serving the model"
        self._changed.set()

    def wait(self, timeout: float) -> None:
        """Until the next result or end, at most ``timeout`` s."""
        self._changed.wait(timeout)
        self._changed.clear()

    def commit(self, action: Callable[[], T]) -> T | None:
        """Run ``action`` (the store's commit) unless the probation ended first; None if it did."""
        with self.lock:
            if self.ended:
                return None
            result = action()
            self.committed = True
            return result

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.latencies)

    WARMUP = 3  # a new interpreter's first invokes are slow (caches, XNNPACK packing): not judged

    def verdict(self, factor: float, check_constant: bool, floor_ms: float = 5.0) -> str:
        """Why the model fails probation, or ""."""
        errors = self.pipeline.errors - self.errors_at_start
        if errors:
            return f"{errors} invoke errors during probation ({self.pipeline.last_error})"
        with self.lock:
            if self.nan:
                return f"{self.nan} results with NaN or infinite outputs"
            if check_constant and len(self.latencies) >= 5 and not self.varied:
                return f"outputs constant over {len(self.latencies)} results"
            judged = self.latencies[self.WARMUP :]
            if self.baseline and len(judged) >= 5:
                p95 = float(np.percentile(judged, 95))
                if p95 > factor * self.baseline and p95 - self.baseline > floor_ms:
                    return (
                        f"invoke p95 {p95:.2f} ms is over {factor:g} x the previous model's "
                        f"{self.baseline:.2f} ms"
                    )
        return ""

"""The capture thread: samples picked by :mod:`.capture` written by :mod:`.capture_store`, off the
inference path.

A pipeline's result stage calls :meth:`Capturer.offer` with references only (the result document,
the frames it already has, its sensor windows): the rules and the budget are a few comparisons, and
the sample goes into a bounded queue (:data:`QUEUE`) or, when the queue is full, is dropped and
counted (``dropped_behind``; its budget is given back). JPEG encoding and disk writes happen on the
supervised ``capture`` thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_runtime.monitor.capture import Budget, CaptureConfig, reasons
from edge_runtime.monitor.capture_store import CaptureStore, SampleTooLargeError
from edge_runtime.sources.base import Frame
from edge_runtime.supervision import Supervised, spawn

log = logging.getLogger(__name__)

QUEUE = 8
"""Samples waiting for the capture thread, all pipelines together."""
MAX_ARMED = 100
"""Most results one ``capture.now`` may ask for."""

Sensors = list[tuple[str, list[str], npt.NDArray[Any]]]
"""Per sensor input: its name, its channels, the values as used."""


class Hooked(Protocol):
    """A pipeline, as the capture sees it."""

    name: str
    capture: Callable[[dict[str, Any], Mapping[str, Frame], Sensors], None] | None


@dataclass
class PipelineCapture:
    """One pipeline's capture: config, budget, store and counters."""

    config: CaptureConfig
    budget: Budget
    store: CaptureStore
    armed: int = 0
    offered: int = 0
    candidates: int = 0
    stored: int = 0
    dropped_behind: int = 0
    dropped_budget: int = 0
    dropped_quota: int = 0
    errors: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stats(self) -> dict[str, Any]:
        return {
            **self.store.stats(),
            "quota_bytes": self.config.quota_bytes,
            "candidates": self.candidates,
            "stored": self.stored,
            "dropped_behind": self.dropped_behind,
            "dropped_budget": self.dropped_budget,
            "dropped_quota": self.dropped_quota,
            "errors": self.errors,
            "last_error": self.last_error,
            "armed": self.armed,
            "budget_used": self.budget.used(),
        }


@dataclass
class _Job:
    pc: PipelineCapture
    t: float
    reasons: list[str]
    doc: dict[str, Any]
    frames: Mapping[str, Frame]
    sensors: Sensors


class Capturer:
    """Every pipeline's capture and the one thread that writes samples."""

    def __init__(self, drift_active: Callable[[str], bool] = lambda name: False) -> None:
        self.drift_active = drift_active
        self.pipelines: dict[str, PipelineCapture] = {}
        self.queue: queue.Queue[_Job | None] = queue.Queue(QUEUE)
        self._thread: Supervised | None = None
        self._stop = threading.Event()

    def start(
        self, configs: Mapping[str, CaptureConfig], pipelines: Sequence[Hooked], state_dir: Path
    ) -> None:
        """Open the stores of the configured pipelines, hook them, start the thread (again after a
        reload: counters start over, budgets are seeded from the samples on disk)."""
        self.stop()
        self.pipelines = {}
        for p in pipelines:
            config = configs.get(p.name)
            if config is None:
                p.capture = None
                continue
            store = CaptureStore(state_dir / "captures" / p.name, config.quota_bytes).open()
            budget = Budget(config)
            budget.seed(store.times())
            self.pipelines[p.name] = PipelineCapture(config, budget, store)
            p.capture = self.offer
        if self.pipelines:
            self._stop.clear()
            self.queue = queue.Queue(QUEUE)
            self._thread = spawn("capture", self._run, should_restart=lambda: not self._stop.is_set())

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (within ``timeout``), end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        thread.join(timeout)
        self._thread = None

    def arm(self, pipeline: str, count: int) -> int:
        """Capture the next ``count`` results of ``pipeline`` whatever the rules (``capture.now``;
        budgets still apply); returns how many are armed now."""
        pc = self.pipelines[pipeline]
        with pc.lock:
            pc.armed = min(MAX_ARMED, pc.armed + count)
            return pc.armed

    def offer(self, doc: dict[str, Any], frames: Mapping[str, Frame], sensors: Sensors) -> None:
        """On the pipeline's result stage: decide, take the budget, queue (never blocks)."""
        name = str(doc.get("pipeline"))
        pc = self.pipelines.get(name)
        if pc is None:
            return
        with pc.lock:
            pc.offered += 1
            commanded = pc.armed > 0
            if commanded:
                pc.armed -= 1
        why = reasons(pc.config, doc, drift_active=self.drift_active(name), commanded=commanded)
        if not why:
            return
        with pc.lock:
            pc.candidates += 1
        t = pc.budget.take()
        if t is None:
            with pc.lock:
                pc.dropped_budget += 1
            return
        try:
            self.queue.put_nowait(_Job(pc, t, why, doc, frames, sensors))
        except queue.Full:
            pc.budget.give_back(t)
            with pc.lock:
                pc.dropped_behind += 1

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:  # queued by stop() after the samples before it
                return
            self._write(job)

    def _write(self, job: _Job) -> None:
        pc = job.pc
        try:
            frames = _distinct(job.frames)
            images = [(name, _jpeg(frame.image, pc.config.jpeg_quality)) for name, frame in frames.items()]
            doc = {
                "pipeline": job.doc.get("pipeline"),
                "reasons": job.reasons,
                "model": job.doc.get("model"),
                "frames": {
                    name: {"seq": f.seq, "ts": round(f.t_wall, 3), "shape": list(f.image.shape)}
                    for name, f in frames.items()
                },
                # by model input name, as `edge-runtime optimize` reads a captures folder
                "inputs": {_signature_name(name): values.tolist() for name, _, values in job.sensors},
                "channels": {_signature_name(name): channels for name, channels, _ in job.sensors},
                "result": job.doc,
            }
            pc.store.write(job.t, images, doc)
        except SampleTooLargeError as exc:
            pc.budget.give_back(job.t)
            with pc.lock:
                pc.dropped_quota += 1
                pc.last_error = str(exc)
            return
        except (OSError, ValueError) as exc:
            pc.budget.give_back(job.t)
            log.error("capture of pipeline %s failed: %s", job.doc.get("pipeline"), exc)
            with pc.lock:
                pc.errors += 1
                pc.last_error = str(exc)
            return
        with pc.lock:
            pc.stored += 1

    def stats(self) -> dict[str, Any]:
        """The ``monitor.capture`` section of the health document, per pipeline."""
        return {name: pc.stats() for name, pc in self.pipelines.items()}


def _signature_name(tensor: str) -> str:
    """``serving_default_vibration:0`` -> ``vibration`` (the name the optimizer reads inputs by,
    as :mod:`edge_runtime.optimize.rewrite` and the HTTP API name them)."""
    return tensor.removeprefix("serving_default_").split(":")[0] or tensor


def _distinct(frames: Mapping[str, Frame]) -> dict[str, Frame]:
    """Each frame once, under the first name it has (a fan-in pipeline binds the triggering
    camera's frame to every camera of its trigger; the triggering one comes first)."""
    seen: set[int] = set()
    found: dict[str, Frame] = {}
    for name, frame in frames.items():
        if id(frame) not in seen:
            seen.add(id(frame))
            found[name] = frame
    return found


def _jpeg(image: npt.NDArray[np.uint8], quality: int) -> bytes:
    import cv2

    try:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error as exc:
        raise ValueError(f"JPEG encoding failed: {exc}") from exc
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(data.tobytes())

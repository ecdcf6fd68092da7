"""The device's monitoring: camera tamper checks off the inference path, and the model-quality
statistics of the results (:mod:`.quality`, fed by the daemon's emit).

One supervised thread (``monitor``) wakes ``check_hz`` times a second and looks at the newest frame
of each camera with :meth:`~edge_runtime.sources.base.FrameSource.peek` (which leaves the frame to
the pipelines). The hand-off is the camera's own latest-frame slot (depth 1): the pipelines never
wait for the monitor and the monitor holds no queue; frames it did not get to are counted as
``skipped``, and rounds that took longer than the period as ``behind``. State changes become
``source.tamper`` events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge_runtime.monitor.capture_worker import Capturer
from edge_runtime.monitor.config import MonitorConfig
from edge_runtime.monitor.drift import LiveDrift
from edge_runtime.monitor.latency import LatencyHistograms
from edge_runtime.monitor.quality import Quality
from edge_runtime.monitor.tamper import TamperDetector
from edge_runtime.sources.base import FrameSource
from edge_runtime.supervision import Supervised, spawn

log = logging.getLogger(__name__)

Event = Callable[[str, str, dict[str, Any]], None]
Listener = Callable[[str, dict[str, Any]], None]


class _Camera:
    def __init__(self, source: FrameSource, detector: TamperDetector) -> None:
        self.source = source
        self.detector = detector
        self.last_seq = 0
        self.checks = 0
        self.skipped = 0
        self.cost_ms_total = 0.0
        self.cost_ms_max = 0.0


class Monitor:
    """The device's monitoring of its sources and results (see the module docstring)."""

    def __init__(self, event: Event, listeners: list[Listener] | None = None) -> None:
        """Idle until :meth:`start`; with ``listeners`` (the daemon's result listeners) it adds
        itself there to see every emitted result."""
        self.event = event
        self.config = MonitorConfig()
        self.cameras: dict[str, _Camera] = {}
        self.quality: Quality | None = None
        self.drift: dict[str, LiveDrift] = {}
        self.drift_levels: dict[str, str] = {}
        self.latency = LatencyHistograms()
        self._drift_due = 0.0
        self.behind = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: Supervised | None = None
        self._lock = threading.Lock()
        self.capture = Capturer(lambda name: self.drift_levels.get(name) in ("watch", "drift"))
        if listeners is not None:
            listeners.append(self._on_result)

    @classmethod
    def with_listeners(cls, event: Event) -> tuple[Monitor, list[Listener]]:
        """A monitor and a list of result listeners that holds it (the daemon's)."""
        listeners: list[Listener] = []
        return cls(event, listeners), listeners

    def start(
        self,
        config: MonitorConfig,
        sources: Mapping[str, object],
        references: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> None:
        """Monitor ``sources`` and the results under ``config`` (again after a reload: the windows
        start over). ``references``: per pipeline, its first model's drift reference (or None)."""
        self.stop()
        self.config = config
        self.cameras = {}
        if config.tamper.enabled:
            for name, source in sources.items():
                if isinstance(source, FrameSource):
                    self.cameras[name] = _Camera(source, TamperDetector(config.tamper))
        self.quality = Quality(config.quality, self.event) if config.quality.enabled else None
        d = config.drift
        self.drift = {
            name: LiveDrift(ref, d.window, d.min_results)
            for name, ref in (references or {}).items()
            if ref is not None and d.enabled
        }
        self.drift_levels = {}
        if self.cameras:
            self._stop.clear()
            self._thread = spawn("monitor", self._run, should_restart=lambda: not self._stop.is_set())

    def _on_result(self, kind: str, doc: dict[str, Any]) -> None:
        if kind == "result":
            self.observe(doc)

    def stop(self, timeout: float = 2.0) -> None:
        """End the monitor thread (statistics stay readable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def rebase(self, source: str | None = None) -> list[str]:
        """Take the next frame of ``source`` (or of every camera) as its reference view."""
        names = [source] if source is not None else list(self.cameras)
        with self._lock:
            for name in names:
                self.cameras[name].detector.rebase()
        return names

    def observe(self, result: Mapping[str, Any]) -> None:
        """A result document as emitted (on the emitting thread: a few additions, no I/O unless a
        rule changes)."""
        now = time.monotonic()
        self.latency.observe(result)
        if self.quality is not None:
            self.quality.observe(result, now)
        live = self.drift.get(str(result.get("pipeline")))
        body = result.get("result") or {}
        top = body.get("top") if body.get("type") == "classification" else None
        if live is not None and top:
            live.add(str(top[0]["label"]), float(top[0]["score"]))
            if now >= self._drift_due:
                self._drift_due = now + 1.0
                self._drift_events()

    def _drift_events(self) -> None:
        """A ``monitor.drift`` event when a pipeline's level changes (ok, watch, drift)."""
        for name, live in self.drift.items():
            report = live.report()
            lvl = report["level"]
            before = self.drift_levels.get(name, "unknown")
            if lvl in {"unknown", before}:
                continue
            self.drift_levels[name] = lvl
            if before == "unknown" and lvl == "ok":
                continue
            message = f"pipeline {name}: drift level {lvl} (PSI {report['psi']})"
            (log.warning if lvl != "ok" else log.info)(message)
            self.event(
                "monitor.drift",
                message,
                {"pipeline": name, "active": lvl != "ok", "level": lvl, "previous": before, **report},
            )

    def _run(self) -> None:
        period = 1.0 / self.config.tamper.check_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            self.check_once()
            self.rounds += 1
            next_t += period
            now = time.monotonic()
            if now > next_t:  # this round overran the period: skip the rounds it ate
                self.behind += 1
                next_t = now + period if now - started > period else next_t + period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def check_once(self) -> int:
        """Check the newest frame of every camera that has a new one; returns how many were checked."""
        checked = 0
        for name, cam in self.cameras.items():
            frame = cam.source.peek()
            if frame is None or frame.seq <= cam.last_seq:
                continue
            if cam.last_seq and frame.seq > cam.last_seq + 1:
                cam.skipped += frame.seq - cam.last_seq - 1
            cam.last_seq = frame.seq
            t0 = time.perf_counter()
            with self._lock:
                changes = cam.detector.update(frame.image, frame.t_mono)
            cost = (time.perf_counter() - t0) * 1000
            cam.checks += 1
            cam.cost_ms_total += cost
            cam.cost_ms_max = max(cam.cost_ms_max, cost)
            checked += 1
            for state, active, value in changes:
                verb = "is" if active else "is no longer"
                message = f"camera {name} {verb} {state}"
                log.warning(message) if active else log.info(message)
                self.event(
                    "source.tamper",
                    message,
                    {"source": name, "state": state, "active": active, "value": round(value, 3)},
                )
        return checked

    def stats(self) -> dict[str, Any]:
        """The ``monitor`` section of the health document."""
        cameras: dict[str, Any] = {}
        for name, cam in self.cameras.items():
            with self._lock:
                detector = cam.detector.stats()
            cameras[name] = {
                **detector,
                "checks": cam.checks,
                "skipped": cam.skipped,
                "check_ms_mean": round(cam.cost_ms_total / cam.checks, 4) if cam.checks else None,
                "check_ms_max": round(cam.cost_ms_max, 4),
            }
        quality = None if self.quality is None else self.quality.stats(time.monotonic())
        drift = {name: live.report() for name, live in self.drift.items()}
        return {
            "tamper": cameras,
            "behind": self.behind,
            "quality": quality,
            "drift": drift,
            "latency_histograms": self.latency.stats(),
            "capture": self.capture.stats(),
        }

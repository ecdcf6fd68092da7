"""The device's monitoring: camera tamper checks off the inference path, and the model-quality
statistics of the results (:mod:`.quality`, fed by the daemon's emit).

One supervised thread (``monitor``) wakes ``check_hz`` times a second and looks at the newest frame
of each camera with :meth:`~edge_runtime.sources.base.FrameSource.peek` (which leaves the frame to
the pipelines). The hand-off is the camera's own latest-frame slot (depth 1): the pipelines never
wait for the monitor and the monitor holds no queue; frames it did not get to are counted as
``skipped``, and rounds that took longer than the period as ``behind``. State changes become
``source.tamper`` events. Each camera is checked under its own tamper options
(:meth:`~.config.TamperConfig.for_source`).

Drift: each pipeline's results are compared with the :class:`Reference` of the model serving it;
:meth:`Monitor.set_reference` replaces it when a model is swapped (an update, a rollback) and
starts a new window, and results of any other model are not counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_runtime.monitor.capture_worker import Capturer
from edge_runtime.monitor.config import MonitorConfig
from edge_runtime.monitor.drift import OutputDrift, output_drift
from edge_runtime.monitor.inputdrift import LiveInputDrift
from edge_runtime.monitor.latency import LatencyHistograms
from edge_runtime.monitor.quality import Quality
from edge_runtime.monitor.tamper import TamperDetector
from edge_runtime.sources.base import FrameSource
from edge_runtime.supervision import Supervised, spawn

log = logging.getLogger(__name__)

Event = Callable[[str, str, dict[str, Any]], None]
Listener = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Reference:
    """A pipeline's drift reference and what it belongs to."""

    doc: dict[str, Any]
    """The reference (checked by :func:`edge_runtime.monitor.drift.checked`)."""
    sha256: str
    """The sha256 of its canonical JSON: health names the reference drift is computed against."""
    model_sha256: str | None = None
    """The model it describes: results of another model are not counted (None: every result)."""
    origin: str = "manifest"
    """Where it came from: ``manifest`` (beside the model file) or ``update`` (the model store)."""


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
        self.drift: dict[str, OutputDrift] = {}
        self.input_drift: dict[str, LiveInputDrift] = {}
        self.references: dict[str, Reference] = {}
        self.drift_levels: dict[tuple[str, str], str] = {}
        self.latency = LatencyHistograms()
        self._drift_due = 0.0
        self.behind = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: Supervised | None = None
        self._lock = threading.Lock()
        self.capture = Capturer(self.drifting)
        if listeners is not None:
            listeners.append(self._on_result)

    def drifting(self, pipeline: str) -> bool:
        """Whether ``pipeline``'s output or input drift level is ``watch`` or ``drift``."""
        return any(
            self.drift_levels.get((pipeline, side)) in ("watch", "drift") for side in ("output", "input")
        )

    @classmethod
    def with_listeners(cls, event: Event) -> tuple[Monitor, list[Listener]]:
        """A monitor and a list of result listeners that holds it (the daemon's)."""
        listeners: list[Listener] = []
        return cls(event, listeners), listeners

    def start(
        self,
        config: MonitorConfig,
        sources: Mapping[str, object],
        references: Mapping[str, Reference | None] | None = None,
    ) -> None:
        """Monitor ``sources`` and the results under ``config`` (again after a reload: the windows
        start over). ``references``: per pipeline, its first model's drift reference (or None)."""
        self.stop()
        self.config = config
        self.cameras = {}
        if config.tamper.enabled:
            for name, source in sources.items():
                options = config.tamper.for_source(name)
                if isinstance(source, FrameSource) and options.enabled:
                    self.cameras[name] = _Camera(source, TamperDetector(options))
        self.quality = Quality(config.quality, self.event) if config.quality.enabled else None
        self.drift, self.input_drift, self.references, self.drift_levels = {}, {}, {}, {}
        for name, ref in (references or {}).items():
            self.set_reference(name, ref)
        if self.cameras:
            self._stop.clear()
            self._thread = spawn("monitor", self._run, should_restart=lambda: not self._stop.is_set())

    def set_reference(self, pipeline: str, reference: Reference | None) -> None:
        """Compare ``pipeline``'s results (and inputs, when the reference has ``inputs``) with
        ``reference`` from now on (None: no drift), in new windows: what the model it replaced
        produced is dropped."""
        d = self.config.drift
        for side in ("output", "input"):
            self.drift_levels.pop((pipeline, side), None)
        self.drift.pop(pipeline, None)
        self.input_drift.pop(pipeline, None)
        self.references.pop(pipeline, None)
        if reference is None or not d.enabled:
            return
        doc = reference.doc
        self.references[pipeline] = reference
        self.drift[pipeline] = output_drift(doc, d.window, d.min_results)
        if doc.get("inputs"):
            self.input_drift[pipeline] = LiveInputDrift(
                doc["inputs"],
                every=d.input_every,
                window=d.input_window,
                min_samples=d.input_min_samples,
                max_values=d.input_values,
            )
        log.info(
            "pipeline %s: drift against reference %s (%s) of model %s",
            pipeline, reference.sha256[:12], reference.origin, (reference.model_sha256 or "any")[:12],
        )  # fmt: skip

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
        """Take the next frame of ``source`` (or of every camera) as its reference view; returns
        the cameras rebased. KeyError for a source that is not a camera under tamper checks."""
        if source is not None and source not in self.cameras:
            checked = ", ".join(sorted(self.cameras)) or "none"
            raise KeyError(f"no camera {source!r} under tamper checks; cameras checked: {checked}")
        names = [source] if source is not None else list(self.cameras)
        with self._lock:
            for name in names:
                self.cameras[name].detector.rebase()
        log.info("tamper reference view of %s taken again from the next frame", ", ".join(names))
        return names

    def observe(self, result: Mapping[str, Any]) -> None:
        """A result document as emitted (on the emitting thread: a few additions, no I/O unless a
        rule changes)."""
        now = time.monotonic()
        self.latency.observe(result)
        if self.quality is not None:
            self.quality.observe(result, now)
        name = str(result.get("pipeline"))
        live, ref = self.drift.get(name), self.references.get(name)
        model = result.get("model")
        model_sha = model.get("sha256") if isinstance(model, dict) else None
        if ref is not None and ref.model_sha256 and model_sha and model_sha != ref.model_sha256:
            live = None  # a result of a model the reference does not describe (a swap in flight)
        body = result.get("result") or {}
        if live is not None and isinstance(body, Mapping):
            live.observe(body)
        if (live is not None or self.input_drift) and now >= self._drift_due:
            self._drift_due = now + 1.0
            self._drift_events()

    def _drift_events(self) -> None:
        """A ``monitor.drift`` event when a pipeline's output or input level changes (ok, watch,
        drift; ``side`` says which); the first ``ok`` is not announced."""
        sides: list[tuple[str, str, OutputDrift | LiveInputDrift]] = [  # copies: a swap may change them
            *((name, "output", live) for name, live in list(self.drift.items())),
            *((name, "input", live) for name, live in list(self.input_drift.items())),
        ]
        for name, side, live in sides:
            report = live.report()
            lvl = report["level"]
            before = self.drift_levels.get((name, side), "unknown")
            if lvl in {"unknown", before}:
                continue
            self.drift_levels[(name, side)] = lvl
            if before == "unknown" and lvl == "ok":
                continue
            what = "drift level" if side == "output" else "input drift level"
            message = f"pipeline {name}: {what} {lvl} (PSI {report['psi']})"
            (log.warning if lvl != "ok" else log.info)(message)
            self.event(
                "monitor.drift",
                message,
                {
                    "pipeline": name,
                    "side": side,
                    "active": lvl != "ok",
                    "level": lvl,
                    "previous": before,
                    **report,
                },
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
        drift: dict[str, Any] = {}
        for name, live in list(self.drift.items()):
            ref = self.references.get(name)
            drift[name] = live.report()
            if ref is not None:
                drift[name].update(
                    reference_sha256=ref.sha256, reference_origin=ref.origin, model_sha256=ref.model_sha256
                )
        for name, live_in in list(self.input_drift.items()):
            drift[name] = {**drift.get(name, {}), "input": live_in.report()}
        return {
            "tamper": cameras,
            "behind": self.behind,
            "quality": quality,
            "drift": drift,
            "latency_histograms": self.latency.stats(),
            "capture": self.capture.stats(),
        }

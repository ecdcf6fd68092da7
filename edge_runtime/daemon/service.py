"""The daemon: builds sources, pipelines and reporting from a Config and runs them until stopped.

The main thread owns signals, the stop conditions (``--max-results``, ``--duration``, every pipeline
finished) and shutdown (``stopping``; in-flight inferences end; sources close; the outbox flushed
while the broker is there; ``offline``). A health timer publishes the retained health."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edge_runtime import __version__
from edge_runtime.config import Config, load_config
from edge_runtime.daemon.commands import DaemonCommands
from edge_runtime.daemon.preflight import preflight
from edge_runtime.daemon.runtime import ResultBudget, Sink, build_runtime, start_runtime, stop_runtime
from edge_runtime.daemon.servers import LocalServers
from edge_runtime.daemon.update_host import ServiceUpdateHost
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.health import HealthReporter
from edge_runtime.healthwatch import DaemonHealth
from edge_runtime.monitor.service import Monitor
from edge_runtime.pipeline import Pipeline, load_model
from edge_runtime.pipeline.runner import shared_loader
from edge_runtime.redaction import redact_text
from edge_runtime.reporting.reporter import Reporter
from edge_runtime.runtime.shared import ModelRegistry
from edge_runtime.sources.base import Source
from edge_runtime.supervision import SUPERVISOR, spawn
from edge_runtime.systemd import Notifier, watchdog_timeout
from edge_runtime.updates.updater import Updater, store_config

log = logging.getLogger(__name__)


class Service:
    """One running daemon."""

    def __init__(
        self,
        config: Config,
        sinks: Sequence[Sink],
        *,
        config_path: Path | None = None,
        overrides: Sequence[str] = (),
        profile: str | None = None,
        max_results: int | None = None,
        duration_s: float | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = list(overrides)
        self.profile = profile
        self.sinks = list(sinks)
        self.duration_s = duration_s
        self.budget = ResultBudget(max_results)
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.sources: dict[str, Source] = {}
        self.pipelines: list[Pipeline] = []
        self.reporter: Reporter | None = None
        self.health: HealthReporter | None = None
        self.updater: Updater | None = None
        self.started_mono = time.monotonic()
        self.reloads = 0
        self._emit_lock = threading.Lock()
        self.emitted = 0
        self._seqs: dict[str, int] = {}
        self._swap_lock = threading.RLock()
        self._health_thread: threading.Thread | None = None
        self._servers: LocalServers | None = None
        self.notifier = Notifier()
        self.watchdog_s = watchdog_timeout()
        self._reload_requested = threading.Event()
        self.exit_code = 0
        self._unhealthy = ""
        self.watch: DaemonHealth | None = None  # state-change events, READY gate, pauses, reloads
        self.monitor, self.result_listeners = Monitor.with_listeners(self.event)  # and the HTTP API's
        self.models = ModelRegistry()  # one loaded model per distinct file and settings, when shared

    def build(self) -> None:
        """Reporting first (so that build problems are reported), then sources and pipelines."""
        self.reporter = Reporter(self.config, __version__, [p.name for p in self.config.pipelines])
        SUPERVISOR.forget()
        SUPERVISOR.on_crash = self._thread_crashed
        self.updater = Updater(ServiceUpdateHost(self))
        self.watch = watch = DaemonHealth(self.reporter.event, self.config)
        watch.attach_store(self.updater.store)
        DaemonCommands(self, self.updater).register(self.reporter.dispatcher)
        self.config = store_config(self.config, self.updater.store, startup=True)
        self.sources, self.pipelines = self._build_runtime(self.config)
        self.health = HealthReporter(
            version=__version__,
            device=self.config.device.id,
            state_dir=self.config.device.state_dir,
            pipelines=lambda: {p.name: p.stats() for p in self.pipelines},
            sources=lambda: {name: s.stats() for name, s in self.sources.items()},
            outbox=self.reporter.outbox_stats,
            mqtt=self.reporter.stats,
            extra=lambda: {**watch.extra(), "monitor": self.monitor.stats()},
            limits=watch.limits,
            max_bytes=self.config.health.max_bytes,
        )
        from edge_runtime.daemon.http_host import ServiceHost

        self._servers = LocalServers(self.config, lambda: ServiceHost(self))

    def _build_runtime(self, config: Config) -> tuple[dict[str, Source], list[Pipeline]]:
        assert self.reporter is not None
        reporter = self.reporter
        self.models = ModelRegistry()
        return build_runtime(
            config,
            emit=self._emit_many,
            event=reporter.event,
            seq_start=lambda name: max(reporter.last_seq(name), self._seqs.get(name, 0)),
            budget=self.budget,
            load=shared_loader(self.models) if config.runtime.share_models else load_model,
        )

    def _emit_many(self, results: list[dict[str, Any]]) -> None:
        """Results in order: stored in the outbox in one transaction, then to sinks and listeners."""
        with self._emit_lock:
            if self.reporter is not None:
                self.reporter.publish_many(results)  # the outbox first: nothing is lost after this
            self.emitted += len(results)
            for result in results:
                self._seqs[result["pipeline"]] = result["seq"]
                for sink in self.sinks:
                    sink.publish(result)
                for listener in self.result_listeners:
                    listener("result", result)
            if self.budget.limit is not None and self.emitted >= self.budget.limit:
                self.stop("max results reached")

    def event(self, kind: str, message: str, fields: dict[str, Any]) -> None:
        if self.reporter is not None:
            self.reporter.event(kind, message, fields)

    # -- running -----------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested.set()
        else:
            self.stop(signal.Signals(signum).name)

    def problems(self) -> list[str]:
        """What keeps the watchdog from being fed: stuck or dead pipelines, wedged sources,
        threads the supervisor gave up."""
        limit = max((self.watchdog_s or 30.0) / 2, 1.0)
        with self._swap_lock:
            found = [p.stuck(limit) for p in self.pipelines]
            found += [s.wedged(limit) for s in self.sources.values()]
        return SUPERVISOR.failed() + [f for f in found if f]

    def _thread_crashed(self, component: str, error: str, crashes: int, gave_up: bool) -> None:
        """The supervisor's report of a crashed thread: an event, and the daemon's end when the
        thread cannot be restarted (exit status 1: the service manager starts it again)."""
        what = "given up, the daemon stops" if gave_up else "restarted"
        self.event(
            "thread.crashed",
            f"thread {component} crashed ({error}); {what}",
            {"thread": component, "error": error, "crashes": crashes, "gave_up": gave_up},
        )
        if gave_up:
            self.exit_code = 1
            self.stop(f"thread {component} cannot be restarted: {error}")

    def _status_line(self) -> str:
        health = self.health
        return "starting" if health is None else redact_text(health.summary(health.report(mark=False)))

    def _watchdog_tick(self) -> None:
        problems = [] if self.watch is not None and self.watch.pause.settling() else self.problems()
        if problems:
            if problems[0] != self._unhealthy:
                log.error("watchdog: not pinging systemd: %s", "; ".join(problems))
                if self.reporter is not None:
                    self.reporter.event("watchdog.stuck", "; ".join(problems), {})
            self._unhealthy = problems[0]
            return
        if self._unhealthy:
            log.info("watchdog: every pipeline makes progress again")
        self._unhealthy = ""
        self.notifier.watchdog()

    def _do_reload(self) -> None:
        self.notifier.reloading()
        try:
            summary = self.reload()
        except EdgeRuntimeError as exc:  # reported by reload() as config.reload_failed
            log.error("SIGHUP reload failed, still running the previous config: %s", exc)
            self.notifier.ready(f"reload failed: {str(exc).splitlines()[0]}")
            return
        except Exception as exc:  # a bug must not end the main thread: the old config goes on
            log.exception("SIGHUP reload failed unexpectedly, still running the previous config")
            self.event("config.reload_failed", f"reload failed: {type(exc).__name__}: {exc}", {})
            self.notifier.ready("reload failed")
            return
        log.info("SIGHUP reload: %s", summary)
        self.notifier.ready(self._status_line())

    def start(self) -> None:
        assert self.reporter is not None
        self.reporter.start()
        self._start_runtime()
        self._health_thread = spawn(
            "health", self._health_loop, should_restart=lambda: not self.stop_event.is_set()
        )
        assert self._servers is not None and self.health is not None
        self._servers.start(self.health, self.reporter.event)
        log.info(
            "edge-runtime %s running: device %s, %d pipelines, %d sources, mqtt %s",
            __version__, self.config.device.id, len(self.pipelines), len(self.sources),
            f"{self.config.mqtt.host}:{self.config.mqtt.port}" if self.config.mqtt.enabled else "off",
        )  # fmt: skip

    def _start_runtime(self) -> None:
        start_runtime(self.sources.values(), self.pipelines, self.monitor, self.config, self.updater)

    def _stop_runtime(self, timeout: float = 2.0) -> None:
        stop_runtime(self.sources.values(), self.pipelines, timeout, self.monitor)

    def publish_health(self) -> dict[str, Any]:
        assert self.health is not None and self.reporter is not None
        report = self.health.report()
        report["reloads"] = self.reloads
        report["threads"] = {"crashes": SUPERVISOR.total_crashes(), "crashed": SUPERVISOR.stats()}
        if self.watch is not None:
            self.watch.changes.update_doc(report)
        self.reporter.publish_health(report)
        if self._servers is not None:
            self._servers.refresh(report)
        return report

    def _health_loop(self) -> None:
        """The health timer: the periodic health report, and the metrics snapshot between reports
        (scrapes are served that snapshot and never build a report themselves)."""
        interval = self.config.health.interval_s
        next_t = time.monotonic() + min(interval, 2.0)
        while not self.stop_event.wait(self._health_wait(next_t)):
            try:
                if self._servers is not None and time.monotonic() < next_t:
                    self._servers.refresh()
                    continue
                self.publish_health()
            except (EdgeRuntimeError, OSError, ValueError) as exc:
                log.error("health report failed: %s", exc)
            next_t = max(next_t + self.config.health.interval_s, time.monotonic())

    def _health_wait(self, next_report: float) -> float:
        due = self._servers.metrics_due_in() if self._servers is not None else None
        return max(0.0, min(next_report - time.monotonic(), float("inf") if due is None else due))

    def run(self, install_signals: bool = True) -> int:
        """Build, start, wait for a stop condition, shut down; returns the exit code."""
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_signal)
        try:
            self.build()
        except BaseException:
            if self.reporter is not None:
                self.reporter.stop(flush_timeout=1.0)
            raise
        self.start()
        self._announce_ready()
        ping_every = self.watchdog_s / 2 if self.watchdog_s else None
        next_ping = time.monotonic()
        next_status = time.monotonic() + 5.0
        try:
            while not self.stop_event.wait(0.1):
                now = time.monotonic()
                self._announce_ready()
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self._do_reload()
                if ping_every is not None and now >= next_ping:
                    self._watchdog_tick()
                    next_ping = now + ping_every
                if self.notifier.enabled and now >= next_status:
                    self.notifier.status(self._status_line())
                    next_status = now + 5.0
                if self.duration_s is not None and now - self.started_mono >= self.duration_s:
                    self.stop("duration reached")
                elif self.pipelines and all(p.finished for p in self.pipelines):
                    self.stop("every pipeline finished")
        finally:
            self.notifier.stopping()
            self.shutdown(self.config.device.stop_timeout_s)
        return self.exit_code

    def _announce_ready(self) -> None:
        """Each main-loop turn: pause detection, and READY=1 once every pipeline produced a result
        or the start grace passed."""
        assert self.watch is not None
        limit = max((self.watchdog_s or 30.0) / 2, 1.0)  # the stuck limit of problems()
        self.watch.pause.tick(settle_s=limit, min_gap_s=limit / 2)
        with self._swap_lock:
            stats = {p.name: {"results": p.results, "finished": p.finished} for p in self.pipelines}
        if self.watch.ready(stats, time.monotonic() - self.started_mono):
            self.notifier.ready(self._status_line())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop within ``timeout`` s: pipelines (the inference in flight ends), sources, then
        the outbox is flushed while the broker is there and ``offline`` is published."""
        deadline = time.monotonic() + timeout
        log.info("stopping: %s", self.stop_reason or "shutdown")
        self.stop_event.set()
        if self.reporter is not None:
            self.reporter.announce_stopping()
        with self._swap_lock:
            self._stop_runtime(min(2.0, timeout / 3))
        for sink in self.sinks:
            sink.close()
        if self._servers is not None:
            self._servers.stop()
        if self.reporter is not None:
            self.reporter.stop(flush_timeout=max(0.5, deadline - time.monotonic() - 1.5))
            log.info("reporting mqtt stats: %s", json.dumps(self.reporter.stats()))
            log.info("reporting outbox stats: %s", json.dumps(self.reporter.outbox_stats()))
        for pipeline in self.pipelines:
            log.info("pipeline %s stats: %s", pipeline.name, json.dumps(pipeline.stats()))
        for name, source in self.sources.items():
            log.info("source %s stats: %s", name, json.dumps(source.stats()))

    # -- reload ------------------------------------------------------------------------------------

    def reload(self) -> str:
        """Re-read the config file; restart sources and pipelines on it. The MQTT connection
        stays unless its section changed. A config that does not load (bad TOML, a schema error,
        a missing model) or does not build leaves the old one running, with a
        ``config.reload_failed`` event and the health degraded until a reload succeeds."""
        try:
            summary = self._reload()
        except EdgeRuntimeError as exc:
            if self.watch is not None:
                self.watch.reloaded(exc)
            raise
        if self.watch is not None:
            self.watch.reloaded(None)
        return summary

    def _reload(self) -> str:
        if self.config_path is None:
            raise EdgeRuntimeError(
                "reload: this daemon runs the embedded default; there is no file to re-read"
            )
        assert self.reporter is not None
        with self._swap_lock:
            if self.stop_event.is_set():
                raise EdgeRuntimeError("reload: the daemon is stopping")
            old_config = self.config
            try:  # check and build everything (models loaded, MQTT link made) before touching what runs
                new = load_config(self.config_path, self.overrides, profile=self.profile)
                preflight(new, str(self.config_path))
                # Probations on the pipelines being replaced end (no commit) and none starts before
                # the store is read for the new ones: what they serve and what is committed agree.
                for pipeline in self.pipelines:
                    pipeline.watch_slot.block("is being replaced: the config was reloaded")
                if self.updater is not None:
                    new = store_config(new, self.updater.store, startup=False)
                sources, pipelines = self._build_runtime(new)
                if new.mqtt != old_config.mqtt or new.device != old_config.device:
                    self.reporter.replace_link(new)
            except (EdgeRuntimeError, OSError, ValueError) as exc:
                for pipeline in self.pipelines:
                    pipeline.watch_slot.allow()
                message = " ".join(str(exc).split())
                log.error("reload failed, the running config goes on: %s", message)
                # the config.reload_failed event: reload() sends it, for this and every other stage
                if isinstance(exc, EdgeRuntimeError):
                    raise
                raise EdgeRuntimeError(f"reload failed: {message}") from exc
            self._stop_runtime()
            for pipeline in pipelines:  # results the old pipelines made meanwhile keep their seq
                pipeline.seq = max(
                    pipeline.seq, self._seqs.get(pipeline.name, 0), self.reporter.last_seq(pipeline.name)
                )
            self.sources, self.pipelines, self.config = sources, pipelines, new
            self._start_runtime()
            self.reloads += 1
        self.reporter.event("config.reloaded", f"config reloaded from {self.config_path}", {})
        return f"{len(self.pipelines)} pipelines, {len(self.sources)} sources"

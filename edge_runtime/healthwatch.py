"""The daemon's side of the derived health: events on every state change, the READY=1 gate, and
recognising a process that was stopped (SIGSTOP, a suspended machine).

Small, clock-injected classes the service calls from its loops; the derivation itself is
:mod:`edge_runtime.healthstate`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime.healthstate import OK, DeviceHealth, HealthLimits

if TYPE_CHECKING:
    from edge_runtime.config.schema import Config

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, dict[str, Any]], None]


class StateChanges:
    """Emits a ``health.state`` event for the device and for each component whose state changed
    (a new component counts when it is not ok; a component that went away is not reported)."""

    def __init__(self, event: EventSink) -> None:
        self.event = event
        self.device: str | None = None
        self.problems: list[str] = []  # of the last report
        self._components: dict[str, str] = {}
        self.changes = 0

    def update(self, health: DeviceHealth) -> None:
        self.update_doc(
            {"state": health.state, "problems": list(health.reasons), "components": health.as_dict()}
        )

    def update_doc(self, doc: Mapping[str, Any]) -> None:
        """From a health document's ``state``, ``problems`` and ``components``."""
        seen: dict[str, str] = {}
        components: Mapping[str, Mapping[str, Any]] = doc.get("components") or {}
        for key, c in components.items():
            state = str(c.get("state", OK))
            seen[key] = state
            before = self._components.get(key, OK)
            if state != before:
                self._emit(key, before, state, c.get("reasons") or ())
        self._components = seen
        before_device = self.device or OK
        state = str(doc.get("state", OK))
        if state != before_device:
            self._emit("device", before_device, state, doc.get("problems") or ())
        self.device, self.problems = state, list(doc.get("problems") or [])

    def _emit(self, key: str, before: str, after: str, reasons: Iterable[str]) -> None:
        listed = list(reasons)
        self.changes += 1
        why = f": {listed[0]}" + (f" (+{len(listed) - 1} more)" if len(listed) > 1 else "") if listed else ""
        message = f"{key} is {after} (was {before}){why}"
        level = logging.INFO if after == OK else logging.WARNING
        log.log(level, "health: %s", message)
        self.event(
            "health.state", message, {"component": key, "state": after, "previous": before, "reasons": listed}
        )


def ready_to_announce(pipelines: Mapping[str, Mapping[str, Any]], elapsed_s: float, grace_s: float) -> str:
    """Why READY=1 may be sent now ("" while not yet): every pipeline produced a result, or the
    start grace passed (the health then says which pipeline has none)."""
    waiting = [name for name, p in pipelines.items() if not p.get("results") and not p.get("finished")]
    if not waiting:
        return "every pipeline produced a result"
    if elapsed_s >= grace_s:
        return f"start grace of {grace_s:g} s passed; no result yet from {', '.join(sorted(waiting))}"
    return ""


class PauseDetector:
    """Sees a gap in a loop that runs every ``period_s``: the whole process was stopped (SIGSTOP)
    or the machine suspended. For ``settle_s`` after such a gap, progress checks (the watchdog's
    "stuck") are not judged: every thread's last heartbeat is as old as the pause."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.clock = clock
        self.pauses = 0
        self.last_pause_s = 0.0
        self._last = clock()
        self._settle_until = float("-inf")

    def tick(self, settle_s: float, min_gap_s: float = 0.0) -> float:
        """Call once per loop turn; returns the gap seen when it was a pause, else 0. A gap counts
        from ``min_gap_s`` (at least 1 s and five periods): the watchdog passes half its stuck
        limit, so that a loaded machine's scheduling delays do not hide a real wedge."""
        now = self.clock()
        gap = now - self._last
        self._last = now
        if gap > max(1.0, 5 * self.period_s, min_gap_s):
            self.pauses += 1
            self.last_pause_s = gap
            self._settle_until = now + settle_s
            log.warning(
                "the process did not run for %.1f s (stopped or suspended); progress checks wait %.1f s",
                gap,
                settle_s,
            )
            return gap
        return 0.0

    def settling(self) -> bool:
        return self.clock() < self._settle_until


class ProblemStore(Protocol):
    """A store that records what is wrong with it per pipeline (the model store)."""

    problems: dict[str, str]
    on_problem: Callable[[str, str], None] | None


class DaemonHealth:
    """What the daemon adds to its health: the model store's problems and the last reload's outcome
    (for :func:`~edge_runtime.healthstate.assess`), their events, the state-change events, the
    READY=1 gate and the pause detector. The service holds one and calls it from a few hooks."""

    def __init__(self, event: EventSink, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        h = config.health
        self.event = event
        self.grace_s = h.start_grace_s
        self.limits = HealthLimits(
            start_grace_s=h.start_grace_s,
            stale_s=h.stale_s,
            parse_error_share=h.parse_error_share,
            disk_reserve_bytes=config.outbox.reserve_bytes,
            min_memory_available=h.min_memory_available,
        )
        self.changes = StateChanges(event)
        self.pause = PauseDetector(0.1, clock)
        self.reload: dict[str, Any] | None = None
        self.store_problems: Callable[[], dict[str, str]] = dict
        self.ready_note = ""
        """Why READY=1 was sent ("" before)."""

    def extra(self) -> dict[str, Any]:
        """The health document's ``model_store`` and ``reload`` sections."""
        return {"model_store": {"problems": self.store_problems()}, "reload": self.reload}

    def attach_store(self, store: ProblemStore) -> None:
        """Report the store's problems: those found before (the store is read early) and later."""
        self.store_problems = store.problems.copy
        store.on_problem = self.store_problem
        for pipeline, text in sorted(store.problems.items()):
            self.store_problem(pipeline, text)

    def store_problem(self, pipeline: str, text: str) -> None:
        self.event("model.store_broken", f"model store {pipeline}: {text}", {"pipeline": pipeline})

    def reloaded(self, error: Exception | None) -> None:
        """Record a reload's outcome; a failure (whatever its stage) is a ``config.reload_failed`` event."""
        if error is None:
            self.reload = {"ok": True, "error": "", "ts": round(time.time(), 3)}
            return
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.reload = {"ok": False, "error": first, "ts": round(time.time(), 3)}
        message = " ".join(str(error).split()).removeprefix("reload failed: ")
        self.event("config.reload_failed", f"reload failed: {message}", {"error": first})

    def ready(self, pipelines: Mapping[str, Mapping[str, Any]], elapsed_s: float) -> str:
        """The reason to send READY=1 now, once ("" before it is time, and after it was sent)."""
        if self.ready_note:
            return ""
        self.ready_note = ready_to_announce(pipelines, elapsed_s, self.grace_s)
        if self.ready_note:
            log.info("ready: %s", self.ready_note)
        return self.ready_note

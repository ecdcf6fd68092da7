"""Supervised threads: no thread of the daemon may die silently.

Every long-lived thread the daemon starts (MQTT network and forwarder, command handling, health,
each source's reader, each pipeline's worker, invoke and result stages, metrics, updates) is a
:class:`Supervised` thread of the process's :data:`SUPERVISOR`. When its body raises anything it
did not handle itself:

1. the exception is logged with its traceback (once per distinct error of that component; a
   repeat is one line with the count),
2. it is reported through :attr:`Supervisor.on_crash` (the daemon turns it into a
   ``thread.crashed`` event) and counted in :meth:`Supervisor.stats` (health),
3. the body is run again after a backoff (0.1 s doubling to 5 s), unless the owner is stopping
   (``should_restart`` is false) or the component was started with ``restart=False``,
4. a component that crashed more than ``max_restarts`` times within ``window_s`` is given up:
   :meth:`Supervisor.failed` names it, the daemon stops feeding the systemd watchdog and exits
   with status 1, so the service manager restarts the whole process.

So "alive but doing nothing" cannot last: a thread either runs, is being restarted, or the
daemon is on its way down. A body that returns normally ends its component for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CrashReport = Callable[[str, str, int, bool], None]
"""``on_crash(component, error, crashes, gave_up)``."""


@dataclass
class _State:
    name: str
    restart: bool
    crashes: int = 0
    recent: list[float] = field(default_factory=list)  # monotonic times of crashes in the window
    last_error: str = ""
    state: str = "running"  # running | restarting | stopped | failed
    logged: dict[str, int] = field(default_factory=dict)


class Supervisor:
    """The registry of supervised components (threads) of one process."""

    def __init__(self, *, max_restarts: int = 5, window_s: float = 60.0, max_backoff_s: float = 5.0) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.max_backoff_s = max_backoff_s
        self.on_crash: CrashReport | None = None
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    def thread(
        self,
        name: str,
        target: Callable[[], object],
        *,
        restart: bool = True,
        should_restart: Callable[[], bool] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> Supervised:
        """A daemon thread named ``name`` that runs ``target`` under supervision (not started).

        ``should_restart`` (default: always) is asked after a crash: false when the owner is
        stopping. ``on_exit`` runs once when the component ends for good (returned, not restarted,
        or given up), on its own thread.
        """
        return Supervised(self, name, target, restart, should_restart, on_exit)

    # -- what the daemon reads ------------------------------------------------------------------

    def failed(self) -> list[str]:
        """Why each given-up component failed (empty while everything runs or restarts)."""
        with self._lock:
            return [
                f"thread {s.name} crashed {len(s.recent)} times in {self.window_s:g} s: {s.last_error}"
                for s in self._states.values()
                if s.state == "failed"
            ]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per component that ever crashed: state, crash count, last error."""
        with self._lock:
            return {
                s.name: {"state": s.state, "crashes": s.crashes, "last_error": s.last_error}
                for s in self._states.values()
                if s.crashes
            }

    def total_crashes(self) -> int:
        with self._lock:
            return sum(s.crashes for s in self._states.values())

    def forget(self) -> None:
        """Drop every component that is not running (a new daemon in the same process)."""
        with self._lock:
            self._states = {k: s for k, s in self._states.items() if s.state in ("running", "restarting")}

    # -- used by Supervised -----------------------------------------------------------------------

    def _register(self, name: str, restart: bool) -> _State:
        with self._lock:
            state = _State(name, restart)
            self._states[name] = state
            return state

    def _ended(self, state: _State) -> None:
        with self._lock:
            if state.state != "failed":
                state.state = "stopped"
            if state.state == "stopped" and not state.crashes and self._states.get(state.name) is state:
                del self._states[state.name]

    def _crashed(self, state: _State, exc: BaseException) -> float | None:
        """Record a crash; the delay before the restart, or None when the component is given up
        (or must not restart)."""
        now = time.monotonic()
        error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            state.crashes += 1
            state.recent = [t for t in state.recent if now - t <= self.window_s] + [now]
            state.last_error = error
            seen = state.logged.get(error, 0)
            state.logged[error] = seen + 1
            if len(state.logged) > 20:  # bounded: keep the most recent distinct errors
                state.logged.pop(next(iter(state.logged)))
            give_up = state.restart and len(state.recent) > self.max_restarts
            state.state = "failed" if give_up else ("restarting" if state.restart else "stopped")
            crashes = state.crashes
        if seen == 0:
            log.error("thread %s crashed: %s", state.name, error, exc_info=exc)
        else:
            log.error("thread %s crashed again (%d times): %s", state.name, seen + 1, error)
        if give_up:
            log.critical(
                "thread %s crashed %d times within %g s; giving up: the daemon stops",
                state.name, len(state.recent), self.window_s,
            )  # fmt: skip
        report = self.on_crash
        if report is not None:
            try:
                report(state.name, error, crashes, give_up)
            except Exception:  # the report must not take the thread's restart down with it
                log.exception("thread %s: reporting its crash failed", state.name)
        if give_up or not state.restart:
            return None
        return float(min(self.max_backoff_s, 0.1 * 2 ** (len(state.recent) - 1)))


class Supervised(threading.Thread):
    """A daemon thread whose body is restarted after an unexpected exception (see the module)."""

    def __init__(
        self,
        supervisor: Supervisor,
        name: str,
        target: Callable[[], object],
        restart: bool,
        should_restart: Callable[[], bool] | None,
        on_exit: Callable[[], None] | None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.supervisor = supervisor
        self._body = target
        self._restart = restart
        self._should_restart = should_restart or (lambda: True)
        self._on_exit = on_exit
        self._stopping = threading.Event()
        self.crashes = 0

    def stop_restarting(self) -> None:
        """No restart after the next crash (the owner is stopping); wakes a pending backoff."""
        self._stopping.set()

    def run(self) -> None:
        state = self.supervisor._register(self.name, self._restart)
        try:
            while True:
                try:
                    self._body()
                    return
                except BaseException as exc:
                    self.crashes += 1
                    delay = self.supervisor._crashed(state, exc)
                    if delay is None or self._stopping.is_set() or not self._should_restart():
                        return
                    if self._stopping.wait(delay) or not self._should_restart():
                        return
                    with self.supervisor._lock:
                        state.state = "running"
        finally:
            self.supervisor._ended(state)
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:
                    log.exception("thread %s: its exit hook failed", self.name)


SUPERVISOR = Supervisor()
"""The process's supervisor: every module starts its threads through :func:`spawn`."""


def spawn(
    name: str,
    target: Callable[[], object],
    *,
    restart: bool = True,
    should_restart: Callable[[], bool] | None = None,
    on_exit: Callable[[], None] | None = None,
    start: bool = True,
) -> Supervised:
    """A supervised daemon thread of :data:`SUPERVISOR` running ``target`` (started unless
    ``start`` is false)."""
    thread = SUPERVISOR.thread(name, target, restart=restart, should_restart=should_restart, on_exit=on_exit)
    if start:
        thread.start()
    return thread

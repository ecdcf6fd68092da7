"""A staged rollout: canaries first, then the rest, each device walked through ``model.update``.

:class:`Rollout` updates devices ``concurrency`` at a time. A device's update ends with its final
reply (``"final": true``, or any ``"ok": false``) or, after ``timeout_s``, as a timeout. When any
canary does not commit, the rollout halts: the other devices are not touched. :func:`rollback`
sends ``model.rollback`` to a set of devices.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.fleet.artifact import Artifact
from edge_runtime.fleet.bus import Reply, Requester
from edge_runtime.fleet.common import FleetError, RequestIds
from edge_runtime.fleet.delivery import Delivery, DeliveryError

log = logging.getLogger(__name__)

# What a device's update came to.
UPDATED = "updated"
REFUSED = "refused"
ROLLED_BACK = "rolled back"
TIMEOUT = "timeout"
FAILED = "failed"  # the tool could not talk to it (publish refused, file unreadable)
CANCELLED = "cancelled"  # interrupted by the operator; the device may still finish
NOT_ATTEMPTED = "not attempted"  # the rollout halted before this device
PENDING = "pending"

ProgressFn = Callable[[str, str, Mapping[str, Any]], None]
"""``(device, step, details)``: called when a device reports a step, sends a chunk, or ends.
``step`` is a device step, ``"transfer"`` (details ``{"done", "total"}``), ``"waiting"`` or
``"result"`` (details: the :class:`DeviceOutcome` as a dict)."""


@dataclass
class DeviceOutcome:
    device: str
    canary: bool
    result: str = PENDING
    step: str | None = None  # the last step the device reported
    error: str | None = None
    sha256: str | None = None  # what the device runs now, when it said so
    version: str | None = None
    started: float | None = None  # time.time()
    finished: float | None = None
    steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == UPDATED

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return round(self.finished - self.started, 3)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds}


@dataclass
class RolloutReport:
    artifact: Artifact
    outcomes: list[DeviceOutcome]  # canaries first, then the rest, each group sorted
    halted: bool = False
    halt_reason: str | None = None
    cancelled: bool = False

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)

    @property
    def updated(self) -> int:
        return self.count(UPDATED)

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.ok for o in self.outcomes)

    def summary(self) -> str:
        """``5 updated`` or ``1 rolled back, 4 not attempted (halted: ...)``."""
        order = (UPDATED, REFUSED, ROLLED_BACK, TIMEOUT, FAILED, CANCELLED, NOT_ATTEMPTED, PENDING)
        parts = [f"{self.count(r)} {r}" for r in order if self.count(r)]
        text = ", ".join(parts) or "no devices"
        if self.halted and self.halt_reason:
            text += f" (halted: {self.halt_reason})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "artifact": {**self.artifact.manifest(), "path": str(self.artifact.path)},
            "halted": self.halted,
            "halt_reason": self.halt_reason,
            "cancelled": self.cancelled,
            "devices": [o.to_dict() for o in self.outcomes],
        }


def is_final(body: Mapping[str, Any]) -> bool:
    """The last reply of an update: marked final, any refusal, or the commit."""
    return body.get("final") is True or body.get("ok") is not True or body.get("step") == "commit"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class Rollout:
    """Updates devices with one artifact; see the module doc."""

    def __init__(
        self,
        requester: Requester,
        artifact: Artifact,
        delivery: Delivery,
        *,
        concurrency: int = 4,
        timeout_s: float = 300.0,
        on_progress: ProgressFn | None = None,
        ids: RequestIds | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        poll_s: float = 0.2,
    ) -> None:
        if concurrency < 1:
            raise FleetError(f"--concurrency {concurrency}: must be at least 1")
        if timeout_s <= 0:
            raise FleetError(f"--timeout {timeout_s}: must be positive")
        self.requester = requester
        self.artifact = artifact
        self.delivery = delivery
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.on_progress = on_progress or (lambda device, step, details: None)
        self.ids = ids or RequestIds()
        self.monotonic = monotonic
        self.wallclock = wallclock
        self.poll_s = poll_s
        self.cancel = threading.Event()

    def command(self, request_id: str, location: Mapping[str, Any]) -> dict[str, Any]:
        """The ``model.update`` body for one device."""
        a = self.artifact
        body: dict[str, Any] = {
            "id": request_id,
            "pipeline": a.pipeline,
            **location,
            "sha256": a.sha256,
            "size": a.size,
            "version": a.version,
        }
        if a.rollback_from is not None:
            body["rollback_from"] = a.rollback_from
        if a.signature is not None:
            body["signature"] = a.signature
        if a.reference is not None:
            body["reference"] = a.reference
        return body

    def update_device(self, device: str, *, canary: bool = False) -> DeviceOutcome:
        """One device, start to final reply; never raises for a device-side failure."""
        outcome = DeviceOutcome(device, canary, started=self.wallclock())
        deadline = self.monotonic() + self.timeout_s
        try:
            self._update(outcome, deadline)
        except DeliveryError as exc:
            outcome.result = CANCELLED if self.cancel.is_set() else TIMEOUT if exc.timed_out else FAILED
            outcome.step = outcome.step or "transfer"
            outcome.error = str(exc)
        except (FleetError, OSError) as exc:
            outcome.result = FAILED
            outcome.error = str(exc)
        outcome.finished = self.wallclock()
        self.on_progress(device, "result", outcome.to_dict())
        return outcome

    def _update(self, outcome: DeviceOutcome, deadline: float) -> None:
        device = outcome.device

        def transfer_progress(done: int, total: int) -> None:
            self.on_progress(device, "transfer", {"done": done, "total": total})

        location = self.delivery.deliver(device, deadline, transfer_progress, self.cancel)
        request_id = self.ids.next()
        sink: queue.Queue[Reply] = queue.Queue()
        self.requester.register(device, request_id, sink)
        try:
            self.requester.send(device, "model.update", self.command(request_id, location))
            self.on_progress(device, "sent", {"id": request_id})
            while True:
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    outcome.result = TIMEOUT
                    outcome.error = (
                        f"no final reply within {self.timeout_s:g} s (last step: {outcome.step or 'none'})"
                    )
                    return
                if self.cancel.is_set():
                    outcome.result = CANCELLED
                    outcome.error = "interrupted; the device may still complete the update"
                    return
                try:
                    reply = sink.get(timeout=min(remaining, self.poll_s))
                except queue.Empty:
                    continue
                if self._apply(outcome, reply.body):
                    return
        finally:
            self.requester.unregister(device, request_id)

    def _apply(self, outcome: DeviceOutcome, body: Mapping[str, Any]) -> bool:
        """Record one reply; True when it ends the device's update."""
        step = _text(body.get("step")) or outcome.step or "accepted"  # refused before it began
        outcome.step = step
        outcome.steps.append(step)
        self.on_progress(outcome.device, step, body)
        if not is_final(body):
            return False
        if body.get("ok") is True:
            outcome.result = UPDATED
            outcome.sha256 = _text(body.get("sha256")) or self.artifact.sha256
            outcome.version = _text(body.get("version")) or self.artifact.version
        else:
            outcome.result = ROLLED_BACK if body.get("rolled_back") is True else REFUSED
            outcome.error = _text(body.get("error") or body.get("reason")) or "refused without a reason"
            outcome.sha256 = _text(body.get("sha256"))
        return True

    def _phase(self, devices: Sequence[str], *, canary: bool) -> list[DeviceOutcome]:
        if not devices:
            return []
        workers = min(self.concurrency, len(devices))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet") as pool:
            futures = [pool.submit(self._start, device, canary) for device in devices]
            try:
                wait(futures)
            except KeyboardInterrupt:
                self.cancel.set()  # the workers notice within poll_s; the pool waits for them
            except BaseException:
                self.cancel.set()  # anything else: stop the workers too, then let it propagate
                raise
        outcomes = []
        for device, future in zip(devices, futures, strict=True):
            if future.cancelled():
                outcomes.append(DeviceOutcome(device, canary, result=CANCELLED, error="interrupted"))
            else:
                outcomes.append(future.result())
        return outcomes

    def _start(self, device: str, canary: bool) -> DeviceOutcome:
        if self.cancel.is_set():
            return DeviceOutcome(device, canary, result=CANCELLED, error="interrupted before it started")
        return self.update_device(device, canary=canary)

    def run(self, devices: Sequence[str], canaries: int) -> RolloutReport:
        """Update ``devices`` (sorted; the first ``canaries`` of them go first)."""
        order = sorted(devices)
        first, rest = order[:canaries], order[canaries:]
        for device in order:
            self.on_progress(device, "waiting", {"canary": device in first})
        report = RolloutReport(self.artifact, self._phase(first, canary=True))
        failed = [o for o in report.outcomes if not o.ok]
        if failed or self.cancel.is_set():
            report.cancelled = self.cancel.is_set()
            report.halted = bool(rest)
            report.halt_reason = (
                "interrupted"
                if report.cancelled
                else "canary " + ", ".join(f"{o.device} {o.result}" for o in failed)
            )
            for device in rest:
                skipped = DeviceOutcome(device, False, result=NOT_ATTEMPTED)
                report.outcomes.append(skipped)
                self.on_progress(device, "result", skipped.to_dict())
            return report
        report.outcomes += self._phase(rest, canary=False)
        report.cancelled = self.cancel.is_set()
        return report


# --- rollback --------------------------------------------------------------------------------------


@dataclass
class RollbackOutcome:
    device: str
    ok: bool
    sha256: str | None = None
    version: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rollback(
    requester: Requester,
    devices: Sequence[str],
    pipeline: str,
    *,
    timeout_s: float = 60.0,
    concurrency: int = 8,
    ids: RequestIds | None = None,
    signed: Mapping[str, str] | None = None,
) -> list[RollbackOutcome]:
    """``model.rollback`` to every device (sorted), ``concurrency`` at a time; ``signed`` adds
    ``{"version", "rollback_from", "signature"}`` (see :func:`edge_runtime.fleet.artifact.sign_rollback`)."""
    new_ids = ids or RequestIds()
    extra = dict(signed or {})

    def one(device: str) -> RollbackOutcome:
        try:
            reply = requester.request(
                device, "model.rollback", {"id": new_ids.next(), "pipeline": pipeline, **extra}, timeout_s
            )
        except FleetError as exc:
            return RollbackOutcome(device, False, error=str(exc))
        if reply is None:
            return RollbackOutcome(device, False, error=f"no reply within {timeout_s:g} s")
        body = reply.body
        if body.get("ok") is not True:
            return RollbackOutcome(
                device, False, error=_text(body.get("error")) or "refused without a reason"
            )
        return RollbackOutcome(device, True, _text(body.get("sha256")), _text(body.get("version")))

    order = sorted(devices)
    if not order:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(order)))) as pool:
        return list(pool.map(one, order))

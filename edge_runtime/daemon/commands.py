"""The daemon's remote commands: ping, get_config, reload, pipeline.pause/resume, snapshot, health,
config.update, monitor.rebase, the model-update commands of :mod:`edge_runtime.updates.updater` and
the data-capture commands of :mod:`.capture_commands`.

:class:`DaemonCommands` registers each on the transport's dispatcher and works against a
:class:`CommandHost` (the daemon), so commands can be built and tested without a whole daemon.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from edge_runtime import __version__
from edge_runtime.daemon.capture_commands import CaptureCommands
from edge_runtime.daemon.config_update import ConfigHost, apply_config_update, file_sha256
from edge_runtime.monitor.service import Monitor
from edge_runtime.pipeline import Pipeline
from edge_runtime.redaction import redact_config
from edge_runtime.reporting.commands import Command, CommandDispatcher, CommandError
from edge_runtime.sources.base import Source
from edge_runtime.sources.jpeg import full_size
from edge_runtime.updates.updater import Updater


def redact(value: Any, key: str = "") -> Any:
    """The config as JSON with secrets hidden: see :func:`edge_runtime.redaction.redact_config`
    (values under secret-looking keys, credentials in URLs)."""
    return redact_config(value, key)


class CommandHost(ConfigHost, Protocol):
    """The daemon, as its commands see it: what ``config.update`` needs, and more."""

    @property
    def started_mono(self) -> float: ...

    @property
    def pipelines(self) -> Sequence[Pipeline]: ...

    @property
    def sources(self) -> Mapping[str, Source]: ...

    @property
    def monitor(self) -> Monitor: ...

    def publish_health(self) -> dict[str, Any]: ...


class DaemonCommands:
    """The remote commands of one daemon, registered on its command dispatcher."""

    def __init__(self, host: CommandHost, updater: Updater | None = None) -> None:
        self.host = host
        self.updater = updater

    def register(self, d: CommandDispatcher) -> None:
        d.register("ping", self.ping)
        d.register("config.update", self.config_update, config=(str, True), signature=(str, False))
        d.register("get_config", self.get_config)
        d.register("reload", self.reload)
        d.register("pipeline.pause", self.pause, pipeline=(str, True))
        d.register("pipeline.resume", self.resume, pipeline=(str, True))
        d.register("health", self.health)
        d.register("snapshot", self.snapshot, source=(str, True), quality=(int, False))
        d.register("monitor.rebase", self.rebase, source=(str, False))
        CaptureCommands(self.host.monitor.capture).register(d)
        updater = self.updater
        if updater is not None:
            text = (str, True)
            d.register(
                "model.update", updater.update, pipeline=text, url=(str, False), transfer=(str, False),
                sha256=text, size=(int, True), version=text, signature=(str, False),
                rollback_from=(str, False), reference=(dict, False),
            )  # fmt: skip
            d.register(
                "model.chunk", updater.chunk, transfer=text, index=(int, True), total=(int, True), data=text
            )
            d.register("model.list", updater.list, pipeline=text)
            d.register(
                "model.rollback", updater.rollback, pipeline=text, version=(str, False),
                rollback_from=(str, False), signature=(str, False),
            )  # fmt: skip

    def pipeline(self, name: str) -> Pipeline:
        for p in self.host.pipelines:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.host.pipelines)
        raise CommandError(f"no pipeline {name!r}; pipelines: {names}")

    def ping(self, cmd: Command) -> dict[str, Any]:
        return {
            "pong": True,
            "ts": round(time.time(), 3),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.host.started_mono, 3),
        }

    def get_config(self, cmd: Command) -> dict[str, Any]:
        """The running config (secrets redacted) and the sha256 of its file, which a signed
        ``config.update`` names as the file it replaces."""
        path = self.host.config_path
        try:
            sha = file_sha256(path) if path is not None else None
        except OSError:
            sha = None
        return {"config": redact(self.host.config.model_dump(mode="json")), "file_sha256": sha}

    def reload(self, cmd: Command) -> dict[str, Any]:
        return {"reloaded": self.host.reload()}

    def pause(self, cmd: Command) -> dict[str, Any]:
        p = self.pipeline(cmd.args["pipeline"])
        p.paused = True
        return {"pipeline": p.name, "paused": True}

    def resume(self, cmd: Command) -> dict[str, Any]:
        p = self.pipeline(cmd.args["pipeline"])
        p.paused = False
        return {"pipeline": p.name, "paused": False}

    def health(self, cmd: Command) -> dict[str, Any]:
        return {"health": self.host.publish_health()}

    def snapshot(self, cmd: Command) -> dict[str, Any]:
        name = cmd.args["source"]
        source = self.host.sources.get(name)
        peek = getattr(source, "peek", None)
        if source is None or peek is None:
            cameras = [n for n, s in self.host.sources.items() if hasattr(s, "peek")]
            raise CommandError(f"no camera source {name!r}; cameras: {', '.join(cameras) or 'none'}")
        frame = peek()
        if frame is None:
            raise CommandError(f"source {name!r} has no frame yet")
        quality = int(cmd.args.get("quality", 85))
        if not 1 <= quality <= 100:
            raise CommandError("quality must be between 1 and 100")
        boxes = _detections_for(self.host.pipelines, name)
        jpeg = _encode(full_size(frame), boxes, quality)  # boxes are in camera pixels
        return {
            "source": name,
            "frame_seq": frame.seq,
            "frame_ts": round(frame.t_wall, 3),
            "detections": len(boxes),
            "content_type": "image/jpeg",
            "encoding": "base64",
            "data": base64.b64encode(jpeg).decode("ascii"),
        }

    def rebase(self, cmd: Command) -> dict[str, Any]:
        """Take the next frame of ``source`` (every camera without one) as its tamper reference
        view: after a camera was moved on purpose, ``moved`` clears after its hold time."""
        monitor = self.host.monitor
        if not monitor.cameras:
            raise CommandError("no camera is under tamper checks (see monitor.tamper and the sources)")
        try:
            names = monitor.rebase(cmd.args.get("source"))
        except KeyError as exc:
            raise CommandError(str(exc.args[0])) from None
        self.host.event(  # on the record: a rebase also clears "moved" for a camera turned away
            "monitor.rebased",
            f"tamper reference view of {', '.join(names)} taken again on request {cmd.id}",
            {"sources": names, "request": cmd.id},
        )
        return {"rebased": names}

    def config_update(self, cmd: Command) -> dict[str, Any]:
        """Check a new config (files, pipelines, guarded settings), write it atomically, reload;
        the old file back on failure (:mod:`edge_runtime.daemon.config_update`)."""
        return apply_config_update(self.host, cmd.args["config"], cmd.args.get("signature"))


def _detections_for(pipelines: Sequence[Pipeline], source: str) -> list[dict[str, Any]]:
    """The latest detections of the pipelines that look at ``source``."""
    found: list[dict[str, Any]] = []
    for p in pipelines:
        sources = {src for r in p.runners for _, _, src in r.images}
        result = p.last_result
        if source in sources and result is not None:
            found += result.get("detections", [])
    return found


def _encode(image: Any, detections: list[dict[str, Any]], quality: int) -> bytes:
    import cv2

    canvas = image.copy() if detections else image
    for det in detections:
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), 2)
        label = f"{det.get('label', '')} {det.get('score', 0):.2f}"
        cv2.putText(canvas, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1)
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CommandError("JPEG encoding failed")
    return bytes(data.tobytes())

"""The data-capture commands: ``capture.list``, ``capture.fetch`` (in base64 chunks, like a model
transfer the other way) and ``capture.now`` (the "on command" rule). See ``docs/monitoring.md``,
"Data capture".

Every name that reaches the disk is checked twice: against its pattern
(:data:`~edge_runtime.monitor.capture_store.CAPTURE_ID_RE`, ``FILE_RE``) and against the store's
index of samples, so nothing outside a pipeline's capture folder can be read.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from edge_runtime.monitor.capture_store import CAPTURE_ID_RE, FILE_RE
from edge_runtime.monitor.capture_worker import MAX_ARMED, Capturer, PipelineCapture
from edge_runtime.reporting.commands import Command, CommandDispatcher, CommandError

ID_RULE = "capture ids look like 20261201T180102.123Z-000001"
MAX_LIST = 500
MAX_TIME = 1e11
"""Most samples one ``capture.list`` reply names."""
CHUNK_BYTES = 48 * 1024
"""Default raw bytes per ``capture.fetch`` chunk (64 KiB of base64)."""
MIN_CHUNK, MAX_CHUNK = 1024, 256 * 1024


class CaptureCommands:
    """The capture commands of one daemon, against its :class:`Capturer`."""

    def __init__(self, capturer: Capturer) -> None:
        self.capturer = capturer

    def register(self, d: CommandDispatcher) -> None:
        number = (int, float)
        d.register(
            "capture.list", self.list, pipeline=(str, False), since=(number, False), after=(str, False),
            limit=(int, False),
        )  # fmt: skip
        d.register(
            "capture.fetch", self.fetch, pipeline=(str, True), capture=(str, True), file=(str, False),
            index=(int, False), chunk_bytes=(int, False),
        )  # fmt: skip
        d.register("capture.now", self.now, pipeline=(str, True), count=(int, False))

    def _pipeline(self, name: str) -> PipelineCapture:
        pc = self.capturer.pipelines.get(name)
        if pc is None:
            names = ", ".join(sorted(self.capturer.pipelines)) or "none"
            raise CommandError(f"no capturing pipeline {name[:64]!r}; capturing: {names}")
        return pc

    def list(self, cmd: Command) -> dict[str, Any]:
        """The samples of a pipeline, oldest first: captured after ``since`` (a Unix time) or after
        the capture ``after`` (an id: the last of the previous page), at most ``limit``. Without a
        pipeline: the names of the capturing pipelines."""
        if "pipeline" not in cmd.args:
            return {"pipelines": sorted(self.capturer.pipelines)}
        pc = self._pipeline(cmd.args["pipeline"])
        limit = cmd.args.get("limit", 100)
        if not 1 <= limit <= MAX_LIST:
            raise CommandError(f"limit must be between 1 and {MAX_LIST}")
        after = cmd.args.get("after")
        if after is not None and not CAPTURE_ID_RE.match(after):
            raise CommandError(f"bad capture id in 'after': {ID_RULE}")
        since = cmd.args.get("since")
        if since is not None and not 0 <= since <= MAX_TIME:
            raise CommandError(f"since must be a Unix time between 0 and {MAX_TIME:g}")
        rows, more = pc.store.list(None if since is None else float(since), after, limit)
        return {"pipeline": cmd.args["pipeline"], "captures": rows, "more": more}

    def fetch(self, cmd: Command) -> dict[str, Any]:
        """Chunk ``index`` of one file of a sample (``file``: default its JSON), base64, with the
        chunk count and the whole file's size and sha256."""
        pc = self._pipeline(cmd.args["pipeline"])
        capture_id = cmd.args["capture"]
        if not CAPTURE_ID_RE.match(capture_id):
            raise CommandError(f"bad capture id: {ID_RULE}")
        name = cmd.args.get("file", f"{capture_id}.json")
        m = FILE_RE.match(name)
        if m is None or m.group(1) != capture_id:
            raise CommandError(
                f"bad file name: a file of capture {capture_id} is {capture_id}[.SOURCE].jpg|json"
            )
        size = cmd.args.get("chunk_bytes", CHUNK_BYTES)
        if not MIN_CHUNK <= size <= MAX_CHUNK:
            raise CommandError(f"chunk_bytes must be between {MIN_CHUNK} and {MAX_CHUNK}")
        try:
            data = pc.store.read(capture_id, name)
        except KeyError:
            raise CommandError(
                f"no file {name} in the captures of {cmd.args['pipeline']} (evicted?)"
            ) from None
        except OSError as exc:
            raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None
        total = max(1, -(-len(data) // size))
        index = cmd.args.get("index", 0)
        if not 0 <= index < total:
            raise CommandError(f"index must be between 0 and {total - 1}")
        chunk = data[index * size : (index + 1) * size]
        return {
            "pipeline": cmd.args["pipeline"],
            "capture": capture_id,
            "file": name,
            "index": index,
            "total": total,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "encoding": "base64",
            "data": base64.b64encode(chunk).decode("ascii"),
        }

    def now(self, cmd: Command) -> dict[str, Any]:
        """Capture the next ``count`` results of a pipeline whatever its rules (budgets apply)."""
        name = cmd.args["pipeline"]
        self._pipeline(name)
        count = cmd.args.get("count", 1)
        if not 1 <= count <= MAX_ARMED:
            raise CommandError(f"count must be between 1 and {MAX_ARMED}")
        return {"pipeline": name, "armed": self.capturer.arm(name, count)}

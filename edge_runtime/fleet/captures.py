"""``edge-fleet captures pull --device ID --out DIR``: copy a device's captured samples into a folder.

For each capturing pipeline (or ``--pipeline``) the tool pages through ``capture.list`` (by id,
oldest first, from ``--since`` on), fetches every file of every sample with ``capture.fetch`` in
chunks, checks each file's size and sha256 (and each image against the sha256 its JSON names) and
writes the device's layout: ``DIR/<pipeline>/<id>.jpg`` beside ``DIR/<pipeline>/<id>.json``. The
images go first and the JSON last, each through a temporary name, so a sample in ``DIR`` is
complete when its JSON is there; a file already in ``DIR`` with the right sha256 is not fetched
again (a pull can be repeated or resumed). A sample evicted on the device during the pull is
skipped with a warning.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edge_runtime.fleet.bus import BrokerOptions, MqttBus, Requester
from edge_runtime.fleet.common import FleetError, RequestIds, check_level, check_pipeline, positive_float
from edge_runtime.monitor.capture_store import CAPTURE_ID_RE, FILE_RE
from edge_runtime.names import SHA256_RE

log = logging.getLogger("fleet")

LIST_LIMIT = 200
MAX_CHUNKS = 4096


def add_captures_parser(commands: Any, mqtt: argparse.ArgumentParser) -> None:
    """The ``captures`` subcommand, on the tool's subparsers (``mqtt``: the broker options)."""
    captures = commands.add_parser("captures", help="captured samples of a device (data for retraining)")
    actions = captures.add_subparsers(dest="action", required=True, metavar="ACTION")
    pull = actions.add_parser("pull", parents=[mqtt], help="copy a device's captures into a folder")
    pull.add_argument("--device", required=True, help="the device id")
    pull.add_argument("--out", required=True, type=Path, metavar="DIR", help="the folder to write into")
    pull.add_argument("--pipeline", help="only this pipeline (default: every capturing pipeline)")
    pull.add_argument(
        "--since", type=float, metavar="UNIX_TIME", help="only samples captured after this time"
    )
    pull.add_argument(
        "--timeout", type=positive_float, default=30.0, metavar="S", help="for each reply (default: 30)"
    )


class Puller:
    """One device's captures into one folder."""

    def __init__(self, requester: Requester, device: str, out: Path, timeout: float) -> None:
        self.requester = requester
        self.device = device
        self.out = out
        self.timeout = timeout
        self.ids = RequestIds("cap")
        self.samples = self.files = self.bytes = self.reused = self.skipped = 0

    def request(self, command: str, **body: Any) -> dict[str, Any]:
        reply = self.requester.request(self.device, command, {"id": self.ids.next(), **body}, self.timeout)
        if reply is None:
            raise FleetError(f"{self.device}: no reply to {command} within {self.timeout:g} s")
        if not reply.body.get("ok", True) or "error" in reply.body:
            raise FleetError(f"{self.device}: {command} refused: {reply.body.get('error')}")
        return reply.body

    def pipelines(self) -> list[str]:
        names = self.request("capture.list").get("pipelines")
        if not isinstance(names, list):
            raise FleetError(f"{self.device}: capture.list did not name its pipelines")
        return [check_pipeline(str(n)) for n in names]

    def pull(self, pipeline: str, since: float | None) -> None:
        folder = self.out / pipeline
        folder.mkdir(parents=True, exist_ok=True)
        after: str | None = None
        while True:
            body: dict[str, Any] = {"pipeline": pipeline, "limit": LIST_LIMIT}
            if after is not None:
                body["after"] = after
            elif since is not None:
                body["since"] = since
            page = self.request("capture.list", **body)
            rows = page.get("captures")
            if not isinstance(rows, list):
                raise FleetError(f"{self.device}: capture.list of {pipeline} has no captures list")
            for row in rows:
                capture_id = str(row.get("id")) if isinstance(row, dict) else ""
                if not CAPTURE_ID_RE.match(capture_id) or (after is not None and capture_id <= after):
                    raise FleetError(f"{self.device}: capture.list of {pipeline} sent a bad or repeated id")
                self.sample(pipeline, folder, capture_id)
                after = capture_id
            if not page.get("more") or not rows:
                return

    def sample(self, pipeline: str, folder: Path, capture_id: str) -> None:
        json_name = f"{capture_id}.json"
        try:
            doc_bytes = self.fetch(pipeline, capture_id, json_name, folder, write=False)
            doc = json.loads(doc_bytes)
            images = {str(f["name"]): str(f["sha256"]) for f in doc["files"]}
        except _EvictedError as exc:
            log.warning("%s: %s: skipped (%s)", self.device, capture_id, exc)
            self.skipped += 1
            return
        except (ValueError, KeyError, TypeError) as exc:
            raise FleetError(f"{self.device}: {capture_id}: its JSON does not parse: {exc}") from exc
        try:
            for name, sha in images.items():
                m = FILE_RE.match(name)
                if m is None or m.group(1) != capture_id or not SHA256_RE.match(sha):
                    raise FleetError(f"{self.device}: {capture_id}: its JSON names a bad file {name!r}")
                self.fetch(pipeline, capture_id, name, folder, write=True, expect=sha)
        except _EvictedError as exc:
            log.warning("%s: %s: skipped (%s)", self.device, capture_id, exc)
            self.skipped += 1
            return
        _write(folder / json_name, doc_bytes)  # last: the sample is complete in DIR
        self.samples += 1
        self.files += 1
        self.bytes += len(doc_bytes)

    def fetch(
        self,
        pipeline: str,
        capture_id: str,
        name: str,
        folder: Path,
        *,
        write: bool,
        expect: str | None = None,
    ) -> bytes:
        """One file, chunk by chunk, checked against the sha256 the device names (and ``expect``)."""
        target = folder / name
        if expect is not None and target.is_file() and _sha(target.read_bytes()) == expect:
            self.reused += 1
            return b""
        parts: list[bytes] = []
        total, sha, size, index = 1, "", 0, 0
        while index < total:
            body = self._chunk(pipeline, capture_id, name, index)
            total, sha, size = int(body["total"]), str(body["sha256"]), int(body["size"])
            if not 1 <= total <= MAX_CHUNKS or body.get("index") != index:
                raise FleetError(f"{self.device}: {name}: bad chunk reply (index {body.get('index')})")
            try:
                parts.append(base64.b64decode(str(body["data"]), validate=True))
            except (binascii.Error, ValueError) as exc:
                raise FleetError(f"{self.device}: {name}: chunk {index} is not base64") from exc
            index += 1
        data = b"".join(parts)
        if len(data) != size or _sha(data) != sha or (expect is not None and sha != expect):
            raise FleetError(f"{self.device}: {name}: sha256 or size does not match what the device named")
        if write:
            _write(target, data)
            self.files += 1
            self.bytes += len(data)
        return data

    def _chunk(self, pipeline: str, capture_id: str, name: str, index: int) -> dict[str, Any]:
        body = {
            "id": self.ids.next(),
            "pipeline": pipeline,
            "capture": capture_id,
            "file": name,
            "index": index,
        }
        reply = self.requester.request(self.device, "capture.fetch", body, self.timeout)
        if reply is None:
            raise FleetError(f"{self.device}: no reply to capture.fetch within {self.timeout:g} s")
        if reply.body.get("ok") is False or "error" in reply.body:
            error = str(reply.body.get("error"))
            if "evicted" in error:
                raise _EvictedError(error)
            raise FleetError(f"{self.device}: capture.fetch {name} refused: {error}")
        return reply.body


class _EvictedError(Exception):
    """The sample went from the device during the pull."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    """Whole or absent: a temporary name in the same folder, renamed."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cmd_captures(args: argparse.Namespace, options: BrokerOptions) -> int:
    """``captures pull``: every sample (after ``--since``) of the device's capturing pipelines."""
    device = check_level(args.device, "device")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FleetError(f"{args.out}: cannot create: {exc.strerror or exc}") from exc
    with MqttBus(options).connect() as bus:
        puller = Puller(Requester(bus, args.prefix).start(), device, args.out, args.timeout)
        names = [check_pipeline(args.pipeline)] if args.pipeline else puller.pipelines()
        for name in names:
            puller.pull(name, args.since)
    sys.stdout.write(
        f"{device}: {puller.samples} samples of {', '.join(names) or 'no pipeline'} in {args.out} "
        f"({puller.files} files, {puller.bytes} bytes fetched, {puller.reused} already there, "
        f"{puller.skipped} evicted during the pull)\n"
    )
    return 0

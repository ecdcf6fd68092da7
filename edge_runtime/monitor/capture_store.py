"""The captured samples of one pipeline on disk: a ring under a byte quota.

Layout, in ``<state_dir>/captures/<pipeline>/``: one sample is ``<id>.json`` beside its images
``<id>.jpg`` (the first camera input) and ``<id>.<source>.jpg`` (further cameras), where ``<id>`` is
``YYYYmmddTHHMMSS.fffZ-NNNNNN`` (UTC capture time, then a sequence number), so names sort by
capture time. The JSON holds the result, the model (name, sha256, version), the time, the rules that
matched, the sensor windows as used and the name, size and sha256 of each image.

Crash safety: the images are written durably first (:func:`edge_runtime.fsutil.atomic_write`), the
JSON last, so a sample exists iff its JSON exists; eviction removes the JSON first. At
:meth:`CaptureStore.open` temporary files, images without a JSON, and JSONs that do not parse or
name a missing image are removed (counted as ``swept``).

Quota: the bytes of every file of every sample (JSON included) stay at or below ``quota_bytes``;
before a sample is written the oldest samples are evicted until it fits (a ring: oldest first). A
sample larger than the whole quota is refused (:class:`SampleTooLargeError`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.fsutil import TMP_INFIX, TMP_PREFIX, atomic_write

log = logging.getLogger(__name__)

CAPTURE_ID_RE = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)-(\d{6,12})\Z")
"""A capture id (also a file name stem)."""
FILE_RE = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z-\d{6,12})(\.[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?\.(jpg|json)\Z")


class SampleTooLargeError(ValueError):
    """A sample larger than the pipeline's whole quota."""


@dataclass
class Sample:
    id: str
    ts: float
    files: dict[str, int]  # file name -> bytes (the JSON last)

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def make_id(t: float, seq: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))
    return f"{stamp}.{int(t * 1000) % 1000:03d}Z-{seq:06d}"


def id_time(capture_id: str) -> float:
    import calendar

    m = CAPTURE_ID_RE.match(capture_id)
    if m is None:
        raise ValueError(f"not a capture id: {capture_id!r}")
    stamp, millis = m.group(1)[:15], int(m.group(1)[16:19])
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")) + millis / 1000


class CaptureStore:
    """One pipeline's samples (see the module docstring); thread-safe."""

    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.lock = threading.Lock()
        self.samples: OrderedDict[str, Sample] = OrderedDict()  # oldest first
        self.used = 0
        self.evicted = 0
        self.swept = 0
        self._seq = 0

    def open(self) -> CaptureStore:
        """Create the directory, sweep what a crash left, index the samples."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        by_id: dict[str, list[Path]] = {}
        for path in self.root.iterdir():
            name = path.name
            if name.startswith(TMP_PREFIX) and TMP_INFIX in name:
                self._remove(path)
                continue
            m = FILE_RE.match(name)
            if m is not None and path.is_file() and not path.is_symlink():
                by_id.setdefault(m.group(1), []).append(path)
        with self.lock:
            for capture_id in sorted(by_id):
                sample = self._check(capture_id, by_id[capture_id])
                if sample is None:
                    for path in by_id[capture_id]:
                        self._remove(path)
                    continue
                self.samples[capture_id] = sample
                self.used += sample.bytes
                self._seq = max(self._seq, int(capture_id.rsplit("-", 1)[1]))
        return self

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
            self.swept += 1
            log.info("captures: removed %s (left by an interrupted write)", path)
        except FileNotFoundError:
            pass

    def _check(self, capture_id: str, paths: list[Path]) -> Sample | None:
        """The sample when its JSON parses and names exactly the images that are there."""
        names = {p.name: p for p in paths}
        doc_path = names.get(f"{capture_id}.json")
        if doc_path is None:
            return None
        try:
            doc = json.loads(doc_path.read_bytes())
            images = {str(f["name"]): int(f["bytes"]) for f in doc["files"]}
            files = {name: names[name].stat().st_size for name in images}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if files != images or set(names) != {*images, doc_path.name}:
            return None
        files[doc_path.name] = doc_path.stat().st_size
        return Sample(capture_id, id_time(capture_id), files)

    def times(self) -> list[float]:
        with self.lock:
            return [s.ts for s in self.samples.values()]

    def write(self, t: float, images: list[tuple[str, bytes]], doc: dict[str, Any]) -> Sample:
        """Store one sample captured at ``t``: ``images`` as (source, JPEG bytes), the first
        named ``<id>.jpg``; ``doc`` gets ``id`` and ``files``. Evicts the oldest to stay in quota."""
        with self.lock:
            self._seq += 1
            capture_id = make_id(t, self._seq)
            named: list[tuple[str, bytes]] = []
            for i, (source, data) in enumerate(images):
                named.append((f"{capture_id}.jpg" if i == 0 else f"{capture_id}.{source}.jpg", data))
            import hashlib

            t = id_time(capture_id)  # the capture time to the millisecond, as the id says
            doc = {
                "id": capture_id,
                "ts": round(t, 3),
                **doc,
                "files": [
                    {"name": n, "source": s, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                    for (n, d), (s, _) in zip(named, images, strict=True)
                ],
            }
            body = (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()
            files = {n: len(d) for n, d in named}
            files[f"{capture_id}.json"] = len(body)
            size = sum(files.values())
            if size > self.quota_bytes:
                raise SampleTooLargeError(f"a sample of {size} bytes is over the quota ({self.quota_bytes})")
            while self.used + size > self.quota_bytes:
                self._evict_oldest()
            for name, data in named:  # durable (content and name) before the JSON that makes a sample
                atomic_write(self.root / name, data)
            atomic_write(self.root / f"{capture_id}.json", body)
            sample = Sample(capture_id, t, files)
            self.samples[capture_id] = sample
            self.used += size
            return sample

    def _evict_oldest(self) -> None:
        capture_id, sample = self.samples.popitem(last=False)
        json_name = f"{capture_id}.json"
        (self.root / json_name).unlink(missing_ok=True)  # first: no sample without its images
        for name in sample.files:
            if name != json_name:
                (self.root / name).unlink(missing_ok=True)
        self.used -= sample.bytes
        self.evicted += 1

    def list(self, since: float | None, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Samples captured after ``since`` and with ids after ``after`` (oldest first), at most
        ``limit``; and whether more match."""
        with self.lock:
            found = [
                s
                for s in self.samples.values()
                if (since is None or round(s.ts * 1000) > round(since * 1000))
                and (after is None or s.id > after)
            ]
        rows = [
            {"id": s.id, "ts": round(s.ts, 3), "bytes": s.bytes, "files": sorted(s.files)}
            for s in found[:limit]
        ]
        return rows, len(found) > limit

    def read(self, capture_id: str, name: str) -> bytes:
        """A file of a sample (KeyError when the sample or the file is not there)."""
        with self.lock:
            sample = self.samples.get(capture_id)
            if sample is None or name not in sample.files:
                raise KeyError(name)
            return (self.root / name).read_bytes()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "samples": len(self.samples),
                "bytes": self.used,
                "evicted": self.evicted,
                "swept": self.swept,
            }

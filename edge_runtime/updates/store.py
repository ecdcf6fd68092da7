"""The on-device model store: verified model versions per pipeline, a committed pointer,
probation, rollback and a history.

Layout under ``root`` (``{state_dir}/models``), directories 0700, files 0600::

    {pipeline}/
      {sha256}.tflite      a verified model, never modified once in place
      {sha256}.json        its metadata: version, size, added_at, meta
      {sha256}.reference.json  the drift reference the update carried, if any (its canonical JSON,
                           so its sha256 is the signed ``reference_sha256``); goes with the model
      current.json         the committed pointer: {"v", "current": entry | null, "previous": [entry, ...]}
      current.json.bak     the pointer as it was before the last change
      probation.json       {"v", "sha256", "version", "previous", "started"} while a model is on probation
      history.jsonl        one JSON line per change: time, action, sha256, version, reason (last 1000)
      staging/             downloads in progress (their ``.part`` files); emptied by cleanup()

Every file is written to a temporary name in the same directory, fsynced, renamed over its
target and the directory fsynced, so after a kill -9 or a power cut at any point each file reads
back either old or new. ``current.json`` changes only on :meth:`~ModelStore.commit`,
:meth:`~ModelStore.rollback` and a direct :meth:`~ModelStore.activate`; a model on probation is
named by ``probation.json`` alone, so a restart comes back on the last committed model
(:meth:`~ModelStore.startup`). A pointer that does not parse falls back to its ``.bak`` and then
to "no update" (the model in the config), with an error in the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import fsutil
from edge_runtime.fsutil import fsync_dir, sha256_file
from edge_runtime.names import NAME_RE, SHA256_RE
from edge_runtime.updates.protocol import ChecksumError, StoreError, canonical_json

log = logging.getLogger(__name__)

HISTORY_LINES = 1000
POINTER_VERSION = 1
_TMP_RE = re.compile(r"^\..+\.tmp-\d+$")
REFERENCE_SUFFIX = ".reference.json"


def reference_file(model: Path) -> Path:
    """Where the store keeps the drift reference of the model file ``model``."""
    return model.with_name(model.stem + REFERENCE_SUFFIX)


@dataclass(frozen=True)
class Entry:
    """One model version of a pipeline; ``committed_at`` is when it became current (or, for a
    model on probation, when the probation started), in seconds since the epoch."""

    sha256: str
    version: str
    path: Path
    committed_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "version": self.version, "committed_at": self.committed_at}


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600): whole old or whole new after any crash."""
    try:
        fsutil.atomic_write(path, data)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}; the old content is intact") from exc


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _file_sha(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None


def _now() -> float:
    return round(time.time(), 3)


def _valid_entry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("sha256"), str)
        and bool(SHA256_RE.match(value["sha256"]))
        and isinstance(value.get("version"), str)
        and isinstance(value.get("committed_at"), (int, float))
    )


class ModelStore:
    """Model versions of every pipeline under ``root``; keeps ``keep`` versions per pipeline
    (never deleting the current, the previous or the one on probation).

    Thread-safe (one lock); meant for one daemon per ``root``.
    """

    def __init__(self, root: str | Path, keep: int = 3, *, history_lines: int = HISTORY_LINES) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.history_lines = history_lines
        self._lock = threading.RLock()
        self.problems: dict[str, str] = {}
        """pipeline -> what is wrong with its store (unreadable pointer, corrupt committed model);
        cleared by the next commit."""
        self.on_problem: Callable[[str, str], None] | None = None

    # --- paths -------------------------------------------------------------------------------

    def pipeline_dir(self, pipeline: str, *, create: bool = True) -> Path:
        if not isinstance(pipeline, str) or not NAME_RE.match(pipeline):
            raise StoreError(f"pipeline name {pipeline!r} is not valid (1-64 of [A-Za-z0-9_.-])")
        path = self.root / pipeline
        if create and not path.is_dir():
            for d in (self.root, path):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                d.chmod(0o700)
        return path

    def model_path(self, pipeline: str, sha256: str) -> Path:
        sha = sha256.lower() if isinstance(sha256, str) else ""
        if not SHA256_RE.match(sha):
            raise StoreError(f"sha256 {sha256!r} is not 64 hexadecimal digits")
        return self.pipeline_dir(pipeline) / f"{sha}.tflite"

    def reference(self, pipeline: str, sha256: str) -> dict[str, Any] | None:
        """The drift reference stored with model ``sha256`` of ``pipeline``, or None; raises
        ValueError when the file is there but unreadable."""
        if not SHA256_RE.match(sha256 or "") or not NAME_RE.match(pipeline or ""):
            return None
        path = self.pipeline_dir(pipeline, create=False) / f"{sha256}{REFERENCE_SUFFIX}"
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable drift reference: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: a drift reference is a JSON object")
        return doc

    def staging_dir(self, pipeline: str) -> Path:
        """Where downloads of ``pipeline`` go (same file system: :meth:`add` can rename)."""
        path = self.pipeline_dir(pipeline) / "staging"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    # --- files -------------------------------------------------------------------------------

    def add(
        self,
        pipeline: str,
        file: str | Path,
        sha256: str,
        version: str,
        meta: dict[str, Any] | None = None,
        *,
        move: bool = False,
        reference: dict[str, Any] | None = None,
    ) -> Path:
        """Put a verified file in the store as ``{sha256}.tflite``; idempotent.

        The content is hashed again on the way in (:class:`ChecksumError` on a mismatch). With
        ``move`` the source is renamed when on the same file system, and removed otherwise. A
        ``reference`` (the update's drift reference) is kept beside it, replacing an earlier one.
        """
        target = self.model_path(pipeline, sha256)
        sha = target.stem
        src = Path(file)
        with self._lock:
            if target.exists() and sha256_file(target) == sha:
                log.debug("%s: %s already in the store", pipeline, sha)
            else:
                tmp = fsutil.tmp_name(target)
                try:
                    if move:
                        try:
                            os.replace(src, tmp)
                        except OSError:
                            shutil.copyfile(src, tmp)
                    else:
                        shutil.copyfile(src, tmp)
                    os.chmod(tmp, 0o600)
                    got = sha256_file(tmp)
                    if got != sha:
                        raise ChecksumError(f"{src}: sha256 is {got}, expected {sha}; not added to the store")
                    fsutil.fsync_file(tmp)
                    self._write_meta(pipeline, sha, version, tmp.stat().st_size, meta or {})
                    os.replace(tmp, target)
                    fsync_dir(target.parent)
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    raise StoreError(
                        f"{pipeline}: cannot add {src} to the store: {exc.strerror or exc}"
                    ) from exc
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                log.info("%s: model %s (version %s) added to the store", pipeline, sha, version)
                self.record(pipeline, "added", sha, version)
            if self._meta(pipeline, sha).get("version") != version:
                self._write_meta(pipeline, sha, version, target.stat().st_size, meta or {})
            if reference is not None:
                atomic_write(reference_file(target), canonical_json(reference))
            if move:
                src.unlink(missing_ok=True)
        return target

    def _write_meta(self, pipeline: str, sha: str, version: str, size: int, meta: dict[str, Any]) -> None:
        record = {"sha256": sha, "version": version, "size": size, "added_at": _now(), "meta": meta}
        atomic_write(self.pipeline_dir(pipeline) / f"{sha}.json", _json_bytes(record))

    def _meta(self, pipeline: str, sha: str) -> dict[str, Any]:
        try:
            data = json.loads((self.pipeline_dir(pipeline) / f"{sha}.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _entry(self, pipeline: str, data: dict[str, Any]) -> Entry:
        path = self.model_path(pipeline, data["sha256"])
        return Entry(data["sha256"], data["version"], path, float(data["committed_at"]))

    # --- pointers ----------------------------------------------------------------------------

    def _read_state(self, pipeline: str) -> dict[str, Any]:
        """The committed pointer; on a file that does not parse, its backup; else no update."""
        directory = self.pipeline_dir(pipeline)
        for name in ("current.json", "current.json.bak"):
            path = directory / name
            try:
                data = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                log.error("%s: %s is unreadable (%s); falling back", pipeline, path, exc)
                self._problem(pipeline, f"{path.name} is unreadable ({exc})")
                continue
            current = data.get("current") if isinstance(data, dict) else None
            previous = data.get("previous") if isinstance(data, dict) else None
            if (
                not isinstance(data, dict)
                or not (current is None or _valid_entry(current))
                or not isinstance(previous, list)
                or not all(_valid_entry(p) for p in previous)
            ):
                log.error("%s: %s is not a valid pointer; falling back", pipeline, path)
                self._problem(pipeline, f"{path.name} is not a valid pointer")
                continue
            if name != "current.json":
                log.warning("%s: using the previous pointer %s", pipeline, path)
            return {"current": current, "previous": previous}
        return {"current": None, "previous": []}

    def _problem(self, pipeline: str, text: str) -> None:
        """Record what is wrong with a pipeline's store (for the health state and an event)."""
        if self.problems.get(pipeline) != text:
            self.problems[pipeline] = text
            if self.on_problem is not None:
                self.on_problem(pipeline, text)

    def _write_state(self, pipeline: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        directory = self.pipeline_dir(pipeline)
        atomic_write(directory / "current.json.bak", _json_bytes({"v": POINTER_VERSION, **old}))
        atomic_write(directory / "current.json", _json_bytes({"v": POINTER_VERSION, **new}))

    def _read_probation(self, pipeline: str) -> dict[str, Any] | None:
        """The probation record; ``{}`` when the file exists but does not parse."""
        path = self.pipeline_dir(pipeline) / "probation.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s: %s is unreadable: %s", pipeline, path, exc)
            return {}
        if not isinstance(data, dict) or not _valid_entry({**data, "committed_at": data.get("started")}):
            log.error("%s: %s is not a valid probation record", pipeline, path)
            return {}
        return data

    def _end_probation(self, pipeline: str) -> None:
        path = self.pipeline_dir(pipeline) / "probation.json"
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    # --- queries -----------------------------------------------------------------------------

    def current(self, pipeline: str) -> Entry | None:
        """The last committed model, or None: the pipeline serves the model in its config."""
        with self._lock:
            current = self._read_state(pipeline)["current"]
            return self._entry(pipeline, current) if current else None

    def previous(self, pipeline: str) -> Entry | None:
        """The model a rollback of the committed one goes back to (None: the config's model)."""
        with self._lock:
            previous = self._read_state(pipeline)["previous"]
            return self._entry(pipeline, previous[0]) if previous else None

    def rollback_targets(self, pipeline: str) -> list[Entry]:
        """The models committed before the current one whose files are still here, newest first:
        the local history ``model.rollback`` may go back to."""
        with self._lock:
            previous = self._read_state(pipeline)["previous"]
            entries = [self._entry(pipeline, p) for p in previous]
            return [e for e in entries if e.path.is_file()]

    def probation(self, pipeline: str) -> Entry | None:
        """The model on probation, if any."""
        with self._lock:
            data = self._read_probation(pipeline)
            if not data:
                return None
            return self._entry(pipeline, {**data, "committed_at": data["started"]})

    def versions(self, pipeline: str) -> list[dict[str, Any]]:
        """Every model in the store, newest first, with its state (for ``model.list``):
        ``probation``, ``current``, ``previous`` (the rollback target) or ``kept``."""
        with self._lock:
            state = self._read_state(pipeline)
            probation = self._read_probation(pipeline) or {}
            current = (state["current"] or {}).get("sha256")
            previous = state["previous"][0]["sha256"] if state["previous"] else None
            result = []
            for path in self.pipeline_dir(pipeline).glob("*.tflite"):
                sha = path.stem
                if not SHA256_RE.match(sha):
                    continue
                meta = self._meta(pipeline, sha)
                st = path.stat()
                if sha == probation.get("sha256"):
                    status = "probation"
                elif sha == current:
                    status = "current"
                elif sha == previous:
                    status = "previous"
                else:
                    status = "kept"
                result.append(
                    {
                        "sha256": sha,
                        "version": meta.get("version", "unknown"),
                        "size": st.st_size,
                        "added_at": meta.get("added_at", round(st.st_mtime, 3)),
                        "state": status,
                        "reference_sha256": _file_sha(reference_file(path)),
                    }
                )
            result.sort(key=lambda v: float(v["added_at"]), reverse=True)
            return result

    # --- changes -----------------------------------------------------------------------------

    def _known(self, pipeline: str, sha256: str) -> tuple[str, str]:
        path = self.model_path(pipeline, sha256)
        if not path.is_file():
            raise StoreError(f"{pipeline}: model {sha256} is not in the store ({path})")
        return path.stem, str(self._meta(pipeline, path.stem).get("version", "unknown"))

    def activate(self, pipeline: str, sha256: str, *, probation: bool) -> Entry:
        """Make a stored model the one to serve.

        With ``probation`` only ``probation.json`` is written: the committed pointer stays, so a
        restart or :meth:`rollback` goes back to it, and :meth:`commit` promotes the model.
        Without, the model is committed at once.
        """
        with self._lock:
            sha, version = self._known(pipeline, sha256)
            running = self._read_probation(pipeline)
            if running is not None:
                what = running.get("sha256", "an unreadable record")
                raise StoreError(f"{pipeline}: {what} is on probation; commit or roll it back first")
            state = self._read_state(pipeline)
            current = state["current"]
            if current and current["sha256"] == sha:
                raise StoreError(f"{pipeline}: {sha} (version {version}) is already the current model")
            now = _now()
            if probation:
                record = {
                    "v": POINTER_VERSION,
                    "sha256": sha,
                    "version": version,
                    "previous": current["sha256"] if current else None,
                    "started": now,
                }
                atomic_write(self.pipeline_dir(pipeline) / "probation.json", _json_bytes(record))
                self.record(pipeline, "probation", sha, version)
                log.info("%s: model %s (version %s) on probation", pipeline, sha, version)
                return self._entry(pipeline, {"sha256": sha, "version": version, "committed_at": now})
            entry = {"sha256": sha, "version": version, "committed_at": now}
            self._promote(pipeline, state, entry)
            self.record(pipeline, "activated", sha, version)
            self._prune(pipeline)
            return self._entry(pipeline, entry)

    def _promote(self, pipeline: str, state: dict[str, Any], entry: dict[str, Any]) -> None:
        previous = [state["current"]] if state["current"] else []
        previous += state["previous"]
        previous = [p for p in previous if p["sha256"] != entry["sha256"]]
        self._write_state(pipeline, state, {"current": entry, "previous": previous})

    def commit(self, pipeline: str) -> Entry:
        """Promote the model on probation to the committed pointer, then prune old versions."""
        with self._lock:
            data = self._read_probation(pipeline)
            if not data:
                raise StoreError(f"{pipeline}: no model is on probation, nothing to commit")
            sha, version = data["sha256"], data["version"]
            self._known(pipeline, sha)
            entry = {"sha256": sha, "version": version, "committed_at": _now()}
            self._promote(pipeline, self._read_state(pipeline), entry)
            self._end_probation(pipeline)
            self.problems.pop(pipeline, None)
            self.record(pipeline, "committed", sha, version)
            log.info("%s: model %s (version %s) committed", pipeline, sha, version)
            self._prune(pipeline)
            return self._entry(pipeline, entry)

    def rollback(self, pipeline: str, reason: str) -> Entry | None:
        """End a probation, or else go back to the previously committed model; returns what to
        serve now (None: the model in the config). ``reason`` goes into the history."""
        with self._lock:
            data = self._read_probation(pipeline)
            if data is not None:
                self._end_probation(pipeline)
                sha, version = data.get("sha256"), data.get("version")
                self.record(pipeline, "rolled back", sha, version, reason)
                log.warning("%s: model %s on probation rolled back: %s", pipeline, sha, reason)
                return self.current(pipeline)
            state = self._read_state(pipeline)
            current = state["current"]
            if current is None:
                raise StoreError(
                    f"{pipeline}: nothing to roll back to: the pipeline serves its configured model"
                )
            previous = state["previous"]
            while previous and not self.model_path(pipeline, previous[0]["sha256"]).is_file():
                log.error(
                    "%s: rollback target %s has no model file; skipped", pipeline, previous[0]["sha256"]
                )
                previous = previous[1:]
            target = {**previous[0], "committed_at": _now()} if previous else None
            self._write_state(pipeline, state, {"current": target, "previous": previous[1:]})
            self.record(pipeline, "rolled back", current["sha256"], current["version"], reason)
            back_to = target["sha256"] if target else "the configured model"
            log.warning("%s: model %s rolled back to %s: %s", pipeline, current["sha256"], back_to, reason)
            return self._entry(pipeline, target) if target else None

    def startup(self, pipeline: str) -> Entry | None:
        """What to serve after a (re)start: the last committed model whose file is intact, or
        None (the model in the config). A probation cut short by the restart is rolled back."""
        with self._lock:
            self.cleanup(pipeline)
            data = self._read_probation(pipeline)
            state = self._read_state(pipeline)
            current = state["current"]
            if data is not None:
                self._end_probation(pipeline)
                if data and current and data["sha256"] == current["sha256"]:
                    # The commit had written current.json; only removing probation.json was left.
                    self.record(
                        pipeline, "committed", data["sha256"], data["version"], "completed at restart"
                    )
                else:
                    reason = "rolled back: restart during probation"
                    self.record(pipeline, "rolled back", data.get("sha256"), data.get("version"), reason)
                    log.warning(
                        "%s: model %s was on probation at restart; %s", pipeline, data.get("sha256"), reason
                    )
            previous = list(state["previous"])
            while current is not None:
                path = self.model_path(pipeline, current["sha256"])
                problem = None
                if not path.is_file():
                    problem = "model file missing"
                elif sha256_file(path) != current["sha256"]:
                    problem = "model file corrupt (sha256 mismatch)"
                if problem is None:
                    break
                log.error("%s: committed model %s: %s; falling back", pipeline, current["sha256"], problem)
                self._problem(pipeline, f"committed model {current['sha256'][:12]}: {problem}")
                self.record(pipeline, "rolled back", current["sha256"], current["version"], problem)
                old = {"current": current, "previous": previous}
                current = previous.pop(0) if previous else None
                self._write_state(pipeline, old, {"current": current, "previous": previous})
            return self._entry(pipeline, current) if current else None

    def _prune(self, pipeline: str) -> None:
        """Keep ``keep`` models: current, previous and probation always, then the newest."""
        state = self._read_state(pipeline)
        probation = self._read_probation(pipeline) or {}
        protected = [e["sha256"] for e in [state["current"], *state["previous"][:1]] if e]
        if probation.get("sha256"):
            protected.append(probation["sha256"])
        ranked = protected + [p["sha256"] for p in state["previous"][1:]]
        ranked += [v["sha256"] for v in self.versions(pipeline)]  # newest first
        keep: list[str] = []
        for sha in ranked:
            if sha not in keep and (sha in protected or len(keep) < self.keep):
                keep.append(sha)
        previous = [p for p in state["previous"] if p["sha256"] in keep]
        if len(previous) != len(state["previous"]):
            self._write_state(pipeline, state, {"current": state["current"], "previous": previous})
        for version in self.versions(pipeline):
            if version["sha256"] not in keep:
                directory = self.pipeline_dir(pipeline)
                (directory / f"{version['sha256']}.tflite").unlink(missing_ok=True)
                (directory / f"{version['sha256']}.json").unlink(missing_ok=True)
                (directory / f"{version['sha256']}{REFERENCE_SUFFIX}").unlink(missing_ok=True)
                self.record(pipeline, "pruned", version["sha256"], version["version"])
                log.info("%s: pruned model %s (version %s)", pipeline, version["sha256"], version["version"])

    # --- history -----------------------------------------------------------------------------

    def record(
        self,
        pipeline: str,
        action: str,
        sha256: str | None,
        version: str | None,
        reason: str = "",
        **extra: Any,
    ) -> None:
        """Append one line to the history (also for refused updates: action "refused")."""
        line = {"time": _now(), "action": action, "sha256": sha256, "version": version, "reason": reason}
        line.update(extra)
        data = json.dumps(line, sort_keys=True, default=str).encode() + b"\n"
        path = self.pipeline_dir(pipeline) / "history.jsonl"
        try:
            self._append(path, data)
        except (OSError, StoreError) as exc:
            # The change itself is done and on disk; a full disk must not turn it into an error.
            log.error("%s: cannot append to %s: %s (lost entry: %s)", pipeline, path, exc, line)

    def _append(self, path: Path, data: bytes) -> None:
        with self._lock:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data  # a line cut short by a crash stays on its own
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if size > self.history_lines * 64:  # a line is longer than that: count only then
                lines = path.read_bytes().splitlines(keepends=True)
                if len(lines) > self.history_lines:
                    atomic_write(path, b"".join(lines[-self.history_lines :]))

    def history(self, pipeline: str, limit: int = 50) -> list[dict[str, Any]]:
        """The last ``limit`` history entries, oldest first."""
        path = self.pipeline_dir(pipeline) / "history.jsonl"
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        result = []
        for raw in lines:
            try:
                item = json.loads(raw)
            except ValueError:
                continue  # a line cut short by a crash
            if isinstance(item, dict):
                result.append(item)
        return result[-limit:] if limit > 0 else []

    # --- crash leftovers ---------------------------------------------------------------------

    def cleanup(self, pipeline: str | None = None) -> list[Path]:
        """Remove what a crash can leave: temporary files, staged downloads, metadata without a
        model. Call at startup, before any update runs."""
        removed: list[Path] = []
        with self._lock:
            if pipeline is None:
                dirs = [d for d in self.root.iterdir() if d.is_dir()] if self.root.is_dir() else []
                dirs = [d for d in dirs if NAME_RE.match(d.name)]
            else:
                dirs = [self.pipeline_dir(pipeline)]
            for directory in dirs:
                for path in directory.iterdir():
                    sha = path.name.removesuffix(REFERENCE_SUFFIX).removesuffix(".json")
                    orphan = (
                        path.suffix == ".json"
                        and SHA256_RE.match(sha) is not None
                        and not (directory / f"{sha}.tflite").exists()
                    )
                    if _TMP_RE.match(path.name) or orphan:
                        path.unlink(missing_ok=True)
                        removed.append(path)
                staging = directory / "staging"
                if staging.is_dir():
                    for path in staging.iterdir():
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
                        removed.append(path)
        if removed:
            log.info("model store: removed %d leftover file(s): %s", len(removed), [p.name for p in removed])
        return removed

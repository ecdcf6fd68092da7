"""Model versions and anti-rollback: an order on version strings and each pipeline's floor.

The order (documented in docs/security.md): a version is ``[v]N[.N[.N[.N]]][-PRE]``, up to four
numeric components of at most nine digits each (missing ones count as 0, so ``1.2`` equals
``1.2.0``), then an optional semver-like pre-release: dot-separated identifiers of
``[0-9A-Za-z]``. Numbers compare numerically; a pre-release is lower than its release
(``2.0-rc1 < 2.0``); pre-release identifiers compare numerically when both are numbers, as text
otherwise, numbers before text, and a shorter list first when one is a prefix of the other. A
version that does not fit (``latest``, ``2024-11-05T10:00``, ``1.2.3.4.5``) cannot be ordered
and is refused by ``model.update``: without an order there is no anti-rollback.

The floor of a pipeline is the highest version ever committed by an update. It is kept in
``{store}/{pipeline}/floor.json`` (written durably through :mod:`edge_runtime.fsutil`), only ever
raised, and survives restarts, rollbacks and pruning: an update whose version is not above it is
a downgrade and needs an explicit, signed permission (``rollback_from``). A permission is
single-use: the digest of what it signs is recorded in ``{store}/{pipeline}/permissions.json``
(the last :data:`PERMISSIONS_KEPT`) when it is used, and refused after that, so two permissions
cannot be replayed in turn to flip a device between two versions.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

from edge_runtime import fsutil
from edge_runtime.updates.protocol import StoreError, VersionError

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(
    r"[vV]?(?P<nums>\d{1,9}(?:\.\d{1,9}){0,3})(?:-(?P<pre>[0-9A-Za-z]{1,32}(?:\.[0-9A-Za-z]{1,32}){0,7}))?"
)
VERSION_RULE = "[v]N[.N[.N[.N]]][-PRE] (for example 7, 1.4.0, v2024.11.5 or 2.0-rc.1)"
PERMISSIONS_KEPT = 256
VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]


def version_key(version: str) -> VersionKey:
    """A sortable key of ``version``; raises :class:`VersionError` when it cannot be ordered."""
    match = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise VersionError(f"version {version!r} cannot be ordered; use {VERSION_RULE}")
    nums = tuple(int(n) for n in match["nums"].split("."))
    nums += (0,) * (4 - len(nums))
    pre = match["pre"]
    if pre is None:
        return nums, 1, ()
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return nums, 0, ids


def is_newer(version: str, than: str) -> bool:
    """``version`` > ``than`` in the order above (both must be orderable)."""
    return version_key(version) > version_key(than)


class Floors:
    """The anti-rollback floor of each pipeline, under the model store's root."""

    FILE = "floor.json"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def _path(self, pipeline: str) -> Path:
        return self.root / pipeline / self.FILE

    def get(self, pipeline: str) -> str | None:
        """The highest version committed to ``pipeline`` by an update, or None (never updated)."""
        path = self._path(pipeline)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Fail closed: a floor that cannot be read must not turn into "any version goes".
            raise StoreError(f"{path}: unreadable anti-rollback floor ({exc}); fix or remove it") from exc
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str):
            raise StoreError(f"{path}: not an anti-rollback floor; fix or remove it")
        return version

    def raise_to(self, pipeline: str, version: str, sha256: str) -> bool:
        """Raise the floor to ``version`` when it is higher; True when it changed."""
        with self._lock:
            current = self.get(pipeline)
            if current is not None and not is_newer(version, current):
                return False
            record = {"v": 1, "version": version, "sha256": sha256, "at": round(time.time(), 3)}
            path = self._path(pipeline)
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsutil.atomic_write(path, (json.dumps(record, sort_keys=True) + "\n").encode())
            except OSError as exc:
                raise StoreError(
                    f"{path}: cannot write the anti-rollback floor: {exc.strerror or exc}"
                ) from exc
            log.info("%s: anti-rollback floor raised from %s to %s", pipeline, current, version)
            return True

    # -- single-use permissions -----------------------------------------------------------------

    def _permissions_path(self, pipeline: str) -> Path:
        return self.root / pipeline / "permissions.json"

    def _permissions(self, pipeline: str) -> list[str]:
        path = self._permissions_path(pipeline)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{path}: unreadable list of used permissions ({exc}); fix or remove it"
            ) from exc
        used = data.get("used") if isinstance(data, dict) else None
        if not isinstance(used, list) or not all(isinstance(u, str) for u in used):
            raise StoreError(f"{path}: not a list of used permissions; fix or remove it")
        return used

    def was_used(self, pipeline: str, digest: str) -> bool:
        """Whether the permission with this digest was used on ``pipeline`` already."""
        return digest in self._permissions(pipeline)

    def use(self, pipeline: str, digest: str) -> None:
        """Record a permission as used (durably), keeping the last :data:`PERMISSIONS_KEPT`."""
        with self._lock:
            used = [u for u in self._permissions(pipeline) if u != digest] + [digest]
            path = self._permissions_path(pipeline)
            data = {"v": 1, "used": used[-PERMISSIONS_KEPT:]}
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsutil.atomic_write(path, (json.dumps(data) + "\n").encode())
            except OSError as exc:
                raise StoreError(f"{path}: cannot record a used permission: {exc.strerror or exc}") from exc

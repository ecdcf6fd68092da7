"""The model-update protocol: its steps, its request, its error family.

``model.update`` walks a candidate model through these steps (:data:`STEPS`, in the order a device
reports them); each one either passes or raises an :class:`UpdateError` whose ``step`` names it,
so the event and the command reply say exactly which check refused the model:

``request``    the command itself is malformed (:meth:`UpdateRequest.from_payload`)
``signature``  the signature is missing, malformed or matches no configured key (:mod:`.signing`);
               checked before anything is downloaded: it covers every field but the location
``version``    the version cannot be ordered, or is not above the pipeline's anti-rollback floor
               without a signed permission (:mod:`.versions`)
``download``   the transfer failed: a refused scheme or redirect, an HTTP error, the deadline,
               a refused connection, a truncated body
``size``       more bytes than the size limit or than the announced size
``sha256``     the file is not the one announced
``load``       no delegate of the pipeline's chain loads it, or it crashes a runtime (:mod:`.checks`)
``check``      its inputs or outputs differ from the model it replaces (:func:`.checks.check_compatible`)
``smoke``      it fails or yields NaN on a real input (:func:`.checks.smoke_invoke`)
``probation``  it misbehaved after the swap (:mod:`.probation`)
``store``      the on-device store refused an operation (:mod:`.store`)

The package: this module (names, steps, errors, the request), :mod:`.checks` (sha256, isolated
load, compatibility, smoke), :mod:`.signing`, :mod:`.transfer` (download, chunked transfers),
:mod:`.store` (the on-device store), :mod:`.probation` and :mod:`.updater` (the device side of the
commands, against a small host interface). The fleet tool imports this module for the step names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.names import NAME_RE, SHA256_RE, TRANSFER_ID_RE

MAX_REFERENCE_BYTES = 32768
"""The largest drift reference an update may carry (its canonical JSON), well inside a command."""

STEPS = (
    "accepted",
    "signature",
    "download",
    "sha256",
    "load",
    "check",
    "smoke",
    "swap",
    "probation",
    "commit",
)
"""The steps of a ``model.update``, in the order a device reports them in its replies."""


class UpdateError(EdgeRuntimeError, ValueError):
    """A model update was refused; ``step`` names the step that refused it."""

    step = "update"

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        if step is not None:
            self.step = step


class RequestError(UpdateError):
    step = "request"


class VersionError(UpdateError):
    step = "version"


class DownloadError(UpdateError):
    step = "download"


class SizeLimitError(UpdateError):
    step = "size"


class ChecksumError(UpdateError):
    step = "sha256"


class SignatureError(UpdateError):
    step = "signature"


class CandidateLoadError(UpdateError):
    step = "load"


class IncompatibleModelError(UpdateError):
    step = "check"


class SmokeTestError(UpdateError):
    step = "smoke"


class ProbationError(UpdateError):
    step = "probation"

    def __init__(self, message: str, *, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted
        """The pipeline stopped serving the candidate (paused, stopped, reloaded) before a verdict."""


class StoreError(UpdateError):
    step = "store"


def canonical_json(doc: Any) -> bytes:
    """The one byte form of a JSON document that is hashed: keys sorted, no spaces, ASCII only,
    no NaN or infinity (the same bytes whoever parsed and re-serialised it)."""
    try:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"not a plain JSON document: {exc}") from exc
    return text.encode("ascii")


def reference_digest(reference: Any) -> str:
    """The sha256 (hex) of a drift reference's :func:`canonical_json`: what a signature covers."""
    return hashlib.sha256(canonical_json(reference)).hexdigest()


# --- the request --------------------------------------------------------------------------------


def _text(payload: Mapping[str, Any], key: str, *, required: bool = True, limit: int = 256) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        if required:
            raise RequestError(f"model.update: {key!r} is required")
        return None
    if not isinstance(value, str):
        raise RequestError(f"model.update: {key!r} must be a string, got {type(value).__name__}")
    if len(value) > limit or any(c in value for c in "\r\n\x00"):
        raise RequestError(f"model.update: {key!r} must be one line of at most {limit} characters")
    return value


@dataclass(frozen=True)
class UpdateRequest:
    """A validated ``model.update`` command: a ``url`` or a chunked ``transfer`` id, never both."""

    id: str
    pipeline: str
    sha256: str
    size: int
    version: str
    url: str | None = None
    transfer: str | None = None
    signature: str | None = None
    rollback_from: str | None = None
    """Permission to install a version that is not above the floor: only on a device whose
    committed version is this one (signed, so a captured permission cannot be replayed later)."""
    reference: dict[str, Any] | None = None
    """The new model's drift reference (checked by :func:`edge_runtime.monitor.drift.checked`),
    kept with it in the store; its sha256 is signed with the request."""
    reference_sha256: str | None = None
    """:func:`reference_digest` of ``reference``, computed here (never taken from the sender)."""

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> UpdateRequest:
        pipeline = _text(payload, "pipeline") or ""
        if not NAME_RE.match(pipeline):
            raise RequestError(f"model.update: pipeline {pipeline!r} is not a valid pipeline name")
        sha = (_text(payload, "sha256") or "").lower()
        if not SHA256_RE.match(sha):
            raise RequestError(f"model.update: sha256 {sha!r} is not 64 hexadecimal digits")
        size = payload.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise RequestError(f"model.update: size must be a positive integer, got {size!r}")
        url = _text(payload, "url", required=False, limit=4096)
        transfer = _text(payload, "transfer", required=False)
        if (url is None) == (transfer is None):
            raise RequestError("model.update: give exactly one of 'url' or 'transfer'")
        if transfer is not None and not TRANSFER_ID_RE.match(transfer):
            raise RequestError(f"model.update: transfer id {transfer!r} must be 1-64 of [A-Za-z0-9_-]")
        reference, reference_sha = _reference(payload.get("reference"))
        return cls(
            id=_text(payload, "id") or "",
            pipeline=pipeline,
            sha256=sha,
            size=size,
            version=_text(payload, "version", limit=64) or "",
            url=url,
            transfer=transfer,
            signature=_text(payload, "signature", required=False, limit=1024),
            rollback_from=_text(payload, "rollback_from", required=False, limit=64),
            reference=reference,
            reference_sha256=reference_sha,
        )


def _reference(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A request's drift reference, checked, and its digest; (None, None) without one."""
    from edge_runtime.monitor.drift import checked

    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise RequestError(f"model.update: 'reference' must be a JSON object, got {type(value).__name__}")
    try:
        size = len(canonical_json(value))
        reference = checked(value, "reference")
    except (ValueError, TypeError) as exc:  # canonical_json's SignatureError is a ValueError too
        raise RequestError(f"model.update: {exc}") from exc
    if size > MAX_REFERENCE_BYTES:
        raise RequestError(f"model.update: 'reference' is {size} bytes, over {MAX_REFERENCE_BYTES}")
    return reference, reference_digest(reference)


@dataclass(frozen=True)
class RollbackRequest:
    """A validated ``model.rollback``: back to ``version`` (a version in the local history; by
    default the previous one), from ``rollback_from`` (the committed version it undoes)."""

    id: str
    pipeline: str
    version: str | None = None
    rollback_from: str | None = None
    signature: str | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> RollbackRequest:
        pipeline = _text(payload, "pipeline") or ""
        if not NAME_RE.match(pipeline):
            raise RequestError(f"model.rollback: pipeline {pipeline!r} is not a valid pipeline name")
        return cls(
            id=_text(payload, "id") or "",
            pipeline=pipeline,
            version=_text(payload, "version", required=False, limit=64),
            rollback_from=_text(payload, "rollback_from", required=False, limit=64),
            signature=_text(payload, "signature", required=False, limit=1024),
        )

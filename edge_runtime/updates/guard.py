"""Anti-rollback: what a ``model.update`` or ``model.rollback`` must satisfy before anything runs.

An update's version must be orderable and above the pipeline's floor (:mod:`.versions`), unless it
is what the pipeline already runs (a no-op) or carries a single-use permission ``rollback_from``
equal to the version committed now. A rollback goes to a model of the local history (committed
before, still in the store) and, with keys configured, must be signed for the pipeline, its
target and the version it undoes; it works once. Signatures themselves are checked by
:func:`.signing.verify`; this module decides what a verified request may do.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from edge_runtime.updates.host import UpdatablePipeline
from edge_runtime.updates.protocol import RollbackRequest, SignatureError, UpdateRequest, VersionError
from edge_runtime.updates.signing import SignedFields, signed_message, verify
from edge_runtime.updates.store import Entry, ModelStore
from edge_runtime.updates.versions import Floors, is_newer, version_key

log = logging.getLogger(__name__)


def update_fields(request: UpdateRequest) -> SignedFields:
    """What the signature of ``request`` covers."""
    return SignedFields.update(
        request.pipeline,
        request.version,
        request.sha256,
        request.size,
        request.rollback_from,
        request.reference_sha256,
    )


def permission(fields: SignedFields) -> str:
    """The digest a single-use permission is recorded under (what it signs, not the signature)."""
    return hashlib.sha256(signed_message(fields)).hexdigest()


def _rollback_fields(request: RollbackRequest) -> SignedFields | None:
    if request.version is None or request.rollback_from is None:
        return None
    return SignedFields.rollback(request.pipeline, request.version, request.rollback_from)


class Guard:
    """Anti-rollback decisions over one model store and its floors."""

    def __init__(self, store: ModelStore, floors: Floors) -> None:
        self.store = store
        self.floors = floors

    def seed(self, pipelines: Sequence[str]) -> None:
        """A store from before floors existed: the committed version of each pipeline is its floor."""
        for name in pipelines:
            committed = self.store.current(name)
            if committed is None:
                continue
            try:
                self.floors.raise_to(name, committed.version, committed.sha256)
            except VersionError as exc:
                log.warning("pipeline %s: no anti-rollback floor from its committed model: %s", name, exc)

    def committed_version(self, pipeline: UpdatablePipeline) -> str:
        """The version the pipeline has committed: the store's, else its configured model's."""
        entry = self.store.current(pipeline.name)
        if entry is not None:
            return entry.version
        return str(pipeline.serving().info.get("version") or "")

    def check_update(self, request: UpdateRequest, pipeline: UpdatablePipeline) -> None:
        """Raise :class:`VersionError` unless ``request`` may be installed (see the module doc)."""
        version_key(request.version)
        floor = self.floors.get(request.pipeline)
        if floor is None or is_newer(request.version, floor):
            return
        committed = self.committed_version(pipeline)
        if pipeline.serving().model.sha256 == request.sha256 and committed == request.version:
            return  # what it runs already (a rollout sent again): answered "already", changes nothing
        if request.rollback_from is None:
            raise VersionError(
                f"version {request.version!r} is not above {floor!r}, the highest version committed "
                f"to pipeline {request.pipeline!r} (anti-rollback); to install it anyway, sign the "
                "request with rollback_from = the version the device runs now"
            )
        if request.rollback_from != committed:
            raise VersionError(
                f"rollback_from {request.rollback_from!r} is not the version pipeline "
                f"{request.pipeline!r} runs now ({committed!r}): the permission is for another state"
            )
        if self.floors.was_used(request.pipeline, permission(update_fields(request))):
            raise VersionError(
                f"this downgrade permission (to {request.version!r} from {request.rollback_from!r}) was "
                "used already; a permission works once"
            )

    def used_update(self, request: UpdateRequest) -> None:
        """After a commit: a downgrade permission it carried is spent."""
        if request.rollback_from is not None:
            self.floors.use(request.pipeline, permission(update_fields(request)))

    def rollback_target(
        self, request: RollbackRequest, pipeline: UpdatablePipeline, keys: Sequence[str]
    ) -> Entry:
        """The model ``request`` goes back to, or :class:`UpdateError` saying why not."""
        fields = _rollback_fields(request)
        if keys and fields is None:
            raise SignatureError(
                "model.rollback: public keys are configured, so a rollback must name 'version' and "
                "'rollback_from' and be signed (edge-fleet rollback --key)"
            )
        if fields is not None:
            verify(keys, fields, request.signature)
            if self.floors.was_used(pipeline.name, permission(fields)):
                raise VersionError("this rollback was done already; a signed rollback works once")
        committed = self.committed_version(pipeline)
        if request.rollback_from is not None and request.rollback_from != committed:
            raise VersionError(
                f"rollback_from {request.rollback_from!r} is not the version pipeline {pipeline.name!r} "
                f"runs now ({committed!r})"
            )
        history = self.store.rollback_targets(pipeline.name)
        if not history:
            raise VersionError(f"pipeline {pipeline.name!r} has no previous model to roll back to")
        if request.version is None:
            return history[0]
        for entry in history:
            if entry.version == request.version:
                return entry
        known = ", ".join(repr(e.version) for e in history)
        raise VersionError(
            f"version {request.version!r} is not in the local history of pipeline {pipeline.name!r} "
            f"(previous versions on this device: {known})"
        )

    def used_rollback(self, request: RollbackRequest) -> None:
        """After a rollback: its signed request is spent."""
        fields = _rollback_fields(request)
        if fields is not None:
            self.floors.use(request.pipeline, permission(fields))

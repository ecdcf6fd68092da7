"""A model file as an update: its sha256, size and signature; the operator's signing key pair.

Signatures are :mod:`edge_runtime.updates.signing`'s (Ed25519, ``edge-runtime-model-v2``: over the
pipeline, version, sha256, size, the optional downgrade permission ``rollback_from`` and the sha256
of the drift reference the update carries), so a device checks exactly what this tool signs, before
it downloads anything. The drift reference is the model's ``monitor_reference`` in the
``manifest.json`` beside the model file, or a reference file given with ``--reference``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.fleet.common import FleetError, check_pipeline

KEY_NAME = "fleet.key"
PUB_NAME = "fleet.pub"


@dataclass(frozen=True)
class Artifact:
    """What a ``model.update`` announces about the file."""

    path: Path
    pipeline: str
    version: str
    sha256: str
    size: int
    signature: str | None = None
    rollback_from: str | None = None
    reference: dict[str, Any] | None = None
    """The model's drift reference, sent with the update and kept with the model on the device."""
    reference_sha256: str | None = None
    """Its :func:`~edge_runtime.updates.protocol.reference_digest`, which the signature covers."""

    def manifest(self) -> dict[str, Any]:
        """``{pipeline, version, sha256, size, signature}``, and ``rollback_from`` and
        ``reference_sha256`` when set (what ``sign`` prints)."""
        extra: dict[str, Any] = {"rollback_from": self.rollback_from} if self.rollback_from else {}
        if self.reference_sha256:
            extra["reference_sha256"] = self.reference_sha256
        return {
            "pipeline": self.pipeline,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            **extra,
            "signature": self.signature,
        }


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the model: {exc.strerror or exc}") from exc
    if size == 0:
        raise FleetError(f"{path}: the model file is empty")
    return digest.hexdigest(), size


def check_version(version: str) -> str:
    if not version or len(version) > 64 or any(c in version for c in "\r\n\x00"):
        raise FleetError(f"--version {version!r}: one line of 1 to 64 characters")
    return version


def load_key(path: Path) -> bytes:
    """The PEM private key at ``path``; refused unless only its owner can read it (0600)."""
    from cryptography.hazmat.primitives import serialization

    from edge_runtime.updates.protocol import UpdateError
    from edge_runtime.updates.signing import load_private_key

    try:
        key = load_private_key(path)
    except UpdateError as exc:
        raise FleetError(str(exc)) from exc

    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem


def model_reference(path: Path, reference_file: Path | None = None) -> dict[str, Any] | None:
    """The drift reference to send with the model at ``path``: ``reference_file`` when given,
    else the ``monitor_reference`` of its entry in the ``manifest.json`` beside it, else None."""
    from edge_runtime.monitor.drift import checked, load_reference, manifest_reference

    try:
        if reference_file is not None:
            return load_reference(reference_file)
        ref = manifest_reference(path)
        return None if ref is None else checked(ref, str(path))
    except (OSError, ValueError) as exc:
        raise FleetError(f"drift reference of {path}: {exc}") from exc


def describe_model(
    path: Path,
    pipeline: str,
    version: str,
    key_pem: bytes | None = None,
    rollback_from: str | None = None,
    reference_file: Path | None = None,
) -> Artifact:
    """Hash the model, find its drift reference (:func:`model_reference`) and, with a key, sign
    ``(pipeline, version, sha256, size, rollback_from, reference sha256)``."""
    check_pipeline(pipeline)
    check_version(version)
    if rollback_from is not None:
        check_version(rollback_from)
    if not path.is_file():
        raise FleetError(f"{path}: no such model file")
    sha256, size = file_digest(path)
    from edge_runtime.updates.protocol import (
        MAX_REFERENCE_BYTES,
        UpdateError,
        canonical_json,
        reference_digest,
    )

    reference = model_reference(path, reference_file)
    reference_sha = None
    if reference is not None:
        try:
            if len(canonical_json(reference)) > MAX_REFERENCE_BYTES:
                raise FleetError(f"drift reference of {path}: over {MAX_REFERENCE_BYTES} bytes")
            reference_sha = reference_digest(reference)
        except UpdateError as exc:
            raise FleetError(f"drift reference of {path}: {exc}") from exc
    signature: str | None = None
    if key_pem is not None:
        from edge_runtime.updates.signing import SignedFields, sign

        fields = SignedFields.update(pipeline, version, sha256, size, rollback_from, reference_sha)
        try:
            signature = sign(key_pem, fields)
        except UpdateError as exc:
            raise FleetError(f"signing {path} failed: {exc}") from exc
    return Artifact(path, pipeline, version, sha256, size, signature, rollback_from, reference, reference_sha)


def sign_rollback(key_pem: bytes, pipeline: str, version: str, rollback_from: str) -> str:
    """The signature of ``model.rollback`` of ``pipeline`` from ``rollback_from`` to ``version``."""
    check_pipeline(pipeline)
    from edge_runtime.updates.protocol import UpdateError
    from edge_runtime.updates.signing import SignedFields, sign

    try:
        return sign(
            key_pem, SignedFields.rollback(pipeline, check_version(version), check_version(rollback_from))
        )
    except UpdateError as exc:
        raise FleetError(f"signing the rollback failed: {exc}") from exc


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    public_b64: str


def keygen(out_dir: Path, *, force: bool = False) -> KeyPair:
    """Write ``out_dir/fleet.key`` (mode 0600) and ``out_dir/fleet.pub`` (the base64 public key)."""
    private_path, public_path = out_dir / KEY_NAME, out_dir / PUB_NAME
    if not force:
        existing = [str(p) for p in (private_path, public_path) if p.exists()]
        if existing:
            raise FleetError(f"{', '.join(existing)}: exists; refusing to overwrite (use --force)")
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise FleetError(f"{out_dir}: cannot create the directory: {exc.strerror or exc}") from exc
    from edge_runtime.updates.protocol import UpdateError
    from edge_runtime.updates.signing import generate_keypair, write_private_key

    pem, public_b64 = generate_keypair()
    try:
        write_private_key(private_path, pem, overwrite=force)
    except UpdateError as exc:
        raise FleetError(str(exc)) from exc
    tmp = public_path.with_name(f".{public_path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(public_b64 + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, public_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FleetError(f"{public_path}: cannot write the public key: {exc.strerror or exc}") from exc
    return KeyPair(private_path, public_path, public_b64)


def config_snippet(public_b64: str) -> str:
    """The lines a device's config needs to accept updates signed with this key."""
    return f'[updates]\npublic_keys = ["{public_b64}"]\n'


def rollback_fields(
    pipeline: str, to: str | None, start: str | None, key_pem: bytes | None
) -> dict[str, str]:
    """The ``model.rollback`` fields beyond the pipeline: ``version`` (``to``), ``rollback_from``
    (``start``) and, with a key, the ``signature`` of both (which then must be given)."""
    fields = {name: value for name, value in (("version", to), ("rollback_from", start)) if value is not None}
    if key_pem is not None:
        if to is None or start is None:
            raise FleetError("--key signs a rollback from one version to another: give --to and --from")
        fields["signature"] = sign_rollback(key_pem, pipeline, to, start)
    return fields


def with_signature(artifact: Artifact, signed: Path) -> Artifact:
    """``artifact`` with the signature of the manifest ``signed`` wrote (checked to match)."""
    try:
        data = json.loads(signed.read_text())
    except (OSError, ValueError) as exc:
        raise FleetError(f"{signed}: cannot read the signed manifest: {exc}") from exc
    if not isinstance(data, dict):
        raise FleetError(f"{signed}: not a JSON object")
    for field in ("pipeline", "version", "sha256", "size", "rollback_from", "reference_sha256"):
        mine = getattr(artifact, field)
        if data.get(field) != mine:
            raise FleetError(f"{signed}: signed for {field} {data.get(field)!r}, but the update has {mine!r}")
    signature = data.get("signature")
    if not isinstance(signature, str) or not signature:
        raise FleetError(f"{signed}: no signature")
    return dataclasses.replace(artifact, signature=signature)

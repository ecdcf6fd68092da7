"""Ed25519 signatures over model updates and rollbacks.

An operator signs what a request asks for with a private key kept off the device; each device
holds the matching public keys (raw 32-byte keys, base64) in its config. The signed bytes are
:func:`signed_message` of :class:`SignedFields`: a versioned header (``edge-runtime-model-v2``)
and one ``name=value`` line per field, each checked to hold no line break, so no two different
requests share a message:

- ``model.update``: ``action=update``, the pipeline, the version, the sha256 and size of the
  file, and ``rollback_from`` (empty unless the request may install a version that is not above
  the pipeline's anti-rollback floor). The URL or transfer id is not signed: where the bytes come
  from does not matter once their sha256 is, and so the signature is checked *before* anything
  is downloaded.
- ``model.rollback``: ``action=rollback``, the pipeline, the version to go back to and
  ``rollback_from``, the committed version it undoes (so it cannot be replayed later).
- an update that carries the new model's drift reference (``reference``) adds one more line,
  ``reference_sha256=`` the sha256 of the reference's canonical JSON
  (:func:`~.protocol.reference_digest`). The line is there only when a reference is: a request signed
  without a reference has the same message as before, and a reference added to, removed from or
  swapped in a signed request changes the message, so the signature no longer matches.

Once a public key is configured, an unsigned request is refused. With no key configured, requests
pass unsigned and a signature that comes with one is ignored (with a warning): the device has
nothing to check it against. Version 1 signatures (``edge-runtime-model-v1``: pipeline, version,
sha256 only) are not accepted: they sign neither the size nor the rollback permission.

``cryptography`` is imported only when a key is used, so a device that does not sign its updates
runs without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edge_runtime.fsutil import fsync_dir
from edge_runtime.names import SHA256_RE
from edge_runtime.updates.protocol import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

MESSAGE_HEADER = b"edge-runtime-model-v2\n"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def _field(what: str, value: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise SignatureError(f"{what} must be a non-empty string, got {value!r}")
    if any(c in value for c in "\r\n\x00"):
        raise SignatureError(f"{what} {value!r} must not contain a line break or NUL")
    return value


@dataclass(frozen=True)
class SignedFields:
    """What one signature covers (see the module doc)."""

    action: Literal["update", "rollback"]
    pipeline: str
    version: str
    sha256: str = ""
    size: int = 0
    rollback_from: str = ""
    reference_sha256: str = ""
    """The :func:`~.protocol.reference_digest` of the drift reference the update carries ("" for none)."""

    @classmethod
    def update(
        cls,
        pipeline: str,
        version: str,
        sha256: str,
        size: int,
        rollback_from: str | None = None,
        reference_sha256: str | None = None,
    ) -> SignedFields:
        return cls("update", pipeline, version, sha256, size, rollback_from or "", reference_sha256 or "")

    @classmethod
    def rollback(cls, pipeline: str, version: str, rollback_from: str) -> SignedFields:
        return cls("rollback", pipeline, version, "", 0, rollback_from)

    def describe(self) -> str:
        if self.action == "rollback":
            return f"rollback of pipeline {self.pipeline!r} from {self.rollback_from!r} to {self.version!r}"
        extra = f", downgrade from {self.rollback_from!r}" if self.rollback_from else ""
        if self.reference_sha256:
            extra += f", drift reference sha256 {self.reference_sha256.lower()[:12]}..."
        return (
            f"update of pipeline {self.pipeline!r} to version {self.version!r} "
            f"(sha256 {self.sha256.lower()[:12]}..., {self.size} bytes{extra})"
        )


def signed_message(fields: SignedFields) -> bytes:
    """The exact bytes a signature covers."""
    if fields.action not in ("update", "rollback"):
        raise SignatureError(f"action {fields.action!r} is not update or rollback")
    _field("pipeline", fields.pipeline)
    _field("version", fields.version)
    _field("rollback_from", fields.rollback_from, empty=fields.action == "update")
    digest, size = "", ""
    if fields.action == "update":
        digest = _field("sha256", fields.sha256).lower()
        if not SHA256_RE.match(digest):
            raise SignatureError(f"sha256 {fields.sha256!r} is not 64 hexadecimal digits")
        if isinstance(fields.size, bool) or not isinstance(fields.size, int) or fields.size <= 0:
            raise SignatureError(f"size must be a positive integer, got {fields.size!r}")
        size = str(fields.size)
    lines = [
        f"action={fields.action}",
        f"pipeline={fields.pipeline}",
        f"version={fields.version}",
        f"sha256={digest}",
        f"size={size}",
        f"rollback_from={fields.rollback_from}",
    ]
    if fields.reference_sha256:
        if fields.action != "update":
            raise SignatureError("only an update carries a drift reference")
        reference = _field("reference_sha256", fields.reference_sha256).lower()
        if not SHA256_RE.match(reference):
            raise SignatureError(f"reference_sha256 {fields.reference_sha256!r} is not 64 hexadecimal digits")
        lines.append(f"reference_sha256={reference}")  # only with a reference: older messages stay
    return MESSAGE_HEADER + "".join(line + "\n" for line in lines).encode()


def _crypto_missing(exc: ImportError) -> SignatureError:
    return SignatureError(
        f"signed model updates need the 'cryptography' package (pip install cryptography): {exc}"
    )


def _b64decode(what: str, value: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"{what} must be a base64 string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not valid base64: {exc}") from exc
    if len(raw) != size:
        raise SignatureError(f"{what} must decode to {size} bytes, got {len(raw)}")
    return raw


def key_id(public_b64: str) -> str:
    """A short fingerprint of a public key for logs and history (16 hex digits)."""
    raw = _b64decode("public key", public_b64, PUBLIC_KEY_BYTES)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(public_b64: str) -> Ed25519PublicKey:
    """A configured public key (raw 32 bytes, base64); for config validation too."""
    raw = _b64decode("public key", public_b64, PUBLIC_KEY_BYTES)
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:
        raise _crypto_missing(exc) from exc
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_keypair() -> tuple[bytes, str]:
    """A new key pair: (private key as unencrypted PKCS#8 PEM, raw public key as base64)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError as exc:
        raise _crypto_missing(exc) from exc
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, base64.b64encode(raw).decode("ascii")


def _private_key(pem: bytes, what: str = "private key") -> Ed25519PrivateKey:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError as exc:
        raise _crypto_missing(exc) from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{what}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{what}: an Ed25519 key is required, got {type(key).__name__}")
    return key


def sign(private_pem: bytes, fields: SignedFields) -> str:
    """The base64 signature of a request, for its ``signature`` field."""
    message = signed_message(fields)
    return base64.b64encode(_private_key(private_pem).sign(message)).decode("ascii")


def verify(public_keys_b64: Sequence[str], fields: SignedFields, signature_b64: str | None) -> bool:
    """Accept the request (True: verified; False: no key is configured, nothing to check) or
    raise :class:`SignatureError` saying why not."""
    message = signed_message(fields)
    what = fields.describe()
    if isinstance(public_keys_b64, str):
        raise SignatureError("public keys must be a list of base64 strings, not one string")
    if not public_keys_b64:
        if signature_b64:
            log.warning("%s: signature ignored: no public key is configured to check it", what)
        return False
    if not signature_b64:
        raise SignatureError(
            f"{what}: unsigned, but {len(public_keys_b64)} public key(s) are configured; "
            "sign it with the operator's private key"
        )
    signature = _b64decode(f"{what}: signature", signature_b64, SIGNATURE_BYTES)
    from cryptography.exceptions import InvalidSignature

    for position, public_b64 in enumerate(public_keys_b64):
        try:
            key = parse_public_key(public_b64)
        except SignatureError as exc:
            raise SignatureError(f"configured public key {position}: {exc}") from exc
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        log.info("%s: signature verified with key %s", what, key_id(public_b64))
        return True
    raise SignatureError(
        f"{what}: the signature matches none of the {len(public_keys_b64)} configured public key(s) "
        "(wrong key, or a signed field differs from what was signed, or it is an "
        "edge-runtime-model-v1 signature: sign again with this version's fleet tool)"
    )


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM private key file; refused unless only its owner can read it (mode 0600)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise SignatureError(f"{p}: no such private key file") from exc
    except OSError as exc:
        raise SignatureError(f"{p}: cannot open private key file: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SignatureError(f"{p}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SignatureError(
                f"{p}: private key file is accessible by group or others (mode {mode:04o}); "
                f"run: chmod 600 {p}"
            )
        pem = f.read()
    return _private_key(pem, str(p))


def write_private_key(path: str | Path, pem: bytes, *, overwrite: bool = False) -> Path:
    """Write a private key file with mode 0600, atomically; never replaces a key unless asked."""
    p = Path(path)
    _private_key(pem)  # refuse to write something that is not a key
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SignatureError(f"{p}: cannot create private key file: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)  # fails if p exists, atomically
            except FileExistsError as exc:
                raise SignatureError(f"{p}: exists; refusing to overwrite a private key") from exc
            except OSError as exc:
                raise SignatureError(f"{p}: cannot write private key file: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(p.parent)
    return p

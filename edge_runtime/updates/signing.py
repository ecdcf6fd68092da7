"""Ed25519 signatures over model updates.

An operator signs ``(pipeline, version, sha256)`` of a model with a private key kept off the
device; each device holds the matching public keys (raw 32-byte keys, base64) in its config. The
signed bytes are :func:`signed_message`: a fixed header and the three fields one per line, each
checked to hold no line break, so no two different updates share a message.

Once a public key is configured, an unsigned update is refused. With no key configured, updates
pass unsigned and a signature that comes with one is ignored (with a warning): the device has
nothing to check it against.

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
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.fsutil import fsync_dir
from edge_runtime.names import SHA256_RE
from edge_runtime.updates.protocol import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

MESSAGE_HEADER = b"edge-runtime-model-v1\n"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def _field(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise SignatureError(f"{what} must be a non-empty string, got {value!r}")
    if "\n" in value or "\r" in value or "\x00" in value:
        raise SignatureError(f"{what} {value!r} must not contain a line break or NUL")
    return value


def signed_message(pipeline: str, version: str, sha256: str) -> bytes:
    """The exact bytes an update signature covers."""
    _field("pipeline", pipeline)
    _field("version", version)
    digest = _field("sha256", sha256).lower()
    if not SHA256_RE.match(digest):
        raise SignatureError(f"sha256 {sha256!r} is not 64 hexadecimal digits")
    return MESSAGE_HEADER + f"{pipeline}\n{version}\n{digest}\n".encode()


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


def sign(private_pem: bytes, pipeline: str, version: str, sha256: str) -> str:
    """The base64 signature of an update, for the ``signature`` field of ``model.update``."""
    message = signed_message(pipeline, version, sha256)
    return base64.b64encode(_private_key(private_pem).sign(message)).decode("ascii")


def verify(
    public_keys_b64: Sequence[str],
    pipeline: str,
    version: str,
    sha256: str,
    signature_b64: str | None,
) -> None:
    """Accept the update or raise :class:`SignatureError` saying why not."""
    message = signed_message(pipeline, version, sha256)
    what = f"update of pipeline {pipeline!r} to version {version!r} (sha256 {sha256.lower()[:12]}...)"
    if isinstance(public_keys_b64, str):
        raise SignatureError("public keys must be a list of base64 strings, not one string")
    if not public_keys_b64:
        if signature_b64:
            log.warning("%s: signature ignored: no public key is configured to check it", what)
        return
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
        return
    raise SignatureError(
        f"{what}: the signature matches none of the {len(public_keys_b64)} configured public key(s) "
        "(wrong key, or the pipeline, version or sha256 differ from what was signed)"
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

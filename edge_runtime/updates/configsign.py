"""Operator signatures over config files, for ``config.update`` (the daemon checks them in
:mod:`edge_runtime.daemon.config_update`; ``edge-fleet config`` makes them).

The keys are the fleet's Ed25519 keys of :mod:`edge_runtime.updates.signing`. The signed bytes are
:func:`config_message`: a versioned header, the device id, the sha256 of the config file being
replaced, then the new file's exact bytes: valid for one device, once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.names import SHA256_RE
from edge_runtime.updates.protocol import SignatureError
from edge_runtime.updates.signing import key_id, load_private_key, parse_public_key

CONFIG_HEADER = b"edge-runtime-config-v1\n"
SIGNATURE_BYTES = 64


def config_message(device: str, base_sha256: str, config: bytes) -> bytes:
    """The exact bytes a ``config.update`` signature covers: a versioned header, the device id,
    the sha256 of the config file being replaced (``get_config`` reports it as ``file_sha256``),
    then the new file's bytes."""
    if not device or any(c in device for c in "\r\n\x00"):
        raise SignatureError(f"device id {device!r} must be non-empty, without line breaks")
    if not SHA256_RE.match(base_sha256):
        raise SignatureError(f"base sha256 {base_sha256!r} is not 64 hexadecimal digits")
    return CONFIG_HEADER + f"{device}\n{base_sha256.lower()}\n".encode() + config


def sign_config(private_key_file: str | Path, device: str, base_sha256: str, config: bytes) -> str:
    """The base64 ``signature`` of a ``config.update`` (the key file must be mode 0600)."""
    key = load_private_key(private_key_file)
    return base64.b64encode(key.sign(config_message(device, base_sha256, config))).decode("ascii")


def verify_config(
    public_keys: Sequence[str], device: str, base_sha256: str, config: bytes, signature: str
) -> str:
    """The id of the configured key that signed this update, or :class:`SignatureError`."""
    if not public_keys:
        raise SignatureError(
            "no operator key is configured (updates.public_keys): security settings can only be "
            "changed on the device (edit the file, then SIGHUP or systemctl reload)"
        )
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"signature is not valid base64: {exc}") from None
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureError(f"signature must decode to {SIGNATURE_BYTES} bytes, got {len(raw)}")
    try:
        from cryptography.exceptions import InvalidSignature
    except ImportError as exc:
        raise SignatureError(f"signed config updates need the 'cryptography' package: {exc}") from None

    message = config_message(device, base_sha256, config)
    for public in public_keys:
        try:
            parse_public_key(public).verify(raw, message)
        except InvalidSignature:
            continue
        return key_id(public)
    raise SignatureError(
        f"the signature matches none of the {len(public_keys)} configured operator key(s) "
        "(wrong key, another device, or made for another version of the config file than "
        f"{base_sha256[:12]}...)"
    )

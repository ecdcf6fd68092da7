"""``config.update``: a new config file sent over MQTT, applied only when it is safe.

The steps, each a refusal with a reply when it fails, the old config untouched on disk and running:

1. the text is loaded exactly as the file would be (includes, board profile, ``--set`` overrides)
   and checked by the :mod:`~edge_runtime.daemon.preflight` (every file it names opened and
   checked, every pipeline built on its models' static specs), before anything is written;
2. changes to security settings (the policy of :mod:`edge_runtime.config.guard`: keys, TLS,
   password file and user, the broker when it protects a secret, bind addresses, the state
   directory, delegate libraries, files the running config does not name, includes) need a
   signature by an operator key (``updates.public_keys`` of the *running* config) over
   :func:`config_message`: the device id, the sha256 of the config file it replaces and the
   exact new bytes, so it is valid for one device, once (the file it was made for is then gone);
3. the file is replaced atomically (:func:`edge_runtime.fsutil.atomic_write`, its mode kept; no
   ``.new`` or ``.bak`` file is ever left) and the daemon reloads; when the reload fails the old
   bytes are written back and the reply says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.config import DEMO_CONFIG, Config, load_config, parse_toml
from edge_runtime.config.guard import check_includes, includes_of, protected_changes
from edge_runtime.daemon.preflight import preflight
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.fsutil import atomic_write
from edge_runtime.reporting.commands import CommandError
from edge_runtime.updates.configsign import verify_config
from edge_runtime.updates.protocol import SignatureError

log = logging.getLogger(__name__)


class ConfigHost(Protocol):
    """What ``config.update`` needs of the daemon."""

    @property
    def config(self) -> Config: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def overrides(self) -> Sequence[str]: ...

    @property
    def profile(self) -> str | None: ...

    def reload(self) -> str: ...

    def event(self, kind: str, message: str, fields: dict[str, Any]) -> None: ...


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apply_config_update(host: ConfigHost, text: str, signature: str | None) -> dict[str, Any]:
    """Check, write and reload; see the module docstring. Raises :class:`CommandError`."""
    try:
        return _apply(host, text, signature)
    except CommandError as exc:
        host.event("config.refused", f"config.update refused: {exc}", {})
        raise


def _unsigned(guarded: list[str]) -> CommandError:
    return CommandError(
        "refused: security settings need a config.update signed with an operator key "
        f"(see docs/security.md): {'; '.join(guarded)}"
    )


def _checked(
    host: ConfigHost, path: Path, text: str, old_bytes: bytes, new_bytes: bytes, signature: str | None
) -> tuple[str | None, list[str]]:
    """(the key that signed it or None, the guarded changes it makes); CommandError when the
    new config does not load or pass the preflight, or changes guarded settings unsigned."""
    base = hashlib.sha256(old_bytes).hexdigest()
    signer = None
    if signature is not None:  # checked first: it covers the bytes, whatever they hold
        try:
            signer = verify_config(
                host.config.updates.public_keys, host.config.device.id, base, new_bytes, signature
            )
        except SignatureError as exc:
            raise CommandError(f"refused: {exc}") from None
    try:
        old_includes = includes_of(parse_toml(old_bytes.decode("utf-8"), str(path)))
    except (EdgeRuntimeError, UnicodeDecodeError):
        old_includes = []
    try:
        new_includes = includes_of(parse_toml(text, "config.update"))
    except EdgeRuntimeError as exc:
        raise CommandError(f"refused: {exc}") from None
    guarded = check_includes(old_includes, new_includes)
    if guarded and signer is None:  # before loading: an include reads another file
        raise _unsigned(guarded)
    try:
        new = load_config(path, host.overrides, profile=host.profile, text=text)
        preflight(new, "config.update")
    except EdgeRuntimeError as exc:
        raise CommandError(f"refused: {exc}") from None
    try:
        old = load_config(path, host.overrides, profile=host.profile)
    except EdgeRuntimeError:  # the file was edited badly since: compare with what runs
        old = host.config
    guarded += protected_changes(old, new)
    if guarded and signer is None:
        raise _unsigned(guarded)
    if signer is not None:
        log.warning(
            "config.update signed by key %s changes: %s", signer, "; ".join(guarded) or "nothing guarded"
        )
    return signer, guarded


def _apply(host: ConfigHost, text: str, signature: str | None) -> dict[str, Any]:
    path = host.config_path
    if path is None or path.resolve() == DEMO_CONFIG.resolve():
        raise CommandError(
            "this daemon runs the embedded default; start it with --config to update its config"
        )
    target = Path(os.path.realpath(path))  # a symlinked config file is updated where it lives
    try:
        new_bytes = text.encode("utf-8")
        old_bytes = target.read_bytes()
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except UnicodeEncodeError as exc:
        raise CommandError(f"refused: the config is not valid UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise CommandError(f"cannot read the current config {target}: {exc.strerror or exc}") from None
    signer, guarded = _checked(host, path, text, old_bytes, new_bytes, signature)
    try:
        atomic_write(target, new_bytes, mode=mode)
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}; the old config is kept") from None
    try:
        summary = host.reload()
    except Exception as exc:  # whatever failed, the file on disk must be the one that runs
        if not isinstance(exc, EdgeRuntimeError):
            log.exception("config.update: the reload failed unexpectedly; writing the old file back")
        try:
            atomic_write(target, old_bytes, mode=mode)
        except OSError as write_exc:
            raise CommandError(
                f"reload failed ({exc}) and the old config could not be written back: {write_exc}"
            ) from None
        raise CommandError(f"rolled back to the previous config: {exc}") from None
    return {
        "reloaded": summary,
        "file_sha256": hashlib.sha256(new_bytes).hexdigest(),
        "signed_by": signer,
        "guarded_changes": guarded,
    }

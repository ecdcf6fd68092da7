"""Secrets out of everything the daemon shows: one redaction used by get_config, command replies,
events, health, the log and any other view of the config.

Two rules, applied together:

- **by key**: a config value whose key looks secret (``password``, ``secret``, ``token``,
  ``key``: ``mqtt.password_file``, ``mqtt.tls.key``, ``updates.public_keys``) shows as ``***``;
- **by content**: credentials inside URLs anywhere in a text (a camera ``uri``, a GStreamer
  pipeline, an error message, a log line): the user-info part (``rtsp://user:pass@host`` ->
  ``rtsp://***@host``) and the values of secret-looking query parameters
  (``?user=admin&password=x`` -> ``?user=admin&password=***``).

The user-info of a URL ends at its *last* ``@`` before whitespace or a quote, so a password that
holds ``@``, ``/`` or ``:`` is hidden whole; a path that holds an ``@`` is hidden too (more is
hidden, never less).
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["MASK", "SECRET_KEYS", "RedactingFilter", "redact_config", "redact_text", "redact_tree"]

MASK = "***"
SECRET_KEYS = ("password", "passwd", "secret", "token", "key", "credential")

# scheme://userinfo@ : the user-info runs to the last '@' before whitespace, a quote or a bracket
# (a scheme starts only where no scheme character precedes it, and the user-info is bounded: linear
# time on any text, including an attacker's 64 KiB of letters)
_USERINFO = re.compile(
    r"(?P<scheme>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}://)[^\s\"'<>()\[\]{}`]{0,1024}@"
)
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:password|passwd|pwd|pass|secret|token|access_token|api[_-]?key|apikey|key|auth"
    r"|authorization|signature|sig|credentials?)=)[^&;#\s\"'<>]*",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: f"{m.group('name')}{MASK}", text)
    return text


def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_KEYS)


def redact_config(value: Any, key: str = "") -> Any:
    """A JSON-ready config (``model_dump(mode="json")``) with secrets replaced: values under
    secret-looking keys become ``***`` (paths included), URL credentials in every string are hidden."""
    return _redact(value, key, by_key=True)


def redact_tree(value: Any) -> Any:
    """Any JSON-ready value (a reply, an event, a health report) with URL credentials hidden in
    every string (keys are kept: a health report's numbers are not secrets)."""
    return _redact(value, "", by_key=False)


def _redact(value: Any, key: str, *, by_key: bool) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, str(k), by_key=by_key) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, key, by_key=by_key) for v in value]
    if by_key and _secret_key(key) and value not in ("", None):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter(logging.Filter):
    """A handler filter: every log line (its message, arguments and traceback) with URL
    credentials hidden, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad %-format: let the handler report it
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True

"""Text from elsewhere made safe to print on an operator's terminal.

A device (or anyone who can publish under its topics) controls what the fleet tool prints: its
retained status and health, its command replies. :func:`clean_text` removes from such text
everything a terminal would act on instead of showing: C0 controls (``ESC``, ``BEL``, ``BS``,
``CR``...; a newline becomes a space), ``DEL``, C1 controls (``\\x9b`` is a one-byte CSI), whole
escape sequences (CSI ``ESC [ ... final``, OSC ``ESC ] ... BEL/ST`` such as window titles and
hyperlinks, DCS/APC/PM/SOS strings), bidirectional overrides and isolates (``U+202A-202E``,
``U+2066-2069``: "Trojan Source" reordering), other invisible format characters (zero-width
spaces and joiners, ``U+FEFF``) and lone surrogates. :func:`clean_tree` applies it to every
string (keys too) of decoded JSON.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["clean_text", "clean_tree"]

# whole escape sequences first, so their parameters do not survive as text
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC DCS SOS PM APC
    r"|\x1b[ -/]*[0-~]?"  # any other ESC sequence (ESC c: reset, ESC 7/8, ESC ( B ...)
)
_WHITESPACE = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]")


def _visible(char: str) -> bool:
    category = unicodedata.category(char)
    # Cc: C0/C1 controls and DEL; Cf: format (bidi controls, zero-width, BOM); Cs: surrogates;
    # Co/Cn: private use and unassigned are kept (they draw as boxes, they do not act)
    return category not in ("Cc", "Cf", "Cs")


def clean_text(text: str, max_chars: int | None = 2000) -> str:
    """``text`` with escape sequences, controls and invisible format characters removed (line
    breaks and tabs become spaces), cut to ``max_chars`` (None: whole)."""
    text = _SEQUENCES.sub("", text)
    text = _WHITESPACE.sub(" ", text)
    if not text.isprintable():
        text = "".join(c for c in text if _visible(c))
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "…"
    return text


def clean_tree(value: Any) -> Any:
    """Decoded JSON with :func:`clean_text` applied to every string, keys included."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_tree(v) for v in value]
    return value

"""Class labels: labels files (plain or with ids, the pycoral format) and lookups."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge_runtime.errors import PipelineError


def parse_labels(text: str) -> list[str]:
    """Labels from a labels file's text: one per line, blank lines ignored. Lines that all start
    with an id (``0  person``, the pycoral format) are placed at that id; gaps become the id."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    pairs = [line.split(maxsplit=1) for line in lines]
    if pairs and all(len(p) == 2 and p[0].isdigit() for p in pairs):
        by_id = {int(p[0]): p[1].strip() for p in pairs}
        return [by_id.get(i, str(i)) for i in range(max(by_id) + 1)]
    return lines


def read_labels(path: str | Path) -> list[str]:
    """Read a labels file (see :func:`parse_labels`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read labels file: {exc}") from exc
    labels = parse_labels(text)
    if not labels:
        raise PipelineError(f"{path}: labels file is empty")
    return labels


def label_for(index: int, labels: Sequence[str] | None) -> str:
    """``labels[index]``, or the index as text when there are no labels or it is out of range."""
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)

"""The stdout sink: one JSON result per line, flushed, safe to call from several threads."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO


class StdoutSink:
    """Writes each result as a compact JSON line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.written = 0

    def publish(self, result: dict[str, Any]) -> None:
        line = json.dumps(result, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.written += 1

    def close(self) -> None:
        with self._lock:
            self.stream.flush()

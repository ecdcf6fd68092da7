"""Loaded models shared between pipelines (``[runtime] share_models = true``).

Pipelines that name the same model file (same resolved path and content), delegate chain,
threads and backend get one :class:`~edge_runtime.runtime.model.Model`: one interpreter, one
copy of the weights, one accelerator context. Inference on it is serialized by the model's own
``lock``, which callers hold only around setting the inputs, invoking and reading the outputs;
everything else (decoding, preprocessing, post-processing, emitting) runs in parallel. A model
update swaps in a model of its own for the pipeline being updated; the shared one keeps serving
the others.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.runtime.model import Model

Key = tuple[str, str, tuple[str, ...], int | None, str, str | None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(delegate: Any) -> str:
    """A delegate chain entry (a name or a config model) as a stable string."""
    dump = getattr(delegate, "model_dump_json", None)
    return str(dump()) if callable(dump) else repr(delegate)


class ModelRegistry:
    """Loads each distinct (path, sha256, delegates, threads, backend) once; thread-safe."""

    def __init__(self, load: Callable[..., Model] = Model) -> None:
        self._load = load
        self._models: dict[Key, Model] = {}
        self._lock = threading.Lock()
        self.loads = 0  # models actually loaded (not shared)

    def key(
        self, path: Path, delegates: Sequence[Any], threads: int | None, backend: str, name: str | None
    ) -> Key:
        resolved = path.resolve()
        chain = tuple(_describe(d) for d in delegates)
        return (str(resolved), file_sha256(resolved), chain, threads, backend, name)

    def get(
        self,
        path: Path,
        *,
        delegates: Sequence[Any],
        threads: int | None,
        backend: str,
        name: str | None,
    ) -> Model:
        """The loaded model for this key, loading it on first use (the model's name is part of
        the key: results carry it)."""
        key = self.key(path, delegates, threads, backend, name)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._load(path, delegates=delegates, threads=threads, backend=backend, name=name)
                self._models[key] = model
                self.loads += 1
            return model

    def __len__(self) -> int:
        return len(self._models)

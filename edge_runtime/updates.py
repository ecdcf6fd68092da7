"""Staged verification of a model update, one step at a time.

``model.update`` walks a candidate model through these steps; each one either passes or raises an
:class:`UpdateError` whose ``step`` names it, so the event and the command reply can say exactly
which check refused the model:

``request``    the command itself is malformed (:meth:`UpdateRequest.from_payload`)
``download``   the transfer failed: HTTP error, timeout, refused connection, truncated body
``size``       more bytes than the size limit or than the announced size
``sha256``     the file is not the one announced
``signature``  the signature is missing, malformed or matches no configured key (:mod:`signing`)
``load``       no delegate of the pipeline's chain loads it (:func:`load_candidate`)
``check``      its inputs or outputs differ from the model it replaces (:func:`check_compatible`)
``smoke``      it fails or yields NaN on a real input (:func:`smoke_invoke`)
``probation``  it misbehaved after the swap (raised by the daemon)
``store``      the on-device store refused an operation (:mod:`modelstore`)

The steps live in three modules: getting the file (:mod:`edge_runtime.transfer`: ``download``,
``ChunkAssembler``), this one (the request, sha256, load, check, smoke) and the on-device store
(:mod:`edge_runtime.modelstore`). All are synchronous library code with no thread of their own.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime.errors import EdgeRuntimeError, InputError, InvokeError

if TYPE_CHECKING:
    import numpy.typing as npt

    from edge_runtime.runtime.backend import Backend
    from edge_runtime.runtime.model import Model, TensorSpec

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as edge_runtime.config.NAME_RE
TRANSFER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UpdateError(EdgeRuntimeError, ValueError):
    """A model update was refused; ``step`` names the step that refused it."""

    step = "update"

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        if step is not None:
            self.step = step


class RequestError(UpdateError):
    step = "request"


class DownloadError(UpdateError):
    step = "download"


class SizeLimitError(UpdateError):
    step = "size"


class ChecksumError(UpdateError):
    step = "sha256"


class SignatureError(UpdateError):
    step = "signature"


class CandidateLoadError(UpdateError):
    step = "load"


class IncompatibleModelError(UpdateError):
    step = "check"


class SmokeTestError(UpdateError):
    step = "smoke"


class ProbationError(UpdateError):
    step = "probation"


class StoreError(UpdateError):
    step = "store"


# --- the request --------------------------------------------------------------------------------


def _text(payload: Mapping[str, Any], key: str, *, required: bool = True, limit: int = 256) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        if required:
            raise RequestError(f"model.update: {key!r} is required")
        return None
    if not isinstance(value, str):
        raise RequestError(f"model.update: {key!r} must be a string, got {type(value).__name__}")
    if len(value) > limit or any(c in value for c in "\r\n\x00"):
        raise RequestError(f"model.update: {key!r} must be one line of at most {limit} characters")
    return value


@dataclass(frozen=True)
class UpdateRequest:
    """A validated ``model.update`` command: a ``url`` or a chunked ``transfer`` id, never both."""

    id: str
    pipeline: str
    sha256: str
    size: int
    version: str
    url: str | None = None
    transfer: str | None = None
    signature: str | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> UpdateRequest:
        pipeline = _text(payload, "pipeline") or ""
        if not NAME_RE.match(pipeline):
            raise RequestError(f"model.update: pipeline {pipeline!r} is not a valid pipeline name")
        sha = (_text(payload, "sha256") or "").lower()
        if not SHA256_RE.match(sha):
            raise RequestError(f"model.update: sha256 {sha!r} is not 64 hexadecimal digits")
        size = payload.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise RequestError(f"model.update: size must be a positive integer, got {size!r}")
        url = _text(payload, "url", required=False, limit=4096)
        transfer = _text(payload, "transfer", required=False)
        if (url is None) == (transfer is None):
            raise RequestError("model.update: give exactly one of 'url' or 'transfer'")
        if transfer is not None and not TRANSFER_ID_RE.match(transfer):
            raise RequestError(f"model.update: transfer id {transfer!r} must be 1-64 of [A-Za-z0-9_-]")
        return cls(
            id=_text(payload, "id") or "",
            pipeline=pipeline,
            sha256=sha,
            size=size,
            version=_text(payload, "version", limit=64) or "",
            url=url,
            transfer=transfer,
            signature=_text(payload, "signature", required=False, limit=1024),
        )


# --- sha256 -------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    want = expected.lower() if isinstance(expected, str) else ""
    if not SHA256_RE.match(want):
        raise ChecksumError(f"expected sha256 {expected!r} is not 64 hexadecimal digits")
    got = sha256_file(path)
    if got != want:
        raise ChecksumError(f"{path}: sha256 is {got}, expected {want}")


# --- load, check, smoke -------------------------------------------------------------------------


def load_candidate(
    path: str | Path,
    *,
    delegates: Sequence[Any] | None = None,
    threads: int | None = None,
    backend: str | Backend = "auto",
    require_delegate: str | None = None,
) -> Model:
    """Load a candidate in its own interpreter with the pipeline's delegate chain.

    With ``require_delegate`` (the delegate the current model runs on), a candidate that only
    loads further down the chain is refused: an update must not silently move to the CPU.
    """
    from edge_runtime.runtime.model import Model

    try:
        model = Model(path, delegates=delegates, threads=threads, backend=backend, name="candidate")
    except EdgeRuntimeError as exc:
        raise CandidateLoadError(f"candidate {path}: {exc}") from exc
    if require_delegate and model.delegate != require_delegate:
        raise CandidateLoadError(
            f"candidate {path}: the current model runs on {require_delegate}, the candidate would be "
            f"{model.placement}"
        )
    return model


class HasSpecs(Protocol):
    """Anything with input and output specs: a :class:`Model`."""

    @property
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...


def _describe(spec: TensorSpec) -> str:
    quant = "quantized" if spec.quant else "not quantized"
    return f"{spec.name!r} {spec.describe()} {quant}"


def _compare(kind: str, new: Sequence[TensorSpec], old: Sequence[TensorSpec]) -> list[str]:
    if len(new) != len(old):
        return [f"{len(new)} {kind}s, the current model has {len(old)}"]
    problems = []
    for n, o in zip(new, old, strict=True):
        what = []
        if n.shape != o.shape:
            what.append("shape")
        if n.dtype != o.dtype:
            what.append("dtype")
        if (n.quant is None) != (o.quant is None):
            what.append("quantization")
        if what:
            problems.append(
                f"{kind} {n.position}: {' and '.join(what)} differ: candidate {_describe(n)}, "
                f"current {_describe(o)}"
            )
    return problems


def check_compatible(new: HasSpecs, old: HasSpecs) -> None:
    """Refuse a candidate whose inputs or outputs differ from the model it replaces.

    Compared by position: count, shape, dtype, and whether each tensor is quantized. The scales
    and zero points may change (a retrained model has new ones); names may change too.
    """
    problems = _compare("input", new.inputs, old.inputs) + _compare("output", new.outputs, old.outputs)
    if problems:
        raise IncompatibleModelError("candidate does not fit the pipeline: " + "; ".join(problems))


class Invokable(HasSpecs, Protocol):
    """A :class:`Model`, for :func:`smoke_invoke`."""

    def invoke(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]: ...


def neutral_inputs(model: HasSpecs) -> list[npt.NDArray[Any]]:
    """Inputs of real value 0 (the zero point when quantized), for when no real input exists yet."""
    import numpy as np

    arrays = []
    for spec in model.inputs:
        fill = spec.quant.zero_point[0] if spec.quant else 0
        arrays.append(np.full(spec.shape, fill, dtype=spec.dtype))
    return arrays


def smoke_invoke(model: Invokable, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """Invoke once on ``inputs``; refuse on an error or a NaN/inf in any (dequantized) output."""
    import numpy as np

    from edge_runtime.runtime.quant import dequantize

    try:
        outputs = model.invoke(list(inputs))
    except (InvokeError, InputError) as exc:
        raise SmokeTestError(f"smoke test: {exc}") from exc
    for spec, array in zip(model.outputs, outputs, strict=True):
        values: npt.NDArray[Any] = dequantize(array, spec.quant) if spec.quant else np.asarray(array)
        if values.dtype.kind == "f":
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                raise SmokeTestError(
                    f"smoke test: output {spec.position} {spec.name!r}: {bad} of {values.size} values "
                    "are NaN or infinite"
                )
    return outputs

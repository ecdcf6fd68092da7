"""Checks a candidate model passes before it may serve: sha256, an isolated load, compatibility
with the model it replaces, a smoke invoke on a real input. Synchronous library code with no
thread of its own; each check raises the :class:`~.protocol.UpdateError` of its step.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime.errors import InputError, InvokeError
from edge_runtime.fsutil import sha256_file
from edge_runtime.names import SHA256_RE
from edge_runtime.updates.protocol import (
    CandidateLoadError,
    ChecksumError,
    IncompatibleModelError,
    SmokeTestError,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from edge_runtime.runtime.model import TensorSpec


def verify_sha256(path: str | Path, expected: str) -> None:
    want = expected.lower() if isinstance(expected, str) else ""
    if not SHA256_RE.match(want):
        raise ChecksumError(f"expected sha256 {expected!r} is not 64 hexadecimal digits")
    got = sha256_file(path)
    if got != want:
        raise ChecksumError(f"{path}: sha256 is {got}, expected {want}")


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


def isolated_check(path: Path, timeout_s: float = 60.0) -> None:
    """Parse and load an untrusted model in a child process first: a runtime that crashes on a
    hostile file takes the child down, not the daemon."""
    code = (
        "import sys\nfrom edge_runtime.runtime.model import Model\n"
        "m = Model(sys.argv[1], delegates=['cpu'])\nm.run()\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CandidateLoadError(f"candidate {path.name}: loading it took over {timeout_s:.0f} s") from None
    if proc.returncode < 0:
        raise CandidateLoadError(
            f"candidate {path.name}: the runtime crashed on it (signal {-proc.returncode})"
        )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
        raise CandidateLoadError(f"candidate {path.name}: {lines[-1] if lines else 'cannot be loaded'}")

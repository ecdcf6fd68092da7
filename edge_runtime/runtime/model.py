"""A loaded model: its file, where it runs, its input and output specs, and invoke.

:class:`Model` reads and checks the file (:mod:`modelfile`), picks a backend, tries the delegate
chain in order, keeps every failure with its cause, allocates tensors once and validates each
array it is given against the input it is bound to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import DelegateError, InputError, InvokeError, ModelLoadError
from edge_runtime.runtime.backend import ONNXRUNTIME, Backend, get_backend
from edge_runtime.runtime.delegates import Delegate, DelegateFailure, parse_chain
from edge_runtime.runtime.onnxfile import OnnxInfo, is_onnx_file, onnx_twin, read_any_model_file
from edge_runtime.runtime.quant import QuantParams, quant_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a loaded model."""

    position: int
    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None

    def describe(self) -> str:
        return f"{self.dtype} {list(self.shape)}"

    def to_dict(self) -> dict[str, Any]:
        q = self.quant
        fields = quant_fields(q.scale, q.zero_point, q.axis) if q else quant_fields(None, None, None)
        return {
            "name": self.name,
            "index": self.index,
            "shape": list(self.shape),
            "dtype": self.dtype,
            **fields,
        }


def _spec(position: int, detail: Mapping[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    qp = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in np.asarray(qp.get("scales", []), dtype=np.float64).ravel()]
    zeros = [int(z) for z in np.asarray(qp.get("zero_points", []), dtype=np.int64).ravel()]
    quant: QuantParams | None = None
    if scales and all(s > 0 for s in scales) and dtype in ("int8", "uint8", "int16", "int32"):
        if len(zeros) < len(scales):
            zeros += [0] * (len(scales) - len(zeros))
        quant = QuantParams(tuple(scales), tuple(zeros), dtype, int(qp.get("quantized_dimension", 0)))
    return TensorSpec(
        position=position,
        name=str(detail["name"]),
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=dtype,
        quant=quant,
    )


class Model:
    """A .tflite (or .onnx) model loaded on the first delegate of its chain that works."""

    def __init__(
        self,
        path: str | Path,
        *,
        delegates: Sequence[Any] | None = None,
        threads: int | None = None,
        backend: str | Backend = "auto",
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        # held around set inputs + invoke + read outputs when the model is shared (runtime.shared)
        self.lock = threading.Lock()
        if backend == ONNXRUNTIME and not is_onnx_file(self.path):
            self.path = onnx_twin(self.path)
        started = time.perf_counter()
        self.info, self._content = read_any_model_file(self.path)
        model_format = "onnx" if isinstance(self.info, OnnxInfo) else "tflite"
        self.backend = backend if isinstance(backend, Backend) else get_backend(backend, model_format)
        if (model_format == "onnx") != (self.backend.name == ONNXRUNTIME):
            raise ModelLoadError(f"{self.path}: a {model_format} model cannot run on {self.backend.name}")
        self.threads = threads
        self.chain: list[Delegate] = parse_chain(list(delegates) if delegates else None)
        self.failures: list[DelegateFailure] = []
        self.delegate = ""
        self._interpreter: Any = None
        self._error_text = ""  # the runtime's error buffer as of the last failed invoke
        self._delegate_object: Any = None
        for delegate in self.chain:
            try:
                self._interpreter, self._delegate_object = self._load_with(delegate)
            except DelegateError as exc:
                self.failures.append(DelegateFailure(delegate.label, str(exc)))
                log.debug("%s: delegate %s failed: %s", self.path, delegate.label, exc)
                continue
            self.delegate = delegate.label
            break
        if self._interpreter is None:
            causes = "; ".join(str(f) for f in self.failures)
            raise ModelLoadError(f"{self.path}: no delegate in the chain could run it: {causes}")
        if self.failures:
            log.warning("%s: %s", self.path, self.placement)
        self.inputs = tuple(_spec(i, d) for i, d in enumerate(self._interpreter.get_input_details()))
        self.outputs = tuple(_spec(i, d) for i, d in enumerate(self._interpreter.get_output_details()))
        self.batch = 1  # the batch the interpreter is sized for (set_batch)
        self._batch_errors: dict[int, str] = {}
        self.load_time_s = time.perf_counter() - started

    @property
    def sha256(self) -> str:
        return self.info.sha256

    @property
    def placement(self) -> str:
        """``running on cpu; edgetpu failed: libedgetpu.so.1: cannot open shared object file``."""
        parts = [f"running on {self.delegate}"] + [str(f) for f in self.failures]
        return "; ".join(parts)

    def _load_with(self, delegate: Delegate) -> tuple[Any, Any]:
        delegate.check_model(self.info)
        delegate_object = delegate.create(self.backend)
        kwargs: dict[str, Any] = {"model_content": self._content}
        if delegate_object is not None:
            kwargs["experimental_delegates"] = [delegate_object]
        if self.threads:
            kwargs["num_threads"] = self.threads
        try:
            interpreter = self.backend.interpreter_class(**kwargs)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DelegateError(" ".join(str(exc).split())) from exc
        return interpreter, delegate_object

    def set_batch(self, n: int) -> None:
        """Size every input's first dimension to ``n`` (a batch of ``n`` instances); cheap when it is
        already ``n`` and, once the arena has grown, when going back to a size used before. Callers
        that share the model hold its ``lock``; :meth:`batch_error` tells first whether it can."""
        if n == self.batch:
            return
        try:
            for spec in self.inputs:
                self._interpreter.resize_tensor_input(spec.index, [n, *spec.shape[1:]])
            self._interpreter.allocate_tensors()
        except (AttributeError, ValueError, RuntimeError) as exc:
            raise InvokeError(
                f"{self.path.name}: cannot run a batch of {n}: {' '.join(str(exc).split())}"
            ) from exc
        self.inputs = tuple(_spec(i, d) for i, d in enumerate(self._interpreter.get_input_details()))
        self.outputs = tuple(_spec(i, d) for i, d in enumerate(self._interpreter.get_output_details()))
        self.batch = n

    def batch_error(self, n: int) -> str:
        """Why this model cannot run a batch of ``n`` (every output must then have ``n`` rows), or
        "" when it can; tried once per size (on a model that may be shared: hold its ``lock``)."""
        if n == 1 or not self.inputs:
            return ""
        if n not in self._batch_errors:
            reason = ""
            try:
                self.set_batch(n)
                shapes = [list(s.shape) for s in self.outputs]
                if any(not shape or shape[0] != n for shape in shapes):
                    reason = f"{self.path.name}: outputs {shapes} have no batch of {n}"
            except InvokeError as exc:
                reason = str(exc)
            finally:
                try:
                    self.set_batch(1)
                except InvokeError as exc:
                    reason = reason or str(exc)
            self._batch_errors[n] = reason
        return self._batch_errors[n]

    def _check(self, spec: TensorSpec, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if array.dtype.name != spec.dtype:
            raise InputError(
                f"{self.path.name}: input {spec.position} {spec.name!r} expects {spec.describe()}, "
                f"got {array.dtype.name} {list(array.shape)}"
            )
        if array.shape != spec.shape:
            if len(spec.shape) == array.ndim + 1 and spec.shape[0] == 1 and array.shape == spec.shape[1:]:
                return array.reshape(spec.shape)
            raise InputError(
                f"{self.path.name}: input {spec.position} {spec.name!r} expects {spec.describe()}, "
                f"got {array.dtype.name} {list(array.shape)}"
            )
        return array

    def set_input(self, position: int, array: npt.NDArray[Any]) -> None:
        spec = self.inputs[position]
        self._interpreter.set_tensor(spec.index, self._check(spec, np.asarray(array)))

    def run(self) -> None:
        """Invoke on the inputs already set."""
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            raise InvokeError(f"{self.path.name}: invoke failed: {self._new_error_text(str(exc))}") from exc

    def _new_error_text(self, text: str) -> str:
        """What this failure added to the runtime's error text. The error reporter of LiteRT (and
        tflite-runtime) never empties its buffer (``stringstream::clear()`` resets its flags, not its
        text), so each error's message holds every earlier one: the same failure would read as a new
        error every time (one event per failure instead of one per new error) and grow without end."""
        seen, self._error_text = self._error_text, text
        if seen and len(text) > len(seen) and text.startswith(seen):
            return text[len(seen) :]
        return text

    def output(self, position: int) -> npt.NDArray[Any]:
        """A copy of output ``position`` after :meth:`run`."""
        result: npt.NDArray[Any] = self._interpreter.get_tensor(self.outputs[position].index)
        return result

    def invoke(
        self, inputs: Sequence[npt.NDArray[Any]] | Mapping[str, npt.NDArray[Any]]
    ) -> list[npt.NDArray[Any]]:
        """Set every input (by position, or by name), run, and return copies of the outputs."""
        if isinstance(inputs, Mapping):
            by_name = {s.name: s.position for s in self.inputs}
            unknown = sorted(set(inputs) - set(by_name))
            if unknown:
                raise InputError(f"{self.path.name}: no input named {unknown}; inputs are {sorted(by_name)}")
            ordered: list[npt.NDArray[Any] | None] = [None] * len(self.inputs)
            for key, array in inputs.items():
                ordered[by_name[key]] = array
            missing = [self.inputs[i].name for i, a in enumerate(ordered) if a is None]
            if missing:
                raise InputError(f"{self.path.name}: missing inputs {missing}")
            arrays: Sequence[npt.NDArray[Any]] = [a for a in ordered if a is not None]
        else:
            arrays = inputs
        if len(arrays) != len(self.inputs):
            raise InputError(f"{self.path.name}: expects {len(self.inputs)} inputs, got {len(arrays)}")
        with self.lock:
            self.set_batch(1)
            for position, array in enumerate(arrays):
                self.set_input(position, array)
            self.run()
            return [self.output(i) for i in range(len(self.outputs))]

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "sha256": self.sha256,
            "backend": self.backend.name,
            "backend_version": self.backend.version,
            "delegate": self.delegate,
            "fallbacks": [{"delegate": f.delegate, "cause": f.cause} for f in self.failures],
            "threads": self.threads,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

"""ONNX Runtime behind the interpreter interface the TFLite backends have.

This module owns ``import onnxruntime`` (it is imported only when an .onnx model is loaded, by
:mod:`edge_runtime.runtime.backend`). :class:`Interpreter` wraps one ``InferenceSession`` per
model with the calls :class:`edge_runtime.runtime.model.Model` makes on a TFLite interpreter
(``get_input_details``, ``set_tensor``, ``invoke``, ``get_tensor``), so the model, the pipeline,
``bench`` and the HTTP API do not know which engine runs. In detail:

- the delegate chain's entries arrive as :class:`ProviderRequest` (``cpu`` sends none): each is
  checked against the providers this build has, then against the providers the session really
  uses, and refused with the reason otherwise;
- session options for a small board: one intra-op pool of ``threads`` (default 1, as LiteRT's
  default: measured), no inter-op pool, sequential execution, every graph optimisation;
- inputs and outputs: symbolic batch dimensions are fixed to 1 (a free-dimension override, so
  the optimiser plans for it) and other symbolic dimensions are read from one run on zeros; an
  int8 QDQ model whose graph edges are float (QuantizeLinear after the input, DequantizeLinear
  before the output) is shown with int8 edges and the scale and zero point of those nodes, as a
  full-int8 TFLite model is, so fusion and post-processing feed and read it unchanged; the
  conversion at the edge is exact (``scale * (q - zero_point)`` quantizes back to ``q``);
- IO binding: inputs and outputs are arrays allocated once and bound once; ``set_tensor`` copies
  into them (the caller may reuse its array at once, as with TFLite) and the session writes its
  outputs in place, so an invoke allocates nothing (measured: docs/performance.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge_runtime.runtime.delegates import ProviderRequest
from edge_runtime.runtime.onnxfile import OnnxInfo, parse_onnx
from edge_runtime.runtime.onnxproto import ValueInfo
from edge_runtime.runtime.quant import QuantParams, dequantize, quantize

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
MAX_TENSOR_BYTES = 256 << 20  # one input or output; the arrays are allocated once, at load
ORT_ERROR_LEVEL = 3  # onnxruntime's own log: errors only (its warnings reach us as causes)
# "1" restores onnxruntime's spinning pool threads (for measurements; docs/performance.md)
SPIN = "1" if os.environ.get("EDGE_RUNTIME_ORT_SPIN") == "1" else "0"

ort.set_default_logger_severity(ORT_ERROR_LEVEL)


def load_delegate(library: str, options: dict[str, str] | None = None) -> Any:
    """A TFLite delegate library cannot run an ONNX model: the reason, as a failure of the chain."""
    raise ValueError(
        f"{library}: a TFLite delegate; onnxruntime runs .onnx models on execution providers "
        "(cpu, xnnpack, acl, provider)"
    )


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def session_options(threads: int | None, info: OnnxInfo, batch: int = 1) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 1  # as the TFLite backends: one thread unless asked
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = ORT_ERROR_LEVEL
    # Idle pool threads sleep instead of spinning: on a 2-4 core board the camera, serial and
    # publishing threads need those cores between invokes (measured: docs/performance.md).
    so.add_session_config_entry("session.intra_op.allow_spinning", SPIN)
    for v in info.inputs:
        if v.dims and isinstance(v.dims[0], str) and v.dims[0] != "?":
            so.add_free_dimension_override_by_name(v.dims[0], batch)
    return so


def _static_shape(v: ValueInfo) -> tuple[int, ...] | None:
    """The shape with the batch fixed to 1; None when another dimension is symbolic."""
    dims = list(v.dims)
    if dims and isinstance(dims[0], str):
        dims[0] = 1
    if any(isinstance(d, str) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _check_size(v: ValueInfo, shape: tuple[int, ...]) -> None:
    size = float(np.prod(shape, dtype=np.float64)) * np.dtype(v.dtype).itemsize
    if size > MAX_TENSOR_BYTES:
        raise ValueError(
            f"tensor {v.name!r} {list(shape)} takes {size / 2**20:.0f} MiB, over the bound of "
            f"{MAX_TENSOR_BYTES >> 20} MiB per input or output"
        )


def _quant_details(q: QuantParams | None) -> dict[str, Any]:
    if q is None:
        return {
            "scales": np.zeros(0, np.float32),
            "zero_points": np.zeros(0, np.int32),
            "quantized_dimension": 0,
        }
    return {
        "scales": np.asarray(q.scale, np.float32),
        "zero_points": np.asarray(q.zero_point, np.int32),
        "quantized_dimension": q.axis,
    }


class Interpreter:
    """One ``InferenceSession`` with the TFLite interpreter's calls (see the module docstring)."""

    def __init__(
        self,
        model_content: bytes,
        experimental_delegates: Sequence[Any] | None = None,
        num_threads: int | None = None,
        io_binding: bool = True,
    ) -> None:
        self.info = parse_onnx(model_content)
        requests = [d for d in experimental_delegates or () if isinstance(d, ProviderRequest)]
        providers: list[tuple[str, dict[str, str]]] = []
        have = available_providers()
        for request in requests:
            if request.name not in have:
                raise ValueError(
                    f"{request.name} is not in this onnxruntime build (it has {', '.join(have)})"
                )
            options = dict(request.options)
            if (
                request.name == "XnnpackExecutionProvider"
                and num_threads
                and "intra_op_num_threads" not in options
            ):
                options["intra_op_num_threads"] = str(num_threads)
            providers.append((request.name, options))
        providers.append((CPU_PROVIDER, {}))
        self._content, self._threads, self._providers = model_content, num_threads, providers
        self.session = self._session(1)
        self._sessions = {1: self.session}  # per batch size (the batch is fixed when a session is made)
        used = self.session.get_providers()
        for request in requests:
            if request.name not in used:
                raise ValueError(
                    f"{request.name} was not used by onnxruntime for this model (it used {used})"
                )
        self.providers = used
        self._inputs = self.info.inputs
        self._outputs = self.info.outputs
        in_shapes = []
        for v in self._inputs:
            shape = _static_shape(v)
            if shape is None:
                raise ValueError(
                    f"input {v.name!r} has symbolic dimensions {list(v.dims)}: export the model with a fixed "
                    "input size (only the batch dimension may be symbolic)"
                )
            _check_size(v, shape)
            in_shapes.append(shape)
        self._io_binding = io_binding
        self._plan(tuple(in_shapes))

    def _plan(self, in_shapes: tuple[tuple[int, ...], ...]) -> None:
        """Input and output arrays (and their binding) for inputs of ``in_shapes``."""
        self._in_shapes = in_shapes
        batch = in_shapes[0][0] if in_shapes and in_shapes[0] else 1
        # set_tensor copies into these (as a TFLite interpreter does): the caller may reuse its array;
        # like a TFLite interpreter's tensors they start as zeros, so a smoke run needs no input
        self._in_arrays = [
            np.zeros(s, dtype=v.dtype) for v, s in zip(self._inputs, self._in_shapes, strict=True)
        ]
        out_shapes = [_static_shape(v) for v in self._outputs]
        out_shapes = [
            (batch, *s[1:]) if s is not None and v.dims and isinstance(v.dims[0], str) else s
            for v, s in zip(self._outputs, out_shapes, strict=True)
        ]
        if any(s is None for s in out_shapes):
            zeros = {v.name: a for v, a in zip(self._inputs, self._in_arrays, strict=True)}
            results = self.session.run([v.name for v in self._outputs], zeros)
            out_shapes = [tuple(np.asarray(r).shape) for r in results]
        self._out_shapes: tuple[tuple[int, ...], ...] = tuple(s for s in out_shapes if s is not None)
        for v, shape in zip(self._outputs, self._out_shapes, strict=True):
            _check_size(v, shape)
        self._out_arrays = [
            np.empty(s, dtype=v.dtype) for v, s in zip(self._outputs, self._out_shapes, strict=True)
        ]
        self._binding: Any = None
        if self._io_binding:
            self._binding = self.session.io_binding()
            for v, array in zip(self._inputs, self._in_arrays, strict=True):
                self._binding.bind_cpu_input(v.name, array)
            for v, array in zip(self._outputs, self._out_arrays, strict=True):
                self._binding.bind_output(
                    v.name, "cpu", 0, array.dtype, list(array.shape), array.__array_interface__["data"][0]
                )

    def _session(self, batch: int) -> Any:
        try:
            return ort.InferenceSession(
                self._content,
                sess_options=session_options(self._threads, self.info, batch),
                providers=self._providers,
            )
        except (
            Exception
        ) as exc:  # onnxruntime's pybind11 errors (Fail, InvalidGraph, ...) derive from Exception only
            raise RuntimeError(f"onnxruntime cannot load the model: {' '.join(str(exc).split())}") from exc

    def resize_tensor_input(self, index: int, shape: Sequence[int]) -> None:
        """A new batch (first dimension) for input ``index``: only where the model's batch is symbolic."""
        if not 0 <= index < len(self._inputs):
            raise ValueError(f"no input tensor {index}")
        v = self._inputs[index]
        new = tuple(int(d) for d in shape)
        old = self._in_shapes[index]
        if new == old:
            return
        if new[1:] != old[1:] or not v.dims or not isinstance(v.dims[0], str) or new[0] < 1:
            raise ValueError(
                f"input {v.name!r} {list(v.dims)} cannot take shape {list(new)}: only a symbolic batch "
                "dimension can be resized"
            )
        _check_size(v, new)
        shapes = list(self._in_shapes)
        shapes[index] = new
        if new[0] not in self._sessions:  # one session per batch size used (a model is planned for it)
            self._sessions[new[0]] = self._session(new[0])
        self.session = self._sessions[new[0]]
        self._plan(tuple(shapes))

    def allocate_tensors(self) -> None:
        """Nothing to do: the session plans its memory when it is created."""

    def _details(
        self, values: Sequence[ValueInfo], shapes: Sequence[tuple[int, ...]], base: int
    ) -> list[dict[str, Any]]:
        details = []
        for i, (v, shape) in enumerate(zip(values, shapes, strict=True)):
            dtype = v.quant.dtype if v.quant is not None and v.float_edge else v.dtype
            details.append(
                {
                    "name": v.name,
                    "index": base + i,
                    "shape": np.asarray(shape, dtype=np.int32),
                    "dtype": np.dtype(dtype).type,
                    "quantization_parameters": _quant_details(v.quant),
                }
            )
        return details

    def get_input_details(self) -> list[dict[str, Any]]:
        return self._details(self._inputs, self._in_shapes, 0)

    def get_output_details(self) -> list[dict[str, Any]]:
        return self._details(self._outputs, self._out_shapes, len(self._inputs))

    def set_tensor(self, index: int, value: npt.NDArray[Any]) -> None:
        if not 0 <= index < len(self._inputs):
            raise ValueError(f"no input tensor {index}")
        v = self._inputs[index]
        target = self._in_arrays[index]
        value = np.asarray(value)
        if value.size != target.size:
            raise ValueError(f"input {v.name!r} takes {target.size} values, got {value.size}")
        if v.float_edge and v.quant is not None:
            target[...] = dequantize(value, v.quant).reshape(target.shape)
        else:
            target[...] = value.reshape(target.shape)

    def invoke(self) -> None:
        try:
            if self._binding is not None:
                self.session.run_with_iobinding(self._binding)
            else:
                feeds = {v.name: a for v, a in zip(self._inputs, self._in_arrays, strict=True)}
                results = self.session.run([v.name for v in self._outputs], feeds)
                for array, result in zip(self._out_arrays, results, strict=True):
                    array[...] = result
        except Exception as exc:  # onnxruntime's pybind11 errors derive from Exception only
            raise RuntimeError(" ".join(str(exc).split())) from exc

    def get_tensor(self, index: int) -> npt.NDArray[Any]:
        position = index - len(self._inputs)
        if not 0 <= position < len(self._outputs):
            raise ValueError(f"no output tensor {index}")
        v = self._outputs[position]
        array = self._out_arrays[position]
        result: npt.NDArray[Any] = quantize(array, v.quant) if v.float_edge and v.quant else array.copy()
        return result

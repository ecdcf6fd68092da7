"""Predict on demand, whatever the protocol: find the model, check and quantize the inputs, run,
dequantize the outputs.

A model is named by its name in results (``ModelConfig.name`` or the file's stem) or by its
pipeline's name (that pipeline's first model). Clients see real values: float inputs are quantized
for the model (``q = round(x / scale) + zero_point``, saturating) and outputs dequantized
(``scale * (q - zero_point)``); a client may also send the model's own quantized dtype, passed as is.
Each instance of a batch is one invoke: on the pipeline's interpreter between two of its
inferences (:meth:`Pipeline.predict` takes its inference lock) or on an interpreter of its own.
Every problem is an :class:`~edge_runtime.http.errors.ApiError`: an HTTP status and a message
naming the input.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.http.config import PredictConfig
from edge_runtime.http.errors import ApiError
from edge_runtime.runtime.model import Model, TensorSpec
from edge_runtime.runtime.quant import dequantize, quantize

if TYPE_CHECKING:
    from edge_runtime.pipeline import Pipeline

log = logging.getLogger(__name__)

REAL_DTYPES = ("float16", "float32", "float64")
DEFAULT_VERSION = "1"  # the version of a model whose config names none
Array = npt.NDArray[Any]


def public_name(spec: TensorSpec, output: bool = False) -> str:
    """``serving_default_image:0`` -> ``image``; outputs of a converted graph -> ``output_N``."""
    name = spec.name.removeprefix("serving_default_").removesuffix(":0")
    if output and (not name or name.startswith("StatefulPartitionedCall") or ":" in name):
        return f"output_{spec.position}"
    return name or f"input_{spec.position}"


def instance_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The shape of one instance: the tensor's shape without its batch dimension of 1."""
    return spec.shape[1:] if len(spec.shape) > 1 and spec.shape[0] == 1 else spec.shape


def interface_dtype(spec: TensorSpec) -> str:
    """The dtype clients see: float32 for quantized tensors (real values), else the tensor's."""
    return "float32" if spec.quant is not None else spec.dtype


@dataclass(frozen=True)
class Served:
    """A model predict can run: the ``index``-th model of ``pipeline``."""

    name: str
    pipeline: Pipeline
    index: int
    model: Model
    version: str

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.model.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.model.outputs

    def input_names(self) -> list[str]:
        return [public_name(s) for s in self.inputs]

    def output_names(self) -> list[str]:
        return [public_name(s, output=True) for s in self.outputs]

    def find_input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if name in (public_name(spec), spec.name):
                return spec
        raise ApiError(f"model {self.name!r} has no input {name!r}; inputs are {self.input_names()}")


def served_models(pipelines: Sequence[Pipeline]) -> list[Served]:
    """Every model predict can run, in pipeline order."""
    found = []
    for p in pipelines:
        for i, runner in enumerate(list(p.runners)):
            version = runner.config.version or DEFAULT_VERSION
            found.append(Served(runner.model.name, p, i, runner.model, version))
    return found


def find_served(pipelines: Sequence[Pipeline], name: str, version: str | None = None) -> Served:
    """The model called ``name`` (or the first model of the pipeline called ``name``)."""
    models = served_models(pipelines)
    match = next((m for m in models if m.name == name), None)
    if match is None:
        match = next((m for m in models if m.pipeline.name == name and m.index == 0), None)
    if match is None:
        names = sorted({m.name for m in models} | {m.pipeline.name for m in models})
        raise ApiError(f"no model {name!r}; models: {', '.join(names)}", 404)
    if version is not None and version != match.version:
        raise ApiError(
            f"model {name!r} version {version!r} is not served (serving version {match.version!r})", 404
        )
    return match


def to_model_input(spec: TensorSpec, values: Array, where: str) -> Array:
    """One instance for input ``spec``: real values quantized, or the tensor's own dtype as is."""
    want = instance_shape(spec)
    if values.shape not in (want, spec.shape):
        raise ApiError(f"{where}: expects shape {list(want)}, got {list(values.shape)}")
    if values.dtype.kind not in "biuf":
        raise ApiError(f"{where}: expects numbers, got {values.dtype.name}")
    if values.dtype.name == spec.dtype:  # the tensor's own dtype (quantized codes): as is
        return values.reshape(spec.shape)
    if values.dtype.kind == "b":
        raise ApiError(f"{where}: expects {interface_dtype(spec)} values, got booleans")
    real = values.astype(np.float64)
    if not np.all(np.isfinite(real)):
        raise ApiError(f"{where}: values must be finite numbers")
    if spec.quant is not None:
        return quantize(real, spec.quant).reshape(spec.shape)
    if spec.dtype in REAL_DTYPES:
        return real.astype(spec.dtype).reshape(spec.shape)
    if not np.all(real == np.round(real)):
        raise ApiError(f"{where}: expects {spec.dtype} values, got fractions")
    info = np.iinfo(spec.dtype)
    if real.min(initial=0) < info.min or real.max(initial=0) > info.max:
        raise ApiError(f"{where}: values out of the range of {spec.dtype}")
    return real.astype(spec.dtype).reshape(spec.shape)


def from_model_output(spec: TensorSpec, array: Array) -> Array:
    """One instance of output ``spec`` as clients see it: dequantized, batch dimension removed."""
    out = dequantize(array, spec.quant) if spec.quant is not None else array
    return out.reshape(instance_shape(spec))


def split_batch(served: Served, named: Mapping[str, Array], batched: bool) -> list[list[Array]]:
    """Per-input arrays (``batched``: a leading batch dimension) as instances of per-position arrays."""
    missing = [n for n, s in zip(served.input_names(), served.inputs, strict=True) if not _has(named, s)]
    if missing:
        raise ApiError(f"model {served.name!r}: missing inputs {missing}")
    by_position: dict[int, Array] = {}
    for key, array in named.items():
        spec = served.find_input(key)
        if spec.position in by_position:
            raise ApiError(f"input {public_name(spec)!r} is given twice")
        if batched and array.ndim == 0:
            raise ApiError(
                f"input {public_name(spec)!r}: expects a batch (a list of instances), got a number"
            )
        by_position[spec.position] = array
    sizes = {len(a) if batched else 1 for a in by_position.values()}
    if len(sizes) != 1:
        raise ApiError(f"model {served.name!r}: inputs have different batch sizes {sorted(sizes)}")
    count = sizes.pop()
    instances = []
    for i in range(count):
        row = []
        for spec in served.inputs:
            array = by_position[spec.position]
            one = array[i] if batched else array
            row.append(to_model_input(spec, one, f"input {public_name(spec)!r}"))
        instances.append(row)
    return instances


def _has(named: Mapping[str, Array], spec: TensorSpec) -> bool:
    return public_name(spec) in named or spec.name in named


class Predictor:
    """Runs instances on a served model, bounded in requests pending and batch size."""

    def __init__(self, config: PredictConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._pending = 0
        self._own: dict[tuple[str, int, str], tuple[Model, threading.Lock]] = {}
        self.requests = 0
        self.instances = 0

    def admit(self) -> None:
        """Count a request in; 503 when ``max_pending`` already run or wait."""
        with self._lock:
            if self._pending >= self.config.max_pending:
                raise ApiError(
                    f"busy: {self._pending} predict requests are running or waiting; retry later", 503
                )
            self._pending += 1

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def run(self, served: Served, instances: list[list[Array]]) -> list[list[Array]]:
        """Every instance's outputs (as clients see them); blocking, for a worker thread."""
        if not instances:
            raise ApiError(f"model {served.name!r}: no instances given")
        if len(instances) > self.config.max_batch:
            raise ApiError(
                f"model {served.name!r}: {len(instances)} instances; at most {self.config.max_batch}",
                413,
            )
        results = []
        for inputs in instances:
            try:
                outputs = self._invoke(served, inputs)
            except InputError as exc:
                raise ApiError(str(exc)) from exc
            except EdgeRuntimeError as exc:
                raise ApiError(f"model {served.name!r}: {exc}", 500) from exc
            results.append([from_model_output(s, o) for s, o in zip(served.outputs, outputs, strict=True)])
        with self._lock:
            self.requests += 1
            self.instances += len(instances)
        return results

    def _invoke(self, served: Served, inputs: list[Array]) -> list[Array]:
        if self.config.interpreter == "pipeline":
            return served.pipeline.predict(served.index, inputs)
        model, lock = self._own_model(served)
        with lock:
            return model.invoke(inputs)

    def _own_model(self, served: Served) -> tuple[Model, threading.Lock]:
        from edge_runtime.pipeline import load_model

        key = (served.pipeline.name, served.index, served.model.sha256)
        with self._lock:
            found = self._own.get(key)
        if found is not None:
            return found
        runner = served.pipeline.runners[served.index]
        model = load_model(runner.config, served.pipeline.config_root)
        log.info("http predict: loaded an interpreter of its own for %s (%s)", served.name, model.placement)
        with self._lock:
            for old in [k for k in self._own if k[:2] == key[:2]]:
                del self._own[old]  # a model replaced by an update
            return self._own.setdefault(key, (model, threading.Lock()))

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "instances": self.instances, "pending": self._pending}


async def run_predict(
    predictor: Predictor, served: Served, instances: list[list[Array]]
) -> list[list[Array]]:
    """:meth:`Predictor.run` in a worker thread, admitted first (503 when busy), within
    ``timeout_s`` (503 after it; the worker finishes its instance and frees its place)."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    predictor.admit()

    def job() -> list[list[Array]]:
        try:
            return predictor.run(served, instances)
        finally:
            predictor.release()

    try:
        return await asyncio.wait_for(run_in_threadpool(job), predictor.config.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            f"model {served.name!r}: no answer within {predictor.config.timeout_s:g} s", 503
        ) from None


def json_array(value: Any, where: str) -> Array:
    """A JSON value (number or nested lists) as a float64 array; 400 unless numbers, rectangular."""
    try:
        array = np.asarray(value)
    except ValueError:
        raise ApiError(f"{where}: not a rectangular array (lists of unequal length)") from None
    if array.dtype.kind not in "iuf" or (array.size == 0 and array.ndim == 0):
        kind = (
            "booleans"
            if array.dtype.kind == "b"
            else "strings or objects"
            if array.dtype.kind in "OUS"
            else array.dtype.name
        )
        raise ApiError(f"{where}: expects numbers, got {kind}")
    if array.size == 0:
        raise ApiError(f"{where}: empty tensor")
    return array.astype(np.float64)

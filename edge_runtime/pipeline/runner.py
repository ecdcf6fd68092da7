"""A model bound to a pipeline: the builders of its inputs (from camera frames and sensor
buffers, into the model or into staging buffers) and the post-processors of its outputs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.config import Config, ImageInput, ModelConfig, VectorInput, WindowInput
from edge_runtime.errors import EdgeRuntimeError, PipelineError
from edge_runtime.fusion import ImageBuilder, SensorBuilder, StaleInput
from edge_runtime.geometry import ImageTransform, on_full_frame
from edge_runtime.postprocess import Head, make_head, read_labels
from edge_runtime.runtime.model import Model, TensorSpec
from edge_runtime.runtime.shared import ModelRegistry
from edge_runtime.sources.base import Frame, SensorSource, Source

CROP_SOURCE = "crop"  # the image input of a cascade's classifier


def _find_input(model: Model, ref: int | str) -> TensorSpec:
    for spec in model.inputs:
        if (spec.position == ref) if isinstance(ref, int) else (spec.name == ref or ref in spec.name):
            return spec
    names = ", ".join(f"{s.position}:{s.name}" for s in model.inputs)
    raise PipelineError(f"{model.path.name}: no input {ref!r}; inputs are {names}")


def load_model(mc: ModelConfig, config: Config) -> Model:
    """A model of the config, on its delegate chain (or the config's defaults)."""
    return Model(
        config.resolve(mc.path),
        delegates=list(mc.delegates or config.defaults.delegates),
        threads=mc.threads or config.defaults.threads,
        backend=config.runtime.backend,
        name=mc.name,
    )


def shared_loader(registry: ModelRegistry) -> Callable[[ModelConfig, Config], Model]:
    """:func:`load_model` through ``registry``: one loaded model per distinct file and settings."""

    def load(mc: ModelConfig, config: Config) -> Model:
        return registry.get(
            config.resolve(mc.path),
            delegates=list(mc.delegates or config.defaults.delegates),
            threads=mc.threads or config.defaults.threads,
            backend=config.runtime.backend,
            name=mc.name,
        )

    return load


class ModelRunner:
    """One model with the builders of its inputs and the post-processors of its outputs."""

    def __init__(
        self,
        mc: ModelConfig,
        config: Config,
        sources: Mapping[str, Source],
        where: str,
        model: Model | None = None,
        load: Callable[[ModelConfig, Config], Model] = load_model,
    ) -> None:
        self.config = mc
        try:
            self.model = model or load(mc, config)
        except EdgeRuntimeError as exc:
            raise PipelineError(f"{where}: {exc}") from exc
        self.images: list[tuple[int, ImageBuilder, str]] = []
        self.sensors: list[tuple[int, SensorBuilder]] = []
        used: set[int] = set()
        for binding in mc.inputs:
            spec = _find_input(self.model, binding.input)
            if spec.position in used:
                raise PipelineError(f"{where}: input {spec.name!r} is bound twice")
            used.add(spec.position)
            if isinstance(binding, ImageInput):
                builder = ImageBuilder(
                    spec, binding.resize, binding.color, binding.pad_value, binding.mean, binding.std
                )
                self.images.append((spec.position, builder, binding.source))
            else:
                sensor = sources.get(binding.source)
                if not isinstance(sensor, SensorSource):
                    raise PipelineError(f"{where}: source {binding.source!r} has no sensor channels")
                buffers = sensor.buffers
                if isinstance(binding, VectorInput):
                    sb = SensorBuilder(
                        spec,
                        buffers,
                        binding.channels,
                        binding.stale,
                        binding.max_age_s,
                        method=binding.sample,
                    )
                else:
                    assert isinstance(binding, WindowInput)
                    window = (binding.window_s, binding.samples)
                    sb = SensorBuilder(
                        spec, buffers, binding.channels, binding.stale, binding.max_age_s, window=window
                    )
                self.sensors.append((spec.position, sb))
        missing = [s.name for s in self.model.inputs if s.position not in used]
        if missing:
            raise PipelineError(f"{where}: model inputs {missing} are not bound to any source")
        self._staging: dict[int, dict[int, npt.NDArray[Any]]] = {}  # slot -> position -> inputs
        self._capture_request = threading.Event()
        self._captured = threading.Event()
        self.captured_inputs: list[npt.NDArray[Any]] | None = None
        self.heads: dict[str, Head[Any]] = {}
        heads = mc.postprocess if isinstance(mc.postprocess, dict) else {"": mc.postprocess}
        size = (self.images[0][1].width, self.images[0][1].height) if self.images else None
        for head, pc in heads.items():
            labels = None
            if not hasattr(pc, "labels"):
                labels = None
            elif isinstance(pc.labels, str):
                labels = read_labels(config.resolve(pc.labels))
            try:
                self.heads[head] = make_head(
                    pc, self.model.outputs, labels, input_size=size, model=self.model.name
                )
            except EdgeRuntimeError as exc:
                raise PipelineError(f"{where}: {exc}") from exc

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.model.name, "sha256": self.model.sha256, "version": self.config.version}

    def fill(
        self, frames: Mapping[str, Frame | npt.NDArray[np.uint8]], t: float, slot: int | None = None
    ) -> ImageTransform | None:
        """Build every input for trigger time ``t``, into the model (``slot`` None) or into staging
        buffers ``slot`` for :meth:`load`; returns the first image's transform."""
        transform = None
        capture = self._capture_request.is_set()
        arrays: dict[int, npt.NDArray[Any]] = {}
        for position, image_builder, source in self.images:
            frame = frames.get(source)
            if frame is None:
                raise StaleInput(f"no frame from {source!r} yet")
            pixels = frame.image if isinstance(frame, Frame) else frame
            array = image_builder.build(pixels)
            self._set(position, array, slot)
            if capture:
                arrays[position] = array.copy()
            if transform is None and image_builder.transform is not None:
                scale = frame.scale if isinstance(frame, Frame) else 1
                transform = on_full_frame(image_builder.transform, scale)  # boxes in camera pixels
        for position, sensor_builder in self.sensors:
            array = sensor_builder.build(t)
            self._set(position, array, slot)
            if capture:
                arrays[position] = array.copy()
        if capture:
            self.captured_inputs = [arrays[i] for i in sorted(arrays)]
            self._capture_request.clear()
            self._captured.set()
        return transform

    def _set(self, position: int, array: npt.NDArray[Any], slot: int | None) -> None:
        if slot is None:
            self.model.set_input(position, array)
            return
        staged = self._staging.setdefault(slot, {})
        buffer = staged.get(position)
        if buffer is None or buffer.shape != array.shape or buffer.dtype != array.dtype:
            staged[position] = array.copy()  # once per slot and input: reused from then on
        else:
            np.copyto(buffer, array)

    def load(self, slot: int) -> None:
        """Set the model's inputs from staging buffers ``slot`` (filled by :meth:`fill`)."""
        for position, array in self._staging[slot].items():
            self.model.set_input(position, array)

    def capture_inputs(self, timeout: float) -> list[npt.NDArray[Any]] | None:
        """Copies of the inputs of the next inference (the latest real input), or None."""
        self._captured.clear()
        self._capture_request.set()
        if not self._captured.wait(timeout):
            self._capture_request.clear()
            return None
        return self.captured_inputs

    def invoke(self) -> list[npt.NDArray[Any]]:
        self.model.run()
        return [self.model.output(i) for i in range(len(self.model.outputs))]

    def post(self, outputs: list[npt.NDArray[Any]], transform: ImageTransform | None) -> dict[str, Any]:
        if "" in self.heads:
            return self.heads[""].process(outputs, transform)
        results = {name: pp.process(outputs, transform) for name, pp in self.heads.items()}
        results["event"] = any(r.get("event") for r in results.values())  # type: ignore[assignment]
        return results


def invoke_shared(
    runners: list[ModelRunner], slot: int, release: Callable[[int], None]
) -> tuple[list[list[npt.NDArray[Any]]], float]:
    """Each model's inputs loaded from staging ``slot``, invoked and read under the model's own
    lock (another pipeline may share the model: :mod:`edge_runtime.runtime.shared`); ``slot`` is
    given back after the last load. The time (ms) counts from the first load: it includes any
    wait for a shared model."""
    outputs: list[list[npt.NDArray[Any]]] = []
    released = False
    t1 = time.perf_counter()
    try:
        for i, runner in enumerate(runners):
            with runner.model.lock:
                runner.load(slot)
                if i == len(runners) - 1:
                    release(slot)
                    released = True
                outputs.append(runner.invoke())
    finally:
        if not released:
            release(slot)
    return outputs, (time.perf_counter() - t1) * 1000

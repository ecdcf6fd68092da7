"""A model bound to a pipeline: the builders of its inputs (from camera frames and sensor
buffers, into the model or into staging buffers) and the post-processors of its outputs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

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


class InputTap(Protocol):
    """Sees some of the inputs as fed (input drift, :mod:`edge_runtime.monitor.inputdrift`)."""

    def due(self) -> bool:
        """Count one inference; True when its inputs are to be shown to :meth:`add`."""
        ...

    def add(self, position: int, array: npt.NDArray[Any]) -> None: ...


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
        self._rows: dict[int, int] = {}  # slot -> instances staged by fill_rows (0: by fill)
        self.batch_sizes: Counter[int] = Counter()  # batched invokes by their number of instances
        self._capture_request = threading.Event()
        self._captured = threading.Event()
        self.captured_inputs: list[npt.NDArray[Any]] | None = None
        self.input_tap: InputTap | None = None  # set by the daemon when the model has a reference
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
        self,
        frames: Mapping[str, Frame | npt.NDArray[np.uint8]],
        t: float,
        slot: int | None = None,
        keep: list[tuple[str, list[str], npt.NDArray[Any]]] | None = None,
    ) -> ImageTransform | None:
        """Build every input for trigger time ``t``, into the model (``slot`` None) or into staging
        buffers ``slot`` for :meth:`load`; returns the first image's transform. With ``keep``, a copy
        of each sensor input's real values is added there (for data capture: a few hundred values)."""
        transform = None
        capture = self._capture_request.is_set()
        tap = self.input_tap
        sample = tap is not None and tap.due()
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
            if sample and tap is not None:
                tap.add(position, array)
            if transform is None and image_builder.transform is not None:
                scale = frame.scale if isinstance(frame, Frame) else 1
                transform = on_full_frame(image_builder.transform, scale)  # boxes in camera pixels
        for position, sensor_builder in self.sensors:
            array = sensor_builder.build(t)
            self._set(position, array, slot)
            if keep is not None:
                keep.append(
                    (sensor_builder.spec.name, list(sensor_builder.channels), sensor_builder.real_values())
                )
            if capture:
                arrays[position] = array.copy()
            if sample and tap is not None:
                tap.add(position, array)
        if capture:
            self.captured_inputs = [arrays[i] for i in sorted(arrays)]
            self._capture_request.clear()
            self._captured.set()
        return transform

    def fill_rows(
        self,
        frames: Sequence[Mapping[str, Frame]],
        times: Sequence[float],
        slot: int,
        capacity: int,
        keeps: list[list[tuple[str, list[str], npt.NDArray[Any]]]] | None = None,
    ) -> list[ImageTransform | None]:
        """Build the inputs of ``len(frames)`` instances (at most ``capacity``), each for its own
        trigger time, into the rows of staging buffers ``slot``: a batch for :meth:`load`. Returns
        each instance's first image transform. With ``keeps``, each row's sensor values are added
        to a list of their own there (as :meth:`fill`'s ``keep``)."""
        transforms: list[ImageTransform | None] = []
        capture = self._capture_request.is_set()
        tap = self.input_tap
        for row, (instance, t) in enumerate(zip(frames, times, strict=True)):
            transform = None
            arrays: list[tuple[int, npt.NDArray[Any]]] = []
            for position, image_builder, source in self.images:
                frame = instance.get(source)
                if frame is None:
                    raise StaleInput(f"no frame from {source!r} yet")
                arrays.append((position, image_builder.build(frame.image)))
                if transform is None and image_builder.transform is not None:
                    transform = on_full_frame(image_builder.transform, frame.scale)  # camera pixels
            arrays += [(position, sensor_builder.build(t)) for position, sensor_builder in self.sensors]
            if keeps is not None:
                keeps.append([(b.spec.name, list(b.channels), b.real_values()) for _, b in self.sensors])
            if tap is not None and tap.due():  # input drift samples the rows like single inputs
                for position, array in arrays:
                    tap.add(position, array)
            for position, array in arrays:
                staged = self._staging.setdefault(slot, {})
                buffer = staged.get(position)
                shape = (capacity, *array.shape[1:])
                if buffer is None or buffer.shape != shape or buffer.dtype != array.dtype:
                    buffer = staged[position] = np.zeros(shape, dtype=array.dtype)  # once per slot
                buffer[row] = array[0]
            if capture and row == 0:
                self.captured_inputs = [a.copy() for _, a in sorted(arrays, key=lambda pa: pa[0])]
                self._capture_request.clear()
                self._captured.set()
            transforms.append(transform)
        self._rows[slot] = len(frames)
        return transforms

    def rows(self, slot: int) -> int:
        """Instances staged in ``slot`` by :meth:`fill_rows` (0: one, by :meth:`fill`)."""
        return self._rows.get(slot, 0)

    def load_row(self, slot: int, row: int) -> None:
        """Set the model's inputs (a batch of one) from row ``row`` of staging buffers ``slot``."""
        self.model.set_batch(1)
        for position, array in self._staging[slot].items():
            self.model.set_input(position, array[row : row + 1])

    def _set(self, position: int, array: npt.NDArray[Any], slot: int | None) -> None:
        if slot is None:
            self.model.set_batch(1)
            self.model.set_input(position, array)
            return
        self._rows[slot] = 0
        staged = self._staging.setdefault(slot, {})
        buffer = staged.get(position)
        if buffer is None or buffer.shape != array.shape or buffer.dtype != array.dtype:
            staged[position] = array.copy()  # once per slot and input: reused from then on
        else:
            np.copyto(buffer, array)

    def load(self, slot: int) -> None:
        """Set the model's inputs from staging buffers ``slot`` (filled by :meth:`fill`, or by
        :meth:`fill_rows`: the model is then sized to that batch; see ``Model.batch_error``)."""
        rows = self._rows.get(slot, 0)
        self.model.set_batch(rows or 1)
        for position, array in self._staging[slot].items():
            self.model.set_input(position, array[:rows] if rows else array)

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

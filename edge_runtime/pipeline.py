"""A pipeline: trigger -> fuse -> invoke -> postprocess -> emit, in three stages.

The worker thread waits for the trigger and builds the inputs into one of two staging slots; the
invoke stage loads them and invokes (``invoke`` releases the GIL); the result stage post-processes,
numbers and emits. Each stage works on the next result while the one after it finishes the
previous, so the model is fed again as soon as an invoke ends; hand-offs are short blocking
queues, in order, and stopping drains them.

A pipeline runs one model, an ensemble (several models on the same inputs, their class scores
combined by weighted mean or vote) or a cascade (a detector's boxes cropped from the frame and
classified by a second model). Every result carries per-stage timings. The trigger time is the
capture time of the frame (or sample) that triggered it, never the time the worker got to it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_runtime.config import (
    CascadeConfig,
    Config,
    EveryTrigger,
    ImageInput,
    ModelConfig,
    PipelineConfig,
    VectorInput,
    WindowInput,
)
from edge_runtime.errors import EdgeRuntimeError, PipelineError
from edge_runtime.fusion import ImageBuilder, SensorBuilder, StaleInput
from edge_runtime.geometry import ImageTransform
from edge_runtime.handoff import Stage
from edge_runtime.postprocess import (
    ClassificationConfig,
    Postprocessor,
    combine_mean,
    combine_vote,
    read_labels,
)
from edge_runtime.runtime.model import Model, TensorSpec
from edge_runtime.sources.base import Frame, Source
from edge_runtime.stats import LatencyWindow, RateMeter

log = logging.getLogger(__name__)


class Budget(Protocol):
    """A shared limit on results: taken before an inference, given back when it yields none."""

    def take(self) -> bool: ...

    def give_back(self) -> None: ...


CROP_SOURCE = "crop"  # the image input of a cascade's classifier
STAGING_SLOTS = 2  # input sets: one built by the worker while the other is loaded for an invoke
Emit = Callable[[dict[str, Any]], None]


@dataclass
class Trigger:
    t_mono: float
    t_wall: float
    source: str
    seq: int
    frame: Frame | None


@dataclass
class Prepared:
    """What the worker hands to the invoke stage: inputs built into staging ``slot``."""

    trig: Trigger
    frames: dict[str, Frame]
    runners: list[ModelRunner]
    transforms: list[ImageTransform | None]
    slot: int
    pre_ms: float
    t0: float


@dataclass
class Invoked:
    """What the invoke stage hands to the result stage: a prepared job's outputs."""

    job: Prepared
    outputs: list[list[npt.NDArray[Any]]]
    invoke_ms: float


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


class ModelRunner:
    """One model with the builders of its inputs and the post-processors of its outputs."""

    def __init__(
        self,
        mc: ModelConfig,
        config: Config,
        sources: Mapping[str, Source],
        where: str,
        model: Model | None = None,
    ) -> None:
        self.config = mc
        try:
            self.model = model or load_model(mc, config)
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
                buffers = getattr(sources.get(binding.source), "buffers", None)
                if buffers is None:
                    raise PipelineError(f"{where}: source {binding.source!r} has no sensor channels")
                if isinstance(binding, VectorInput):
                    sb = SensorBuilder(
                        spec, buffers, binding.channels, binding.stale, binding.max_age_s, binding.sample
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
        self.heads: dict[str, Postprocessor] = {}
        heads = mc.postprocess if isinstance(mc.postprocess, dict) else {"": mc.postprocess}
        size = (self.images[0][1].width, self.images[0][1].height) if self.images else None
        for head, pc in heads.items():
            labels = None
            if not hasattr(pc, "labels"):
                labels = None
            elif isinstance(pc.labels, str):
                labels = read_labels(config.resolve(pc.labels))
            try:
                self.heads[head] = Postprocessor(
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
            transform = transform or image_builder.transform
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


class Pipeline:
    """One configured pipeline and its worker thread."""

    def __init__(
        self,
        pc: PipelineConfig,
        config: Config,
        sources: Mapping[str, Source],
        emit: Emit,
        device: str,
        seq_start: int = 0,
        event: Callable[[str, str, dict[str, Any]], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        where = f"pipeline {pc.name}"
        self.config = pc
        self.name = pc.name
        self.device = device
        self.emit = emit
        self.sources = sources
        self.runners = [
            ModelRunner(m, config, sources, f"{where}: models[{i}]") for i, m in enumerate(pc.models)
        ]
        self.cascade: ModelRunner | None = None
        if pc.cascade is not None:
            self._check_cascade(pc.cascade, where)
            self.cascade = ModelRunner(pc.cascade.classifier, config, sources, f"{where}: cascade.classifier")
        if pc.ensemble is not None:
            for r in self.runners:
                if not isinstance(r.config.postprocess, ClassificationConfig):
                    raise PipelineError(f"{where}: ensemble members must use classification post-processing")
        trigger = pc.trigger
        self.trigger_source = None if isinstance(trigger, EveryTrigger) else sources[trigger.source]
        self.seq = seq_start
        self.event = event
        self.budget = budget
        self.last_result: dict[str, Any] | None = None
        self.results = 0
        self.handed_over = 0  # inferences given to the invoke stage
        self.triggers = 0
        self.skipped = 0
        self.errors = 0
        self.dropped = 0
        self.rate_limited = 0
        self.paused_skips = 0
        self.last_error = ""
        self.paused = False
        self.finished = False
        self.busy_since: float | None = None
        self.last_progress = time.monotonic()
        self.latency = {k: LatencyWindow() for k in ("pre", "invoke", "post", "total")}
        self.fps_in = RateMeter()
        self.fps_out = RateMeter()
        self.last_trigger_mono: float | None = None  # for the health state (edge_runtime.healthstate)
        self.last_result_mono: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._invoker: Stage[Prepared] | None = None
        self._results: Stage[Invoked] | None = None
        self._slots: queue.Queue[int] = queue.Queue()
        self._errors_lock = threading.Lock()
        self._last_seq = 0
        self._infer_lock = threading.Lock()
        self.monitor: Callable[[list[npt.NDArray[Any]], float], None] | None = None
        self.config_root = config

    def _check_cascade(self, cascade: CascadeConfig, where: str) -> None:
        runner = self.runners[0]
        if not runner.images or "" not in runner.heads:
            raise PipelineError(f"{where}: a cascade's detector needs an image input and one detection head")
        classifier_images = [b for b in cascade.classifier.inputs if isinstance(b, ImageInput)]
        if len(classifier_images) != 1 or classifier_images[0].source != CROP_SOURCE:
            raise PipelineError(f"{where}: the cascade classifier needs one image input with source = 'crop'")

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._slots = queue.Queue()
        for slot in range(STAGING_SLOTS):
            self._slots.put(slot)
        self._results = Stage(f"results-{self.name}", self._finish)
        self._invoker = Stage(f"invoke-{self.name}", self._invoke, depth=1)
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{self.name}", daemon=True)
        self._thread.start()

    def swap_model(self, runner: ModelRunner) -> ModelRunner:
        """Replace the first model between two inferences; returns the one it replaces."""
        with self._infer_lock:
            old = self.runners[0]
            self.runners[0] = runner
        return old

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the inference in flight (and the results handed over are emitted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stuck(self, limit_s: float) -> str:
        """Why this pipeline makes no progress (a dead thread, an invoke, a post-processing or a
        wait over ``limit_s``), or ""."""
        if self._thread is None or self.finished:
            return ""
        now = time.monotonic()
        problems = [(not self._thread.is_alive(), "worker thread died")]
        for stage, doing in ((self._invoker, "an inference"), (self._results, "a post-processing")):
            if stage is not None:
                busy = stage.busy_since
                problems.append((not stage.alive, f"{stage.name} thread died"))
                problems.append(
                    (
                        busy is not None and now - busy > limit_s,
                        f"{doing} has run for {now - (busy or now):.1f} s",
                    )
                )
        problems.append(
            (now - self.last_progress > limit_s, f"no progress for {now - self.last_progress:.1f} s")
        )
        return next((f"pipeline {self.name}: {why}" for bad, why in problems if bad), "")

    # -- the loop ------------------------------------------------------------------------------------

    def _wait(self) -> Trigger | None:
        trigger = self.config.trigger
        if isinstance(trigger, EveryTrigger):
            now = time.monotonic()
            next_t = getattr(self, "_next_tick", now)
            if next_t > now and self._stop.wait(next_t - now):
                return None
            self._next_tick = max(next_t + trigger.every_s, time.monotonic())
            return Trigger(time.monotonic(), time.time(), "every", self.triggers + 1, None)
        source = self.trigger_source
        assert source is not None
        get = getattr(source, "get", None)
        if get is not None:  # a camera: each new frame, with its own capture time
            frame: Frame | None = get(self._last_seq, 0.5)
            if frame is None:
                return None
            if frame.seq > self._last_seq + 1:  # frames this pipeline never saw
                self.dropped += frame.seq - self._last_seq - 1
            self._last_seq = frame.seq
            return Trigger(frame.t_mono, frame.t_wall, source.name, frame.seq, frame)
        seq = source.wait_for(self._last_seq, 0.5)
        if seq == self._last_seq or source.last_sample_mono is None:
            return None
        self._last_seq = seq
        t_mono = source.last_sample_mono
        return Trigger(t_mono, time.time() - (time.monotonic() - t_mono), source.name, seq, None)

    def _run(self) -> None:
        try:
            finished = self._loop()
        except BaseException:
            log.exception("pipeline %s: worker thread died", self.name)
            raise
        finally:
            for stage in (self._invoker, self._results):
                if stage is not None:
                    stage.close()  # every inference handed over is run and emitted first
        self.finished = finished

    def _loop(self) -> bool:
        """Trigger, fill, invoke, hand over, until stopped (False) or finished (True)."""
        min_gap = getattr(self.config.trigger, "min_interval_s", 0.0)
        last_t = float("-inf")
        while not self._stop.is_set():
            self.last_progress = time.monotonic()
            trig = self._wait()
            if trig is None:
                source = self.trigger_source
                if source is not None and source.finished:
                    if getattr(source, "get", None) is not None and source.seq > self._last_seq:
                        self.dropped += source.seq - self._last_seq  # released after our last frame
                        self._last_seq = source.seq
                    log.info("pipeline %s: source %s finished", self.name, source.name)
                    return True
                continue
            if self.paused:
                self.paused_skips += 1
                continue
            if trig.t_mono - last_t < min_gap:
                self.rate_limited += 1
                continue
            last_t = trig.t_mono
            if self.budget is not None and not self.budget.take():
                return True  # the run's --max-results is reached: produce nothing more
            self.triggers += 1
            self.fps_in.tick()
            self.last_trigger_mono = time.monotonic()
            self.busy_since = time.monotonic()
            try:
                self._infer(trig)
            except StaleInput as exc:
                self._give_back()
                self.skipped += 1
                log.debug("pipeline %s: skipped: %s", self.name, exc)
            except EdgeRuntimeError as exc:
                self._failed(exc)
            finally:
                self.busy_since = None
            max_results = self.config.max_results
            if max_results is not None and self.handed_over >= max_results:
                return True
        return False

    def _failed(self, exc: EdgeRuntimeError) -> None:
        """An inference that gives no result (either stage): counted, reported once per new error."""
        self._give_back()
        with self._errors_lock:
            self.errors += 1
            new = str(exc) != self.last_error
            self.last_error = str(exc)
        if new:
            log.error("pipeline %s: %s", self.name, exc)
            if self.event is not None:
                self.event("pipeline.error", f"pipeline {self.name}: {exc}", {"pipeline": self.name})

    def _give_back(self) -> None:
        if self.budget is not None:
            self.budget.give_back()

    def _frames(self, trig: Trigger) -> dict[str, Frame]:
        frames: dict[str, Frame] = {}
        if trig.frame is not None:
            frames[trig.source] = trig.frame
        for runner in self.runners:
            for _, _, source in runner.images:
                if source not in frames:
                    latest = getattr(self.sources[source], "latest", None)
                    frame = latest() if latest is not None else None
                    if frame is not None:
                        frames[source] = frame
        return frames

    def _infer(self, trig: Trigger) -> None:
        """On the worker: build the inputs into a free staging slot while the invoke stage runs
        the previous inference; hand them over."""
        t0 = time.perf_counter()
        frames = self._frames(trig)
        runners = list(self.runners)
        slot = self._free_slot()
        try:
            transforms = [r.fill(frames, trig.t_mono, slot) for r in runners]
        except BaseException:
            self._slots.put(slot)
            raise
        assert self._invoker is not None
        pre_ms = (time.perf_counter() - t0) * 1000
        self._invoker.put(Prepared(trig, frames, runners, transforms, slot, pre_ms, t0))
        self.handed_over += 1

    def _free_slot(self) -> int:
        while True:
            try:
                return self._slots.get(timeout=0.5)
            except queue.Empty:
                assert self._invoker is not None
                if not self._invoker.alive:  # nobody will give a slot back
                    raise PipelineError(f"pipeline {self.name}: the invoke stage died") from None

    def _invoke(self, job: Prepared) -> None:
        """On the invoke stage: load the staged inputs, invoke, hand over to the result stage.
        Inputs built just before a model swap run on the models they were built for (the
        replaced one stays loaded); from the next trigger on, the new model serves."""
        runners = job.runners
        try:
            with self._infer_lock:
                try:
                    for runner in runners:
                        runner.load(job.slot)
                finally:
                    self._slots.put(job.slot)
                current = runners[0] is self.runners[0]
                t1 = time.perf_counter()
                outputs = [r.invoke() for r in runners]  # copies: the next invoke does not touch them
                invoke_ms = (time.perf_counter() - t1) * 1000
        except EdgeRuntimeError as exc:
            self._failed(exc)
            return
        monitor = self.monitor
        if monitor is not None and current:
            monitor(outputs[0], invoke_ms)
        assert self._results is not None
        self._results.put(Invoked(job, outputs, invoke_ms))

    def _finish(self, done: Invoked) -> None:
        """On the result stage: post-process, number and emit one result, in trigger order."""
        t2 = time.perf_counter()
        job = done.job
        try:
            if self.config.ensemble is not None:
                result = self._combine(job.runners, done.outputs)
            else:
                result = job.runners[0].post(done.outputs[0], job.transforms[0])
            cascade_invoke_ms = 0.0
            if self.cascade is not None:
                frame = job.frames.get(job.runners[0].images[0][2])
                cascade_invoke_ms = self._classify_crops(result, frame)
        except EdgeRuntimeError as exc:
            self._failed(exc)
            return
        t4 = time.perf_counter()
        latency = {
            "pre": job.pre_ms,
            "invoke": done.invoke_ms + cascade_invoke_ms,
            "post": (t4 - t2) * 1000 - cascade_invoke_ms,
            "total": (t4 - job.t0) * 1000,
        }
        for key, value in latency.items():
            self.latency[key].add(value)
        self.seq += 1
        self.results += 1
        self.fps_out.tick()
        self.last_result_mono = time.monotonic()
        self.last_result = result
        trig = job.trig
        self.emit(
            {
                "v": 1,
                "device": self.device,
                "pipeline": self.name,
                "seq": self.seq,
                "ts": round(time.time(), 3),
                "frame_ts": round(trig.t_wall, 3),
                "trigger": {"source": trig.source, "seq": trig.seq},
                "model": job.runners[0].info,
                "latency_ms": {k: round(v, 3) for k, v in latency.items()},
                "result": result,
            }
        )

    def _combine(self, runners: list[ModelRunner], outputs: list[list[npt.NDArray[Any]]]) -> dict[str, Any]:
        assert self.config.ensemble is not None
        probs = [r.heads[""].probabilities(o) for r, o in zip(runners, outputs, strict=True)]
        weights = [r.config.weight for r in runners]
        combine = combine_mean if self.config.ensemble.combine == "mean" else combine_vote
        combined = combine(probs, weights)
        result = runners[0].heads[""].classification_result(combined)
        result["combine"] = self.config.ensemble.combine
        result["members"] = [
            {**r.info, "weight": r.config.weight, "top": r.heads[""].classification_result(p)["top"]}
            for r, p in zip(runners, probs, strict=True)
        ]
        return result

    def _classify_crops(self, result: dict[str, Any], frame: Frame | None) -> float:
        """Classify each detection's crop; returns the classifier's invoke time in ms."""
        assert self.cascade is not None and self.config.cascade is not None
        if frame is None:
            return 0.0
        pad = self.config.cascade.padding
        h, w = frame.image.shape[:2]
        spent = 0.0
        for det in result.get("detections", [])[: self.config.cascade.max_crops]:
            x1, y1, x2, y2 = det["box"]
            bw, bh = x2 - x1, y2 - y1
            xa, ya = max(0, int(x1 - pad * bw)), max(0, int(y1 - pad * bh))
            xb, yb = min(w, int(np.ceil(x2 + pad * bw))), min(h, int(np.ceil(y2 + pad * bh)))
            if xb - xa < 2 or yb - ya < 2:
                continue
            crop = np.ascontiguousarray(frame.image[ya:yb, xa:xb])
            self.cascade.fill({CROP_SOURCE: crop}, frame.t_mono)
            t0 = time.perf_counter()
            outs = self.cascade.invoke()
            spent += (time.perf_counter() - t0) * 1000
            det["class"] = self.cascade.post(outs, None)
        return spent

    def stats(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "triggers": self.triggers,
            "skipped_stale": self.skipped,
            "dropped_frames": self.dropped,
            "rate_limited": self.rate_limited,
            "paused_skips": self.paused_skips,
            "errors": self.errors,
            "last_error": self.last_error,
            "fps_in": self.fps_in.rate(),
            "fps_out": self.fps_out.rate(),
            "last_trigger_age_s": _age(self.last_trigger_mono),
            "last_result_age_s": _age(self.last_result_mono),
            "finished": self.finished,
            "paused": self.paused,
            "latency_ms": {k: v.percentiles() for k, v in self.latency.items()},
            "models": [
                {**r.info, "delegate": r.model.delegate, "placement": r.model.placement} for r in self.runners
            ],
        }


def _age(t_mono: float | None) -> float | None:
    return None if t_mono is None else round(time.monotonic() - t_mono, 3)

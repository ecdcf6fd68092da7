"""A pipeline: trigger -> fuse -> invoke -> postprocess -> emit, in three stages.

The worker thread waits for the trigger and builds the inputs into one of two staging slots; the
invoke stage loads them and invokes (``invoke`` releases the GIL); the result stage post-processes,
numbers and emits. The threads and hand-offs are :class:`~.stages.StageEngine`'s; this module is
the domain: triggers, inputs, models, results.

A pipeline runs one model, an ensemble (several models on the same inputs, their class scores
combined by weighted mean or vote) or a cascade (a detector's boxes cropped from the frame and
classified by a second model). Every result carries per-stage timings. The trigger time is the
capture time of the frame (or sample) that triggered it, never the time the worker got to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from edge_runtime.config import (
    CascadeConfig,
    Config,
    EveryTrigger,
    ImageInput,
    ModelConfig,
    PipelineConfig,
    SourceTrigger,
)
from edge_runtime.errors import EdgeRuntimeError, PipelineError
from edge_runtime.fusion import StaleInput
from edge_runtime.geometry import ImageTransform
from edge_runtime.pipeline.batch import InvokedBatch, PreparedBatch, invoke_batch, split, usable_batch
from edge_runtime.pipeline.fanin import RoundRobin
from edge_runtime.pipeline.results import Triggered, classify_crops, combine, document
from edge_runtime.pipeline.runner import CROP_SOURCE, ModelRunner, invoke_shared, load_model
from edge_runtime.pipeline.stages import StageEngine
from edge_runtime.pipeline.stats import pipeline_stats
from edge_runtime.pipeline.trigger import SingleTrigger
from edge_runtime.pipeline.watch import Watcher, WatchSlot
from edge_runtime.postprocess import ClassificationConfig
from edge_runtime.runtime.model import Model
from edge_runtime.sources.base import Frame, FrameSource, Source
from edge_runtime.stats import LatencyWindow, RateMeter

log = logging.getLogger(__name__)


class Budget(Protocol):
    """A shared limit on results: taken before an inference, given back when it yields none."""

    def take(self) -> bool: ...

    def give_back(self) -> None: ...


STAGING_SLOTS = 2  # input sets: one built by the worker while the other is loaded for an invoke
RESULT_DEPTH = 2  # results waiting for the result stage (as before): under load up to 3 share one transaction
Emit = Callable[[dict[str, Any]], None]
EmitMany = Callable[[list[dict[str, Any]]], None]
Observer = Callable[[list[npt.NDArray[Any]], float], None]
Capture = Callable[[dict[str, Any], Mapping[str, Frame], list[tuple[str, list[str], npt.NDArray[Any]]]], None]
"""Data capture's hook (:mod:`edge_runtime.monitor.capture_worker`): a result with its inputs."""


@dataclass
class Prepared:
    """What the worker hands to the invoke stage: inputs built into staging ``slot``."""

    trig: Triggered
    frames: dict[str, Frame]
    runners: list[ModelRunner]
    transforms: list[ImageTransform | None]
    slot: int
    pre_ms: float
    t0: float
    sensors: list[tuple[str, list[str], npt.NDArray[Any]]] | None = None


@dataclass
class Invoked:
    """What the invoke stage hands to the result stage: a prepared job's outputs."""

    job: Prepared
    outputs: list[list[npt.NDArray[Any]]]
    invoke_ms: float


class Pipeline:
    """One configured pipeline and its worker thread."""

    def __init__(
        self,
        pc: PipelineConfig,
        config: Config,
        sources: Mapping[str, Source],
        emit: Emit,
        *,
        device: str,
        seq_start: int = 0,
        event: Callable[[str, str, dict[str, Any]], None] | None = None,
        budget: Budget | None = None,
        load: Callable[[ModelConfig, Config], Model] = load_model,
        emit_many: EmitMany | None = None,
    ) -> None:
        where = f"pipeline {pc.name}"
        self.config = pc
        self.name = pc.name
        self.device = device
        self.emit = emit
        self.emit_many: EmitMany = emit_many or self._emit_each
        self._pending: list[tuple[dict[str, Any], Invoked]] = []  # finished, not yet emitted
        self.sources = sources
        self.runners = [
            ModelRunner(m, config, sources, f"{where}: models[{i}]", load=load)
            for i, m in enumerate(pc.models)
        ]
        self.cascade: ModelRunner | None = None
        if pc.cascade is not None:
            self._check_cascade(pc.cascade, where)
            self.cascade = ModelRunner(
                pc.cascade.classifier, config, sources, f"{where}: cascade.classifier", load=load
            )
        if pc.ensemble is not None:
            for r in self.runners:
                if not isinstance(r.config.postprocess, ClassificationConfig):
                    raise PipelineError(f"{where}: ensemble members must use classification post-processing")
        trigger = pc.trigger
        self.trigger_source = None if isinstance(trigger, EveryTrigger) else sources[trigger.source]
        self.single = SingleTrigger(trigger, self.trigger_source)
        self.fan_in: RoundRobin | None = None  # several camera sources (trigger.sources)
        if isinstance(trigger, SourceTrigger) and len(trigger.names) > 1:
            self.fan_in = RoundRobin(where, [sources[name] for name in trigger.names])
        batch = trigger.batch if isinstance(trigger, SourceTrigger) else 1
        self.batch = usable_batch(batch, self.runners[0].model, where)  # frames per invoke
        self.source_results: dict[str, int] = {}  # results per trigger source
        self.source_skipped: dict[str, int] = {}  # per trigger source: rate-limited, stale or paused
        self.seq = seq_start
        self.event = event
        self.budget = budget
        self.last_result: dict[str, Any] | None = None
        self.results = 0
        self.handed_over = 0  # inferences given to the invoke stage
        self.triggers = 0
        self.skipped = 0
        self.errors = 0
        self.rate_limited = 0
        self.paused_skips = 0
        self.last_error = ""
        self.watch_slot = WatchSlot(pc.name)
        self._paused = False
        self.busy_since: float | None = None
        self.latency = {k: LatencyWindow() for k in ("pre", "invoke", "post", "total")}
        self.fps_in = RateMeter()
        self.fps_out = RateMeter()
        self.engine: StageEngine[Prepared | PreparedBatch, Invoked | InvokedBatch] = StageEngine(
            pc.name,
            self._invoke,
            self._finish,
            slots=STAGING_SLOTS,
            flush=self._flush_results,
            result_depth=RESULT_DEPTH,
        )
        self._errors_lock = threading.Lock()
        self._infer_lock = threading.Lock()
        self._shared = config.runtime.share_models  # models may be shared: lock each around its use
        self.monitor: Observer | None = None
        self.on_swap: Callable[[ModelRunner], None] | None = None
        """Called (outside the inference lock) with the runner :meth:`swap_model` put in place."""
        self.capture: Capture | None = None  # set by data capture for the pipelines it watches
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
        self.engine.start(self._loop)

    # -- hooks for updates (edge_runtime.updates.host.UpdatablePipeline) -----------------------------

    def serving(self) -> ModelRunner:
        """The runner of the first model: the one updates replace."""
        return self.runners[0]

    def _first_model_as(self, path: Path, version: str) -> ModelConfig:
        current = self.config.models[0]
        name = current.name or Path(current.path.removeprefix("bundled:")).stem
        return current.model_copy(update={"path": str(path), "version": version, "name": name})

    def load_candidate(self, path: Path, version: str) -> Model:
        """Load ``path`` as the first model is loaded (its delegates, threads and backend)."""
        return load_model(self._first_model_as(path, version), self.config_root)

    def runner_for(self, path: Path, version: str, model: Model | None = None) -> ModelRunner:
        """The first model's input bindings and post-processing on another model file."""
        mc = self._first_model_as(path, version)
        return ModelRunner(mc, self.config_root, self.sources, f"pipeline {self.name}: update", model=model)

    def swap_model(self, runner: ModelRunner) -> ModelRunner:
        """Replace the first model between two inferences; returns the one it replaces."""
        with self._infer_lock:
            old = self.runners[0]
            self.runners[0] = runner
        if self.on_swap is not None:
            self.on_swap(runner)
        return old

    def predict(self, index: int, inputs: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run model ``index`` on ``inputs`` (one instance, for predict on demand) between two of
        this pipeline's inferences: the invoke stage sets its own inputs again before each invoke."""
        with self._infer_lock:
            return self.runners[index].model.invoke(inputs)

    def invoke_p95(self) -> float | None:
        return self.latency["invoke"].percentiles((95,)).get("p95")

    def watch(self, observer: Observer | None) -> None:
        """Call ``observer`` with the outputs and invoke time of each inference of the first model."""
        self.monitor = observer

    def begin_watch(self, runner: ModelRunner, watcher: Watcher) -> ModelRunner:
        """Serve ``runner`` under watch (see :mod:`.watch`); returns the runner it replaced.
        Refused on a pipeline that is stopping, paused, replaced or already watched."""
        stopping = self.engine.stopping.is_set() or not self.alive
        self.watch_slot.begin(
            runner, watcher, "is stopping" if stopping else "is paused" if self._paused else ""
        )
        return self.swap_model(runner)

    def end_watch(self, reason: str, watcher: Watcher | None = None) -> None:
        self.watch_slot.end(reason, watcher)

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        if value:
            self.watch_slot.end(f"pipeline {self.name} was paused")

    def request_stop(self) -> None:
        self.engine.request_stop()
        self.watch_slot.end(f"pipeline {self.name} was stopped")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the inference in flight (and the results handed over are emitted)."""
        self.watch_slot.end(f"pipeline {self.name} was stopped")
        self.engine.stop(timeout)

    @property
    def alive(self) -> bool:
        return self.engine.alive

    @property
    def results_per_write(self) -> float | None:
        """Mean results per outbox transaction (group commit under load), None before any."""
        groups, grouped = self.engine.result_groups
        return round(grouped / groups, 2) if groups else None

    @property
    def finished(self) -> bool:
        return self.engine.finished

    def stuck(self, limit_s: float) -> str:
        """Why this pipeline makes no progress, or "" (see :meth:`StageEngine.stuck`)."""
        return self.engine.stuck(limit_s)

    # -- the loop ------------------------------------------------------------------------------------

    def _loop(self) -> bool:
        """Trigger, fill, invoke, hand over, until stopped (False) or finished (True)."""
        trigger = self.config.trigger
        min_gap = 0.0 if isinstance(trigger, EveryTrigger) else trigger.min_interval_s
        last_t: dict[str, float] = {}  # per trigger source: frames of several cameras interleave
        while not self.engine.stopping.is_set():
            self.engine.last_progress = time.monotonic()
            if self.fan_in is not None:
                trigs = self.fan_in.take(self.engine.stopping, self.batch)
                if not trigs and self.fan_in.finished():
                    self.fan_in.count_released()
                    log.info("pipeline %s: every trigger source finished", self.name)
                    return True
            else:
                trig = self.single.wait(self.engine.stopping, self.triggers)
                trigs = [] if trig is None else [trig]
                if not trigs and self.single.finished():
                    log.info("pipeline %s: source %s finished", self.name, self.single.source)
                    return True
            taken: list[Triggered] = []
            spent = False  # the run's --max-results is reached: produce nothing more
            for trig in trigs:
                if self.paused:
                    self.paused_skips += 1
                elif trig.t_mono - last_t.get(trig.source, float("-inf")) < min_gap:
                    self.rate_limited += 1
                else:
                    last_t[trig.source] = trig.t_mono
                    if spent or (self.budget is not None and not self.budget.take()):
                        spent = True
                    else:
                        taken.append(trig)
                    continue
                self.source_skipped[trig.source] = self.source_skipped.get(trig.source, 0) + 1
            if taken:
                self._run(taken)
            max_results = self.config.max_results
            if spent or (max_results is not None and self.handed_over >= max_results):
                return True
        return False

    def _run(self, trigs: list[Triggered]) -> None:
        self.triggers += len(trigs)
        for _ in trigs:
            self.fps_in.tick()
        self.busy_since = time.monotonic()
        try:
            self._infer(trigs)
        except StaleInput as exc:
            for trig in trigs:
                self._give_back()
                self.source_skipped[trig.source] = self.source_skipped.get(trig.source, 0) + 1
            self.skipped += len(trigs)
            log.debug("pipeline %s: skipped: %s", self.name, exc)
        except EdgeRuntimeError as exc:
            self._failed(exc, len(trigs))
        finally:
            self.busy_since = None

    def _failed(self, exc: EdgeRuntimeError, lost: int = 1) -> None:
        """An inference (of ``lost`` instances) that gives no result (either stage): counted,
        reported once per new error."""
        for _ in range(lost):
            self._give_back()
        with self._errors_lock:
            self.errors += lost
            new = str(exc) != self.last_error
            self.last_error = str(exc)
        if new:
            log.error("pipeline %s: %s", self.name, exc)
            if self.event is not None:
                self.event("pipeline.error", f"pipeline {self.name}: {exc}", {"pipeline": self.name})

    def _give_back(self) -> None:
        if self.budget is not None:
            self.budget.give_back()

    def _frames(self, trig: Triggered) -> dict[str, Frame]:
        frames: dict[str, Frame] = {}
        if trig.frame is not None:
            frames[trig.source] = trig.frame
            if self.fan_in is not None:  # an input bound to any trigger source gets the triggering frame
                for name in self.fan_in.names:
                    frames[name] = trig.frame
        for runner in self.runners:
            for _, _, name in runner.images:
                source = self.sources[name]
                if name not in frames and isinstance(source, FrameSource):
                    frame = source.latest()
                    if frame is not None:
                        frames[name] = frame
        return frames

    def _infer(self, trigs: list[Triggered]) -> None:
        """On the worker: build the inputs (of one trigger, or of a batch in rows) into a free
        staging slot while the invoke stage runs the previous inference; hand them over."""
        t0 = time.perf_counter()
        frames = [self._frames(trig) for trig in trigs]
        runners = list(self.runners)
        slot = self.engine.take_slot()
        keep: list[tuple[str, list[str], npt.NDArray[Any]]] | None = None
        keeps: list[list[tuple[str, list[str], npt.NDArray[Any]]]] | None = None
        if self.capture is not None:  # sensor values kept for data capture: one list per instance
            keep, keeps = [], []
        try:
            if self.batch > 1:
                times = [trig.t_mono for trig in trigs]
                transforms = runners[0].fill_rows(frames, times, slot, self.batch, keeps)
            else:
                transforms = [r.fill(frames[0], trigs[0].t_mono, slot, keep) for r in runners]
        except BaseException:
            self.engine.release_slot(slot)
            raise
        pre_ms = (time.perf_counter() - t0) * 1000
        if self.batch > 1:
            batch = PreparedBatch(trigs, frames, runners[0], transforms, slot, pre_ms, t0, keeps)
            self.engine.submit(batch)
        else:
            self.engine.submit(Prepared(trigs[0], frames[0], runners, transforms, slot, pre_ms, t0, keep))
        self.handed_over += len(trigs)

    def _invoke(self, job: Prepared | PreparedBatch) -> Invoked | InvokedBatch | None:
        """On the invoke stage: load the staged inputs, invoke, hand over to the result stage.
        Inputs built just before a model swap run on the models they were built for (the
        replaced one stays loaded); from the next trigger on, the new model serves."""
        if isinstance(job, PreparedBatch):
            try:
                with self._infer_lock:
                    current = job.runner is self.runners[0]
                    done = invoke_batch(job, self.engine.release_slot, f"pipeline {self.name}")
            except EdgeRuntimeError as exc:
                self._failed(exc, len(job.trigs))
                return None
            if self.monitor is not None and current:
                for row in range(len(job.trigs)):
                    self.monitor(split(done.outputs, row), done.invoke_ms)
            return done
        runners = job.runners
        try:
            with self._infer_lock:
                current = runners[0] is self.runners[0]
                if not self._shared:
                    try:
                        for runner in runners:
                            runner.load(job.slot)
                    finally:
                        self.engine.release_slot(job.slot)
                    t1 = time.perf_counter()
                    outputs = [r.invoke() for r in runners]  # copies: the next invoke does not touch them
                    invoke_ms = (time.perf_counter() - t1) * 1000
                else:
                    outputs, invoke_ms = invoke_shared(runners, job.slot, self.engine.release_slot)
        except EdgeRuntimeError as exc:
            self._failed(exc)
            return None
        if self.cascade is None and self.capture is None:  # only a cascade or a capture needs the
            job.frames, job.trig.frame = {}, None  # frame later: else waiting results hold none
        monitor = self.monitor
        if monitor is not None and current:
            monitor(outputs[0], invoke_ms)
        return Invoked(job, outputs, invoke_ms)

    def _finish(self, done: Invoked | InvokedBatch) -> None:
        """On the result stage: post-process and number one result (or one per row of a batch, in
        the order its frames were taken), in trigger order; emitted by :meth:`_flush_results` with
        the others the stage took together."""
        if isinstance(done, InvokedBatch):
            b = done.job
            for row, trig in enumerate(b.trigs):
                sensors = b.sensors[row] if b.sensors is not None else None
                one = Prepared(
                    trig, b.frames[row], [b.runner], [b.transforms[row]], b.slot, b.pre_ms, b.t0, sensors
                )
                self._finish(Invoked(one, [split(done.outputs, row)], done.invoke_ms))
            return
        t2 = time.perf_counter()
        job = done.job
        try:
            if self.config.ensemble is not None:
                result = combine(self.config.ensemble, job.runners, done.outputs)
            else:
                result = job.runners[0].post(done.outputs[0], job.transforms[0])
            cascade_invoke_ms = 0.0
            if self.cascade is not None and self.config.cascade is not None:
                frame = job.frames.get(job.runners[0].images[0][2])
                cascade_invoke_ms = classify_crops(self.config.cascade, self.cascade, result, frame)
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
        doc = document(
            device=self.device,
            pipeline=self.name,
            seq=self.seq,
            trig=job.trig,
            model=job.runners[0].info,
            latency=latency,
            result=result,
        )
        self._pending.append((doc, done))

    def _emit_each(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            self.emit(doc)

    def _flush_results(self) -> None:
        """Emit the results finished since the last flush, in order, in one call (the outbox
        stores them in one transaction); each counts as produced only once emitted."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.emit_many([doc for doc, _ in pending])
        for doc, done in pending:
            source = done.job.trig.source
            self.results += 1
            self.source_results[source] = self.source_results.get(source, 0) + 1
            self.fps_out.tick()
            self.last_result = doc["result"]
            self.watch_slot.observe(done.job.runners[0], done.outputs[0], done.invoke_ms)  # a real result
        capture = self.capture
        if capture is not None:  # references only: the capture thread encodes and writes
            for doc, done in pending:
                capture(doc, done.job.frames, done.job.sensors or [])

    def stats(self) -> dict[str, Any]:
        return pipeline_stats(self)

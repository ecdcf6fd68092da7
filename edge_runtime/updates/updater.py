"""Over-the-air model updates, on the device: model.update, model.chunk, model.list, model.rollback.

An update runs on its own thread, one per pipeline at a time, and reports each step as a reply
on ``reply/{id}`` and a ``model.progress`` event: download (size limit, timeout) -> sha256 ->
ed25519 signature -> load in a separate interpreter with the pipeline's delegate chain (after a
crash-isolated check in a child process) -> check against the serving model -> smoke invoke on
the latest real input -> swap between two inferences -> probation -> commit, or roll back by
itself with an event that says why. The store (:mod:`.store`) is crash-safe: a restart
during probation serves the last committed model. The updater talks to the daemon through an
:class:`~.host.UpdateHost` and to pipelines through their update hooks (:mod:`.host`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.config import Config
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.reporting.commands import Command, CommandError
from edge_runtime.runtime.model import Model
from edge_runtime.supervision import spawn
from edge_runtime.updates.checks import (
    check_compatible,
    isolated_check,
    neutral_inputs,
    smoke_invoke,
    verify_sha256,
)
from edge_runtime.updates.host import Runner, UpdatablePipeline, UpdateHost
from edge_runtime.updates.probation import Probation
from edge_runtime.updates.protocol import (
    CandidateLoadError,
    IncompatibleModelError,
    ProbationError,
    UpdateError,
    UpdateRequest,
)
from edge_runtime.updates.signing import verify
from edge_runtime.updates.store import ModelStore
from edge_runtime.updates.transfer import ChunkAssembler, download

log = logging.getLogger(__name__)


def store_config(config: Config, store: ModelStore, startup: bool) -> Config:
    """The config with each pipeline's first model taken from the store when it holds one
    (after a restart: the last committed model; a probation in progress is discarded)."""
    pipelines = []
    for p in config.pipelines:
        entry = store.startup(p.name) if startup else store.current(p.name)
        if entry is None:
            pipelines.append(p)
            continue
        original = p.models[0]
        name = original.name or Path(original.path.removeprefix("bundled:")).stem
        first = original.model_copy(update={"path": str(entry.path), "version": entry.version, "name": name})
        pipelines.append(p.model_copy(update={"models": [first, *p.models[1:]]}))
    return config.model_copy(update={"pipelines": pipelines})


class Updater:
    """The device side of fleet model updates."""

    def __init__(self, host: UpdateHost) -> None:
        self.host = host
        cfg = host.config.updates
        state = host.config.device.state_dir
        self.store = ModelStore(state / "models", keep=cfg.keep)
        self.chunks = ChunkAssembler(state / "downloads", max_bytes=cfg.max_bytes)
        self.chunks.cleanup(24 * 3600)  # partial transfers left by a crash
        self._busy: set[str] = set()
        self._complete: dict[str, Path] = {}
        self._lock = threading.Lock()

    @property
    def cfg(self) -> Any:
        return self.host.config.updates

    def _pipeline(self, name: str) -> UpdatablePipeline:
        return self.host.pipeline(name)

    # -- commands --------------------------------------------------------------------------------

    def chunk(self, cmd: Command) -> dict[str, Any]:
        try:
            data = base64.b64decode(cmd.args["data"], validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("'data' is not base64") from None
        try:
            done = self.chunks.add(cmd.args["transfer"], cmd.args["index"], cmd.args["total"], data)
        except UpdateError as exc:
            raise CommandError(str(exc)) from None
        if done is not None:
            with self._lock:
                self._complete[cmd.args["transfer"]] = done
        return {"transfer": cmd.args["transfer"], "index": cmd.args["index"], "complete": done is not None}

    def update(self, cmd: Command) -> None:
        try:
            request = UpdateRequest.from_payload({"id": cmd.id, **cmd.args})
        except UpdateError as exc:
            raise CommandError(str(exc)) from None
        self._pipeline(request.pipeline)
        with self._lock:
            if request.pipeline in self._busy:
                raise CommandError(f"an update of pipeline {request.pipeline!r} is already in progress")
            self._busy.add(request.pipeline)
        # "accepted" is published before the work starts: a step that fails at once (a size limit,
        # a refused download) cannot overtake it at the subscriber
        self._reply(
            cmd, {"ok": True, "step": "accepted", "pipeline": request.pipeline, "version": request.version}
        )
        spawn(f"update-{request.pipeline}", lambda: self._run(cmd, request), restart=False)

    def list(self, cmd: Command) -> dict[str, Any]:
        name = self._pipeline(cmd.args["pipeline"]).name
        return {
            "pipeline": name,
            "versions": self.store.versions(name),
            "history": self.store.history(name, 50),
        }

    def rollback(self, cmd: Command) -> dict[str, Any]:
        pipeline = self._pipeline(cmd.args["pipeline"])
        with self._lock:
            if pipeline.name in self._busy:
                raise CommandError(f"an update of pipeline {pipeline.name!r} is in progress")
            self._busy.add(pipeline.name)
        try:
            previous = self.store.previous(pipeline.name)
            if previous is None:
                raise CommandError(f"pipeline {pipeline.name!r} has no previous model to roll back to")
            runner = self._runner(pipeline, previous.path, previous.version)
            entry = self.store.rollback(pipeline.name, f"model.rollback {cmd.id}")
            pipeline.swap_model(runner)
            self._event(
                "model.rolled_back",
                f"pipeline {pipeline.name}: rolled back to {previous.version} on request",
                pipeline.name,
                sha256=previous.sha256,
            )
            return {
                "pipeline": pipeline.name,
                "sha256": entry.sha256 if entry else None,
                "version": entry.version if entry else None,
            }
        finally:
            with self._lock:
                self._busy.discard(pipeline.name)

    # -- the update itself ----------------------------------------------------------------------

    def _event(self, kind: str, message: str, pipeline: str, **fields: Any) -> None:
        self.host.event(kind, message, {"pipeline": pipeline, **fields})

    def _reply(self, cmd: Command, body: dict[str, Any]) -> None:
        self.host.reply(cmd, {"id": cmd.id, "command": cmd.name, **body})

    def _step(self, cmd: Command, request: UpdateRequest, step: str, **fields: Any) -> None:
        self._reply(cmd, {"ok": True, "step": step, **fields})
        self._event(
            "model.progress",
            f"pipeline {request.pipeline}: update {request.id}: {step}",
            request.pipeline,
            update_id=request.id,
            step=step,
        )

    def _runner(
        self, pipeline: UpdatablePipeline, path: Path, version: str, model: Model | None = None
    ) -> Runner:
        """The pipeline's first model on another file, with the same bindings and post-processing."""
        try:
            return pipeline.runner_for(path, version, model=model)
        except EdgeRuntimeError as exc:
            if model is not None:  # the model loaded: its bindings or outputs do not fit
                raise IncompatibleModelError(str(exc)) from exc
            raise CandidateLoadError(str(exc)) from exc

    def _run(self, cmd: Command, request: UpdateRequest) -> None:
        step = "download"
        try:
            self._update(cmd, request)
        except UpdateError as exc:
            step = exc.step or "update"
            self._refuse(cmd, request, step, str(exc), rolled_back=isinstance(exc, ProbationError))
        except EdgeRuntimeError as exc:
            self._refuse(cmd, request, step, str(exc), rolled_back=False)
        finally:
            with self._lock:
                self._busy.discard(request.pipeline)

    def _refuse(self, cmd: Command, request: UpdateRequest, step: str, error: str, rolled_back: bool) -> None:
        log.error("pipeline %s: update %s refused at %s: %s", request.pipeline, request.id, step, error)
        kind = "model.rolled_back" if rolled_back else "model.refused"
        self._event(
            kind,
            f"pipeline {request.pipeline}: update to {request.version} "
            f"{'rolled back' if rolled_back else 'refused'} at {step}: {error}",
            request.pipeline,
            update_id=request.id,
            step=step,
            error=error,
        )
        self._reply(
            cmd, {"ok": False, "step": step, "error": error, "rolled_back": rolled_back, "final": True}
        )

    def _update(self, cmd: Command, request: UpdateRequest) -> None:
        pipeline = self._pipeline(request.pipeline)
        staging = self.store.staging_dir(request.pipeline)
        dest = staging / f"{request.id}.tflite"
        try:
            if request.url is not None:
                download(
                    request.url,
                    dest,
                    max_bytes=self.cfg.max_bytes,
                    timeout_s=self.cfg.download_timeout_s,
                    expected_size=request.size,
                )
            else:
                assert request.transfer is not None
                self._assembled(request.transfer).replace(dest)
            if dest.stat().st_size != request.size:
                raise UpdateError(
                    f"download is {dest.stat().st_size} bytes, the request says {request.size}", step="size"
                )
            self._step(cmd, request, "download", bytes=request.size)
            verify_sha256(dest, request.sha256)
            self._step(cmd, request, "sha256")
            verify(self.cfg.public_keys, request.pipeline, request.version, request.sha256, request.signature)
            self._step(cmd, request, "signature", signed=bool(request.signature))
            if pipeline.serving().model.sha256 == request.sha256:  # verified, and already serving
                self._reply(
                    cmd,
                    {"ok": True, "step": "commit", "sha256": request.sha256, "version": request.version,
                     "already": True, "final": True},
                )  # fmt: skip
                return
            isolated_check(dest)
            old = pipeline.serving()
            try:
                candidate = pipeline.load_candidate(dest, request.version)
            except EdgeRuntimeError as exc:
                raise CandidateLoadError(f"candidate: {exc}") from exc
            if old.model.delegate and candidate.delegate != old.model.delegate:
                raise CandidateLoadError(
                    f"the serving model runs on {old.model.delegate}; "
                    f"the new one would be {candidate.placement}"
                )
            self._step(cmd, request, "load", delegate=candidate.delegate)
            check_compatible(candidate, old.model)
            self._runner(pipeline, dest, request.version, model=candidate)  # bindings and outputs fit
            self._step(cmd, request, "check")
            smoke_invoke(candidate, old.capture_inputs(timeout=5.0) or neutral_inputs(candidate))
            self._step(cmd, request, "smoke")
            # only a model that passed every check enters the store
            stored = self.store.add(
                request.pipeline, dest, request.sha256, request.version, {"update_id": request.id}, move=True
            )
        finally:
            dest.unlink(missing_ok=True)
        runner = self._runner(pipeline, stored, request.version, model=candidate)
        baseline = pipeline.invoke_p95()
        self.store.activate(request.pipeline, request.sha256, probation=True)
        watch = Probation(pipeline, baseline, runner.model.outputs)
        pipeline.watch(watch.observe)
        pipeline.swap_model(runner)
        self._step(cmd, request, "swap")
        verdict = self._probation(watch)
        pipeline.watch(None)
        if verdict:
            pipeline.swap_model(old)
            self.store.rollback(request.pipeline, verdict)
            raise ProbationError(verdict, step="probation")
        self._step(cmd, request, "probation", results=watch.count)
        entry = self.store.commit(request.pipeline)
        self._event(
            "model.committed",
            f"pipeline {request.pipeline}: now serving {entry.version} ({entry.sha256[:12]})",
            request.pipeline,
            update_id=request.id,
            sha256=entry.sha256,
            version=entry.version,
        )
        self._reply(
            cmd,
            {"ok": True, "step": "commit", "sha256": entry.sha256, "version": entry.version, "final": True},
        )

    def _assembled(self, transfer: str) -> Path:
        with self._lock:
            path = self._complete.pop(transfer, None)
        if path is None or not path.exists():
            raise UpdateError(
                f"transfer {transfer!r} is not complete (send every model.chunk first)", step="download"
            )
        return path

    def _probation(self, watch: Probation) -> str:
        deadline = time.monotonic() + self.cfg.probation_s
        while time.monotonic() < deadline and not self.host.stopping:
            verdict = watch.verdict(
                self.cfg.max_latency_factor, self.cfg.fail_on_constant, self.cfg.latency_floor_ms
            )
            if verdict:
                return verdict
            if watch.count >= self.cfg.probation_results:
                break
            time.sleep(0.05)
        return watch.verdict(
            self.cfg.max_latency_factor, self.cfg.fail_on_constant, self.cfg.latency_floor_ms
        )

"""Over-the-air model updates, on the device: model.update, model.chunk, model.list, model.rollback.

``model.update`` is checked in the command handler first, before anything is fetched: the request
(:class:`~.protocol.UpdateRequest`), the ed25519 signature over every field but the location
(:mod:`.signing`), and the version against the pipeline's anti-rollback floor (:mod:`.versions`).
A refusal there is the one reply. Then it runs on its own thread, one per pipeline at a time, and
reports each step as a reply on ``reply/{id}`` and a ``model.progress`` event: download (allowed
schemes and redirects, size limit, one wall-clock deadline) or chunked transfer -> sha256 -> load
in a separate interpreter with the pipeline's delegate chain (after a crash-isolated check in a
child process) -> check against the serving model -> smoke invoke on the latest real input ->
swap between two inferences, watched by a :class:`~.probation.Probation` tied to that pipeline
object -> probation (the required number of real results) -> commit and raise the floor, or roll
back by itself with an event that says why (a failed check, or the pipeline paused, stopped or
reloaded). The store (:mod:`.store`) is crash-safe: a restart during probation serves the last
committed model. The updater talks to the daemon through an :class:`~.host.UpdateHost` and to
pipelines through their update hooks (:mod:`.host`).
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
from edge_runtime.config.updates import UpdatesConfig
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
from edge_runtime.updates.guard import Guard, update_fields
from edge_runtime.updates.host import Runner, UpdatablePipeline, UpdateHost
from edge_runtime.updates.probation import Probation
from edge_runtime.updates.protocol import (
    CandidateLoadError,
    IncompatibleModelError,
    ProbationError,
    RollbackRequest,
    UpdateError,
    UpdateRequest,
)
from edge_runtime.updates.signing import verify
from edge_runtime.updates.store import Entry, ModelStore
from edge_runtime.updates.transfer import ChunkAssembler, DownloadPolicy, download
from edge_runtime.updates.versions import Floors

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
        self.floors = Floors(self.store.root)
        self.guard = Guard(self.store, self.floors)
        self.chunks = ChunkAssembler(
            state / "downloads",
            max_bytes=min(cfg.max_bytes, cfg.transfer_quota_bytes),
            quota_bytes=cfg.transfer_quota_bytes,
            max_transfers=cfg.max_transfers,
            expiry_s=cfg.transfer_expiry_s,
        )
        self.chunks.sweep()  # partial transfers left by a crash
        self.guard.seed([pc.name for pc in host.config.pipelines])
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._sweeper = spawn("update-sweeper", self._sweep, should_restart=lambda: not host.stopping)

    @property
    def cfg(self) -> UpdatesConfig:
        return self.host.config.updates

    def _pipeline(self, name: str) -> UpdatablePipeline:
        return self.host.pipeline(name)

    def _sweep(self) -> None:
        """Expired chunked transfers are removed while the daemon runs, not only at start."""
        while not self.host.stopping:
            time.sleep(max(0.5, min(self.chunks.expiry_s / 4, 30.0)))
            try:
                self.chunks.sweep()
            except (OSError, EdgeRuntimeError) as exc:
                log.error("sweeping expired transfers failed: %s", exc)

    # -- commands --------------------------------------------------------------------------------

    def chunk(self, cmd: Command) -> dict[str, Any]:
        try:
            data = base64.b64decode(cmd.args["data"], validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("'data' is not base64") from None
        try:
            done = self.chunks.add(cmd.args["transfer"], cmd.args["index"], cmd.args["total"], data)
        except UpdateError as exc:
            self.host.event(
                "model.chunk_refused",
                f"model.chunk {cmd.args['transfer']}: {exc}",
                {"transfer": cmd.args["transfer"], "error": str(exc)},
            )
            raise CommandError(str(exc)) from None
        return {"transfer": cmd.args["transfer"], "index": cmd.args["index"], "complete": done is not None}

    def update(self, cmd: Command) -> None:
        try:
            request = UpdateRequest.from_payload({"id": cmd.id, **cmd.args})
        except UpdateError as exc:
            raise CommandError(str(exc)) from None
        pipeline = self._pipeline(request.pipeline)
        try:  # everything that can be checked without the file, before anything is fetched
            signed = verify(self.cfg.public_keys, update_fields(request), request.signature)
            self.guard.check_update(request, pipeline)
        except UpdateError as exc:
            self._refuse(cmd, request, exc.step, str(exc), rolled_back=False)
            return
        with self._lock:
            if request.pipeline in self._busy:
                raise CommandError(f"an update of pipeline {request.pipeline!r} is already in progress")
            self._busy.add(request.pipeline)
        # "accepted" is published before the work starts: a step that fails at once (a size limit,
        # a refused download) cannot overtake it at the subscriber
        self._reply(
            cmd, {"ok": True, "step": "accepted", "pipeline": request.pipeline, "version": request.version}
        )
        self._step(cmd, request, "signature", signed=signed)
        spawn(f"update-{request.pipeline}", lambda: self._run(cmd, request), restart=False)

    def list(self, cmd: Command) -> dict[str, Any]:
        name = self._pipeline(cmd.args["pipeline"]).name
        return {
            "pipeline": name,
            "floor": self.floors.get(name),
            "versions": self.store.versions(name),
            "history": self.store.history(name, 50),
        }

    def rollback(self, cmd: Command) -> dict[str, Any]:
        try:
            request = RollbackRequest.from_payload({"id": cmd.id, **cmd.args})
        except UpdateError as exc:
            raise CommandError(str(exc)) from None
        pipeline = self._pipeline(request.pipeline)
        with self._lock:
            if pipeline.name in self._busy:
                raise CommandError(f"an update of pipeline {pipeline.name!r} is in progress")
            self._busy.add(pipeline.name)
        try:
            try:
                target = self.guard.rollback_target(request, pipeline, self.cfg.public_keys)
            except UpdateError as exc:
                self._event(
                    "model.refused",
                    f"pipeline {pipeline.name}: model.rollback {request.id} refused at {exc.step}: {exc}",
                    pipeline.name,
                    update_id=request.id,
                    step=exc.step,
                    error=str(exc),
                )
                raise CommandError(f"{exc.step}: {exc}") from None
            runner = self._runner(pipeline, target.path, target.version)
            while (now := self.store.current(pipeline.name)) is not None and now.sha256 != target.sha256:
                self.store.rollback(pipeline.name, f"model.rollback {cmd.id} to {target.version}")
            pipeline.swap_model(runner)
            self.guard.used_rollback(request)
            self._event(
                "model.rolled_back",
                f"pipeline {pipeline.name}: rolled back to {target.version} on request",
                pipeline.name,
                sha256=target.sha256,
            )
            return {"pipeline": pipeline.name, "sha256": target.sha256, "version": target.version}
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
        except ProbationError as exc:
            self._refuse(cmd, request, exc.step, str(exc), rolled_back=True, interrupted=exc.interrupted)
        except UpdateError as exc:
            step = exc.step or "update"
            self._refuse(cmd, request, step, str(exc), rolled_back=False)
        except EdgeRuntimeError as exc:
            self._refuse(cmd, request, step, str(exc), rolled_back=False)
        finally:
            with self._lock:
                self._busy.discard(request.pipeline)

    def _refuse(
        self, cmd: Command, request: UpdateRequest, step: str, error: str, rolled_back: bool, **extra: Any
    ) -> None:
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
            **extra,
        )
        self._reply(
            cmd,
            {"ok": False, "step": step, "error": error, "rolled_back": rolled_back, "final": True, **extra},
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
                    policy=DownloadPolicy(
                        allow_file=self.cfg.allow_file_urls, redirect_hosts=tuple(self.cfg.redirect_hosts)
                    ),
                )
            else:
                assert request.transfer is not None
                self.chunks.take(request.transfer, dest)
            if dest.stat().st_size != request.size:
                raise UpdateError(
                    f"download is {dest.stat().st_size} bytes, the request says {request.size}", step="size"
                )
            self._step(cmd, request, "download", bytes=request.size)
            verify_sha256(dest, request.sha256)
            self._step(cmd, request, "sha256")
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
                request.pipeline, dest, request.sha256, request.version, {"update_id": request.id},
                move=True, reference=request.reference,
            )  # fmt: skip
        finally:
            dest.unlink(missing_ok=True)
        runner = self._runner(pipeline, stored, request.version, model=candidate)
        baseline = pipeline.invoke_p95()
        self.store.activate(request.pipeline, request.sha256, probation=True)
        watch = Probation(pipeline, baseline, runner.model.outputs)
        try:
            old = pipeline.begin_watch(runner, watch)
        except EdgeRuntimeError as exc:
            self.store.rollback(request.pipeline, f"not swapped in: {exc}")
            raise UpdateError(f"{exc}; nothing was swapped, send the update again", step="swap") from exc
        self._step(cmd, request, "swap")
        verdict = self._probation(watch)
        entry = None
        if not verdict:
            entry = watch.commit(lambda: self._commit(request))
        pipeline.end_watch("", watch)
        if entry is None:
            interrupted = bool(watch.ended)
            reason = (
                f"probation interrupted: {watch.ended}; the previous model serves again "
                "(send the update again to retry)"
                if interrupted
                else verdict
            )
            pipeline.swap_model(old)
            self.store.rollback(request.pipeline, reason)
            raise ProbationError(reason, interrupted=interrupted)
        self._step(cmd, request, "probation", results=watch.count)
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

    def _commit(self, request: UpdateRequest) -> Entry:
        """The floor first (a crash in between leaves it high: refusing, never allowing), the
        permission spent, then the store's commit."""
        self.floors.raise_to(request.pipeline, request.version, request.sha256)
        self.guard.used_update(request)
        return self.store.commit(request.pipeline)

    def _probation(self, watch: Probation) -> str:
        """An empty string when the model produced the required real results without a fault; else why not.
        Returns early ("") when the pipeline stops serving it (``watch.ended``)."""
        cfg = self.cfg
        required = cfg.probation_results
        deadline = time.monotonic() + cfg.probation_s
        while True:
            verdict = watch.verdict(cfg.max_latency_factor, cfg.fail_on_constant, cfg.latency_floor_ms)
            if verdict:
                return verdict
            if watch.ended:
                return ""
            if self.host.stopping:
                watch.end("the daemon is stopping")
                return ""
            if watch.count >= required:
                return ""
            left = deadline - time.monotonic()
            if left <= 0:
                return (
                    f"only {watch.count} of the {required} results required (updates.probation_results) "
                    f"within {cfg.probation_s:g} s; a model that produces no results is not committed"
                )
            watch.wait(min(left, 0.2))

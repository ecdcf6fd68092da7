"""Probes and status: ``/healthz``, ``/readyz``, ``/api/status``, ``/api/health``, ``/api/pipelines``,
``/api/pipelines/{name}/results/latest``, ``/api/models``, ``/api/events`` (the recent ones)."""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_runtime.config import EveryTrigger
from edge_runtime.http.context import Context, error_response, json_response
from edge_runtime.http.predict import public_name
from edge_runtime.pipeline.stats import per_source


def readiness(ctx: Context) -> tuple[bool, dict[str, str]]:
    """Whether every pipeline made a result recently and its trigger source is up; the reason per
    pipeline that is not ready ("" when it is)."""
    now = time.monotonic()
    sources = ctx.host.http_sources()
    reasons: dict[str, str] = {}
    pipelines = ctx.host.http_pipelines()
    for p in pipelines:
        trigger = p.config.trigger
        limit = ctx.config.ready_max_age_s
        if isinstance(trigger, EveryTrigger):
            limit = max(limit, 3 * trigger.every_s)
        else:
            source = sources.get(trigger.source)
            if source is None or source.state != "up":
                reasons[p.name] = f"source {trigger.source} is {source.state if source else 'missing'}"
                continue
        last = ctx.hub.latest_mono.get(p.name)
        if p.paused:
            reasons[p.name] = "paused"
        elif last is None:
            reasons[p.name] = "no result yet"
        elif now - last > limit:
            reasons[p.name] = f"no result for {now - last:.1f} s"
        else:
            reasons[p.name] = ""
    ready = bool(pipelines) and not any(reasons.values())
    return ready, reasons


def pipeline_summary(ctx: Context, name: str) -> dict[str, Any] | None:
    for p in ctx.host.http_pipelines():
        if p.name != name:
            continue
        latest = ctx.hub.latest.get(name)
        latest_mono = ctx.hub.latest_mono.get(name)
        trigger = p.config.trigger
        return {
            "name": p.name,
            "trigger": {"every_s": trigger.every_s}
            if isinstance(trigger, EveryTrigger)
            else {"source": trigger.source, "sources": trigger.names, "batch": trigger.batch},
            "models": [r.model.name for r in p.runners],
            "paused": p.paused,
            "results": p.results,
            "errors": p.errors,
            "last_error": p.last_error,
            "fps_in": p.fps_in.rate(),
            "fps_out": p.fps_out.rate(),
            "sources": per_source(p),
            "latest_seq": None if latest is None else latest.get("seq"),
            "latest_age_s": None if latest_mono is None else round(time.monotonic() - latest_mono, 3),
        }
    return None


def model_entries(ctx: Context) -> list[dict[str, Any]]:
    entries = []
    for p in ctx.host.http_pipelines():
        versions = ctx.host.http_model_versions(p.name)
        for i, runner in enumerate(p.runners):
            model = runner.model
            entries.append(
                {
                    "pipeline": p.name,
                    "index": i,
                    "name": model.name,
                    "version": runner.config.version,
                    "sha256": model.sha256,
                    "delegate": model.delegate,
                    "placement": model.placement,
                    "fallbacks": [{"delegate": f.delegate, "cause": f.cause} for f in model.failures],
                    "backend": f"{model.backend.name} {model.backend.version}",
                    "inputs": [
                        {**s.to_dict(), "name": public_name(s), "tensor": s.name} for s in model.inputs
                    ],
                    "outputs": [
                        {**s.to_dict(), "name": public_name(s, output=True), "tensor": s.name}
                        for s in model.outputs
                    ],
                    "store_versions": versions if i == 0 else [],
                }
            )
    return entries


def routes(ctx: Context) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, reasons = readiness(ctx)
        health = ctx.host.http_status().get("health") or {}
        ready = ready and health.get("state") != "failing"  # results are being lost: not ready
        body = {"ready": ready, "pipelines": {k: v or "ready" for k, v in reasons.items()}, "health": health}
        return json_response(body, 200 if ready else 503)

    async def api_status(request: Request) -> Response:
        ready, _ = readiness(ctx)
        return json_response({**ctx.host.http_status(), "ready": ready, "http": ctx.hub.stats()})

    async def api_health(request: Request) -> Response:
        return json_response(await run_in_threadpool(ctx.host.http_health))

    async def api_pipelines(request: Request) -> Response:
        names = [p.name for p in ctx.host.http_pipelines()]
        return json_response({"pipelines": [pipeline_summary(ctx, n) for n in names]})

    async def latest(request: Request) -> Response:
        name = request.path_params["name"]
        if pipeline_summary(ctx, name) is None:
            return error_response(f"no pipeline {name[:64]!r}", 404)
        result = ctx.hub.latest.get(name)
        if result is None:
            return error_response(f"pipeline {name!r} has made no result yet", 404)
        return json_response(result)

    async def events(request: Request) -> Response:
        return json_response({"events": list(ctx.hub.events)})

    async def models(request: Request) -> Response:
        return json_response({"models": await run_in_threadpool(model_entries, ctx)})

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/api/status", api_status),
        Route("/api/health", api_health),
        Route("/api/pipelines", api_pipelines),
        Route("/api/pipelines/{name}/results/latest", latest),
        Route("/api/models", models),
        Route("/api/events", events),
    ]

"""The local HTTP API of a real daemon, through curl: probes, status, health, results (latest and
Server-Sent Events), snapshots and MJPEG, models, the OpenAPI document, tokens, TLS, a taken port."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from devkit.daemon import digits_config
from devkit.httpd import HttpDaemon, curl
from devkit.paths import MODELS, ROOT
from devkit.pki import TestPki
from devkit.processes import free_port, wait_until
from edge_runtime.http.openapi import openapi_document

TOKEN = "s3cret-token-0123456789abcdef"


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        kind = next((line[7:] for line in lines if line.startswith("event: ")), "")
        data = next((line[6:] for line in lines if line.startswith("data: ")), "")
        if kind and data:
            events.append((kind, json.loads(data)))
    return events


def test_status_results_media_and_models_through_curl(tmp_path: Path) -> None:
    import cv2

    config = digits_config(tmp_path, port=None)
    with HttpDaemon(config) as d:
        d.wait_results(5)
        base = d.base
        live = curl("-w", "\n%{http_code}", f"{base}/healthz")
        assert live.stdout.splitlines()[-1] == "200" and json.loads(live.stdout.splitlines()[0]) == {
            "status": "ok"
        }
        assert wait_until(lambda: d.get("/readyz")[0] == 200, 15), d.get("/readyz")
        ready = json.loads(curl(f"{base}/readyz").stdout)
        assert ready["ready"] is True and ready["pipelines"] == {"digits": "ready"}
        assert ready["health"]["state"] in (None, "ok", "degraded")  # the derived state: never failing here

        status = json.loads(curl(f"{base}/api/status").stdout)
        assert (
            status["device"] == "dev1" and status["pipelines"] == ["digits"] and status["state"] == "online"
        )
        health = json.loads(curl(f"{base}/api/health").stdout)
        assert health["device"] == "dev1" and health["pipelines"]["digits"]["results"] >= 5
        assert health["sources"]["camera"]["state"] == "up" and health["system"]["rss_bytes"] > 0

        first = json.loads(curl(f"{base}/api/pipelines/digits/results/latest").stdout)
        assert first["pipeline"] == "digits" and first["result"]["top"][0]["label"] in "0123456789"
        assert wait_until(lambda: d.json("/api/pipelines/digits/results/latest")["seq"] > first["seq"], 10)
        pipelines = json.loads(curl(f"{base}/api/pipelines").stdout)["pipelines"]
        assert (
            pipelines[0]["name"] == "digits"
            and pipelines[0]["fps_out"] > 0
            and pipelines[0]["latest_seq"] >= 1
        )
        missing = curl(
            "-w", "\n%{http_code}", f"{base}/api/pipelines/nope/results/latest"
        ).stdout.splitlines()
        assert missing[-1] == "404" and "nope" in json.loads(missing[0])["error"]

        models = json.loads(curl(f"{base}/api/models").stdout)["models"]
        sha = hashlib.sha256((MODELS / "digits_int8.tflite").read_bytes()).hexdigest()
        assert [(m["pipeline"], m["name"], m["version"], m["sha256"]) for m in models] == [
            ("digits", "digits_int8", "1", sha)
        ]
        assert models[0]["delegate"] == "cpu" and models[0]["placement"] == "running on cpu"
        assert models[0]["inputs"][0]["name"] == "image" and models[0]["inputs"][0]["dtype"] == "int8"

        jpeg = tmp_path / "snap.jpg"
        snap = curl(
            "-o", str(jpeg), "-w", "%{http_code} %{content_type}", f"{base}/api/sources/camera/snapshot.jpg"
        )
        assert snap.stdout == "200 image/jpeg"
        image = cv2.imread(str(jpeg))
        assert image is not None and image.shape == (128, 160, 3) and image.mean() > 5

        mjpeg = subprocess.run(
            ["curl", "-sS", "--max-time", "2.5", f"{base}/api/sources/camera/stream.mjpg"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        assert mjpeg.returncode == 28, mjpeg.stderr  # 28: stopped by --max-time, the stream never ends
        parts = mjpeg.stdout.split(b"--frame\r\n")[1:]
        assert len(parts) >= 3, len(parts)  # 5 fps at most for 2.5 s
        assert len(parts) <= 15
        frame = cv2.imdecode(np.frombuffer(parts[1].split(b"\r\n\r\n", 1)[1], np.uint8), cv2.IMREAD_COLOR)
        assert frame is not None and frame.shape == (128, 160, 3)

        sse = subprocess.run(
            ["curl", "-sSN", "--max-time", "2.5", f"{base}/api/results/stream?events=true"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        results = [m for kind, m in sse_events(sse.stdout) if kind == "result"]
        assert len(results) >= 10, sse.stdout[:500]
        seqs = [int(str(r["seq"])) for r in results]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        events = d.json("/api/events")["events"]
        assert any(e["kind"] == "source.up" and e["source"] == "camera" for e in events), events

        served = json.loads(curl(f"{base}/openapi.json").stdout)
        committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
        assert served == committed == openapi_document(), (
            "docs/openapi.json is stale: python -m edge_runtime.http.openapi > docs/openapi.json"
        )
        assert served["openapi"].startswith("3.") and "/v2/models/{name}/infer" in served["paths"]
        page = curl("-w", "\n%{http_code}", f"{base}/")
        assert page.stdout.endswith("\n200") and "<title>edge-runtime</title>" in page.stdout
        assert d.count() >= 5
        assert d.stop() == 0


def test_readiness_follows_the_source(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=None)
    text = config.read_text()
    gone = tmp_path / "missing.avi"
    config.write_text(text.replace(str(tmp_path / "digits.avi"), str(gone)))
    with HttpDaemon(config) as d:
        status, body = d.get("/readyz")
        assert status == 503
        reason = json.loads(body)["pipelines"]["digits"]
        assert reason.startswith("source camera is"), reason
        assert d.get("/v2/health/ready") == (503, b'{"ready":false}')
        assert d.get("/v2/health/live") == (200, b'{"live":true}')
        assert d.get("/healthz")[0] == 200  # alive, not ready
        assert d.stop() == 0


def test_a_token_guards_everything_but_the_probes_and_never_shows(tmp_path: Path) -> None:
    token_file = tmp_path / "http.token"
    token_file.write_text(TOKEN + "\n")
    config = digits_config(tmp_path, port=None, extra=f'\n[http]\ntoken_file = "{token_file}"\n')
    with HttpDaemon(config) as d:
        d.wait_results(3)
        base = d.base
        none = curl("-i", f"{base}/api/status").stdout
        head, _, body = none.partition("\n\n")  # text mode: CRLF read as LF
        assert head.startswith("HTTP/1.1 401") and 'www-authenticate: Bearer realm="edge-runtime"' in head
        assert json.loads(body) == {"error": "a bearer token is required"}
        wrong = curl(
            "-w", "%{http_code}", "-o", "/dev/null", "-H", "Authorization: Bearer nope", f"{base}/api/status"
        )
        assert wrong.stdout == "401"
        good = curl("-H", f"Authorization: Bearer {TOKEN}", f"{base}/api/status")
        assert json.loads(good.stdout)["device"] == "dev1"
        assert (
            curl("-w", "%{http_code}", "-o", "/dev/null", f"{base}/api/health?access_token={TOKEN}").stdout
            == "200"
        )
        for path in (
            "/v2/models/digits",
            "/v1/models/digits",
            "/api/results/stream",
            "/api/sources/camera/snapshot.jpg",
        ):
            assert d.get(path)[0] == 401, path
        assert d.get("/healthz")[0] == 200 and d.get("/readyz")[0] in (200, 503) and d.get("/")[0] == 200
        responses = [
            d.get(p, {"Authorization": f"Bearer {TOKEN}"})[1]
            for p in ("/api/status", "/api/health", "/api/models")
        ]
        assert d.stop() == 0
    assert TOKEN not in d.log() and all(TOKEN.encode() not in r for r in responses)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_off_loopback_needs_a_readable_token(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=None, extra='\n[http]\nhost = "0.0.0.0"\n')
    checked = run_cli("validate-config", str(config))
    assert checked.returncode == 1
    assert (
        "http.token_file: '': http.host '0.0.0.0' is not a loopback address: a token_file" in checked.stderr
    )
    ran = run_cli("run", "--config", str(config), "--duration", "5")
    assert ran.returncode == 1 and "token_file" in ran.stderr and "Traceback" not in ran.stderr

    missing = tmp_path / "absent.token"
    config.write_text(config.read_text() + f'token_file = "{missing}"\n')
    for command in (["validate-config", str(config)], ["run", "--config", str(config), "--duration", "5"]):
        refused = run_cli(*command)
        assert refused.returncode == 1, refused.stderr
        assert f"http.token_file: {str(missing)!r}: cannot read: No such file" in refused.stderr, (
            refused.stderr
        )
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    config.write_text(config.read_text().replace(str(missing), str(short)))
    refused = run_cli("validate-config", str(config))
    assert refused.returncode == 1 and "the token must be at least 16 characters" in refused.stderr
    half = tmp_path / "half.toml"
    half.write_text(config.read_text() + 'tls = { cert = "server.crt" }\n')
    checked = run_cli("validate-config", str(half))
    assert checked.returncode == 1 and "http.tls needs both cert and key" in checked.stderr


def test_https_with_the_configured_certificate(tmp_path: Path) -> None:
    pki = TestPki(tmp_path / "pki")
    tls = f'\n[http]\ntls = {{ cert = "{pki.server_cert}", key = "{pki.server_key}" }}\n'
    config = digits_config(tmp_path, port=None, extra=tls)
    with HttpDaemon(config, wait=False) as d:
        url = f"https://127.0.0.1:{d.port}/healthz"
        assert wait_until(lambda: curl("--cacert", str(pki.ca_cert), url).stdout == '{"status":"ok"}', 20), (
            d.log()
        )
        plain = curl("--cacert", str(pki.other_ca_cert), url)
        assert plain.returncode == 60  # curl: the peer certificate cannot be verified by that CA
        assert d.stop() == 0


def test_a_taken_port_is_reported_and_the_pipelines_go_on(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        config = digits_config(tmp_path, port=None)
        with HttpDaemon(config, wait=False, port=port) as d:
            assert wait_until(lambda: "running without the HTTP API" in d.log(), 20), d.log()
            before = d.count()
            d.wait_results(before + 10)
            assert "Address already in use" in d.log()
            assert d.stop() == 0

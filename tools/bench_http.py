"""Benchmark of the local HTTP API (docs/http.md has the figures).

    .venv/bin/python tools/bench_http.py [--seconds S] [--repeat N] [--only startup,load,predict] [--json]

startup   the daemon (the embedded demo, MQTT off) with ``http.enabled`` true and false, alternated
          ``--repeat`` times: seconds from process start to the first result on stdout, and RSS
          (VmRSS) after 3 s; the medians and their differences are what the server adds.
load      the digits pipeline on a looping 160x128 video read as fast as it goes (saturated), side by
          side in one daemon: fps with no client, with 20 clients polling (each GETs
          /api/pipelines/digits/results/latest every 100 ms), with 5 Server-Sent-Events clients
          reading every result, and with both.
predict   requests/s and latency p50/p99 of one client sending one instance per request, sequential:
          ``digits`` over /v1 (JSON) and /v2 (JSON and binary tensors), ``mobilenet_v2_int8``
          (models/mobilenet_v2_int8.tflite, 224x224x3) over /v2 binary; each with
          ``predict.interpreter = "pipeline"`` and ``"own"``, and the pipeline's fps meanwhile.

frameworks  the measurement behind the choice of Starlette + uvicorn (docs/http.md): in a fresh
          process that has numpy and pydantic loaded, the RSS and seconds that importing a framework,
          starting it on a socket and answering one request add, for Starlette + uvicorn, FastAPI +
          uvicorn and Flask + waitress (``pip install fastapi flask waitress`` first; a framework
          that is not installed is reported as such).

The CPU is named in the output (``lscpu``); quote ratios from one run, the machine may be shared.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "edge_runtime" / "models"
MOBILENET = ROOT / "models" / "mobilenet_v2_int8.tflite"


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?"
    )
    flags = Path("/proc/cpuinfo").read_text(errors="replace")
    return f"{name}, {os.cpu_count()} cores{', avx512_vnni' if 'avx512_vnni' in flags else ''}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Daemon:
    def __init__(self, config: Path | None, *sets: str, quiet: bool = True) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "edge_runtime", "run"]
        if config is not None:
            args += ["--config", str(config)]
        for s in (*sets, f"http.port={self.port}"):
            args += ["--set", s]
        if quiet:
            args.append("--quiet")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def first_result_s(self) -> float:
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        return time.monotonic() - self.started

    def wait_http(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the daemon's HTTP API did not become ready")

    def results(self, pipeline: str = "digits") -> int:
        pipelines = json.loads(get(self.port, "/api/pipelines")[1])["pipelines"]
        return int(next(p["results"] for p in pipelines if p["name"] == pipeline))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


@contextmanager
def daemon(config: Path | None, *sets: str, quiet: bool = True) -> Iterator[Daemon]:
    d = Daemon(config, *sets, quiet=quiet)
    try:
        yield d
    finally:
        d.stop()


def bench_startup(workdir: Path, repeat: int) -> dict[str, Any]:
    rows: dict[str, list[tuple[float, int]]] = {"on": [], "off": []}
    for _ in range(repeat):
        for mode in ("on", "off"):
            sets = (
                f"device.state_dir={workdir / 'state'}",
                "mqtt.enabled=false",
                f"http.enabled={mode == 'on'}",
            )
            with daemon(None, *sets, quiet=False) as d:
                first = d.first_result_s()
                time.sleep(max(0.0, 3.0 - (time.monotonic() - d.started)))
                rows[mode].append((first, rss_bytes(d.proc.pid)))
    med = {
        m: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for m, v in rows.items()
    }
    return {
        "first_result_s": {"http on": round(med["on"][0], 3), "http off": round(med["off"][0], 3)},
        "rss_mb": {"http on": round(med["on"][1] / 1e6, 1), "http off": round(med["off"][1] / 1e6, 1)},
        "added": {
            "start_s": round(med["on"][0] - med["off"][0], 3),
            "rss_mb": round((med["on"][1] - med["off"][1]) / 1e6, 1),
        },
        "runs": repeat,
    }


def digits_config(workdir: Path, realtime: bool, model: Path | None = None) -> Path:
    sys.path.insert(0, str(ROOT))
    from edge_runtime.demo import write_digits_video

    video = workdir / "digits.avi"
    if not video.exists():
        with np.load(MODELS / "digits_heldout.npz") as data:
            write_digits_video(video, list(data["images"][:120]), fps=10.0)
    extra = ""
    if model is not None:
        extra = f"""
[[pipelines]]
name = "mobilenet"
trigger = "camera"
[[pipelines.models]]
path = "{model}"
threads = 1
postprocess = {{ type = "classification", top_k = 1 }}
[[pipelines.models.inputs]]
kind = "image"
source = "camera"
resize = "stretch"
color = "rgb"
mean = 127.5
std = 127.5
"""
    path = workdir / f"bench-{realtime}-{model is not None}.toml"
    path.write_text(
        f"""
[device]
state_dir = "{workdir / "state"}"
[mqtt]
enabled = false
[sources.camera]
type = "camera"
uri = "{video}"
realtime = {str(realtime).lower()}
loop = true
[[pipelines]]
name = "digits"
trigger = "camera"
[[pipelines.models]]
path = "{MODELS / "digits_int8.tflite"}"
version = "1"
threads = 1
inputs = [{{ kind = "image", source = "camera", resize = "crop", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", labels = "{MODELS / "digits_labels.txt"}", top_k = 3 }}
{extra}"""
    )
    return path


def fps(d: Daemon, seconds: float, pipeline: str = "digits") -> float:
    start, t0 = d.results(pipeline), time.monotonic()
    time.sleep(seconds)
    return (d.results(pipeline) - start) / (time.monotonic() - t0)


def run_clients(
    port: int, pollers: int, streams: int, stop: threading.Event
) -> tuple[list[threading.Thread], list[int]]:
    counts = [0] * (pollers + streams)

    def poll(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            get(port, "/api/pipelines/digits/results/latest", conn)
            counts[i] += 1
            stop.wait(0.1)
        conn.close()

    def stream(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /api/results/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            while not stop.is_set():
                data = sock.recv(65536)
                if not data:
                    break
                counts[i] += data.count(b"event: result")

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(pollers)]
    threads += [threading.Thread(target=stream, args=(pollers + i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    return threads, counts


def bench_load(workdir: Path, seconds: float) -> dict[str, Any]:
    rows: dict[str, dict[str, float | None]] = {}
    with daemon(digits_config(workdir, realtime=False)) as d:
        d.wait_http()
        time.sleep(2)
        for name, pollers, streams in (
            ("no client", 0, 0),
            ("20 polling", 20, 0),
            ("5 streams", 0, 5),
            ("20 polling + 5 streams", 20, 5),
            ("no client (again)", 0, 0),
        ):
            stop = threading.Event()
            threads, counts = run_clients(d.port, pollers, streams, stop)
            time.sleep(1.0)
            before = list(counts)
            rate = fps(d, seconds)
            done = [c - b for c, b in zip(counts, before, strict=True)]
            stop.set()
            for t in threads:
                t.join(5)
            rows[name] = {
                "fps": round(rate, 1),
                "polls_per_s": round(sum(done[:pollers]) / seconds, 1),
                "streamed_per_s": round(sum(done[pollers:]) / seconds, 1),
            }
    base = rows["no client"]["fps"]
    for row in rows.values():
        value = row["fps"]
        row["x no client"] = round(value / base, 3) if base and value is not None else None
    return rows


def _timed(call: Callable[[], None], seconds: float) -> dict[str, Any]:
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1000)
    lat = np.array(latencies)
    return {
        "req_per_s": round(len(lat) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


class NoDelayConnection(http.client.HTTPConnection):
    """http.client sends headers and body in two writes: without TCP_NODELAY, Nagle's algorithm and
    the server's delayed ACK add 40 ms to every request (curl and tritonclient set it too)."""

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Poster:
    """One keep-alive connection posting predict requests."""

    def __init__(self, port: int) -> None:
        self.conn = NoDelayConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.conn.request("POST", path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):  # the server closed an idle keep-alive
            self.conn.close()
            self.conn.request("POST", path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")


def binary_request(name: str, array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request with Triton's binary tensor extension, binary outputs."""
    tensor: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": array.nbytes}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return head + array.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def _predict_rows(d: Daemon, seconds: float) -> dict[str, Any]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        digit = (data["images"][0].astype(np.float32) / 255.0)[..., None]
    client = Poster(d.port)
    v1 = json.dumps({"instances": [digit.tolist()]}).encode()
    tensor = {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": digit.ravel().tolist()}
    v2 = json.dumps({"inputs": [tensor]}).encode()
    b2, h2 = binary_request("image", digit[None])
    for _ in range(50):
        client.post("/v2/models/digits/infer", b2, h2)  # warm-up
    names = ["digits", "mobilenet"] if MOBILENET.exists() else ["digits"]
    rows: dict[str, Any] = {"pipeline fps, no predict": {p: round(fps(d, 3, p), 1) for p in names}}
    rows["digits v1 JSON"] = _timed(lambda: client.post("/v1/models/digits:predict", v1), seconds)
    rows["digits v2 JSON"] = _timed(lambda: client.post("/v2/models/digits/infer", v2), seconds)
    before, t0 = d.results("digits"), time.monotonic()
    row = _timed(lambda: client.post("/v2/models/digits/infer", b2, h2), seconds)
    row["digits pipeline fps meanwhile"] = round((d.results("digits") - before) / (time.monotonic() - t0), 1)
    rows["digits v2 binary"] = row
    if MOBILENET.exists():
        image = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
        bm, hm = binary_request("input_1", image)
        for _ in range(5):
            client.post("/v2/models/mobilenet_v2_int8/infer", bm, hm)
        before, t0 = d.results("mobilenet"), time.monotonic()
        row = _timed(lambda: client.post("/v2/models/mobilenet_v2_int8/infer", bm, hm), seconds)
        row["mobilenet pipeline fps meanwhile"] = round(
            (d.results("mobilenet") - before) / (time.monotonic() - t0), 1
        )
        rows["mobilenet_v2_int8 v2 binary"] = row
    client.conn.close()
    return rows


def bench_predict(workdir: Path, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for interpreter in ("pipeline", "own"):
        config = digits_config(workdir, realtime=True, model=MOBILENET if MOBILENET.exists() else None)
        with daemon(config, f'http.predict.interpreter="{interpreter}"') as d:
            d.wait_http()
            out[f"interpreter={interpreter}"] = _predict_rows(d, seconds)
    return out


FRAMEWORK_CHILD = r"""
import http.client, json, socket, sys, threading, time
import numpy, pydantic  # the daemon has these already

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024

kind = sys.argv[1]
r0, t0 = rss(), time.perf_counter()
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(64)
port = sock.getsockname()[1]
if kind in ("starlette", "fastapi"):
    import asyncio, uvicorn
    if kind == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        async def hz(request):
            return JSONResponse({"ok": True})
        app = Starlette(routes=[Route("/healthz", hz)])
    else:
        from fastapi import FastAPI
        app = FastAPI()
        @app.get("/healthz")
        async def hz():
            return {"ok": True}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
else:
    import waitress
    from flask import Flask
    app = Flask("bench")
    @app.get("/healthz")
    def hz():
        return {"ok": True}
    threading.Thread(target=waitress.create_server(app, sockets=[sock], threads=4).run, daemon=True).start()
while True:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        break
    except OSError:
        time.sleep(0.005)
print(json.dumps({"start_s": round(time.perf_counter() - t0, 3), "rss_mb": round((rss() - r0) / 1e6, 1)}))
"""


def bench_frameworks(repeat: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for kind, modules in (
        ("starlette", "starlette uvicorn"),
        ("fastapi", "fastapi uvicorn"),
        ("flask", "flask waitress"),
    ):
        missing = [m for m in modules.split() if subprocess.run(
            [sys.executable, "-c", f"import {m}"], capture_output=True, check=False).returncode]  # fmt: skip
        if missing:
            rows[kind] = f"not installed: pip install {' '.join(missing)}"
            continue
        runs = []
        for _ in range(repeat):
            out = subprocess.run(
                [sys.executable, "-c", FRAMEWORK_CHILD, kind], capture_output=True, text=True, check=True
            ).stdout
            runs.append(json.loads(out))
        rows[kind] = {
            "start_s": [r["start_s"] for r in runs],
            "rss_mb_added": statistics.median(r["rss_mb"] for r in runs),
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds a measurement (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="start-up runs per mode (default 3)")
    parser.add_argument("--only", default="startup,load,predict", help="which benchmarks (also: frameworks)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args()
    report: dict[str, Any] = {"cpu": cpu_name(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        wanted = args.only.split(",")
        if "frameworks" in wanted:
            report["frameworks"] = bench_frameworks(args.repeat)
        if "startup" in wanted:
            report["startup"] = bench_startup(workdir, args.repeat)
        if "load" in wanted:
            report["load"] = bench_load(workdir, args.seconds)
        if "predict" in wanted:
            report["predict"] = bench_predict(workdir, args.seconds)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

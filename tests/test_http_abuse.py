"""Bad input to the HTTP API of a real daemon: malformed requests get a 4xx naming the problem
(never a 500), slow clients are cut off in bounded count and time, a stream client that does not
read is dropped, and the pipeline's results keep flowing throughout."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from devkit.daemon import digits_config, digits_video
from devkit.httpd import HttpDaemon
from devkit.processes import wait_until
from edge_runtime.http.hub import Hub, Message

pytestmark = pytest.mark.slow

LIMITS = """
[http]
header_timeout_s = 1.0
body_timeout_s = 1.5
max_connections = 16
max_body_bytes = 65536
max_stream_clients = 2
stream_queue = 8
"""
V2 = "/v2/models/digits/infer"
V1 = "/v1/models/digits:predict"


def tensor(**fields: Any) -> bytes:
    base = {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.5] * 64}
    return json.dumps({"inputs": [{**base, **fields}]}).encode()


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read the answer until the server closes or the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 20:
                    head = b"".join(chunks).split(b"\r\n\r\n", 1)[0]
                    length = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
                    body = b"".join(chunks).split(b"\r\n\r\n", 1)[1]
                    if length and len(body) >= int(length[0].split(b":")[1]):
                        break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


MALFORMED: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("POST", V1, b"{", {}, 400, "malformed JSON"),
    ("POST", V1, b"[]", {}, 400, "JSON object"),
    ("POST", V1, b'"x"', {}, 400, "JSON object"),
    ("POST", V1, b"", {}, 400, "empty request body"),
    ("POST", V1, b"\xff\xfe\x00", {}, 400, "not UTF-8"),
    ("POST", V1, b'{"instances": "abc"}', {}, 400, "non-empty list"),
    ("POST", V1, b'{"instances": []}', {}, 400, "non-empty list"),
    ("POST", V1, b'{"instances": [[1, 2], [3]]}', {}, 400, "input 'image'"),
    ("POST", V1, b'{"instances": [null]}', {}, 400, "input 'image': expects numbers"),
    ("POST", V1, b'{"instances": [true]}', {}, 400, "input 'image': expects numbers, got booleans"),
    ("POST", V1, b'{"instances": [{"nope": 1}]}', {}, 400, "missing inputs ['image']"),
    ("POST", V1, b'{"instances": [[1, 2]]}', {}, 400, "input 'image': expects shape [8, 8, 1], got [2]"),
    ("POST", V1, b'{"inputs": NaN}', {}, 400, "input 'image'"),
    ("POST", V1, b'{"inputs": [[[[1e999]]]]}', {}, 400, "input 'image'"),
    ("POST", V1, b'{"instances": [1], "extra": 1}', {}, 400, "unknown fields ['extra']"),
    ("POST", V1, b"[" * 30000 + b"]" * 30000, {}, 400, "nested too deeply"),
    ("POST", V1, json.dumps({"instances": [[[[0.1]] * 8] * 8] * 33}).encode(), {}, 413, "at most 32"),
    ("POST", V1, b"x" * 70000, {}, 413, "over the limit of 65536"),
    ("GET", V1, b"", {}, 405, "Method Not Allowed"),
    ("POST", "/v1/models/nope:predict", b"{}", {}, 404, "no model 'nope'"),
    ("POST", "/v1/models/digits/versions/abc:predict", b"{}", {}, 404, "version 'abc' is not served"),
    ("POST", "/v1/models/..%2F..%2Fetc%2Fpasswd:predict", b"{}", {}, 404, "no such path"),
    ("GET", "/api/sources/..%2F..%2Fetc%2Fpasswd/snapshot.jpg", b"", {}, 404, "no such path"),
    ("GET", "/../../etc/passwd", b"", {}, 404, "no such path"),
    ("GET", "/api/sources/%2e%2e/snapshot.jpg", b"", {}, 404, "no camera source '..'"),
    ("GET", "/api/pipelines/%00/results/latest", b"", {}, 404, "no pipeline"),
    ("GET", "/api/sources/nope/stream.mjpg", b"", {}, 404, "no camera source 'nope'"),
    ("GET", "/api/results/stream?pipeline=nope", b"", {}, 404, "no pipeline 'nope'"),
    ("GET", "/v2/models/nope", b"", {}, 404, "no model 'nope'"),
    ("POST", V2, tensor(data=[1, 2]), {}, 400, "2 values for shape [1, 8, 8, 1]"),
    ("POST", V2, tensor(datatype="BYTES"), {}, 400, "datatype 'BYTES' is not supported"),
    ("POST", V2, tensor(shape=[-1, 8, 8, 1]), {}, 400, "sizes must be non-negative integers"),
    ("POST", V2, tensor(shape=[1 << 30]), {}, 400, "sizes must be non-negative integers"),
    ("POST", V2, tensor(shape="8x8"), {}, 400, "'shape' must be a list"),
    ("POST", V2, tensor(data=["a"] * 64), {}, 400, "'data' does not hold FP32 values"),
    ("POST", V2, tensor(name="../etc"), {}, 400, "has no input '../etc'"),
    ("POST", V2, tensor(data=None, parameters={"binary_data_size": 256}), {}, 400, "does not fit"),
    ("POST", V2, b'{"inputs": {"image": 1}}', {}, 400, "non-empty 'inputs' list"),
    ("POST", V2, b'{"inputs": [7]}', {}, 400, "must be an object"),
    ("POST", V2, tensor(), {"Inference-Header-Content-Length": "999999"}, 400, "does not fit the body"),
    ("POST", V2, tensor(), {"Content-Encoding": "gzip"}, 415, "Content-Encoding is not supported"),
    (
        "POST",
        V2,
        json.dumps({**json.loads(tensor()), "outputs": [{"name": "x"}]}).encode(),
        {},
        400,
        "no output 'x'",
    ),
]


def test_malformed_requests_get_4xx_and_results_keep_flowing(tmp_path: Path) -> None:
    assert len(MALFORMED) >= 30
    config = digits_config(tmp_path, port=None, extra=LIMITS)
    with HttpDaemon(config) as d:
        d.wait_results(3)
        before = d.count()
        for method, path, body, headers, expected, message in MALFORMED:
            status, answer_headers, answer = d.request(method, path, body or None, headers)
            assert status == expected, (method, path, status, answer[:300])
            assert answer_headers["content-type"] == "application/json", (path, answer_headers)
            assert message in json.loads(answer)["error"], (path, answer[:300])
        # below HTTP: a declared body over the limit, a broken header, headers too large, a slow body
        declared = raw(
            d.port, b"POST " + V1.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{"
        )
        assert status_of(declared) == 413 and b"over the limit" in declared
        assert status_of(raw(d.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")) == 400
        assert (
            status_of(raw(d.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"))
            == 431
        )
        started = time.monotonic()
        slow = raw(
            d.port, b"POST " + V1.encode() + b' HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"in'
        )
        assert status_of(slow) == 408 and b"within 1.5 s" in slow
        assert time.monotonic() - started < 6
        d.wait_results(before + 20)  # the pipeline went on all along
        assert d.get("/healthz")[0] == 200 and d.get("/readyz")[0] == 200
        log = d.log()
        assert "Traceback" not in log and "internal error" not in log
        assert d.stop() == 0


def test_slow_clients_are_bounded_in_count_and_time(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=None, extra=LIMITS)
    with HttpDaemon(config) as d:
        d.wait_results(3)
        before = d.count()
        sockets = []
        for _ in range(30):  # twice max_connections, each sending a header line now and then
            sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        started = time.monotonic()
        closed_at: dict[int, float] = {}
        while len(closed_at) < len(sockets) and time.monotonic() - started < 8:
            for i, sock in enumerate(sockets):
                if i in closed_at:
                    continue
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                    sock.settimeout(0.01)
                    if sock.recv(1024) == b"":
                        closed_at[i] = time.monotonic() - started
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - started
            time.sleep(0.2)
        for sock in sockets:
            sock.close()
        assert len(closed_at) == len(sockets), f"{len(sockets) - len(closed_at)} slow clients still open"
        assert max(closed_at.values()) < 4.0, sorted(closed_at.values())  # header_timeout_s = 1
        over_cap = sorted(closed_at.values())[:14]
        assert over_cap[-1] < 1.0, over_cap  # beyond max_connections: closed at once
        assert d.get("/api/status")[0] == 200
        d.wait_results(before + 20)
        assert d.stop() == 0


def test_a_stream_client_that_does_not_read_is_dropped(tmp_path: Path) -> None:
    video = tmp_path / "digits.avi"
    digits_video(video, count=60, fps=20.0)
    config = digits_config(tmp_path, port=None, extra=LIMITS)
    config.write_text(config.read_text().replace("realtime = true", "realtime = false"))  # as fast as it goes
    with HttpDaemon(config, "--quiet") as d:
        views = []
        for _ in range(2):  # two live views take both stream places...
            view = socket.create_connection(("127.0.0.1", d.port))
            view.sendall(b"GET /api/sources/camera/stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            views.append(view)
        assert wait_until(lambda: d.json("/api/status")["http"]["stream_clients"] == 2, 10)
        third = d.request("GET", "/api/results/stream")  # ...so a third stream is refused
        assert third[0] == 503 and b"too many stream clients (at most 2)" in third[2]
        for view in views:
            view.close()
        assert wait_until(lambda: d.json("/api/status")["http"]["stream_clients"] == 0, 10)
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", d.port))
        stuck.sendall(b"GET /api/results/stream HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        results = d.json("/api/pipelines")["pipelines"][0]["results"]
        assert wait_until(lambda: d.json("/api/status")["http"]["dropped_clients"] >= 1, 60), d.json(
            "/api/status"
        )
        assert wait_until(lambda: d.json("/api/status")["http"]["stream_clients"] == 0, 20)
        assert wait_until(lambda: d.json("/api/pipelines")["pipelines"][0]["results"] > results + 100, 20)
        assert "fell 8 messages behind and was dropped" in d.log()
        stuck.close()
        assert d.stop() == 0


def test_the_hub_never_blocks_or_grows_for_a_client_that_does_not_drain() -> None:
    hub = Hub(max_clients=2, queue_limit=16)
    loop = asyncio.new_event_loop()
    try:
        stalled = hub.subscribe(loop, frozenset({"result"}))
        reader = hub.subscribe(loop, frozenset({"result", "event"}))
        assert hub.acquire_stream() and hub.acquire_stream()  # two places...
        assert not hub.acquire_stream()  # ...and no third
        got: list[Message] = []
        seq = 0
        for _ in range(100):  # the reader drains after every 10; the stalled client never does
            for _ in range(10):
                seq += 1
                hub.publish("result", {"pipeline": "p", "seq": seq})
                assert len(stalled._items) <= 16  # never more than its limit
            got += loop.run_until_complete(reader.next_batch(1.0))
        hub.publish("event", {"kind": "source.up"})
        got += loop.run_until_complete(reader.next_batch(1.0))
        assert stalled.dropped and len(stalled._items) == 0  # dropped, its memory freed
        assert not reader.dropped and [m.data["seq"] for m in got[:-1]] == list(range(1, 1001))
        assert got[0].sse() == b'event: result\ndata: {"pipeline":"p","seq":1}\n\n'
        assert got[-1].kind == "event" and list(hub.events) == [{"kind": "source.up"}]
        assert hub.latest["p"]["seq"] == 1000
        hub.unsubscribe(stalled)
        assert hub.stats()["dropped_clients"] == 1
        assert loop.run_until_complete(stalled.next_batch(0.05)) == []  # nothing more for it
    finally:
        loop.close()

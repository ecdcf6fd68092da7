"""A real daemon with its HTTP API on a free loopback port, and small clients for tests."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devkit.daemon import Daemon
from devkit.processes import free_port, require_tool


class HttpDaemon(Daemon):
    """``edge-runtime run`` with ``http.port`` set to a free port; waits until ``/healthz`` answers."""

    def __init__(self, config: Path, *args: str, wait: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(config, "--set", f"http.port={self.port}", *args)
        self.base = f"http://127.0.0.1:{self.port}"
        if wait:
            self.wait_http()

    def __enter__(self) -> HttpDaemon:
        return self

    def wait_http(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"no answer on {self.base}/healthz within {timeout} s:\n{self.log()[-3000:]}")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path, headers=headers)
        return status, body

    def json(self, path: str, body: Any = None, expect: int = 200) -> Any:
        data = None if body is None else json.dumps(body).encode()
        status, _, raw = self.request("GET" if body is None else "POST", path, data)
        assert status == expect, f"{path}: HTTP {status}: {raw[:500]!r}"
        return json.loads(raw)

    def wait_results(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < count:
            assert time.monotonic() < deadline, f"only {self.count()} results:\n{self.log()[-3000:]}"
            assert self.proc.poll() is None, f"the daemon exited:\n{self.log()[-3000:]}"
            time.sleep(0.05)


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The real curl, with its exit code and output."""
    exe = require_tool("curl", "curl")
    return subprocess.run([exe, "-sS", *args], capture_output=True, text=True, timeout=timeout, check=False)


def urlopen_json(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())

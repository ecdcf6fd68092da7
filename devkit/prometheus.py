"""A real Prometheus server for tests: Debian's ``/usr/bin/prometheus`` (2.42 on bookworm) on a free
loopback port, scraping given targets every second and evaluating rule files every second.

:class:`Prometheus` writes a temporary config (one job per entry of ``jobs``, ``scrape_interval`` and
``evaluation_interval`` 1 s, ``rule_files``), keeps its TSDB in its own directory, waits on
``/-/ready`` and is killed at :meth:`stop`. Its HTTP API is wrapped by :meth:`query`,
:meth:`alerts` and :meth:`targets`. The ``make_prometheus`` fixture (tests/conftest.py) builds on
it. A missing binary fails the test with the command that installs it.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from devkit.processes import free_port, require_tool, stop_process, wait_until

__all__ = ["Prometheus", "PrometheusQueryError"]


class PrometheusQueryError(RuntimeError):
    """The server refused a query (bad PromQL) or answered something other than success."""


class Prometheus:
    """``prometheus`` on ``127.0.0.1`` and a free port; its config, data and log in ``directory/name``.

    ``jobs`` maps a job name to its targets (``host:port`` strings, scraped at ``/metrics``).
    A context manager: starts on enter, stops on exit.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        jobs: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[Path] = (),
        name: str = "prometheus",
        interval_s: float = 1.0,
    ) -> None:
        self.binary = require_tool("prometheus", "prometheus")
        self.dir = directory / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jobs = {job: list(targets) for job, targets in jobs.items()}
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.interval_s = interval_s
        self.port = 0
        self.config_path = self.dir / "prometheus.yml"
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        """The configuration written for the server (JSON is YAML)."""
        interval = f"{int(self.interval_s * 1000)}ms"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.jobs.items()
            ],
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until ``/-/ready`` answers 200 (fails the test otherwise)."""
        if self.proc is not None:
            raise RuntimeError("prometheus is already running")
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        proc = self.proc
        if not wait_until(lambda: self._ready() or proc.poll() is not None, timeout, interval=0.1):
            self.stop()
            pytest.fail(f"prometheus was not ready within {timeout} s: {self.log_text()[-3000:]}")
        if proc.poll() is not None:
            self.proc = None
            pytest.fail(f"prometheus exited with {proc.returncode}: {self.log_text()[-3000:]}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- the HTTP API -------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of ``GET /api/v1/{path}?params``; raises :class:`PrometheusQueryError`."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PrometheusQueryError(f"{path} {params}: HTTP {exc.code}: {detail}") from exc
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one unlabelled series) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        """The label sets of the series ``match`` selects (``/api/v1/series``)."""
        found: list[dict[str, str]] = self.api("series", **{"match[]": match})
        return found

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, pending and firing (``/api/v1/alerts``)."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        found: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return found

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

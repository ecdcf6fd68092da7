"""The metrics endpoint under attack (issue 11, part 6), on the real daemon process: idle
connection floods and slowloris clients are bounded in number and in time while scrapes are still
answered and results keep flowing; scrapes are served from a snapshot; malformed requests are
refused. And the figures the README names exist in health and in the metrics, with one name."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import ROOT
from devkit.processes import free_port, wait_until

MAX_CONNECTIONS = 8
TIMEOUT_S = 1.5
REFRESH_S = 1.0


def metrics_section(port: int) -> str:
    return (
        f"\n[metrics]\nenabled = true\nport = {port}\nmax_connections = {MAX_CONNECTIONS}\n"
        f"timeout_s = {TIMEOUT_S}\nrefresh_s = {REFRESH_S}\n"
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    """A daemon (no broker needed: results on stdout) with its metrics endpoint on a free port."""
    port = free_port()
    config = digits_config(tmp_path, port=None)
    config.write_text(config.read_text() + metrics_section(port))
    with Daemon(config) as daemon:
        assert wait_until(lambda: daemon.count() >= 3, 60), daemon.log()[-3000:]
        assert wait_until(lambda: _answers(port), 20), daemon.log()[-3000:]
        yield daemon, port
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]


def _answers(port: int) -> bool:
    try:
        scrape(port, timeout=2)
    except OSError:
        return False
    return True


def scrape(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


def server_connections(pid: int, port: int) -> int:
    """TCP connections to ``port`` that the process ``pid`` holds (accepted, not listening)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A" and fields[9] in inodes:  # 0A: LISTEN
                count += 1
    return count


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, (name, text[:2000])
    return float(match.group(1))


def assert_results_flow(daemon: Daemon, what: str) -> None:
    before = daemon.count()
    assert wait_until(lambda: daemon.count() >= before + 5, 20), f"results stopped during {what}"


# ------------------------------------------------------------------------------- idle flood


def test_200_idle_connections_are_bounded_in_count_and_time(served: tuple[Daemon, int]) -> None:
    daemon, port = served
    pid = daemon.proc.pid
    threads_before = len(os.listdir(f"/proc/{pid}/task"))
    held: list[socket.socket] = []
    try:
        for _ in range(200):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.3)
        assert server_connections(pid, port) <= MAX_CONNECTIONS
        # a scrape is answered in the middle of the flood, and results keep flowing
        assert "edge_runtime_pipeline_results_total" in scrape(port)
        assert_results_flow(daemon, "the idle flood")
        assert len(os.listdir(f"/proc/{pid}/task")) <= threads_before, "a thread per connection"
        # every idle connection is closed by the daemon: evicted at once, or at its deadline
        deadline = time.monotonic() + TIMEOUT_S + 3.0
        for sock in held:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):  # evicted: aborted
                assert sock.recv(1) == b"", "an idle connection got data"
        assert time.monotonic() <= deadline + 0.5, "idle connections outlived the deadline"
        assert wait_until(lambda: server_connections(pid, port) == 0, 5)
    finally:
        for sock in held:
            sock.close()
    assert "edge_runtime_uptime_seconds" in scrape(port)


# -------------------------------------------------------------------------------- slowloris


def _slowloris(port: int, closed_after: list[float], stop: threading.Event) -> None:
    """Send a request head one byte every 0.2 s, for ever; record when the server hung up."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            while not stop.is_set():
                sock.sendall(b"X")
                time.sleep(0.2)
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
        except OSError:
            pass
    closed_after.append(time.monotonic() - started)


def test_slowloris_clients_are_cut_off_at_the_deadline(served: tuple[Daemon, int]) -> None:
    daemon, port = served
    closed_after: list[float] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_slowloris, args=(port, closed_after, stop)) for _ in range(6)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        for _ in range(5):  # scrapes are answered while the slow clients trickle
            assert "edge_runtime_build_info" in scrape(port)
        assert_results_flow(daemon, "the slowloris attack")
        for client in clients:
            client.join(TIMEOUT_S + 5)
        assert len(closed_after) == len(clients), "a slow client was never cut off"
        assert max(closed_after) < TIMEOUT_S + 1.5, closed_after
    finally:
        stop.set()
        for client in clients:
            client.join(5)
    assert server_connections(daemon.proc.pid, port) == 0


# ------------------------------------------------------------------------ malformed requests


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"garbage\r\n\r\n", b"400"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"405"),
        (b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", b"200"),
        (b"HEAD /metrics HTTP/1.0\r\n\r\n", b"200"),
    ],
)
def test_malformed_requests_get_a_status_and_a_closed_connection(
    served: tuple[Daemon, int], request_bytes: bytes, status: bytes
) -> None:
    daemon, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    if request_bytes.startswith(b"HEAD"):
        assert answer.endswith(b"\r\n\r\n"), "HEAD has no body"
    assert_results_flow(daemon, "malformed requests")


# --------------------------------------------------------------------------------- snapshots


def test_scrapes_are_served_from_the_snapshot_the_health_timer_refreshes(served: tuple[Daemon, int]) -> None:
    _daemon, port = served
    same = 0
    for _ in range(50):  # a burst of scrapes: the ones that share a snapshot show the same figures
        first, second = scrape(port), scrape(port)
        a1, a2 = (sample(t, "edge_runtime_metrics_snapshot_age_seconds") for t in (first, second))
        r1, r2 = (
            sample(t, 'edge_runtime_pipeline_results_total{pipeline="digits"}') for t in (first, second)
        )
        if a2 >= a1:  # no refresh in between
            assert r1 == r2, "a scrape built its own report"
            same += 1
    assert same >= 25
    text = scrape(port)
    assert sample(text, "edge_runtime_metrics_snapshot_age_seconds") < REFRESH_S + 2.0
    results = sample(text, 'edge_runtime_pipeline_results_total{pipeline="digits"}')
    assert wait_until(
        lambda: sample(scrape(port), 'edge_runtime_pipeline_results_total{pipeline="digits"}') > results,
        REFRESH_S + 5,
    ), "the health timer does not refresh the snapshot"


# ---------------------------------------------------------------- documented figures exist

FIGURES_HEADING = "Health and metrics figures"


def documented_figures() -> list[tuple[str, str]]:
    """(health path, metric) rows of the README's figures table."""
    text = (ROOT / "README.md").read_text()
    start = text.index(FIGURES_HEADING)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] not in ("", "health", "---"):
            rows.append((cells[0], cells[1]))
    assert len(rows) >= 20, rows
    return rows


def _lookup(doc: dict[str, object], path: str) -> object:
    value: object = doc
    for part in path.split("."):
        assert isinstance(value, dict) and part in value, (path, part)
        value = value[part]
    return value


def test_every_figure_the_readme_names_exists_in_health_and_metrics(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Each row of the README's figures table: the health key exists in a real daemon's health
    report, and the metric in its /metrics; ``mqtt.reconnects`` counts a broker restart in both."""
    port = free_port()
    config = digits_config(tmp_path, port=broker.port)
    serial = '\n[sources.imu]\ntype = "serial"\nport = "loop://"\nformat = "kv"\n'
    config.write_text(
        config.read_text().replace("[[pipelines]]", serial + "\n[[pipelines]]", 1) + metrics_section(port)
    )
    with Subscriber(broker.host, broker.port, ["edge/dev1/health"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: len(ms) >= 1, 30), daemon.log()[-3000:]
        broker.restart()
        assert wait_until(
            lambda: any((m.json().get("mqtt") or {}).get("reconnects") == 1 for m in sub.messages()), 30
        ), [m.json().get("mqtt") for m in sub.messages()][-3:]
        assert wait_until(lambda: "edge_runtime_mqtt_reconnects_total 1.0" in scrape(port), 10)
        doc = next(m.json() for m in reversed(sub.messages()) if m.json()["mqtt"]["reconnects"] == 1)
        text = scrape(port)
        assert daemon.stop() == 0
    for health_path, metric in documented_figures():
        if health_path != "-":
            concrete = health_path.replace("{pipeline}", "digits").replace("{source}", "camera")
            concrete = concrete.replace("{serial}", "imu").replace("{stage}", "invoke").replace("{q}", "p95")
            _lookup(doc, concrete)
        if metric != "-":
            assert re.search(rf"^{re.escape(metric)}[{{ ]", text, re.MULTILINE), (metric, health_path)

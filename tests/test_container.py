"""The OCI image, built and run for real (marker ``container``; CI runs it as its own stage).

``tools/image.sh build --arch amd64`` makes the image from a debootstrap root (cached under
/var/cache/edge-runtime) and ``podman run --network host`` runs it against a mosquitto on the host.
Checked: results reach a real subscriber, the image's HEALTHCHECK (``/healthz`` of the HTTP API)
turns healthy, PID 1 (tini) reaps an orphan, the fleet tool runs, and SIGTERM (``podman stop``)
stops the daemon within the stop timeout with ``offline`` published. Needs root (debootstrap,
rootful podman); a missing tool fails with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.broker import Mosquitto
from devkit.processes import free_port, wait_until

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parent.parent
IMAGE_SH = REPO / "tools" / "image.sh"
IMAGE = "localhost/edge-runtime:latest-amd64"
STOP_TIMEOUT_S = 15  # as TimeoutStopSec in devices/edge-runtime.service and the DaemonSet's grace


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman`` with this machine's settings (through ``tools/image.sh podman``)."""
    proc = subprocess.run(
        [str(IMAGE_SH), "podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    """The amd64 image, built by the documented command (cold: the root, then every layer)."""
    if os.geteuid() != 0:
        pytest.fail("the container test needs root (debootstrap, rootful podman): run it as root")
    if shutil.which("apt-get") is None and shutil.which("podman") is None:
        pytest.fail("podman not found: install it with: apt-get install -y podman buildah runc debootstrap")
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(IMAGE_SH), "build", "--arch", "amd64"], capture_output=True, text=True, timeout=2400, check=False
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, f"tools/image.sh build failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    print(f"\nimage built in {took:.0f} s: {proc.stdout.strip()}")
    return IMAGE


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"edge-runtime-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--volumes", name, check=False)


def test_image_labels_and_fleet_tool(image: str) -> None:
    labels = podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout
    assert '"org.opencontainers.image.version":"0.1.0"' in labels.replace(" ", "")
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == "10001:10001"
    fleet = podman("run", "--rm", "--network", "none", "--entrypoint", "edge-fleet", image, "--help")
    assert "Operate a fleet of edge-runtime devices" in fleet.stdout
    # arguments after the image replace its CMD and go to `edge-runtime run` (the entry point)
    run_help = podman("run", "--rm", "--network", "none", image, "--help")
    assert "usage: edge-runtime run" in run_help.stdout


def _daemon_host_pid(name: str) -> int:
    """The host pid of the daemon: the one child of the container's PID 1 (tini)."""
    init = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert len(children) == 1, f"tini should have one child, has {children}"
    return int(children[0])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def test_image_runs_against_a_host_broker(image: str, tmp_path: Path, container_name: str) -> None:
    device = f"ctr-{uuid.uuid4().hex[:6]}"
    http_port = free_port()
    with (
        Mosquitto(tmp_path) as broker,
        broker.subscriber([f"edge/{device}/pipelines/+/results", f"edge/{device}/status"]) as sub,
    ):
        t0 = time.monotonic()
        podman(
            "run", "--detach", "--network", "host", "--name", container_name,
            "--stop-timeout", str(STOP_TIMEOUT_S),
            "--env", f"EDGE_RUNTIME__DEVICE__ID={device}",
            "--env", "EDGE_RUNTIME__MQTT__HOST=127.0.0.1",
            "--env", f"EDGE_RUNTIME__MQTT__PORT={broker.port}",
            "--env", f"EDGE_RUNTIME__HTTP__PORT={http_port}",
            image,
        )  # fmt: skip
        results_topic = f"edge/{device}/pipelines/+/results"

        def results_or_exit() -> bool:
            if len(sub.messages(results_topic)) >= 20:
                return True
            running = podman("inspect", "--format", "{{.State.Running}}", container_name).stdout.strip()
            return running != "true"

        wait_until(results_or_exit, timeout=120, interval=0.5)
        running = podman("inspect", "--format", "{{.State.Running}}", container_name).stdout.strip()
        assert running == "true", f"the container exited:\n{podman('logs', container_name).stderr[-3000:]}"
        results = sub.expect(results_topic, count=20, timeout=1)
        first = results[0].monotonic - t0
        payload = results[0].json()
        assert payload["device"] == device and payload["pipeline"] in {"digits", "machine"}
        assert {r.json()["pipeline"] for r in results} == {"digits", "machine"}

        # The image's HEALTHCHECK (GET /healthz inside the container) turns healthy.
        def healthy() -> bool:
            return podman("healthcheck", "run", container_name, check=False).returncode == 0

        assert wait_until(healthy, timeout=60, interval=1), podman("logs", container_name).stderr[-3000:]
        status = podman("inspect", "--format", "{{.State.Health.Status}}", container_name).stdout.strip()
        assert status == "healthy"

        # PID 1 is tini, and it reaps an orphan: `sleep` outlives its shell and is reparented to
        # PID 1; once it exits, no zombie may remain.
        cmdline = podman("exec", container_name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert cmdline[:2] == ["/usr/bin/tini", "--"]
        podman("exec", container_name, "/bin/sh", "-c", "sleep 1 & exit 0")
        time.sleep(3)
        states = podman(
            "exec", container_name, "/bin/sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null | cut -d' ' -f2,3"
        ).stdout
        assert " Z" not in states, f"zombies in the container: {states}"

        rss = _rss_mb(_daemon_host_pid(container_name))
        print(f"\ncontainer: first result {first:.1f} s after podman run; daemon RSS {rss:.0f} MB")

        t_stop = time.monotonic()
        podman("stop", "--time", str(STOP_TIMEOUT_S), container_name, timeout=STOP_TIMEOUT_S + 30)
        stopped_in = time.monotonic() - t_stop
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name).stdout.strip()
        assert exit_code == "0", podman("logs", container_name).stderr[-3000:]
        assert stopped_in < STOP_TIMEOUT_S, (
            f"podman stop took {stopped_in:.1f} s (SIGKILL at {STOP_TIMEOUT_S} s)"
        )
        status_topic = f"edge/{device}/status"

        def offline() -> bool:
            return any(m.json()["state"] == "offline" for m in sub.messages(status_topic))

        assert wait_until(offline, timeout=10), sub.payloads(status_topic)
        states_seen = [m.json()["state"] for m in sub.messages(status_topic)]
        assert states_seen[0] == "online" and states_seen[-1] == "offline", states_seen
        print(f"SIGTERM to exit: {stopped_in:.1f} s; status: {states_seen}")

"""devices/compose.yaml with podman-compose: it parses, and one command starts daemon and broker.

Marker ``container`` (CI's container stage): needs root, podman and the images
(``tools/image.sh build`` for edge-runtime, ``tools/image.sh mosquitto`` for the broker, since
docker.io cannot be reached here). A subscriber on the host receives the daemon's results from the
compose file's mosquitto.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.mqtt_client import Subscriber
from devkit.processes import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parent.parent
IMAGE_SH = REPO / "tools" / "image.sh"
COMPOSE_FILE = REPO / "devices" / "compose.yaml"
MOSQUITTO_IMAGE = "localhost/edge-runtime-mosquitto:bookworm"


def podman_compose() -> str:
    found = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(found).exists():
        pytest.fail("podman-compose not found: install it with: pip install podman-compose (the test extra)")
    return found


def build(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the compose test needs root (debootstrap, rootful podman): run it as root")
    proc = subprocess.run([str(IMAGE_SH), *args], capture_output=True, text=True, timeout=2400, check=False)
    what = f"tools/image.sh {' '.join(args)}"
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"


@pytest.fixture
def project() -> Iterator[tuple[str, dict[str, str]]]:
    """A compose project name and the environment podman-compose runs with; `down -v` afterwards."""
    build("build", "--arch", "amd64")
    build("mosquitto")
    name = f"edge-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(REPO / "tools" / "podman-containers.conf"),
        "MOSQUITTO_IMAGE": MOSQUITTO_IMAGE,
        "MQTT_PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "DEVICE_ID": name,
    }
    yield name, env
    subprocess.run(
        [podman_compose(), "-p", name, "-f", str(COMPOSE_FILE), "down", "-v", "-t", "15"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def compose(project: tuple[str, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    name, env = project
    return subprocess.run(
        [podman_compose(), "-p", name, "-f", str(COMPOSE_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_compose_starts_daemon_and_broker(project: tuple[str, dict[str, str]]) -> None:
    name, env = project
    config = compose(project, "config")
    assert config.returncode == 0, config.stderr
    assert f"EDGE_RUNTIME__MQTT__PORT: '{env['MQTT_PORT']}'" in config.stdout or (
        f"EDGE_RUNTIME__MQTT__PORT: {env['MQTT_PORT']}" in config.stdout
    ), config.stdout

    up = compose(project, "up", "-d")
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
    # the broker is the compose file's mosquitto, on the host's network
    topic = f"edge/{name}/pipelines/+/results"
    with Subscriber("127.0.0.1", int(env["MQTT_PORT"]), topic, timeout=60) as sub:
        results = sub.expect(topic, count=10, timeout=120)
        assert {r.json()["device"] for r in results} == {name}
    ps = compose(project, "ps")
    assert ps.stdout.count(name) >= 2, ps.stdout

    down = compose(project, "down", "-t", "15")
    assert down.returncode == 0, down.stderr

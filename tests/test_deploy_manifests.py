"""The deployment files agree with the image and with Kubernetes' schemas (offline).

devices/Containerfile, devices/compose.yaml and devices/k8s/*.yaml name the same entry point,
arguments, ports, paths, user and volume; every Kubernetes manifest validates against the
Kubernetes schemas shipped in ``kubernetes-validate``; the configs and environment overrides they
carry pass the daemon's own config validation.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from edge_runtime.config.load import env_overrides, load_config
from edge_runtime.errors import ConfigError
from edge_runtime.updates.signing import parse_public_key

REPO = Path(__file__).resolve().parent.parent
DEVICES = REPO / "devices"
K8S = DEVICES / "k8s"
K8S_VERSIONS = ["1.25.0", "1.30.0"]  # the oldest and a current Kubernetes (k3s and KubeEdge track them)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def containerfile() -> dict[str, list[str]]:
    """The runtime stage's instructions (the last FROM on), continuation lines joined."""
    text = (DEVICES / "Containerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    out: dict[str, list[str]] = {}
    for line in lines[last_from:]:
        word, _, rest = line.partition(" ")
        out.setdefault(word, []).append(rest.strip())
    return out


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), value
    return parsed


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {K8S}")


def daemon_container() -> dict[str, Any]:
    ds = find("DaemonSet", "edge-runtime")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEVICES / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def compose_default(value: str) -> str:
    """``${NAME:-default}`` as compose expands it with NAME unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


# -- Kubernetes schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_offline(version: str) -> None:
    docs = manifests()
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds == ["ConfigMap", "DaemonSet", "DaemonSet", "Namespace", "Secret"]
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_the_validator_catches_a_broken_manifest() -> None:
    ds = find("DaemonSet", "edge-runtime")
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)
    ds = find("DaemonSet", "edge-runtime")
    ds["spec"]["template"]["spec"]["nodeSelectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


# -- the image and the manifests agree ----------------------------------------------------------


def test_containerfile_essentials() -> None:
    cf = containerfile()
    entry = exec_form(cf["ENTRYPOINT"][-1])
    assert entry == ["/usr/bin/tini", "--", "/opt/venv/bin/edge-runtime", "run"]
    assert exec_form(cf["VOLUME"][-1]) == ["/var/lib/edge-runtime"]
    assert cf["USER"] == ["10001:10001"]
    assert cf["EXPOSE"] == ["8478/tcp"]
    assert cf["STOPSIGNAL"] == ["SIGTERM"]
    health = cf["HEALTHCHECK"][-1]
    assert health.split(" CMD ")[1] == '["/usr/local/bin/edge-runtime-healthcheck", "/healthz"]'
    labels = " ".join(cf["LABEL"])
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'io.edge-runtime.http-port="8478"' in labels
    # the builder's CA bundle and pip stay in the builder
    assert "host-ca-bundle" not in " ".join(" ".join(v) for v in cf.values())


def test_daemonset_agrees_with_the_image() -> None:
    cf = containerfile()
    container = daemon_container()
    pod = find("DaemonSet", "edge-runtime")["spec"]["template"]["spec"]
    cmd = exec_form(cf["CMD"][-1])
    assert "command" not in container, "the DaemonSet must keep the image's entry point (tini)"
    assert container["args"] == cmd
    assert container["image"] == f"localhost/edge-runtime:{VERSION}"
    config_path = cmd[cmd.index("--config") + 1]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"]["mountPath"] == config_path
    assert mounts["config"]["subPath"] == Path(config_path).name
    assert mounts["state"]["mountPath"] == exec_form(cf["VOLUME"][-1])[0]
    port = int(cf["EXPOSE"][0].split("/")[0])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGE_RUNTIME__HTTP__PORT"]["value"] == str(port)
    health_cmd = exec_form(cf["HEALTHCHECK"][-1].split(" CMD ")[1])
    assert container["livenessProbe"]["exec"]["command"] == health_cmd
    assert container["startupProbe"]["exec"]["command"] == health_cmd
    assert container["readinessProbe"]["exec"]["command"] == [health_cmd[0], "/readyz"]
    uid, gid = (int(x) for x in cf["USER"][0].split(":"))
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["terminationGracePeriodSeconds"] == 15
    # the state survives the pod: a hostPath (or a PVC), never an emptyDir
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "hostPath" in volumes["state"] or "persistentVolumeClaim" in volumes["state"]
    # the secrets mounted where the ConfigMap's config looks for them
    config = tomllib.loads(find("ConfigMap", "edge-runtime-config")["data"]["config.toml"])
    secret_dir = mounts["secrets"]["mountPath"]
    items = {i["path"] for i in volumes["secrets"]["secret"]["items"]}
    for named in (config["mqtt"]["password_file"], config["mqtt"]["tls"]["ca"]):
        assert Path(named).parent == Path(secret_dir) and Path(named).name in items
    secret = find("Secret", "edge-runtime-secrets")
    assert items | {"update-public-keys"} == set(secret["stringData"])
    # devices: a camera and an accelerator through the device plugin's resources
    plugin = find("DaemonSet", "generic-device-plugin")["spec"]["template"]["spec"]
    plugin_args = plugin["containers"][0]["args"]
    advertised = {yaml.safe_load(a)["name"] for a in plugin_args if a != "--device"}
    wanted = {k.split("/")[1] for k in container["resources"]["limits"] if k.startswith("squat.ai/")}
    assert wanted == {"video", "coral"} and wanted <= advertised


def test_the_configmap_config_and_the_daemonset_env_pass_the_daemons_validation(tmp_path: Path) -> None:
    config_toml = tmp_path / "config.toml"
    config_toml.write_text(find("ConfigMap", "edge-runtime-config")["data"]["config.toml"])
    container = daemon_container()
    secret = find("Secret", "edge-runtime-secrets")["stringData"]
    environ: dict[str, str] = {}
    for e in container["env"]:
        if "value" in e:
            environ[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            environ[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            environ[e["name"]] = "node-1"  # spec.nodeName
    config = load_config(config_toml, environ=environ)
    assert config.device.id == "node-1"
    assert len(config.updates.public_keys) == 1
    assert str(config.device.state_dir) == "/var/lib/edge-runtime"
    parse_public_key(config.updates.public_keys[0])  # a real ed25519 key, as the updater reads it
    with pytest.raises(ConfigError, match=r"updates\.public_keys"):
        load_config(config_toml, environ={**environ, "EDGE_RUNTIME__UPDATES__PUBLIC_KEYS": "not-a-list"})


def test_compose_agrees_with_the_image_and_its_env_is_valid() -> None:
    cf = containerfile()
    data = compose()
    assert set(data["services"]) == {"edge-runtime", "mosquitto"}
    daemon = data["services"]["edge-runtime"]
    assert compose_default(daemon["image"]) == "localhost/edge-runtime:latest"
    assert "entrypoint" not in daemon and "command" not in daemon
    assert daemon["depends_on"] == ["mosquitto"]
    assert daemon["stop_grace_period"] == "15s"
    volume = exec_form(cf["VOLUME"][-1])[0]
    assert f"state:{volume}" in daemon["volumes"]
    assert "state" in data["volumes"]
    environ = {k: compose_default(v) for k, v in daemon["environment"].items()}
    assert {name for name, _ in env_overrides(environ)} == set(environ)
    config = load_config(DEVICES / "container" / "config.toml", environ=environ)
    mosquitto_cmd = [compose_default(c) for c in data["services"]["mosquitto"]["command"]]
    assert config.mqtt.port == int(mosquitto_cmd[mosquitto_cmd.index("-p") + 1])
    assert config.mqtt.host == "127.0.0.1"
    assert daemon["network_mode"] == data["services"]["mosquitto"]["network_mode"] == "host"


def test_compose_writes_out_the_board_devices() -> None:
    text = (DEVICES / "compose.yaml").read_text()
    for node in ("/dev/video0", "/dev/ttyUSB0", "/dev/bus/usb", "/dev/apex_0"):
        assert re.search(rf"^\s*#\s+- {re.escape(node)}:{re.escape(node)}$", text, re.M), node
        # each device line has a comment line above it saying what it is
        line = next(i for i, ln in enumerate(text.splitlines()) if f"- {node}:" in ln)
        assert text.splitlines()[line - 1].strip().startswith("#   #"), node


def test_container_config_is_the_demo_with_container_settings() -> None:
    config = load_config(DEVICES / "container" / "config.toml", environ={})
    demo = load_config(REPO / "edge_runtime" / "demo.toml", environ={})
    assert [p.name for p in config.pipelines] == [p.name for p in demo.pipelines]
    assert str(config.device.state_dir) == exec_form(containerfile()["VOLUME"][-1])[0]


def test_readme_documents_the_image_commands() -> None:
    readme = (REPO / "README.md").read_text()
    for command in ("tools/image.sh build", "tools/image.sh run", "tools/image.sh build --arch arm64"):
        assert command in readme, command
    docs = (REPO / "docs" / "containers.md").read_text()
    assert "EDGE_RUNTIME__MQTT__HOST" in docs and "KubeEdge" in docs and "k3s" in docs
    # every command line shown for image.sh names a subcommand the script has
    script = (REPO / "tools" / "image.sh").read_text()
    for line in re.findall(r"tools/image\.sh (\w+)", readme + docs):
        assert re.search(rf"^  {line}\)", script, re.M), line

"""The board profiles, the systemd unit and install.sh in ``devices/``.

- The unit passes ``systemd-analyze verify`` without a single diagnostic. The unit names
  /opt/edge-runtime/venv/bin/edge-runtime, which does not exist on a test machine, and verify
  rejects an ExecStart binary it cannot find; so the test first checks that this is the ONLY
  thing verify says about the unit as shipped, then verifies a throwaway copy whose ExecStart runs
  this interpreter (``python -m edge_runtime``) and requires empty output. A copy with a typo
  shows that the check does see problems (verify exits 0 on unknown keys; only its output tells).
- Every profile validates with ``python -m edge_runtime validate-config``, names only ``bundled:``
  and absolute paths, and carries its board's delegate chain, which reaches a config both through
  ``--profile NAME`` and through ``include = ["NAME"]``.
- install.sh runs into a tmp_path prefix (one install, reinstall, uninstall cycle, about a minute
  for the venv): it installs what it should, a second run changes no path, mode, hash or mtime,
  ``--uninstall`` keeps the config and the state, and the host's /etc, /opt and /var/lib are
  untouched.

The systemd tools and shellcheck are required, never skipped: ``apt-get install -y systemd
shellcheck``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.config import load_config
from edge_runtime.runtime.delegates import ArmnnConfig, CpuConfig, EdgeTpuConfig, VxConfig

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ROOT / "devices"
UNIT = DEVICES / "edge-runtime.service"
INSTALL = DEVICES / "install.sh"
EXEC_START = "/opt/edge-runtime/venv/bin/edge-runtime"

# name -> (delegate chain, threads): the contract of each profile.
PROFILES: dict[str, tuple[list[object], int | None]] = {
    "rpi5": ([CpuConfig()], 4),
    "rpi4-coral-usb": ([EdgeTpuConfig(device="usb"), CpuConfig()], 4),
    "coral-devboard": ([EdgeTpuConfig(device="pci"), CpuConfig()], 4),
    "imx8mp": ([VxConfig(library="/usr/lib/libvx_delegate.so"), CpuConfig()], 4),
    "rk3588": ([CpuConfig()], 4),
    "x86-64": ([CpuConfig()], None),
}

# Host paths install.sh writes when it runs without --prefix.
HOST_PATHS = [
    Path("/etc/systemd/system/edge-runtime.service"),
    Path("/etc/sysusers.d/edge-runtime.conf"),
    Path("/opt/edge-runtime"),
    Path("/etc/edge-runtime"),
    Path("/var/lib/edge-runtime"),
    Path("/etc/passwd"),
    Path("/etc/group"),
]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed by this test: apt-get install -y {package}")
    return path


# -- the systemd unit ------------------------------------------------------------------------------


def _verify(unit: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [_tool("systemd-analyze", "systemd"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _runnable_copy(folder: Path, text: str | None = None) -> Path:
    """The unit with ExecStart running this interpreter: a binary that exists here."""
    text = UNIT.read_text() if text is None else text
    line = f"ExecStart={EXEC_START} "
    assert text.count(line) == 1, "the unit has exactly one ExecStart of the installed binary"
    copy = folder / "edge-runtime.service"
    copy.write_text(text.replace(line, f"ExecStart={sys.executable} -m edge_runtime "))
    return copy


def test_unit_as_shipped_only_lacks_the_installed_binary() -> None:
    code, output = _verify(UNIT)
    if Path(EXEC_START).exists():  # a machine with edge-runtime really installed
        assert (code, output) == (0, "")
        return
    assert code != 0
    assert output.splitlines() == [
        f"edge-runtime.service: Command {EXEC_START} is not executable: No such file or directory"
    ]


def test_unit_verifies_clean(tmp_path: Path) -> None:
    code, output = _verify(_runnable_copy(tmp_path))
    assert (code, output) == (0, "")


def test_verify_output_catches_mistakes(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("LockPersonality=yes", "LockPersonalty=yes")
    _, output = _verify(_runnable_copy(tmp_path, text))
    assert "Unknown key" in output and "LockPersonalty" in output


def _unit_settings() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_settings() -> None:
    units = _unit_settings()
    unit, service = units["Unit"], units["Service"]
    assert unit["StartLimitIntervalSec"] and unit["StartLimitBurst"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "TimeoutStopSec": "15",
        "ExecStart": f"{EXEC_START} run --config /etc/edge-runtime/config.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "edge-runtime",
        "Group": "edge-runtime",
        "SupplementaryGroups": "video dialout plugdev",
        "StateDirectory": "edge-runtime",
        "StateDirectoryMode": "0700",
        "ConfigurationDirectory": "edge-runtime",
        "Environment": "PYTHONUNBUFFERED=1",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "DevicePolicy": "closed",
    }
    assert {key: service.get(key, ["(missing)"])[-1] for key in expected} == expected
    allowed = set(service["DeviceAllow"])
    for device in ("video4linux", "media", "dma_heap", "drm", "ttyUSB", "ttyACM", "ttyAMA"):
        assert f"char-{device} rw" in allowed  # cameras, libcamera, serial sensors
    for device in ("apex", "usb_device", "galcore"):
        assert f"char-{device} rw" in allowed  # Coral PCIe, Coral USB, i.MX8M Plus NPU
    assert "ReadWritePaths" not in service  # the state directory is the only writable place
    assert units["Install"]["WantedBy"] == ["multi-user.target"]


# -- board profiles ----------------------------------------------------------------------------------


def test_profiles_are_the_documented_set() -> None:
    shipped = {p.stem for p in DEVICES.glob("*.toml")} - {"demo"}
    assert shipped == set(PROFILES)
    boards = (ROOT / "docs" / "boards.md").read_text()
    for name in PROFILES:
        assert f"`{name}`" in boards, f"docs/boards.md does not describe {name}"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_validates(name: str) -> None:
    path = DEVICES / f"{name}.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "validate-config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert ": ok:" in proc.stdout


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_contract(name: str) -> None:
    path = DEVICES / f"{name}.toml"
    text = path.read_text()
    assert text.startswith("# Board profile: "), "a header comment names the board"
    config = load_config(path)
    chain, threads = PROFILES[name]
    assert config.defaults.delegates == chain
    assert config.defaults.threads == threads
    assert (config.mqtt.host, config.mqtt.port) == ("localhost", 1883)
    # Relative paths would resolve against the folder of the config that includes the profile.
    for value in config.paths():
        assert value.startswith("bundled:") or value.startswith("/") or "!" in value, value
    for pipeline in config.pipelines:
        for model in pipeline.models:
            assert model.delegates is None and model.threads is None, "models take [defaults]"


def test_rk3588_armnn_alternative_is_valid(tmp_path: Path) -> None:
    # The commented Arm NN chain of the RK3588 profile, uncommented, still loads.
    text = (DEVICES / "rk3588.toml").read_text()
    match = re.search(r"^# (delegates = \[\{ type = \"armnn\".*)$", text, re.MULTILINE)
    assert match is not None
    main = tmp_path / "config.toml"
    main.write_text(f'include = ["rk3588"]\n[defaults]\n{match.group(1)}\n')
    config = load_config(main)
    assert config.defaults.delegates == [
        ArmnnConfig(library="/opt/armnn/libarmnnDelegate.so", backends="GpuAcc,CpuAcc"),
        CpuConfig(),
    ]


def test_profile_selected_with_profile_option(tmp_path: Path) -> None:
    main = tmp_path / "config.toml"
    main.write_text('[device]\nid = "cam-01"\n')
    config = load_config(main, profile="rpi5")
    assert config.defaults.delegates == [CpuConfig()]
    assert config.defaults.threads == 4
    assert config.device.id == "cam-01"
    assert "camera" in config.sources


def test_profile_selected_with_include(tmp_path: Path) -> None:
    main = tmp_path / "config.toml"
    main.write_text(
        'include = ["coral-devboard"]\n'
        '[mqtt]\nhost = "broker.example.net"\n'
        '[[pipelines]]\nname = "mine"\ntrigger = "camera"\n'
        '[[pipelines.models]]\npath = "bundled:digits_int8.tflite"\n'
        'inputs = [{ kind = "image", source = "camera", color = "gray", std = 255.0 }]\n'
        'postprocess = { type = "classification" }\n'
    )
    config = load_config(main)
    assert config.defaults.delegates == [EdgeTpuConfig(device="pci"), CpuConfig()]
    assert config.defaults.threads == 4
    assert (config.mqtt.host, config.mqtt.port) == ("broker.example.net", 1883)  # merged key by key
    assert [p.name for p in config.pipelines] == ["mine"]  # lists are replaced


def test_main_config_chain_wins_over_the_profile(tmp_path: Path) -> None:
    main = tmp_path / "config.toml"
    main.write_text('[defaults]\ndelegates = ["cpu"]\nthreads = 2\n')
    config = load_config(main, profile="rpi4-coral-usb")
    assert config.defaults.delegates == [CpuConfig()]
    assert config.defaults.threads == 2


# -- install.sh ------------------------------------------------------------------------------------


def test_install_sh_is_shellcheck_clean() -> None:
    proc = subprocess.run(
        [_tool("shellcheck", "shellcheck"), str(INSTALL)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def _manifest(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """Every path under root: kind, mode, mtime (ns) and the sha256 of a file's content."""
    found: dict[str, tuple[str, int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            kind, digest = "link", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, digest = "dir", ""
        else:
            kind, digest = "file", hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return found


def _host_state() -> dict[str, str]:
    state: dict[str, str] = {}
    for path in HOST_PATHS:
        if path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            state[str(path)] = "dir: " + " ".join(sorted(p.name for p in path.iterdir()))
        else:
            state[str(path)] = "absent"
    return state


def _snapshot_source(dest: Path) -> Path:
    """The package sources as they are now: others may edit the work tree during the test."""
    dest.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / item, dest / item)
    shutil.copytree(
        ROOT / "edge_runtime", dest / "edge_runtime", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def _install(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_install_reinstall_uninstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tool("systemd-sysusers", "systemd")
    before = _host_state()
    prefix = tmp_path / "root"
    source = _snapshot_source(tmp_path / "src")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    common = ["--prefix", str(prefix), "--no-apt", "--source", str(source), "--python", sys.executable]

    _install(*common, "--profile", "rpi5", env=env)

    venv = prefix / "opt/edge-runtime/venv"
    etc = prefix / "etc/edge-runtime"
    assert (prefix / "etc/systemd/system/edge-runtime.service").read_bytes() == UNIT.read_bytes()
    for name in PROFILES:
        assert (etc / "profiles" / f"{name}.toml").read_bytes() == (DEVICES / f"{name}.toml").read_bytes()
    assert not (etc / "profiles/demo.toml").exists()
    config = etc / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert re.search(r'^include = \["rpi5"\]$', config.read_text(), re.MULTILINE)
    state = prefix / "var/lib/edge-runtime"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    passwd = (prefix / "etc/passwd").read_text()
    assert re.search(r"^edge-runtime:x:\d+:\d+:[^:]*:/var/lib/edge-runtime:/usr/sbin/nologin$", passwd, re.M)
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (prefix / "etc/group").read_text().splitlines()
    }
    for group in ("video", "dialout", "plugdev"):
        assert "edge-runtime" in groups[group]
    assert "edge-runtime" in groups
    # The build happened in a scratch copy: nothing left in the source tree.
    assert not (source / "build").exists() and not list(source.glob("*.egg-info"))

    # The venv works: the installed binary validates an installed profile (bundled models inside).
    proc = subprocess.run(
        [str(venv / "bin/edge-runtime"), "validate-config", str(etc / "profiles/imx8mp.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # The starter config plus the installed profiles give the Pi 5 chain; under a prefix the
    # profiles are not in /etc/edge-runtime/profiles: $EDGE_RUNTIME_PROFILES points there.
    monkeypatch.setenv("EDGE_RUNTIME_PROFILES", str(etc / "profiles"))
    loaded = load_config(config)
    assert loaded.defaults.delegates == [CpuConfig()] and loaded.defaults.threads == 4

    first = _manifest(prefix)
    again = _install(*common, "--profile", "x86-64", env=env)
    assert _manifest(prefix) == first, "a second run changed files"
    assert "nothing to change" in again.stderr
    assert "config.toml exists" in again.stderr  # an existing config is never replaced

    _install("--prefix", str(prefix), "--uninstall", env=env)
    left = {p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if not p.is_dir()}
    assert left == {
        "etc/edge-runtime/config.toml",
        "etc/passwd",
        "etc/group",
        "etc/shadow",
        "etc/gshadow",
        "etc/.pwd.lock",
    }
    assert first["etc/edge-runtime/config.toml"][3] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert state.is_dir() and not (prefix / "opt/edge-runtime").exists()

    assert _host_state() == before, "install.sh under --prefix changed the host"

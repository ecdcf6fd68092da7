"""Run `edge-runtime run` as a real process for tests: config files, stdout results, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from devkit.paths import MODELS
from edge_runtime.demo import write_digits_video

BACKEND = os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "auto")


def digits_model(
    path: Path = MODELS / "digits_int8.tflite", postprocess: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The bundled digits model as a pipeline's model table (a config in dict form): its image
    input from the source ``camera`` (centre crop, grey, x / 255); by default classification with
    the bundled labels."""
    return {
        "path": str(path),
        "inputs": [{"kind": "image", "source": "camera", "resize": "crop", "color": "gray", "std": 255.0}],
        "postprocess": postprocess or {"type": "classification", "labels": str(MODELS / "digits_labels.txt")},
    }


def digits_video(path: Path, count: int = 60, fps: float = 20.0) -> Path:
    with np.load(MODELS / "digits_heldout.npz") as data:
        images = list(data["images"][:count])
    write_digits_video(path, images, fps=fps)
    return path


def digits_config(
    tmp_path: Path,
    *,
    port: int | None,
    device: str = "dev1",
    fps: float = 20.0,
    health_s: float = 1.0,
    mqtt: str = "",
    extra: str = "",
    state: Path | None = None,
) -> Path:
    """A config: the digits model on a looping video, publishing to 127.0.0.1:port."""
    video = tmp_path / "digits.avi"
    if not video.exists():
        digits_video(video, fps=fps)
    mqtt_section = (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect = {{ initial_s = 0.2, max_s = 1.0 }}\n{mqtt}'
        if port is not None
        else "[mqtt]\nenabled = false\n"
    )
    path = tmp_path / f"{device}.toml"
    path.write_text(
        f"""
[device]
id = "{device}"
state_dir = "{state or tmp_path / ("state-" + device)}"

[runtime]
backend = "{BACKEND}"

{mqtt_section}

[health]
interval_s = {health_s}

[sources.camera]
type = "camera"
uri = "{video}"
realtime = true
loop = true

[[pipelines]]
name = "digits"
trigger = "camera"

[[pipelines.models]]
path = "{MODELS}/digits_int8.tflite"
version = "1"
inputs = [{{ kind = "image", source = "camera", resize = "crop", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", labels = "{MODELS}/digits_labels.txt", top_k = 1 }}
{extra}
"""
    )
    return path


class Daemon:
    """`python -m edge_runtime run --config ...` with its stdout results collected."""

    def __init__(self, config: Path, *args: str, log: Path | None = None) -> None:
        self.config = config
        self.log_path = log or config.with_suffix(".log")
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime", "run", "--config", str(config), *args],
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.results.append(json.loads(line))

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def results_so_far(self) -> list[dict[str, Any]]:
        """A copy of the results read so far (the reader thread keeps appending)."""
        with self._lock:
            return list(self.results)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> int:
        """Send ``sig`` and wait for the exit code."""
        self.proc.send_signal(sig)
        code = self.proc.wait(20)
        self._reader.join(5)
        return code

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> int:
        if self.proc.poll() is not None:
            return self.proc.returncode
        return self.signal(signal.SIGTERM)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stats_line(log: str, kind: str, name: str) -> dict[str, Any]:
    marker = f"{kind} {name} stats: "
    for line in reversed(log.splitlines()):
        if marker in line:
            data: dict[str, Any] = json.loads(line.split(marker, 1)[1])
            return data
    raise AssertionError(f"no '{marker}' line in the log:\n{log[-3000:]}")

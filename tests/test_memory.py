"""``runtime.malloc_arenas``: the threads of the daemon share at most that many malloc arenas
(glibc), measured in a fresh process each time by glibc's own ``malloc_stats``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.config import Config, validate
from edge_runtime.errors import ConfigError

# Six threads that each allocate (as six camera threads decoding frames would), all alive at once;
# then glibc prints one "Arena N:" block per arena on stderr.
CHILD = """
import ctypes, sys, threading
import numpy as np
from edge_runtime.memory import set_arena_max
print(set_arena_max(int(sys.argv[1])))
barrier = threading.Barrier(7)
def work():
    kept = np.ones(2048)  # through malloc, in this thread's arena
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
barrier.wait()
ctypes.CDLL("libc.so.6").malloc_stats()
barrier.wait()
for t in threads:
    t.join()
"""


def _arenas(limit: int) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_the_threads_share_at_most_the_configured_arenas() -> None:
    applied, default = _arenas(0)
    assert applied == "False" and default >= 7, "glibc's default: the main arena and one per thread"
    for limit in (1, 2):
        applied, arenas = _arenas(limit)
        assert applied == "True" and arenas == limit


def test_the_setting_defaults_to_two_and_is_bounded(tmp_path: Path) -> None:
    def config(runtime: dict[str, int]) -> Config:
        model = {
            "path": "bundled:digits_int8.tflite",
            "inputs": [{"kind": "image", "source": "cam", "color": "gray"}],
            "postprocess": {"type": "raw"},
        }
        data = {
            "mqtt": {"enabled": False},
            "runtime": runtime,
            "sources": {"cam": {"type": "camera", "uri": 0}},
            "pipelines": [{"name": "p", "trigger": "cam", "models": [model]}],
        }
        return validate(data, tmp_path)

    assert config({}).runtime.malloc_arenas == 2
    assert config({"malloc_arenas": 0}).runtime.malloc_arenas == 0
    with pytest.raises(ConfigError, match="less than or equal to 64"):
        config({"malloc_arenas": 65})

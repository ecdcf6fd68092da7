"""Per-camera counts of a pipeline with several cameras, in the health document and the HTTP API of
a real daemon (two looping video files at different frame rates, batched two at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devkit.daemon import BACKEND, digits_video
from devkit.httpd import HttpDaemon
from devkit.paths import MODELS
from devkit.processes import wait_until


def _config(tmp_path: Path) -> Path:
    fast = digits_video(tmp_path / "fast.avi", fps=30.0)
    slow = digits_video(tmp_path / "slow.avi", fps=5.0)
    path = tmp_path / "two.toml"
    path.write_text(
        f"""
[device]
id = "two-cams"
state_dir = "{tmp_path / "state"}"

[runtime]
backend = "{BACKEND}"

[mqtt]
enabled = false

[health]
interval_s = 1.0

[sources.fast]
type = "camera"
uri = "{fast}"
realtime = true
loop = true

[sources.slow]
type = "camera"
uri = "{slow}"
realtime = true
loop = true

[[pipelines]]
name = "both"
trigger = {{ sources = ["fast", "slow"], batch = 2 }}

[[pipelines.models]]
path = "{MODELS}/digits_int8.tflite"
inputs = [{{ kind = "image", source = "fast", resize = "crop", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", top_k = 1 }}
"""
    )
    return path


def test_health_and_the_api_count_frames_results_and_drops_per_camera(tmp_path: Path) -> None:
    with HttpDaemon(_config(tmp_path)) as d:
        d.wait_results(40)

        def per_camera() -> dict[str, Any]:
            entry = d.json("/api/health")["pipelines"]["both"]
            return {"results": entry["results"], **entry["sources"]}

        assert wait_until(lambda: per_camera()["slow"]["results"] >= 5, 20), per_camera()
        health = d.json("/api/health")["pipelines"]["both"]
        assert health["batch"] == 2
        sources = health["sources"]
        assert set(sources) == {"fast", "slow"}
        for name, counts in sources.items():
            assert set(counts) == {"frames", "results", "dropped", "skipped"}
            # results are counted after the frames were taken (a batch may be in flight in between)
            assert 0 < counts["results"] <= counts["frames"], (name, counts)
            assert counts["skipped"] == 0, (name, counts)
        # the fast camera offers six times the frames of the slow one: the pipeline takes each
        # one's new frames, so its frames and results follow the offered rates
        assert sources["fast"]["frames"] > 3 * sources["slow"]["frames"], sources
        # counted in the same report: the per-camera results add up to at least the pipeline's
        assert sum(c["results"] for c in sources.values()) >= health["results"]

        listed = d.json("/api/pipelines")["pipelines"][0]
        assert listed["trigger"] == {"source": "fast", "sources": ["fast", "slow"], "batch": 2}
        assert set(listed["sources"]) == {"fast", "slow"}
        for name in ("fast", "slow"):
            assert listed["sources"][name]["results"] >= sources[name]["results"], "counts only grow"
        stdout = d.results_so_far()
        seen = {
            name: [r["trigger"]["seq"] for r in stdout if r["trigger"]["source"] == name] for name in sources
        }
        for name, seqs in seen.items():
            assert seqs and seqs == sorted(set(seqs)), f"{name}: results out of capture order"

"""Decode cost of one MJPEG frame: OpenCV's capture (full size) against the raw JPEG bytes decoded
at full, 1/2 and 1/4 size (what a camera with ``reduced_decode = "auto"`` does).

    .venv/bin/python tools/bench_decode.py [--video FILE.avi] [--repeat 5]

The video defaults to the bench's 640x480 MJPG scene (``tools/bench.py`` writes it under
``$TMPDIR/edge-runtime-bench/``; made here when missing). Every way reads the whole file once per
repeat, the ways interleaved; the median and best ms per frame over the repeats are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit

import cv2
import numpy as np
from benchkit.video import make_video


def _capture_full(video: str, _: list[np.ndarray]) -> int:
    cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _packets(video: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_FORMAT, -1)
    found = []
    ok, raw = cap.read()
    while ok:
        found.append(raw.reshape(-1).copy())
        ok, raw = cap.read()
    cap.release()
    return found


def _raw_read(video: str, _: list[np.ndarray]) -> int:
    return len(_packets(video))


def _decoder(flag: int) -> Callable[[str, list[np.ndarray]], int]:
    def run(_: str, packets: list[np.ndarray]) -> int:
        for p in packets:
            cv2.imdecode(p, flag)
        return len(packets)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    video = str(args.video or make_video(30.0))
    packets = _packets(video)
    ways = {
        "VideoCapture.read (FFmpeg decodes, full)": _capture_full,
        "raw packets only (CAP_PROP_FORMAT=-1)": _raw_read,
        "imdecode full (IMREAD_COLOR)": _decoder(cv2.IMREAD_COLOR),
        "imdecode 1/2 (IMREAD_REDUCED_COLOR_2)": _decoder(cv2.IMREAD_REDUCED_COLOR_2),
        "imdecode 1/4 (IMREAD_REDUCED_COLOR_4)": _decoder(cv2.IMREAD_REDUCED_COLOR_4),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeat):
        for name, run in ways.items():
            start = time.perf_counter()
            n = run(video, packets)
            times[name].append((time.perf_counter() - start) / n * 1000)
    first = cv2.imdecode(packets[0], cv2.IMREAD_COLOR)
    h, w = first.shape[:2] if first is not None else (0, 0)
    print(f"{video}: {len(packets)} frames {w}x{h}, {args.repeat} interleaved repeats, ms per frame")
    print(f"{'way':<44} {'median':>8} {'best':>8}")
    for name, values in times.items():
        print(f"{name:<44} {statistics.median(values):>8.3f} {min(values):>8.3f}")


if __name__ == "__main__":
    main()

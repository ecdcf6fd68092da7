"""Decode cost of one MJPEG frame: OpenCV's capture (full size) against the raw JPEG bytes decoded
at full, 1/2 and 1/4 size (what a camera with ``reduced_decode = "auto"`` does).

    .venv/bin/python tools/bench_decode.py [--video FILE.avi] [--repeat 5] [--no-build]

The video defaults to the bench's 640x480 MJPG scene (``tools/bench.py`` writes it under
``$TMPDIR/edge-runtime-bench/``; made here when missing). Every way reads the whole file once per
repeat, the ways interleaved; the median and best ms per frame over the repeats are printed.
Then, per model (mobilenet's 224x224 stretch RGB input, digits' 8x8 crop grey one), the decode at
full size and at the reduction the camera would choose, each followed by the input build
(``ImageBuilder.build``, what the pipeline's worker does next), interleaved the same way.
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


def _builds(packets: list[np.ndarray], repeat: int) -> None:
    from benchkit.common import MODEL_PATHS

    from edge_runtime.fusion import ImageBuilder
    from edge_runtime.runtime.model import Model
    from edge_runtime.sources.jpeg import reduction

    first = cv2.imdecode(packets[0], cv2.IMREAD_COLOR)
    size = (first.shape[1], first.shape[0]) if first is not None else (0, 0)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    options = {
        "mobilenet": {"resize": "stretch", "color": "rgb", "pad_value": 0, "mean": 127.5, "std": 127.5},
        "digits": {"resize": "crop", "color": "gray", "pad_value": 0, "mean": 0.0, "std": 255.0},
    }
    print(f"\n{'model, decode':<28} {'decode ms':>9} {'build ms':>9} {'sum ms':>8}  (medians; best)")
    for name, kw in options.items():
        spec = Model(str(MODEL_PATHS[name])).inputs[0]
        factor = reduction(size, (int(spec.shape[2]), int(spec.shape[1])))
        results: dict[int, tuple[list[float], list[float]]] = {f: ([], []) for f in sorted({1, factor})}
        for _ in range(repeat):
            for f, (dec, build) in results.items():
                builder = ImageBuilder(spec, **kw)  # type: ignore[arg-type]
                t0 = time.perf_counter()
                frames = [cv2.imdecode(p, flags[f]) for p in packets]
                t1 = time.perf_counter()
                for frame in frames:
                    builder.build(frame)  # type: ignore[arg-type]
                dec.append((t1 - t0) / len(packets) * 1000)
                build.append((time.perf_counter() - t1) / len(packets) * 1000)
        for f, (dec, build) in results.items():
            total = statistics.median([a + b for a, b in zip(dec, build, strict=True)])
            label = f"{name}, {'full' if f == 1 else f'1/{f}'}"
            print(
                f"{label:<28} {statistics.median(dec):>9.3f} {statistics.median(build):>9.3f} {total:>8.3f}"
                f"  ({min(dec):.3f}; {min(build):.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-build", action="store_true", help="only the decode table")
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
    if not args.no_build:
        _builds(packets, args.repeat)


if __name__ == "__main__":
    main()

"""Encode result documents with the standard library, orjson and msgspec: microseconds per result.

    .venv/bin/python tools/bench_json.py [--docs FILE.jsonl] [--n 20000] [--repeat 5]

The documents are real results (``edge-runtime run --max-results 20 > FILE.jsonl`` gives the
bundled digits pipeline's) or, without ``--docs``, three built here in the result format: a
classification top-1, a top-5 with labels, and ten detections. Each encoder runs ``--n``
encodes per document, ``--repeat`` times interleaved (stdlib, orjson, msgspec, stdlib, ...);
the best of the repeats is printed. Whether each encoder's bytes equal the standard library's
(``separators=(",", ":")``, the daemon's form) is printed too. orjson and msgspec are imported
only when installed (neither is a dependency of edge-runtime).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Encoder = Callable[[Any], bytes]


def _stdlib(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def encoders() -> dict[str, Encoder]:
    found: dict[str, Encoder] = {"stdlib json": _stdlib}
    try:
        import orjson  # type: ignore[import-not-found, unused-ignore]

        found[f"orjson {orjson.__version__}"] = orjson.dumps
    except ImportError:
        pass
    try:
        import msgspec  # type: ignore[import-not-found, unused-ignore]

        found[f"msgspec {msgspec.__version__}"] = msgspec.json.Encoder().encode
    except ImportError:
        pass
    return found


def built_docs() -> dict[str, dict[str, Any]]:
    base: dict[str, Any] = {
        "v": 1,
        "device": "cam-01",
        "pipeline": "front",
        "seq": 123456,
        "ts": 1796147144.281,
        "frame_ts": 1796147144.279,
        "trigger": {"source": "front", "seq": 98765},
        "model": {"name": "mobilenet_v2_int8", "sha256": "a21fb031" * 8, "version": "1"},
        "latency_ms": {"pre": 0.412, "invoke": 2.487, "post": 0.031, "total": 3.127},
    }
    top1 = {"index": 281, "label": "tabby", "score": 0.8125}
    top5 = [{"index": 281 + i, "label": f"label {i}", "score": 0.8 / (i + 1)} for i in range(5)]
    dets = [
        {"box": [12.5 + i, 40.25, 120.0 + i, 200.75], "score": 0.9 - i / 20, "index": i % 3, "label": "car"}
        for i in range(10)
    ]
    cls1 = {"type": "classification", "top": [top1], "event": False, "event_labels": []}
    cls5 = {"type": "classification", "top": top5, "event": True, "event_labels": ["tabby"]}
    return {
        "classification top-1": {**base, "result": cls1},
        "classification top-5": {**base, "result": cls5},
        "10 detections": {**base, "result": {"type": "detection", "detections": dets}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=Path, default=None, help="a JSON-lines file of result documents")
    parser.add_argument("--n", type=int, default=20_000, help="encodes per document and repeat")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repeats (the best is kept)")
    args = parser.parse_args()
    if args.docs is not None:
        lines = [json.loads(line) for line in args.docs.read_text().splitlines() if line.startswith("{")]
        mean = sum(len(_stdlib(doc)) for doc in lines) // len(lines)
        docs = {f"{args.docs.name} ({len(lines)} docs, mean {mean} B)": lines}
    else:
        docs = {name: [doc] for name, doc in built_docs().items()}
    found = encoders()
    print(f"{'document':<40} {'encoder':<16} {'us/doc':>8} {'x stdlib':>9}  same bytes")
    for name, group in docs.items():
        best = {enc: float("inf") for enc in found}
        for _ in range(args.repeat):
            for enc, fn in found.items():
                start = time.perf_counter()
                for _ in range(args.n):
                    for doc in group:
                        fn(doc)
                best[enc] = min(best[enc], (time.perf_counter() - start) / (args.n * len(group)) * 1e6)
        ref = best["stdlib json"]
        for enc, fn in found.items():
            same = all(fn(doc) == _stdlib(doc) for doc in group)
            print(f"{name:<40} {enc:<16} {best[enc]:>8.2f} {ref / best[enc]:>8.2f}x  {same}")


if __name__ == "__main__":
    main()

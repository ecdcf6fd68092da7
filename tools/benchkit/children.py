"""The measuring children: the bare loop and the naive loop, run as fresh processes."""

from __future__ import annotations

import array
import contextlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchkit.common import RESULT_PREFIX, RING, interpreter_class, percentiles
from benchkit.measure import proc_status_mb, self_cpu_s

# -- the children (fresh processes) -----------------------------------------------------------------


def _emit_result(data: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(data), flush=True)


def child_bare(params: dict[str, Any]) -> dict[str, Any]:
    """(a): ``Model(threads=N)``, a preloaded random input, invoke in a loop for ``seconds``."""
    from edge_runtime.runtime.model import Model

    t_load = time.perf_counter()
    model = Model(params["model"], threads=params["threads"])
    load_ms = (time.perf_counter() - t_load) * 1000
    rng = np.random.default_rng(0)
    for spec in model.inputs:
        info = np.iinfo(np.dtype(spec.dtype))
        model.set_input(
            spec.position, rng.integers(info.min, info.max, spec.shape, dtype=spec.dtype, endpoint=True)
        )
    model.run()
    first_wall = time.time()
    end = time.perf_counter() + params["warmup_s"]
    while time.perf_counter() < end:
        model.run()
    run = model.run
    perf = time.perf_counter
    # the last RING invoke times, in a flat buffer: a list of a million floats would add 30 MB
    # to the RSS this run reports (the digits model does 50,000 invokes a second)
    times = array.array("d", bytes(8 * RING))
    count = 0
    cpu0, t0 = self_cpu_s(), perf()
    end = t0 + params["seconds"]
    now = t0
    while now < end:
        run()
        after = perf()
        times[count & (RING - 1)] = after - now
        count += 1
        now = after
    window = perf() - t0
    cpu = self_cpu_s() - cpu0
    spec = model.inputs[0]
    q = spec.quant
    kept = np.frombuffer(times, dtype=np.float64)[: min(count, RING)]
    return {
        "fps": count / window,
        "invokes": count,
        "window_s": window,
        "invoke_ms": percentiles(kept * 1000),
        "cpu_pct": cpu / window * 100,
        "peak_rss_mb": proc_status_mb("self", "VmHWM"),
        "rss_mb": proc_status_mb("self", "VmRSS"),
        "first_wall": first_wall,
        "load_ms": load_ms,
        "delegate": model.placement,
        "input": {
            "shape": list(spec.shape),
            "dtype": spec.dtype,
            "scale": q.scale[0] if q else None,
            "zero_point": q.zero_point[0] if q else None,
        },
    }


def child_naive(params: dict[str, Any]) -> dict[str, Any]:
    """(b): the loop a user would write, one step after the other."""
    import cv2
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    interpreter = interpreter_class(params.get("backend", "litert"))(
        model_path=params["model"], num_threads=params["threads"]
    )
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    _, h, w, c = inp["shape"]
    scale, zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    dtype = inp["dtype"]
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"naive-{os.getpid()}")
    client.connect("127.0.0.1", params["port"])
    client.loop_start()
    topic = params["topic"]

    cap = cv2.VideoCapture(params["video"])
    seq = 0
    first_wall = 0.0
    perf = time.perf_counter
    rows: list[tuple[float, float, float, float, float]] = []  # read, pre, invoke, post, publish
    warm_end = perf() + params["warmup_s"]
    timed_start = end = cpu0 = 0.0
    timed_lo = 0
    info: Any = None
    while True:
        t0 = perf()
        ok, frame = cap.read()
        if not ok:  # end of the file: start again
            cap.release()
            cap = cv2.VideoCapture(params["video"])
            continue
        frame_ts = time.time()
        t1 = perf()
        image = cv2.resize(frame, (w, h))
        if c == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            x = image.astype(np.float32) / 127.5 - 1.0
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            x = (image.astype(np.float32) / 255.0)[..., None]
        q = np.clip(np.round(x / scale + zero), lo, hi).astype(dtype)
        interpreter.set_tensor(inp["index"], q[None])
        t2 = perf()
        interpreter.invoke()
        t3 = perf()
        scores = interpreter.get_tensor(out["index"])[0]
        best = int(np.argmax(scores))
        score = float((int(scores[best]) - out_zero) * out_scale)
        seq += 1
        payload = json.dumps(
            {
                "seq": seq,
                "frame_ts": frame_ts,
                "class": best,
                "score": score,
                "latency_ms": {"pre": (t2 - t1) * 1000, "invoke": (t3 - t2) * 1000},
            }
        )
        t4 = perf()
        info = client.publish(topic, payload, qos=1)
        t5 = perf()
        if seq == 1:
            first_wall = time.time()
        if not timed_lo:
            if t5 >= warm_end:
                timed_start, end, cpu0, timed_lo = t5, t5 + params["seconds"], self_cpu_s(), seq + 1
            continue
        rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))
        if t5 >= end:
            break
    window = perf() - timed_start
    cpu = self_cpu_s() - cpu0
    with contextlib.suppress(Exception):
        info.wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()
    a = np.asarray(rows, dtype=np.float64) * 1000
    return {
        "fps": len(rows) / window,
        "frames": len(rows),
        "window_s": window,
        "frame_ms": percentiles(a.sum(axis=1)),
        "stages_ms": {
            "read": percentiles(a[:, 0]),
            "pre": percentiles(a[:, 1]),
            "invoke": percentiles(a[:, 2]),
            "post": percentiles(a[:, 3] + a[:, 4]),
            "publish": percentiles(a[:, 4]),
        },
        "cpu_pct": cpu / window * 100,
        "peak_rss_mb": proc_status_mb("self", "VmHWM"),
        "rss_mb": proc_status_mb("self", "VmRSS"),
        "first_wall": first_wall,
        "published": seq,
        "timed_seqs": [timed_lo, seq],
    }


def child_main(argv: Sequence[str]) -> int:
    kind, params = argv[0], json.loads(argv[1])
    if kind == "bare":
        _emit_result(child_bare(params))
    elif kind == "naive":
        _emit_result(child_naive(params))
    elif kind == "twothread":
        from benchkit.limit import child_two_thread

        _emit_result(child_two_thread(params))
    else:
        raise SystemExit(f"bench: unknown child {kind!r}")
    return 0

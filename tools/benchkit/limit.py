"""(d) the practical limit: a hand-written two-thread loop, one thread decoding and preprocessing
the video, the other invoking (``invoke`` releases the GIL, so the two overlap). No publishing:
what the daemon does beyond this is its own per-result overhead."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from benchkit.common import interpreter_class, percentiles
from benchkit.measure import proc_status_mb, self_cpu_s


def child_two_thread(params: dict[str, Any]) -> dict[str, Any]:
    import cv2

    from edge_runtime.supervision import spawn

    interpreter = interpreter_class(params.get("backend", "litert"))(
        model_path=params["model"], num_threads=params["threads"]
    )
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    _, h, w, c = inp["shape"]
    scale, zero = inp["quantization"]
    dtype = inp["dtype"]
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def decode() -> None:
        cap = cv2.VideoCapture(params["video"])
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:  # end of the file: start again
                cap.release()
                cap = cv2.VideoCapture(params["video"])
                continue
            image = cv2.resize(frame, (w, h))
            if c == 3:
                x = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
            else:
                x = (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0)[..., None]
            q = np.clip(np.round(x / scale + zero), lo, hi).astype(dtype)[None]
            while not stop.is_set():
                try:
                    ready.put(q, timeout=0.1)
                    break
                except queue.Full:
                    continue
        cap.release()

    decoder = spawn("bench-decode", decode, restart=False)
    perf = time.perf_counter
    warm_end = perf() + params["warmup_s"]
    count = 0
    invoke_ms: list[float] = []
    t0 = cpu0 = end = 0.0
    while True:
        x = ready.get()
        interpreter.set_tensor(inp["index"], x)
        t1 = perf()
        interpreter.invoke()
        t2 = perf()
        int(np.argmax(interpreter.get_tensor(out["index"])[0]))
        if not t0:
            if t2 >= warm_end:
                t0, cpu0, end = t2, self_cpu_s(), t2 + params["seconds"]
            continue
        count += 1
        invoke_ms.append((t2 - t1) * 1000)
        if t2 >= end:
            break
    window = perf() - t0
    cpu = self_cpu_s() - cpu0
    stop.set()
    decoder.join(5)
    return {
        "fps": count / window,
        "frames": count,
        "window_s": window,
        "invoke_ms": percentiles(invoke_ms),
        "cpu_pct": cpu / window * 100,
        "peak_rss_mb": proc_status_mb("self", "VmHWM"),
        "rss_mb": proc_status_mb("self", "VmRSS"),
    }


def run_two_thread(model: str, threads: int, seconds: float, warmup_s: float, video: str) -> dict[str, Any]:
    """(d) in a fresh process; the child's result, or ``{"error": ...}``."""
    from benchkit.runs import _run_child

    params = {"model": model, "threads": threads, "seconds": seconds, "warmup_s": warmup_s, "video": video}
    data, _, error = _run_child("twothread", params, timeout=seconds + warmup_s + 120)
    return data if data is not None else {"error": error}

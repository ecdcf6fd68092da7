"""The child process that runs one quantization engine: ``python -m edge_runtime.optimize.child DIR``.

``DIR`` holds ``request.json`` (engine, io type), ``model.tflite`` (the float model, with a
signature) and ``calibration.npz`` (``input_0``, ``input_1``, ... each ``[N, *input shape]``).
The child writes ``out.tflite`` and ``result.json`` (``{"ok": true}`` or ``{"ok": false,
"error": ...}``). An engine that crashes the process (the legacy calibrator segfaults on some
models) takes only this child down; the parent reports the signal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

IO_DTYPES = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32}


def _arrays(folder: Path) -> list[np.ndarray]:
    with np.load(folder / "calibration.npz", allow_pickle=False) as npz:
        count = len(npz.files)
        return [npz[f"input_{i}"] for i in range(count)]


def run_ai_edge_quantizer(data: bytes, arrays: list[np.ndarray], io: str) -> bytes:
    """``ai-edge-quantizer``'s static int8 recipe (int8 weights per channel, int8 activations)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    if io != "int8":
        raise ValueError(f"this engine makes int8 inputs and outputs only, not {io}")
    interpreter = Interpreter(model_content=data)
    signatures = interpreter.get_signature_list()
    if not signatures:
        raise ValueError("the model has no signature definition")
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    by_index = {int(d["index"]): name for name, d in runner.get_input_details().items()}
    names = [by_index[int(d["index"])] for d in interpreter.get_input_details()]
    samples: list[dict[str, Any]] = [
        {name: array[i] for name, array in zip(names, arrays, strict=True)} for i in range(len(arrays[0]))
    ]
    qt = quantizer.Quantizer(data)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    calibration = qt.calibrate({key: samples}, num_threads=1)
    result = qt.quantize(calibration, enable_progress_report=False, enable_progress_bar=False)
    if result.quantized_model is None:
        raise ValueError("produced no model")
    return bytes(result.quantized_model)


def run_legacy(data: bytes, arrays: list[np.ndarray], io: str) -> bytes:
    """The calibrator inside the LiteRT wheel (TensorFlow's old post-training quantizer)."""
    from ai_edge_litert import _pywrap_tensorflow_lite_calibration_wrapper as wrapper

    calibrator = wrapper.CalibrationWrapper(data, [], [])
    calibrator.Prepare([list(a.shape[1:]) for a in arrays])
    for i in range(len(arrays[0])):
        calibrator.FeedTensor([a[i] for a in arrays])
    io_num = np.dtype(IO_DTYPES[io]).num
    int8 = np.dtype(np.int8).num
    int32 = np.dtype(np.int32).num
    return bytes(calibrator.QuantizeModel(io_num, io_num, False, int8, int32, False, False))


ENGINES = {"ai-edge-quantizer": run_ai_edge_quantizer, "legacy": run_legacy}


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    request = json.loads((folder / "request.json").read_text())
    started = time.perf_counter()
    try:
        out = ENGINES[request["engine"]](
            (folder / "model.tflite").read_bytes(), _arrays(folder), request["io"]
        )
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        result = {"ok": False, "error": f"{type(exc).__name__}: {message}"[:2000]}
    else:
        (folder / "out.tflite").write_bytes(out)
        result = {"ok": True, "seconds": round(time.perf_counter() - started, 3)}
    (folder / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Flatbuffer rewrites of a float model with the schema the LiteRT wheel ships.

:func:`signatures` lists a model's signature definitions; :func:`with_default_signature` adds a
``serving_default`` signature naming every subgraph input and output when a model has none
(``ai-edge-quantizer`` needs one; many exported models carry none); :func:`prune` zeroes the
smallest-magnitude weights of each float kernel. ``ai_edge_litert.schema_py_generated`` and
``flatbuffers`` (both dependencies of ``ai-edge-litert``) are imported here only, lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.optimize import OptimizeError
from edge_runtime.runtime.modelfile import TFLITE_IDENTIFIER, WEIGHT_OPS
from edge_runtime.runtime.opcodes import BUILTIN_OPS

DEFAULT_SIGNATURE = "serving_default"
FLOAT32 = 0  # TensorType.FLOAT32


@dataclass(frozen=True)
class Signature:
    """One signature definition: its key and input/output names with their tensor indices."""

    key: str
    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class PrunedTensor:
    """What pruning did to one weight tensor."""

    tensor: str
    op: str
    elements: int
    zeros_before: int
    zeros_after: int


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _load(data: bytes) -> Any:
    s = _schema()
    try:
        return s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    except Exception as exc:  # the generated reader raises anything on a malformed file
        raise OptimizeError(f"cannot unpack the model flatbuffer: {exc}") from exc


def _pack(model: Any, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def signatures(data: bytes) -> list[Signature]:
    """The signature definitions of a model (empty when it has none)."""
    model = _load(data)
    found: list[Signature] = []
    for sd in model.signatureDefs or []:
        found.append(
            Signature(
                _text(sd.signatureKey),
                tuple((_text(t.name), int(t.tensorIndex)) for t in sd.inputs or []),
                tuple((_text(t.name), int(t.tensorIndex)) for t in sd.outputs or []),
            )
        )
    return found


def _signature_name(name: str, used: set[str], fallback: str) -> str:
    """A signature name from a tensor name: ``serving_default_image:0`` -> ``image``."""
    base = name.removeprefix("serving_default_").split(":")[0] or fallback
    base = "".join(c if c.isalnum() or c in "_-." else "_" for c in base)
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


def with_default_signature(data: bytes) -> tuple[bytes, bool]:
    """The model with a ``serving_default`` signature over subgraph 0; ``(data, False)`` when it
    already has a signature."""
    model = _load(data)
    if model.signatureDefs:
        return data, False
    s = _schema()
    if not model.subgraphs:
        raise OptimizeError("the model has no subgraph")
    graph = model.subgraphs[0]

    def maps(indices: Any, prefix: str) -> list[Any]:
        used: set[str] = set()
        result = []
        for n, index in enumerate(indices if indices is not None else []):
            t = s.TensorMapT()
            t.name = _signature_name(_text(graph.tensors[int(index)].name), used, f"{prefix}_{n}")
            t.tensorIndex = int(index)
            result.append(t)
        return result

    sd = s.SignatureDefT()
    sd.signatureKey = DEFAULT_SIGNATURE
    sd.subgraphIndex = 0
    sd.inputs = maps(graph.inputs, "input")
    sd.outputs = maps(graph.outputs, "output")
    model.signatureDefs = [sd]
    return _pack(model, len(data)), True


def _op_name(model: Any, code_index: int) -> str:
    code = model.operatorCodes[code_index]
    builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
    return BUILTIN_OPS.get(builtin, f"BUILTIN_{builtin}")


def prune(data: bytes, fraction: float) -> tuple[bytes, list[PrunedTensor]]:
    """Zero the ``fraction`` smallest-magnitude weights of each float32 kernel (input 1 of CONV_2D,
    DEPTHWISE_CONV_2D, FULLY_CONNECTED, ...). Biases are left alone. Without fine-tuning this is
    lossy: the caller measures what it costs."""
    if not 0.0 < fraction < 1.0:
        raise OptimizeError(f"--prune must be between 0 and 1 (exclusive), got {fraction}")
    model = _load(data)
    done: list[PrunedTensor] = []
    seen: set[int] = set()
    graph = model.subgraphs[0]
    for op in graph.operators or []:
        name = _op_name(model, int(op.opcodeIndex))
        inputs = list(op.inputs if op.inputs is not None else [])
        if name not in WEIGHT_OPS or len(inputs) < 2 or inputs[1] < 0 or inputs[1] in seen:
            continue
        index = int(inputs[1])
        tensor = graph.tensors[index]
        buffer = model.buffers[int(tensor.buffer)] if 0 < tensor.buffer < len(model.buffers) else None
        if tensor.type != FLOAT32 or buffer is None or buffer.data is None or len(buffer.data) == 0:
            continue
        seen.add(index)
        weights = np.frombuffer(np.asarray(buffer.data, dtype=np.uint8).tobytes(), dtype="<f4").copy()
        before = int(weights.size - np.count_nonzero(weights))
        k = round(weights.size * fraction)
        if k > 0:
            cut = np.partition(np.abs(weights), k - 1)[k - 1]
            weights[np.abs(weights) <= cut] = 0.0
        buffer.data = np.frombuffer(weights.astype("<f4").tobytes(), dtype=np.uint8)
        after = int(weights.size - np.count_nonzero(weights))
        done.append(PrunedTensor(_text(tensor.name), name, int(weights.size), before, after))
    if not done:
        raise OptimizeError("--prune: the model has no float32 kernel to prune")
    return _pack(model, len(data)), done

"""What an .onnx file contains, read without onnx or onnxruntime.

:func:`parse_onnx` walks the protobuf (:mod:`protobuf`, bounds-checked) into an :class:`OnnxInfo`:
opsets, graph inputs and outputs with their element types and shapes (symbolic dimensions kept by
name), operators with counts, the zeros in the weights, and the quantization at the graph's edges
of an int8 QDQ model, read from the QuantizeLinear/DequantizeLinear nodes next to each input and
output. A bad file raises :class:`ModelFormatError`; nothing here can crash the process.
A model that points at external data files is refused: a model must not make the daemon read
other files (ONNX external data is a path relative to the model, chosen by whoever wrote it).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import ModelFileError, ModelFormatError
from edge_runtime.runtime.modelfile import TFLITE_IDENTIFIER, ModelInfo, WeightSparsity, read_model_file
from edge_runtime.runtime.onnxproto import ITEMSIZE, Graph, Initializer, Node, ValueInfo, array, parse_graph
from edge_runtime.runtime.protobuf import fields, signed64
from edge_runtime.runtime.quant import QuantParams

log = logging.getLogger(__name__)

ONNX_SUFFIX = ".onnx"
IR_VERSION_TAG = 0x08  # field 1 (ir_version), varint: the first byte of a serialized ModelProto
MAX_OPSET_DOMAINS = 64
WEIGHT_INPUTS = {
    "Conv": 1,
    "ConvTranspose": 1,
    "Gemm": 1,
    "MatMul": 1,
    "ConvInteger": 1,
    "MatMulInteger": 1,
    "QLinearConv": 3,
    "QLinearMatMul": 3,
}
QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
# ops that move values without changing them: quantization passes through (exporters put them
# between an input and its QuantizeLinear, e.g. tf2onnx's NHWC -> NCHW reshape)
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
MAX_LAYOUT_HOPS = 4


@dataclass(frozen=True)
class OnnxInfo:
    """Everything ``inspect`` and the onnxruntime backend need to know about an .onnx file."""

    path: str
    size_bytes: int
    sha256: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    nodes: tuple[Node, ...]
    weights: tuple[WeightSparsity, ...]
    initializer_count: int

    needs_edgetpu = False  # for the delegate checks shared with TFLite models

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(Counter(_op_label(n) for n in self.nodes).most_common())

    @property
    def qdq(self) -> bool:
        """An int8/uint8 QDQ model: QuantizeLinear and DequantizeLinear nodes in its graph."""
        ops = {n.op_type for n in self.nodes}
        return QUANTIZE in ops and DEQUANTIZE in ops

    @property
    def weight_sparsity(self) -> float:
        total = sum(w.elements for w in self.weights)
        return sum(w.zeros for w in self.weights) / total if total else 0.0


def _op_label(node: Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def is_onnx_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


# -- messages ---------------------------------------------------------------------------------------


# -- the model --------------------------------------------------------------------------------------


def parse_onnx(data: bytes | memoryview, what: str = "model") -> OnnxInfo:
    """Parse a whole .onnx file. Raises :class:`ModelFormatError` when it is not one."""
    view = memoryview(data)
    if len(view) == 0:
        raise ModelFormatError(f"{what}: empty file, not an ONNX model")
    try:
        return _parse(view, what)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{what}: not a valid ONNX model: {exc}") from None
    except (ValueError, OverflowError, MemoryError, RecursionError) as exc:
        raise ModelFormatError(f"{what}: not a valid ONNX model: {type(exc).__name__}: {exc}") from None


def _parse(view: memoryview, what: str) -> OnnxInfo:
    ir_version = -1
    opsets: dict[str, int] = {}
    producer = ""
    graph_data: memoryview | None = None
    for f in fields(view):
        if f.number == 1:
            ir_version = f.as_int("ir_version")
        elif f.number == 2:
            producer = f.as_str("producer_name")
        elif f.number == 8:
            domain, version = "", 0
            for o in fields(f.as_bytes("opset_import"), 1):
                if o.number == 1:
                    domain = o.as_str("opset domain")
                elif o.number == 2:
                    version = signed64(o.as_int("opset version"))
            if len(opsets) >= MAX_OPSET_DOMAINS:
                raise ModelFormatError(f"more than {MAX_OPSET_DOMAINS} opset imports")
            opsets[domain or "ai.onnx"] = version
        elif f.number == 7:
            graph_data = f.as_bytes("graph")
    if ir_version < 1 or ir_version > 64:
        raise ModelFormatError(f"no plausible ir_version (got {ir_version})")
    if graph_data is None:
        raise ModelFormatError("no graph")
    if "ai.onnx" not in opsets:
        raise ModelFormatError("no default-domain opset_import")
    graph = Graph()
    parse_graph(graph_data, "graph", 0, graph)
    inputs = [v for v in graph.inputs if v.name not in graph.initializer_names]
    if not inputs or not graph.outputs:
        raise ModelFormatError(f"graph has {len(inputs)} inputs and {len(graph.outputs)} outputs")
    for v in inputs + graph.outputs:
        if v.dtype not in ITEMSIZE:
            raise ModelFormatError(f"graph input/output {v.name!r} has unsupported type {v.dtype}")
    nodes = tuple(graph.nodes)
    return OnnxInfo(
        path=what,
        size_bytes=len(view),
        sha256=hashlib.sha256(view).hexdigest(),
        ir_version=ir_version,
        opsets=opsets,
        producer=producer,
        inputs=tuple(_input_edge(v, nodes, graph.constants) for v in inputs),
        outputs=tuple(_output_edge(v, nodes, graph.constants) for v in graph.outputs),
        nodes=nodes,
        weights=_weights(nodes, graph.constants),
        initializer_count=len(graph.initializer_names),
    )


def _qparams(node: Node, constants: dict[str, Initializer]) -> QuantParams | None:
    """Scale and zero point of a QuantizeLinear/DequantizeLinear node with constant parameters."""
    if len(node.inputs) < 2 or node.inputs[1] not in constants:
        return None
    scale = array(constants[node.inputs[1]])
    if scale is None or scale.size == 0 or constants[node.inputs[1]].dtype not in ("float32", "float16"):
        return None
    dtype = "uint8"  # the default of QuantizeLinear without a zero point
    zero: np.ndarray = np.zeros(scale.size, dtype=np.int64)
    if len(node.inputs) > 2 and node.inputs[2]:
        zp_t = constants.get(node.inputs[2])
        zp = array(zp_t) if zp_t is not None else None
        if zp is None or zp_t is None or zp.size != scale.size:
            return None
        dtype, zero = zp_t.dtype, zp.astype(np.int64)
    if dtype not in ("int8", "uint8", "int16") or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return None
    axis = node.attributes.get("axis", 1)
    try:
        return QuantParams(
            tuple(float(s) for s in scale.astype(np.float64)),
            tuple(int(z) for z in zero),
            dtype,
            int(axis) if scale.size > 1 and isinstance(axis, int) else 0,
        )
    except ValueError:
        return None


def _consumers(name: str, nodes: tuple[Node, ...]) -> list[Node]:
    """The nodes reading ``name``, looking through single-consumer layout ops."""
    consumers = [n for n in nodes if name in n.inputs]
    for _ in range(MAX_LAYOUT_HOPS):
        if len(consumers) != 1 or consumers[0].op_type not in LAYOUT_OPS or consumers[0].inputs[0] != name:
            break
        name = consumers[0].outputs[0] if consumers[0].outputs else ""
        consumers = [n for n in nodes if name in n.inputs]
    return consumers


def _producers(name: str, nodes: tuple[Node, ...], hops: int = MAX_LAYOUT_HOPS) -> list[Node] | None:
    """The nodes whose values reach ``name`` unchanged: through layout ops and Concat (whose inputs
    must then all come from such nodes); None when something else computes it."""
    producer = next((n for n in nodes if name in n.outputs), None)
    if producer is None or hops < 0:
        return None
    if producer.op_type in LAYOUT_OPS and producer.inputs:
        return _producers(producer.inputs[0], nodes, hops - 1)
    if producer.op_type == "Concat" and producer.inputs:
        found: list[Node] = []
        for source in producer.inputs:
            nodes_in = _producers(source, nodes, hops - 1)
            if nodes_in is None:
                return None
            found.extend(nodes_in)
        return found
    return [producer]


def _input_edge(v: ValueInfo, nodes: tuple[Node, ...], constants: dict[str, Initializer]) -> ValueInfo:
    consumers = _consumers(v.name, nodes)
    if not consumers:
        return v
    if v.dtype in ("float32", "float16") and all(n.op_type == QUANTIZE for n in consumers):
        params = {_qparams(n, constants) for n in consumers}
        if len(params) == 1 and None not in params:
            return ValueInfo(v.name, v.dtype, v.dims, params.pop(), float_edge=True)
    if v.dtype in ("int8", "uint8", "int16") and all(n.op_type == DEQUANTIZE for n in consumers):
        params = {_qparams(n, constants) for n in consumers}
        if len(params) == 1 and None not in params:
            return ValueInfo(v.name, v.dtype, v.dims, params.pop())
    return v


def _output_edge(v: ValueInfo, nodes: tuple[Node, ...], constants: dict[str, Initializer]) -> ValueInfo:
    producers = _producers(v.name, nodes)
    if not producers:
        return v
    params = {_qparams(n, constants) for n in producers}
    if len(params) != 1 or None in params:
        return v
    if v.dtype in ("float32", "float16") and all(n.op_type == DEQUANTIZE for n in producers):
        return ValueInfo(v.name, v.dtype, v.dims, params.pop(), float_edge=True)
    if v.dtype in ("int8", "uint8", "int16") and all(n.op_type == QUANTIZE for n in producers):
        return ValueInfo(v.name, v.dtype, v.dims, params.pop())
    return v


def _weights(nodes: tuple[Node, ...], constants: dict[str, Initializer]) -> tuple[WeightSparsity, ...]:
    produced_by = {out: n for n in nodes for out in n.outputs}
    seen: set[str] = set()
    result: list[WeightSparsity] = []
    for node in nodes:
        position = WEIGHT_INPUTS.get(node.op_type)
        if position is None or len(node.inputs) <= position:
            continue
        name = node.inputs[position]
        zero_point = 0
        source = produced_by.get(name)
        if source is not None and source.op_type == DEQUANTIZE and source.inputs:
            q = _qparams(source, constants)
            name = source.inputs[0]
            zero_point = q.zero_point[0] if q is not None and not q.per_channel else 0
        tensor = constants.get(name)
        if tensor is None or name in seen:
            continue
        values = array(tensor)
        if values is None:
            continue
        seen.add(name)
        zeros = int(np.count_nonzero(values == zero_point))
        result.append(WeightSparsity(name, node.op_type, int(values.size), zeros))
    return tuple(result)


def read_onnx_file(path: str | Path) -> tuple[OnnxInfo, bytes]:
    """Read and parse an .onnx file; returns its info and its bytes."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError as exc:
        raise ModelFileError(f"{p}: is a directory, not a model file") from exc
    except FileNotFoundError as exc:
        raise ModelFileError(f"{p}: no such model file") from exc
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot read model file: {exc.strerror or exc}") from exc
    return parse_onnx(data, str(p)), data


def onnx_twin(path: Path) -> Path:
    """The .onnx twin of a .tflite file (the same name next to it), for ``backend = "onnxruntime"``."""
    twin = path.with_suffix(ONNX_SUFFIX)
    if not twin.is_file():
        raise ModelFileError(
            f"{path}: backend onnxruntime runs .onnx models and there is no ONNX twin {twin.name} next to it"
        )
    log.info("%s: backend onnxruntime runs its ONNX twin %s", path, twin.name)
    return twin


def is_onnx_file(path: str | Path) -> bool:
    """An .onnx name; or, for a file kept under another name (the OTA store keeps every model as
    ``{sha256}.tflite``), content that is not a TFLite flatbuffer and starts as a serialized ONNX
    ModelProto does (field 1, ``ir_version``)."""
    if is_onnx_path(path):
        return True
    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
    except OSError:
        return False  # the TFLite reader reports it
    return len(head) == 8 and head[4:8] != TFLITE_IDENTIFIER and head[0] == IR_VERSION_TAG


def read_any_model_file(path: str | Path) -> tuple[ModelInfo | OnnxInfo, bytes]:
    """An ONNX file (:func:`is_onnx_file`) through :func:`read_onnx_file`, anything else as a
    .tflite flatbuffer."""
    if is_onnx_file(path):
        return read_onnx_file(path)
    return read_model_file(path)

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
from edge_runtime.runtime.modelfile import ModelInfo, read_model_file
from edge_runtime.runtime.protobuf import Field, fields, packed_floats, packed_varints, signed64
from edge_runtime.runtime.quant import QuantParams

log = logging.getLogger(__name__)

ONNX_SUFFIX = ".onnx"
MAX_OPSET_DOMAINS = 64
MAX_SUBGRAPH_DEPTH = 8
# values stored in typed fields (float_data, int32_data, ...) are decoded one Python object each:
# bounded, so a hostile file cannot make the reader hold a list ~30x its own size
MAX_TYPED_VALUES = 1 << 20

# TensorProto.DataType -> numpy name
ELEM_TYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8e4m3fn",
    18: "float8e4m3fnuz",
    19: "float8e5m2",
    20: "float8e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4e2m1",
}
_ITEMSIZE = {
    "float32": 4,
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
    "float16": 2,
    "float64": 8,
    "uint32": 4,
    "uint64": 8,
}
# operator -> position of its weight input, for the sparsity figure
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
class Initializer:
    name: str
    dtype: str
    dims: tuple[int, ...]
    data: (
        bytes | memoryview
    )  # little-endian raw values (a view into the file, not a copy); empty when unknown


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, int | float | str | Initializer]


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: ``dims`` holds ints and, for symbolic dimensions, their names
    (an unnamed unknown dimension is ``"?"``)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    # quantization at this edge, from the QuantizeLinear/DequantizeLinear next to it
    quant: QuantParams | None = None
    # True when the graph holds floats here and the quantized view is ours (float edge of a QDQ model)
    float_edge: bool = False


@dataclass(frozen=True)
class WeightZeros:
    tensor: str
    op: str
    elements: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


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
    weights: tuple[WeightZeros, ...]
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


def _dims(f: Field) -> list[int]:
    return packed_varints(f, "dims")


def _tensor(data: memoryview, what: str) -> tuple[Initializer, bool]:
    """A TensorProto; the flag says whether it lives in an external file."""
    name, dtype_code, dims = "", 0, []
    raw: memoryview | None = None
    typed: list[Field] = []
    external = False
    for f in fields(data, 3):
        if f.number == 1:
            dims.extend(_dims(f))
        elif f.number == 2:
            dtype_code = f.as_int(f"{what}: data_type")
        elif f.number == 8:
            name = f.as_str(f"{what}: name")
        elif f.number == 9:
            raw = f.as_bytes(f"{what}: raw_data")
        elif f.number in (4, 5, 7, 10, 11):
            typed.append(f)
        elif f.number == 14:
            external = external or f.as_int(f"{what}: data_location") == 1
        elif f.number == 13:
            external = True
    what = f"{what} {name!r}"
    if any(d < 0 for d in dims):
        raise ModelFormatError(f"{what}: negative dimension in {dims}")
    dtype = ELEM_TYPES.get(dtype_code, f"type_{dtype_code}")
    count = 1
    for d in dims:
        count *= d
    payload: bytes | memoryview = b""
    itemsize = _ITEMSIZE.get(dtype)
    if itemsize and not external:
        if raw is not None:
            if len(raw) != count * itemsize:
                raise ModelFormatError(
                    f"{what}: {len(raw)} bytes of raw data for {count} {dtype} values of shape {dims}"
                )
            payload = raw
        elif typed and count <= MAX_TYPED_VALUES:  # larger ones stay unread (no sparsity figure)
            payload = _typed_payload(typed, dtype, count, what)
    return Initializer(name, dtype, tuple(dims), payload), external


def _typed_payload(typed: list[Field], dtype: str, count: int, what: str) -> bytes:
    values: list[float] | list[int]
    if dtype == "float32":
        values = [v for f in typed if f.number == 4 for v in packed_floats(f, what)]
    elif dtype in ("float64",):
        raise ModelFormatError(f"{what}: double_data is not supported, store raw_data")
    else:
        values = [v for f in typed if f.number in (5, 7, 11) for v in packed_varints(f, what)]
    if len(values) != count:
        raise ModelFormatError(f"{what}: {len(values)} values for {count} elements")
    if dtype == "float16":  # stored as the uint16 bit patterns
        return np.asarray(values, dtype=np.uint16).tobytes()
    try:
        return np.asarray(values, dtype=dtype).tobytes()
    except (OverflowError, ValueError) as exc:
        raise ModelFormatError(f"{what}: values out of range for {dtype}") from exc


def _value_info(data: memoryview, what: str) -> ValueInfo:
    name, dtype, dims = "", "undefined", []
    for f in fields(data, 3):
        if f.number == 1:
            name = f.as_str(f"{what}: name")
        elif f.number == 2:
            for t in fields(f.as_bytes(f"{what}: type"), 4):
                if t.number != 1:  # not a tensor (sequence, map, optional, sparse)
                    dtype = "non-tensor"
                    continue
                for tt in fields(t.as_bytes(f"{what}: tensor_type"), 5):
                    if tt.number == 1:
                        code = tt.as_int(f"{what}: elem_type")
                        dtype = ELEM_TYPES.get(code, f"type_{code}")
                    elif tt.number == 2:
                        for sh in fields(tt.as_bytes(f"{what}: shape"), 6):
                            if sh.number == 1:
                                dims.append(_dimension(sh.as_bytes(f"{what}: dim"), what))
    return ValueInfo(name, dtype, tuple(dims))


def _dimension(data: memoryview, what: str) -> int | str:
    value: int | str = "?"
    for f in fields(data, 7):
        if f.number == 1:
            value = signed64(f.as_int(f"{what}: dim_value"))
        elif f.number == 2:
            value = f.as_str(f"{what}: dim_param") or "?"
    if isinstance(value, int) and value < 0:
        return "?"
    return value


def _attribute(
    data: memoryview, what: str, depth: int, graph: _Graph
) -> tuple[str, int | float | str | Initializer]:
    name = ""
    value: int | float | str | Initializer | None = None
    ints: list[int] = []
    for f in fields(data, depth + 1):
        if f.number == 1:
            name = f.as_str(f"{what}: attribute name")
        elif f.number == 3:
            value = signed64(f.as_int(f"{what}: attribute i"))
        elif f.number == 2:
            raw = f.as_int(f"{what}: attribute f")
            value = float(np.frombuffer(raw.to_bytes(4, "little"), dtype="<f4")[0])
        elif f.number == 4:
            value = bytes(f.as_bytes(f"{what}: attribute s")).decode("utf-8", "replace")
        elif f.number == 5:  # a tensor (Constant nodes)
            tensor, external = _tensor(f.as_bytes(f"{what}: attribute t"), f"{what} attribute tensor")
            if external:
                raise ModelFormatError(f"{what}: a constant refers to external data, which is refused")
            value = tensor
        elif f.number in (6, 11):  # subgraphs (If, Loop, Scan)
            if depth >= MAX_SUBGRAPH_DEPTH:
                raise ModelFormatError(f"subgraphs nested deeper than {MAX_SUBGRAPH_DEPTH}")
            _graph(f.as_bytes(f"{what}: subgraph"), f"{what} subgraph", depth + 1, graph)
        elif f.number == 8:
            ints.extend(packed_varints(f, what))
    return name, value if value is not None else len(ints)


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.constants: dict[str, Initializer] = {}
        self.inputs: list[ValueInfo] = []
        self.outputs: list[ValueInfo] = []
        self.initializer_names: set[str] = set()


def _graph(data: memoryview, what: str, depth: int, graph: _Graph) -> None:
    top = depth == 0
    for f in fields(data, depth + 2):
        if f.number == 1:
            graph.nodes.append(
                _node(f.as_bytes(f"{what}: node"), f"{what} node {len(graph.nodes)}", depth, graph)
            )
        elif f.number == 5:
            tensor, external = _tensor(f.as_bytes(f"{what}: initializer"), f"{what} initializer")
            if external:
                raise ModelFormatError(
                    f"initializer {tensor.name!r} refers to an external data file, which is refused: "
                    "save the model with its weights inside (onnx.save(..., save_as_external_data=False))"
                )
            graph.constants[tensor.name] = tensor
            graph.initializer_names.add(tensor.name)
        elif f.number == 11 and top:
            graph.inputs.append(_value_info(f.as_bytes(f"{what}: input"), f"{what} input"))
        elif f.number == 12 and top:
            graph.outputs.append(_value_info(f.as_bytes(f"{what}: output"), f"{what} output"))


def _node(data: memoryview, what: str, depth: int, graph: _Graph) -> Node:
    op_type, domain = "", ""
    inputs: list[str] = []
    outputs: list[str] = []
    attributes: dict[str, int | float | str | Initializer] = {}
    for f in fields(data, depth + 3):
        if f.number == 1:
            inputs.append(f.as_str(f"{what}: input"))
        elif f.number == 2:
            outputs.append(f.as_str(f"{what}: output"))
        elif f.number == 4:
            op_type = f.as_str(f"{what}: op_type")
        elif f.number == 7:
            domain = f.as_str(f"{what}: domain")
        elif f.number == 5:
            key, value = _attribute(f.as_bytes(f"{what}: attribute"), what, depth, graph)
            attributes[key] = value
    if not op_type:
        raise ModelFormatError(f"{what}: no op_type")
    constant = attributes.get("value")
    if op_type == "Constant" and outputs and isinstance(constant, Initializer):
        graph.constants[outputs[0]] = constant
    return Node(op_type, domain, tuple(inputs), tuple(outputs), attributes)


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
    graph = _Graph()
    _graph(graph_data, "graph", 0, graph)
    inputs = [v for v in graph.inputs if v.name not in graph.initializer_names]
    if not inputs or not graph.outputs:
        raise ModelFormatError(f"graph has {len(inputs)} inputs and {len(graph.outputs)} outputs")
    for v in inputs + graph.outputs:
        if v.dtype not in _ITEMSIZE:
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


def _array(t: Initializer) -> np.ndarray | None:
    if not t.data or t.dtype not in _ITEMSIZE:
        return None
    dtype = np.dtype("<u2") if t.dtype == "float16" else np.dtype(t.dtype).newbyteorder("<")
    a = np.frombuffer(t.data, dtype=dtype)
    return a.view(np.float16) if t.dtype == "float16" else a


def _qparams(node: Node, constants: dict[str, Initializer]) -> QuantParams | None:
    """Scale and zero point of a QuantizeLinear/DequantizeLinear node with constant parameters."""
    if len(node.inputs) < 2 or node.inputs[1] not in constants:
        return None
    scale = _array(constants[node.inputs[1]])
    if scale is None or scale.size == 0 or constants[node.inputs[1]].dtype not in ("float32", "float16"):
        return None
    dtype = "uint8"  # the default of QuantizeLinear without a zero point
    zero: np.ndarray = np.zeros(scale.size, dtype=np.int64)
    if len(node.inputs) > 2 and node.inputs[2]:
        zp_t = constants.get(node.inputs[2])
        zp = _array(zp_t) if zp_t is not None else None
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


def _weights(nodes: tuple[Node, ...], constants: dict[str, Initializer]) -> tuple[WeightZeros, ...]:
    produced_by = {out: n for n in nodes for out in n.outputs}
    seen: set[str] = set()
    result: list[WeightZeros] = []
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
        values = _array(tensor)
        if values is None:
            continue
        seen.add(name)
        zeros = int(np.count_nonzero(values == zero_point))
        result.append(WeightZeros(name, node.op_type, int(values.size), zeros))
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


def read_any_model_file(path: str | Path) -> tuple[ModelInfo | OnnxInfo, bytes]:
    """An .onnx file through :func:`read_onnx_file`, anything else as a .tflite flatbuffer."""
    if is_onnx_path(path):
        return read_onnx_file(path)
    return read_model_file(path)

"""The ONNX protobuf messages edge-runtime reads: tensors, value infos, nodes and graphs.

Built on the bounds-checked wire reader (:mod:`protobuf`); every message is read with a nesting
limit and every length checked, so a bad file raises :class:`ModelFormatError`. The model-level
view (opsets, edges, quantization, sparsity) is :mod:`edge_runtime.runtime.onnxfile`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ModelFormatError
from edge_runtime.runtime.protobuf import Field, fields, packed_floats, packed_varints, signed64
from edge_runtime.runtime.quant import QuantParams

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
ITEMSIZE = {
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
    itemsize = ITEMSIZE.get(dtype)
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
    data: memoryview, what: str, depth: int, graph: Graph
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
            parse_graph(f.as_bytes(f"{what}: subgraph"), f"{what} subgraph", depth + 1, graph)
        elif f.number == 8:
            ints.extend(packed_varints(f, what))
    return name, value if value is not None else len(ints)


class Graph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.constants: dict[str, Initializer] = {}
        self.inputs: list[ValueInfo] = []
        self.outputs: list[ValueInfo] = []
        self.initializer_names: set[str] = set()


def parse_graph(data: memoryview, what: str, depth: int, graph: Graph) -> None:
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


def _node(data: memoryview, what: str, depth: int, graph: Graph) -> Node:
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


def array(t: Initializer) -> np.ndarray | None:
    if not t.data or t.dtype not in ITEMSIZE:
        return None
    dtype = np.dtype("<u2") if t.dtype == "float16" else np.dtype(t.dtype).newbyteorder("<")
    a = np.frombuffer(t.data, dtype=dtype)
    return a.view(np.float16) if t.dtype == "float16" else a

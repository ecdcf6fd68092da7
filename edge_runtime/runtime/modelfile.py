"""What a .tflite file contains, read without any inference runtime.

:func:`read_model_file` parses the flatbuffer (bounds-checked) into a :class:`ModelInfo`: tensors
with their quantization, operators with counts, custom ops, whether the model is fully integer,
and the share of zeros in its constant weights. Everything here is pure and safe on hostile
input: a bad file raises :class:`ModelFormatError`, it never crashes the process.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import ModelFileError, ModelFormatError
from edge_runtime.runtime.flatbuffer import Buffer, Table, root
from edge_runtime.runtime.opcodes import BUILTIN_OPS

TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
CUSTOM_OPCODE = 32

TENSOR_TYPES: dict[int, str] = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    8: "complex64",
    9: "int8",
    10: "float64",
    11: "complex128",
    12: "uint64",
    13: "resource",
    14: "variant",
    15: "uint32",
    16: "uint16",
    17: "int4",
    18: "bfloat16",
    19: "int2",
    20: "uint4",
    21: "float8_e4m3fn",
    22: "float8_e5m2",
}
FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16", "float8_e4m3fn", "float8_e5m2"})
INTEGER_ACTIVATION_TYPES = frozenset({"int8", "uint8", "int16"})
_NUMPY_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "uint8": np.uint8,
    "int64": np.int64,
    "bool": np.bool_,
    "int16": np.int16,
    "int8": np.int8,
    "float64": np.float64,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
}
# Operators whose input 1 is a weight tensor (kernel), for the sparsity figure.
WEIGHT_OPS = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "TRANSPOSE_CONV",
        "CONV_3D",
        "CONV_3D_TRANSPOSE",
        "BATCH_MATMUL",
        "EMBEDDING_LOOKUP",
    }
)


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: ``real = scale * (q - zero_point)``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    quantization: Quantization | None
    is_constant: bool
    is_sparse: bool
    nbytes: int


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class WeightSparsity:
    tensor: str
    op: str
    elements: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


@dataclass(frozen=True)
class ModelInfo:
    """Everything ``inspect`` reports about a model file."""

    path: str
    size_bytes: int
    sha256: str
    schema_version: int
    description: str
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[OperatorInfo, ...]
    subgraphs: int
    weights: tuple[WeightSparsity, ...] = field(default=())

    @property
    def input_tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self.tensors[i] for i in self.inputs)

    @property
    def output_tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self.tensors[i] for i in self.outputs)

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.name for op in self.operators).most_common())

    @property
    def custom_ops(self) -> tuple[str, ...]:
        return tuple(sorted({op.name for op in self.operators if op.custom}))

    @property
    def needs_edgetpu(self) -> bool:
        return EDGETPU_CUSTOM_OP in self.custom_ops

    @property
    def float_tensors(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors if t.dtype in FLOAT_TYPES)

    @property
    def fully_integer(self) -> bool:
        """No float tensor anywhere; inputs, outputs and activations are 8/16-bit integers."""
        if self.float_tensors:
            return False
        activations = [t for t in self.tensors if not t.is_constant]
        ints = INTEGER_ACTIVATION_TYPES | {"int32", "int64", "bool"}
        io_ok = all(t.dtype in INTEGER_ACTIVATION_TYPES for t in self.input_tensors + self.output_tensors)
        return io_ok and all(t.dtype in ints for t in activations)

    @property
    def weight_sparsity(self) -> float:
        total = sum(w.elements for w in self.weights)
        return sum(w.zeros for w in self.weights) / total if total else 0.0


def _quantization(table: Table | None) -> Quantization | None:
    if table is None:
        return None
    scale = table.floats(2)
    zero_point = table.ints(3, table.buf.i64, 8)
    if not scale:
        return None
    if len(zero_point) < len(scale):
        zero_point = zero_point + [0] * (len(scale) - len(zero_point))
    axis = table.scalar(6, table.buf.i32)
    return Quantization(tuple(scale), tuple(zero_point), axis)


def _buffer_data(buf: Buffer, table: Table) -> memoryview:
    data = table.bytes(0)
    if data is not None and len(data):
        return data
    # Models over 2 GB keep buffers outside the flatbuffer, addressed by offset and size.
    offset = table.scalar(1, buf.u64)
    size = table.scalar(2, buf.u64)
    if offset > 1 and size:
        buf.check(offset, size)
        return buf.data[offset : offset + size]
    return memoryview(b"")


def _zeros(data: memoryview, dtype: str) -> tuple[int, int]:
    """(elements, zeros) of a constant tensor's raw data."""
    np_type = _NUMPY_TYPES.get(dtype)
    if np_type is None:
        return 0, 0
    itemsize = np.dtype(np_type).itemsize
    usable = len(data) - len(data) % itemsize
    values: npt.NDArray[Any] = np.frombuffer(data[:usable], dtype=np_type)
    return int(values.size), int(values.size - np.count_nonzero(values))


def parse_model(data: bytes | memoryview, what: str = "model") -> ModelInfo:
    """Parse TFLite flatbuffer bytes; ``what`` names the file in error messages."""
    buf = Buffer(data, what)
    if buf.size == 0:
        raise ModelFormatError(f"{what}: empty file, not a TFLite model")
    model = root(buf, TFLITE_IDENTIFIER)
    version = model.scalar(0, buf.u32)
    codes: list[tuple[str, bool]] = []
    for code in model.tables(1):
        builtin = max(code.scalar(0, buf.i8), code.scalar(3, buf.i32))
        if builtin == CUSTOM_OPCODE:
            codes.append((code.string(1) or "<unnamed custom op>", True))
        else:
            codes.append((BUILTIN_OPS.get(builtin, f"BUILTIN_{builtin}"), False))
    subgraphs = model.tables(2)
    if not subgraphs:
        raise buf.fail("no subgraph")
    buffers = model.tables(4)
    main = subgraphs[0]
    tensors: list[TensorInfo] = []
    raw_data: dict[int, memoryview] = {}
    for index, tensor in enumerate(main.tables(0)):
        buffer_index = tensor.scalar(2, buf.u32)
        data = memoryview(b"")
        if 0 < buffer_index < len(buffers):
            data = _buffer_data(buf, buffers[buffer_index])
        elif buffer_index >= len(buffers) and buffer_index:
            raise buf.fail(f"tensor {index} refers to buffer {buffer_index} of {len(buffers)}")
        type_code = tensor.scalar(1, buf.i8)
        raw_data[index] = data
        tensors.append(
            TensorInfo(
                index=index,
                name=tensor.string(3) or f"tensor_{index}",
                shape=tuple(tensor.ints(0, buf.i32, 4)),
                dtype=TENSOR_TYPES.get(type_code, f"type_{type_code}"),
                buffer=buffer_index,
                quantization=_quantization(tensor.table(4)),
                is_constant=len(data) > 0,
                is_sparse=tensor.has(6),
                nbytes=len(data),
            )
        )
    operators: list[OperatorInfo] = []
    for op in main.tables(3):
        code_index = op.scalar(0, buf.u32)
        if code_index >= len(codes):
            raise buf.fail(f"operator refers to opcode {code_index} of {len(codes)}")
        name, custom = codes[code_index]
        operators.append(
            OperatorInfo(name, custom, tuple(op.ints(1, buf.i32, 4)), tuple(op.ints(2, buf.i32, 4)))
        )
    for sub in subgraphs[1:]:
        for op in sub.tables(3):
            code_index = op.scalar(0, buf.u32)
            if code_index >= len(codes):
                raise buf.fail(f"operator refers to opcode {code_index} of {len(codes)}")
            name, custom = codes[code_index]
            operators.append(OperatorInfo(name, custom, (), ()))
    inputs = tuple(main.ints(1, buf.i32, 4))
    outputs = tuple(main.ints(2, buf.i32, 4))
    for i in inputs + outputs:
        if not 0 <= i < len(tensors):
            raise buf.fail(f"input/output tensor {i} of {len(tensors)}")
    weights = _weight_sparsity(tensors, operators, raw_data)
    return ModelInfo(
        path=what,
        size_bytes=buf.size,
        sha256=hashlib.sha256(buf.data).hexdigest(),
        schema_version=version,
        description=model.string(3) or "",
        tensors=tuple(tensors),
        inputs=inputs,
        outputs=outputs,
        operators=tuple(operators),
        subgraphs=len(subgraphs),
        weights=weights,
    )


def _weight_sparsity(
    tensors: list[TensorInfo], operators: list[OperatorInfo], raw: dict[int, memoryview]
) -> tuple[WeightSparsity, ...]:
    seen: set[int] = set()
    result: list[WeightSparsity] = []
    for op in operators:
        if op.name not in WEIGHT_OPS or len(op.inputs) < 2:
            continue
        index = op.inputs[1]
        if index < 0 or index >= len(tensors) or index in seen:
            continue
        tensor = tensors[index]
        if not tensor.is_constant:
            continue
        seen.add(index)
        elements, zeros = _zeros(raw[index], tensor.dtype)
        if tensor.is_sparse and tensor.shape:
            # Stored compressed: the missing elements are the zeros.
            dense = int(np.prod(tensor.shape))
            zeros += max(dense - elements, 0)
            elements = max(dense, elements)
        result.append(WeightSparsity(tensor.name, op.name, elements, zeros))
    return tuple(result)


def read_model_file(path: str | Path) -> tuple[ModelInfo, bytes]:
    """Read and parse a model file; returns its info and its bytes."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError as exc:
        raise ModelFileError(f"{p}: is a directory, not a model file") from exc
    except FileNotFoundError as exc:
        raise ModelFileError(f"{p}: no such model file") from exc
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot read model file: {exc.strerror or exc}") from exc
    return parse_model(data, str(p)), data


def sparsity_json(total: float, weights: Sequence[WeightSparsity]) -> dict[str, Any]:
    """The ``weight_sparsity`` object of ``inspect --json`` (the .tflite and the .onnx report)."""
    return {
        "total": round(total, 4),
        "elements": sum(w.elements for w in weights),
        "zeros": sum(w.zeros for w in weights),
        "per_tensor": [
            {
                "tensor": w.tensor,
                "op": w.op,
                "elements": w.elements,
                "zeros": w.zeros,
                "sparsity": round(w.sparsity, 4),
            }
            for w in weights
        ],
    }

"""A bounds-checked, read-only protobuf wire-format reader: just enough to walk an .onnx file.

Every read is checked against the end of its message, lengths and varints are bounded, and nesting
depth is limited, so a hostile or damaged file raises :class:`ModelFormatError` instead of
crashing or exhausting memory. Fields are returned raw (ints, byte views, nested readers); the
ONNX schema on top of them is :mod:`edge_runtime.runtime.onnxfile`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from edge_runtime.errors import ModelFormatError

VARINT, I64, LEN, I32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10
MAX_DEPTH = 32  # nested messages (graphs inside If/Loop attributes included)


@dataclass(frozen=True)
class Field:
    """One field: its number, wire type and value (an int for VARINT/I64/I32, a view for LEN)."""

    number: int
    wire: int
    value: int | memoryview

    def as_int(self, what: str) -> int:
        if not isinstance(self.value, int):
            raise ModelFormatError(f"{what}: expected a number, got a length-delimited field")
        return self.value

    def as_bytes(self, what: str) -> memoryview:
        if isinstance(self.value, int):
            raise ModelFormatError(f"{what}: expected a length-delimited field, got a number")
        return self.value

    def as_str(self, what: str) -> str:
        try:
            return bytes(self.as_bytes(what)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{what}: not UTF-8 text") from exc


def read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``; returns (value, next position)."""
    result = 0
    for i in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise ModelFormatError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
    raise ModelFormatError(f"varint longer than {MAX_VARINT_BYTES} bytes at byte {pos}")


def signed64(value: int) -> int:
    """A varint read as int64 (protobuf stores negative int32/int64 as 10-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(data: memoryview, depth: int = 0) -> Iterator[Field]:
    """The fields of one message, in file order."""
    if depth > MAX_DEPTH:
        raise ModelFormatError(f"messages nested deeper than {MAX_DEPTH}")
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = read_varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ModelFormatError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = read_varint(data, pos, end)
            yield Field(number, wire, value)
        elif wire == I64:
            if pos + 8 > end:
                raise ModelFormatError(f"truncated 64-bit field {number}")
            yield Field(number, wire, int.from_bytes(data[pos : pos + 8], "little"))
            pos += 8
        elif wire == I32:
            if pos + 4 > end:
                raise ModelFormatError(f"truncated 32-bit field {number}")
            yield Field(number, wire, int.from_bytes(data[pos : pos + 4], "little"))
            pos += 4
        elif wire == LEN:
            length, pos = read_varint(data, pos, end)
            if length > end - pos:
                raise ModelFormatError(f"field {number} of {length} bytes runs past the end of its message")
            yield Field(number, wire, data[pos : pos + length])
            pos += length
        else:
            raise ModelFormatError(f"unsupported wire type {wire} for field {number}")


def packed_varints(field: Field, what: str) -> list[int]:
    """A repeated integer field: packed (one LEN field) or a single unpacked VARINT."""
    if isinstance(field.value, int):
        return [signed64(field.value)]
    data, pos, out = field.value, 0, []
    while pos < len(data):
        value, pos = read_varint(data, pos, len(data))
        out.append(signed64(value))
    return out


def packed_floats(field: Field, what: str) -> list[float]:
    """A repeated float field: packed or a single unpacked I32."""
    if isinstance(field.value, int):
        return [struct.unpack("<f", field.value.to_bytes(4, "little"))[0]]
    if len(field.value) % 4:
        raise ModelFormatError(f"{what}: packed floats of {len(field.value)} bytes")
    return [v[0] for v in struct.iter_unpack("<f", field.value)]

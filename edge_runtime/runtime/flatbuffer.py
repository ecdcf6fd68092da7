"""A bounds-checked, read-only FlatBuffers reader: just enough to walk a .tflite file.

The inference runtimes verify a model only partly before they use it, and some of them crash on
malformed files; this reader checks every offset against the buffer so that an empty, text,
random or truncated file gives a :class:`ModelFormatError` instead of a crash. It is pure Python
and imports no runtime, so ``inspect`` works whichever backend is installed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from edge_runtime.errors import ModelFormatError

_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")


class Buffer:
    """A byte buffer with checked little-endian reads."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data = memoryview(data)
        self.size = len(self.data)
        self.what = what

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.what}: not a valid TFLite flatbuffer: {message}")

    def check(self, pos: int, length: int) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise self.fail(f"offset {pos}+{length} outside the file ({self.size} bytes; truncated?)")

    def _read(self, fmt: struct.Struct, pos: int) -> int:
        self.check(pos, fmt.size)
        value: int = fmt.unpack_from(self.data, pos)[0]
        return value

    def i8(self, pos: int) -> int:
        return self._read(_I8, pos)

    def u16(self, pos: int) -> int:
        return self._read(_U16, pos)

    def i32(self, pos: int) -> int:
        return self._read(_I32, pos)

    def u32(self, pos: int) -> int:
        return self._read(_U32, pos)

    def i64(self, pos: int) -> int:
        return self._read(_I64, pos)

    def u64(self, pos: int) -> int:
        return self._read(_U64, pos)


class Table:
    """One FlatBuffers table: fields are looked up through its vtable."""

    def __init__(self, buf: Buffer, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - buf.i32(pos)
        vt_size = buf.u16(vtable)
        if vt_size < 4 or vt_size % 2:
            raise buf.fail(f"bad vtable size {vt_size} at {vtable}")
        buf.check(vtable, vt_size)
        self.vtable = vtable
        self.vt_size = vt_size

    def _field(self, index: int) -> int:
        """Absolute position of field ``index``, or 0 when the field is absent."""
        entry = 4 + 2 * index
        if entry >= self.vt_size:
            return 0
        offset = self.buf.u16(self.vtable + entry)
        return self.pos + offset if offset else 0

    def _indirect(self, pos: int) -> int:
        return pos + self.buf.u32(pos)

    def scalar(self, index: int, reader: Callable[[int], int], default: int = 0) -> int:
        pos = self._field(index)
        return reader(pos) if pos else default

    def has(self, index: int) -> bool:
        return self._field(index) != 0

    def table(self, index: int) -> Table | None:
        pos = self._field(index)
        return Table(self.buf, self._indirect(pos)) if pos else None

    def _vector(self, index: int, elem_size: int) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        pos = self._field(index)
        if not pos:
            return 0, 0
        vec = self._indirect(pos)
        length = self.buf.u32(vec)
        self.buf.check(vec + 4, length * elem_size)
        return vec + 4, length

    def string(self, index: int) -> str | None:
        raw = self.bytes(index)
        if raw is None:
            return None
        return bytes(raw).decode("utf-8", errors="replace")

    def bytes(self, index: int) -> memoryview | None:
        if not self._field(index):
            return None
        start, length = self._vector(index, 1)
        return self.buf.data[start : start + length]

    def ints(self, index: int, reader: Callable[[int], int], size: int) -> list[int]:
        start, length = self._vector(index, size)
        return [reader(start + i * size) for i in range(length)]

    def floats(self, index: int) -> list[float]:
        start, length = self._vector(index, 4)
        return [float(v) for v in struct.unpack_from(f"<{length}f", self.buf.data, start)]

    def tables(self, index: int) -> list[Table]:
        start, length = self._vector(index, 4)
        return [Table(self.buf, self._indirect(start + i * 4)) for i in range(length)]


def root(buf: Buffer, identifier: bytes | None = None) -> Table:
    """The root table of ``buf``, checking the 4-byte file identifier when given."""
    if buf.size < 8:
        raise buf.fail(f"only {buf.size} bytes")
    if identifier is not None and bytes(buf.data[4:8]) != identifier:
        found = bytes(buf.data[4:8])
        raise buf.fail(f"file identifier is {found!r}, expected {identifier!r}")
    return Table(buf, buf.u32(0))

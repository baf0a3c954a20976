"""Big-endian request builder and bounds-checked response reader shared by every codec.

Also imported by codecs outside this package (the leadership protocol's JoinGroup/SyncGroup
codecs): keep :class:`Writer`, :class:`Reader` and :class:`ProtocolDecodeError` here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final


class ProtocolDecodeError(ValueError):
    """A response body does not match the schema of the version we asked for."""


_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_UUID_LEN = 16
ZERO_UUID: Final = bytes(_UUID_LEN)


class Writer:
    """Big-endian request body builder; ``flexible`` selects compact encodings and tag buffers."""

    __slots__ = ("_flexible", "_parts")

    def __init__(self, flexible: bool) -> None:
        self._flexible = flexible
        self._parts: list[bytes] = []

    def int8(self, value: int) -> Writer:
        self._parts.append(_I8.pack(value))
        return self

    def int16(self, value: int) -> Writer:
        self._parts.append(_I16.pack(value))
        return self

    def int32(self, value: int) -> Writer:
        self._parts.append(_I32.pack(value))
        return self

    def int64(self, value: int) -> Writer:
        self._parts.append(_I64.pack(value))
        return self

    def boolean(self, value: bool) -> Writer:
        self._parts.append(b"\x01" if value else b"\x00")
        return self

    def uuid(self, value: bytes) -> Writer:
        if len(value) != _UUID_LEN:
            raise ValueError("a UUID is 16 bytes")
        self._parts.append(value)
        return self

    def string(self, value: str | None) -> Writer:
        if value is None:
            self._parts.append(_uvarint(0) if self._flexible else _I16.pack(-1))
            return self
        raw = value.encode()
        if self._flexible:
            self._parts.append(_uvarint(len(raw) + 1))
        else:
            self._parts.append(_I16.pack(len(raw)))
        self._parts.append(raw)
        return self

    def array_length(self, count: int | None) -> Writer:
        """Length prefix of an array (None = null array); the caller writes the items."""
        if self._flexible:
            self._parts.append(_uvarint(0 if count is None else count + 1))
        else:
            self._parts.append(_I32.pack(-1 if count is None else count))
        return self

    def strings(self, values: Sequence[str] | None) -> Writer:
        self.array_length(None if values is None else len(values))
        for value in values or ():
            self.string(value)
        return self

    def int32s(self, values: Sequence[int]) -> Writer:
        self.array_length(len(values))
        for value in values:
            self.int32(value)
        return self

    def tags(self) -> Writer:
        """An empty tagged-field buffer (flexible versions only)."""
        if self._flexible:
            self._parts.append(b"\x00")
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("unsigned varint must be >= 0")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Reader:
    """Bounds-checked response body reader.

    Array lengths are checked against the bytes left (every element takes at least
    ``min_item`` bytes), so an absurd length fails at once instead of allocating.
    """

    __slots__ = ("_buf", "_flexible", "_pos")

    def __init__(self, data: bytes, flexible: bool, offset: int = 0) -> None:
        self._buf = data
        self._pos = offset
        self._flexible = flexible

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, size: int) -> int:
        pos = self._pos
        if size < 0 or pos + size > len(self._buf):
            raise ProtocolDecodeError(
                f"buffer underrun at byte {pos}: need {size}, have {len(self._buf) - pos}"
            )
        self._pos = pos + size
        return pos

    def int8(self) -> int:
        return int(_I8.unpack_from(self._buf, self._take(1))[0])

    def int16(self) -> int:
        return int(_I16.unpack_from(self._buf, self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self._buf, self._take(4))[0])

    def int64(self) -> int:
        return int(_I64.unpack_from(self._buf, self._take(8))[0])

    def boolean(self) -> bool:
        return self.int8() != 0

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        """Several fixed-size fields at once (one bounds check and one call for a row of them)."""
        return layout.unpack_from(self._buf, self._take(layout.size))

    def peek(self, layout: struct.Struct) -> tuple[Any, ...] | None:
        """``layout``'s fields at the current position without consuming them; None when fewer
        bytes are left (for fast paths that check a guess, then :meth:`advance`)."""
        if self._pos + layout.size > len(self._buf):
            return None
        return layout.unpack_from(self._buf, self._pos)

    def advance(self, size: int) -> None:
        self._take(size)

    def uuid(self) -> bytes:
        start = self._take(_UUID_LEN)
        return self._buf[start : start + _UUID_LEN]

    def uvarint(self) -> int:
        value = 0
        for shift in range(0, 35, 7):
            byte = self._buf[self._take(1)]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ProtocolDecodeError("unsigned varint longer than 5 bytes")

    def nullable_string(self) -> str | None:
        size = self.uvarint() - 1 if self._flexible else self.int16()
        if size < 0:
            return None
        start = self._take(size)
        try:
            return self._buf[start : start + size].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolDecodeError(f"invalid UTF-8 in string at byte {start}") from exc

    def skip_string(self) -> None:
        """Step over a (nullable) string without decoding it."""
        size = self.uvarint() - 1 if self._flexible else self.int16()
        if size > 0:
            self._take(size)

    def string(self) -> str:
        """A non-nullable string; a null from a misbehaving broker reads as ""."""
        value = self.nullable_string()
        return "" if value is None else value

    def nullable_bytes(self) -> bytes | None:
        size = self.uvarint() - 1 if self._flexible else self.int32()
        if size < 0:
            return None
        start = self._take(size)
        return self._buf[start : start + size]

    def array_length(self, min_item: int = 1) -> int:
        """Element count of an array; a null array reads as 0."""
        count = self.uvarint() - 1 if self._flexible else self.int32()
        if count < 0:
            return 0
        if count * max(min_item, 1) > self.remaining:
            raise ProtocolDecodeError(
                f"array of {count} elements cannot fit in the {self.remaining} bytes left"
            )
        return count

    def nullable_array_length(self, min_item: int = 1) -> int | None:
        pos = self._pos
        count = self.uvarint() - 1 if self._flexible else self.int32()
        if count < 0:
            return None
        self._pos = pos
        return self.array_length(min_item)

    def int32s(self) -> list[int]:
        return [self.int32() for _ in range(self.array_length(4))]

    def strings(self) -> list[str]:
        return [self.string() for _ in range(self.array_length())]

    def skip_tags(self) -> None:
        if not self._flexible:
            return
        pos = self._pos
        if pos < len(self._buf) and self._buf[pos] == 0:  # no tagged fields: nearly always
            self._pos = pos + 1
            return
        for _ in range(self.array_length_raw_tags()):
            self.uvarint()  # tag number
            self._take(self.uvarint())

    def array_length_raw_tags(self) -> int:
        count = self.uvarint()
        if count * 2 > self.remaining:
            raise ProtocolDecodeError(f"{count} tagged fields cannot fit in {self.remaining} bytes")
        return count

    def expect_end(self) -> None:
        if self.remaining:
            raise ProtocolDecodeError(f"{self.remaining} unexpected trailing bytes")

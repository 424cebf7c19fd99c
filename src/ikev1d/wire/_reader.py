"""A bounds-checked reader over bytes, after dnspython's ``wirebase.Parser``.

Every read checks the remaining length first and raises :class:`TruncatedError`;
``sub(n)`` hands out a reader restricted to the next ``n`` bytes, and
``expect_end()`` turns leftover bytes into :class:`LengthMismatchError`.
"""

from __future__ import annotations

from .errors import LengthMismatchError, TruncatedError


class Reader:
    __slots__ = ("_data", "_end", "_pos", "what")

    def __init__(self, data: bytes, what: str = "data") -> None:
        self._data = data if type(data) is bytes else bytes(data)
        self._pos = 0
        self._end = len(self._data)
        self.what = what

    @property
    def offset(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def _need(self, n: int, field: str) -> None:
        if n > self._end - self._pos:
            raise TruncatedError(
                f"{self.what}: {field} needs {n} bytes, only {self._end - self._pos} left"
            )

    def u8(self, field: str = "u8") -> int:
        self._need(1, field)
        v = self._data[self._pos]
        self._pos += 1
        return v

    def u16(self, field: str = "u16") -> int:
        self._need(2, field)
        v = int.from_bytes(self._data[self._pos : self._pos + 2], "big")
        self._pos += 2
        return v

    def u32(self, field: str = "u32") -> int:
        self._need(4, field)
        v = int.from_bytes(self._data[self._pos : self._pos + 4], "big")
        self._pos += 4
        return v

    def take(self, n: int, field: str = "bytes") -> bytes:
        self._need(n, field)
        v = self._data[self._pos : self._pos + n]
        self._pos += n
        return v

    def rest(self) -> bytes:
        v = self._data[self._pos : self._end]
        self._pos = self._end
        return v

    def sub(self, n: int, what: str) -> Reader:
        """A reader over the next ``n`` bytes; this reader skips past them."""
        return Reader(self.take(n, what), what)

    def expect_end(self) -> None:
        if self._pos != self._end:
            raise LengthMismatchError(
                f"{self.what}: {self._end - self._pos} unexpected bytes after the last field"
            )

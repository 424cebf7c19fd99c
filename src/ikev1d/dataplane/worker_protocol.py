"""The messages between the keying daemon and a data plane worker, pure (no I/O).

They travel over a local ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair, which keeps
message boundaries, so a message is one datagram: a 4-octet header (``b"IW"``,
the format version, the message type) and a UTF-8 JSON object whose fields are
fixed per type (:data:`FIELDS`). Anything else (another version, an unknown
type, a missing, extra or mistyped field, bad JSON, an oversized datagram) is a
:class:`WorkerProtocolError`; the receiver treats the other side as broken
instead of guessing.

Keys (``keymat``) cross only this socket pair; a :class:`Message`'s ``repr``
never shows them, so that logging a message cannot leak one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ikev1d.dataplane.base import DataplaneError

__all__ = [
    "FIELDS",
    "MAGIC",
    "MAX_MESSAGE",
    "VERSION",
    "Message",
    "MsgType",
    "WorkerProtocolError",
    "decode",
    "encode",
]

MAGIC: Final = b"IW"
VERSION: Final = 1
MAX_MESSAGE: Final = 65536
"""The largest datagram either side sends or accepts."""


class WorkerProtocolError(DataplaneError):
    """A message from the socket pair that is not one this version sends."""


class MsgType(enum.IntEnum):
    # daemon -> worker
    SETUP = 1
    INSTALL_SA = 2
    REMOVE_SA = 3
    INSTALL_TRAP = 4
    REMOVE_TRAP = 5
    SA_REMOTE = 6
    COUNTERS_REQUEST = 7
    SHUTDOWN = 8
    SA_PROMOTE = 9
    # worker -> daemon
    READY = 64
    COUNTERS = 65
    SEQ_RESERVED = 66
    ACQUIRE = 67
    EXPIRE = 68
    LOG = 69


_INT, _STR, _BOOL, _HEX, _STRS, _INTS, _ROWS = "int", "str", "bool", "hex", "strs", "ints", "rows"

FIELDS: Final[Mapping[MsgType, Mapping[str, str]]] = {
    # fds: TUN, raw ESP IPv4, raw ESP IPv6 (-1: none); udp: "fd address port wildcard" each.
    MsgType.SETUP: {"tun_fd": _INT, "tun_name": _STR, "vnet_hdr": _BOOL, "raw4_fd": _INT,
                    "raw6_fd": _INT, "udp": _STRS, "log_level": _INT},
    MsgType.INSTALL_SA: {
        "spi_in": _INT, "spi_out": _INT, "encryption": _STR, "key_length": _INT,
        "integrity": _STR, "icv_length": _INT, "keymat": _HEX,
        "local_ts": _STRS, "remote_ts": _STRS, "local": _STR, "local_port": _INT,
        "remote": _STR, "remote_port": _INT, "encap": _BOOL, "name": _STR,
        "child_id": _INT, "mtu": _INT, "hard_bytes": _INT, "soft_bytes": _INT,
        "soft_seq": _INT, "seq": _INT, "bytes_out": _INT, "packets_out": _INT,
        "dropped_out": _INT, "standby": _BOOL,
    },
    MsgType.REMOVE_SA: {"spi_in": _INT, "spi_out": _INT},
    MsgType.INSTALL_TRAP: {"conn": _STR, "child": _STR, "local_ts": _STRS, "remote_ts": _STRS},
    MsgType.REMOVE_TRAP: {"conn": _STR, "child": _STR},
    MsgType.SA_REMOTE: {"spi_in": _INT, "spi_out": _INT, "remote": _STR, "remote_port": _INT},
    MsgType.SA_PROMOTE: {"spi_in": _INT, "spi_out": _INT},
    MsgType.COUNTERS_REQUEST: {},
    MsgType.SHUTDOWN: {},
    MsgType.READY: {"pid": _INT},
    # rows: [spi_in, spi_out, bytes_out, packets_out, dropped_out]; drops: per DROP_REASONS.
    MsgType.COUNTERS: {"sas": _ROWS, "drops": _INTS},
    MsgType.SEQ_RESERVED: {"spi_in": _INT, "spi_out": _INT, "upto": _INT},
    MsgType.ACQUIRE: {"conn": _STR, "child": _STR},
    MsgType.EXPIRE: {"child_id": _INT, "hard": _BOOL, "reason": _STR},
    MsgType.LOG: {"level": _INT, "text": _STR},
}

_SECRET_FIELDS: Final = frozenset({"keymat"})


@dataclass(frozen=True)
class Message:
    """One message: its type and its fields (``hex`` fields as bytes)."""

    type: MsgType
    fields: Mapping[str, object] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {k: ("<secret>" if k in _SECRET_FIELDS else v) for k, v in self.fields.items()}
        return f"Message({self.type.name}, {shown})"

    def get_int(self, name: str) -> int:
        value = self.fields[name]
        if not isinstance(value, int):
            raise WorkerProtocolError(f"{name} is not an integer")
        return value

    def get_str(self, name: str) -> str:
        value = self.fields[name]
        if not isinstance(value, str):
            raise WorkerProtocolError(f"{name} is not a string")
        return value

    def get_bool(self, name: str) -> bool:
        value = self.fields[name]
        if not isinstance(value, bool):
            raise WorkerProtocolError(f"{name} is not a boolean")
        return value

    def get_bytes(self, name: str) -> bytes:
        value = self.fields[name]
        if not isinstance(value, bytes):
            raise WorkerProtocolError(f"{name} is not octets")
        return value

    def get_strs(self, name: str) -> list[str]:
        value = self.fields[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WorkerProtocolError(f"{name} is not a list of strings")
        return value

    def get_ints(self, name: str) -> list[int]:
        value = self.fields[name]
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise WorkerProtocolError(f"{name} is not a list of integers")
        return value

    def get_rows(self, name: str) -> list[list[int]]:
        value = self.fields[name]
        if not isinstance(value, list):
            raise WorkerProtocolError(f"{name} is not a list of rows")
        return value


def _check(kind: str, value: object) -> bool:
    if kind == _INT:
        return type(value) is int
    if kind == _BOOL:
        return type(value) is bool
    if kind in (_STR, _HEX):
        return type(value) is str
    if kind == _STRS:
        return type(value) is list and all(type(v) is str for v in value)
    if kind == _INTS:
        return type(value) is list and all(type(v) is int for v in value)
    if kind == _ROWS:
        return type(value) is list and all(
            type(row) is list and all(type(v) is int for v in row) for row in value)
    return False


def encode(msg_type: MsgType, **fields: object) -> bytes:
    """The datagram for a message; ``hex`` fields are given as bytes. A field set that
    does not match :data:`FIELDS` is our own mistake: ValueError."""
    spec = FIELDS[msg_type]
    if set(fields) != set(spec):
        raise ValueError(f"{msg_type.name}: fields {sorted(fields)} != {sorted(spec)}")
    body: dict[str, object] = {}
    for name, kind in spec.items():
        value = fields[name]
        if kind == _HEX:
            if not isinstance(value, bytes | bytearray):
                raise ValueError(f"{msg_type.name}.{name}: octets expected")
            value = bytes(value).hex()
        if not _check(kind, value):
            raise ValueError(f"{msg_type.name}.{name}: {kind} expected")
        body[name] = value
    data = MAGIC + bytes((VERSION, msg_type)) + json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"{msg_type.name}: {len(data)} octets is over {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> Message:
    """The message in one datagram; WorkerProtocolError for anything else."""
    if len(data) < 4:
        raise WorkerProtocolError(f"{len(data)}-octet message is shorter than its header")
    if len(data) > MAX_MESSAGE:
        raise WorkerProtocolError(f"{len(data)}-octet message is over {MAX_MESSAGE}")
    if data[:2] != MAGIC:
        raise WorkerProtocolError("not a worker message (bad magic)")
    if data[2] != VERSION:
        raise WorkerProtocolError(f"format version {data[2]}, this is version {VERSION}")
    try:
        msg_type = MsgType(data[3])
    except ValueError:
        raise WorkerProtocolError(f"unknown message type {data[3]}") from None
    try:
        body = json.loads(data[4:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WorkerProtocolError(f"{msg_type.name}: body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise WorkerProtocolError(f"{msg_type.name}: body is not an object")
    spec = FIELDS[msg_type]
    if set(body) != set(spec):
        raise WorkerProtocolError(f"{msg_type.name}: fields {sorted(body)[:16]} are not "
                                  f"{sorted(spec)}")
    fields: dict[str, object] = {}
    for name, kind in spec.items():
        value = body[name]
        if not _check(kind, value):
            raise WorkerProtocolError(f"{msg_type.name}.{name}: {kind} expected")
        if kind == _HEX:
            try:
                value = bytes.fromhex(str(value))
            except ValueError:
                raise WorkerProtocolError(f"{msg_type.name}.{name}: not hex") from None
        fields[name] = value
    return Message(msg_type, fields)

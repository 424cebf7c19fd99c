"""The status document: what ``ikev1d status`` shows, as frozen dataclasses.

The engine builds it (``Engine.status``), the daemon puts the data plane's
counters in (``dataclasses.replace`` with the backend's ``Counters``), the
control server sends ``to_json()``, and the command line reads the answer back
with ``StatusDocument.from_json`` before printing it. The JSON form is an
external interface that programs parse: ``to_json`` is the one place that
writes it, member by member in a fixed order, and ``from_json`` the one place
that reads it, refusing anything that does not have exactly that shape.

States and modes are kept as the text the document shows (``"ESTABLISHED"``,
``"INSTALLED"``, ``"tunnel"``), so that this module needs nothing from the
engine and the command line can read the document without loading it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ikev1d.errors import Ikev1dError

Endpoint = tuple[str, int]
"""(address, port), as the engine and the daemon speak of UDP endpoints."""
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_T = TypeVar("_T")
_HEX = re.compile(r"[0-9a-f]*")
_SPI = re.compile(r"[0-9a-f]{8}")


class StatusFormatError(Ikev1dError, ValueError):
    """A status document that does not have the documented shape; says where and why."""


@dataclass(frozen=True)
class DropCounters:
    """Why packets of an IPsec SA were dropped, for data planes that know it (the
    userspace one): received packets by reason (``*_in``), and sending failures."""

    replayed_in: int = 0
    icv_failed_in: int = 0
    malformed_in: int = 0
    policy_dropped_in: int = 0
    tun_dropped_in: int = 0
    dropped_out: int = 0


@dataclass(frozen=True)
class Counters:
    """Traffic of an IPsec SA pair as its data plane counts it; all zero until one does."""

    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    drops: DropCounters | None = None
    """Only from data planes that count drops; the document then shows them too."""


@dataclass(frozen=True)
class ChildSaStatus:
    """One IPsec SA pair (SPIs as numbers; the document shows 8 lower-case hex digits)."""

    name: str
    state: str
    mode: str
    encap: bool
    spi_in: int
    spi_out: int
    proposal: str
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    rekey_in_s: int | None
    expires_in_s: int
    counters: Counters = field(default_factory=Counters)
    """Zeros from the engine, which sees no traffic; the daemon replaces them."""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "mode": self.mode,
            "encap": self.encap,
            "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}",
            "proposal": self.proposal,
            "local_ts": [str(n) for n in self.local_ts],
            "remote_ts": [str(n) for n in self.remote_ts],
            "bytes_in": self.counters.bytes_in,
            "bytes_out": self.counters.bytes_out,
            "packets_in": self.counters.packets_in,
            "packets_out": self.counters.packets_out,
            "rekey_in_s": self.rekey_in_s,
            "expires_in_s": self.expires_in_s,
        }
        drops = self.counters.drops
        if drops is not None:
            document.update((f.name, getattr(drops, f.name)) for f in fields(drops))
        return document

    @classmethod
    def from_json(cls, value: object, where: str = "child") -> ChildSaStatus:
        reader = _Reader(value, where)
        drop_names = [f.name for f in fields(DropCounters)]
        has_drops = any(name in reader.data for name in drop_names)
        child = cls(
            name=reader.text("name"),
            state=reader.text("state"),
            mode=reader.text("mode"),
            encap=reader.flag("encap"),
            spi_in=reader.spi("spi_in"),
            spi_out=reader.spi("spi_out"),
            proposal=reader.text("proposal"),
            local_ts=reader.networks("local_ts"),
            remote_ts=reader.networks("remote_ts"),
            counters=Counters(
                bytes_in=reader.count("bytes_in"),
                bytes_out=reader.count("bytes_out"),
                packets_in=reader.count("packets_in"),
                packets_out=reader.count("packets_out"),
                drops=DropCounters(**{name: reader.count(name) for name in drop_names})
                if has_drops
                else None,
            ),
            rekey_in_s=reader.optional(reader.integer, "rekey_in_s"),
            expires_in_s=reader.integer("expires_in_s"),
        )
        reader.no_other_members()
        return child


@dataclass(frozen=True)
class IkeSaStatus:
    """One ISAKMP SA and its IPsec SAs."""

    name: str
    state: str
    local: Endpoint
    remote: Endpoint
    local_id: str | None
    remote_id: str | None
    initiator: bool
    cookies: tuple[bytes, bytes]
    """(CKY-I, CKY-R), RFC 2408 section 3.1."""
    proposal: str | None
    auth: str
    nat_local: bool
    nat_remote: bool
    established_s: int | None
    rekey_in_s: int | None
    virtual_ip: str | None
    children: tuple[ChildSaStatus, ...]
    dns: tuple[str, ...] = ()
    """With a virtual IP: the DNS servers Mode Config announced."""
    split_include: tuple[Network, ...] = ()
    """With a virtual IP: the networks Mode Config announced as behind the server."""
    ike_id: int = 0
    """The daemon's number for this ISAKMP SA (``ikev1d down NAME --ike-id N``)."""
    remote_cert: str | None = None
    """The subject DN of the peer's certificate, when it authenticated with one."""
    virtual_ips: tuple[str, ...] = ()
    """Every virtual IP of the SA, ``virtual_ip`` first: a dual-stack road warrior
    holds one of each address family."""

    def to_json(self) -> dict[str, Any]:
        cky_i, cky_r = self.cookies
        document: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "local": endpoint_text(self.local),
            "remote": endpoint_text(self.remote),
            "local_id": self.local_id,
            "remote_id": self.remote_id,
            "initiator": self.initiator,
            "cookies": f"{cky_i.hex()}:{cky_r.hex()}",
            "proposal": self.proposal,
            "auth": self.auth,
            "nat_local": self.nat_local,
            "nat_remote": self.nat_remote,
            "established_s": self.established_s,
            "rekey_in_s": self.rekey_in_s,
            "virtual_ip": self.virtual_ip,
        }
        if self.virtual_ip is not None:
            # Only with a virtual IP: what Mode Config announced with it.
            document["dns"] = list(self.dns)
            document["split_include"] = [str(n) for n in self.split_include]
        if self.virtual_ips:
            document["virtual_ips"] = list(self.virtual_ips)
        document["children"] = [child.to_json() for child in self.children]
        document["ike_id"] = self.ike_id
        if self.remote_cert is not None:
            document["remote_cert"] = self.remote_cert
        return document

    @classmethod
    def from_json(cls, value: object, where: str = "ike_sa") -> IkeSaStatus:
        reader = _Reader(value, where)
        children = reader.array("children")
        ike_sa = cls(
            name=reader.text("name"),
            # Absent from documents written before the member existed.
            ike_id=reader.count("ike_id") if "ike_id" in reader.data else 0,
            remote_cert=(reader.text("remote_cert") if "remote_cert" in reader.data
                         else None),
            state=reader.text("state"),
            local=reader.endpoint("local"),
            remote=reader.endpoint("remote"),
            local_id=reader.optional(reader.text, "local_id"),
            remote_id=reader.optional(reader.text, "remote_id"),
            initiator=reader.flag("initiator"),
            cookies=reader.cookies("cookies"),
            proposal=reader.optional(reader.text, "proposal"),
            auth=reader.text("auth"),
            nat_local=reader.flag("nat_local"),
            nat_remote=reader.flag("nat_remote"),
            established_s=reader.optional(reader.integer, "established_s"),
            rekey_in_s=reader.optional(reader.integer, "rekey_in_s"),
            virtual_ip=reader.optional(reader.text, "virtual_ip"),
            virtual_ips=(reader.addresses("virtual_ips") if "virtual_ips" in reader.data
                         else ()),
            # Added after the first documents: absent means none.
            dns=reader.addresses("dns") if "dns" in reader.data else (),
            split_include=(reader.networks("split_include") if "split_include" in reader.data
                           else ()),
            children=tuple(
                ChildSaStatus.from_json(child, f"{where}.children[{i}]")
                for i, child in enumerate(children)
            ),
        )
        reader.no_other_members()
        return ike_sa


@dataclass(frozen=True)
class TrapStatus:
    """A child waiting for traffic (a trap policy): ``origin`` is ``start_action``
    (configured) or ``dpd_action`` (installed when DPD declared the peer dead)."""

    name: str
    child: str
    origin: str
    mode: str
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "child": self.child,
            "origin": self.origin,
            "mode": self.mode,
            "local_ts": [str(n) for n in self.local_ts],
            "remote_ts": [str(n) for n in self.remote_ts],
        }

    @classmethod
    def from_json(cls, value: object, where: str = "trap") -> TrapStatus:
        reader = _Reader(value, where)
        trap = cls(
            name=reader.text("name"),
            child=reader.text("child"),
            origin=reader.text("origin"),
            mode=reader.text("mode"),
            local_ts=reader.networks("local_ts"),
            remote_ts=reader.networks("remote_ts"),
        )
        reader.no_other_members()
        return trap


@dataclass(frozen=True)
class PoolStatus:
    """One Mode Config address pool: its leases online (held by an ISAKMP SA) and
    offline (kept for their owner's return)."""

    name: str
    addrs: str
    size: int
    online: int
    offline: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "addrs": self.addrs, "size": self.size,
                "online": self.online, "offline": self.offline}

    @classmethod
    def from_json(cls, value: object, where: str = "pool") -> PoolStatus:
        reader = _Reader(value, where)
        pool = cls(name=reader.text("name"), addrs=reader.text("addrs"),
                   size=reader.count("size"), online=reader.count("online"),
                   offline=reader.count("offline"))
        reader.no_other_members()
        return pool


@dataclass(frozen=True)
class StatusDocument:
    """Every ISAKMP SA the engine knows, except those being deleted, oldest first;
    then the address pools; then the trapped children. The document lists
    ``pools`` only when address pools are configured, ``traps`` only when there
    are some."""

    ike_sas: tuple[IkeSaStatus, ...] = ()
    pools: tuple[PoolStatus, ...] = ()
    traps: tuple[TrapStatus, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The document as JSON-ready dicts and lists, members in the documented order."""
        document: dict[str, Any] = {"ike_sas": [ike_sa.to_json() for ike_sa in self.ike_sas]}
        if self.pools:
            document["pools"] = [pool.to_json() for pool in self.pools]
        if self.traps:
            document["traps"] = [trap.to_json() for trap in self.traps]
        return document

    @classmethod
    def from_json(cls, value: object) -> StatusDocument:
        """Read a document that ``to_json`` wrote (after a JSON round trip).

        Raises StatusFormatError naming the member at fault for a missing or
        unknown member or a value of the wrong type."""
        reader = _Reader(value, "status")
        ike_sas = reader.array("ike_sas")
        pools = reader.array("pools") if "pools" in reader.data else []
        traps = reader.array("traps") if "traps" in reader.data else []
        document = cls(
            ike_sas=tuple(IkeSaStatus.from_json(ike_sa, f"ike_sas[{i}]")
                          for i, ike_sa in enumerate(ike_sas)),
            pools=tuple(PoolStatus.from_json(pool, f"pools[{i}]")
                        for i, pool in enumerate(pools)),
            traps=tuple(TrapStatus.from_json(trap, f"traps[{i}]")
                        for i, trap in enumerate(traps)),
        )
        reader.no_other_members()
        return document


def endpoint_text(endpoint: Endpoint) -> str:
    """``address:port``, as the status document writes endpoints (IPv6 without brackets)."""
    return f"{endpoint[0]}:{endpoint[1]}"


class _Reader:
    """Typed access to the members of one JSON object, with errors that say where."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, Mapping):
            raise StatusFormatError(f"{where}: expected an object, got {_kind(value)}")
        self.data: Mapping[Any, object] = value
        self.where = where
        self._read: set[str] = set()

    def _error(self, key: str, reason: str) -> StatusFormatError:
        return StatusFormatError(f"{self.where}.{key}: {reason}")

    def _get(self, key: str) -> object:
        if key not in self.data:
            raise StatusFormatError(f"{self.where}: missing member {key!r}")
        self._read.add(key)
        return self.data[key]

    def no_other_members(self) -> None:
        unknown = [str(k) for k in self.data if k not in self._read]
        if unknown:
            raise StatusFormatError(f"{self.where}: unknown member {unknown[0]!r}")

    def optional(self, read: Callable[[str], _T], key: str) -> _T | None:
        """``read(key)``, or None when the member is null (it must still be there)."""
        if self._get(key) is None:
            return None
        return read(key)

    def text(self, key: str) -> str:
        return self._typed(key, str, "a string")

    def flag(self, key: str) -> bool:
        return self._typed(key, bool, "true or false")

    def integer(self, key: str) -> int:
        value = self._get(key)
        # bool is an int in Python, never in the document.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._error(key, f"expected an integer, got {_kind(value)}")
        return value

    def count(self, key: str) -> int:
        value = self.integer(key)
        if value < 0:
            raise self._error(key, f"expected a count, got {value}")
        return value

    def array(self, key: str) -> list[object]:
        return self._typed(key, list, "an array")

    def spi(self, key: str) -> int:
        text = self.text(key)
        if not _SPI.fullmatch(text):
            raise self._error(key, f"expected 8 lower-case hex digits, got {text!r}")
        return int(text, 16)

    def endpoint(self, key: str) -> Endpoint:
        text = self.text(key)
        address, _, port = text.rpartition(":")
        if not address or not port.isdigit() or not port.isascii():
            raise self._error(key, f"expected address:port, got {text!r}")
        return address, int(port)

    def cookies(self, key: str) -> tuple[bytes, bytes]:
        text = self.text(key)
        cky_i, sep, cky_r = text.partition(":")
        if not sep or any(not _HEX.fullmatch(c) or len(c) % 2 for c in (cky_i, cky_r)):
            raise self._error(key, f"expected lower-case hex CKY-I:CKY-R, got {text!r}")
        return bytes.fromhex(cky_i), bytes.fromhex(cky_r)

    def networks(self, key: str) -> tuple[Network, ...]:
        items = self.array(key)
        networks = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self._error(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
            try:
                network = ipaddress.ip_network(item)
            except ValueError as exc:
                raise self._error(f"{key}[{i}]", str(exc)) from None
            if str(network) != item:
                raise self._error(f"{key}[{i}]", f"not in canonical form: {item!r}")
            networks.append(network)
        return tuple(networks)

    def addresses(self, key: str) -> tuple[str, ...]:
        items = self.array(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self._error(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
            try:
                ipaddress.ip_address(item)
            except ValueError as exc:
                raise self._error(f"{key}[{i}]", str(exc)) from None
        return tuple(str(item) for item in items)

    def _typed(self, key: str, kind: type[_T], what: str) -> _T:
        value = self._get(key)
        if not isinstance(value, kind):
            raise self._error(key, f"expected {what}, got {_kind(value)}")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else "a string"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__

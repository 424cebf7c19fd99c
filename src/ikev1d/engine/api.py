"""What the protocol engine exchanges with the outside world.

The engine is sans-I/O: it is fed datagrams with their addresses and
the current time, and it hands back datagrams to send, the time of its next
timer and events. Only ``ikev1d.daemon`` and ``ikev1d.dataplane.linux`` touch
sockets; only the data plane installs keys.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypeAlias

from ikev1d.errors import Ikev1dError

Endpoint: TypeAlias = tuple[str, int]
"""(address, UDP port); the port tells the I/O layer which socket: 500 or 4500."""

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Datagram:
    """One ISAKMP message on the wire.

    ``data`` never carries the RFC 3948 non-ESP marker: the I/O layer adds it
    when sending from/to port 4500 and strips it on receipt.
    """

    data: bytes
    local: Endpoint
    remote: Endpoint


@dataclass(frozen=True)
class IkeSaEstablished:
    """An ISAKMP SA is established.

    ``cky_i``/``cky_r`` are the initiator's and responder's cookies (RFC 2408
    section 3.1); ``encryption_key`` is Ka, the key that encrypts the rest of
    its messages (derived from SKEYID_e, RFC 2409 section 5 and Appendix B), for
    key log files that let a protocol analyser decrypt a capture. Never to be
    logged above debug.
    """

    conn: str
    ike_id: int
    local: Endpoint
    remote: Endpoint
    local_id: str
    remote_id: str
    proposal: str
    auth: str
    initiator: bool
    cky_i: bytes = b""
    cky_r: bytes = b""
    encryption_key: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class IkeSaDeleted:
    conn: str
    ike_id: int
    reason: str


@dataclass(frozen=True)
class ChildSaEstablished:
    """An IPsec SA pair is negotiated: everything a data plane needs to install it.

    ``keymat_in`` protects traffic we receive (SPI ``spi_in``, chosen by us);
    ``keymat_out`` traffic we send (SPI ``spi_out``, chosen by the peer). Each is
    the encryption key (with the 4-byte salt for AES-GCM) followed by the
    integrity key, RFC 2409 section 5.5.
    """

    conn: str
    child: str
    ike_id: int
    child_id: int
    spi_in: int
    spi_out: int
    proposal: str
    encryption: str
    key_length: int
    icv_length: int
    integrity: str | None
    mode: str
    encap: bool
    local: Endpoint
    remote: Endpoint
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    keymat_in: bytes = field(repr=False)
    keymat_out: bytes = field(repr=False)
    lifetime_s: float = 3600.0
    life_bytes: int = 0
    initiator: bool = False
    """We started its Quick Mode, so we install it on message 2 while the responder
    installs it only when our message 3 arrives (RFC 2409 section 5.5): a data plane
    that can should keep sending on an SA it renews until the peer shows it has the
    new one."""


@dataclass(frozen=True)
class ChildSaInboundReady:
    """As Quick Mode responder, before message 2 leaves: the IPsec SA pair that a
    ``ChildSaEstablished`` will announce once message 3 arrives.

    RFC 2409 section 5.5: the initiator has everything once it holds message 2,
    and may send on the new SAs at once, before its message 3 reaches us. A data
    plane that can installs the inbound half now (``pair.spi_in``,
    ``pair.keymat_in``) and nothing that sends. Then either ``ChildSaEstablished``
    for the same SPIs follows (the outbound half joins it) or
    ``ChildSaInboundWithdrawn`` (message 3 never came, or the ISAKMP SA went away):
    the inbound half is removed. Neither this nor the withdrawal is an IPsec SA
    that status, counters or updown scripts know of.
    """

    pair: ChildSaEstablished


@dataclass(frozen=True)
class ChildSaInboundWithdrawn:
    """The Quick Mode of a ``ChildSaInboundReady`` ended without message 3."""

    conn: str
    child: str
    ike_id: int
    child_id: int
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class ChildSaDeleted:
    conn: str
    child: str
    ike_id: int
    child_id: int
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class ConnectionFailed:
    """An exchange for ``conn`` (and ``child``, if known) failed; ``reason`` is for people."""

    conn: str
    child: str | None
    reason: str


@dataclass(frozen=True)
class TrapInstalled:
    """A child waits for traffic: the data plane is to catch packets from ``local_ts``
    to ``remote_ts`` that no IPsec SA carries, and report them with an acquire
    (``Engine.acquire``) so that the engine negotiates the child.

    ``local``/``remote`` are the outer addresses the IPsec SA will have (the kernel's
    trap policy names them in its template); ``origin`` says why the trap exists:
    ``start_action`` (configured) or ``dpd_action`` (the peer went silent, "hold").
    Installing a trap that exists again replaces it."""

    conn: str
    child: str
    local: str
    remote: str
    mode: str
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    origin: str = "start_action"


@dataclass(frozen=True)
class TrapRemoved:
    """The trap of ``conn``/``child`` is gone (configuration changed, ``down``, shutdown)."""

    conn: str
    child: str


@dataclass(frozen=True)
class VirtualIpAssigned:
    """Mode Config client: the server gave us an address (and maybe DNS and split networks)."""

    conn: str
    ike_id: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    split: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty: the children's remote_ts


@dataclass(frozen=True)
class VirtualIpReleased:
    """Mode Config client: the ISAKMP SA that carried the address is gone (not emitted on Phase 1 renewal that keeps it)."""

    conn: str
    ike_id: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class XauthCheck:
    """XAUTH server with [xauth] radius set: the runtime checks user and password and answers with Engine.xauth_result (or Engine.xauth_challenge)."""

    ike_id: int
    request_id: int
    user: str
    password: bytes = field(repr=False)
    state: bytes = field(default=b"", repr=False)
    """The answer to a challenge: the state the checker gave with it (RADIUS State)."""


Event: TypeAlias = (
    IkeSaEstablished | IkeSaDeleted | ChildSaEstablished | ChildSaDeleted | ConnectionFailed
    | ChildSaInboundReady | ChildSaInboundWithdrawn
    | TrapInstalled | TrapRemoved
    | VirtualIpAssigned | VirtualIpReleased | XauthCheck
)


class EngineError(Ikev1dError):
    """The engine was misused locally (unknown connection name, ...), not a peer problem."""

"""The interface between the daemon and a data plane backend, and the "none" backend.

The daemon hands every ``ChildSaEstablished`` event to ``install`` and every
``ChildSaDeleted`` to ``remove``; a backend that ``InstallsInboundFirst`` gets
the pair of a ``ChildSaInboundReady`` (we answer a Quick Mode) early, and a
``ChildSaInboundWithdrawn`` as a ``remove``; it asks ``counters`` when building the status
document. UDP-encapsulated ESP (RFC 3948) arrives on the daemon's NAT-T socket,
which IKE shares, so the daemon passes those packets to ``receive_esp_udp`` and
gives the backend a way to send them with ``attach``.

A backend module ``ikev1d.dataplane.<name>`` provides
``create_backend(config: ikev1d.config.Config) -> DataplaneBackend`` and raises
``DataplaneError`` when it cannot start (no /dev/net/tun, no XFRM, ...).
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    Endpoint,
    Network,
    TrapInstalled,
)
from ikev1d.errors import Ikev1dError
from ikev1d.status import Counters

if TYPE_CHECKING:
    import asyncio

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

SendUdp = Callable[[bytes, Endpoint, Endpoint], None]
"""``send_udp(esp_packet, local, remote)``: send UDP-encapsulated ESP from ``local``."""

ExpireHandler = Callable[[int, bool, str], None]
"""``expired(child_id, hard, reason)``: an IPsec SA reached a limit the data plane
enforces (``life_bytes``, sequence numbers). Soft (``hard`` False): renew it now;
hard: the data plane no longer uses it."""

AcquireHandler = Callable[[str, str], None]
"""``acquire(conn, child)``: a packet for a trapped child found no IPsec SA."""

BACKEND_NAMES = ("userspace", "kernel", "none")


class DataplaneError(Ikev1dError):
    """A backend failed to start, install or remove an SA; the message is for people."""


def soft_limit(limit: int, spi_in: int) -> int:
    """When an SA with this hard limit asks to be renewed: at 85-90 % of it.

    Renewal must come before the limit, as with time (RFC 2408 §4.5 lifetimes are
    hard). The fraction varies with our inbound SPI (random, and different on the
    two ends) so that the two ends, which count the same traffic, seldom renew the
    same SA at the same moment, as the jitter of time-based renewal does.
    """
    return limit * (17000 + spi_in % 1000) // 20000


def zero_counters() -> Counters:
    return Counters()


@runtime_checkable
class DataplaneBackend(Protocol):
    """What the daemon needs from a data plane."""

    name: str

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        """Called once before any other call: how to send UDP-encapsulated ESP, and
        the event loop to register readers (TUN, raw ESP socket) with."""

    def install(self, sa: ChildSaEstablished) -> None:
        """Install both directions of an IPsec SA (and its policies/routes); if
        ``install_inbound`` put the inbound half of this pair there, add the rest."""

    def remove(self, sa: ChildSaDeleted) -> None:
        """Remove the SA pair, or the inbound half of it that ``install_inbound``
        installed; an unknown SPI pair is not an error."""

    def counters(self, spi_in: int, spi_out: int) -> Counters:
        """The traffic of an SA pair (zeros for a pair it does not know)."""

    def receive_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        """An ESP packet that arrived UDP-encapsulated (marker and UDP header removed)."""

    def close(self) -> None:
        """Remove everything installed and release devices; called exactly once."""


@runtime_checkable
class ReportsExpiry(Protocol):
    """A backend that enforces limits other than time and tells the daemon."""

    def set_expire_handler(self, handler: ExpireHandler) -> None:
        """Called once after ``attach``; the handler may run from the packet path."""


@runtime_checkable
class InstallsInboundFirst(Protocol):
    """A backend that can receive on an IPsec SA pair before it may send on it.

    As Quick Mode responder we send message 2 and the initiator may use the new
    SAs at once (RFC 2409 section 5.5), while we may use them only once message 3
    arrives. A backend without this installs the pair on message 3, and drops
    what the peer sent on it before then."""

    def install_inbound(self, sa: ChildSaEstablished) -> None:
        """Install the inbound half of ``sa`` (``spi_in``, ``keymat_in``) and what
        it needs to deliver packets; nothing that sends or seals. ``install`` of the
        same SPIs completes it; ``remove`` takes it away. Raises DataplaneError."""


@runtime_checkable
class ReceivesEspBatches(Protocol):
    """A backend that takes the UDP-encapsulated ESP of one receive in one call."""

    def receive_esp_udp_many(self, datagrams: Iterable[bytes], local: Endpoint,
                             remote: Endpoint) -> None:
        """ESP packets that arrived one after the other from ``remote`` to ``local``, as
        ``receive_esp_udp`` would take them one by one, in their order."""


@runtime_checkable
class KeepsState(Protocol):
    """A backend that leaves state outside the process (XFRM entries, routes) and
    records it in a file, so that a run after a crash (SIGKILL, power loss) can
    remove what the killed one left behind."""

    def recover(self, state_file: str) -> None:
        """Called once before ``attach``: remove the leftovers listed in ``state_file``
        by an earlier run (only those, and only if they still look like ours), then
        keep recording there what this run installs. Problems are logged, not raised."""


@runtime_checkable
class CatchesTraffic(Protocol):
    """A backend that can hold trap policies: catch the traffic of a child that has
    no IPsec SA yet and report it (the kernel's XFRM_MSG_ACQUIRE, or the userspace
    plane's packets routed into the TUN device)."""

    def set_acquire_handler(self, handler: AcquireHandler) -> None:
        """Called once after ``attach``; the handler may run from the packet path."""

    def install_trap(self, trap: TrapInstalled) -> None:
        """Catch the trap's traffic (again: a trap of the same conn/child is replaced)."""

    def remove_trap(self, conn: str, child: str) -> None:
        """Stop catching it; an unknown trap is not an error."""


@runtime_checkable
class CarriesVirtualIps(Protocol):
    """A backend that puts a Mode Config client's virtual IP on this host.

    draft-dukes-ike-mode-cfg-02 §3.2 (INTERNAL_IP4_ADDRESS): the address the
    server assigns is ours inside the tunnel, so local programs must send from
    it. The daemon calls ``add_virtual_ip`` before the IPsec SAs of that
    ISAKMP SA are installed, and ``remove_virtual_ip`` when it is gone."""

    def add_virtual_ip(self, ike_id: int, address: Address, split: tuple[Network, ...]) -> None:
        """Put ``address`` on this host and make it the source of the routes of the
        IPsec SAs of ISAKMP SA ``ike_id``; with ``split`` networks (the server's
        INTERNAL_IP4_SUBNET / split includes) only those are routed. An address the
        host has already is used as it is and never removed. Raises DataplaneError."""

    def remove_virtual_ip(self, ike_id: int, address: Address) -> None:
        """Undo :meth:`add_virtual_ip` (only what it added); unknown ones are no error."""


def split_routes(remote_ts: tuple[Network, ...], split: tuple[Network, ...]) -> tuple[Network, ...]:
    """The part of an IPsec SA's remote networks that the server's split networks cover.

    With split networks the client sends only those into the tunnel (the server's
    INTERNAL_IP4_SUBNET, draft-dukes-ike-mode-cfg-02 §3.2, "the protected
    sub-networks"): of every overlapping pair, the smaller network. Without any,
    all of ``remote_ts``.
    """
    if not split:
        return remote_ts
    out: list[Network] = []
    for remote in remote_ts:
        for net in split:
            if net.version != remote.version:
                continue
            if net.subnet_of(remote):  # type: ignore[arg-type]
                out.append(net)
            elif remote.subnet_of(net):  # type: ignore[arg-type]
                out.append(remote)
    return tuple(dict.fromkeys(out))


class NoneBackend:
    """``dataplane = "none"``: keying only. Installs nothing, counts nothing."""

    name = "none"

    def __init__(self) -> None:
        self.installed: dict[tuple[int, int], ChildSaEstablished] = {}
        self.inbound_only: dict[tuple[int, int], ChildSaEstablished] = {}
        self.closed = False

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def install_inbound(self, sa: ChildSaEstablished) -> None:
        self.inbound_only[(sa.spi_in, sa.spi_out)] = sa

    def install(self, sa: ChildSaEstablished) -> None:
        # Kept only so tests and status can see what would have been installed.
        self.inbound_only.pop((sa.spi_in, sa.spi_out), None)
        self.installed[(sa.spi_in, sa.spi_out)] = sa

    def remove(self, sa: ChildSaDeleted) -> None:
        self.inbound_only.pop((sa.spi_in, sa.spi_out), None)
        self.installed.pop((sa.spi_in, sa.spi_out), None)

    def counters(self, spi_in: int, spi_out: int) -> Counters:
        return zero_counters()

    def receive_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        pass

    def close(self) -> None:
        self.installed.clear()
        self.inbound_only.clear()
        self.closed = True


def create_backend(name: str, config: object = None) -> DataplaneBackend:
    """The backend called ``name``; others than "none" are imported on first use.

    Raises DataplaneError for an unknown name, a backend module that is missing
    or broken, or a backend that cannot start.
    """
    if name == "none":
        return NoneBackend()
    if name not in BACKEND_NAMES:
        raise DataplaneError(
            f"unknown data plane {name!r} (use one of: {', '.join(BACKEND_NAMES)})"
        )
    try:
        module = importlib.import_module(f"ikev1d.dataplane.{name}")
        factory = module.create_backend
    except (ImportError, AttributeError) as exc:
        raise DataplaneError(f"data plane {name!r} is not available: {exc}") from exc
    try:
        backend = factory(config)
    except OSError as exc:
        raise DataplaneError(f"data plane {name!r} cannot start: {exc}") from exc
    if not isinstance(backend, DataplaneBackend):
        raise DataplaneError(f"data plane {name!r} is not available: bad backend object")
    return backend

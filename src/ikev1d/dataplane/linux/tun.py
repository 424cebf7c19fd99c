"""The OS-facing parts of the userspace data plane: TUN device, raw ESP sockets, routes.

* :class:`TunDevice`: a Linux TUN interface (``/dev/net/tun``, ``TUNSETIFF`` with
  ``IFF_TUN | IFF_NO_PI``: every read and write is exactly one IP packet). The
  interface is not persistent, so it disappears when the file descriptor is closed,
  even if the daemon dies. With offloads it is opened with ``IFF_VNET_HDR``: every
  read and write starts with a virtio-net header, and a write may carry a TCP
  super-packet of up to 64 KiB that the kernel takes as one (``gro``: what the
  data plane coalesces from one receive batch, see
  :mod:`ikev1d.dataplane.linux.offload`). ``tso`` also asks ``TUNSETOFFLOAD`` for
  checksum and TCP segmentation offload (``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``):
  the kernel's TCP then hands over super-packets in one read, but every packet's
  transport checksum is left for us to complete, UDP's included (no UDP
  segmentation offload is asked for: Linux before 6.2 has no ``TUN_F_USO4/6``).
  A kernel that refuses gets the plain device (one packet per read and write).
* :class:`RawEspSocket`: IP protocol 50 (RFC 4303 §2) on a raw socket. The kernel
  writes the outer IP header on send; on receipt an IPv4 raw socket hands over the
  whole datagram (reassembled), an IPv6 one only the payload.
* :class:`Routes`: routes of remote networks into the TUN device, with ``src`` set
  to an address of ours inside the SA's local networks when the host has one (or
  to a Mode Config virtual IP, which goes onto the TUN device), so ordinary
  programs pick a source address that the SA covers. pyroute2 (netlink).
  Routes are added, never replaced (an administrator's route to the same network
  makes the install fail instead of being overwritten), carry ``proto``
  :data:`~ikev1d.dataplane.linux.xfrm.RTPROT_IKEV1D`, and only those added here
  are deleted again. The TUN routes vanish with the device when the process dies;
  a pinned host route to a peer does not, so the backend records those.

Everything is non-blocking; ``read``/``recv`` return None when nothing is left
(EAGAIN), which lets the data plane drain a readiness event in one loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from ikev1d.dataplane.linux.mmsg import MmsgSocket
from ikev1d.dataplane.linux.offload import VNET_HDR_LEN, ZERO_VNET_HDR
from ikev1d.dataplane.linux.sockbuf import enlarge_buffers
from ikev1d.dataplane.linux.xfrm import RTPROT_IKEV1D
from ikev1d.engine.api import Network
from ikev1d.errors import Ikev1dError
from ikev1d.wire.constants import IPPROTO_ESP

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_TUN_NAME",
    "Netlink",
    "RawEspSocket",
    "Routes",
    "TunDevice",
    "TunError",
]

log = logging.getLogger(__name__)

TUN_PATH: Final = "/dev/net/tun"
DEFAULT_TUN_NAME: Final = "ikev1d%d"
"""The kernel replaces %d with the first free number (ikev1d0, ikev1d1, ...)."""
DEFAULT_MTU: Final = 1400
"""A 1400-octet packet becomes at most 1492 octets on a 1500-octet link: IPv4 (20) + UDP 4500
(8) + SPI/sequence (8) + AES-CBC IV (16) + 1408 ciphertext + HMAC-SHA-512-256 ICV (32)."""

# linux/if_tun.h
_TUNSETIFF: Final = 0x400454CA
_TUNSETOFFLOAD: Final = 0x400454D0
_TUNGETFEATURES: Final = 0x800454CF
_IFF_TUN: Final = 0x0001
_IFF_NO_PI: Final = 0x1000
_IFF_VNET_HDR: Final = 0x4000
_TUN_F_CSUM: Final = 0x01
_TUN_F_TSO4: Final = 0x02
_TUN_F_TSO6: Final = 0x04
TUN_OFFLOADS: Final = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6
_IFREQ: Final = struct.Struct("16sH22x")

_IP_PKTINFO: Final = 8
_IP_MTU_DISCOVER: Final = 10  # linux/in.h; the socket module of Python 3.11 lacks both
_IP_PMTUDISC_DONT: Final = 0
_TX_QUEUE_LENGTH: Final = 1000
_MAX_PACKET: Final = 65535
_NETLINK_TIMEOUT: Final = 10.0
_T = TypeVar("_T")


class TunError(Ikev1dError, OSError):
    """The TUN device, the raw socket or a route could not be set up; the message says why."""


class TunDevice:
    """A TUN interface owned by this process; ``close`` removes it."""

    def __init__(
        self, netlink: Netlink, name: str = DEFAULT_TUN_NAME, mtu: int = DEFAULT_MTU,
        *, offload: str = "off",
    ) -> None:
        """``offload``: ``"off"``, ``"gro"`` or ``"tso"`` (see the module text);
        :attr:`vnet_hdr` and :attr:`tso` say what the kernel granted."""
        self._fd = -1
        self.vnet_hdr = False
        """Reads and writes carry a virtio-net header; writes may be TCP super-packets."""
        self.tso = False
        """Reads may be TCP super-packets, or packets with a partial checksum."""
        try:
            if offload in ("gro", "tso"):
                self._open_offloaded(name, TUN_OFFLOADS if offload == "tso" else 0)
            if self._fd < 0:
                self._fd, self.name = _open_tun(name, _IFF_TUN | _IFF_NO_PI)
            self.mtu = mtu
            self.index = _link_up(netlink, self.name, mtu)
        except BaseException:
            self.close()
            raise
        log.debug("TUN device %s (index %d, MTU %d, offload %s) open", self.name, self.index,
                  mtu, self.offload)

    @classmethod
    def adopt(cls, fd: int, name: str, vnet_hdr: bool) -> TunDevice:
        """The device as opened (and set up) by another process and inherited as ``fd``:
        reads and writes only; closing it leaves the device to its owner."""
        tun = cls.__new__(cls)
        tun._fd = fd
        tun.name = name
        tun.vnet_hdr = vnet_hdr
        tun.tso = False
        tun.mtu = 0
        tun.index = -1
        os.set_blocking(fd, False)
        return tun

    @property
    def offload(self) -> str:
        """What was granted: ``"tso"``, ``"gro"`` or ``"off"``."""
        return "tso" if self.tso else "gro" if self.vnet_hdr else "off"

    def _open_offloaded(self, name: str, offloads: int) -> None:
        """Open the device with IFF_VNET_HDR and ``offloads``, or leave ``_fd`` at -1
        (the caller falls back to plain packets) when the kernel refuses either."""
        fd, self.name = _open_tun(name, _IFF_TUN | _IFF_NO_PI | _IFF_VNET_HDR,
                                  need_feature=_IFF_VNET_HDR)
        if fd < 0:
            log.info("TUN offloads: the kernel has no IFF_VNET_HDR; one packet per read")
            return
        try:
            # Also with 0: what the device offloads must not be left to chance.
            fcntl.ioctl(fd, _TUNSETOFFLOAD, offloads)
        except OSError as exc:
            # The header cannot be switched off again on this descriptor: start over.
            os.close(fd)
            log.info("TUN offloads refused by the kernel (%s); one packet per read",
                     exc.strerror)
            return
        self._fd = fd
        self.vnet_hdr = True
        self.tso = offloads != 0

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        """One IP packet (after a virtio-net header when :attr:`vnet_hdr`), or None when
        the queue is empty."""
        try:
            return os.read(self._fd, _MAX_PACKET + VNET_HDR_LEN)
        except (BlockingIOError, InterruptedError):
            return None

    def write(self, packet: bytes) -> None:
        """Hand one IP packet to the kernel as if it arrived on this interface."""
        if self.vnet_hdr:
            # No GSO, checksums complete: the packet is taken as it is.
            os.writev(self._fd, (ZERO_VNET_HDR, packet))
        else:
            os.write(self._fd, packet)

    def write_vnet(self, buffer: bytes) -> None:
        """Write a virtio-net header and its packet (only when :attr:`vnet_hdr`)."""
        os.write(self._fd, buffer)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open_tun(name: str, flags: int, need_feature: int = 0) -> tuple[int, str]:
    """(descriptor, device name) of a new TUN device; (-1, "") when ``need_feature``
    is not among the features the kernel reports (TUNGETFEATURES)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError(errno.ENOENT, f"{TUN_PATH} does not exist (no TUN support; "
                       "load the 'tun' module or use dataplane = \"kernel\")") from None
    except PermissionError:
        raise TunError(errno.EACCES, f"no permission to open {TUN_PATH} "
                       "(run as root or with CAP_NET_ADMIN)") from None
    except OSError as exc:
        raise TunError(exc.errno, f"cannot open {TUN_PATH}: {exc.strerror}") from None
    try:
        if need_feature:
            try:
                features = struct.unpack(
                    "=I", fcntl.ioctl(fd, _TUNGETFEATURES, bytes(4)))[0]
            except OSError:
                features = 0
            if not features & need_feature:
                os.close(fd)
                return -1, ""
        ifr = _IFREQ.pack(name.encode(), flags)
        try:
            answer = fcntl.ioctl(fd, _TUNSETIFF, ifr)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot create TUN device {name!r}: "
                           f"{exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, answer[:16].rstrip(b"\0").decode()


class Netlink:
    """pyroute2's IPRoute, used from one worker thread.

    pyroute2 0.9's synchronous API drives an asyncio loop of its own and refuses
    to run inside the daemon's running loop ("This event loop is already
    running"), so every call is made in a dedicated thread and waited for.
    Link and route changes happen only when SAs come and go, so blocking the
    loop for those milliseconds is fine.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ikev1d-netlink")
        self._ipr: Any = None
        try:
            self.call(lambda ipr: None)
        except BaseException:
            self.close()
            raise

    def call(self, fn: Callable[[Any], _T]) -> _T:
        """``fn(ipr)`` in the netlink thread; its exception is re-raised here."""
        return self._pool.submit(self._run, fn).result(timeout=_NETLINK_TIMEOUT)

    def _run(self, fn: Callable[[Any], _T]) -> _T:
        if self._ipr is None:
            from pyroute2 import IPRoute  # imported here: 0.2 s that only this backend needs

            self._ipr = IPRoute()
        return fn(self._ipr)

    def close(self) -> None:
        def _close() -> None:
            if self._ipr is not None:
                with contextlib.suppress(Exception):
                    self._ipr.close()
                self._ipr = None

        with contextlib.suppress(Exception):
            self._pool.submit(_close).result(timeout=_NETLINK_TIMEOUT)
        self._pool.shutdown(wait=False)


def _netlink_errno(exc: BaseException) -> int | None:
    """The errno of a pyroute2 NetlinkError (``code``) or an OSError."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    return exc.errno if isinstance(exc, OSError) else None


def _link_up(netlink: Netlink, name: str, mtu: int) -> int:
    def up(ipr: Any) -> int:
        indexes = ipr.link_lookup(ifname=name)
        if not indexes:
            raise TunError(errno.ENODEV, f"TUN device {name} vanished")
        index = int(indexes[0])
        ipr.link("set", index=index, mtu=mtu, txqlen=_TX_QUEUE_LENGTH, state="up")
        return index

    try:
        return netlink.call(up)
    except TunError:
        raise
    except Exception as exc:  # pyroute2 raises NetlinkError and friends
        raise TunError(errno.EIO, f"cannot bring up {name}: {exc}") from None


class RawEspSocket:
    """ESP straight over IP (protocol 50) for one address family."""

    def __init__(self, family: int = socket.AF_INET) -> None:
        try:
            sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_ESP)
        except PermissionError:
            raise TunError(errno.EPERM, "no permission for a raw ESP socket "
                           "(run as root or with CAP_NET_RAW)") from None
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open a raw ESP socket: {exc.strerror}") from None
        self.family = family
        self._sock = sock
        self._pktinfo: dict[str, list[tuple[int, int, bytes]]] = {}
        self._mmsg: MmsgSocket | None = None
        self._mmsg_failed = False
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                # Fragment outer packets that exceed the path MTU instead of failing
                # with EMSGSIZE: a smaller MTU on the way (PPPoE, another tunnel) must
                # not turn into a black hole for the users' traffic (RFC 4459 §3 lists
                # fragmenting after encapsulation as what tunnels commonly do).
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            enlarge_buffers(sock)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def adopt(cls, sock: socket.socket) -> RawEspSocket:
        """A raw ESP socket opened (and set up) by another process and inherited."""
        raw = cls.__new__(cls)
        raw.family = sock.family
        raw._sock = sock
        raw._pktinfo = {}
        raw._mmsg = None
        raw._mmsg_failed = False
        return raw

    @classmethod
    def ipv6(cls) -> RawEspSocket:
        """ESP over IPv6 (opened when the first SA with an IPv6 peer is installed)."""
        return cls(socket.AF_INET6)

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self) -> tuple[bytes, str] | None:
        """(ESP packet, outer source address), or None when the queue is empty.

        Other socket errors (a pending ICMP error, for instance) raise OSError.

        IPv4 raw sockets deliver the IP header too (raw(7)); it is cut off here.
        """
        try:
            data, addr = self._sock.recvfrom(_MAX_PACKET)
        except (BlockingIOError, InterruptedError):
            return None
        if self.family == socket.AF_INET:
            if len(data) < 20:
                return b"", str(addr[0])
            data = data[(data[0] & 0x0F) * 4:]
        return data, str(addr[0])

    def _batcher(self) -> MmsgSocket | None:
        """The ``sendmmsg``/``recvmmsg`` vectors, made at the first batch (a socket that
        only ever sends, or only receives, maps no buffers for the other direction's
        use until then); None where they cannot be made."""
        mmsg = self._mmsg
        if mmsg is None and not self._mmsg_failed:
            try:
                mmsg = self._mmsg = MmsgSocket(self._sock)
            except (OSError, ValueError) as exc:
                log.info("raw ESP: no batched system calls (%s): one per packet", exc)
                self._mmsg_failed = True
        return mmsg

    def recv_many(self) -> tuple[list[bytes], int] | None:
        """(ESP packets, how many were truncated and dropped) of one ``recvmmsg``, the
        IPv4 header cut off; None when the queue is empty. Without batching (the
        call missing or refused), one packet by :meth:`recv`. OSError for a
        pending socket error, as :meth:`recv`."""
        mmsg = self._batcher()
        if mmsg is not None and mmsg.recv_batching:
            got = mmsg.recv_many()
            if got is not None or mmsg.recv_batching:
                return got
        one = self.recv()
        return None if one is None else ([one[0]], 0)

    def send_many(self, packets: list[tuple[bytes, str, str]]) -> list[tuple[int, OSError]]:
        """Send (ESP packet, local, remote) items with ``sendmmsg``, in order: the
        (index, error) of each one refused. Falls back to :meth:`send` per packet
        where the call is missing or refused."""
        mmsg = self._batcher()
        if mmsg is None or not mmsg.send_batching:
            failed: list[tuple[int, OSError]] = []
            for i, item in enumerate(packets):
                try:
                    self.send(*item)
                except OSError as exc:
                    failed.append((i, exc))
            return failed
        return mmsg.send_many(packets, self.send)

    def send(self, esp: bytes, local: str, remote: str) -> None:
        """Send ``esp`` to ``remote`` from ``local`` (IP_PKTINFO picks the source address)."""
        cmsg = self._pktinfo.get(local)
        if cmsg is None:
            cmsg = self._pktinfo[local] = self._make_pktinfo(local)
        if cmsg:
            self._sock.sendmsg([esp], cmsg, 0, (remote, 0))
        else:
            self._sock.sendto(esp, (remote, 0))

    def _make_pktinfo(self, local: str) -> list[tuple[int, int, bytes]]:
        """The ancillary data selecting ``local`` as source, built once per address."""
        if self.family != socket.AF_INET or not local or local == "0.0.0.0":  # noqa: S104
            return []
        # struct in_pktinfo: ifindex 0 (routing chooses), ipi_spec_dst = source address.
        info = struct.pack("@i4s4s", 0, socket.inet_aton(local), bytes(4))
        return [(socket.IPPROTO_IP, _IP_PKTINFO, info)]

    def close(self) -> None:
        if self._mmsg is not None:
            self._mmsg.close()
            self._mmsg = None
        self._sock.close()


#: Seconds the host's address list is reused for choosing a route's source address.
ADDRESSES_TTL = 1.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Routes:
    """Routes into the TUN device (the backend counts which SAs still need each one)."""

    def __init__(self, netlink: Netlink, ifindex: int) -> None:
        self.ifindex = ifindex
        self._netlink = netlink
        self._installed: set[str] = set()
        self._bypasses: set[str] = set()
        self._addresses: set[str] = set()
        self._address_list: tuple[float, list[Address]] | None = None

    def local_address_in(self, networks: Iterable[Network]) -> str | None:
        """An address configured on this host inside one of ``networks``, if any."""
        nets = list(networks)
        for addr in self._host_addresses():
            if any(addr.version == n.version and addr in n for n in nets):
                return str(addr)
        return None

    def _host_addresses(self) -> list[Address]:
        """This host's addresses (no loopback or link-local ones: never a source for
        tunnelled traffic, and a 0.0.0.0/0 selector contains them). Every IPsec SA
        installed asks, and a netlink dump parsed by pyroute2 cost more than the
        whole handshake: the list is kept for :data:`ADDRESSES_TTL` seconds, and
        dropped when we add or remove an address ourselves."""
        now = time.monotonic()
        cached = self._address_list
        if cached is not None and now - cached[0] < ADDRESSES_TTL:
            return cached[1]
        try:
            messages = self._netlink.call(lambda ipr: list(ipr.get_addr()))
        except Exception as exc:
            log.debug("cannot list addresses: %s", exc)
            return []
        found: list[Address] = []
        for msg in messages:
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            addr = ipaddress.ip_address(text)
            if not (addr.is_loopback or addr.is_link_local):
                found.append(addr)
        self._address_list = (now, found)
        return found

    def add(self, network: Network, src: str | None) -> None:
        """Route ``network`` into the TUN device (``src``: preferred source address).

        Never over an existing route to the same network (NLM_F_EXCL): that one is
        someone else's, and replacing it would take it away for good."""
        kwargs: dict[str, Any] = {"dst": str(network), "oif": self.ifindex,
                                  "proto": RTPROT_IKEV1D}
        if network.version == 6:
            kwargs["family"] = socket.AF_INET6
        if src is not None:
            kwargs["prefsrc"] = src
        try:
            self._netlink.call(lambda ipr: ipr.route("add", **kwargs))
        except Exception as exc:
            if _netlink_errno(exc) == errno.EEXIST:
                raise TunError(errno.EEXIST, f"a route to {network} exists already and is "
                               "not ikev1d's: not replacing it (remove it, or change the "
                               "SA's remote networks)") from None
            raise TunError(errno.EIO, f"cannot add route to {network} "
                           f"via TUN{f' src {src}' if src else ''}: {exc}") from None
        self._installed.add(str(network))

    def remove(self, network: Network) -> None:
        if str(network) not in self._installed:
            return  # not added here: not ours to remove
        self._installed.discard(str(network))
        kwargs: dict[str, Any] = {"dst": str(network), "oif": self.ifindex,
                                  "proto": RTPROT_IKEV1D}
        if network.version == 6:
            kwargs["family"] = socket.AF_INET6
        try:
            self._netlink.call(lambda ipr: ipr.route("del", **kwargs))
        except Exception as exc:
            # Gone already (the device went down, or someone removed it): nothing to undo.
            log.debug("removing route to %s: %s", network, exc)

    def _has_address(self, ipr: Any, address: str) -> bool:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text and ipaddress.ip_address(text) == ipaddress.ip_address(address):
                return True
        return False

    def add_address(self, address: str) -> bool:
        """Put a virtual IP (a host address) on the TUN device; False when this host has
        it already (on any interface): then it is someone else's and left as it is.

        Nothing records it: it vanishes with the device when the process dies."""
        addr = ipaddress.ip_address(address)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET

        def add(ipr: Any) -> bool:
            if self._has_address(ipr, address):
                return False
            ipr.addr("add", index=self.ifindex, address=address, prefixlen=addr.max_prefixlen,
                     family=family)
            return True

        try:
            added = self._netlink.call(add)
        except Exception as exc:
            if _netlink_errno(exc) == errno.EEXIST:
                return False
            raise TunError(errno.EIO, f"cannot add address {address}: {exc}") from None
        self._address_list = None
        if added:
            self._addresses.add(address)
        return bool(added)

    def remove_address(self, address: str) -> None:
        """Remove a virtual IP that :meth:`add_address` put on the TUN device (only such)."""
        if address not in self._addresses:
            return
        self._addresses.discard(address)
        self._address_list = None
        addr = ipaddress.ip_address(address)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        try:
            self._netlink.call(lambda ipr: ipr.addr(
                "del", index=self.ifindex, address=address, prefixlen=addr.max_prefixlen,
                family=family))
        except Exception as exc:
            log.debug("removing address %s: %s", address, exc)

    def add_bypass(self, peer: str) -> bool:
        """Pin a host route to ``peer`` on the path it has now, outside the TUN device.

        Needed when an SA's remote networks contain the peer's own address (a
        full tunnel, remote_ts 0.0.0.0/0): otherwise IKE and ESP to the peer would
        be routed into the TUN device and sealed again, forever. strongSwan's
        kernel-libipsec installs the same kind of exclude route. Returns False when
        there is nothing to pin (no route, or the path already is the TUN device).
        A host route to the peer that exists already (an administrator's) keeps
        IKE and ESP out of the tunnel just as well: it is left as it is, and True
        returned, but it is not ours and is never removed.
        """
        addr = ipaddress.ip_address(peer)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET

        def pin(ipr: Any) -> bool:
            found = ipr.route("get", dst=peer, family=family)
            if not found:
                return False
            oif = found[0].get_attr("RTA_OIF")
            gateway = found[0].get_attr("RTA_GATEWAY")
            if oif is None or oif == self.ifindex:
                return False
            kwargs: dict[str, Any] = {"dst": f"{peer}/{addr.max_prefixlen}", "oif": oif,
                                      "family": family, "proto": RTPROT_IKEV1D}
            if gateway:
                kwargs["gateway"] = gateway
            ipr.route("add", **kwargs)
            return True

        try:
            pinned = self._netlink.call(pin)
        except Exception as exc:
            if _netlink_errno(exc) == errno.EEXIST:
                log.info("a host route to peer %s exists already; it is used as it is", peer)
                return True
            raise TunError(errno.EIO, f"cannot pin the route to peer {peer}: {exc}") from None
        if pinned:
            self._bypasses.add(peer)
        return bool(pinned)

    def owned_bypasses(self) -> list[str]:
        """The peers whose host routes were added here (what a crash would leave)."""
        return sorted(self._bypasses)

    def remove_stale_bypass(self, peer: str) -> bool:
        """Delete a host route to ``peer`` that an earlier run added (our ``proto``
        only: the kernel compares it, so an administrator's route stays)."""
        addr = ipaddress.ip_address(peer)
        kwargs: dict[str, Any] = {
            "dst": f"{peer}/{addr.max_prefixlen}", "proto": RTPROT_IKEV1D,
            "family": socket.AF_INET6 if addr.version == 6 else socket.AF_INET,
        }
        try:
            self._netlink.call(lambda ipr: ipr.route("del", **kwargs))
        except Exception as exc:
            log.debug("no leftover route to peer %s: %s", peer, exc)
            return False
        return True

    def remove_bypass(self, peer: str) -> None:
        if peer not in self._bypasses:
            return
        self._bypasses.discard(peer)
        addr = ipaddress.ip_address(peer)
        kwargs: dict[str, Any] = {
            "dst": f"{peer}/{addr.max_prefixlen}", "proto": RTPROT_IKEV1D,
            "family": socket.AF_INET6 if addr.version == 6 else socket.AF_INET,
        }
        try:
            self._netlink.call(lambda ipr: ipr.route("del", **kwargs))
        except Exception as exc:
            log.debug("removing the route to peer %s: %s", peer, exc)

    def close(self) -> None:
        """Remove every route still installed (the Netlink helper is closed by its owner)."""
        for net_text in list(self._installed):
            self.remove(ipaddress.ip_network(net_text))
        for peer in list(self._bypasses):
            self.remove_bypass(peer)

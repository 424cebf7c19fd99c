"""Linux XFRM over netlink: add and delete IPsec SAs and policies, read SA counters.

Messages are packed here with ``struct`` from the layouts in <linux/xfrm.h>
(x86-64/aarch64 alignment: ``xfrm_usersa_info`` is 224 octets). pyroute2 is not
used: 0.9 has no NETLINK_XFRM family at all (only an ``ifinfmsg`` plugin for
xfrm *interfaces*), its message classes are untyped, and its synchronous API
runs an asyncio loop of its own that cannot be entered from the daemon's loop.
Shelling out to ``ip xfrm`` would put the keys on a command line (readable in
/proc by every user), so that is not done either. A request is one netlink
datagram answered in microseconds, so the socket is used synchronously.

The value classes (:class:`XfrmState`, :class:`XfrmPolicy`, ...) are plain
frozen dataclasses; :func:`encode_new_state` and friends are pure, so the byte
layout is unit-tested without a kernel.

Also here, because only the adapters touch sockets: :func:`prepare_ike_sockets`
makes the daemon's UDP sockets bypass IPsec policies (IKE must never be caught
by its own tunnels) and lets the kernel decapsulate ESP-in-UDP arriving on the
NAT-T port (RFC 3948, ``UDP_ENCAP_ESPINUDP``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from ikev1d.engine.api import Network
from ikev1d.errors import Ikev1dError
from ikev1d.wire.constants import IPPROTO_ESP

__all__ = [
    "RTPROT_IKEV1D",
    "XFRM_INF",
    "InstalledPolicy",
    "InstalledState",
    "Route",
    "RouteSocket",
    "XfrmAlgorithm",
    "XfrmError",
    "XfrmExpire",
    "XfrmExpireSocket",
    "XfrmPolicy",
    "XfrmSelector",
    "XfrmSocket",
    "XfrmState",
    "XfrmStateCounters",
    "XfrmTemplate",
    "decode_expire",
    "decode_policy_info",
    "decode_state_info",
    "encode_del_policy",
    "encode_del_state",
    "encode_get_state",
    "encode_new_policy",
    "encode_new_state",
    "encode_route",
    "prepare_ike_sockets",
]

log = logging.getLogger("ikev1d.dataplane.linux.xfrm")

# --- constants from <linux/netlink.h> and <linux/xfrm.h> ------------------------------

NETLINK_ROUTE: Final = 0
NETLINK_XFRM: Final = 6
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_CAPPED: Final = 0x100
NLM_F_ACK_TLVS: Final = 0x200
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSGERR_ATTR_MSG: Final = 1

# <linux/rtnetlink.h>
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RTA_PREFSRC: Final = 7
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_PROTO: Final = 11
"""The originator of an address (Linux 6.1, <linux/if_addr.h>); ours carry RTPROT_IKEV1D."""
IFA_F_NODAD: Final = 0x02
RT_TABLE_MAIN: Final = 254
RTPROT_STATIC: Final = 4
RTPROT_IKEV1D: Final = 0x49
"""The ``proto`` of the routes ikev1d adds (``ip route`` shows 73): not one of the numbers
in iproute2's rt_protos. It changes nothing in how a route matches; it marks the route as
ours, and a delete that names it (fib_table_delete compares it) removes only ours."""
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_NOWHERE: Final = 255
RTN_UNICAST: Final = 1

XFRM_MSG_NEWSA: Final = 0x10
XFRM_MSG_DELSA: Final = 0x11
XFRM_MSG_GETSA: Final = 0x12
XFRM_MSG_NEWPOLICY: Final = 0x13
XFRM_MSG_DELPOLICY: Final = 0x14
XFRM_MSG_GETPOLICY: Final = 0x15
XFRM_MSG_ACQUIRE: Final = 0x17
XFRM_MSG_EXPIRE: Final = 0x18
XFRMNLGRP_ACQUIRE: Final = 1
XFRMNLGRP_EXPIRE: Final = 2

XFRMA_ALG_AUTH_TRUNC: Final = 20
XFRMA_ALG_CRYPT: Final = 2
XFRMA_ALG_AEAD: Final = 18
XFRMA_ENCAP: Final = 4
XFRMA_TMPL: Final = 5
XFRMA_REPLAY_ESN_VAL: Final = 23

XFRM_MODE_TRANSPORT: Final = 0
XFRM_MODE_TUNNEL: Final = 1
XFRM_POLICY_IN: Final = 0
XFRM_POLICY_OUT: Final = 1
XFRM_POLICY_FWD: Final = 2
XFRM_POLICY_ALLOW: Final = 0
XFRM_STATE_AF_UNSPEC: Final = 32
"""SA flag: a tunnel-mode SA carries inner packets of either family (strongSwan sets it too)."""
XFRM_INF: Final = 0xFFFF_FFFF_FFFF_FFFF
"""No limit, in ``xfrm_lifetime_cfg``."""

UDP_ENCAP: Final = 100
UDP_ENCAP_ESPINUDP: Final = 2
"""RFC 3948 encapsulation, non-ESP marker for IKE (<linux/udp.h>)."""
IP_XFRM_POLICY: Final = 17
IPV6_XFRM_POLICY: Final = 35

_MODES: Final = {"transport": XFRM_MODE_TRANSPORT, "tunnel": XFRM_MODE_TUNNEL}
_DIRECTIONS: Final = {"in": XFRM_POLICY_IN, "out": XFRM_POLICY_OUT, "fwd": XFRM_POLICY_FWD}

# Struct layouts, native byte order ("=" with explicit padding, as the kernel ABI has it).
_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_SELECTOR = struct.Struct("=16s16sHHHHHBBB3xiI")  # xfrm_selector, 56
_XFRM_ID = struct.Struct("=16sIB3x")  # xfrm_id, 24
_LIFETIME_CFG = struct.Struct("=8Q")  # 64
_LIFETIME_CUR = struct.Struct("=4Q")  # 32
_USERSA_TAIL = struct.Struct("=IIIIIHBBB7x")  # stats(12) seq reqid family mode replay flags
_USERSA_ID = struct.Struct("=16sIHB1x")  # xfrm_usersa_id, 24
_USERPOLICY_TAIL = struct.Struct("=IIBBBB4x")  # priority index dir action flags share + pad
_USERPOLICY_ID = struct.Struct("=56sIB3x")  # xfrm_userpolicy_id, 64
_USER_TMPL = struct.Struct("=24sH2x16sIBBBxIII")  # xfrm_user_tmpl, 64
_ALGO_NAME = struct.Struct("=64sI")  # xfrm_algo header
_ENCAP_TMPL = struct.Struct("=HHH2x16s")  # xfrm_encap_tmpl, 24
_REPLAY_ESN = struct.Struct("=6I")  # xfrm_replay_state_esn header
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg, 12
_IFADDRMSG = struct.Struct("=BBBBI")  # ifaddrmsg, 8

USERSA_INFO_SIZE: Final = (
    _SELECTOR.size + _XFRM_ID.size + 16 + _LIFETIME_CFG.size + _LIFETIME_CUR.size
    + _USERSA_TAIL.size
)  # fmt: skip
USERPOLICY_INFO_SIZE: Final = (
    _SELECTOR.size + _LIFETIME_CFG.size + _LIFETIME_CUR.size + _USERPOLICY_TAIL.size
)
_CURLFT_OFFSET: Final = _SELECTOR.size + _XFRM_ID.size + 16 + _LIFETIME_CFG.size


class XfrmError(Ikev1dError, OSError):
    """The kernel refused a request (``errno`` set) or answered something unexpected."""


# --- values ----------------------------------------------------------------------------


@dataclass(frozen=True)
class XfrmAlgorithm:
    """A kernel crypto algorithm with its key.

    ``kind`` is ``crypt`` (``xfrm_algo``), ``auth`` (``xfrm_algo_auth``,
    ``bits`` = truncation length) or ``aead`` (``xfrm_algo_aead``, ``bits`` =
    ICV length).
    """

    kind: str
    name: str
    key: bytes = field(repr=False)
    bits: int = 0


@dataclass(frozen=True)
class XfrmSelector:
    """Which packets: source and destination networks (any protocol, any port)."""

    src: Network
    dst: Network

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.src.version == 6 else socket.AF_INET


@dataclass(frozen=True)
class XfrmState:
    """One SA (one direction): ``src``/``dst`` are the outer addresses."""

    src: str
    dst: str
    spi: int
    reqid: int
    mode: str
    algorithms: tuple[XfrmAlgorithm, ...]
    replay_window: int = 0
    encap: tuple[int, int] | None = None
    """(source port, destination port) of UDP encapsulation (RFC 3948), or None."""
    selector: XfrmSelector | None = None
    """Transport mode: the hosts; None (any, either family) for tunnel mode."""
    soft_bytes: int = 0
    hard_bytes: int = 0
    """Byte lifetimes (``xfrm_lifetime_cfg``): the kernel reports the soft one with an
    XFRM_MSG_EXPIRE and deletes the SA at the hard one. 0: no limit."""
    soft_packets: int = 0
    hard_packets: int = 0
    """Packet lifetimes, the same way: what keeps the 32-bit ESP sequence number
    from running out (RFC 4303 section 3.3.3). 0: no limit."""


@dataclass(frozen=True)
class XfrmTemplate:
    """What a policy requires: ESP from ``src`` to ``dst`` with ``reqid``, in ``mode``."""

    src: str
    dst: str
    reqid: int
    mode: str


@dataclass(frozen=True)
class XfrmPolicy:
    selector: XfrmSelector
    direction: str
    """``in``, ``out`` or ``fwd``."""
    priority: int
    template: XfrmTemplate


@dataclass(frozen=True)
class InstalledState:
    """An SA as a dump lists it: enough to know whose it is and to delete it."""

    src: str
    dst: str
    spi: int
    reqid: int


@dataclass(frozen=True)
class InstalledPolicy:
    """A policy as a dump lists it; ``selector`` None when it names ports, a protocol or
    an interface (ikev1d installs none such); ``reqids`` of its templates."""

    selector: XfrmSelector | None
    direction: str
    reqids: tuple[int, ...]


@dataclass(frozen=True)
class XfrmExpire:
    """An XFRM_MSG_EXPIRE: SA ``spi`` towards ``dst`` reached a soft or hard limit."""

    dst: str
    spi: int
    hard: bool


@dataclass(frozen=True)
class XfrmAcquire:
    """An XFRM_MSG_ACQUIRE: a packet matched a policy whose template no SA fills
    (RFC 2367 section 3.1.6 SADB_ACQUIRE in netlink form). ``reqid`` is the first
    template's, which names the trap; ``selector`` the packet's (the policy's)
    selector, None when it has ports or a protocol."""

    selector: XfrmSelector | None
    reqid: int
    policy_index: int


@dataclass(frozen=True)
class XfrmStateCounters:
    """From ``xfrm_lifetime_cur`` of an SA: what ``ip -s xfrm state`` prints as current."""

    bytes: int
    packets: int


# --- encoding (pure) ---------------------------------------------------------------------


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _xfrm_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """``xfrm_address_t``: 16 octets, an IPv4 address in the first four."""
    return ipaddress.ip_address(address).packed.ljust(16, b"\x00")


def _encode_selector(selector: XfrmSelector | None, family: int = 0) -> bytes:
    if selector is None:
        return _SELECTOR.pack(bytes(16), bytes(16), 0, 0, 0, 0, family, 0, 0, 0, 0, 0)
    return _SELECTOR.pack(
        _xfrm_address(selector.dst.network_address),
        _xfrm_address(selector.src.network_address),
        0, 0, 0, 0,  # dport, dport_mask, sport, sport_mask: any port
        selector.family,
        selector.dst.prefixlen,
        selector.src.prefixlen,
        0,  # any protocol
        0,  # any interface
        0,  # any user
    )  # fmt: skip


def _infinite_lifetime() -> bytes:
    return _LIFETIME_CFG.pack(*(XFRM_INF,) * 4, *(0,) * 4)


def _lifetime_cfg(state: XfrmState) -> bytes:
    """``xfrm_lifetime_cfg`` with byte and packet limits (0: none) and no time limits
    (the engine renews by time itself)."""
    return _LIFETIME_CFG.pack(state.soft_bytes or XFRM_INF, state.hard_bytes or XFRM_INF,
                              state.soft_packets or XFRM_INF, state.hard_packets or XFRM_INF,
                              *(0,) * 4)


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + bytes(-length % 4)


def _encode_algorithm(alg: XfrmAlgorithm) -> bytes:
    name = alg.name.encode()
    if len(name) >= 64:
        raise ValueError(f"algorithm name {alg.name!r} too long")
    head = _ALGO_NAME.pack(name, len(alg.key) * 8)
    if alg.kind == "crypt":
        return _attribute(XFRMA_ALG_CRYPT, head + alg.key)
    if alg.kind == "auth":
        return _attribute(XFRMA_ALG_AUTH_TRUNC, head + struct.pack("=I", alg.bits) + alg.key)
    if alg.kind == "aead":
        return _attribute(XFRMA_ALG_AEAD, head + struct.pack("=I", alg.bits) + alg.key)
    raise ValueError(f"unknown algorithm kind {alg.kind!r}")


def _mode(mode: str) -> int:
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"unknown IPsec mode {mode!r}") from None


def _spi_field(spi: int) -> int:
    """The SPI as the native-order u32 whose memory holds it in network order (``__be32``)."""
    value: int = struct.unpack("=I", spi.to_bytes(4, "big"))[0]
    return value


def encode_new_state(state: XfrmState) -> bytes:
    """XFRM_MSG_NEWSA payload: ``xfrm_usersa_info`` and its attributes."""
    family = _family_of(state.src)
    if _family_of(state.dst) != family:
        raise ValueError(f"SA addresses {state.src} and {state.dst} differ in family")
    replay_window = state.replay_window
    flags = 0
    if state.selector is None and state.mode == "tunnel":
        flags |= XFRM_STATE_AF_UNSPEC
    # Windows above 32 need the bitmap attribute; usersa_info.replay_window must then be 0.
    esn_attr = b""
    if replay_window > 32:
        words = (replay_window + 31) // 32
        esn = _REPLAY_ESN.pack(words, 0, 0, 0, 0, replay_window) + bytes(4 * words)
        esn_attr = _attribute(XFRMA_REPLAY_ESN_VAL, esn)
        replay_window = 0
    info = b"".join((
        _encode_selector(state.selector),
        _XFRM_ID.pack(_xfrm_address(state.dst), _spi_field(state.spi), IPPROTO_ESP),
        _xfrm_address(state.src),
        _lifetime_cfg(state),
        _LIFETIME_CUR.pack(0, 0, 0, 0),
        _USERSA_TAIL.pack(0, 0, 0, 0, state.reqid, family, _mode(state.mode), replay_window, flags),
    ))  # fmt: skip
    attrs = [_encode_algorithm(alg) for alg in state.algorithms]
    if state.encap is not None:
        sport, dport = state.encap
        attrs.append(_attribute(XFRMA_ENCAP, _ENCAP_TMPL.pack(
            UDP_ENCAP_ESPINUDP, socket.htons(sport), socket.htons(dport), bytes(16))))
    attrs.append(esn_attr)
    return info + b"".join(attrs)


def encode_del_state(dst: str, spi: int) -> bytes:
    """XFRM_MSG_DELSA / GETSA payload: ``xfrm_usersa_id``."""
    return _USERSA_ID.pack(_xfrm_address(dst), _spi_field(spi), _family_of(dst), IPPROTO_ESP)


encode_get_state = encode_del_state


def _direction(direction: str) -> int:
    try:
        return _DIRECTIONS[direction]
    except KeyError:
        raise ValueError(f"unknown policy direction {direction!r}") from None


def encode_new_policy(policy: XfrmPolicy) -> bytes:
    """XFRM_MSG_NEWPOLICY payload: ``xfrm_userpolicy_info`` and one ESP template."""
    tmpl = policy.template
    info = b"".join((
        _encode_selector(policy.selector),
        _infinite_lifetime(),
        _LIFETIME_CUR.pack(0, 0, 0, 0),
        _USERPOLICY_TAIL.pack(policy.priority, 0, _direction(policy.direction),
                              XFRM_POLICY_ALLOW, 0, 0),
    ))  # fmt: skip
    template = _USER_TMPL.pack(
        # id: destination and protocol; SPI 0 = any SA with this reqid.
        _XFRM_ID.pack(_xfrm_address(tmpl.dst), 0, IPPROTO_ESP),
        _family_of(tmpl.dst),
        _xfrm_address(tmpl.src),
        tmpl.reqid,
        _mode(tmpl.mode),
        0,  # share: XFRM_SHARE_ANY
        0,  # not optional
        0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF,  # any auth, encryption, compression algorithm
    )  # fmt: skip
    return info + _attribute(XFRMA_TMPL, template)


def encode_del_policy(selector: XfrmSelector, direction: str) -> bytes:
    """XFRM_MSG_DELPOLICY payload: ``xfrm_userpolicy_id`` (selector and direction)."""
    return _USERPOLICY_ID.pack(_encode_selector(selector), 0, _direction(direction))


_DIRECTION_NAMES: Final = {v: k for k, v in _DIRECTIONS.items()}
_USERSA_ID_OFFSET: Final = _SELECTOR.size
_USERSA_SRC_OFFSET: Final = _SELECTOR.size + _XFRM_ID.size
_USERSA_TAIL_OFFSET: Final = USERSA_INFO_SIZE - _USERSA_TAIL.size
_USERPOLICY_TAIL_OFFSET: Final = USERPOLICY_INFO_SIZE - _USERPOLICY_TAIL.size


def _address(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:16] if family == socket.AF_INET6 else raw[:4]))


def _spi_value(field_value: int) -> int:
    value: int = int.from_bytes(struct.pack("=I", field_value), "big")
    return value


def decode_state_info(payload: bytes) -> InstalledState:
    """Addresses, SPI and reqid of an ``xfrm_usersa_info`` (a NEWSA in a dump)."""
    if len(payload) < USERSA_INFO_SIZE:
        raise XfrmError(f"short xfrm_usersa_info ({len(payload)} octets)")
    daddr, spi, _proto = _XFRM_ID.unpack_from(payload, _USERSA_ID_OFFSET)
    saddr = payload[_USERSA_SRC_OFFSET : _USERSA_SRC_OFFSET + 16]
    _s1, _s2, _s3, _seq, reqid, family, _mode, _replay, _flags = _USERSA_TAIL.unpack_from(
        payload, _USERSA_TAIL_OFFSET)
    return InstalledState(_address(saddr, family), _address(daddr, family), _spi_value(spi),
                          reqid)


def _decode_selector(raw: bytes) -> XfrmSelector | None:
    (daddr, saddr, dport, dmask, sport, smask, family, dlen, slen, proto, ifindex,
     _user) = _SELECTOR.unpack_from(raw)
    if dport or dmask or sport or smask or proto or ifindex or family not in (
            socket.AF_INET, socket.AF_INET6):
        return None
    try:
        dst = ipaddress.ip_network(f"{_address(daddr, family)}/{dlen}")
        src = ipaddress.ip_network(f"{_address(saddr, family)}/{slen}")
    except ValueError:
        return None  # host bits set: not a selector ikev1d writes
    return XfrmSelector(src, dst)


def decode_policy_info(payload: bytes) -> InstalledPolicy:
    """Selector, direction and template reqids of an ``xfrm_userpolicy_info`` and its
    XFRMA_TMPL attribute (a NEWPOLICY in a dump)."""
    if len(payload) < USERPOLICY_INFO_SIZE:
        raise XfrmError(f"short xfrm_userpolicy_info ({len(payload)} octets)")
    selector = _decode_selector(payload)
    _prio, _index, direction, _action, _flags, _share = _USERPOLICY_TAIL.unpack_from(
        payload, _USERPOLICY_TAIL_OFFSET)
    reqids: list[int] = []
    tmpl = _parse_attributes(payload, USERPOLICY_INFO_SIZE).get(XFRMA_TMPL, b"")
    for offset in range(0, len(tmpl) - _USER_TMPL.size + 1, _USER_TMPL.size):
        reqids.append(_USER_TMPL.unpack_from(tmpl, offset)[3])
    return InstalledPolicy(selector, _DIRECTION_NAMES.get(direction, str(direction)),
                           tuple(reqids))


def decode_expire(payload: bytes) -> XfrmExpire:
    """An XFRM_MSG_EXPIRE payload: ``xfrm_user_expire`` (the SA, then the ``hard`` octet)."""
    if len(payload) < USERSA_INFO_SIZE + 1:
        raise XfrmError(f"short xfrm_user_expire ({len(payload)} octets)")
    state = decode_state_info(payload)
    return XfrmExpire(state.dst, state.spi, bool(payload[USERSA_INFO_SIZE]))


_ACQUIRE_SEL_OFFSET: Final = _XFRM_ID.size + 16
_ACQUIRE_POLICY_OFFSET: Final = _ACQUIRE_SEL_OFFSET + _SELECTOR.size
USER_ACQUIRE_SIZE: Final = _ACQUIRE_POLICY_OFFSET + USERPOLICY_INFO_SIZE + 16
"""``xfrm_user_acquire``: id, saddr, sel, policy, then aalgos, ealgos, calgos, seq."""


def decode_acquire(payload: bytes) -> XfrmAcquire:
    """An XFRM_MSG_ACQUIRE payload: ``xfrm_user_acquire`` and the policy's XFRMA_TMPL."""
    if len(payload) < USER_ACQUIRE_SIZE:
        raise XfrmError(f"short xfrm_user_acquire ({len(payload)} octets)")
    selector = _decode_selector(payload[_ACQUIRE_SEL_OFFSET:])
    _prio, index, _dir, _action, _flags, _share = _USERPOLICY_TAIL.unpack_from(
        payload, _ACQUIRE_POLICY_OFFSET + _USERPOLICY_TAIL_OFFSET)
    tmpl = _parse_attributes(payload, USER_ACQUIRE_SIZE).get(XFRMA_TMPL, b"")
    if len(tmpl) < _USER_TMPL.size:
        raise XfrmError("XFRM acquire without a template")
    reqid: int = _USER_TMPL.unpack_from(tmpl)[3]
    return XfrmAcquire(selector, reqid, index)


def decode_state_counters(payload: bytes) -> XfrmStateCounters:
    """``curlft`` bytes and packets from an ``xfrm_usersa_info`` (a GETSA answer)."""
    if len(payload) < USERSA_INFO_SIZE:
        raise XfrmError(f"short xfrm_usersa_info ({len(payload)} octets)")
    nbytes, packets, _add, _use = _LIFETIME_CUR.unpack_from(payload, _CURLFT_OFFSET)
    return XfrmStateCounters(nbytes, packets)


# --- the netlink socket ------------------------------------------------------------------


def _error_text(code: int, ext_msg: str) -> str:
    text = os.strerror(code)
    return f"{text}: {ext_msg}" if ext_msg else text


class _NetlinkSocket:
    """A netlink socket of one protocol in the caller's network namespace; one request at a time."""

    def __init__(self, protocol: int, timeout: float = 5.0) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            sock.settimeout(timeout)
            for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                try:
                    sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:
                    pass  # older kernels: errors without the explanatory text
            sock.bind((0, 0))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _send(self, msg_type: int, payload: bytes, flags: int) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, self._seq, 0)
        self._sock.sendto(header + payload, (0, 0))
        return self._seq

    def _answers(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, payload) of the messages answering request ``seq``."""
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, rflags, rseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > len(data):
                    raise XfrmError("malformed netlink answer")
                body = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if rseq == seq:  # else an answer to an earlier, timed-out request
                    yield kind, rflags, body

    def _request(self, msg_type: int, payload: bytes, ack: bool = True,
                 extra_flags: int = 0) -> bytes | None:
        """Send one request; the first reply's payload (None for a plain ACK)."""
        seq = self._send(msg_type, payload, NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
                         | extra_flags)
        for kind, rflags, body in self._answers(seq):
            if kind == NLMSG_ERROR:
                self._raise_for_error(body, rflags)
                return None
            if kind == NLMSG_DONE:
                return None
            return body
        return None  # not reached: _answers() only ends by raising

    def _dump(self, msg_type: int, payload: bytes) -> list[tuple[int, bytes]]:
        """A dump request: every (type, payload) until NLMSG_DONE."""
        seq = self._send(msg_type, payload, NLM_F_REQUEST | NLM_F_DUMP)
        result: list[tuple[int, bytes]] = []
        for kind, rflags, body in self._answers(seq):
            if kind == NLMSG_ERROR:
                self._raise_for_error(body, rflags)
                break
            if kind == NLMSG_DONE:
                break
            result.append((kind, body))
        return result

    @staticmethod
    def _raise_for_error(body: bytes, flags: int) -> None:
        if len(body) < 4:
            raise XfrmError("short netlink error message")
        (code,) = struct.unpack_from("=i", body)
        if code == 0:
            return
        ext_msg = ""
        if flags & NLM_F_ACK_TLVS:
            # After the error code: the request's header (and its payload unless capped).
            start = 4 + _NLMSGHDR.size
            if not flags & NLM_F_CAPPED and len(body) >= start:
                (orig_len,) = struct.unpack_from("=I", body, 4)
                start = 4 + ((orig_len + 3) & ~3)
            while start + _NLATTR.size <= len(body):
                alen, akind = _NLATTR.unpack_from(body, start)
                if alen < _NLATTR.size:
                    break
                if akind == NLMSGERR_ATTR_MSG:
                    ext_msg = body[start + 4 : start + alen].split(b"\x00")[0].decode(
                        "utf-8", "replace")
                start += (alen + 3) & ~3
        raise XfrmError(-code, _error_text(-code, ext_msg))


class XfrmSocket(_NetlinkSocket):
    """A NETLINK_XFRM socket: SAs and policies."""

    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(NETLINK_XFRM, timeout)

    def add_state(self, state: XfrmState) -> None:
        self._request(XFRM_MSG_NEWSA, encode_new_state(state))

    def delete_state(self, dst: str, spi: int) -> None:
        self._request(XFRM_MSG_DELSA, encode_del_state(dst, spi))

    def state_counters(self, dst: str, spi: int) -> XfrmStateCounters:
        body = self._request(XFRM_MSG_GETSA, encode_get_state(dst, spi), ack=False)
        if body is None:
            raise XfrmError(errno.ENOENT, "no answer to XFRM_MSG_GETSA")
        return decode_state_counters(body)

    def add_policy(self, policy: XfrmPolicy) -> None:
        self._request(XFRM_MSG_NEWPOLICY, encode_new_policy(policy))

    def delete_policy(self, selector: XfrmSelector, direction: str) -> None:
        self._request(XFRM_MSG_DELPOLICY, encode_del_policy(selector, direction))

    def dump_states(self) -> list[InstalledState]:
        """Every SA in this namespace's SAD (keys are not decoded)."""
        return [decode_state_info(body) for kind, body in self._dump(XFRM_MSG_GETSA, b"")
                if kind == XFRM_MSG_NEWSA]

    def dump_policies(self) -> list[InstalledPolicy]:
        """Every policy in this namespace's SPD (socket policies are not listed)."""
        return [decode_policy_info(body) for kind, body in self._dump(XFRM_MSG_GETPOLICY, b"")
                if kind == XFRM_MSG_NEWPOLICY]


class XfrmExpireSocket:
    """The XFRMNLGRP_EXPIRE and XFRMNLGRP_ACQUIRE multicast groups: the kernel's soft
    and hard expiry reports, and its requests for SAs that trap policies want."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
        try:
            sock.setblocking(False)
            sock.bind((0, (1 << (XFRMNLGRP_EXPIRE - 1)) | (1 << (XFRMNLGRP_ACQUIRE - 1))))
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[XfrmExpire | XfrmAcquire]:
        """The expiry reports and acquires queued now (none: an empty list)."""
        found: list[XfrmExpire | XfrmAcquire] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return found
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > len(data):
                    break
                body = data[offset + _NLMSGHDR.size : offset + length]
                try:
                    if kind == XFRM_MSG_EXPIRE:
                        found.append(decode_expire(body))
                    elif kind == XFRM_MSG_ACQUIRE:
                        found.append(decode_acquire(body))
                except XfrmError as exc:
                    log.debug("ignoring an XFRM message of type %d: %s", kind, exc)
                offset += (length + 3) & ~3

    def close(self) -> None:
        self._sock.close()


# --- routes for the tunnels (rtnetlink) ------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """``DST via GATEWAY dev OIF [src PREFSRC] [metric METRIC]`` in the main table.

    Without ``prefsrc`` the kernel picks the source for each connection (by the
    outgoing interface). The kernel holds routes to one destination at different
    metrics side by side and uses the lowest (IPv4's default is 0, IPv6's 1024).
    """

    dst: Network
    oif: int
    gateway: str
    prefsrc: str | None
    metric: int = 0


def _parse_attributes(data: bytes, offset: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


def encode_route(route: Route, delete: bool = False) -> bytes:
    """RTM_NEWROUTE / RTM_DELROUTE payload: ``rtmsg`` and its attributes."""
    family = socket.AF_INET6 if route.dst.version == 6 else socket.AF_INET
    scope = RT_SCOPE_NOWHERE if delete else RT_SCOPE_UNIVERSE
    return b"".join((
        _RTMSG.pack(family, route.dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_IKEV1D, scope,
                    RTN_UNICAST, 0),
        _attribute(RTA_DST, route.dst.network_address.packed),
        _attribute(RTA_GATEWAY, ipaddress.ip_address(route.gateway).packed),
        _attribute(RTA_OIF, struct.pack("=I", route.oif)),
        b"" if delete or route.prefsrc is None
        else _attribute(RTA_PREFSRC, ipaddress.ip_address(route.prefsrc).packed),
        # In a delete too: the kernel then removes the route of that metric only
        # (fib_table_delete, ip6_route_del), not another one to the same network.
        _attribute(RTA_PRIORITY, struct.pack("=I", route.metric)) if route.metric else b"",
    ))  # fmt: skip


def encode_address(address: str, ifindex: int) -> bytes:
    """RTM_NEWADDR / RTM_DELADDR payload for a host address: ``ifaddrmsg`` and attributes."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return b"".join((
        # No duplicate address detection for IPv6: the server assigned the address to us.
        _IFADDRMSG.pack(family, ip.max_prefixlen, IFA_F_NODAD if ip.version == 6 else 0,
                        RT_SCOPE_UNIVERSE, ifindex),
        _attribute(IFA_LOCAL, ip.packed),
        _attribute(IFA_ADDRESS, ip.packed),
        _attribute(IFA_PROTO, bytes((RTPROT_IKEV1D,))),
    ))  # fmt: skip


class RouteSocket(_NetlinkSocket):
    """A NETLINK_ROUTE socket: the host's addresses, the path to a peer, tunnel routes."""

    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(NETLINK_ROUTE, timeout)

    def local_addresses(self) -> list[str]:
        """Every address configured on an interface of this namespace."""
        result: list[str] = []
        for kind, body in self._dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            if kind != RTM_NEWADDR or len(body) < _IFADDRMSG.size:
                continue
            attrs = _parse_attributes(body, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is not None and len(raw) in (4, 16):
                result.append(str(ipaddress.ip_address(raw)))
        return result

    def route_to(self, address: str) -> tuple[int, str | None]:
        """(outgoing interface index, gateway or None when on-link) towards ``address``."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        payload = _RTMSG.pack(family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + _attribute(
            RTA_DST, ip.packed)
        body = self._request(RTM_GETROUTE, payload, ack=False)
        if body is None or len(body) < _RTMSG.size:
            raise XfrmError(errno.ENETUNREACH, f"no route to {address}")
        attrs = _parse_attributes(body, _RTMSG.size)
        if RTA_OIF not in attrs:
            raise XfrmError(errno.ENETUNREACH, f"no interface towards {address}")
        (oif,) = struct.unpack("=I", attrs[RTA_OIF][:4])
        gateway = attrs.get(RTA_GATEWAY)
        return oif, str(ipaddress.ip_address(gateway)) if gateway else None

    def host_addresses(self) -> list[tuple[str, int, int | None]]:
        """(address, interface index, IFA_PROTO or None) of every address in this namespace."""
        result: list[tuple[str, int, int | None]] = []
        for kind, body in self._dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            if kind != RTM_NEWADDR or len(body) < _IFADDRMSG.size:
                continue
            index = _IFADDRMSG.unpack_from(body)[4]
            attrs = _parse_attributes(body, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            proto = attrs.get(IFA_PROTO)
            if raw is not None and len(raw) in (4, 16):
                result.append((str(ipaddress.ip_address(raw)), index,
                               proto[0] if proto else None))
        return result

    def add_address(self, address: str, ifindex: int) -> None:
        """Add a host address (/32, /128) tagged with our IFA_PROTO; EEXIST if it is there."""
        self._request(RTM_NEWADDR, encode_address(address, ifindex),
                      extra_flags=NLM_F_CREATE | NLM_F_EXCL)

    def delete_address(self, address: str, ifindex: int) -> None:
        self._request(RTM_DELADDR, encode_address(address, ifindex))

    def add_route(self, route: Route) -> None:
        self._request(RTM_NEWROUTE, encode_route(route), extra_flags=NLM_F_CREATE | NLM_F_EXCL)

    def delete_route(self, route: Route) -> None:
        self._request(RTM_DELROUTE, encode_route(route, delete=True))


# --- the daemon's IKE sockets --------------------------------------------------------------


def _bypass_policy(family: int, direction: int) -> bytes:
    """An ``xfrm_userpolicy_info`` that lets a socket's traffic skip IPsec policies."""
    return b"".join((
        _encode_selector(None, family),
        _infinite_lifetime(),
        _LIFETIME_CUR.pack(0, 0, 0, 0),
        _USERPOLICY_TAIL.pack(0, 0, direction, XFRM_POLICY_ALLOW, 0, 0),
    ))  # fmt: skip


class IkeSocket(Protocol):
    """One of the daemon's bound UDP sockets (``ikev1d.daemon.udp``), as seen from here."""

    sock: socket.socket
    family: int
    address: str
    port: int


@runtime_checkable
class IkeSockets(Protocol):
    """The daemon's UDP transport: its sockets and which port is NAT-T.

    Stated here so that the data plane needs nothing of the daemon."""

    @property
    def sockets(self) -> Sequence[IkeSocket]: ...
    @property
    def port_nat_t(self) -> int: ...


def prepare_ike_sockets(send_udp: object) -> tuple[int, list[str]]:
    """Make the daemon's UDP sockets fit for kernel IPsec; (NAT-T sockets with decap, problems).

    ``send_udp`` is what the daemon hands a data plane in ``attach``: the bound
    ``UdpTransport.send_esp_udp``, through which its sockets are reached.

    * Every socket gets per-socket bypass policies in and out, as strongSwan
      does: IKE (and keepalives) must pass even when a tunnel's selectors
      cover the gateways' own addresses.
    * Each NAT-T socket gets ``UDP_ENCAP_ESPINUDP``: the kernel then takes
      ESP-in-UDP arriving there (RFC 3948 section 2.1) into its SAs and still
      delivers IKE (non-ESP marker) and NAT-keepalives to us.
    """
    transport = getattr(send_udp, "__self__", None)
    if not isinstance(transport, IkeSockets):
        return 0, ["the daemon's UDP sockets are not reachable; ESP-in-UDP cannot be decapsulated"]
    decap = 0
    problems: list[str] = []
    for udp in transport.sockets:
        sock = udp.sock
        if udp.family == socket.AF_INET6:
            level, option = socket.IPPROTO_IPV6, IPV6_XFRM_POLICY
        else:
            level, option = socket.IPPROTO_IP, IP_XFRM_POLICY
        try:
            for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
                sock.setsockopt(level, option, _bypass_policy(udp.family, direction))
        except OSError as exc:
            problems.append(f"UDP {udp.address} port {udp.port}: no IPsec bypass policy: {exc}")
        if udp.port == transport.port_nat_t:
            try:
                sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
            except OSError as exc:
                problems.append(f"UDP {udp.address} port {udp.port}: no ESP-in-UDP decap: {exc}")
            else:
                decap += 1
    return decap, problems

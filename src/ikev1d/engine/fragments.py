"""IKE fragmentation for IKEv1: splitting our large Main Mode messages and
reassembling the peer's.

IKEv1 has no standard fragmentation; this is the scheme announced with the
FRAGMENTATION vendor ID (wire/vendor_ids.py) that Cisco, Windows and strongSwan
speak. A message too large for one datagram is cut, after encryption and with
its ISAKMP header, into slices; each slice travels in its own message: an
unencrypted ISAKMP header (the same cookies and exchange type, message ID 0)
and one fragment payload (type 132: fragment ID, number from 1, a LAST flag).
Without it, certificates in Main Mode messages 5/6 make datagrams that are
split into IP fragments, which many paths drop.

Reassembly runs before anything is authenticated, so every byte is hostile:
it holds a fixed number of partial messages per source and in total, each
bounded in size and in fragment count, and forgets them after a timeout. A
completed message is handed to the normal path, which authenticates it as if
it had come in one datagram.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Final

from ikev1d.engine.api import Endpoint
from ikev1d.wire import (
    ExchangeType,
    FragmentPayload,
    Header,
    PayloadType,
    WireError,
    decode_payloads,
    encode_header,
    encode_payloads,
    split_message,
)

log = logging.getLogger("ikev1d.engine")

FRAGMENT_SIZE: Final = 1280
"""Largest IP datagram we send when fragmenting, headers included. 1280 is the
IPv6 minimum link MTU (RFC 8200 section 5), so no conforming IPv6 path drops
it, and it leaves room below the 1500-byte Ethernet MTU for tunnels and PPPoE on
IPv4; strongSwan uses the same default for both families."""

IPV4_HEADER: Final = 20
IPV6_HEADER: Final = 40
UDP_HEADER: Final = 8
NON_ESP_MARKER_LENGTH: Final = 4
"""RFC 3948 section 2.2: IKE on the NAT-T port carries four zero octets first."""
ISAKMP_HEADER: Final = 28
FRAGMENT_PAYLOAD_HEADER: Final = 8
"""Generic payload header (4) + fragment ID (2), number (1), flags (1)."""

MAX_FRAGMENTS: Final = 255
"""The fragment number is one octet, counted from 1."""
MAX_MESSAGE: Final = 10000
"""Largest message we reassemble. Main Mode with a chain of several 4096-bit
RSA certificates stays well below; strongSwan refuses larger IKE messages by
default, so nothing it sends is lost by this bound."""
MAX_PARTIAL_PER_SOURCE: Final = 4
"""Messages being reassembled from one address (several SAs or a NAT in front
of several peers); one per SA in any case."""
MAX_PARTIAL_TOTAL: Final = 64
"""Messages being reassembled in all: at most 64 * MAX_MESSAGE bytes held."""
REASSEMBLY_TIMEOUT_S: Final = 15.0
"""How long a partial message waits for its missing fragments. The peer resends
all fragments with the same ID on retransmission (2 s, then 4 s, 8 s by
default), so a message that lost one fragment completes with the first retry."""
DROP_LOG_INTERVAL_S: Final = 5.0


def fragment_payload_room(local: Endpoint, nat_t_port: int, size: int = FRAGMENT_SIZE) -> int:
    """Bytes of the complete message each fragment (an IP datagram of at most
    ``size`` bytes) can carry from ``local``."""
    # Asked for every message we send: an IPv6 address is the one written with colons.
    ip_header = IPV6_HEADER if ":" in local[0] else IPV4_HEADER
    marker = NON_ESP_MARKER_LENGTH if local[1] == nat_t_port else 0
    return (size - ip_header - UDP_HEADER - marker - ISAKMP_HEADER
            - FRAGMENT_PAYLOAD_HEADER)


def message_room(local: Endpoint, nat_t_port: int, size: int = FRAGMENT_SIZE) -> int:
    """The largest whole message that fits one datagram of ``size`` bytes."""
    return (fragment_payload_room(local, nat_t_port, size) + ISAKMP_HEADER
            + FRAGMENT_PAYLOAD_HEADER)


def fragment(message: bytes, fragment_id: int, room: int) -> list[bytes]:
    """Cut a complete (encrypted) message into fragment messages of at most
    ``room`` bytes of it each. The fragments' headers repeat the message's
    cookies and exchange type, with message ID 0, unencrypted."""
    header, _ = split_message(message)
    slices = [message[i:i + room] for i in range(0, len(message), room)]
    if not 0 < len(slices) <= MAX_FRAGMENTS:
        raise WireError(f"a message of {len(message)} bytes needs more than "
                        f"{MAX_FRAGMENTS} fragments")
    out = []
    for number, data in enumerate(slices, start=1):
        payload = FragmentPayload(fragment_id, number, number == len(slices), data)
        body = encode_payloads([payload])
        frag_header = Header(
            initiator_cookie=header.initiator_cookie,
            responder_cookie=header.responder_cookie,
            next_payload=PayloadType.FRAGMENT,
            exchange_type=header.exchange_type,
            flags=0,
            message_id=0,
        )
        out.append(encode_header(frag_header, len(body)) + body)
    return out


class Fragmenter:
    """Our side of one ISAKMP SA: fragment IDs and the fragments of recent
    messages, so that a retransmission resends the same fragments (same ID),
    which lets the peer complete a message from fragments of several tries."""

    RECENT: Final = 4

    def __init__(self) -> None:
        self._next_id = 1
        self._recent: OrderedDict[bytes, list[bytes]] = OrderedDict()

    def packets(self, message: bytes, room: int) -> list[bytes]:
        cached = self._recent.get(message)
        if cached is not None:
            return cached
        packets = fragment(message, self._next_id, room)
        self._next_id = self._next_id % 0xFFFF + 1
        self._recent[message] = packets
        while len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return packets


@dataclasses.dataclass
class _Partial:
    fragment_id: int
    exchange_type: int
    started: float
    pieces: dict[int, bytes] = dataclasses.field(default_factory=dict)
    last: int | None = None
    size: int = 0


_Key = tuple[str, int, bytes]
"""Source address, source port, CKY-I | CKY-R: one message at a time per SA."""


class Reassembler:
    """Partial messages from the network, bounded whatever the peers send."""

    def __init__(self) -> None:
        self._partial: OrderedDict[_Key, _Partial] = OrderedDict()
        self._per_source: dict[str, int] = {}
        self._drop_log: dict[str, tuple[float, int]] = {}
        self.dropped = 0
        """Fragments refused (bounds, malformed, inconsistent): for tests and status."""

    def __len__(self) -> int:
        return len(self._partial)

    def held_bytes(self) -> int:
        return sum(p.size for p in self._partial.values())

    def add(self, header: Header, body: bytes, remote: Endpoint, now: float) -> bytes | None:
        """Take one fragment message; the complete message once its last piece is in."""
        self._expire(now)
        if header.encrypted or header.message_id != 0:
            return self._drop(remote, now, "fragment with an encrypted or non-zero-ID header")
        if header.exchange_type != ExchangeType.IDENTITY_PROTECTION:
            # Only Main Mode carries certificates; nothing else needs fragments.
            return self._drop(remote, now, "fragment of a "
                              f"{_exchange_name(header.exchange_type)} message")
        try:
            payloads = decode_payloads(header.next_payload, body)
        except WireError as exc:
            return self._drop(remote, now, f"malformed fragment ({exc})")
        if len(payloads) != 1 or not isinstance(payloads[0], FragmentPayload):
            return self._drop(remote, now, "fragment message with other payloads")
        piece = payloads[0]
        if piece.number == 0 or not piece.data:
            return self._drop(remote, now, "fragment number 0 or empty fragment")
        key = (remote[0], remote[1], header.cookies)
        partial = self._partial.get(key)
        if partial is not None and partial.fragment_id != piece.fragment_id:
            # A new message of the same SA supersedes the one in progress.
            self._forget(key)
            partial = None
        if partial is None:
            if not self._room_for(remote, now):
                return None
            partial = _Partial(piece.fragment_id, header.exchange_type, now)
            self._partial[key] = partial
            self._per_source[remote[0]] = self._per_source.get(remote[0], 0) + 1
        if piece.number in partial.pieces:
            return None  # a duplicate, or a retransmitted fragment: keep the first
        if piece.last:
            if partial.last is not None and partial.last != piece.number:
                self._forget(key)
                return self._drop(remote, now, "two different last fragments")
            partial.last = piece.number
        if partial.last is not None and max(partial.pieces.keys() | {piece.number}) > partial.last:
            self._forget(key)
            return self._drop(remote, now, "fragment beyond the last one")
        if partial.size + len(piece.data) > MAX_MESSAGE:
            self._forget(key)
            return self._drop(remote, now, f"reassembled message over {MAX_MESSAGE} bytes")
        partial.pieces[piece.number] = piece.data
        partial.size += len(piece.data)
        if partial.last is None or len(partial.pieces) != partial.last:
            return None
        self._forget(key)
        whole = b"".join(partial.pieces[n] for n in range(1, partial.last + 1))
        try:
            inner, _ = split_message(whole)
        except WireError as exc:
            return self._drop(remote, now, f"reassembled message malformed ({exc})")
        if (inner.cookies != header.cookies or inner.exchange_type != header.exchange_type
                or inner.next_payload == PayloadType.FRAGMENT):
            return self._drop(remote, now, "reassembled message does not match its fragments")
        log.debug("reassembled a %d-byte message from %d fragments", len(whole), partial.last,
                  extra={"peer": f"{remote[0]}:{remote[1]}"})
        return whole

    def note_unknown_sa(self, remote: Endpoint, now: float) -> None:
        """A fragment for an ISAKMP SA the engine does not know: dropped unread."""
        self._drop(remote, now, "fragment for an unknown ISAKMP SA")

    def _room_for(self, remote: Endpoint, now: float) -> bool:
        if self._per_source.get(remote[0], 0) >= MAX_PARTIAL_PER_SOURCE:
            self._drop(remote, now, "too many partial messages from this address")
            return False
        if len(self._partial) >= MAX_PARTIAL_TOTAL:
            self._drop(remote, now, "too many partial messages in all")
            return False
        return True

    def _expire(self, now: float) -> None:
        # Insertion order is age order: expired entries are at the front.
        while self._partial:
            key, partial = next(iter(self._partial.items()))
            if now - partial.started < REASSEMBLY_TIMEOUT_S:
                break
            log.info("incomplete fragmented message from %s timed out (%d of %s fragments)",
                     key[0], len(partial.pieces), partial.last or "?",
                     extra={"peer": f"{key[0]}:{key[1]}"})
            self._forget(key)

    def _forget(self, key: _Key) -> None:
        if self._partial.pop(key, None) is None:
            return
        left = self._per_source.get(key[0], 1) - 1
        if left > 0:
            self._per_source[key[0]] = left
        else:
            self._per_source.pop(key[0], None)

    def _drop(self, remote: Endpoint, now: float, why: str) -> bytes | None:
        """Count a refused fragment; one log line per source every few seconds.
        Always None, the "no message yet" of ``add``."""
        self.dropped += 1
        last, suppressed = self._drop_log.get(remote[0], (-1e9, 0))
        if now - last >= DROP_LOG_INTERVAL_S:
            log.info("dropping IKE fragment from %s: %s (%d more dropped since the last "
                     "such line)", remote[0], why, suppressed,
                     extra={"peer": f"{remote[0]}:{remote[1]}"})
            self._drop_log[remote[0]] = (now, 0)
            if len(self._drop_log) > 4 * MAX_PARTIAL_TOTAL:
                # Bounded too: many spoofed sources must not grow this table.
                self._drop_log = {k: v for k, v in self._drop_log.items()
                                  if now - v[0] < DROP_LOG_INTERVAL_S}
                if len(self._drop_log) > 4 * MAX_PARTIAL_TOTAL:
                    self._drop_log.clear()
        else:
            self._drop_log[remote[0]] = (last, suppressed + 1)
        return None


def _exchange_name(value: int) -> str:
    try:
        return ExchangeType(value).name
    except ValueError:
        return str(value)

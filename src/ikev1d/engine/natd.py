"""NAT detection (RFC 3947 section 3.2).

Each side sends NAT-D payloads: first the hash of the address and port it
sends to, then the hash of the address and port it sends from. A receiver
compares them with what it sees; a mismatch means a NAT on that side.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from ikev1d.crypto import nat_d_hash
from ikev1d.engine.api import Endpoint


@functools.lru_cache(maxsize=1024)
def _address_bytes(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


# A responder checks the peer's NAT-D hashes (detect) and sends its own
# (natd_payload_data) for the same cookies and endpoints in one message: the
# last few hashes are kept, so each is computed once.
_RECENT: dict[tuple[str, bytes, bytes, Endpoint], bytes] = {}
_RECENT_KEPT = 8


def natd_hash(hash_alg: str, cky_i: bytes, cky_r: bytes, endpoint: Endpoint) -> bytes:
    key = (hash_alg, cky_i, cky_r, endpoint)
    known = _RECENT.get(key)
    if known is None:
        known = nat_d_hash(hash_alg, cky_i, cky_r, _address_bytes(endpoint[0]), endpoint[1])
        if len(_RECENT) >= _RECENT_KEPT:
            _RECENT.clear()
        _RECENT[key] = known
    return known


def natd_payload_data(
    hash_alg: str,
    cky_i: bytes,
    cky_r: bytes,
    local: Endpoint,
    remote: Endpoint,
    *,
    fake_source: bytes | None = None,
) -> list[bytes]:
    """Hashes to send: the destination (peer) first, then our source.

    ``fake_source`` replaces our source hash to make the peer believe we are
    behind a NAT: how ``encap = true`` forces UDP encapsulation, as strongSwan does.
    """
    source = fake_source if fake_source is not None else natd_hash(hash_alg, cky_i, cky_r, local)
    return [natd_hash(hash_alg, cky_i, cky_r, remote), source]


@dataclass(frozen=True)
class NatResult:
    local_behind_nat: bool
    remote_behind_nat: bool

    @property
    def any(self) -> bool:
        return self.local_behind_nat or self.remote_behind_nat


def detect(
    hash_alg: str,
    cky_i: bytes,
    cky_r: bytes,
    local: Endpoint,
    remote: Endpoint,
    received: list[bytes],
) -> NatResult | None:
    """Compare the peer's NAT-D hashes with what we see; None if it sent none."""
    if len(received) < 2:
        return None
    ours = natd_hash(hash_alg, cky_i, cky_r, local)
    theirs = natd_hash(hash_alg, cky_i, cky_r, remote)
    local_nat = received[0] != ours
    remote_nat = theirs not in received[1:]
    return NatResult(local_nat, remote_nat)

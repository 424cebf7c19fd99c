"""Identification payload constructors (RFC 2407 §4.6.2).

Phase 1 IDs use protocol 0 / port 0 by default (RFC 2407 §4.6.2 allows
17/500 too); Quick Mode client IDs (RFC 2409 §5.5) are networks.  Reading an
ID back (``id_to_network``, ``id_to_text``) lives with the payload in
:mod:`.payloads`; identities as people write them (``@gw``, DNs) are the
configuration's business, not the wire's.
"""

from __future__ import annotations

import ipaddress

from .enums import IdType
from .payloads import IdPayload, IPNetwork, id_to_network, id_to_text

__all__ = [
    "IPNetwork",
    "id_from_address",
    "id_from_fqdn",
    "id_from_key_id",
    "id_from_network",
    "id_from_range",
    "id_from_user_fqdn",
    "id_to_network",
    "id_to_text",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def id_from_address(ip: IPAddress | str, protocol: int = 0, port: int = 0) -> IdPayload:
    """ID_IPV4_ADDR / ID_IPV6_ADDR."""
    addr = ipaddress.ip_address(ip)
    id_type = IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR
    return IdPayload(id_type, protocol, port, addr.packed)


def id_from_network(net: IPNetwork | str, protocol: int = 0, port: int = 0) -> IdPayload:
    """ID_IPV4_ADDR_SUBNET / ID_IPV6_ADDR_SUBNET; a single host gives *_ADDR."""
    n = ipaddress.ip_network(net, strict=False)
    if n.prefixlen == n.max_prefixlen:
        return id_from_address(n.network_address, protocol, port)
    id_type = IdType.IPV4_ADDR_SUBNET if n.version == 4 else IdType.IPV6_ADDR_SUBNET
    return IdPayload(id_type, protocol, port, n.network_address.packed + n.netmask.packed)


def id_from_range(
    first: IPAddress | str, last: IPAddress | str, protocol: int = 0, port: int = 0
) -> IdPayload:
    """ID_IPV4_ADDR_RANGE / ID_IPV6_ADDR_RANGE."""
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    if a.version != b.version:
        raise ValueError("range ends of different address families")
    id_type = IdType.IPV4_ADDR_RANGE if a.version == 4 else IdType.IPV6_ADDR_RANGE
    return IdPayload(id_type, protocol, port, a.packed + b.packed)


def id_from_fqdn(name: str, protocol: int = 0, port: int = 0) -> IdPayload:
    """ID_FQDN, e.g. ``gw.example.org`` (no terminator, RFC 2407 §4.6.2.3)."""
    return IdPayload(IdType.FQDN, protocol, port, name.encode("ascii"))


def id_from_user_fqdn(name: str, protocol: int = 0, port: int = 0) -> IdPayload:
    """ID_USER_FQDN, e.g. ``me@example.org``."""
    return IdPayload(IdType.USER_FQDN, protocol, port, name.encode("ascii"))


def id_from_key_id(key_id: bytes, protocol: int = 0, port: int = 0) -> IdPayload:
    """ID_KEY_ID: opaque bytes."""
    return IdPayload(IdType.KEY_ID, protocol, port, bytes(key_id))

"""Identification payload helpers (RFC 2407 §4.6.2).

Constructors from Python values and conversions back to networks / text.
Phase 1 IDs use protocol 0 / port 0 by default (RFC 2407 §4.6.2 allows
17/500 too); Quick Mode client IDs (RFC 2409 §5.5) are networks.
"""

from __future__ import annotations

import ipaddress

from ._reader import Reader
from .enums import IdType
from .errors import InvalidIdError, WireError
from .payloads import IdPayload, check_id_data

__all__ = [
    "IPNetwork",
    "dn_to_text",
    "id_from_address",
    "id_from_fqdn",
    "id_from_key_id",
    "id_from_network",
    "id_from_range",
    "id_from_text",
    "id_from_user_fqdn",
    "id_to_network",
    "id_to_text",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
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


def id_from_text(text: str, protocol: int = 0, port: int = 0) -> IdPayload:
    """An ID from a config string: an IP address, ``user@fqdn``, an FQDN, or
    ``keyid:HEX`` / ``@#HEX`` (strongSwan's spelling). DNs need DER encoding and are
    not handled here."""
    try:
        return id_from_address(ipaddress.ip_address(text), protocol, port)
    except ValueError:
        pass
    for prefix in ("keyid:", "@#"):
        if text.startswith(prefix):
            return id_from_key_id(bytes.fromhex(text[len(prefix) :]), protocol, port)
    if "@" in text:
        return id_from_user_fqdn(text, protocol, port)
    return id_from_fqdn(text, protocol, port)


def _addresses(p: IdPayload) -> tuple[IPAddress, IPAddress]:
    """The two halves of a subnet/range ID, after the length check."""
    check_id_data(p.id_type, p.data)
    half = len(p.data) // 2
    a = ipaddress.ip_address(p.data[:half])
    b = ipaddress.ip_address(p.data[half:])
    return a, b


def id_to_network(p: IdPayload) -> IPNetwork | None:
    """The ID as one CIDR network: *_ADDR as a host, *_ADDR_SUBNET with a contiguous
    mask, *_ADDR_RANGE only when the range is exactly one CIDR block. Otherwise None."""
    t = p.id_type
    if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        check_id_data(t, p.data)
        return ipaddress.ip_network(ipaddress.ip_address(p.data))
    if t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
        addr, mask = _addresses(p)
        bits = addr.max_prefixlen
        host = ~int(mask) & ((1 << bits) - 1)
        if host & (host + 1):  # non-contiguous mask: not a CIDR block
            return None
        return ipaddress.ip_network((addr, bits - host.bit_length()), strict=False)
    if t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
        first, last = _addresses(p)
        if int(first) > int(last):
            return None
        nets: list[IPNetwork]
        if isinstance(first, ipaddress.IPv4Address) and isinstance(last, ipaddress.IPv4Address):
            nets = list(ipaddress.summarize_address_range(first, last))
        elif isinstance(first, ipaddress.IPv6Address) and isinstance(last, ipaddress.IPv6Address):
            nets = list(ipaddress.summarize_address_range(first, last))
        else:
            return None
        return nets[0] if len(nets) == 1 else None
    return None


# X.500 attribute types strongSwan prints (RFC 4514 short names).
_DN_OIDS: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "T",
    "2.5.4.42": "G",
    "1.2.840.113549.1.9.1": "E",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}


def _der_tlv(r: Reader) -> tuple[int, bytes]:
    tag = r.u8("DER tag")
    first = r.u8("DER length")
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise WireError("DER: unsupported length form")
        length = int.from_bytes(r.take(n, "DER long length"), "big")
    return tag, r.take(length, "DER value")


def _oid_text(raw: bytes) -> str:
    if not raw or raw[-1] & 0x80:
        raise WireError("DER: empty or unterminated OID")
    parts: list[int] = []
    value = 0
    for b in raw:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(x) for x in head + parts[1:])


def dn_to_text(der: bytes) -> str:
    """A DER X.501 Name as ``C=DE, O=X, CN=gw`` (strongSwan's order and spelling).
    Raises WireError when it is not a Name this small parser understands."""
    tag, seq = _der_tlv(Reader(der, "DN"))
    if tag != 0x30:
        raise WireError("DN: not a SEQUENCE")
    out: list[str] = []
    rdns = Reader(seq, "DN")
    while rdns.remaining():
        tag, rdn = _der_tlv(rdns)
        if tag != 0x31:
            raise WireError("DN: RDN is not a SET")
        atvs = Reader(rdn, "RDN")
        while atvs.remaining():
            tag, atv = _der_tlv(atvs)
            if tag != 0x30:
                raise WireError("DN: AttributeTypeAndValue is not a SEQUENCE")
            ar = Reader(atv, "ATV")
            otag, oid = _der_tlv(ar)
            if otag != 0x06:
                raise WireError("DN: attribute type is not an OID")
            _vtag, value = _der_tlv(ar)
            oid_text = _oid_text(oid)
            name = _DN_OIDS.get(oid_text, oid_text)
            out.append(f"{name}={value.decode('utf-8', errors='replace')}")
    return ", ".join(out)


def id_to_text(p: IdPayload) -> str:
    """Readable ID: ``192.0.2.1``, ``gw.example.org``, ``10.1.0.0/24``,
    ``10.0.0.1-10.0.0.9``, ``C=DE, O=X, CN=gw``, KEY_ID as hex."""
    t = p.id_type
    try:
        if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            check_id_data(t, p.data)
            return str(ipaddress.ip_address(p.data))
        if t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
            net = id_to_network(p)
            if net is not None:
                return str(net)
            addr, mask = _addresses(p)
            return f"{addr}/{mask}"
        if t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
            first, last = _addresses(p)
            return f"{first}-{last}"
        if t in (IdType.FQDN, IdType.USER_FQDN):
            return p.data.decode("ascii", errors="backslashreplace")
        if t == IdType.DER_ASN1_DN:
            try:
                return dn_to_text(p.data)
            except WireError:
                return "DN:" + p.data.hex()
    except InvalidIdError:
        pass
    if t == IdType.KEY_ID:
        return p.data.hex()
    return f"{IdType(t)}:{p.data.hex()}"

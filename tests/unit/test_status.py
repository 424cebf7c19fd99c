"""The status document: the JSON the engine's state becomes, member for member and in
order, and reading it back strictly."""

from __future__ import annotations

import copy
import ipaddress
import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, Event
from ikev1d.status import (
    ChildSaStatus,
    Counters,
    DropCounters,
    IkeSaStatus,
    StatusDocument,
    StatusFormatError,
)
from ikev1d.wire import split_message
from tests.unit.engine.test_engine import config_text

# The example document of the status interface, as programs outside the project parse it.
DOCUMENTED: dict[str, Any] = {"ike_sas": [{
    "name": "site-b", "state": "ESTABLISHED",
    "local": "192.0.2.1:500", "remote": "192.0.2.2:500",
    "local_id": "192.0.2.1", "remote_id": "192.0.2.2",
    "initiator": True, "cookies": "a1b2c3d4e5f60718:c3d4e5f607182930",
    "proposal": "aes256-sha256-modp2048", "auth": "psk",
    "nat_local": False, "nat_remote": False,
    "established_s": 12, "rekey_in_s": 14300, "virtual_ip": None,
    "children": [{
        "name": "net", "state": "INSTALLED", "mode": "tunnel",
        "encap": False, "spi_in": "c1234567", "spi_out": "c7654321",
        "proposal": "aes128gcm16-modp2048",
        "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"],
        "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0,
        "rekey_in_s": 3300, "expires_in_s": 3600}],
    "ike_id": 1}]}  # extended: the number ``ikev1d down NAME --ike-id N`` takes

IKE_SA_MEMBERS = [
    "name", "state", "local", "remote", "local_id", "remote_id", "initiator", "cookies",
    "proposal", "auth", "nat_local", "nat_remote", "established_s", "rekey_in_s",
    "virtual_ip", "children", "ike_id",
]
CHILD_SA_MEMBERS = [
    "name", "state", "mode", "encap", "spi_in", "spi_out", "proposal", "local_ts",
    "remote_ts", "bytes_in", "bytes_out", "packets_in", "packets_out", "rekey_in_s",
    "expires_in_s",
]
DROP_MEMBERS = [
    "replayed_in", "icv_failed_in", "malformed_in", "policy_dropped_in", "tun_dropped_in",
    "dropped_out",
]


def _random_without_jitter(seed: int) -> Callable[[int], bytes]:
    """Seeded randomness, except that the two-octet draws (rekey jitter, the DPD start
    sequence) are zero, so the rekey times in the document are exact numbers."""
    rng = random.Random(seed)
    return lambda n: bytes(n) if n == 2 else rng.randbytes(n)


def _engine(local: str, remote: str, local_ts: str, remote_ts: str) -> Engine:
    text = config_text(local, remote, local_ts, remote_ts, esp='["aes128gcm16"]')
    return Engine(parse_config(text), random_bytes=_random_without_jitter(7))


def _established_pair(now: float) -> tuple[Engine, bytes, ChildSaEstablished]:
    """Two engines in memory after Main Mode and Quick Mode; the initiator, its
    cookies (CKY-I | CKY-R, from the wire) and its IPsec SA."""
    a = _engine("192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24")
    b = _engine("192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24")
    peers = {"192.0.2.1": a, "192.0.2.2": b}
    a.initiate("gw", None, now)
    cookies = b""
    events: list[Event] = []
    moved = True
    while moved:
        moved = False
        for engine in (a, b):
            for datagram in engine.datagrams_to_send():
                moved = True
                header = split_message(datagram.data)[0]
                cookies = header.initiator_cookie + header.responder_cookie
                peers[datagram.remote[0]].receive_datagram(
                    datagram.data, datagram.remote, datagram.local, now)
        events += a.events()
    (child,) = [e for e in events if isinstance(e, ChildSaEstablished)]
    return a, cookies, child


def test_the_engine_writes_the_documented_members_in_order() -> None:
    a, cookies, child = _established_pair(now=1000.0)
    document = a.status(1010.0).to_json()
    assert document == {"ike_sas": [{
        "name": "gw", "state": "ESTABLISHED",
        "local": "192.0.2.1:500", "remote": "192.0.2.2:500",
        "local_id": "192.0.2.1", "remote_id": "192.0.2.2",
        "initiator": True, "cookies": f"{cookies[:8].hex()}:{cookies[8:].hex()}",
        "proposal": "aes128-sha256-modp2048", "auth": "psk",
        "nat_local": False, "nat_remote": False,
        # 4 h, renewed 9 min early (10 %, at most 9 min, and no jitter); 10 s later
        "established_s": 10, "rekey_in_s": 14400 - 540 - 10, "virtual_ip": None,
        "children": [{
            "name": "net", "state": "INSTALLED", "mode": "tunnel",
            "encap": False, "spi_in": f"{child.spi_in:08x}", "spi_out": f"{child.spi_out:08x}",
            "proposal": "aes128gcm16",
            "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"],
            "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0,
            # 1 h, renewed 6 min (10 %) early
            "rekey_in_s": 3600 - 360 - 10, "expires_in_s": 3600 - 10}],
        "ike_id": 1}]}
    assert list(document) == ["ike_sas"]
    (ike,) = document["ike_sas"]
    assert list(ike) == IKE_SA_MEMBERS
    assert list(ike["children"][0]) == CHILD_SA_MEMBERS
    assert all(len(spi) == 8 for spi in (ike["children"][0]["spi_in"],
                                         ike["children"][0]["spi_out"]))


def test_a_connecting_sa_has_nulls_for_what_is_not_negotiated_yet() -> None:
    a = _engine("2001:db8::1", "2001:db8::2", "fd00:1::/64", "fd00:2::/64")
    a.initiate("gw", None, 1000.0)
    ((datagram,),) = [a.datagrams_to_send()]
    cky_i = split_message(datagram.data)[0].initiator_cookie
    document = a.status(1001.0).to_json()
    assert document == {"ike_sas": [{
        "name": "gw", "state": "CONNECTING",
        # IPv6 endpoints without brackets, as always written
        "local": "2001:db8::1:500", "remote": "2001:db8::2:500",
        "local_id": None, "remote_id": None,
        "initiator": True, "cookies": f"{cky_i.hex()}:0000000000000000",
        "proposal": None, "auth": "psk",
        "nat_local": False, "nat_remote": False,
        "established_s": None, "rekey_in_s": None, "virtual_ip": None,
        "children": [], "ike_id": 1}]}
    assert list(document["ike_sas"][0]) == IKE_SA_MEMBERS
    assert StatusDocument.from_json(document).to_json() == document


def test_reading_back_gives_the_same_document() -> None:
    a, _, _ = _established_pair(now=1000.0)
    engine_document = a.status(1010.0)
    assert engine_document.ike_sas and engine_document.ike_sas[0].children
    dropping = _with_counters(engine_document, Counters(
        1500, 84, 3, 1, DropCounters(1, 2, 3, 4, 5, 6)))
    for document in (engine_document, dropping, StatusDocument()):
        # through JSON text, as the control socket carries it
        text = json.dumps(document.to_json())
        assert StatusDocument.from_json(json.loads(text)) == document
        assert json.dumps(StatusDocument.from_json(json.loads(text)).to_json()) == text


def test_the_documented_example_reads_and_writes_back_unchanged() -> None:
    document = StatusDocument.from_json(DOCUMENTED)
    (ike,) = document.ike_sas
    assert ike.local == ("192.0.2.1", 500)
    assert ike.cookies == (bytes.fromhex("a1b2c3d4e5f60718"), bytes.fromhex("c3d4e5f607182930"))
    (child,) = ike.children
    assert (child.spi_in, child.spi_out) == (0xC1234567, 0xC7654321)
    assert child.local_ts == (ipaddress.ip_network("10.1.0.0/24"),)
    assert child.counters == Counters()
    assert json.dumps(document.to_json()) == json.dumps(DOCUMENTED)


def test_drop_counters_follow_the_documented_members() -> None:
    document = _with_counters(StatusDocument.from_json(DOCUMENTED),
                              Counters(1500, 84, 3, 1, DropCounters(1, 2, 3, 4, 5, 6)))
    child = document.to_json()["ike_sas"][0]["children"][0]
    assert list(child) == CHILD_SA_MEMBERS + DROP_MEMBERS
    assert [child[k] for k in ("bytes_in", "bytes_out", "packets_in", "packets_out")] == [
        1500, 84, 3, 1]
    assert [child[k] for k in DROP_MEMBERS] == [1, 2, 3, 4, 5, 6]


def _with_counters(document: StatusDocument, counters: Counters) -> StatusDocument:
    return StatusDocument(tuple(
        replace(ike, children=tuple(replace(c, counters=counters) for c in ike.children))
        for ike in document.ike_sas
    ))


def _child(document: dict[str, Any]) -> dict[str, Any]:
    child: dict[str, Any] = document["ike_sas"][0]["children"][0]
    return child


def _spoil(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENTED)
    change(document)
    return document


@pytest.mark.parametrize(("document", "message"), [
    ([], "status: expected an object, got an array"),
    ({}, "status: missing member 'ike_sas'"),
    ({"ike_sas": [], "extra": 1}, "status: unknown member 'extra'"),
    ({"ike_sas": [3]}, "ike_sas[0]: expected an object, got 3"),
    (_spoil(lambda d: d["ike_sas"][0].pop("remote_id")),
     "ike_sas[0]: missing member 'remote_id'"),
    (_spoil(lambda d: d["ike_sas"][0].update(initiator=1)),
     "ike_sas[0].initiator: expected true or false, got 1"),
    (_spoil(lambda d: d["ike_sas"][0].update(established_s=True)),
     "ike_sas[0].established_s: expected an integer, got true"),
    (_spoil(lambda d: d["ike_sas"][0].update(rekey_in_s=1.5)),
     "ike_sas[0].rekey_in_s: expected an integer, got 1.5"),
    (_spoil(lambda d: d["ike_sas"][0].update(local="192.0.2.1")),
     "ike_sas[0].local: expected address:port, got '192.0.2.1'"),
    (_spoil(lambda d: d["ike_sas"][0].update(cookies="A1B2:c3d4")),
     "ike_sas[0].cookies: expected lower-case hex CKY-I:CKY-R, got 'A1B2:c3d4'"),
    (_spoil(lambda d: d["ike_sas"][0].update(name=None)),
     "ike_sas[0].name: expected a string, got null"),
    (_spoil(lambda d: _child(d).update(spi_in="0xc1234567")),
     "ike_sas[0].children[0].spi_in: expected 8 lower-case hex digits, got '0xc1234567'"),
    (_spoil(lambda d: _child(d).update(bytes_in="12")),
     "ike_sas[0].children[0].bytes_in: expected an integer, got '12'"),
    (_spoil(lambda d: _child(d).update(packets_out=-1)),
     "ike_sas[0].children[0].packets_out: expected a count, got -1"),
    (_spoil(lambda d: _child(d).update(local_ts="10.1.0.0/24")),
     "ike_sas[0].children[0].local_ts: expected an array, got '10.1.0.0/24'"),
    (_spoil(lambda d: _child(d).update(remote_ts=["10.2.0.1/24"])),
     "ike_sas[0].children[0].remote_ts[0]: 10.2.0.1/24 has host bits set"),
    (_spoil(lambda d: _child(d).update(expires_in_s=None)),
     "ike_sas[0].children[0].expires_in_s: expected an integer, got null"),
    (_spoil(lambda d: _child(d).update(replayed_in=0)),
     "ike_sas[0].children[0]: missing member 'icv_failed_in'"),
    (_spoil(lambda d: _child(d).update(bytes=0)),
     "ike_sas[0].children[0]: unknown member 'bytes'"),
])
def test_a_malformed_document_says_where_and_why(document: object, message: str) -> None:
    with pytest.raises(StatusFormatError) as info:
        StatusDocument.from_json(document)
    assert str(info.value) == message


def test_the_types_are_frozen_and_counters_default_to_zero() -> None:
    child = ChildSaStatus(
        name="net", state="INSTALLED", mode="tunnel", encap=False, spi_in=0x100,
        spi_out=0xFFFFFFFF, proposal="aes128gcm16", local_ts=(), remote_ts=(),
        rekey_in_s=None, expires_in_s=10,
    )
    assert child.counters == Counters(0, 0, 0, 0, None)
    assert (child.to_json()["spi_in"], child.to_json()["spi_out"]) == ("00000100", "ffffffff")
    ike = IkeSaStatus(
        name="x", state="ESTABLISHED", local=("::1", 500), remote=("::2", 4500),
        local_id=None, remote_id=None, initiator=False, cookies=(b"\x01" * 8, b"\x02" * 8),
        proposal=None, auth="psk", nat_local=True, nat_remote=False, established_s=None,
        rekey_in_s=None, virtual_ip=None, children=(child,),
    )
    assert ike.to_json()["remote"] == "::2:4500"
    assert IkeSaStatus.from_json(ike.to_json()) == ike
    with pytest.raises(AttributeError):
        ike.state = "DELETING"  # type: ignore[misc]


def test_virtual_ip_details_and_pools_read_and_write_back() -> None:
    document = copy.deepcopy(DOCUMENTED)
    ike_sa = document["ike_sas"][0]
    members = list(ike_sa.items())
    at = [k for k, _ in members].index("virtual_ip") + 1
    ike_sa.clear()
    ike_sa.update(members[:at])
    ike_sa["virtual_ip"] = "10.3.0.7"
    ike_sa["dns"] = ["10.2.0.53"]
    ike_sa["split_include"] = ["10.2.0.0/16"]
    ike_sa.update(members[at:])
    document["pools"] = [{"name": "clients", "addrs": "10.3.0.0/24", "size": 254,
                          "online": 1, "offline": 2}]
    parsed = StatusDocument.from_json(document)
    assert parsed.ike_sas[0].dns == ("10.2.0.53",)
    assert parsed.pools[0].offline == 2
    assert parsed.to_json() == document
    assert list(parsed.to_json()) == ["ike_sas", "pools"]
    keys = list(parsed.to_json()["ike_sas"][0])
    assert keys[keys.index("virtual_ip"):keys.index("virtual_ip") + 4] == [
        "virtual_ip", "dns", "split_include", "children"]
    document["ike_sas"][0]["dns"] = ["not an address"]
    with pytest.raises(StatusFormatError, match=r"ike_sas\[0\]\.dns\[0\]"):
        StatusDocument.from_json(document)

"""The kernel data plane: what goes into XFRM for an IPsec SA pair, and what comes out again.

Most tests hand the backend a fake netlink layer (:class:`FakeXfrm`) that
behaves like the kernel's tables (EEXIST on a duplicate, ESRCH/ENOENT on a
missing entry). The byte layout of the netlink messages is checked against
the <linux/xfrm.h> offsets, and, as root, against the host kernel itself and
iproute2's decoder (policies only: this kernel has XFRM but no ESP, so SAs can
be added only inside the VM, see tests/vm/).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ikev1d.dataplane.base import DataplaneBackend, DataplaneError, soft_limit
from ikev1d.dataplane.kernel import (
    PROBE_SPI,
    REPLAY_WINDOW,
    REQIDS,
    KernelBackend,
    plan_policies,
    plan_states,
    policy_priority,
    xfrm_algorithms,
)
from ikev1d.dataplane.linux import xfrm as xfrm_io
from ikev1d.dataplane.linux.xfrm import (
    RTPROT_IKEV1D,
    InstalledPolicy,
    InstalledState,
    Route,
    XfrmAlgorithm,
    XfrmPolicy,
    XfrmSelector,
    XfrmState,
    XfrmStateCounters,
    XfrmTemplate,
)
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, Network
from ikev1d.status import Counters

net = ipaddress.ip_network
LOCAL, REMOTE = "192.0.2.1", "192.0.2.2"


def make_sa(
    encryption: str = "aesgcm",
    key_length: int = 128,
    integrity: str | None = None,
    icv_length: int = 16,
    *,
    spi_in: int = 0xC1000001,
    spi_out: int = 0xC2000002,
    child: str = "net",
    mode: str = "tunnel",
    encap: bool = False,
    local: tuple[str, int] = (LOCAL, 500),
    remote: tuple[str, int] = (REMOTE, 500),
    local_ts: tuple[str, ...] = ("10.1.0.0/24",),
    remote_ts: tuple[str, ...] = ("10.2.0.0/24",),
) -> ChildSaEstablished:
    # Distinct octets per direction so a swapped or misaligned split shows.
    return ChildSaEstablished(
        conn="gw", child=child, ike_id=1, child_id=1, spi_in=spi_in, spi_out=spi_out,
        proposal=f"{encryption}{key_length}-{integrity}", encryption=encryption,
        key_length=key_length, icv_length=icv_length, integrity=integrity, mode=mode,
        encap=encap, local=local, remote=remote,
        local_ts=tuple(net(t) for t in local_ts), remote_ts=tuple(net(t) for t in remote_ts),
        keymat_in=bytes(range(0, 100)), keymat_out=bytes(range(100, 200)),
    )  # fmt: skip


def deleted(sa: ChildSaEstablished) -> ChildSaDeleted:
    return ChildSaDeleted(sa.conn, sa.child, sa.ike_id, sa.child_id, sa.spi_in, sa.spi_out,
                          "test")


class FakeXfrm:
    """The kernel's SAD and SPD as dicts, with the kernel's errors."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], XfrmState] = {}
        self.policies: dict[tuple[XfrmSelector, str], XfrmPolicy] = {}
        self.counters: dict[tuple[str, int], XfrmStateCounters] = {}
        self.fail: Callable[[str, object], OSError | None] = lambda op, arg: None
        self.closed = False

    def _check(self, op: str, arg: object) -> None:
        exc = self.fail(op, arg)
        if exc is not None:
            raise exc

    def add_state(self, state: XfrmState) -> None:
        self._check("add_state", state)
        if (state.dst, state.spi) in self.states:
            raise OSError(errno.EEXIST, "File exists")
        self.states[(state.dst, state.spi)] = state

    def delete_state(self, dst: str, spi: int) -> None:
        self._check("delete_state", (dst, spi))
        if self.states.pop((dst, spi), None) is None:
            raise OSError(errno.ESRCH, "No such process")

    def state_counters(self, dst: str, spi: int) -> XfrmStateCounters:
        if (dst, spi) not in self.states:
            raise OSError(errno.ESRCH, "No such process")
        return self.counters.get((dst, spi), XfrmStateCounters(0, 0))

    def add_policy(self, policy: XfrmPolicy) -> None:
        self._check("add_policy", policy)
        key = (policy.selector, policy.direction)
        if key in self.policies:
            raise OSError(errno.EEXIST, "File exists")
        self.policies[key] = policy

    def delete_policy(self, selector: XfrmSelector, direction: str) -> None:
        self._check("delete_policy", (selector, direction))
        if self.policies.pop((selector, direction), None) is None:
            raise OSError(errno.ENOENT, "No such file or directory")

    def dump_states(self) -> list[InstalledState]:
        self._check("dump", None)
        return [InstalledState(s.src, s.dst, s.spi, s.reqid) for s in self.states.values()]

    def dump_policies(self) -> list[InstalledPolicy]:
        self._check("dump", None)
        return [InstalledPolicy(p.selector, p.direction, (p.template.reqid,))
                for p in self.policies.values()]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake() -> FakeXfrm:
    return FakeXfrm()


@pytest.fixture
def backend(fake: FakeXfrm) -> KernelBackend:
    return KernelBackend(fake)


# --- algorithms and keys -----------------------------------------------------------------


@pytest.mark.parametrize(("icv", "bits"), [(16, 128), (12, 96), (8, 64)])
def test_gcm_is_rfc4106_with_salt_in_the_key_and_icv_bits(icv: int, bits: int) -> None:
    sa = make_sa("aesgcm", 256, None, icv)
    (alg,) = xfrm_algorithms(sa, sa.keymat_in)
    # RFC 4106 §8.1: 32-octet key then 4-octet salt; the kernel wants both as one key.
    assert alg == XfrmAlgorithm("aead", "rfc4106(gcm(aes))", bytes(range(36)), bits)


@pytest.mark.parametrize(("integrity", "name", "key_len", "trunc"), [
    ("sha1", "hmac(sha1)", 20, 96),
    ("sha256", "hmac(sha256)", 32, 128),
    ("sha384", "hmac(sha384)", 48, 192),
    ("sha512", "hmac(sha512)", 64, 256),
    ("md5", "hmac(md5)", 16, 96),
])
def test_cbc_with_hmac_splits_keymat_encryption_key_first(
    integrity: str, name: str, key_len: int, trunc: int
) -> None:
    sa = make_sa("aes", 128, integrity)
    crypt, auth = xfrm_algorithms(sa, sa.keymat_out)
    assert crypt == XfrmAlgorithm("crypt", "cbc(aes)", bytes(range(100, 116)))
    assert auth == XfrmAlgorithm("auth", name, bytes(range(116, 116 + key_len)), trunc)


def test_3des_and_null_names() -> None:
    sa = make_sa("3des", 0, "sha1")
    crypt, auth = xfrm_algorithms(sa, sa.keymat_in)
    assert (crypt.name, crypt.key, auth.key) == ("cbc(des3_ede)", bytes(range(24)),
                                                 bytes(range(24, 44)))
    sa = make_sa("null", 0, "sha256")
    crypt, auth = xfrm_algorithms(sa, sa.keymat_in)
    assert (crypt.name, crypt.key, auth.key) == ("ecb(cipher_null)", b"", bytes(range(32)))


def test_short_keymat_and_unknown_algorithms_are_dataplane_errors() -> None:
    sa = make_sa("aes", 256, "sha512")
    with pytest.raises(DataplaneError, match=r"KEYMAT of 20 octets.*needs 96"):
        xfrm_algorithms(sa, bytes(20))
    with pytest.raises(DataplaneError, match="unsupported ESP encryption"):
        xfrm_algorithms(make_sa("blowfish", 128, "sha1"), bytes(100))
    with pytest.raises(DataplaneError, match="needs an integrity algorithm"):
        xfrm_algorithms(make_sa("aes", 128, None), bytes(100))


# --- states and policies -------------------------------------------------------------------


def test_states_for_both_directions() -> None:
    sa = make_sa("aes", 128, "sha256")
    inbound, outbound = plan_states(sa, 7)
    assert (inbound.src, inbound.dst, inbound.spi, inbound.reqid) == (REMOTE, LOCAL,
                                                                      sa.spi_in, 7)
    assert (outbound.src, outbound.dst, outbound.spi, outbound.reqid) == (LOCAL, REMOTE,
                                                                          sa.spi_out, 7)
    assert inbound.algorithms == xfrm_algorithms(sa, sa.keymat_in)
    assert outbound.algorithms == xfrm_algorithms(sa, sa.keymat_out)
    assert inbound.algorithms != outbound.algorithms
    for state in (inbound, outbound):
        assert state.mode == "tunnel" and state.selector is None and state.encap is None
        assert state.replay_window == REPLAY_WINDOW >= 64


def test_encap_ports_follow_each_direction_including_a_nat_mapped_peer_port() -> None:
    sa = make_sa(encap=True, local=(LOCAL, 4500), remote=(REMOTE, 31000))
    inbound, outbound = plan_states(sa, 1)
    assert inbound.encap == (31000, 4500) and outbound.encap == (4500, 31000)


def test_transport_mode_states_select_the_two_hosts() -> None:
    sa = make_sa(mode="transport", local_ts=(f"{LOCAL}/32",), remote_ts=(f"{REMOTE}/32",))
    inbound, outbound = plan_states(sa, 1)
    assert inbound.selector == XfrmSelector(net(f"{REMOTE}/32"), net(f"{LOCAL}/32"))
    assert outbound.selector == XfrmSelector(net(f"{LOCAL}/32"), net(f"{REMOTE}/32"))
    assert {p.direction for p in plan_policies(sa, 1)} == {"in", "out"}  # no fwd


def test_policies_for_every_network_pair_with_tunnel_templates() -> None:
    sa = make_sa(local_ts=("10.1.0.0/24", "10.1.1.0/24", "fd00:1::/64"),
                 remote_ts=("10.2.0.0/16",))
    policies = plan_policies(sa, 5)
    out = XfrmTemplate(LOCAL, REMOTE, 5, "tunnel")
    back = XfrmTemplate(REMOTE, LOCAL, 5, "tunnel")
    got = {(str(p.selector.src), str(p.selector.dst), p.direction, p.template)
           for p in policies}
    assert got == {
        ("10.1.0.0/24", "10.2.0.0/16", "out", out),
        ("10.2.0.0/16", "10.1.0.0/24", "in", back),
        ("10.2.0.0/16", "10.1.0.0/24", "fwd", back),
        ("10.1.1.0/24", "10.2.0.0/16", "out", out),
        ("10.2.0.0/16", "10.1.1.0/24", "in", back),
        ("10.2.0.0/16", "10.1.1.0/24", "fwd", back),
    }  # the IPv6 local network has no IPv6 partner: skipped
    assert len(policies) == 6
    with pytest.raises(DataplaneError, match="same address family"):
        plan_policies(make_sa(local_ts=("fd00::/64",)), 1)


def test_more_specific_selectors_get_preferred_priorities() -> None:
    wide = XfrmSelector(net("10.0.0.0/8"), net("0.0.0.0/0"))
    narrow = XfrmSelector(net("10.1.0.0/24"), net("10.2.0.0/24"))
    assert policy_priority(narrow) < policy_priority(wide)


# --- the backend: install, remove, counters, failures ---------------------------------------


def test_backend_satisfies_the_protocol(backend: KernelBackend) -> None:
    assert isinstance(backend, DataplaneBackend) and backend.name == "kernel"


def test_install_then_remove_deletes_exactly_what_was_installed(
    backend: KernelBackend, fake: FakeXfrm
) -> None:
    foreign_state = XfrmState(LOCAL, "198.51.100.9", 0x1234, 99, "tunnel", ())
    foreign_sel = XfrmSelector(net("10.9.0.0/24"), net("10.8.0.0/24"))
    fake.states[("198.51.100.9", 0x1234)] = foreign_state
    fake.policies[(foreign_sel, "out")] = XfrmPolicy(
        foreign_sel, "out", 1, XfrmTemplate(LOCAL, "198.51.100.9", 99, "tunnel"))
    sa = make_sa("aes", 256, "sha384")
    backend.install(sa)
    assert set(fake.states) == {("198.51.100.9", 0x1234), (LOCAL, sa.spi_in),
                                (REMOTE, sa.spi_out)}
    assert fake.states[(LOCAL, sa.spi_in)] == plan_states(sa, REQIDS.start)[0]
    assert len(fake.policies) == 4
    backend.remove(deleted(sa))
    assert list(fake.states) == [("198.51.100.9", 0x1234)]
    assert list(fake.policies) == [(foreign_sel, "out")]
    backend.remove(deleted(sa))  # unknown pair: not an error


def test_each_child_gets_its_own_reqid(backend: KernelBackend, fake: FakeXfrm) -> None:
    a = make_sa(child="a")
    b = make_sa(child="b", spi_in=0xC3, spi_out=0xC4, local_ts=("10.5.0.0/24",))
    backend.install(a)
    backend.install(b)
    reqids = {s.spi: s.reqid for s in fake.states.values()}
    assert reqids[a.spi_in] == reqids[a.spi_out] != reqids[b.spi_in] == reqids[b.spi_out]
    assert {p.template.reqid for p in fake.policies.values()} == {reqids[a.spi_in],
                                                                   reqids[b.spi_in]}


def test_rekeyed_pair_shares_reqid_and_policies_make_before_break(
    backend: KernelBackend, fake: FakeXfrm
) -> None:
    old = make_sa()
    new = replace(old, spi_in=0xC5, spi_out=0xC6, child_id=2)
    backend.install(old)
    policies = dict(fake.policies)
    backend.install(new)  # same selectors: no EEXIST, the policies now serve both
    assert fake.policies == policies and len(fake.states) == 4
    assert {s.reqid for s in fake.states.values()} == {REQIDS.start}
    backend.remove(deleted(old))
    assert fake.policies == policies  # the new pair still needs them
    assert set(fake.states) == {(LOCAL, 0xC5), (REMOTE, 0xC6)}
    backend.remove(deleted(new))
    assert fake.states == {} and fake.policies == {}


@pytest.mark.parametrize("failing", ["add_state#2", "add_policy#1", "add_policy#3"])
def test_failed_install_leaves_nothing_behind(
    backend: KernelBackend, fake: FakeXfrm, failing: str
) -> None:
    op, nth = failing.split("#")
    seen: dict[str, int] = {}

    def fail(name: str, arg: object) -> OSError | None:
        seen[name] = seen.get(name, 0) + 1
        if name == op and seen[name] == int(nth):
            return OSError(errno.EEXIST, "File exists")
        return None

    fake.fail = fail
    with pytest.raises(DataplaneError, match="File exists"):
        backend.install(make_sa())
    assert fake.states == {} and fake.policies == {}
    assert backend.installed == {} and backend.policies == []
    fake.fail = lambda name, arg: None
    backend.install(make_sa())  # and the same SA installs cleanly afterwards
    assert len(fake.states) == 2 and len(fake.policies) == 3


def test_kernel_without_esp_gets_a_clear_message(backend: KernelBackend, fake: FakeXfrm) -> None:
    fake.fail = lambda name, arg: OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
    with pytest.raises(DataplaneError, match=r"adding SA c1000001 192\.0\.2\.2 -> 192\.0\.2\.1.*"
                                             r"no ESP: load esp4"):
        backend.install(make_sa())


def test_duplicate_spis_are_refused(backend: KernelBackend) -> None:
    backend.install(make_sa())
    with pytest.raises(DataplaneError, match="already installed"):
        backend.install(make_sa())


def test_counters_come_from_the_kernel_states(backend: KernelBackend, fake: FakeXfrm) -> None:
    sa = make_sa()
    backend.install(sa)
    fake.counters[(LOCAL, sa.spi_in)] = XfrmStateCounters(1000, 10)
    fake.counters[(REMOTE, sa.spi_out)] = XfrmStateCounters(2000, 20)
    assert backend.counters(sa.spi_in, sa.spi_out) == Counters(
        bytes_in=1000, bytes_out=2000, packets_in=10, packets_out=20)
    assert backend.counters(1, 2) == Counters(0, 0, 0, 0)
    del fake.states[(REMOTE, sa.spi_out)]  # expired behind our back
    assert backend.counters(sa.spi_in, sa.spi_out) == Counters(
        bytes_in=1000, bytes_out=0, packets_in=10, packets_out=0)


def test_close_removes_everything_once_and_closes_the_socket(
    backend: KernelBackend, fake: FakeXfrm
) -> None:
    backend.install(make_sa())
    backend.install(make_sa(child="b", spi_in=0xC3, spi_out=0xC4, local_ts=("10.5.0.0/24",)))
    backend.close()
    assert fake.states == {} and fake.policies == {} and fake.closed
    backend.close()
    with pytest.raises(DataplaneError, match="closed"):
        backend.install(make_sa())


def test_remove_goes_on_after_an_error_and_reports_it(
    backend: KernelBackend, fake: FakeXfrm
) -> None:
    sa = make_sa()
    backend.install(sa)
    fake.fail = lambda name, arg: (OSError(errno.EPERM, "Operation not permitted")
                                   if name == "delete_state" and arg == (REMOTE, sa.spi_out)
                                   else None)
    with pytest.raises(DataplaneError, match=r"deleting SA c2000002.*not permitted"):
        backend.remove(deleted(sa))
    assert list(fake.states) == [(REMOTE, sa.spi_out)] and fake.policies == {}


def test_udp_encapsulated_sa_needs_the_decapsulating_socket(fake: FakeXfrm) -> None:
    problems = ["UDP 0.0.0.0 port 4500: no ESP-in-UDP decap: [Errno 92] Protocol not available"]
    backend = KernelBackend(fake, prepare_sockets=lambda send_udp: (0, problems))
    backend.attach(lambda data, local, remote: None, None)  # type: ignore[arg-type]
    with pytest.raises(DataplaneError, match=r"cannot receive it: UDP 0\.0\.0\.0 port 4500"):
        backend.install(make_sa(encap=True))
    backend.install(make_sa())  # plain ESP does not need it
    ok = KernelBackend(FakeXfrm(), prepare_sockets=lambda send_udp: (1, []))
    ok.attach(lambda data, local, remote: None, None)  # type: ignore[arg-type]
    ok.install(make_sa(encap=True))


def test_probe_adds_and_deletes_an_esp_sa_with_a_reserved_spi(
    backend: KernelBackend, fake: FakeXfrm
) -> None:
    added: list[object] = []

    def record(name: str, arg: object) -> None:
        if name == "add_state":
            added.append(arg)

    fake.fail = record
    fake.states[("127.0.0.1", PROBE_SPI)] = XfrmState("127.0.0.1", "127.0.0.1", PROBE_SPI, 0,
                                                      "transport", ())  # left by a crash
    backend.probe()
    assert fake.states == {} and len(added) == 2
    assert isinstance(added[0], XfrmState) and 0 < added[0].spi < 256
    fake.fail = lambda name, arg: OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
    with pytest.raises(DataplaneError, match=r"cannot start.*no ESP: load esp4"):
        backend.probe()


class FakeRoutes:
    def __init__(self, addresses: list[str], gateway: str | None = None) -> None:
        self.addresses = addresses
        self.gateway = gateway
        self.table: dict[Network, Route] = {}
        self.metric_table: dict[Network, Route] = {}
        """Routes at a metric other than the default: the kernel keeps them beside
        one to the same network at the default metric."""
        self.added: dict[str, tuple[int, int | None]] = {}
        """Addresses added through the backend (or by an earlier run): index, proto."""
        self.closed = False

    def local_addresses(self) -> list[str]:
        return self.addresses

    def route_to(self, address: str) -> tuple[int, str | None]:
        if address == "203.0.113.1":
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return 3, self.gateway

    def add_route(self, route: Route) -> None:
        table = self.metric_table if route.metric else self.table
        if route.dst in table:
            raise OSError(errno.EEXIST, "File exists")
        table[route.dst] = route

    def delete_route(self, route: Route) -> None:
        table = self.metric_table if route.metric else self.table
        if table.pop(route.dst, None) is None:
            raise OSError(errno.ESRCH, "No such process")

    def host_addresses(self) -> list[tuple[str, int, int | None]]:
        return [(a, 2, None) for a in self.addresses] + [
            (a, index, proto) for a, (index, proto) in self.added.items()]

    def add_address(self, address: str, ifindex: int) -> None:
        if address in self.added:
            raise OSError(errno.EEXIST, "File exists")
        self.added[address] = (ifindex, RTPROT_IKEV1D)

    def delete_address(self, address: str, ifindex: int) -> None:
        if self.added.pop(address, None) is None:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    def close(self) -> None:
        self.closed = True


def test_routes_to_remote_networks_from_a_local_address_inside_the_local_networks(
    fake: FakeXfrm,
) -> None:
    routes = FakeRoutes(["127.0.0.1", LOCAL, "10.1.0.1", "fd00::1"])
    backend = KernelBackend(fake, routes=routes)
    sa = make_sa(remote_ts=("10.2.0.0/24", "10.3.0.0/16", "fd02::/64"))
    backend.install(sa)
    assert routes.table == {
        net("10.2.0.0/24"): Route(net("10.2.0.0/24"), 3, REMOTE, "10.1.0.1"),
        net("10.3.0.0/16"): Route(net("10.3.0.0/16"), 3, REMOTE, "10.1.0.1"),
    }  # no IPv6 address inside 10.1.0.0/24: no IPv6 route
    rekeyed = replace(sa, spi_in=0xC5, spi_out=0xC6)
    backend.install(rekeyed)
    backend.remove(deleted(sa))
    assert len(routes.table) == 2  # still used by the rekeyed pair
    backend.remove(deleted(rekeyed))
    assert routes.table == {}
    backend.close()
    assert routes.closed


def test_no_routes_without_a_local_address_in_transport_mode_or_over_existing_routes(
    fake: FakeXfrm,
) -> None:
    routes = FakeRoutes([LOCAL], gateway="192.0.2.254")
    backend = KernelBackend(fake, routes=routes)
    backend.install(make_sa())  # a pure gateway: 10.1.0.0/24 is behind it, not on it
    assert routes.table == {}
    routes.addresses.append("10.1.0.1")
    backend.install(make_sa(child="t", spi_in=3, spi_out=4, mode="transport",
                            local_ts=(f"{LOCAL}/32",), remote_ts=(f"{REMOTE}/32",)))
    assert routes.table == {}
    theirs = Route(net("10.7.0.0/24"), 9, "192.0.2.9", "10.1.0.9")
    routes.table[theirs.dst] = theirs
    backend.install(make_sa(child="x", spi_in=5, spi_out=6, remote_ts=("10.7.0.0/24",
                                                                       "10.8.0.0/24")))
    assert routes.table[net("10.8.0.0/24")].gateway == "192.0.2.254"
    backend.remove(ChildSaDeleted("gw", "x", 1, 1, 5, 6, "test"))
    assert routes.table == {theirs.dst: theirs}  # theirs left alone
    backend.install(make_sa(child="u", spi_in=7, spi_out=8, remote=("203.0.113.1", 500),
                            remote_ts=("10.9.0.0/24",)))
    assert (7, 8) in backend.installed  # no route to the peer: SAs anyway, routes not


# --- the netlink messages ------------------------------------------------------------------


def _attributes(data: bytes) -> dict[int, bytes]:
    result: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        result[kind] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    assert offset == len(data)
    return result


def test_usersa_info_layout() -> None:
    sa = make_sa("aes", 128, "sha256", encap=True, local=(LOCAL, 4500), remote=(REMOTE, 4501))
    _inbound, outbound = plan_states(sa, 0x0102)
    msg = xfrm_io.encode_new_state(outbound)
    assert xfrm_io.USERSA_INFO_SIZE == 224  # sizeof(struct xfrm_usersa_info) on 64-bit
    info, attrs = msg[:224], _attributes(msg[224:])
    assert info[:56] == bytes(56)  # tunnel mode: any selector, any family
    assert info[56:60] == socket.inet_aton(REMOTE) and info[72:76] == sa.spi_out.to_bytes(4, "big")
    assert info[76] == 50  # IPPROTO_ESP
    assert info[80:84] == socket.inet_aton(LOCAL)
    assert struct.unpack_from("=Q", info, 96)[0] == xfrm_io.XFRM_INF  # no byte limit
    reqid, family, mode, replay, flags = struct.unpack_from("=IHBBB", info, 208)
    assert (reqid, family, mode, replay) == (0x0102, socket.AF_INET, 1, 0)
    assert flags == xfrm_io.XFRM_STATE_AF_UNSPEC
    crypt = attrs[xfrm_io.XFRMA_ALG_CRYPT]
    assert crypt[:8] == b"cbc(aes)" and crypt[8:64] == bytes(56)
    assert struct.unpack_from("=I", crypt, 64)[0] == 128 and crypt[68:] == bytes(range(100, 116))
    auth = attrs[xfrm_io.XFRMA_ALG_AUTH_TRUNC]
    assert auth[:12] == b"hmac(sha256)"
    assert struct.unpack_from("=II", auth, 64) == (256, 128) and auth[72:] == bytes(range(116, 148))
    encap = attrs[xfrm_io.XFRMA_ENCAP]
    assert struct.unpack_from("=H", encap)[0] == 2  # UDP_ENCAP_ESPINUDP
    assert struct.unpack_from("!HH", encap, 2) == (4500, 4501)
    # A 64-packet window needs the bitmap attribute (usersa_info's u8 field must be 0).
    bmp_len, _oseq, _seq, _oseq_hi, _seq_hi, window = struct.unpack_from("=6I",
                                                            attrs[xfrm_io.XFRMA_REPLAY_ESN_VAL])
    assert (bmp_len, window) == (2, 64) and len(attrs[xfrm_io.XFRMA_REPLAY_ESN_VAL]) == 32


def test_gcm_and_transport_state_layout() -> None:
    sa = make_sa(mode="transport", local_ts=(f"{LOCAL}/32",), remote_ts=(f"{REMOTE}/32",))
    inbound, _ = plan_states(sa, 3)
    msg = xfrm_io.encode_new_state(replace(inbound, replay_window=32))
    info, attrs = msg[:224], _attributes(msg[224:])
    assert info[0:4] == socket.inet_aton(LOCAL) and info[16:20] == socket.inet_aton(REMOTE)
    assert struct.unpack_from("=HBBB", info, 40) == (socket.AF_INET, 32, 32, 0)
    assert struct.unpack_from("=IHBBB", info, 208) == (3, socket.AF_INET, 0, 32, 0)
    aead = attrs[xfrm_io.XFRMA_ALG_AEAD]
    assert aead[:17] == b"rfc4106(gcm(aes))"
    assert struct.unpack_from("=II", aead, 64) == (160, 128) and aead[72:] == bytes(range(20))
    assert xfrm_io.XFRMA_REPLAY_ESN_VAL not in attrs and xfrm_io.XFRMA_ENCAP not in attrs


def test_policy_and_id_layouts() -> None:
    (out, _in, _fwd) = plan_policies(make_sa(), 9)
    msg = xfrm_io.encode_new_policy(out)
    assert xfrm_io.USERPOLICY_INFO_SIZE == 168
    info, attrs = msg[:168], _attributes(msg[168:])
    assert info[0:4] == socket.inet_aton("10.2.0.0") and info[16:20] == socket.inet_aton("10.1.0.0")
    assert struct.unpack_from("=HBB", info, 40) == (socket.AF_INET, 24, 24)
    priority, index, direction, action = struct.unpack_from("=IIBB", info, 152)
    assert (priority, index, direction, action) == (out.priority, 0, 1, 0)
    tmpl = attrs[xfrm_io.XFRMA_TMPL]
    assert len(tmpl) == 64 and tmpl[0:4] == socket.inet_aton(REMOTE) and tmpl[20] == 50
    assert tmpl[28:32] == socket.inet_aton(LOCAL)
    assert struct.unpack_from("=IB", tmpl, 44) == (9, 1)
    sa_id = xfrm_io.encode_del_state(REMOTE, 0xC2000002)
    assert len(sa_id) == 24 and sa_id[16:20] == bytes.fromhex("c2000002")
    assert struct.unpack_from("=HB", sa_id, 20) == (socket.AF_INET, 50)
    pol_id = xfrm_io.encode_del_policy(out.selector, "fwd")
    assert len(pol_id) == 64 and pol_id[:56] == info[:56] and pol_id[60] == 2


def test_route_layout() -> None:
    route = Route(net("10.2.0.0/24"), 7, REMOTE, "10.1.0.1")
    msg = xfrm_io.encode_route(route)
    family, dst_len, _src, _tos, table, proto, scope, kind, _flags = struct.unpack_from(
        "=BBBBBBBBI", msg)
    # proto 73 (RTPROT_IKEV1D): marks the route as ours, so only ours is ever deleted.
    assert (family, dst_len, table, proto, scope, kind) == (socket.AF_INET, 24, 254, 73, 0, 1)
    attrs = _attributes(msg[12:])
    assert attrs[1] == socket.inet_aton("10.2.0.0") and attrs[5] == socket.inet_aton(REMOTE)
    assert attrs[4] == struct.pack("=I", 7) and attrs[7] == socket.inet_aton("10.1.0.1")
    assert 7 not in _attributes(xfrm_io.encode_route(route, delete=True)[12:])


def test_counters_decoded_from_usersa_info() -> None:
    info = bytearray(224)
    struct.pack_into("=QQ", info, 160, 123456, 789)
    assert xfrm_io.decode_state_counters(bytes(info)) == XfrmStateCounters(123456, 789)
    with pytest.raises(xfrm_io.XfrmError):
        xfrm_io.decode_state_counters(bytes(100))


# --- against this host's kernel (root): XFRM policies exist here, ESP SAs do not -------------

_IN_NETNS = """
import sys
from ikev1d.dataplane.kernel import KernelBackend, plan_policies
from ikev1d.dataplane.linux.xfrm import XfrmSocket
from tests.unit.dataplane.test_kernel import make_sa
action = sys.argv[1]
sock = XfrmSocket()
for policy in plan_policies(make_sa(local_ts=("10.1.0.0/24", "10.1.1.0/25")), 42):
    if action == "add":
        sock.add_policy(policy)
    elif action == "delete":
        sock.delete_policy(policy.selector, policy.direction)
if action == "install":
    backend = KernelBackend(sock)
    try:
        backend.install(make_sa("aes", 128, "sha256"))
    except Exception as exc:
        print(type(exc).__name__, exc)
    else:
        print("INSTALLED")
"""


@pytest.fixture
def host_netns() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"ikv1d-{os.getpid()}-xfrmunit"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace")

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True,
                              text=True, timeout=60, cwd=_repo_root())

    try:
        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def test_host_kernel_accepts_our_policies_as_iproute2_reads_them(
    host_netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    added = host_netns(sys.executable, "-c", _IN_NETNS, "add")
    assert added.returncode == 0, added.stderr
    shown = host_netns("ip", "xfrm", "policy").stdout
    assert shown.count("\tdir ") == 6, shown
    assert "10.1.1.0/25 dst 10.2.0.0/24 \n\tdir out priority 187456" in shown
    assert "10.2.0.0/24 dst 10.1.0.0/24 \n\tdir fwd priority 187712" in shown
    assert f"tmpl src {REMOTE} dst {LOCAL}\n\t\tproto esp reqid 42 mode tunnel" in shown
    removed = host_netns(sys.executable, "-c", _IN_NETNS, "delete")
    assert removed.returncode == 0, removed.stderr
    assert host_netns("ip", "xfrm", "policy").stdout == ""


def test_host_kernel_without_esp_fails_at_start(
    host_netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    code = ("from ikev1d.dataplane.kernel import create_backend\n"
            "try:\n    create_backend(None)\nexcept Exception as exc:\n"
            "    print(type(exc).__name__, exc)\nelse:\n    print('STARTED')\n")
    result = host_netns(sys.executable, "-c", code)
    # Skipped only when the backend really started; a crash is a failure, not "ESP".
    if result.stdout.startswith("STARTED"):
        pytest.skip("this kernel has ESP (use the VM tests)")
    assert "DataplaneError" in result.stdout, result.stdout + result.stderr
    assert "cannot start: the kernel refuses an ESP SA" in result.stdout
    assert host_netns("ip", "xfrm", "state").stdout == ""


def test_host_kernel_without_esp_rolls_back_to_nothing(
    host_netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = host_netns(sys.executable, "-c", _IN_NETNS, "install")
    if result.stdout.startswith("INSTALLED"):
        pytest.skip("this kernel has ESP (use the VM tests)")
    assert "DataplaneError" in result.stdout, result.stdout + result.stderr
    assert "adding SA c1000001 192.0.2.2 -> 192.0.2.1" in result.stdout
    assert "no ESP: load esp4" in result.stdout
    assert host_netns("ip", "xfrm", "state").stdout == ""
    assert host_netns("ip", "xfrm", "policy").stdout == ""


# --- crash recovery: reqids of ours plus a state file -----------------------------------------


def _foreign(fake: FakeXfrm, reqid: int, spi: int, dst: str, ts: str) -> None:
    """Another daemon's SA and policy (strongSwan counts reqids from 1)."""
    fake.states[(dst, spi)] = XfrmState(LOCAL, dst, spi, reqid, "tunnel", ())
    sel = XfrmSelector(net("10.1.0.0/24"), net(ts))
    fake.policies[(sel, "out")] = XfrmPolicy(sel, "out", 1, XfrmTemplate(LOCAL, dst, reqid,
                                                                         "tunnel"))


def test_recover_removes_exactly_what_the_killed_run_recorded(
    fake: FakeXfrm, tmp_path: Path,
) -> None:
    state_file = str(tmp_path / "ikev1d.kernel-dataplane.json")
    first = KernelBackend(fake)
    first.recover(state_file)
    sa = make_sa()
    first.install(sa)
    ours_states, ours_policies = set(fake.states), set(fake.policies)
    assert all(s.reqid in REQIDS for s in fake.states.values())
    recorded = json.loads(Path(state_file).read_text())
    assert sorted(tuple(r) for r in recorded["states"]) == sorted(
        (dst, spi, REQIDS.start) for dst, spi in ours_states)
    assert len(recorded["policies"]) == 3
    # Killed: nothing removed. Meanwhile strongSwan installed its own entries, and a
    # second ikev1d (same reqid range, not in our file) its own.
    _foreign(fake, 1, 0x5000, "198.51.100.9", "10.8.0.0/24")
    _foreign(fake, REQIDS.start + 7, 0x6000, "198.51.100.10", "10.9.0.0/24")
    foreign = {k for k in fake.states if k not in ours_states}
    foreign_policies = {k for k in fake.policies if k not in ours_policies}
    second = KernelBackend(fake)
    second.recover(state_file)
    assert set(fake.states) == foreign and set(fake.policies) == foreign_policies
    # The same SA pair comes back from the peer: no EEXIST, and a reqid nobody holds.
    second.install(sa)
    assert fake.states[(LOCAL, sa.spi_in)].reqid not in (1, REQIDS.start + 7)
    second.close()
    assert set(fake.states) == foreign and not Path(state_file).exists()


def test_recover_leaves_recorded_entries_that_no_longer_carry_our_reqid(
    fake: FakeXfrm, tmp_path: Path,
) -> None:
    state_file = tmp_path / "s.json"
    sa = make_sa()
    first = KernelBackend(fake)
    first.recover(str(state_file))
    first.install(sa)
    # After the crash an administrator (or another daemon) took over that SPI and
    # those selectors with its own reqid: a stale file must not remove theirs.
    for key, state in list(fake.states.items()):
        fake.states[key] = replace(state, reqid=42)
    for sel_dir, policy in list(fake.policies.items()):
        fake.policies[sel_dir] = replace(policy, template=replace(policy.template, reqid=42))
    before = (dict(fake.states), dict(fake.policies))
    KernelBackend(fake).recover(str(state_file))
    assert (fake.states, fake.policies) == before


def test_entries_are_recorded_before_they_are_added(fake: FakeXfrm, tmp_path: Path) -> None:
    state_file = tmp_path / "s.json"
    backend = KernelBackend(fake)
    backend.recover(str(state_file))
    seen: list[int] = []

    def peek(op: str, arg: object) -> OSError | None:
        if op in ("add_state", "add_policy"):
            recorded = json.loads(state_file.read_text())
            seen.append(len(recorded["states"]) + len(recorded["policies"]))
            if op == "add_policy":
                return OSError(errno.EEXIST, "File exists")
        return None

    fake.fail = peek
    with pytest.raises(DataplaneError):
        backend.install(make_sa())
    assert seen and all(n == 5 for n in seen)  # 2 states + 3 policies, before each add
    assert json.loads(state_file.read_text())["states"] == []  # rolled back, and so recorded


def test_unreadable_state_file_is_ignored_with_a_warning(
    fake: FakeXfrm, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    state_file = tmp_path / "s.json"
    state_file.write_text("{not json")
    _foreign(fake, REQIDS.start, 0x6000, "198.51.100.10", "10.9.0.0/24")
    backend = KernelBackend(fake)
    backend.recover(str(state_file))
    assert len(fake.states) == 1 and "unreadable" in caplog.text
    assert "not recorded" in caplog.text
    backend.install(make_sa())
    assert fake.states[(LOCAL, 0xC1000001)].reqid != REQIDS.start


# --- life_bytes: byte lifetimes and the kernel's expiry reports ---------------------------------


class FakeExpire:
    def __init__(self) -> None:
        self.queued: list[xfrm_io.XfrmExpire | xfrm_io.XfrmAcquire] = []
        self.closed = False

    def fileno(self) -> int:
        return -1

    def read(self) -> list[xfrm_io.XfrmExpire | xfrm_io.XfrmAcquire]:
        out, self.queued = self.queued, []
        return out

    def close(self) -> None:
        self.closed = True


def test_life_bytes_become_soft_and_hard_byte_lifetimes() -> None:
    sa = replace(make_sa(), life_bytes=1_000_000)
    inbound, outbound = plan_states(sa, 5)
    for state in (inbound, outbound):
        assert state.hard_bytes == 1_000_000
        assert state.soft_bytes == soft_limit(1_000_000, sa.spi_in) < 1_000_000
    msg = xfrm_io.encode_new_state(outbound)
    soft, hard, soft_pkt, hard_pkt = struct.unpack_from("=4Q", msg, 96)
    assert (soft, hard) == (outbound.soft_bytes, 1_000_000)
    assert (soft_pkt, hard_pkt) == (outbound.soft_packets, 2**32 - 1)
    # Without life_bytes: no byte limit.
    assert struct.unpack_from("=2Q", xfrm_io.encode_new_state(plan_states(make_sa(), 5)[0]),
                              96) == (xfrm_io.XFRM_INF, xfrm_io.XFRM_INF)


def test_sequence_numbers_are_renewed_before_they_wrap() -> None:
    """RFC 4303 section 3.3.3: without ESN the 32-bit sequence number must not
    cycle; a packet lifetime in xfrm_lifetime_cfg (after the two byte limits)
    makes the kernel ask for the renewal first, and stop at the last number."""
    sa = make_sa()
    for state in plan_states(sa, 5):
        msg = xfrm_io.encode_new_state(state)
        soft_pkt, hard_pkt, soft_s, hard_s = struct.unpack_from("=4Q", msg, 112)
        assert hard_pkt == 2**32 - 1
        assert soft_pkt == soft_limit(2**32 - 1, sa.spi_in)
        assert 0.85 * 2**32 <= soft_pkt <= 0.9 * 2**32
        assert soft_s == hard_s == 0  # no time limits: time stays the engine's


def test_sequence_number_expiry_is_reported_as_such(fake: FakeXfrm) -> None:
    expire = FakeExpire()
    backend = KernelBackend(fake, expire_source=expire)
    reports: list[tuple[int, bool, str]] = []
    backend.set_expire_handler(lambda cid, hard, why: reports.append((cid, hard, why)))
    sa = replace(make_sa(), child_id=4)
    backend.install(sa)
    expire.queued = [xfrm_io.XfrmExpire(REMOTE, sa.spi_out, False)]
    backend.handle_expire_readable()
    assert reports == [(4, False, "sequence numbers nearly reached: renewing")]
    backend.close()


def test_expiry_reports_become_one_renewal_and_one_deletion(fake: FakeXfrm) -> None:
    expire = FakeExpire()
    backend = KernelBackend(fake, expire_source=expire)
    reports: list[tuple[int, bool, str]] = []
    backend.set_expire_handler(lambda cid, hard, why: reports.append((cid, hard, why)))
    sa = replace(make_sa(), child_id=9, life_bytes=100_000)
    backend.install(sa)
    expire.queued = [xfrm_io.XfrmExpire(REMOTE, sa.spi_out, False),
                     xfrm_io.XfrmExpire(LOCAL, sa.spi_in, False),  # the other direction
                     xfrm_io.XfrmExpire("203.0.113.1", 0x777, True)]  # not ours
    backend.handle_expire_readable()
    assert [(cid, hard) for cid, hard, _ in reports] == [(9, False)]
    expire.queued = [xfrm_io.XfrmExpire(LOCAL, sa.spi_in, True),
                     xfrm_io.XfrmExpire(REMOTE, sa.spi_out, True)]
    backend.handle_expire_readable()
    assert [(cid, hard) for cid, hard, _ in reports] == [(9, False), (9, True)]
    # The kernel deleted the states itself: removing them is not an error.
    fake.states.clear()
    backend.remove(deleted(sa))
    backend.close()
    assert expire.closed


def test_dump_and_expire_messages_decode_what_we_encode() -> None:
    sa = make_sa(spi_in=0xC1A2B3C4)
    inbound, _ = plan_states(sa, REQIDS.start + 3)
    info = xfrm_io.encode_new_state(inbound)
    assert xfrm_io.decode_state_info(info) == xfrm_io.InstalledState(
        REMOTE, LOCAL, 0xC1A2B3C4, REQIDS.start + 3)
    assert xfrm_io.decode_expire(info[:224] + b"\x01" + bytes(7)) == xfrm_io.XfrmExpire(
        LOCAL, 0xC1A2B3C4, True)
    for policy in plan_policies(sa, 77):
        decoded = xfrm_io.decode_policy_info(xfrm_io.encode_new_policy(policy))
        assert decoded == xfrm_io.InstalledPolicy(policy.selector, policy.direction, (77,))
    with pytest.raises(xfrm_io.XfrmError):
        xfrm_io.decode_state_info(bytes(100))


_RECOVER_IN_NETNS = """
import json, sys
from ikev1d.dataplane.kernel import REQIDS, KernelBackend, plan_policies
from ikev1d.dataplane.linux.xfrm import XfrmSocket
from tests.unit.dataplane.test_kernel import make_sa
sock = XfrmSocket()
ours = plan_policies(make_sa(), REQIDS.start)
theirs = plan_policies(make_sa(local_ts=("10.7.0.0/24",)), 1)
for policy in (*ours, *theirs):
    sock.add_policy(policy)
print(len(sock.dump_policies()), sorted({r for p in sock.dump_policies() for r in p.reqids}))
with open(sys.argv[1], "w") as f:
    json.dump({"version": 1, "states": [], "policies": [
        [str(p.selector.src), str(p.selector.dst), p.direction, p.template.reqid]
        for p in (*ours, *theirs)]}, f)
KernelBackend(sock).recover(sys.argv[1])
"""


def test_host_kernel_recovery_removes_only_policies_with_our_reqids(
    host_netns: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
) -> None:
    # Even a state file that lists the other daemon's policies cannot remove them.
    result = host_netns(sys.executable, "-c", _RECOVER_IN_NETNS, str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"6 [1, {REQIDS.start}]"), result.stdout
    shown = host_netns("ip", "xfrm", "policy").stdout
    assert shown.count("\tdir ") == 3 and "reqid 1 " in shown, shown
    assert f"reqid {REQIDS.start}" not in shown


# --- the responder's inbound half before Quick Mode message 3 --------------------------------


def test_renewal_inbound_state_goes_in_early_outbound_on_completion(
    backend: KernelBackend, fake: FakeXfrm, tmp_path: Path,
) -> None:
    """A renewal's policies exist: its inbound state alone lets the kernel open what the
    peer sends on it (the ``in``/``fwd`` templates name its reqid); the outbound state
    only on completion. The state file lists the half too."""
    state_file = tmp_path / "k.json"
    backend.recover(str(state_file))
    old = make_sa()
    backend.install(old)
    policies = dict(fake.policies)
    new = replace(old, spi_in=0xC5, spi_out=0xC6, child_id=2)
    backend.install_inbound(new)
    assert set(fake.states) == {(LOCAL, old.spi_in), (REMOTE, old.spi_out), (LOCAL, 0xC5)}
    assert fake.states[(LOCAL, 0xC5)] == plan_states(new, REQIDS.start)[0]
    assert fake.policies == policies
    recorded = {(r[0], r[1]) for r in json.loads(state_file.read_text())["states"]}
    assert (LOCAL, 0xC5) in recorded
    assert backend.counters(0xC5, 0xC6) == Counters()  # not an installed pair yet
    backend.remove(deleted(old))  # the pair it renews may go first: policies stay
    assert fake.policies == policies
    backend.install(new)
    assert set(fake.states) == {(LOCAL, 0xC5), (REMOTE, 0xC6)}
    assert fake.states[(REMOTE, 0xC6)] == plan_states(new, REQIDS.start)[1]
    assert backend.installed == {(0xC5, 0xC6): plan_states(new, REQIDS.start)}
    backend.remove(deleted(new))
    assert fake.states == {} and fake.policies == {}


def test_withdrawn_inbound_half_of_a_renewal(backend: KernelBackend, fake: FakeXfrm) -> None:
    """Withdrawn: the state goes, the policies only with their last user."""
    tunnel = make_sa()
    backend.install(tunnel)
    assert len(fake.states) == 2 and len(fake.policies) == 3
    policies = dict(fake.policies)
    renewal = replace(tunnel, spi_in=0xC7, spi_out=0xC8, child_id=2)
    backend.install_inbound(renewal)
    assert (LOCAL, 0xC7) in fake.states
    backend.remove(deleted(renewal))
    assert (LOCAL, 0xC7) not in fake.states and fake.policies == policies
    backend.remove(deleted(renewal))  # unknown now: not an error
    backend.install_inbound(renewal)
    backend.remove(deleted(tunnel))
    backend.remove(deleted(renewal))  # the last user of the policies
    assert fake.states == {} and fake.policies == {}


def _directions(fake: FakeXfrm) -> list[str]:
    return sorted(direction for _, direction in fake.policies)


def test_new_tunnel_inbound_half_brings_in_and_fwd_policies_out_waits_for_message_3(
    backend: KernelBackend, fake: FakeXfrm, tmp_path: Path,
) -> None:
    """A new tunnel: what the peer sends from Quick Mode message 2 on is opened (the
    inbound state and the in/fwd policies naming its reqid); nothing goes out through
    the tunnel before message 3 (no out policy, no outbound state)."""
    state_file = tmp_path / "k.json"
    backend.recover(str(state_file))
    sa = make_sa()
    backend.install_inbound(sa)
    inbound, outbound = plan_states(sa, REQIDS.start)
    assert fake.states == {(LOCAL, sa.spi_in): inbound}
    assert _directions(fake) == ["fwd", "in"]
    assert {p.template.reqid for p in fake.policies.values()} == {REQIDS.start}
    recorded = json.loads(state_file.read_text())
    assert sorted(r[2] for r in recorded["policies"]) == ["fwd", "in"]
    assert backend.installed == {}
    backend.install(sa)
    assert fake.states == {(LOCAL, sa.spi_in): inbound, (REMOTE, sa.spi_out): outbound}
    assert set(fake.policies.values()) == set(plan_policies(sa, REQIDS.start))
    assert len(json.loads(state_file.read_text())["policies"]) == 3
    backend.remove(deleted(sa))
    assert fake.states == {} and fake.policies == {}


def test_withdrawn_new_tunnel_half_leaves_nothing(backend: KernelBackend, fake: FakeXfrm) -> None:
    sa = make_sa()
    backend.install_inbound(sa)
    backend.remove(deleted(sa))
    assert fake.states == {} and fake.policies == {} and backend.policies == []
    backend.install(sa)  # and the tunnel can come again
    assert len(fake.states) == 2 and len(fake.policies) == 3


def test_new_tunnel_half_shares_its_policies_with_a_pair_completed_first(
    backend: KernelBackend, fake: FakeXfrm,
) -> None:
    """Exchanges for the same selectors at once (e.g. both peers initiating): whichever
    pair completes first adds the out policy, once; a pair of ours as the initiator
    (installed whole) as well as a second responder half."""
    first = make_sa()
    second = replace(first, spi_in=0xD1, spi_out=0xD2, child_id=2)
    ours = replace(first, spi_in=0xD3, spi_out=0xD4, child_id=3)
    backend.install_inbound(first)
    backend.install_inbound(second)
    assert _directions(fake) == ["fwd", "in"] and len(fake.states) == 2
    backend.install(ours)
    assert _directions(fake) == ["fwd", "in", "out"] and len(fake.states) == 4
    backend.install(second)  # FakeXfrm refuses a policy added twice
    backend.install(first)
    assert len(fake.states) == 6 and len(fake.policies) == 3
    for sa in (second, ours):
        backend.remove(deleted(sa))
    assert len(fake.policies) == 3
    backend.remove(deleted(first))
    assert fake.states == {} and fake.policies == {}


def test_failed_new_tunnel_half_is_taken_back(backend: KernelBackend, fake: FakeXfrm) -> None:
    fake.fail = lambda name, arg: (OSError(errno.ENOBUFS, "No buffer space available")
                                   if name == "add_policy" and getattr(arg, "direction", "")
                                   == "fwd" else None)
    with pytest.raises(DataplaneError, match="No buffer space"):
        backend.install_inbound(make_sa())
    assert fake.states == {} and fake.policies == {} and backend.policies == []


def test_out_policy_added_when_completing_fails_takes_the_half_back(
    backend: KernelBackend, fake: FakeXfrm,
) -> None:
    sa = make_sa()
    backend.install_inbound(sa)
    fake.fail = lambda name, arg: (OSError(errno.ENOBUFS, "No buffer space available")
                                   if name == "add_policy" else None)
    with pytest.raises(DataplaneError, match="No buffer space"):
        backend.install(sa)
    fake.fail = lambda name, arg: None
    assert fake.states == {} and fake.policies == {} and backend.installed == {}


def test_close_removes_an_inbound_half(fake: FakeXfrm, tmp_path: Path) -> None:
    state_file = tmp_path / "k.json"
    backend = KernelBackend(fake)
    backend.recover(str(state_file))
    sa = make_sa()
    backend.install(sa)
    backend.install_inbound(replace(sa, spi_in=0xC9, spi_out=0xCA, child_id=2))
    backend.close()
    assert fake.states == {} and fake.policies == {} and not state_file.exists()


def test_a_killed_run_s_inbound_half_is_removed_on_restart(
    fake: FakeXfrm, tmp_path: Path,
) -> None:
    state_file = str(tmp_path / "k.json")
    first = KernelBackend(fake)
    first.recover(state_file)
    sa = make_sa()
    first.install(sa)
    first.install_inbound(replace(sa, spi_in=0xCB, spi_out=0xCC, child_id=2))
    # The file is written again later: the half must stay listed.
    first.install(make_sa(child="b", spi_in=0xCD, spi_out=0xCE, local_ts=("10.5.0.0/24",)))
    assert len(fake.states) == 5
    second = KernelBackend(fake)  # the first was SIGKILLed
    second.recover(state_file)
    assert fake.states == {} and fake.policies == {}

"""Road warriors in memory: an ikev1d server with an address pool and ikev1d
clients, through XAUTH and Mode Config (pull and push) to Quick Mode, with a
fake clock, lossy paths and a masquerading NAT.

This proves that ikev1d agrees with itself; tests/interop/test_roadwarrior_strongswan.py
checks the server against a real strongSwan client.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import (
    ChildSaEstablished,
    ConnectionFailed,
    Datagram,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    TrapInstalled,
    TrapRemoved,
    VirtualIpAssigned,
    VirtualIpReleased,
    XauthCheck,
)
from ikev1d.engine.exchanges.transaction import Transaction
from ikev1d.engine.ike_sa import IkeSa, IkeState
from ikev1d.engine.roadwarrior import Step
from ikev1d.wire import AttributePayload, ExchangeType, Flags, split_message

E = TypeVar("E")

SERVER = "192.0.2.1"
GROUP_KEY = "a group key shared by all road warriors"


def server_config(*, addrs: str = "10.3.0.0/24", modecfg: str = "pull", xauth: bool = False,
                  tries: int = 3, users: dict[str, str] | None = None,
                  radius: bool = False) -> str:
    users = {"alice": "alice's password", "bob": "bob's password"} if users is None else users
    secrets = "".join(
        f'[secrets.user-{name}]\ntype = "xauth"\nids = ["{name}"]\nsecret = "{pw}"\n'
        for name, pw in users.items())
    return f"""
[daemon]
dataplane = "none"
retransmit_timeout = "1s"
retransmit_tries = {tries}

[connections.rw]
local_addrs = ["{SERVER}"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["clients"]
modecfg = "{modecfg}"
dpd_delay = "0s"
[connections.rw.local]
id = "gw.example.org"
[connections.rw.remote]
id = "%any"
{'[connections.rw.remote_xauth]' + chr(10) + 'auth = "xauth"' if xauth else ''}
[connections.rw.children.net]
local_ts = ["10.2.0.0/16"]
esp_proposals = ["aes128gcm16"]

[pools.clients]
addrs = "{addrs}"
dns = ["10.2.0.53"]
split_include = ["10.2.0.0/16"]

[secrets.group]
secret = "{GROUP_KEY}"
ids = ["%any"]
{secrets}
"""


def client_config(address: str, *, ident: str | None = None, modecfg: str = "pull",
                  user: str | None = None, password: str = "", tries: int = 3) -> str:
    xauth = (f'[connections.home.local_xauth]\nauth = "xauth"\nxauth_id = "{user}"\n'
             f'[secrets.me]\ntype = "xauth"\nids = ["{user}"]\nsecret = "{password}"\n'
             if user else "")
    return f"""
[daemon]
dataplane = "none"
retransmit_timeout = "1s"
retransmit_tries = {tries}

[connections.home]
local_addrs = ["{address}"]
remote_addrs = ["{SERVER}"]
proposals = ["aes128-sha256-modp2048"]
vips = ["0.0.0.0"]
modecfg = "{modecfg}"
dpd_delay = "0s"
[connections.home.local]
id = "{ident or address}"
[connections.home.remote]
id = "gw.example.org"
[connections.home.children.net]
remote_ts = ["10.2.0.0/16"]
esp_proposals = ["aes128gcm16"]

[secrets.group]
secret = "{GROUP_KEY}"
ids = ["{SERVER}"]
{xauth}
"""


@dataclass
class Node:
    engine: Engine
    address: str
    events: list[Event] = field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def sas(self) -> list[IkeSa]:
        return [sa for sa in self.engine.all_sas() if sa.state is not IkeState.DELETING]


@dataclass
class World:
    """A server and clients; ``nat`` maps client addresses to one public address."""

    rng: random.Random
    nodes: dict[str, Node] = field(default_factory=dict)
    now: float = 1000.0
    drop: Callable[[Datagram], bool] = lambda d: False
    nat: str | None = None
    _nat_out: dict[tuple[str, int], int] = field(default_factory=dict)
    _nat_in: dict[int, tuple[str, int]] = field(default_factory=dict)
    wire: list[Datagram] = field(default_factory=list)

    def add(self, address: str, config: str) -> Node:
        node = Node(Engine(parse_config(config), random_bytes=self.rng.randbytes), address)
        self.nodes[address] = node
        return node

    def _route(self, src: str, d: Datagram) -> tuple[Node, Datagram] | None:
        if self.nat is None:
            return self.nodes[d.remote[0]], d
        if src != SERVER:
            port = self._nat_out.setdefault(d.local, 1024 + len(self._nat_out))
            self._nat_in[port] = d.local
            return self.nodes[SERVER], Datagram(d.data, (self.nat, port), d.remote)
        inside = self._nat_in.get(d.remote[1])
        if inside is None:
            return None
        return self.nodes[inside[0]], Datagram(d.data, d.local, inside)

    def pump(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            moved = False
            for node in list(self.nodes.values()):
                for d in node.engine.datagrams_to_send():
                    moved = True
                    self.wire.append(d)
                    if self.drop(d):
                        continue
                    routed = self._route(node.address, d)
                    if routed is None:
                        continue
                    dst, seen = routed
                    # The receiver sees the datagram from the sender's (translated) end.
                    dst.engine.receive_datagram(seen.data, seen.remote, seen.local, self.now)
                node.events += node.engine.events()
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [t for n in self.nodes.values() if (t := n.engine.get_timer())]
            due = [t for t in deadlines if t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for node in self.nodes.values():
                node.engine.handle_timer(self.now)
            self.pump()
        self.now = end

    def up(self, address: str) -> None:
        self.nodes[address].engine.initiate("home", None, self.now)
        self.pump()


def world(server: str, *clients: tuple[str, str], seed: int = 1,
          nat: str | None = None) -> World:
    w = World(random.Random(seed), nat=nat)
    w.add(SERVER, server)
    for address, config in clients:
        w.add(address, config)
    return w


def vip_of(node: Node) -> str:
    events = node.of(VirtualIpAssigned)
    assert events, node.events
    return str(events[-1].address)


def transactions(w: World) -> list[Datagram]:
    return [d for d in w.wire if split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION]


# -- Mode Config ----------------------------------------------------------------


@pytest.mark.parametrize("modecfg", ["pull", "push"])
def test_mode_config_gives_the_client_an_address_and_the_tunnel_uses_it(modecfg: str) -> None:
    w = world(server_config(modecfg=modecfg),
              ("192.0.2.10", client_config("192.0.2.10", modecfg=modecfg)))
    w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assigned = client.of(VirtualIpAssigned)
    assert len(assigned) == 1
    event = assigned[0]
    assert isinstance(event, VirtualIpAssigned)
    assert str(event.address) == "10.3.0.1"
    assert [str(a) for a in event.dns] == ["10.2.0.53"]
    assert [str(n) for n in event.split] == ["10.2.0.0/16"]
    # The client's end of the tunnel is its virtual IP; the server's child takes it
    # as the dynamic remote_ts.
    (c_child,) = client.of(ChildSaEstablished)
    (s_child,) = server.of(ChildSaEstablished)
    assert isinstance(c_child, ChildSaEstablished) and isinstance(s_child, ChildSaEstablished)
    assert [str(n) for n in c_child.local_ts] == ["10.3.0.1/32"]
    assert [str(n) for n in c_child.remote_ts] == ["10.2.0.0/16"]
    assert [str(n) for n in s_child.remote_ts] == ["10.3.0.1/32"]
    assert (c_child.spi_in, c_child.spi_out) == (s_child.spi_out, s_child.spi_in)
    # Who spoke first: the client (pull) or the server (push).
    first = transactions(w)[0]
    assert first.local[0] == ("192.0.2.10" if modecfg == "pull" else SERVER)
    assert all(split_message(d.data)[0].flags & Flags.ENCRYPTION for d in transactions(w))
    # Both sides' status show the address; the pool counts it online.
    c_status = client.engine.status(w.now).to_json()
    s_status = server.engine.status(w.now).to_json()
    assert c_status["ike_sas"][0]["virtual_ip"] == "10.3.0.1"
    assert c_status["ike_sas"][0]["dns"] == ["10.2.0.53"]
    assert c_status["ike_sas"][0]["split_include"] == ["10.2.0.0/16"]
    assert s_status["ike_sas"][0]["virtual_ip"] == "10.3.0.1"
    assert s_status["pools"] == [{"name": "clients", "addrs": "10.3.0.0/24", "size": 254,
                                  "online": 1, "offline": 0}]
    # Going away: the client releases its address, the server's lease goes offline.
    client.engine.terminate("home", w.now)
    w.pump()
    released = client.of(VirtualIpReleased)
    assert len(released) == 1 and str(released[0].address) == "10.3.0.1"
    assert server.engine.status(w.now).to_json()["pools"][0]["offline"] == 1
    assert not server.sas()


def test_a_lost_mode_config_request_is_retried() -> None:
    w = world(server_config(), ("192.0.2.10", client_config("192.0.2.10")))
    dropped: list[Datagram] = []

    def drop_first_request(d: Datagram) -> bool:
        if (not dropped and d.local[0] == "192.0.2.10"
                and split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION):
            dropped.append(d)
            return True
        return False

    w.drop = drop_first_request
    w.up("192.0.2.10")
    assert dropped and not w.nodes["192.0.2.10"].of(VirtualIpAssigned)
    w.advance(2)
    assert vip_of(w.nodes["192.0.2.10"]) == "10.3.0.1"
    assert w.nodes["192.0.2.10"].of(ChildSaEstablished)


@pytest.mark.parametrize("modecfg", ["pull", "push"])
def test_mode_config_fails_clearly_when_the_peer_never_answers(
        modecfg: str, caplog: pytest.LogCaptureFixture) -> None:
    w = world(server_config(modecfg=modecfg),
              ("192.0.2.10", client_config("192.0.2.10", modecfg=modecfg)))
    # Every Transaction message is lost.
    w.drop = lambda d: split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION
    w.up("192.0.2.10")
    w.advance(200)
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    failed = client.of(ConnectionFailed)
    assert failed and "Mode Config" in failed[0].reason
    assert not client.sas() and not server.sas()
    assert not client.of(ChildSaEstablished)


# -- XAUTH -------------------------------------------------------------------------


def test_xauth_then_mode_config_then_quick_mode(caplog: pytest.LogCaptureFixture) -> None:
    w = world(server_config(xauth=True),
              ("192.0.2.10", client_config("192.0.2.10", user="alice",
                                           password="alice's password")))
    with caplog.at_level(logging.DEBUG, logger="ikev1d"):
        w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assert "XAUTH authentication of 'alice' successful" in caplog.text
    assert "alice's password" not in caplog.text.replace("secret", "")
    (c_sa,) = client.sas()
    (s_sa,) = server.sas()
    assert c_sa.xauth_user == "alice" and s_sa.xauth_user == "alice"
    assert c_sa.auth_method == 65001 and s_sa.auth_method == 65001  # XAUTHInitPreShared
    assert server.engine.status(w.now).ike_sas[0].auth == "psk+xauth"
    assert vip_of(client) == "10.3.0.1"
    assert client.of(ChildSaEstablished) and server.of(ChildSaEstablished)
    # ESTABLISHED is logged once, after XAUTH, on both sides.
    lines = caplog.text.splitlines()
    xauth_at = next(i for i, line in enumerate(lines) if "XAUTH authentication of" in line)
    established = [i for i, line in enumerate(lines) if "ISAKMP SA established" in line]
    assert len(established) == 2 and min(established) > xauth_at


def test_after_xauth_the_push_continues_the_status_exchange(
        caplog: pytest.LogCaptureFixture) -> None:
    """After XAUTH the server sends its CFG_SET under the message ID of its XAUTH status
    exchange, on that exchange's CBC chain continued from the client's ACK: the form
    Libreswan 4.10's client takes (and its server sends). The client takes the SET (its
    HASH verifies), acknowledges it and goes on to Quick Mode."""
    w = world(server_config(xauth=True, modecfg="push"),
              ("192.0.2.10", client_config("192.0.2.10", modecfg="push", user="alice",
                                           password="alice's password")))
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    # REQUEST/REPLY, SET/ACK of XAUTH, then SET/ACK of Mode Config under the same ID
    ids = [split_message(d.data)[0].message_id for d in transactions(w)]
    assert len(ids) == 6 and ids[2] == ids[3] == ids[4] == ids[5] != ids[0], ids
    assert vip_of(client) == "10.3.0.1"
    assert client.of(ChildSaEstablished) and server.of(ChildSaEstablished)
    assert "dropping" not in caplog.text
    (s_sa,) = server.sas()
    assert s_sa.push_continues is None and not s_sa.exchange_ivs


def test_without_xauth_the_push_is_an_exchange_of_its_own() -> None:
    w = world(server_config(modecfg="push"),
              ("192.0.2.10", client_config("192.0.2.10", modecfg="push")))
    w.up("192.0.2.10")
    ids = [split_message(d.data)[0].message_id for d in transactions(w)]
    assert len(ids) == 2 and ids[0] == ids[1], ids
    assert vip_of(w.nodes["192.0.2.10"]) == "10.3.0.1"


def test_a_push_after_xauth_under_a_new_message_id_is_taken_too(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """strongSwan's server starts a new exchange for its push after XAUTH
    (draft-dukes-ike-mode-cfg-02 section 3.2): the client takes that form as well."""
    real_send = Step.send

    def send(self: Step, payload: AttributePayload, now: float,
             on_answer: Callable[[AttributePayload, float], None],
             continuing: tuple[int, bytes] | None = None) -> Transaction:
        return real_send(self, payload, now, on_answer)

    monkeypatch.setattr(Step, "send", send)
    w = world(server_config(xauth=True, modecfg="push"),
              ("192.0.2.10", client_config("192.0.2.10", modecfg="push", user="alice",
                                           password="alice's password")))
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    ids = [split_message(d.data)[0].message_id for d in transactions(w)]
    assert len(ids) == 6 and len(set(ids)) == 3, ids
    assert vip_of(client) == "10.3.0.1"
    assert client.of(ChildSaEstablished) and server.of(ChildSaEstablished)
    assert "dropping" not in caplog.text


def test_a_lost_push_after_xauth_is_sent_again_under_the_same_message_id() -> None:
    w = world(server_config(xauth=True, modecfg="push"),
              ("192.0.2.10", client_config("192.0.2.10", modecfg="push", user="alice",
                                           password="alice's password")))
    seen: list[Datagram] = []

    def drop_first_push(d: Datagram) -> bool:
        if (d.local[0] == SERVER
                and split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION):
            seen.append(d)
            return len(seen) == 3  # REQUEST, status SET, then the push
        return False

    w.drop = drop_first_push
    w.up("192.0.2.10")
    assert not w.nodes["192.0.2.10"].of(VirtualIpAssigned)
    w.advance(2)
    client = w.nodes["192.0.2.10"]
    assert vip_of(client) == "10.3.0.1" and client.of(ChildSaEstablished)
    assert seen[3].data == seen[2].data  # the same message again


def test_a_transaction_reusing_another_finished_message_id_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    """Only the exchange the peer started last may go on under its message ID; a message
    under the ID of an older finished exchange is dropped with a log line."""
    w = world(server_config(xauth=True, modecfg="push"),
              ("192.0.2.10", client_config("192.0.2.10", modecfg="push", user="alice",
                                           password="alice's password")))
    w.up("192.0.2.10")
    client = w.nodes["192.0.2.10"]
    first = transactions(w)[0]
    (sa,) = client.sas()
    forged = bytearray(first.data)
    forged[-1] ^= 1  # not a retransmission of the server's first request
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        client.engine.receive_datagram(bytes(forged), first.remote, first.local, w.now)
    assert "under the message ID" in caplog.text and "of a finished exchange" in caplog.text
    assert not client.engine.datagrams_to_send()
    assert client.sas() == [sa] and vip_of(client) == "10.3.0.1"


def test_xauth_with_a_wrong_password_leaves_no_sa(caplog: pytest.LogCaptureFixture) -> None:
    w = world(server_config(xauth=True),
              ("192.0.2.10", client_config("192.0.2.10", user="alice",
                                           password="not alice's password")))
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assert "XAUTH authentication failed for user 'alice'" in caplog.text
    assert "not alice's password" not in caplog.text
    failed = client.of(ConnectionFailed)
    assert failed and "XAUTH authentication failed" in failed[0].reason
    assert not client.sas() and not server.sas()
    assert not client.of(IkeSaEstablished) and not server.of(IkeSaEstablished)
    assert not client.of(VirtualIpAssigned)
    assert server.engine.status(w.now).to_json()["pools"][0]["online"] == 0


def test_xauth_for_an_unknown_user_fails() -> None:
    w = world(server_config(xauth=True, users={"bob": "bob's password"}),
              ("192.0.2.10", client_config("192.0.2.10", user="alice", password="x")))
    w.up("192.0.2.10")
    assert w.nodes["192.0.2.10"].of(ConnectionFailed)
    assert not w.nodes[SERVER].sas()


@pytest.mark.parametrize("ok", [True, False])
def test_xauth_checked_outside_the_engine(ok: bool) -> None:
    server = server_config(xauth=True, users={}).replace(
        "[secrets.group]", "[secrets.dummy]\ntype = \"xauth\"\nids = [\"nobody\"]\n"
        "secret = \"x\"\n[secrets.group]")
    w = world(server, ("192.0.2.10", client_config("192.0.2.10", user="alice",
                                                   password="pw")))
    s = w.nodes[SERVER]
    # As if [xauth] radius were set.
    from dataclasses import replace

    from ikev1d.config import XauthConfig
    s.engine.config = replace(s.engine.config, xauth=XauthConfig(radius="127.0.0.1:1812"))
    w.up("192.0.2.10")
    (check,) = s.of(XauthCheck)
    assert isinstance(check, XauthCheck)
    assert (check.user, check.password) == ("alice", b"pw")
    assert "pw" not in repr(check)
    s.engine.xauth_result(check.request_id + 100, True, w.now)  # stale: ignored
    s.engine.xauth_result(check.request_id, ok, w.now)
    w.pump()
    client = w.nodes["192.0.2.10"]
    assert bool(client.of(ChildSaEstablished)) is ok
    assert bool(client.of(ConnectionFailed)) is not ok


def test_a_quick_mode_before_xauth_is_done_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    w = world(server_config(xauth=True),
              ("192.0.2.10", client_config("192.0.2.10", user="alice",
                                           password="alice's password")))
    # The server's XAUTH request never arrives.
    w.drop = lambda d: (d.local[0] == SERVER and
                        split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION)
    w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    (c_sa,) = client.sas()
    # A client that skips XAUTH and Mode Config and starts a Quick Mode.
    client.engine.lifecycle.phase1_established(c_sa, w.now)
    c_sa.work = type(c_sa.work)()
    client.engine.lifecycle.start_quick_modes(c_sa, "net", w.now)
    sent = len(w.wire)
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        w.pump()
    qm = [d for d in w.wire[sent:] if split_message(d.data)[0].exchange_type
          == ExchangeType.QUICK_MODE]
    assert qm and all(d.local[0] == "192.0.2.10" for d in qm)  # never answered
    assert "dropping Quick Mode before XAUTH and Mode Config are done" in caplog.text
    assert not server.of(ChildSaEstablished)


# -- pools ---------------------------------------------------------------------------


def test_a_30_pool_serves_two_of_three_clients(caplog: pytest.LogCaptureFixture) -> None:
    clients = [(f"192.0.2.{10 + i}", client_config(f"192.0.2.{10 + i}")) for i in range(3)]
    w = world(server_config(addrs="10.3.0.0/30"), *clients)
    with caplog.at_level(logging.WARNING, logger="ikev1d"):
        for address, _ in clients:
            w.up(address)
    got = [w.nodes[a].of(VirtualIpAssigned) for a, _ in clients]
    assert [str(g[0].address) for g in got if g] == ["10.3.0.1", "10.3.0.2"]
    third = w.nodes["192.0.2.12"]
    assert not third.of(VirtualIpAssigned) and third.of(ConnectionFailed)
    assert "pool clients exhausted" in caplog.text
    assert len(w.nodes[SERVER].of(ChildSaEstablished)) == 2
    # Once a client leaves, its address is offline: kept for it while fresh ones
    # last, then handed to the waiting client (oldest offline first).
    w.nodes["192.0.2.10"].engine.terminate("home", w.now)
    w.pump()
    w.up("192.0.2.12")
    assert vip_of(third) == "10.3.0.1"


def test_a_reconnecting_client_gets_its_address_back() -> None:
    clients = [(f"192.0.2.{10 + i}", client_config(f"192.0.2.{10 + i}")) for i in range(2)]
    w = world(server_config(), *clients)
    w.up("192.0.2.10")
    first = vip_of(w.nodes["192.0.2.10"])
    w.nodes["192.0.2.10"].engine.terminate("home", w.now)
    w.pump()
    w.up("192.0.2.11")
    assert vip_of(w.nodes["192.0.2.11"]) != first
    w.up("192.0.2.10")
    assert vip_of(w.nodes["192.0.2.10"]) == first


def test_leases_survive_a_reload() -> None:
    w = world(server_config(), ("192.0.2.10", client_config("192.0.2.10")),
              ("192.0.2.11", client_config("192.0.2.11")))
    w.up("192.0.2.10")
    w.nodes["192.0.2.10"].engine.terminate("home", w.now)
    w.pump()
    server = w.nodes[SERVER].engine
    server.reload(parse_config(server_config()), w.now)
    w.up("192.0.2.11")
    assert vip_of(w.nodes["192.0.2.11"]) == "10.3.0.2"  # .1 is still kept for .10
    w.up("192.0.2.10")
    assert vip_of(w.nodes["192.0.2.10"]) == "10.3.0.1"


def test_two_clients_behind_one_nat_keep_their_own_sa_and_lease() -> None:
    users = {"alice": "alice's password", "bob": "bob's password"}
    w = world(server_config(xauth=True, users=users),
              ("10.0.0.2", client_config("10.0.0.2", ident="road.example.org", user="alice",
                                         password=users["alice"])),
              ("10.0.0.3", client_config("10.0.0.3", ident="road.example.org", user="bob",
                                         password=users["bob"])),
              nat="198.51.100.7")
    w.up("10.0.0.2")
    w.up("10.0.0.3")
    a, b = w.nodes["10.0.0.2"], w.nodes["10.0.0.3"]
    # The same group ID from the same address: the XAUTH users tell them apart.
    assert {vip_of(a), vip_of(b)} == {"10.3.0.1", "10.3.0.2"}
    server = w.nodes[SERVER]
    sas = server.sas()
    assert len(sas) == 2 and {sa.remote[0] for sa in sas} == {"198.51.100.7"}
    assert len({sa.remote[1] for sa in sas}) == 2
    assert all(sa.nat_remote for sa in sas)
    assert len(server.of(ChildSaEstablished)) == 2
    # One leaving does not disturb the other.
    a.engine.terminate("home", w.now)
    w.pump()
    (left,) = server.sas()
    assert left.xauth_user == "bob" and left.children
    assert b.sas()[0].children


# -- loss ----------------------------------------------------------------------------


def _lossy(rng: random.Random, rate: float) -> Callable[[Datagram], bool]:
    return lambda d: rng.random() < rate


@pytest.mark.parametrize("modecfg", ["pull", "push"])
def test_mode_config_completes_through_30_percent_loss(modecfg: str) -> None:
    completed = 0
    for seed in range(20):
        loss = random.Random(1000 + seed)
        w = world(server_config(modecfg=modecfg, tries=10, xauth=True),
                  ("192.0.2.10", client_config("192.0.2.10", modecfg=modecfg, tries=10,
                                               user="alice", password="alice's password")),
                  seed=seed)
        w.drop = _lossy(loss, 0.3)
        w.up("192.0.2.10")
        w.advance(600)
        client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
        if client.of(ChildSaEstablished) and server.of(ChildSaEstablished):
            assert vip_of(client) == "10.3.0.1"
            completed += 1
    assert completed >= 19


# -- forged input ---------------------------------------------------------------------


def test_forged_and_garbage_transactions_change_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    w = world(server_config(xauth=True),
              ("192.0.2.10", client_config("192.0.2.10", user="alice",
                                           password="alice's password")))
    # Hold the client's XAUTH reply back: the server waits with its exchange open.
    w.drop = lambda d: (d.local[0] == "192.0.2.10" and
                        split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION)
    w.up("192.0.2.10")
    server = w.nodes[SERVER]
    (sa,) = server.sas()
    ivs, exchanges = dict(sa.exchange_ivs), dict(sa.exchanges)
    completed = list(sa.completed_message_ids)
    template = next(d for d in transactions(w) if d.local[0] == "192.0.2.10")
    rng = random.Random(7)
    header = template.data[:28]
    forged: list[bytes] = []
    for _ in range(50):
        body = bytes(rng.randrange(256) for _ in range(rng.choice([16, 32, 48, 64])))
        message_id = rng.choice([template.data[20:24], rng.randbytes(4)])
        packet = bytearray(header + body)
        packet[20:24] = message_id
        packet[24:28] = len(packet).to_bytes(4, "big")
        forged.append(bytes(packet))
    flipped = bytearray(template.data)
    flipped[-1] ^= 1
    forged.append(bytes(flipped))
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        for data in forged:
            server.engine.receive_datagram(data, (SERVER, 500), ("192.0.2.10", 500), w.now)
    assert server.engine.datagrams_to_send() == []
    assert sa.exchange_ivs == ivs and sa.exchanges == exchanges
    assert list(sa.completed_message_ids) == completed
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    # The genuine reply still works afterwards.
    w.drop = lambda d: False
    w.advance(5)
    assert vip_of(w.nodes["192.0.2.10"]) == "10.3.0.1"


def test_ipv6_pool() -> None:
    server = server_config(addrs="fd00:3::/120").replace(
        'split_include = ["10.2.0.0/16"]', 'split_include = ["fd00:2::/64"]').replace(
        'local_ts = ["10.2.0.0/16"]', 'local_ts = ["fd00:2::/64"]')
    client = client_config("192.0.2.10").replace('vips = ["0.0.0.0"]', 'vips = ["::"]').replace(
        'remote_ts = ["10.2.0.0/16"]', 'remote_ts = ["fd00:2::/64"]')
    w = world(server, ("192.0.2.10", client))
    w.up("192.0.2.10")
    node = w.nodes["192.0.2.10"]
    assert vip_of(node) == "fd00:3::1"
    (child,) = node.of(ChildSaEstablished)
    assert [str(n) for n in child.local_ts] == ["fd00:3::1/128"]
    assert ipaddress.ip_network("fd00:2::/64") in node.of(VirtualIpAssigned)[0].split


def test_a_client_that_is_deleted_by_the_peer_releases_its_address() -> None:
    w = world(server_config(), ("192.0.2.10", client_config("192.0.2.10")))
    w.up("192.0.2.10")
    w.nodes[SERVER].engine.terminate("rw", w.now)
    w.pump()
    client = w.nodes["192.0.2.10"]
    assert client.of(IkeSaDeleted) and len(client.of(VirtualIpReleased)) == 1


@pytest.mark.parametrize("xauth", [False, True])
def test_phase1_renewal_keeps_the_virtual_ip(xauth: bool) -> None:
    client = client_config("192.0.2.10", user="alice" if xauth else None,
                           password="alice's password").replace(
        'dpd_delay = "0s"', 'dpd_delay = "0s"\nrekey_time = "10m"')
    w = world(server_config(xauth=xauth), ("192.0.2.10", client))
    w.up("192.0.2.10")
    node, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    (first,) = node.sas()
    w.advance(700)
    (renewed,) = node.sas()
    assert renewed is not first and renewed.local_vip == ipaddress.ip_address("10.3.0.1")
    # Assigned again for the new ISAKMP SA, never released in between.
    assert [str(e.address) for e in node.of(VirtualIpAssigned)] == ["10.3.0.1", "10.3.0.1"]
    assert [e.ike_id for e in node.of(VirtualIpAssigned)] == [first.ike_id, renewed.ike_id]
    assert not node.of(VirtualIpReleased)
    assert renewed.children and server.sas()[0].children
    pools = server.engine.status(w.now).to_json()["pools"]
    assert (pools[0]["online"], pools[0]["offline"]) == (1, 0)
    assert len(server.sas()) == 1 and server.sas()[0].remote_vip == renewed.local_vip


def test_received_attributes_unknown_and_malformed_ones_are_left_out() -> None:
    from ikev1d.engine.roadwarrior import read_config
    from ikev1d.wire import Attribute, ModeCfgAttr

    a = ModeCfgAttr
    received = read_config([
        Attribute(a.INTERNAL_IP4_ADDRESS, bytes([10, 3, 0, 9])),
        Attribute(a.INTERNAL_IP4_DNS, bytes(3)),  # too short
        Attribute(a.INTERNAL_IP4_DNS, bytes([10, 2, 0, 53])),
        Attribute(a.INTERNAL_IP4_SUBNET, bytes([10, 2, 0, 0, 255, 255, 0, 0])),
        Attribute(a.INTERNAL_IP4_SUBNET, bytes([10, 2, 0, 0, 255, 0, 255, 0])),  # no netmask
        Attribute(a.UNITY_SPLIT_INCLUDE, bytes([10, 2, 0, 0, 255, 255, 0, 0]) + bytes(6)
                  + bytes([10, 7, 0, 0, 255, 255, 255, 0]) + bytes(6)),
        Attribute(a.INTERNAL_IP6_ADDRESS, bytes(16) + bytes([64])),
        Attribute(0x7ABC, b"whatever"),
        Attribute(a.UNITY_BANNER, b"welcome"),
    ])
    assert [str(x) for x in received.addresses] == ["10.3.0.9", "::"]
    assert [str(x) for x in received.dns] == ["10.2.0.53"]
    assert [str(n) for n in received.split] == ["10.2.0.0/16", "10.7.0.0/24"]
    assert received.unknown == [0x7ABC]
    assert received.malformed == [a.INTERNAL_IP4_DNS, a.INTERNAL_IP4_SUBNET]


def test_a_transaction_with_too_many_attributes_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    from ikev1d.engine.exchanges.transaction import MAX_ATTRIBUTES, Transaction
    from ikev1d.wire import Attribute, AttributePayload, ModeCfgAttr, ModeCfgType

    w = world(server_config(), ("192.0.2.10", client_config("192.0.2.10")))
    # The client's pull never leaves: the server waits for a request.
    w.drop = lambda d: split_message(d.data)[0].exchange_type == ExchangeType.TRANSACTION
    w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    (c_sa,) = client.sas()
    tx = Transaction(c_sa, c_sa.new_message_id(), True)
    request = AttributePayload(ModeCfgType.ISAKMP_CFG_REQUEST, 1, tuple(
        Attribute(ModeCfgAttr.INTERNAL_IP4_DNS, b"") for _ in range(MAX_ATTRIBUTES + 1)))
    data = tx.encrypt(request)
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        server.engine.receive_datagram(data, (SERVER, 500), ("192.0.2.10", 500), w.now)
    assert "more than the 64 we take" in caplog.text
    assert server.engine.datagrams_to_send() == []
    (s_sa,) = server.sas()
    assert s_sa.remote_vip is None


def test_a_group_member_deleting_its_isakmp_sa_leaves_the_others_tunnels_alone() -> None:
    users = {"alice": "alice's password", "bob": "bob's password"}
    w = world(server_config(xauth=True, users=users),
              ("10.0.0.2", client_config("10.0.0.2", ident="road.example.org", user="alice",
                                         password=users["alice"])),
              ("10.0.0.3", client_config("10.0.0.3", ident="road.example.org", user="bob",
                                         password=users["bob"])),
              nat="198.51.100.7")
    w.up("10.0.0.2")
    w.up("10.0.0.3")
    server = w.nodes[SERVER]
    alice_sa = next(sa for sa in server.sas() if sa.xauth_user == "alice")
    bob_sa = next(sa for sa in server.sas() if sa.xauth_user == "bob")
    # Only the ISAKMP SA is deleted (as after a crash of alice's IPsec SAs' owner):
    # its IPsec SAs must not move to bob's ISAKMP SA, which is another user's.
    (a_sa,) = w.nodes["10.0.0.2"].sas()
    a_sa.children.clear()
    w.nodes["10.0.0.2"].engine.deletion.delete_sa(a_sa, "test", send=True)
    w.pump()
    assert alice_sa not in server.sas()
    assert len(bob_sa.children) == 1


def test_unique_keep_compares_the_xauth_user_too(caplog: pytest.LogCaptureFixture) -> None:
    """unique = "keep" with XAUTH: the identity is known only once XAUTH proved the
    user, so the refusal comes then, as a failed XAUTH status; another user of the
    same group ID is not refused."""
    users = {"alice": "alice's password", "bob": "bob's password"}
    server = server_config(xauth=True, users=users).replace(
        'modecfg = "pull"\n', 'modecfg = "pull"\nunique = "keep"\n', 1)
    assert 'unique = "keep"' in server

    def client(address: str, user: str) -> tuple[str, str]:
        return address, client_config(address, ident="road.example.org", user=user,
                                      password=users[user])

    w = world(server, client("10.0.0.2", "alice"), client("10.0.0.3", "alice"),
              client("10.0.0.4", "bob"))
    for address in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        w.up(address)
    kept = w.nodes[SERVER].sas()
    assert sorted((sa.remote[0], sa.xauth_user) for sa in kept) == [
        ("10.0.0.2", "alice"), ("10.0.0.4", "bob")]
    assert not w.nodes["10.0.0.3"].sas()
    assert "unique = keep" in caplog.text


def _dual_stack_configs(modecfg: str) -> tuple[str, str]:
    server = server_config(modecfg=modecfg).replace(
        'pools = ["clients"]', 'pools = ["clients", "clients6"]').replace(
        'local_ts = ["10.2.0.0/16"]', 'local_ts = ["10.2.0.0/16", "fd00:2::/64"]'
    ) + '[pools.clients6]\naddrs = "fd00:3::10-fd00:3::20"\ndns = ["fd00:2::53"]\n'
    client = client_config("192.0.2.10", modecfg=modecfg).replace(
        'vips = ["0.0.0.0"]', 'vips = ["0.0.0.0", "::"]'
    ) + ('[connections.home.children.net6]\nremote_ts = ["fd00:2::/64"]\n'
         'esp_proposals = ["aes128gcm16"]\n')
    return server, client


@pytest.mark.parametrize("modecfg", ["pull", "push"])
def test_a_dual_stack_client_gets_one_address_of_each_family(modecfg: str) -> None:
    server_text, client_text = _dual_stack_configs(modecfg)
    w = world(server_text, ("192.0.2.10", client_text))
    w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assert [str(e.address) for e in client.of(VirtualIpAssigned)] == ["10.3.0.1", "fd00:3::10"]
    (s_sa,) = server.sas()
    assert [str(a) for a in s_sa.remote_vips] == ["10.3.0.1", "fd00:3::10"]
    # Each child's end is the virtual IP of its family, on both sides.
    ends = sorted((str(c.local_ts[0]), str(c.remote_ts[0]))
                  for c in client.of(ChildSaEstablished))
    assert ends == [("10.3.0.1/32", "10.2.0.0/16"), ("fd00:3::10/128", "fd00:2::/64")]
    assert sorted(str(c.remote_ts[0]) for c in server.of(ChildSaEstablished)) == [
        "10.3.0.1/32", "fd00:3::10/128"]
    c_json = client.engine.status(w.now).to_json()["ike_sas"][0]
    s_json = server.engine.status(w.now).to_json()["ike_sas"][0]
    for doc in (c_json, s_json):
        assert doc["virtual_ip"] == "10.3.0.1"
        assert doc["virtual_ips"] == ["10.3.0.1", "fd00:3::10"]
        assert doc["dns"] == ["10.2.0.53", "fd00:2::53"]
    assert [p["online"] for p in server.engine.status(w.now).to_json()["pools"]] == [1, 1]
    # Both leases go offline, both addresses are released.
    client.engine.terminate("home", w.now)
    w.pump()
    assert [p["offline"] for p in server.engine.status(w.now).to_json()["pools"]] == [1, 1]
    assert sorted(str(e.address) for e in client.of(VirtualIpReleased)) == [
        "10.3.0.1", "fd00:3::10"]


def test_a_dual_stack_client_with_only_an_ipv4_pool_gets_one_address() -> None:
    server_text, client_text = _dual_stack_configs("pull")
    server_text = server_text.replace('pools = ["clients", "clients6"]', 'pools = ["clients"]')
    w = world(server_text, ("192.0.2.10", client_text))
    w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assert [str(e.address) for e in client.of(VirtualIpAssigned)] == ["10.3.0.1"]
    assert [str(a) for a in server.sas()[0].remote_vips] == ["10.3.0.1"]
    # The IPv4 child is up; the IPv6 one names our IKE address, which is no lease.
    assert [str(c.local_ts[0]) for c in client.of(ChildSaEstablished)] == ["10.3.0.1/32"]


def test_a_quick_mode_mixing_address_families_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    """strongSwan's IKEv1 client proposes its first dynamic selector, its IPv4
    virtual IP, with a child's IPv6 remote network (ours never does: see below):
    such a pair names no tunnel."""
    server_text, client_text = _dual_stack_configs("pull")
    w = world(server_text, ("192.0.2.10", client_text))
    w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assert len(server.of(ChildSaEstablished)) == 2
    from ikev1d.engine.exchanges.quick_mode import QuickMode

    (sa,) = client.sas()
    assert sa.conn is not None
    qm = QuickMode(sa, sa.new_message_id(), initiator=True)
    sa.exchanges[qm.message_id] = qm
    with caplog.at_level(logging.WARNING):
        qm.start(sa.conn.children["net6"], ipaddress.ip_network("10.3.0.1/32"),
                 ipaddress.ip_network("fd00:2::/64"), w.now)
        w.pump()
    assert len(server.of(ChildSaEstablished)) == 2
    assert ("INVALID-ID-INFORMATION: no child matches the peer's tunnel 10.3.0.1/32 === "
            "fd00:2::/64") in caplog.text


@pytest.mark.parametrize("dataplane", ["none", "kernel"])
def test_a_trapped_child_whose_end_is_the_virtual_ip(dataplane: str) -> None:
    """start_action = "trap" with vips: the trap catches every source of the virtual
    IP's family (there is no virtual IP yet); an acquire brings up Main Mode, Mode
    Config and the child, which runs from the virtual IP; the trap stays. The same
    trap for the userspace and the kernel data plane."""
    client_text = client_config("192.0.2.10").replace(
        "[connections.home]\n", '[connections.home]\nstart_action = "trap"\n').replace(
        'dataplane = "none"', f'dataplane = "{dataplane}"')
    w = world(server_config(), ("192.0.2.10", client_text))
    client = w.nodes["192.0.2.10"]
    client.engine.start(w.now)
    w.pump()
    (trap,) = client.of(TrapInstalled)
    assert [str(n) for n in trap.local_ts] == ["0.0.0.0/0"]
    assert [str(n) for n in trap.remote_ts] == ["10.2.0.0/16"]
    assert not w.wire  # nothing until traffic
    client.engine.acquire("home", "net", w.now)
    w.pump()
    assert vip_of(client) == "10.3.0.1"
    (child,) = client.of(ChildSaEstablished)
    assert [str(n) for n in child.local_ts] == ["10.3.0.1/32"]
    assert not client.of(TrapRemoved)
    assert [t.child for t in client.engine.status(w.now).traps] == ["net"]


def test_a_trap_for_a_virtual_ip_without_a_network_of_its_family_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    refusal = "no remote network of the virtual IP's address family"
    client_text = client_config("192.0.2.10").replace(
        "[connections.home]\n", '[connections.home]\nstart_action = "trap"\n').replace(
        'vips = ["0.0.0.0"]', 'vips = ["::"]')
    w = world(server_config(), ("192.0.2.10", client_text))
    client = w.nodes["192.0.2.10"]
    with caplog.at_level(logging.WARNING):
        client.engine.start(w.now)
    assert not client.of(TrapInstalled)
    assert f"cannot trap home/net: {refusal}" in caplog.text


def _radius_world() -> World:
    server = server_config(xauth=True, users={}).replace(
        "[secrets.group]", "[secrets.dummy]\ntype = \"xauth\"\nids = [\"nobody\"]\n"
        "secret = \"x\"\n[secrets.group]")
    w = world(server, ("192.0.2.10", client_config("192.0.2.10", user="alice",
                                                   password="pw")))
    s = w.nodes[SERVER]
    from dataclasses import replace

    from ikev1d.config import XauthConfig
    s.engine.config = replace(s.engine.config, xauth=XauthConfig(radius="127.0.0.1:1812"))
    return w


def test_a_challenge_is_relayed_to_the_client_and_its_answer_checked_with_the_state(
        caplog: pytest.LogCaptureFixture) -> None:
    """A RADIUS Access-Challenge: the server asks the client again with the
    challenge's message (XAUTH-MESSAGE); the client answers with its password, which
    goes back to the checker with the challenge's state."""
    w = _radius_world()
    s, client = w.nodes[SERVER], w.nodes["192.0.2.10"]
    with caplog.at_level(logging.INFO):
        w.up("192.0.2.10")
        (first,) = s.of(XauthCheck)
        assert first.state == b""
        s.engine.xauth_challenge(first.request_id, "Enter your one-time code", b"st-1", w.now)
        w.pump()
        checks = s.of(XauthCheck)
        assert len(checks) == 2
        second = checks[1]
        assert (second.user, second.password, second.state) == ("alice", b"pw", b"st-1")
        assert "st-1" not in repr(second)
        s.engine.xauth_challenge(first.request_id, "again?", b"x", w.now)  # stale: ignored
        s.engine.xauth_result(second.request_id, True, w.now)
        w.pump()
    assert client.of(ChildSaEstablished)
    assert "XAUTH: challenging user 'alice' (round 1 of at most 3): Enter your one-time code" in (
        caplog.text)
    assert "XAUTH: the server says: Enter your one-time code" in caplog.text
    assert "XAUTH authentication of 'alice' successful" in caplog.text
    # Each request is an exchange of its own (message ID): the first, the
    # challenge, the status; then Mode Config.
    ids = {split_message(d.data)[0].message_id for d in transactions(w)}
    assert len(ids) == 4


def test_challenges_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    w = _radius_world()
    s, client = w.nodes[SERVER], w.nodes["192.0.2.10"]
    with caplog.at_level(logging.INFO):
        w.up("192.0.2.10")
        for n in range(4):
            check = s.of(XauthCheck)[-1]
            assert check.state == (f"st-{n - 1}".encode() if n else b"")
            s.engine.xauth_challenge(check.request_id, "more", f"st-{n}".encode(), w.now)
            w.pump()
    assert len(s.of(XauthCheck)) == 4  # the first and three answers
    assert "XAUTH: user 'alice' challenged 3 times: giving up" in caplog.text
    assert "XAUTH authentication failed for user 'alice'" in caplog.text
    assert client.of(ConnectionFailed) and not client.of(ChildSaEstablished)
    assert not s.sas()


def test_one_child_reaching_both_families_gets_an_ipsec_sa_per_family() -> None:
    """A dual-stack client's child with remote networks of both families: one Quick
    Mode per family, each from the virtual IP of that family (never a pair of
    networks of two families)."""
    server_text, client_text = _dual_stack_configs("pull")
    client_text = client_text.replace(
        'remote_ts = ["10.2.0.0/16"]', 'remote_ts = ["10.2.0.0/16", "fd00:2::/64"]').replace(
        '[connections.home.children.net6]\nremote_ts = ["fd00:2::/64"]\n'
        'esp_proposals = ["aes128gcm16"]\n', '')
    w = world(server_text, ("192.0.2.10", client_text))
    w.up("192.0.2.10")
    client = w.nodes["192.0.2.10"]
    ends = sorted((c.child, str(c.local_ts[0]), str(c.remote_ts[0]))
                  for c in client.of(ChildSaEstablished))
    assert ends == [("net", "10.3.0.1/32", "10.2.0.0/16"),
                    ("net", "fd00:3::10/128", "fd00:2::/64")]
    assert not client.of(ConnectionFailed)


def test_a_remote_network_of_a_family_without_a_virtual_ip_is_not_proposed(
        caplog: pytest.LogCaptureFixture) -> None:
    server_text, client_text = _dual_stack_configs("pull")
    client_text = client_text.replace('vips = ["0.0.0.0", "::"]', 'vips = ["0.0.0.0"]')
    w = world(server_text, ("192.0.2.10", client_text))
    with caplog.at_level(logging.WARNING):
        w.up("192.0.2.10")
    client, server = w.nodes["192.0.2.10"], w.nodes[SERVER]
    assert [c.child for c in client.of(ChildSaEstablished)] == ["net"]
    (failed,) = client.of(ConnectionFailed)
    assert failed.child == "net6" and "no local network of the remote network's" in (
        failed.reason)
    # Nothing mixed reached the server.
    assert "INVALID-ID-INFORMATION" not in caplog.text
    assert [str(c.remote_ts[0]) for c in server.of(ChildSaEstablished)] == ["10.3.0.1/32"]

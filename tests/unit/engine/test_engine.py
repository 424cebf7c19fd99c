"""Two engines talking in memory: fast, deterministic, with a fake clock.

This proves only that ikev1d agrees with itself; tests/interop/ checks the
same paths against a real strongSwan.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from ikev1d.config import Config, parse_config
from ikev1d.engine import Engine, EngineError
from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    ConnectionFailed,
    Datagram,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
)
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import ExchangeType, Flags, decode_message, split_message

A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"


def config_text(
    local: str,
    remote: str,
    local_ts: str,
    remote_ts: str,
    *,
    proposals: str = '["aes128-sha256-modp2048"]',
    esp: str = '["aes128gcm16", "aes128-sha256"]',
    psk: str = "a very long shared secret for tests",
    encap: bool = False,
    remote_addrs: str | None = None,
    extra_daemon: str = "",
) -> str:
    return f"""
[daemon]
dataplane = "none"
retransmit_timeout = "1s"
retransmit_tries = 3
{extra_daemon}

[connections.gw]
local_addrs = ["{local}"]
remote_addrs = {remote_addrs or f'["{remote}"]'}
proposals = {proposals}
encap = {"true" if encap else "false"}

[connections.gw.local]
auth = "psk"
id = "{local}"

[connections.gw.remote]
auth = "psk"
id = "{remote}"

[connections.gw.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = {esp}

[secrets.gw]
secret = "{psk}"
ids = ["{remote}"]
"""



def pump_many(b: Engine, peers: dict[str, Engine]) -> list[Event]:
    """Deliver datagrams between responder ``b`` and peers (by address) until quiet;
    ``b``'s events."""
    events: list[Event] = []
    for _ in range(20):
        moved = False
        for engine in peers.values():
            for d in engine.datagrams_to_send():
                moved = True
                b.receive_datagram(d.data, d.remote, d.local, 0.0)
        for d in b.datagrams_to_send():
            moved = True
            peers[d.remote[0]].receive_datagram(d.data, d.remote, d.local, 0.0)
        events += b.events()
        if not moved:
            break
    return events


@dataclass
class Peer:
    engine: Engine
    address: str
    events: list[Event] = field(default_factory=list)

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Net:
    a: Peer
    b: Peer
    now: float = 1000.0
    drop: Callable[[Datagram], bool] = lambda d: False
    rewrite: Callable[[Datagram], Datagram] = lambda d: d
    """Changes a datagram on its way, as a peer that behaves otherwise would send it."""
    wire: list[tuple[str, Datagram]] = field(default_factory=list)

    def peer_at(self, address: str) -> Peer:
        return self.a if address == self.a.address else self.b

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for src in (self.a, self.b):
                for dgram in src.engine.datagrams_to_send():
                    moved = True
                    dgram = self.rewrite(dgram)
                    self.wire.append((src.address, dgram))
                    if self.drop(dgram):
                        continue
                    dst = self.peer_at(dgram.remote[0])
                    dst.engine.receive_datagram(dgram.data, dgram.remote, dgram.local, self.now)
                src.events += src.engine.events()
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [d for d in (self.a.engine.get_timer(), self.b.engine.get_timer()) if d]
            due = [d for d in deadlines if d <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for peer in (self.a, self.b):
                peer.engine.handle_timer(self.now)
            self.pump()
        self.now = end


def make_net(a_cfg: str, b_cfg: str, seed: int = 1) -> Net:
    rng = random.Random(seed)
    a = Engine(parse_config(a_cfg), random_bytes=rng.randbytes)
    b = Engine(parse_config(b_cfg), random_bytes=rng.randbytes)
    return Net(Peer(a, A_ADDR), Peer(b, B_ADDR))


def default_net(**kw: object) -> Net:
    a_kw = dict(kw)
    b_kw = dict(kw)
    for key in list(kw):
        if key.startswith("a_"):
            a_kw[key[2:]] = a_kw.pop(key)
            b_kw.pop(key)
        elif key.startswith("b_"):
            b_kw[key[2:]] = b_kw.pop(key)
            a_kw.pop(key)
    return make_net(
        config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24", **a_kw),  # type: ignore[arg-type]
        config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24", **b_kw),  # type: ignore[arg-type]
    )


def establish(net: Net) -> None:
    net.a.engine.initiate("gw", None, net.now)
    net.pump()


def test_main_mode_and_quick_mode_establish_with_matching_keys() -> None:
    net = default_net()
    establish(net)
    assert len(net.a.of(IkeSaEstablished)) == 1
    assert len(net.b.of(IkeSaEstablished)) == 1
    (ca,) = net.a.of(ChildSaEstablished)
    (cb,) = net.b.of(ChildSaEstablished)
    assert isinstance(ca, ChildSaEstablished) and isinstance(cb, ChildSaEstablished)
    assert ca.spi_in == cb.spi_out and ca.spi_out == cb.spi_in
    assert ca.keymat_out == cb.keymat_in and ca.keymat_in == cb.keymat_out
    assert ca.keymat_in != ca.keymat_out
    assert ca.proposal == "aes128gcm16" and len(ca.keymat_in) == 16 + 4
    assert [str(n) for n in ca.local_ts] == ["10.1.0.0/24"]
    assert [str(n) for n in cb.local_ts] == ["10.2.0.0/24"]
    # Main Mode is 6 messages and Quick Mode 3 (RFC 2409 sections 5 and 5.5).
    exchanges = [split_message(d.data)[0].exchange_type for _, d in net.wire]
    assert exchanges.count(ExchangeType.IDENTITY_PROTECTION) == 6
    assert exchanges.count(ExchangeType.QUICK_MODE) == 3
    status = net.a.engine.status(net.now).to_json()
    (ike,) = status["ike_sas"]
    assert ike["state"] == "ESTABLISHED" and ike["initiator"] is True
    assert ike["proposal"] == "aes128-sha256-modp2048" and ike["auth"] == "psk"
    (child,) = ike["children"]
    assert child["state"] == "INSTALLED" and child["spi_in"] == f"{ca.spi_in:08x}"
    # A command about one connection asks for that connection's SAs alone.
    assert net.a.engine.status(net.now, conn=ike["name"]).to_json() == status
    assert net.a.engine.status(net.now, conn="another").ike_sas == ()


def test_messages_5_and_6_are_encrypted_and_first_four_are_not() -> None:
    net = default_net()
    establish(net)
    mm = [split_message(d.data)[0] for _, d in net.wire
          if split_message(d.data)[0].exchange_type == ExchangeType.IDENTITY_PROTECTION]
    assert [bool(h.flags & Flags.ENCRYPTION) for h in mm] == [False] * 4 + [True] * 2


def test_responder_takes_first_acceptable_proposal_in_initiator_order() -> None:
    net = default_net(
        a_proposals='["aes256-sha512-modp4096", "aes128-sha256-ecp256", "aes256-sha256-modp2048"]',
        b_proposals='["aes256-sha256-modp2048", "aes128-sha256-ecp256"]',
    )
    establish(net)
    (ike,) = net.b.of(IkeSaEstablished)
    assert isinstance(ike, IkeSaEstablished) and ike.proposal == "aes128-sha256-ecp256"


@pytest.mark.parametrize("proposal", ["3des-sha1-modp1024", "aes256-sha384-curve25519",
                                      "aes192-sha512-ecp384"])
def test_other_groups_and_ciphers(proposal: str) -> None:
    net = default_net(proposals=f'["{proposal}"]')
    establish(net)
    assert len(net.a.of(ChildSaEstablished)) == 1


def test_pfs_quick_mode() -> None:
    net = default_net(esp='["aes256-sha256-modp2048"]')
    establish(net)
    (ca,) = net.a.of(ChildSaEstablished)
    (cb,) = net.b.of(ChildSaEstablished)
    assert isinstance(ca, ChildSaEstablished) and isinstance(cb, ChildSaEstablished)
    assert ca.proposal == "aes256-sha256-modp2048"
    assert ca.keymat_out == cb.keymat_in
    # QM1 and QM2 carry a 256-byte KE each with PFS (modp2048): compare with no PFS.
    plain = default_net(esp='["aes256-sha256"]')
    establish(plain)

    def qm_sizes(n: Net) -> list[int]:
        return [len(d.data) for _, d in n.wire if split_message(d.data)[0].exchange_type
                == ExchangeType.QUICK_MODE]

    with_pfs, without = qm_sizes(net), qm_sizes(plain)
    assert with_pfs[0] - without[0] >= 256 and with_pfs[1] - without[1] >= 256
    assert with_pfs[2] == without[2]


def test_phase1_no_proposal_chosen(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net(a_proposals='["aes256-sha512-modp4096"]',
                      b_proposals='["aes128-sha256-modp2048"]')
    with caplog.at_level(logging.INFO):
        establish(net)
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed) and "NO-PROPOSAL-CHOSEN" in failed.reason
    assert "NO-PROPOSAL-CHOSEN" in caplog.text
    assert "aes256-sha512-modp4096" in caplog.text and "aes128-sha256-modp2048" in caplog.text
    assert net.b.engine.status(net.now).to_json() == {"ike_sas": []}
    assert net.a.engine.status(net.now).to_json() == {"ike_sas": []}


def test_phase2_no_proposal_chosen(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net(a_esp='["aes256-sha512"]', b_esp='["aes128gcm16"]')
    with caplog.at_level(logging.INFO):
        establish(net)
    assert len(net.a.of(IkeSaEstablished)) == 1
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed) and "NO-PROPOSAL-CHOSEN" in failed.reason
    assert not net.b.of(ChildSaEstablished)


def test_invalid_id_information(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net(
        config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"),
        config_text(B_ADDR, A_ADDR, "10.2.0.0/16", "10.1.0.0/24"),
    )
    with caplog.at_level(logging.INFO):
        establish(net)
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed) and "INVALID-ID-INFORMATION" in failed.reason
    assert "INVALID-ID-INFORMATION" in caplog.text


def test_wrong_psk_fails_authentication(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net(b_psk="another long but different secret")
    with caplog.at_level(logging.INFO):
        establish(net)
        net.advance(30)
    assert "authentication failed" in caplog.text
    assert not net.a.of(IkeSaEstablished) and not net.b.of(IkeSaEstablished)
    assert any(isinstance(e, ConnectionFailed) for e in net.a.events)
    assert net.a.engine.status(net.now).to_json() == {"ike_sas": []}


def test_message_4_again_after_our_message_5_is_a_retransmission(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A responder that cannot read message 5 (another PSK) may answer nothing but its
    message 4 again, as Libreswan does: we keep retransmitting message 5 and end with an
    authentication failure, not with a protocol error on the first repeat."""
    net = default_net(b_psk="another long but different secret")
    sent_by_b = [0]

    def only_mm2_and_mm4(d: Datagram) -> bool:
        if d.local[0] != B_ADDR:
            return False
        sent_by_b[0] += 1
        return sent_by_b[0] > 2

    net.drop = only_mm2_and_mm4
    with caplog.at_level(logging.DEBUG):
        establish(net)
        mm4 = [d for s, d in net.wire if s == B_ADDR][1]
        assert not split_message(mm4.data)[0].flags & Flags.ENCRYPTION
        net.a.engine.receive_datagram(mm4.data, mm4.remote, mm4.local, net.now)
        net.pump()
        assert not net.a.of(ConnectionFailed)
        assert "should be encrypted" not in caplog.text
        net.advance(60)
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed) and "authentication failed" in failed.reason


def test_wrong_remote_id_fails_authentication(caplog: pytest.LogCaptureFixture) -> None:
    text = config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24").replace(
        f'[connections.gw.remote]\nauth = "psk"\nid = "{B_ADDR}"',
        '[connections.gw.remote]\nauth = "psk"\nid = "gw.example.org"',
    ).replace(f'ids = ["{B_ADDR}"]', f'ids = ["{B_ADDR}", "gw.example.org"]')
    net = make_net(text, config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"))
    with caplog.at_level(logging.INFO):
        establish(net)
    assert "authentication failed" in caplog.text
    assert not net.a.of(IkeSaEstablished)


def test_aggressive_mode_is_refused_without_state(caplog: pytest.LogCaptureFixture) -> None:
    from ikev1d.wire import (
        Header,
        KePayload,
        NoncePayload,
        Payload,
        encode_header,
        encode_payloads,
    )
    from ikev1d.wire.ids import id_from_address

    net = default_net()
    payloads: list[Payload] = [
        KePayload(b"\x01" * 256), NoncePayload(b"\x02" * 32), id_from_address(A_ADDR),
    ]
    body = encode_payloads(payloads)
    header = Header(initiator_cookie=b"\x11" * 8, responder_cookie=bytes(8),
                    next_payload=4, exchange_type=ExchangeType.AGGRESSIVE, flags=0,
                    message_id=0)
    with caplog.at_level(logging.INFO):
        net.b.engine.receive_datagram(encode_header(header, len(body)) + body,
                                      (B_ADDR, 500), (A_ADDR, 500), net.now)
    (reply,) = net.b.engine.datagrams_to_send()
    message = decode_message(reply.data)
    assert message.header.exchange_type == ExchangeType.INFORMATIONAL
    assert "Aggressive Mode is not supported" in caplog.text
    assert net.b.engine.ike_sa_count() == 0
    assert net.b.engine.get_timer() is None


def test_lost_response_is_retransmitted_and_duplicate_not_processed_twice() -> None:
    net = default_net()
    dropped: list[int] = []

    def drop_first_mm4(d: Datagram) -> bool:
        header = split_message(d.data)[0]
        # The 4th Main Mode message (responder's KE) is lost once.
        mm = header.exchange_type == ExchangeType.IDENTITY_PROTECTION
        if d.local[0] == B_ADDR and mm and not dropped:
            if len([1 for s, w in net.wire if s == B_ADDR]) == 2:
                dropped.append(1)
                return True
        return False

    net.drop = drop_first_mm4
    establish(net)
    assert dropped and not net.a.of(IkeSaEstablished)
    net.advance(1.5)
    assert len(net.a.of(IkeSaEstablished)) == 1
    assert len(net.b.of(IkeSaEstablished)) == 1
    assert len(net.a.of(ChildSaEstablished)) == 1
    # B saw message 3 twice but answered from its cache: still one SA.
    assert net.b.engine.ike_sa_count() == 1


def test_unanswered_initiator_gives_up() -> None:
    net = default_net()
    net.drop = lambda d: True
    establish(net)
    net.advance(60)
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed) and "no response" in failed.reason
    # 3 tries in all: the first send and two retransmissions.
    assert len([1 for s, _ in net.wire if s == A_ADDR]) == 3
    assert net.a.engine.get_timer() is None


def test_half_open_sa_expires_on_responder() -> None:
    net = default_net()
    net.drop = lambda d: d.local[0] == A_ADDR and split_message(d.data)[0].flags == 0 and \
        len([1 for s, _ in net.wire if s == A_ADDR]) > 1
    establish(net)
    assert net.b.engine.ike_sa_count() == 1
    net.advance(120)
    assert net.b.engine.ike_sa_count() == 0


def test_delete_in_both_directions() -> None:
    net = default_net()
    establish(net)
    net.a.engine.terminate("gw", net.now)
    net.pump()
    assert len(net.b.of(ChildSaDeleted)) == 1 and len(net.b.of(IkeSaDeleted)) == 1
    assert net.b.engine.status(net.now).to_json() == {"ike_sas": []}
    net2 = default_net()
    establish(net2)
    net2.b.engine.terminate("gw", net2.now)
    net2.pump()
    assert len(net2.a.of(ChildSaDeleted)) == 1 and len(net2.a.of(IkeSaDeleted)) == 1


def test_encap_forces_nat_t_port_and_udp_encapsulation() -> None:
    net = default_net(a_encap=True)
    establish(net)
    (ca,) = net.a.of(ChildSaEstablished)
    (cb,) = net.b.of(ChildSaEstablished)
    assert isinstance(ca, ChildSaEstablished) and isinstance(cb, ChildSaEstablished)
    assert ca.encap and cb.encap
    assert ca.remote[1] == 4500 and cb.local[1] == 4500
    ports = [d.remote[1] for s, d in net.wire if s == A_ADDR]
    assert ports[:2] == [500, 500] and set(ports[2:]) == {4500}


def test_unknown_connection_is_a_local_error() -> None:
    net = default_net()
    with pytest.raises(EngineError):
        net.a.engine.initiate("nope", None, net.now)


def test_garbage_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    """Corrupted copies of every message of an exchange, and random bytes, are
    answered or dropped: no internal error, nothing left behind, and the
    established SAs still work afterwards. (Fails if the engine's handler
    raises: the engine then logs an internal error and drops the SA.)"""
    net = default_net()
    establish(net)
    rng = random.Random(7)
    captured = [d.data for _, d in net.wire]
    net.b.events.clear()
    with caplog.at_level(logging.INFO, logger="ikev1d"):
        for _ in range(3000):
            base = bytearray(rng.choice(captured))
            for _ in range(rng.randint(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            net.b.engine.receive_datagram(bytes(base), (B_ADDR, 500), (A_ADDR, 500), net.now)
            net.b.engine.receive_datagram(rng.randbytes(rng.randint(0, 80)), (B_ADDR, 500),
                                          (A_ADDR, 500), net.now)
        net.b.engine.datagrams_to_send()
        net.b.events += net.b.engine.events()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "internal error" not in caplog.text
        # The log is rate-limited: 6,000 bad messages, a few dozen lines.
        assert len(caplog.records) < 200
        # Nothing the garbage created survives the half-open timeout ...
        net.drop = lambda d: True
        net.advance(60)
        net.drop = lambda d: False
        (sa,) = net.b.engine.all_sas()
        assert sa.usable and len(sa.children) == 1
        assert not net.b.engine._half_open and len(net.b.engine._sas) == 1
        assert not net.b.of(IkeSaDeleted) and not net.b.of(ChildSaDeleted)
        # ... and the SA still negotiates: its keys and IV chains are intact.
        net.a.engine.initiate("gw", "net", net.now)
        net.pump()
    assert len(net.b.of(ChildSaEstablished)) == 1


def config_for(text: str) -> Config:
    return parse_config(text)


def test_dynamic_traffic_selectors_are_the_hosts() -> None:
    def host_only(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.endswith("_ts = [\"x\"]"))

    a_text = config_text(A_ADDR, B_ADDR, "x", "x")
    b_text = config_text(B_ADDR, A_ADDR, "x", "x")
    a_text = a_text.replace('local_ts = ["x"]\nremote_ts = ["x"]\n', "")
    b_text = b_text.replace('local_ts = ["x"]\nremote_ts = ["x"]\n', "")
    net = make_net(host_only(a_text), host_only(b_text))
    establish(net)
    (ca,) = net.a.of(ChildSaEstablished)
    assert isinstance(ca, ChildSaEstablished)
    assert [str(n) for n in ca.local_ts] == [f"{A_ADDR}/32"]
    assert [str(n) for n in ca.remote_ts] == [f"{B_ADDR}/32"]


FLAGS_OFFSET = 19
"""Where the ISAKMP header keeps its flags (RFC 2408 section 3.1)."""


def commit_bit_in_qm1() -> Callable[[Datagram], Datagram]:
    """A rewrite that makes A's first Quick Mode message look as an initiator that
    sets the commit bit sends it: the header is outside HASH(1) (RFC 2409 5.5)."""
    seen: set[int] = set()

    def rewrite(d: Datagram) -> Datagram:
        header = split_message(d.data)[0]
        if d.local[0] != A_ADDR or header.exchange_type != ExchangeType.QUICK_MODE:
            return d
        if header.message_id in seen:
            return d  # QM3
        seen.add(header.message_id)
        data = bytearray(d.data)
        data[FLAGS_OFFSET] |= Flags.COMMIT
        return Datagram(bytes(data), d.local, d.remote)

    return rewrite


def test_commit_bit_adds_a_fourth_message() -> None:
    net = default_net()
    net.rewrite = commit_bit_in_qm1()
    establish(net)
    assert len(net.a.of(ChildSaEstablished)) == 1
    headers = [split_message(d.data)[0] for _, d in net.wire]
    qm = [h for h in headers if h.exchange_type == ExchangeType.QUICK_MODE]
    assert [bool(h.flags & Flags.COMMIT) for h in qm] == [True, True, False]
    # The 4th message: B's Informational CONNECTED after QM3.
    assert headers[-1].exchange_type == ExchangeType.INFORMATIONAL
    assert net.wire[-1][0] == B_ADDR


def test_commit_bit_without_connected_installs_after_a_wait() -> None:
    net = default_net()
    net.rewrite = commit_bit_in_qm1()
    net.drop = lambda d: split_message(d.data)[0].exchange_type == ExchangeType.INFORMATIONAL
    establish(net)
    assert len(net.b.of(ChildSaEstablished)) == 1
    assert not net.a.of(ChildSaEstablished)
    net.advance(11)
    assert len(net.a.of(ChildSaEstablished)) == 1


def test_install_failure_deletes_the_sa_on_both_sides() -> None:
    net = default_net()
    establish(net)
    (ca,) = net.a.of(ChildSaEstablished)
    assert isinstance(ca, ChildSaEstablished)
    net.a.engine.install_failed(ca.child_id, "TUN device gone", net.now)
    net.pump()
    assert len(net.a.of(ChildSaDeleted)) == 1 and len(net.b.of(ChildSaDeleted)) == 1
    (ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert ike["children"] == []


def test_reload_keeps_unchanged_and_deletes_removed_connections() -> None:
    net = default_net()
    establish(net)
    same = parse_config(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"))
    net.a.engine.reload(same, net.now)
    net.pump()
    assert len(net.a.engine.status(net.now).to_json()["ike_sas"]) == 1
    assert not net.b.of(IkeSaDeleted)
    text = config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24")
    text = text.replace("connections.gw", "connections.other")
    renamed = parse_config(text.replace("[secrets.gw]", "[secrets.other]"))
    net.a.engine.reload(renamed, net.now)
    net.pump()
    assert net.a.engine.status(net.now).to_json() == {"ike_sas": []}
    assert len(net.b.of(IkeSaDeleted)) == 1


def test_unreadable_answer_to_message_5_fails_authentication_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ikev1d.wire import Header, encode_header

    net = default_net()
    # Let B answer nothing after message 4; then B "sends" an encrypted
    # notification under other keys (what strongSwan does with another PSK).
    def encrypted(d: Datagram) -> bool:
        return split_message(d.data)[0].flags & Flags.ENCRYPTION != 0

    net.drop = lambda d: d.local[0] == B_ADDR and encrypted(d)
    with caplog.at_level(logging.INFO):
        establish(net)
        mm5 = next(d for s, d in net.wire if s == A_ADDR and encrypted(d))
        h = split_message(mm5.data)[0]
        garbage = bytes(range(64))
        reply = Header(initiator_cookie=h.initiator_cookie, responder_cookie=h.responder_cookie,
                       next_payload=8, exchange_type=ExchangeType.INFORMATIONAL,
                       flags=Flags.ENCRYPTION, message_id=0x12345678)
        net.a.engine.receive_datagram(encode_header(reply, len(garbage)) + garbage,
                                      mm5.local, mm5.remote, net.now)
        net.pump()
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed) and "authentication failed" in failed.reason
    assert net.a.engine.get_timer() is None


def test_error_notification_encrypted_as_libreswan_does_during_main_mode_is_read() -> None:
    """pluto 4.10 encrypts a notification it sends while Main Mode still runs (for a
    certificate it refuses in message 5) with the IV hash(M-ID): its "last Phase 1 CBC
    output block" (RFC 2409 Appendix B) is empty until Phase 1 ends. ikev1d reads it,
    HASH(1) verified, and reports the peer's reason instead of an unreadable answer."""
    from ikev1d.crypto import informational_hash, phase2_iv
    from ikev1d.wire import HashPayload, NotifyPayload, NotifyType, ProtocolId, encode_payloads

    net = default_net()
    net.drop = lambda d: d.local[0] == B_ADDR and bool(
        split_message(d.data)[0].flags & Flags.ENCRYPTION)  # message 6 never arrives
    establish(net)
    (b_sa,) = net.b.engine.all_sas()
    assert b_sa.keys is not None and b_sa.cipher is not None
    message_id = 0x2345678A
    notify = NotifyPayload(notify_type=NotifyType.INVALID_ID_INFORMATION,
                           spi=b_sa.cky_i + b_sa.cky_r, protocol_id=ProtocolId.ISAKMP)
    hash_1 = informational_hash(b_sa.hash_alg, b_sa.keys.skeyid_a, message_id,
                                encode_payloads([notify]))
    iv = phase2_iv(b_sa.hash_alg, b"", message_id, b_sa.cipher.block_size)
    data, _ = b_sa.encrypted_message(ExchangeType.INFORMATIONAL, message_id,
                                     [HashPayload(hash_1), notify], iv)
    net.a.engine.receive_datagram(data, (A_ADDR, 500), (B_ADDR, 500), net.now)
    net.pump()
    (failed,) = net.a.of(ConnectionFailed)
    assert isinstance(failed, ConnectionFailed)
    assert "peer sent INVALID-ID-INFORMATION" in failed.reason, failed.reason


def test_ipv6_peers_with_fqdn_and_user_fqdn_ids() -> None:
    a6, b6 = "2001:db8::1", "2001:db8::2"

    def text(local: str, remote: str, lid: str, rid: str, lts: str, rts: str) -> str:
        return config_text(local, remote, lts, rts).replace(
            f'[connections.gw.local]\nauth = "psk"\nid = "{local}"',
            f'[connections.gw.local]\nauth = "psk"\nid = "{lid}"',
        ).replace(
            f'[connections.gw.remote]\nauth = "psk"\nid = "{remote}"',
            f'[connections.gw.remote]\nauth = "psk"\nid = "{rid}"',
        )

    a = Engine(parse_config(text(a6, b6, "gw-a.example.org", "admin@b.example.org",
                                 "fd00:1::/64", "fd00:2::/64")),
               random_bytes=random.Random(3).randbytes)
    b = Engine(parse_config(text(b6, a6, "admin@b.example.org", "gw-a.example.org",
                                 "fd00:2::/64", "fd00:1::/64")),
               random_bytes=random.Random(4).randbytes)
    net = Net(Peer(a, a6), Peer(b, b6))
    establish(net)
    (ike_a,) = net.a.of(IkeSaEstablished)
    (ike_b,) = net.b.of(IkeSaEstablished)
    assert isinstance(ike_a, IkeSaEstablished) and isinstance(ike_b, IkeSaEstablished)
    assert ike_a.remote_id == "admin@b.example.org" and ike_b.remote_id == "gw-a.example.org"
    (child,) = net.a.of(ChildSaEstablished)
    assert isinstance(child, ChildSaEstablished)
    assert [str(n) for n in child.remote_ts] == ["fd00:2::/64"]


def _short_lifetimes(text: str, ike: str, child: str) -> str:
    text = text.replace('encap = false\n', f'encap = false\nrekey_time = "{ike}"\n', 1)
    return text.replace('esp_proposals = ', f'rekey_time = "{child}"\nesp_proposals = ', 1)


def test_ipsec_sa_is_renewed_before_it_expires() -> None:
    net = make_net(
        _short_lifetimes(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"), "4h", "60s"),
        _short_lifetimes(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"), "4h", "60s"),
    )
    establish(net)
    (first_a,) = net.a.of(ChildSaEstablished)
    assert isinstance(first_a, ChildSaEstablished)
    (child,) = net.a.engine.status(net.now).to_json()["ike_sas"][0]["children"]
    assert 48 <= child["rekey_in_s"] <= 54 and child["expires_in_s"] == 60
    net.advance(55)
    # Make before break: the new pair is up on both sides, the old one still receives
    # (the peer's last packets on it may be in flight) for a few seconds, then goes.
    assert len(net.a.of(ChildSaEstablished)) == 2 and not net.a.of(ChildSaDeleted)
    net.advance(59.5 - 55)
    new_a = [e for e in net.a.of(ChildSaEstablished) if e is not first_a]
    assert len(new_a) == 1 and isinstance(new_a[0], ChildSaEstablished)
    assert len(net.b.of(ChildSaEstablished)) == 2
    deleted_a = net.a.of(ChildSaDeleted)
    deleted_b = net.b.of(ChildSaDeleted)
    assert [e.spi_in for e in deleted_a if isinstance(e, ChildSaDeleted)] == [first_a.spi_in]
    assert [e.spi_out for e in deleted_b if isinstance(e, ChildSaDeleted)] == [first_a.spi_in]
    events_a = net.a.events
    assert events_a.index(new_a[0]) < events_a.index(deleted_a[0])
    for peer in (net.a, net.b):
        (ike,) = peer.engine.status(net.now).to_json()["ike_sas"]
        assert len(ike["children"]) == 1 and ike["children"][0]["state"] == "INSTALLED"
    # And again a lifetime later: renewals go on.
    net.advance(60)
    assert len(net.a.of(ChildSaEstablished)) == 3


def test_isakmp_sa_is_renewed_and_keeps_its_ipsec_sas() -> None:
    net = make_net(
        _short_lifetimes(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"), "120s", "1h"),
        _short_lifetimes(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"), "120s", "1h"),
    )
    establish(net)
    (first,) = net.a.of(IkeSaEstablished)
    net.advance(116)
    assert len(net.a.of(IkeSaEstablished)) == 2
    assert len(net.a.of(IkeSaDeleted)) == 1 and len(net.b.of(IkeSaDeleted)) == 1
    # The IPsec SA was renewed over the new ISAKMP SA before the old one was deleted:
    # strongSwan deletes an IKEv1 SA's IPsec SAs with it, so a Delete for the old
    # ISAKMP SA first would cut its side of the tunnel.
    for side in (net.a, net.b):
        assert len(side.of(ChildSaEstablished)) == 2
        (gone,) = side.of(ChildSaDeleted)
        assert isinstance(gone, ChildSaDeleted)
        assert gone.reason == ("renewed" if side is net.a else "deleted by peer")
        order = [type(e) for e in side.events]
        last_child = len(order) - 1 - order[::-1].index(ChildSaEstablished)
        assert order.index(IkeSaDeleted) > last_child
    (ike,) = net.a.engine.status(net.now).to_json()["ike_sas"]
    assert ike["state"] == "ESTABLISHED" and len(ike["children"]) == 1
    assert isinstance(first, IkeSaEstablished)
    (b_ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert b_ike["cookies"] == ike["cookies"] and len(b_ike["children"]) == 1
    # A Quick Mode still works over the renewed ISAKMP SA.
    net.a.engine.terminate("gw", net.now)
    net.pump()
    assert len(net.b.of(ChildSaDeleted)) == 2  # the renewed one, then the terminated one


def test_dpd_keeps_a_live_peer_and_restarts_after_a_dead_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = default_net()  # dpd_delay 30 s, dpd_timeout 150 s, dpd_action restart
    establish(net)
    net.advance(400)  # the peer answers every R-U-THERE
    assert not net.a.of(IkeSaDeleted)
    dpd = [d for s, d in net.wire if s == A_ADDR
           and split_message(d.data)[0].exchange_type == ExchangeType.INFORMATIONAL]
    assert len(dpd) >= 10
    net.drop = lambda d: d.local[0] == B_ADDR  # the peer goes silent
    mark = len(net.wire)
    with caplog.at_level(logging.INFO):
        net.advance(200)
    assert "DPD: peer 192.0.2.2 not responding" in caplog.text
    assert len(net.a.of(IkeSaDeleted)) == 1 and len(net.a.of(ChildSaDeleted)) == 1
    # dpd_action = restart: a new Main Mode goes out.
    new_mm = [d for s, d in net.wire[mark:] if s == A_ADDR
              and split_message(d.data)[0].exchange_type == ExchangeType.IDENTITY_PROTECTION]
    assert new_mm


def test_quick_modes_of_one_isakmp_sa_run_one_at_a_time() -> None:
    nets_a = '"10.1.0.0/24", "10.1.1.0/24"'
    nets_b = '"10.2.0.0/24", "10.2.1.0/24"'
    a_text = config_text(A_ADDR, B_ADDR, "x", "y").replace(
        'local_ts = ["x"]', f"local_ts = [{nets_a}]").replace(
        'remote_ts = ["y"]', f"remote_ts = [{nets_b}]")
    b_text = config_text(B_ADDR, A_ADDR, "x", "y").replace(
        'local_ts = ["x"]', f"local_ts = [{nets_b}]").replace(
        'remote_ts = ["y"]', f"remote_ts = [{nets_a}]")
    net = make_net(a_text, b_text)
    establish(net)
    assert len(net.a.of(ChildSaEstablished)) == 4 and len(net.b.of(ChildSaEstablished)) == 4
    # On the wire: QM1 QM2 QM3, QM1 QM2 QM3, ... never two exchanges interleaved.
    qm_ids = [split_message(d.data)[0].message_id for _, d in net.wire
              if split_message(d.data)[0].exchange_type == ExchangeType.QUICK_MODE]
    assert len(qm_ids) == 12
    assert all(len(set(qm_ids[i:i + 3])) == 1 for i in range(0, 12, 3))
    assert len(set(qm_ids)) == 4


def test_delete_naming_our_inbound_spi_is_honoured() -> None:
    """charon deletes an IPsec SA it failed to install by the SPI we receive on."""
    from ikev1d.wire import DeletePayload, ProtocolId

    net = default_net()
    establish(net)
    (ca,) = net.a.of(ChildSaEstablished)
    assert isinstance(ca, ChildSaEstablished)
    (b_sa,) = net.b.engine.all_sas()
    b_sa.send_informational([DeletePayload(protocol_id=ProtocolId.ESP,
                                           spis=(ca.spi_in.to_bytes(4, "big"),))])
    net.pump()
    (deleted,) = net.a.of(ChildSaDeleted)
    assert isinstance(deleted, ChildSaDeleted) and deleted.spi_in == ca.spi_in


def test_dynamic_peers_share_a_connection_without_disturbing_each_other() -> None:
    """Two road warriors (%any, one shared PSK) on one responder connection; each
    tunnel is the peer's own address (dynamic selector) to the responder's net."""
    b_text = config_text(B_ADDR, "%any", "10.2.0.0/24", "x", remote_addrs='["%any"]')
    b_text = b_text.replace('remote_ts = ["x"]\n', "").replace(
        'auth = "psk"\nid = "%any"', 'auth = "psk"')
    b = Engine(parse_config(b_text), random_bytes=random.Random(9).randbytes)
    peers = {}
    for n, address in enumerate(("192.0.2.11", "192.0.2.12")):
        text = config_text(address, B_ADDR, "x", "10.2.0.0/24").replace('local_ts = ["x"]\n', "")
        peers[address] = Engine(parse_config(text), random_bytes=random.Random(n).randbytes)
    for engine in peers.values():
        engine.initiate("gw", None, 0.0)
    events = pump_many(b, peers)
    children = [e for e in events if isinstance(e, ChildSaEstablished)]
    assert sorted(str(c.remote_ts[0]) for c in children) == ["192.0.2.11/32", "192.0.2.12/32"]
    status = b.status(0.0).to_json()["ike_sas"]
    assert len(status) == 2
    # Neither peer's tunnel counts as a renewal of the other's: both keep their timers.
    assert all(ike["children"][0]["rekey_in_s"] is not None for ike in status)


def _no_child_walks(net: Net) -> list[str]:
    """Record each walk over every SA made to find an IPsec SA's owner (the index is
    there to avoid them); other walks (commands, uniqueness) go on as before."""
    walks: list[str] = []
    for peer in (net.a, net.b):
        walk = peer.engine._all_sas

        def spy(walk: Callable[[], list[IkeSa]] = walk) -> list[IkeSa]:
            caller = sys._getframe(1).f_code.co_name
            if caller in ("owner_of", "child_by_id"):
                walks.append(caller)
            return walk()
        peer.engine._all_sas = spy  # type: ignore[method-assign]
    return walks


def test_renewals_find_ipsec_sas_by_index_and_leave_no_entries() -> None:
    """IPsec and ISAKMP SA renewals, expiry and deletion look an IPsec SA's owner up
    in the index (no walk over all SAs, which at 10,000 tunnels costs milliseconds
    per renewal) and the index holds exactly the live IPsec SAs."""
    net = make_net(
        _short_lifetimes(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"), "120s", "60s"),
        _short_lifetimes(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"), "120s", "60s"),
    )
    establish(net)
    walks = _no_child_walks(net)
    net.advance(250)  # two ISAKMP SA renewals, four IPsec SA renewals, old ones deleted
    assert len(net.a.of(IkeSaEstablished)) >= 3
    assert len(net.a.of(ChildSaEstablished)) >= 5
    for peer in (net.a, net.b):
        engine = peer.engine
        live = {c.child_id: sa for sa in [*engine._sas.values(), *engine._initiating.values()]
                for c in sa.children}
        assert engine._child_owners == live and live  # no entry for a deleted IPsec SA
        for sa in set(live.values()):
            for child in sa.children:
                assert engine.owner_of(child) is sa
                assert engine.child_by_id(child.child_id) == (sa, child)
    assert walks == []


def test_status_chunks_describe_the_sas_a_few_at_a_time_and_leave_out_one_gone_meanwhile(
) -> None:
    """``status_chunks`` gives what ``status`` lists, ``size`` SAs at a time, so that
    the daemon can serve between two chunks; an SA deleted in between is left out."""
    text = config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24")
    at = text.index("[connections.gw]")
    block = text[at:text.index("[secrets.gw]")]
    engine = Engine(parse_config(text + block.replace("connections.gw", "connections.gw2")
                                 + block.replace("connections.gw", "connections.gw3")),
                    random_bytes=random.Random(3).randbytes)
    for name in ("gw", "gw2", "gw3"):
        engine.initiate(name, None, 1000.0)  # each an ISAKMP SA, connecting
    whole = engine.status(1000.0).ike_sas
    assert [sa.name for sa in whole] == ["gw", "gw2", "gw3"]
    assert list(engine.status_chunks(1000.0, size=2)) == [whole[:2], whole[2:]]
    chunks = engine.status_chunks(1000.0, size=1)
    assert next(chunks) == whole[:1]
    engine.terminate("gw2", 1000.0)
    assert [sa.name for chunk in chunks for sa in chunk] == ["gw3"]
    assert [sa.name for chunk in engine.status_chunks(1000.0, "gw3") for sa in chunk] == ["gw3"]
    assert engine.status_document(whole[:1]).ike_sas == whole[:1]

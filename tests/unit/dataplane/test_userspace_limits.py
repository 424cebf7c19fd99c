"""The userspace data plane's volume and sequence-number limits, and its state file.

Two backends back to back with fake I/O, as in test_userspace.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ikev1d.dataplane.base import (
    DataplaneError,
    ExpireHandler,
    KeepsState,
    ReportsExpiry,
    soft_limit,
)
from tests.unit.dataplane.test_userspace import Side, carry_raw, child, deleted, udp_packet

Report = tuple[int, bool, str]


def _recorder(reports: list[Report]) -> ExpireHandler:
    def record(child_id: int, hard: bool, reason: str) -> None:
        reports.append((child_id, hard, reason))

    return record


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def sides(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Side, Side, list[Report],
                                                              list[Report]]]:
    a, b = Side(["10.1.0.1"]), Side(["10.2.0.1"])
    reports_a: list[Report] = []
    reports_b: list[Report] = []
    for s, reports in ((a, reports_a), (b, reports_b)):
        s.backend.attach(s.send_udp, loop)
        s.backend.set_expire_handler(_recorder(reports))
    yield a, b, reports_a, reports_b
    for s in (a, b):
        s.backend.close()


def test_soft_limit_is_85_to_90_percent_and_differs_by_spi() -> None:
    assert soft_limit(100_000, 0) == 85_000
    assert soft_limit(100_000, 999) == 89_995
    assert len({soft_limit(10_000, spi) for spi in (0xC0000001, 0xC0000002)}) == 2


def test_life_bytes_renews_before_and_stops_at_the_limit(
    sides: tuple[Side, Side, list[Report], list[Report]],
) -> None:
    a, b, reports_a, reports_b = sides
    assert isinstance(a.backend, ReportsExpiry)
    life = 4000
    a.backend.install(replace(child(), child_id=7, life_bytes=life))
    b.backend.install(replace(child(initiator=False), child_id=8, life_bytes=life))
    packet = udp_packet("10.1.0.1", "10.2.0.1", bytes(472))  # 500 octets inner
    soft_a = soft_limit(life, 0xC0000001)
    sent = 0
    while sent + 500 < soft_a:
        a.tun.to_read.append(packet)
        a.backend.handle_tun_readable()
        sent += 500
    carry_raw(a, b)
    assert reports_a == [] and reports_b == []  # below the soft limit: nothing asked
    a.tun.to_read.append(packet)
    a.backend.handle_tun_readable()
    assert reports_a == [(7, False, "life_bytes nearly reached (outbound): renewing")]
    # Nearly used up: renewal asked once, not per packet; traffic still flows.
    a.tun.to_read.extend([packet] * 20)
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 1 + (life - sent - 500) // 500  # the rest up to the limit
    assert reports_a[1:] == [(7, True, "life_bytes reached (outbound)")]
    counters = a.backend.counters(0xC0000001, 0xC0000002)
    assert counters.bytes_out <= life
    assert counters.drops is not None and counters.drops.dropped_out > 0
    assert a.backend.drops["life_bytes"] > 0
    # B counts the same octets inbound: asked to renew at its own (later) soft limit
    # and stops accepting beyond the limit.
    carry_raw(a, b)
    assert reports_b[0] == (8, False, "life_bytes nearly reached (inbound): renewing")
    assert b.backend.counters(0xC0000002, 0xC0000001).bytes_in <= life


def test_without_life_bytes_nothing_is_reported(
    sides: tuple[Side, Side, list[Report], list[Report]],
) -> None:
    a, _b, reports_a, _ = sides
    a.backend.install(child())
    a.tun.to_read.extend([udp_packet("10.1.0.1", "10.2.0.1", bytes(1400))] * 100)
    a.backend.handle_tun_readable()
    assert reports_a == [] and len(a.raw.sent) == 100


def test_sequence_numbers_renew_before_and_stop_at_exhaustion(
    sides: tuple[Side, Side, list[Report], list[Report]],
) -> None:
    a, _b, reports_a, _ = sides
    a.backend.install(replace(child(), child_id=3))
    (entry,) = list(a.backend.sad)
    entry.outbound.seq = entry.soft_seq - 2
    packet = udp_packet("10.1.0.1", "10.2.0.1", b"x")
    a.tun.to_read.append(packet)
    a.backend.handle_tun_readable()
    assert reports_a == []
    a.tun.to_read.append(packet)
    a.backend.handle_tun_readable()
    assert reports_a == [(3, False, "sequence numbers nearly used up: renewing")]
    entry.outbound.seq = entry.outbound.max_seq - 1
    a.tun.to_read.extend([packet] * 3)
    a.backend.handle_tun_readable()
    assert reports_a[1:] == [(3, True, "sequence numbers used up")]
    assert a.backend.drops["seq_exhausted"] == 2


def _send_all(side: Side) -> None:
    """Read the TUN queue to the end (the backend yields after a renewal request)."""
    while side.tun.to_read:
        side.backend.handle_tun_readable()


def _carry_all(src: Side, dst: Side) -> None:
    carry_raw(src, dst)
    while dst.raw.to_recv:
        dst.backend.handle_raw_readable()


def test_a_renewed_sa_takes_over_before_the_old_one_is_used_up(
    sides: tuple[Side, Side, list[Report], list[Report]],
) -> None:
    a, b, reports_a, _ = sides
    old = replace(child(), child_id=1, life_bytes=3000)
    a.backend.install(old)
    b.backend.install(replace(child(initiator=False), life_bytes=3000))
    packet = udp_packet("10.1.0.1", "10.2.0.1", bytes(472))
    a.tun.to_read.extend([packet] * 6)
    a.backend.handle_tun_readable()
    # Asked to renew at the 6th packet (2500 < 85 % of 3000 <= 3000); the loop then
    # yields, so the engine can start the Quick Mode before more is sent.
    assert reports_a and not reports_a[0][1]
    assert len(a.raw.sent) == 6 and not a.tun.to_read
    a.tun.to_read.extend([packet] * 3)
    a.tun.to_read.appendleft(packet)
    # What the engine does on the soft report: a new pair, the old one deleted later.
    new = replace(child(spis=(0xC0000011, 0xC0000012)), child_id=2, life_bytes=3000)
    a.backend.install(new)
    b.backend.install(replace(child(initiator=False, spis=(0xC0000011, 0xC0000012)),
                              life_bytes=3000))
    _send_all(a)
    assert [esp[:4] for esp, _l, _r in a.raw.sent[-4:]] == [(0xC0000012).to_bytes(4, "big")] * 4
    a.backend.remove(deleted(old))
    assert not any(hard for _c, hard, _w in reports_a)
    _carry_all(a, b)
    assert len(b.tun.written) == 10


def test_the_packet_loop_yields_after_a_renewal_request(
    sides: tuple[Side, Side, list[Report], list[Report]],
) -> None:
    a, _b, reports_a, _ = sides
    a.backend.install(replace(child(), life_bytes=10_000))
    a.tun.to_read.extend([udp_packet("10.1.0.1", "10.2.0.1", bytes(972))] * 12)
    a.backend.handle_tun_readable()
    assert len(reports_a) == 1 and len(a.raw.sent) == 9 and len(a.tun.to_read) == 3
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 10 and reports_a[1][1]  # the limit: the rest is dropped


# --- routes and the state file ---------------------------------------------------------------


def test_pinned_peer_routes_are_recorded_and_removed_after_a_crash(tmp_path: Path) -> None:
    state = tmp_path / "ikev1d.userspace-dataplane.json"
    first = Side(["10.1.0.1"])
    assert isinstance(first.backend, KeepsState)
    first.backend.recover(str(state))
    first.backend.install(child(remote_ts=("0.0.0.0/0",)))
    assert first.routes.bypasses == {"192.0.2.2"}
    assert json.loads(state.read_text())["bypass_routes"] == ["192.0.2.2"]
    # SIGKILL: nothing is closed; the host route stays in the kernel.
    second = Side(["10.1.0.1"])
    second.routes.stale = {"192.0.2.2"}
    second.backend.recover(str(state))
    assert second.routes.log == ["stale 192.0.2.2"] and second.routes.stale == set()
    assert json.loads(state.read_text())["bypass_routes"] == []
    second.backend.close()
    assert not state.exists()


def test_a_clean_stop_leaves_no_state_file_and_removes_only_its_own_routes(
    tmp_path: Path,
) -> None:
    state = tmp_path / "s.json"
    side = Side(["10.1.0.1"])
    side.backend.recover(str(state))
    side.backend.install(child())
    side.backend.remove(deleted(child()))
    assert side.routes.log == ["add 10.2.0.0/24", "del 10.2.0.0/24"]
    side.backend.close()
    assert not state.exists()


def test_route_conflict_fails_the_install_cleanly() -> None:
    side = Side(["10.1.0.1"])
    side.routes.fail_on = "10.2.0.0/24"
    with pytest.raises(DataplaneError, match=r"cannot add route to 10\.2\.0\.0/24"):
        side.backend.install(child())
    assert len(side.backend.sad) == 0 and side.routes.routes == {}
    side.backend.close()


def _spis_sent(side: Side) -> list[int]:
    return [int.from_bytes(esp[:4], "big") for esp, _l, _r in side.raw.sent]


def test_a_pair_we_renewed_as_initiator_stands_by_until_the_peer_uses_it(
    sides: tuple[Side, Side, list[Report], list[Report]],
) -> None:
    """Make before break across the two ends: the Quick Mode initiator installs the
    new pair on message 2, the responder on message 3 (RFC 2409 section 5.5). A
    keeps sending on the old pair until B's first packet on the new one shows that
    B has it; B, the responder, sends on the new pair at once."""
    a, b, _, _ = sides
    a.backend.install(child())
    b.backend.install(child(initiator=False))
    packet = udp_packet("10.1.0.1", "10.2.0.1", b"x" * 50)
    reply = udp_packet("10.2.0.1", "10.1.0.1", b"y" * 50)
    new_spis = (0xC0000011, 0xC0000012)
    a.backend.install(replace(child(spis=new_spis), child_id=2, initiator=True))
    a.tun.to_read.extend([packet] * 3)
    _send_all(a)
    assert _spis_sent(a) == [0xC0000002] * 3  # B has not installed the new pair yet
    _carry_all(a, b)  # on the old pair, which B has: nothing lost
    assert len(b.tun.written) == 3
    b.backend.install(replace(child(initiator=False, spis=new_spis), child_id=2))
    b.tun.to_read.append(reply)
    _send_all(b)
    assert _spis_sent(b) == [0xC0000011]  # the responder uses the new pair at once
    _carry_all(b, a)
    assert a.tun.written == [reply]
    a.raw.sent.clear()
    a.tun.to_read.append(packet)
    _send_all(a)
    assert _spis_sent(a) == [0xC0000012]  # B showed it has the new pair


def test_a_standing_by_pair_takes_over_after_a_while_or_when_alone(
    sides: tuple[Side, Side, list[Report], list[Report]],
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Traffic in one direction only: nothing comes back on the new pair, so A
    switches after STANDBY_S; and an SA alone (the first, or the old one deleted)
    is used whether it stands by or not."""
    from ikev1d.dataplane import userspace

    monkeypatch.setattr(userspace, "STANDBY_S", 0.01)
    a, _b, _, _ = sides
    old = child()
    a.backend.install(old)
    packet = udp_packet("10.1.0.1", "10.2.0.1", b"x" * 50)
    a.backend.install(replace(child(spis=(0xC0000011, 0xC0000012)), child_id=2,
                              initiator=True))
    a.tun.to_read.append(packet)
    _send_all(a)
    loop.run_until_complete(asyncio.sleep(0.05))
    a.tun.to_read.append(packet)
    _send_all(a)
    assert _spis_sent(a) == [0xC0000002, 0xC0000012]
    a.backend.install(replace(child(spis=(0xC0000021, 0xC0000022)), child_id=3,
                              initiator=True))
    a.backend.remove(deleted(old))
    a.backend.remove(deleted(child(spis=(0xC0000011, 0xC0000012))))
    a.tun.to_read.append(packet)
    _send_all(a)
    assert _spis_sent(a)[-1] == 0xC0000022

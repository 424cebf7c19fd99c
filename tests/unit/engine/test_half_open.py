"""Half-open responder SAs are bounded and a real peer still gets in under a
flood of spoofed Main Mode requests (engine/halfopen.py has the arithmetic)."""

from __future__ import annotations

import heapq
import logging
import random

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, Datagram
from ikev1d.engine.halfopen import PROTECT_S
from tests.unit.engine._mm import ike_transform, message_1, tables, vendor_ids
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, config_text

LOCAL = (B_ADDR, 500)


def responder(extra_daemon: str = "", remote_addrs: str | None = None) -> Engine:
    text = config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24",
                       extra_daemon=extra_daemon, remote_addrs=remote_addrs)
    return Engine(parse_config(text), random_bytes=random.Random(5).randbytes)


def initiator(seed: int = 6) -> Engine:
    text = config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24")
    return Engine(parse_config(text), random_bytes=random.Random(seed).randbytes)


def test_a_source_over_its_cap_loses_its_own_old_entries_not_fresh_ones() -> None:
    engine = responder("half_open_per_peer = 2")
    rng = random.Random(1)
    now = 1000.0
    for _ in range(4):
        engine.receive_datagram(message_1(rng.randbytes(8), [ike_transform()]), LOCAL,
                                (A_ADDR, 500), now)
    # All four are younger than the protection window: none is evicted by the cap.
    assert tables(engine)["half_open"] == 4
    engine.receive_datagram(message_1(rng.randbytes(8), [ike_transform()]), LOCAL,
                            (A_ADDR, 500), now + PROTECT_S + 0.1)
    # Later, the source's old entries make room for the new one: back to the cap.
    assert tables(engine)["half_open"] == 2
    assert tables(engine)["sas"] == 2


def test_a_full_table_evicts_the_oldest_and_admits_the_new_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = responder("half_open_total = 16", remote_addrs='["%any"]')
    rng = random.Random(2)
    with caplog.at_level(logging.INFO):
        for i in range(1000):
            src = (f"198.51.{i // 250}.{i % 250 + 1}", 500)
            engine.receive_datagram(message_1(rng.randbytes(8), [ike_transform()]), LOCAL,
                                    src, 1000.0)
    assert tables(engine)["half_open"] == 16 and tables(engine)["sas"] == 16
    # Every request was answered (the newest 16 are still there).
    assert len(engine.datagrams_to_send()) == 1000
    assert engine._half_open.evicted == 1000 - 16
    # The log says so a few times, not 984 times.
    lines = caplog.text.count("too many half-open SAs")
    assert 1 <= lines <= 10
    assert "similar messages suppressed" not in caplog.text or lines > 1


def test_unknown_vendor_ids_are_counted_not_kept_nor_logged_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = responder()
    data = message_1(bytes(range(8)), [ike_transform()], vendor_ids(6000, size=2))
    assert len(data) > 60000
    with caplog.at_level(logging.INFO):
        engine.receive_datagram(data, LOCAL, (A_ADDR, 500), 1000.0)
    (sa,) = engine.all_sas()
    assert sa.peer_vendors.unknown == 6000
    assert len(sa.peer_vendors.unknown_sample) <= 3
    lines = [r for r in caplog.records if "unknown vendor ID" in r.getMessage()]
    assert len(lines) == 1 and "and 5997 more" in lines[0].getMessage()
    # The response cache holds a digest of the 60 KB request, not the request.
    (cached,) = sa.responses.values()
    assert len(cached.request_key) == 32


def test_an_oversized_sa_offer_is_refused_without_state() -> None:
    engine = responder()
    data = message_1(bytes(8), [ike_transform(n % 255 + 1) for n in range(200)])
    engine.receive_datagram(data, LOCAL, (A_ADDR, 500), 1000.0)
    assert tables(engine) == {"sas": 0, "initiating": 0, "half_open": 0, "timers": 0,
                              "spis": 0}


def test_candidate_cache_is_bounded() -> None:
    engine = responder(remote_addrs='["%any"]')
    for i in range(2000):
        engine._connections_for(B_ADDR, f"10.9.{i // 256 % 256}.{i % 256}")
    assert len(engine._candidates_cache) <= 256


def run_under_flood(total: int, *, rate: float = 2000.0, one_way_s: float = 0.05,
                    seconds: float = 20.0) -> tuple[bool, int, float]:
    """A real peer establishes through a path of ``one_way_s`` latency while the
    responder receives ``rate`` spoofed message 1 per second, half of them from
    random sources and half from the real peer's own address. (established?,
    most half-open entries seen, seconds until the IPsec SA was up)."""
    a = initiator()
    b = responder(f"half_open_total = {total}\nhalf_open_per_peer = 8",
                  remote_addrs='["%any"]')
    rng = random.Random(9)
    now = 1000.0
    queue: list[tuple[float, int, str, Datagram]] = []
    seq = 0
    established = False
    most = 0
    start = now + 0.6  # the flood fills the table first (1,200 requests)
    initiated = False
    step = 1.0 / rate
    template = message_1(bytes(8), [ike_transform()])
    end = start + seconds
    while now < end and not established:
        now += step
        if not initiated and now >= start:
            a.initiate("gw", None, now)
            initiated = True
        for engine, name in ((a, "a"), (b, "b")):
            deadline = engine.get_timer()
            if deadline is not None and deadline <= now:
                engine.handle_timer(now)
            for dgram in engine.datagrams_to_send():
                if name == "b" and dgram.remote[0] != A_ADDR:
                    continue  # answers to spoofed sources go nowhere
                if name == "b" and dgram.remote[1] != 500 and dgram.remote[1] != 4500:
                    continue
                seq += 1
                heapq.heappush(queue, (now + one_way_s, seq, name, dgram))
        while queue and queue[0][0] <= now:
            _, _, name, dgram = heapq.heappop(queue)
            if name == "a":
                b.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
            else:
                # B's answers to A's address: only those for A's cookies mean anything
                # to A; the rest (answers to the spoofed requests) A drops.
                a.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
        spoofed_src = (A_ADDR if rng.random() < 0.5
                       else f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        b.receive_datagram(rng.randbytes(8) + template[8:], LOCAL, (spoofed_src, 500), now)
        most = max(most, tables(b)["half_open"])
        established = any(isinstance(e, ChildSaEstablished) for e in a.events())
    return established, most, now - start


def test_real_peer_establishes_under_a_spoofed_flood() -> None:
    # 1024 entries at 2,000 requests/s: an entry lives 0.51 s, the peer needs one
    # round trip (0.1 s) plus its Diffie-Hellman time.
    established, most, seconds = run_under_flood(1024)
    assert established and seconds < 1.0  # no retransmission was needed
    assert most == 1024  # full: the oldest entries were being evicted all along
    # The arithmetic cuts both ways: with room for 0.03 s of flood (less than one
    # round trip) the peer's entry is evicted before its message 3 arrives.
    established, most, _ = run_under_flood(64, seconds=2.0)
    assert not established and most <= 64


def test_a_failed_main_mode_releases_its_sa_and_timer_closures() -> None:
    """A cancelled timer must not keep its closure (and with it the whole SA)
    alive until its deadline: 300 failures used to hold every SA for 30 s."""
    import gc
    import weakref

    engine = responder(remote_addrs='["%any"]')
    rng = random.Random(4)
    refs = []
    for i in range(300):
        src = (f"198.51.100.{i % 250 + 1}", 500)
        engine.receive_datagram(message_1(rng.randbytes(8), [ike_transform()]), LOCAL, src,
                                1000.0)
        (response,) = engine.datagrams_to_send()
        sa = engine._half_open.get((response.data[:8], src[0]))
        if sa is None:
            raise AssertionError("no half-open SA")
        refs.append(weakref.ref(sa))
        # Message 3 without KE: PAYLOAD-MALFORMED, Main Mode fails.
        header = bytearray(response.data[:28])
        header[16] = 10  # next payload: NONCE
        body = bytes([0, 0, 0, 12]) + rng.randbytes(8)
        header[24:28] = (28 + len(body)).to_bytes(4, "big")
        engine.receive_datagram(bytes(header) + body, LOCAL, src, 1000.0)
        engine.datagrams_to_send()
        del sa
    gc.collect()
    assert tables(engine) == {"sas": 0, "initiating": 0, "half_open": 0, "timers": 0,
                              "spis": 0}
    assert sum(1 for r in refs if r() is not None) == 0
    assert len(engine.timers._heap) <= 300  # compacted, not one entry per failure each


def test_credential_lookups_per_source_are_bounded() -> None:
    from ikev1d.engine.auth.base import CredentialCache

    cache = CredentialCache()
    for i in range(5000):
        cache.get(("psk", None, f"10.0.{i // 256}.{i % 256}"), lambda: None)
    assert len(cache) == CredentialCache.SIZE


def test_a_source_that_completed_a_handshake_has_no_per_source_cap() -> None:
    net_a = initiator()
    engine = responder("half_open_per_peer = 2")
    # A real handshake from A first.
    net_a.initiate("gw", None, 1000.0)
    for _ in range(10):
        for d in net_a.datagrams_to_send():
            engine.receive_datagram(d.data, d.remote, d.local, 1000.0)
        for d in engine.datagrams_to_send():
            net_a.receive_datagram(d.data, d.remote, d.local, 1000.0)
    assert any(sa.usable for sa in engine.all_sas())
    rng = random.Random(3)
    for _ in range(4):
        engine.receive_datagram(message_1(rng.randbytes(8), [ike_transform()]), LOCAL,
                                (A_ADDR, 500), 1000.0)
    engine.receive_datagram(message_1(rng.randbytes(8), [ike_transform()]), LOCAL,
                            (A_ADDR, 500), 1000.0 + PROTECT_S + 0.1)
    # Only the global limit applies to it: all five stay.
    assert tables(engine)["half_open"] == 5

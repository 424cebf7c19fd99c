"""Prometheus metrics: the collector over a fake snapshot, the HTTP listener, the daemon's
listener over a fake engine and backend."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import tempfile
import threading
from collections import Counter
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from ikev1d.daemon import metrics as metrics_module
from ikev1d.daemon.control import UpRequest
from ikev1d.daemon.metrics import (
    SA_LABELS,
    MetricsServer,
    MetricsSnapshot,
    make_registry,
)
from ikev1d.daemon.runtime import Daemon, DaemonError, DaemonOptions
from ikev1d.engine.stats import EngineStats
from ikev1d.status import ChildSaStatus, Counters, DropCounters, IkeSaStatus, StatusDocument
from tests.unit.daemon._fakes import RecordingBackend, collecting_factory, fresh_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def child(name: str, spi_in: int, spi_out: int, n: int, state: str = "INSTALLED",
          drops: DropCounters | None = None) -> ChildSaStatus:
    return ChildSaStatus(
        name=name, state=state, mode="tunnel", encap=False, spi_in=spi_in, spi_out=spi_out,
        proposal="aes128gcm16", local_ts=(ipaddress.ip_network("10.1.0.0/24"),),
        remote_ts=(ipaddress.ip_network("10.3.0.0/24"),), rekey_in_s=100, expires_in_s=200,
        counters=Counters(bytes_in=1000 * n + 1, bytes_out=1000 * n + 2,
                          packets_in=10 * n + 3, packets_out=10 * n + 4, drops=drops),
    )


def ike(remote: str, remote_id: str, children: tuple[ChildSaStatus, ...],
        state: str = "ESTABLISHED") -> IkeSaStatus:
    return IkeSaStatus(
        name="rw", state=state, local=("192.0.2.1", 500), remote=(remote, 4500),
        local_id="gw.example.org", remote_id=remote_id, initiator=False,
        cookies=(b"\x01" * 8, b"\x02" * 8), proposal="aes128-sha256-modp2048", auth="psk",
        nat_local=False, nat_remote=True, established_s=5, rekey_in_s=100, virtual_ip=None,
        children=children,
    )


# Two road warriors behind one NAT address on one connection, with equal children; the
# second is in a renewal overlap (old and new SA of the same child both installed).
DOCUMENT = StatusDocument((
    ike("198.51.100.7", "alice@example.org", (
        child("net", 0xC0000001, 0x0000AAAA, 1, drops=DropCounters(replayed_in=5,
                                                                   icv_failed_in=6)),
    )),
    ike("198.51.100.7", "bob@example.org", (
        child("net", 0xC0000002, 0x0000AAAA, 2, state="REKEYING", drops=DropCounters()),
        child("net", 0xC0000003, 0x0000BBBB, 3, drops=DropCounters(dropped_out=7)),
    )),
    ike("203.0.113.9", "carol@example.org", (), state="CONNECTING"),
))


def snapshot() -> MetricsSnapshot:
    stats = EngineStats()
    stats.started.update({("1", "initiator"): 4, ("1", "responder"): 9, ("2", "responder"): 3})
    stats.succeeded.update({("1", "responder"): 7, ("2", "responder"): 3})
    stats.failed.update({("1", "responder", "authentication_failed"): 1,
                         ("1", "initiator", "timeout"): 4})
    stats.rekeys.update({"2": 11})
    stats.half_open_dropped = 12
    stats.dpd_failures = 2
    stats.acquires = 3
    return MetricsSnapshot(DOCUMENT, stats, half_open=1, requests_dropped=21,
                           esp_drops={"replay": 5, "icv": 6, "unknown_spi": 8, "malformed": 0})


def scrape(snap: MetricsSnapshot) -> Samples:
    return parse(generate_latest(make_registry(lambda: snap)).decode())


def test_per_sa_counters_equal_the_status_document_and_never_collide() -> None:
    samples = scrape(snapshot())
    sa_bytes = series(samples, "ikev1d_ipsec_sa_bytes_total")
    sa_packets = series(samples, "ikev1d_ipsec_sa_packets_total")
    expected_bytes: dict[tuple[tuple[str, str], ...], float] = {}
    expected_packets: dict[tuple[tuple[str, str], ...], float] = {}
    for ike_sa in DOCUMENT.ike_sas:
        for c in ike_sa.children:
            for direction in ("in", "out"):
                labels = tuple(sorted({
                    "connection": "rw", "child": "net", "direction": direction,
                    "remote_id": ike_sa.remote_id or "", "remote": "198.51.100.7",
                    "spi_in": f"{c.spi_in:08x}", "spi_out": f"{c.spi_out:08x}",
                }.items()))
                expected_bytes[labels] = getattr(c.counters, f"bytes_{direction}")
                expected_packets[labels] = getattr(c.counters, f"packets_{direction}")
    assert sa_bytes == expected_bytes
    assert sa_packets == expected_packets
    # Three SAs of one connection, child and NAT address: six series each, none merged.
    assert len(sa_bytes) == 6
    assert {name for labels in sa_bytes for name, _ in labels} == set(SA_LABELS)


def test_sa_states_handshakes_and_engine_counters() -> None:
    samples = scrape(snapshot())
    assert series(samples, "ikev1d_isakmp_sas") == {
        (("state", "CONNECTING"),): 1, (("state", "ESTABLISHED"),): 2,
        (("state", "REKEYING"),): 0, (("state", "DELETING"),): 0,
    }
    assert series(samples, "ikev1d_ipsec_sas") == {
        (("state", "INSTALLING"),): 0, (("state", "INSTALLED"),): 2,
        (("state", "REKEYING"),): 1, (("state", "DELETING"),): 0,
    }
    started = series(samples, "ikev1d_handshakes_started_total")
    assert started == {
        (("phase", "1"), ("role", "initiator")): 4, (("phase", "1"), ("role", "responder")): 9,
        (("phase", "2"), ("role", "initiator")): 0, (("phase", "2"), ("role", "responder")): 3,
    }
    assert series(samples, "ikev1d_handshakes_succeeded_total")[
        (("phase", "1"), ("role", "responder"))] == 7
    assert series(samples, "ikev1d_handshakes_failed_total") == {
        (("phase", "1"), ("reason", "authentication_failed"), ("role", "responder")): 1,
        (("phase", "1"), ("reason", "timeout"), ("role", "initiator")): 4,
    }
    assert samples["ikev1d_half_open_isakmp_sas", ()] == 1
    assert samples["ikev1d_half_open_dropped_total", ()] == 12
    assert samples["ikev1d_busy_dropped_requests_total", ()] == 21
    assert samples["ikev1d_dpd_failures_total", ()] == 2
    assert samples["ikev1d_acquires_total", ()] == 3
    assert series(samples, "ikev1d_rekeys_total") == {
        (("phase", "1"),): 0, (("phase", "2"),): 11}


def test_esp_drops_by_reason_overall_and_per_sa() -> None:
    samples = scrape(snapshot())
    assert series(samples, "ikev1d_esp_dropped_packets_total") == {
        (("reason", "icv"),): 6, (("reason", "malformed"),): 0,
        (("reason", "replay"),): 5, (("reason", "unknown_spi"),): 8,
    }
    per_sa = series(samples, "ikev1d_ipsec_sa_dropped_packets_total")
    by_spi_reason = Counter[tuple[str, str, str]]()
    for labels, value in per_sa.items():
        d = dict(labels)
        by_spi_reason[d["spi_in"], d["direction"], d["reason"]] += int(value)
    assert by_spi_reason["c0000001", "in", "replay"] == 5
    assert by_spi_reason["c0000001", "in", "icv"] == 6
    assert by_spi_reason["c0000003", "out", "send_failed"] == 7
    assert by_spi_reason["c0000002", "in", "malformed"] == 0
    assert len(per_sa) == 3 * 6


def test_a_data_plane_without_drop_counts_shows_none() -> None:
    samples = scrape(MetricsSnapshot())
    assert not series(samples, "ikev1d_esp_dropped_packets_total")
    assert not series(samples, "ikev1d_ipsec_sa_dropped_packets_total")
    assert not series(samples, "ikev1d_ipsec_sa_bytes_total")
    assert samples["ikev1d_half_open_isakmp_sas", ()] == 0


def test_every_scrape_reads_a_fresh_snapshot() -> None:
    calls = []

    def source() -> MetricsSnapshot:
        calls.append(1)
        stats = EngineStats()
        stats.dpd_failures = len(calls)
        return MetricsSnapshot(stats=stats)

    registry = make_registry(source)
    first = parse(generate_latest(registry).decode())
    second = parse(generate_latest(registry).decode())
    assert first["ikev1d_dpd_failures_total", ()] == 1
    assert second["ikev1d_dpd_failures_total", ()] == 2


# --- the HTTP listener ---------------------------------------------------------------


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_http_listener_answers_get_metrics_only() -> None:
    async def body() -> None:
        async def taken() -> MetricsSnapshot:
            return snapshot()

        server = MetricsServer(taken, ("127.0.0.1", 0))
        await server.start()
        try:
            port = server.port
            status, headers, data = await http(
                port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert int(headers["content-length"]) == len(data)
            assert parse(data.decode())["ikev1d_dpd_failures_total", ()] == 2

            status, headers, data = await http(
                port, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; "
                b"version=1.0.0\r\n\r\n")
            assert headers["content-type"].startswith("application/openmetrics-text")
            assert data.endswith(b"# EOF\n")

            status, headers, data = await http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
            assert status.endswith("200 OK") and data == b""
            assert int(headers["content-length"]) > 0

            status, _, _ = await http(port, b"GET / HTTP/1.1\r\n\r\n")
            assert status.endswith("404 Not Found")
            status, headers, _ = await http(port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert status.endswith("405 Method Not Allowed") and headers["allow"] == "GET, HEAD"
            status, _, _ = await http(port, b"\x16\x03\x01 garbage\r\n\r\n")
            assert status.endswith("400 Bad Request")
            status, _, _ = await http(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
            assert status.endswith("400 Bad Request")
        finally:
            server.close()

    asyncio.run(body())


# --- in the daemon ---------------------------------------------------------------------


async def _daemon_up_and_scraped(tmp: str) -> tuple[Daemon, Samples]:
    """A started daemon (fake engine, recording backend, metrics on a free port) with
    ``site-ok`` up, and its first scrape; the caller stops it."""
    config = fresh_config()
    config = replace(config, daemon=replace(config.daemon, metrics=("127.0.0.1", 0)))
    backend = RecordingBackend()
    daemon = Daemon(
        DaemonOptions(os.path.join(tmp, "c.toml"), os.path.join(tmp, "s.sock"),
                      linger_s=0.01),
        config_loader=lambda path: config,
        engine_factory=collecting_factory([]),
        backend_factory=lambda name, cfg: backend,
        warnings=lambda cfg: [],
        install_signal_handlers=False,
    )
    await daemon.start()
    try:
        ok, message = await daemon.up(UpRequest("site-ok", timeout=5), lambda t: None)
        assert ok, message
        server = daemon.metrics_server
        assert server is not None
        _, _, data = await http(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    except BaseException:
        await daemon.stop()
        raise
    return daemon, parse(data.decode())


def test_daemon_serves_the_status_counters_and_refuses_a_busy_port() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            daemon, samples = await _daemon_up_and_scraped(tmp)
            server = daemon.metrics_server
            assert server is not None
            try:
                document = daemon.status()
                (ike_sa,) = document.ike_sas
                assert len(ike_sa.children) == 2
                sa_bytes = series(samples, "ikev1d_ipsec_sa_bytes_total")
                for c in ike_sa.children:
                    for direction in ("in", "out"):
                        (value,) = [v for labels, v in sa_bytes.items()
                                    if dict(labels)["child"] == c.name
                                    and dict(labels)["direction"] == direction]
                        assert value == getattr(c.counters, f"bytes_{direction}")
                assert series(samples, "ikev1d_ipsec_sas")[(("state", "INSTALLED"),)] == 2

                # A second daemon on the same metrics port cannot start, and says why.
                busy = fresh_config()  # other UDP ports, the same metrics port
                busy = replace(busy, daemon=replace(
                    busy.daemon, metrics=("127.0.0.1", server.port)))
                other = Daemon(
                    DaemonOptions(os.path.join(tmp, "c.toml"), os.path.join(tmp, "t.sock")),
                    config_loader=lambda path: busy,
                    engine_factory=collecting_factory([]),
                    backend_factory=lambda name, cfg: RecordingBackend(),
                    warnings=lambda cfg: [], install_signal_handlers=False,
                )
                with pytest.raises(DaemonError, match=r"metrics listener 127\.0\.0\.1:"):
                    await other.start()
                assert not os.path.exists(os.path.join(tmp, "t.sock"))
            finally:
                await daemon.stop()
            # Closed with the daemon.
            with pytest.raises(OSError), socket.create_connection(
                    ("127.0.0.1", server.port), timeout=1):
                pass

    asyncio.run(body())


def test_a_scrape_is_rendered_beside_the_loop_from_a_snapshot_taken_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 10,000 SAs the exposition is 40,000 series and 0.35 s of work: it is made in
    a worker thread, from a snapshot the daemon took on its loop."""
    rendered_in: list[int] = []
    taken_in: list[int] = []
    render = metrics_module.render
    take = Daemon.metrics_snapshot_async

    def recording(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
        rendered_in.append(threading.get_ident())
        return render(registry, accept)

    async def taking(self: Daemon) -> MetricsSnapshot:
        taken_in.append(threading.get_ident())
        return await take(self)

    monkeypatch.setattr(metrics_module, "render", recording)
    monkeypatch.setattr(Daemon, "metrics_snapshot_async", taking)

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            daemon, samples = await _daemon_up_and_scraped(tmp)
            try:
                assert series(samples, "ikev1d_ipsec_sas")[(("state", "INSTALLED"),)] == 2
            finally:
                await daemon.stop()

    asyncio.run(body())
    loop_thread = threading.get_ident()
    assert taken_in == [loop_thread]
    assert rendered_in and loop_thread not in rendered_in

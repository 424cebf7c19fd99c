"""Prometheus metrics: ``[daemon] metrics = "127.0.0.1:9616"`` serves ``/metrics``.

The engine and the data plane are not thread-safe, so nothing here runs in
another thread: the HTTP listener is an asyncio server on the daemon's loop,
and a scrape builds the exposition with ``prometheus_client.generate_latest``
right there, through ``IkeCollector``, which reads one ``MetricsSnapshot``
(the status document the daemon serves to ``ikev1d status``, the engine's
counters, the data plane's drop counters) per scrape. The per-SA byte and
packet counters are therefore the very numbers ``ikev1d status --json`` shows.

Series of an IPsec SA carry the labels ``connection``, ``child``,
``direction``, ``remote_id`` (the peer's identity), ``remote`` (its address)
and both SPIs. The inbound SPI is chosen by us and unique in the daemon, so two
road warriors on one connection, or an SA and its renewal during the overlap,
never share a series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from ikev1d.engine.stats import PHASE1, PHASE2, EngineStats
from ikev1d.errors import Ikev1dError
from ikev1d.status import ChildSaStatus, DropCounters, IkeSaStatus, StatusDocument

log = logging.getLogger("ikev1d.daemon")

PREFIX = "ikev1d"
IKE_STATES = ("CONNECTING", "ESTABLISHED", "REKEYING", "DELETING")
CHILD_STATES = ("INSTALLING", "INSTALLED", "REKEYING", "DELETING")
ROLES = ("initiator", "responder")
SA_LABELS = ("connection", "child", "direction", "remote_id", "remote", "spi_in", "spi_out")

SA_DROP_REASONS: Mapping[str, tuple[str, str]] = {
    "replayed_in": ("in", "replay"),
    "icv_failed_in": ("in", "icv"),
    "malformed_in": ("in", "malformed"),
    "policy_dropped_in": ("in", "policy"),
    "tun_dropped_in": ("in", "tun_error"),
    "dropped_out": ("out", "send_failed"),
}
"""DropCounters member -> (direction, reason) of the per-SA drop series."""

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16


class MetricsError(Ikev1dError):
    """The metrics listener cannot start; the message is for people."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape shows, read at one moment on the daemon's loop."""

    status: StatusDocument = field(default_factory=StatusDocument)
    stats: EngineStats = field(default_factory=EngineStats)
    half_open: int = 0
    requests_dropped: int = 0
    """New Main Mode requests the receive path dropped while busy (daemon/udp.py)."""
    esp_drops: Mapping[str, int] | None = None
    """The data plane's drops by reason, over all SAs and packets that matched none;
    None for a data plane that does not count them."""


def _sa_labels(ike: IkeSaStatus, child: ChildSaStatus, direction: str) -> list[str]:
    return [
        ike.name, child.name, direction, ike.remote_id or "", ike.remote[0],
        f"{child.spi_in:08x}", f"{child.spi_out:08x}",
    ]


class IkeCollector(Collector):
    """Turns a ``MetricsSnapshot`` into metric families on every ``collect``."""

    def __init__(self, source: Callable[[], MetricsSnapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshot = self._source()
        yield from self._sa_states(snapshot.status)
        yield from self._handshakes(snapshot.stats)
        yield from self._per_sa(snapshot.status)
        yield from self._engine_counters(snapshot)
        if snapshot.esp_drops is not None:
            drops = CounterMetricFamily(
                f"{PREFIX}_esp_dropped_packets",
                "ESP packets the data plane dropped, by reason (unknown_spi and no_sa: "
                "no SA for the packet; replay, icv, malformed: RFC 4303 section 3.4)",
                labels=["reason"],
            )
            for reason, count in sorted(snapshot.esp_drops.items()):
                drops.add_metric([reason], count)
            yield drops

    @staticmethod
    def _sa_states(status: StatusDocument) -> Iterator[GaugeMetricFamily]:
        ike_counts = dict.fromkeys(IKE_STATES, 0)
        child_counts = dict.fromkeys(CHILD_STATES, 0)
        for ike in status.ike_sas:
            ike_counts[ike.state] = ike_counts.get(ike.state, 0) + 1
            for child in ike.children:
                child_counts[child.state] = child_counts.get(child.state, 0) + 1
        ike_sas = GaugeMetricFamily(f"{PREFIX}_isakmp_sas", "ISAKMP SAs by state",
                                    labels=["state"])
        for state, count in ike_counts.items():
            ike_sas.add_metric([state], count)
        child_sas = GaugeMetricFamily(f"{PREFIX}_ipsec_sas", "IPsec SA pairs by state",
                                      labels=["state"])
        for state, count in child_counts.items():
            child_sas.add_metric([state], count)
        yield ike_sas
        yield child_sas

    @staticmethod
    def _handshakes(stats: EngineStats) -> Iterator[CounterMetricFamily]:
        labels = ["phase", "role"]
        started = CounterMetricFamily(
            f"{PREFIX}_handshakes_started",
            "Handshakes begun: phase 1 Main Mode, phase 2 Quick Mode", labels=labels)
        succeeded = CounterMetricFamily(
            f"{PREFIX}_handshakes_succeeded",
            "Handshakes that established an SA", labels=labels)
        for phase in (PHASE1, PHASE2):
            for role in ROLES:
                started.add_metric([phase, role], stats.started[phase, role])
                succeeded.add_metric([phase, role], stats.succeeded[phase, role])
        failed = CounterMetricFamily(
            f"{PREFIX}_handshakes_failed",
            "Handshakes that failed, by kind of reason", labels=[*labels, "reason"])
        for (phase, role, reason), count in sorted(stats.failed.items()):
            failed.add_metric([phase, role, reason], count)
        yield started
        yield succeeded
        yield failed

    @staticmethod
    def _per_sa(status: StatusDocument) -> Iterator[CounterMetricFamily]:
        sa_bytes = CounterMetricFamily(
            f"{PREFIX}_ipsec_sa_bytes",
            "Bytes of inner packets an IPsec SA carried (as ikev1d status shows them)",
            labels=list(SA_LABELS))
        sa_packets = CounterMetricFamily(
            f"{PREFIX}_ipsec_sa_packets", "Packets an IPsec SA carried",
            labels=list(SA_LABELS))
        sa_drops = CounterMetricFamily(
            f"{PREFIX}_ipsec_sa_dropped_packets",
            "Packets of an IPsec SA the data plane dropped, by reason",
            labels=[*SA_LABELS, "reason"])
        any_drops = False
        for ike in status.ike_sas:
            for child in ike.children:
                counters = child.counters
                for direction, nbytes, npackets in (
                    ("in", counters.bytes_in, counters.packets_in),
                    ("out", counters.bytes_out, counters.packets_out),
                ):
                    labels = _sa_labels(ike, child, direction)
                    sa_bytes.add_metric(labels, nbytes)
                    sa_packets.add_metric(labels, npackets)
                drops = counters.drops
                if drops is not None:
                    any_drops = True
                    for member in fields(DropCounters):
                        direction, reason = SA_DROP_REASONS[member.name]
                        sa_drops.add_metric([*_sa_labels(ike, child, direction), reason],
                                            getattr(drops, member.name))
        yield sa_bytes
        yield sa_packets
        if any_drops:
            yield sa_drops

    @staticmethod
    def _engine_counters(
        snapshot: MetricsSnapshot,
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = snapshot.stats
        yield GaugeMetricFamily(
            f"{PREFIX}_half_open_isakmp_sas",
            "Responder ISAKMP SAs whose Main Mode has not authenticated the peer yet",
            value=snapshot.half_open)
        yield CounterMetricFamily(
            f"{PREFIX}_half_open_dropped",
            "Main Mode requests dropped for the half_open_per_peer / half_open_total limits",
            value=stats.half_open_dropped)
        yield CounterMetricFamily(
            f"{PREFIX}_busy_dropped_requests",
            "New Main Mode requests dropped unprocessed because processing them would have "
            "delayed messages of exchanges under way (a flood)",
            value=snapshot.requests_dropped)
        yield CounterMetricFamily(
            f"{PREFIX}_dpd_failures",
            "Peers declared dead by Dead Peer Detection (RFC 3706)",
            value=stats.dpd_failures)
        yield CounterMetricFamily(
            f"{PREFIX}_acquires",
            "Negotiations started by traffic caught in a trap (start_action = \"trap\", "
            "dpd_action = \"hold\")",
            value=stats.acquires)
        rekeys = CounterMetricFamily(
            f"{PREFIX}_rekeys", "Renewals completed: the new SA took over from the old one",
            labels=["phase"])
        for phase in (PHASE1, PHASE2):
            rekeys.add_metric([phase], stats.rekeys[phase])
        yield rekeys


def make_registry(source: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) with our collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IkeCollector(source))
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asks for (text, or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class MetricsServer:
    """A minimal HTTP/1.x listener on the daemon's loop: ``GET /metrics`` only.

    Each connection gets one answer and is closed; requests are read with a
    size and time limit, so a slow or hostile client costs little. The snapshot is
    taken on the loop (``snapshot()``, which may let the loop serve while it is made);
    turning it into the exposition text runs in a worker thread (with 10,000 SAs,
    40,000 series and 0.35 s of work that would otherwise hold the loop)."""

    def __init__(self, snapshot: Callable[[], Awaitable[MetricsSnapshot]],
                 address: tuple[str, int]) -> None:
        self._snapshot = snapshot
        self.address = address
        self._server: asyncio.Server | None = None
        self._connections = 0

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 in tests)."""
        if self._server is None or not self._server.sockets:
            return self.address[1]
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, port = self.address
        try:
            self._server = await asyncio.start_server(
                self._handle, host=host, port=port, reuse_address=True,
                limit=MAX_REQUEST_HEAD)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise MetricsError(f"metrics listener {where}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections > MAX_CONNECTIONS:
                await self._answer(writer, 503, b"too many connections\n")
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                await self._answer(writer, 400, b"bad request\n")
                return
            await self._respond(head, writer)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("internal error answering a metrics request")
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._answer(writer, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path != "/metrics":
            await self._answer(writer, 404, b"not found: try /metrics\n")
            return
        if method not in ("GET", "HEAD"):
            await self._answer(writer, 405, b"method not allowed\n", ("Allow", "GET, HEAD"))
            return
        accept = None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == "accept":
                accept = value.strip()
        taken = await self._snapshot()
        body, content_type = await asyncio.to_thread(
            render, make_registry(lambda: taken), accept)
        await self._answer(writer, 200, body, ("Content-Type", content_type),
                           send_body=method == "GET")

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, code: int, body: bytes,
                      *headers: tuple[str, str], send_body: bool = True) -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found",
                   405: "Method Not Allowed", 503: "Service Unavailable"}
        all_headers = [("Content-Length", str(len(body))), ("Connection", "close"), *headers]
        if not any(name == "Content-Type" for name, _ in headers):
            all_headers.append(("Content-Type", "text/plain; charset=utf-8"))
        head = f"HTTP/1.1 {code} {reasons[code]}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in all_headers) + "\r\n"
        writer.write(head.encode("latin-1") + (body if send_body else b""))
        await writer.drain()

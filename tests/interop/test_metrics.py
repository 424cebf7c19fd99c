"""Prometheus /metrics of two ikev1d with the userspace data plane, in two namespaces.

Scraped while TCP traffic runs through the tunnel (the listener answers and the
counters grow), then at a quiet moment: every per-SA counter equals the same
SA's counter in ``ikev1d status --json``, on both sides; the replayed and the
tampered ESP packet show up as drops of that SA and of the data plane; the
handshake counters and SA gauges say what happened.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology

from .test_dataplane_ikev1d import PSK, Pair, inject_replay_and_tamper, tcp_echo

pytestmark = pytest.mark.interop

METRICS = "127.0.0.1:9616"
FETCH = (
    "import sys, urllib.request; "
    f"sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics', timeout=5)"
    ".read().decode())"
)

SCRAPER = (
    "import time, urllib.request\n"
    "from prometheus_client.parser import text_string_to_metric_families as parse\n"
    "while True:\n"
    f"    text = urllib.request.urlopen('http://{METRICS}/metrics', timeout=5).read().decode()\n"
    "    print(sum(s.value for f in parse(text) for s in f.samples\n"
    "              if s.name == 'ikev1d_ipsec_sa_bytes_total'), flush=True)\n"
    "    time.sleep(0.05)\n"
)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(ns: Namespace) -> Series:
    text = ns.run([sys.executable, "-c", FETCH], timeout=15).stdout
    samples: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def sa_values(samples: Series, name: str) -> dict[tuple[str, str, str], float]:
    """(spi_in, direction, reason or "") -> value of one per-SA metric."""
    out: dict[tuple[str, str, str], float] = {}
    for (n, labels), value in samples.items():
        if n == name:
            d = dict(labels)
            out[d["spi_in"], d["direction"], d.get("reason", "")] = value
    return out


DROP_MEMBERS = {
    "replayed_in": ("in", "replay"), "icv_failed_in": ("in", "icv"),
    "malformed_in": ("in", "malformed"), "policy_dropped_in": ("in", "policy"),
    "tun_dropped_in": ("in", "tun_error"), "dropped_out": ("out", "send_failed"),
}


def expected_from_status(status: dict[str, Any]) -> tuple[dict[tuple[str, str, str], float], ...]:
    nbytes: dict[tuple[str, str, str], float] = {}
    packets: dict[tuple[str, str, str], float] = {}
    drops: dict[tuple[str, str, str], float] = {}
    for ike in status["ike_sas"]:
        for child in ike["children"]:
            for direction in ("in", "out"):
                nbytes[child["spi_in"], direction, ""] = child[f"bytes_{direction}"]
                packets[child["spi_in"], direction, ""] = child[f"packets_{direction}"]
            for member, (direction, reason) in DROP_MEMBERS.items():
                drops[child["spi_in"], direction, reason] = child[member]
    return nbytes, packets, drops


def quiet_scrape(daemon: Ikev1dDaemon) -> tuple[Series, dict[str, Any]]:
    """A scrape and a status document taken with no traffic in between: the counters in
    the status before and after the scrape must be the same (the times in it move on)."""
    for _ in range(20):
        before = daemon.status()
        samples = scrape(daemon.ns)
        if expected_from_status(daemon.status()) == expected_from_status(before):
            return samples, before
        time.sleep(0.3)
    raise AssertionError("the counters never stood still")


def test_metrics_equal_status_during_and_after_traffic(two_hosts: Topology,
                                                       tmp_path: Path) -> None:
    topo = two_hosts
    daemons = []
    for label, ns, local, remote, lnet, rnet in (
        ("a", topo.a, topo.addr_a, topo.addr_b, topo.inner_net_a, topo.inner_net_b),
        ("b", topo.b, topo.addr_b, topo.addr_a, topo.inner_net_b, topo.inner_net_a),
    ):
        daemons.append(Ikev1dDaemon(ns, tmp_path / f"ikev1d-{label}", ikev1d_conf(
            "gw", local, remote, local, remote, PSK, ["aes128-sha256-modp2048"],
            ["aes128gcm16"], lnet, rnet, dataplane="userspace",
            extra_daemon=f"metrics = {METRICS!r}".replace("'", '"'),
        )))
    a, b = daemons
    try:
        for d in daemons:
            d.start()
        assert a.up("gw").returncode == 0

        # During traffic: 2 x 1 MB echoed over TCP while a scraper in A's namespace scrapes
        # again and again, printing the sum of A's per-SA byte counters each time.
        scraper = topo.a.popen([sys.executable, "-c", SCRAPER], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            tcp_echo(topo.b, topo.inner_addr_b, topo.a, topo.inner_addr_a, nbytes=1_000_000)
            time.sleep(0.5)
        finally:
            scraper.terminate()
            out, err = scraper.communicate(timeout=10)
        during = [float(line) for line in out.split()]
        assert len(during) >= 10, (out, err)
        # How many scrapes land while the bytes flow depends on the machine's speed: on
        # a fast one the transfer fits between two scrapes. What must hold is that the
        # series starts at zero, only grows and ends with all the bytes.
        rising = sum(1 for x, y in itertools.pairwise(during) if y > x)
        falling = sum(1 for x, y in itertools.pairwise(during) if y < x)
        assert during[0] == 0 and during[-1] > 2_000_000 and rising >= 1, during
        assert falling == 0, during

        inject_replay_and_tamper(Pair(topo, a, b))

        for daemon, role in ((a, "initiator"), (b, "responder")):
            samples, status = quiet_scrape(daemon)
            (ike,) = status["ike_sas"]
            (child,) = ike["children"]
            nbytes, packets, drops = expected_from_status(status)
            assert sa_values(samples, "ikev1d_ipsec_sa_bytes_total") == nbytes
            assert sa_values(samples, "ikev1d_ipsec_sa_packets_total") == packets
            assert sa_values(samples, "ikev1d_ipsec_sa_dropped_packets_total") == drops
            assert child["bytes_in"] > 1_000_000 and child["bytes_out"] > 1_000_000
            # The labels name the SA as status does.
            (labels,) = {lab for (n, lab) in samples if n == "ikev1d_ipsec_sa_bytes_total"
                         and dict(lab)["direction"] == "in"}
            assert dict(labels) == {
                "connection": "gw", "child": "net", "direction": "in",
                "remote_id": ike["remote_id"], "remote": ike["remote"].rsplit(":", 1)[0],
                "spi_in": child["spi_in"], "spi_out": child["spi_out"],
            }
            assert samples["ikev1d_isakmp_sas", (("state", "ESTABLISHED"),)] == 1
            assert samples["ikev1d_ipsec_sas", (("state", "INSTALLED"),)] == 1
            for phase in ("1", "2"):
                key = (("phase", phase), ("role", role))
                assert samples["ikev1d_handshakes_started_total", key] == 1
                assert samples["ikev1d_handshakes_succeeded_total", key] == 1
            assert not [n for n, _ in samples if n == "ikev1d_handshakes_failed_total"]
            assert samples["ikev1d_half_open_isakmp_sas", ()] == 0

        # B dropped the replayed and the tampered packet: in the SA and in the data plane.
        samples = scrape(topo.b)
        assert samples["ikev1d_esp_dropped_packets_total", (("reason", "replay"),)] == 1
        assert samples["ikev1d_esp_dropped_packets_total", (("reason", "icv"),)] == 1
    finally:
        for d in daemons:
            d.stop()
    for d in daemons:
        assert d.process is not None and d.process.returncode == 0, d.log_text()[-3000:]

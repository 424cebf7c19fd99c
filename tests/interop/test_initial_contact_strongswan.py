"""INITIAL-CONTACT (RFC 2407 section 4.6.3.3) against a real strongSwan: one side
is killed with SIGKILL while a tunnel is up, comes back with no state and
connects again; the other side must then hold exactly one SA pair, because the
restarted side said INITIAL-CONTACT in Main Mode message 5.

strongSwan believes INITIAL-CONTACT as responder only, and sends it as
initiator only when its remote ID has no wildcards (so the configs name it).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import swanctl_conf

from .conftest import CharonFactory

pytestmark = pytest.mark.interop

PSK = "interop-psk-initial-contact-0123"
PROPOSALS = ["aes128-sha256-modp2048"]
ESP = ["aes128gcm16"]


def _ours(topo: Topology, work: Path, unique: str = "no") -> Ikev1dDaemon:
    text = ikev1d_conf("gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
                       PROPOSALS, ESP, topo.inner_net_a, topo.inner_net_b)
    text = text.replace("encap = false\n", f'encap = false\nunique = "{unique}"\n', 1)
    daemon = Ikev1dDaemon(topo.a, work, text, log_level="info")
    daemon.start()
    return daemon


def _theirs_conf(topo: Topology) -> str:
    return swanctl_conf("gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
                        PROPOSALS, ESP, topo.inner_net_b, topo.inner_net_a)


def _kill(daemon: Ikev1dDaemon) -> None:
    if daemon.process is not None:
        daemon.process.kill()
        daemon.process.wait()


@pytest.mark.parametrize("unique", ["no", "never"])
def test_restarted_ikev1d_makes_strongswan_drop_the_stale_sas(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path, unique: str,
) -> None:
    """unique = "never" sends no INITIAL-CONTACT: the control, where strongSwan
    keeps the stale pair next to the new one (so this test can fail)."""
    topo = two_hosts
    theirs = charon_factory(topo.b, "b")
    theirs.load_config(_theirs_conf(topo))
    first = _ours(topo, tmp_path / "ikev1d-1", unique)
    daemons = [first]
    try:
        assert first.up("gw").returncode == 0
        (old,) = first.status()["ike_sas"]
        theirs.wait_for(lambda sas: len(sas) == 1 and len(sas[0]["children"]) == 1)
        _kill(first)
        second = _ours(topo, tmp_path / "ikev1d-2", unique)
        daemons.append(second)
        assert second.up("gw").returncode == 0
        (new,) = second.status()["ike_sas"]
        assert new["cookies"] != old["cookies"]
        if unique == "never":
            sas = theirs.wait_for(lambda sas: len(sas) == 2)
            time.sleep(1)
            assert len(theirs.list_sas()) == 2
            assert "received INITIAL_CONTACT" not in theirs.log_text()
            return
        sas = theirs.wait_for(lambda sas: len(sas) == 1 and len(sas[0]["children"]) == 1)
        (ike,) = sas
        assert f"{ike['initiator-spi']}:{ike['responder-spi']}" == new["cookies"]
        (child,) = ike["children"]
        (our_child,) = new["children"]
        assert child["spi-in"] == our_child["spi_out"]
        theirs.wait_log(r"destroying duplicate IKE_SA for peer '192\.0\.2\.1', "
                        r"received INITIAL_CONTACT")
    finally:
        for daemon in daemons:
            daemon.stop()


def test_restarted_strongswan_makes_ikev1d_drop_the_stale_sas(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path,
) -> None:
    topo = two_hosts
    ours = _ours(topo, tmp_path / "ikev1d")
    try:
        first = charon_factory(topo.b, "b1")
        first.load_config(_theirs_conf(topo))
        ok, out = first.initiate("net", "gw")
        assert ok, out
        (old,) = ours.status()["ike_sas"]
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)  # no Deletes, no goodbye
        first.stop()
        second = charon_factory(topo.b, "b2")
        second.load_config(_theirs_conf(topo))
        ok, out = second.initiate("net", "gw")
        assert ok, out
        (ike,) = second.list_sas()
        assert ours.wait_log("INITIAL-CONTACT from 192.0.2.2: removing 1 stale ISAKMP SA "
                             "and 1 IPsec SA")
        (new,) = ours.status()["ike_sas"]
        assert new["cookies"] == f"{ike['initiator-spi']}:{ike['responder-spi']}"
        assert new["cookies"] != old["cookies"]
        (child,) = new["children"]
        assert child["spi_out"] == ike["children"][0]["spi-in"]
        assert "ISAKMP SA deleted (INITIAL-CONTACT from the peer)" in ours.log_text()
    finally:
        assert ours.stop() == 0

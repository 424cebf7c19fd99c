"""`ikev1d import-swanctl` against the configurations the interop tests give strongSwan.

For each connection a charon on host B loads in the other interop tests
(strongswan_configs.CASES), the swanctl.conf text is converted with
`ikev1d import-swanctl`, and ikev1d runs the result on B in place of that
charon (only a [daemon] section is added: the listen address and the data
plane).  A charon on A loads the same connection seen from A: the peer the
configuration was written for.  Phase 1 and Phase 2 must come up, read from
both sides (`ikev1d status --json`, vici's list-sas) with matching cookies
and SPIs; the traffic cases also ping through the tunnel.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping

from .conftest import CharonFactory
from .strongswan_configs import CASES, StrongswanCase

pytestmark = pytest.mark.interop

_NOTE_RE = re.compile(r"^\S+:\d+: \S+(: \S+)?: (dropped|note|skipped): .+$")


def _import_swanctl(text: str, work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "swanctl.conf"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "ikev1d", "import-swanctl", str(path)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    for line in result.stderr.splitlines():
        assert _NOTE_RE.match(line), line
    return result.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_converted_strongswan_config_establishes(
    case: StrongswanCase, two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
) -> None:
    topo = two_hosts
    # kernel-libipsec needs an address of its own inside each local network.
    for a_net, b_net in case.child_networks(topo)[1:]:
        topo.a.add_lo_address(a_net.replace(".0/24", ".1/24"))
        topo.b.add_lo_address(b_net.replace(".0/24", ".1/24"))
    converted = _import_swanctl(case.charon_conf(topo), tmp_path / "swanctl")
    daemon = (f'[daemon]\nlisten = ["{topo.addr_b}"]\n'
              f'dataplane = "{"userspace" if case.traffic else "none"}"\n\n')
    ours = Ikev1dDaemon(topo.b, tmp_path / "ikev1d", daemon + converted)
    ours.start()
    try:
        peer = charon_factory(topo.a, "a")
        peer.load_config(case.peer_conf(topo))
        # Both directions across the cases; several children come up from ikev1d's `up`.
        we_initiate = CASES.index(case) % 2 == 0 or case.children > 1
        if we_initiate:
            result = ours.up("gw", timeout=30)
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            ok, out = peer.initiate("net", "gw")
            assert ok, out + ours.log_text()[-3000:]

        (ike,) = ours.status()["ike_sas"]
        theirs = peer.wait_for(
            lambda sas: len(sas) == 1 and len(sas[0]["children"]) == case.children)
        (their_ike,) = theirs
        assert ike["state"] == "ESTABLISHED" and their_ike["state"] == "ESTABLISHED"
        assert ike["initiator"] is we_initiate
        assert ike["cookies"] == f"{their_ike['initiator-spi']}:{their_ike['responder-spi']}"
        assert len(ike["children"]) == case.children
        theirs_by_spi = {c["spi-out"]: c for c in their_ike["children"]}
        for child in ike["children"]:
            assert child["state"] == "INSTALLED" and child["encap"] is True
            their_child = theirs_by_spi[child["spi_in"]]
            assert their_child["state"] == "INSTALLED"
            assert their_child["spi-in"] == child["spi_out"]
        if case.traffic:
            assert ping(topo.b, topo.inner_addr_a, src=topo.inner_addr_b, count=2) == (2, 2)
    finally:
        assert ours.stop() == 0, ours.log_text()[-3000:]

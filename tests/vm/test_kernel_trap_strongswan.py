"""``start_action = "trap"`` with ``dataplane = "kernel"`` against strongSwan (inside the VM).

ikev1d in A installs the child's policies without SA; the first ping from A's
inner address makes A's kernel send XFRM_MSG_ACQUIRE, ikev1d negotiates the
child with charon (kernel-netlink in B) and the next echoes are answered through
real kernel ESP. After ``down`` the policies stay (the trap is configured), and
the next ping brings the tunnel up again; SIGTERM removes everything.
"""

from __future__ import annotations

import time
from pathlib import Path

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import swanctl_conf

from .conftest import xfrm
from .test_kernel_dataplane_strongswan import IKE, PSK, _ping, _policies, _start_charon, _states


def _ping_until_answered(topo: Topology, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _ping(topo.a, "10.2.0.1", "10.1.0.1", count=1) != 1:
        assert time.monotonic() < deadline, "no echo came back through the trap"


def test_start_action_trap_acquires_through_the_kernel(two_hosts: Topology,
                                                       tmp_path: Path) -> None:
    topo = two_hosts
    esp = "aes128gcm16"
    ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", ikev1d_conf(
        "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK, [IKE], [esp],
        "10.1.0.0/24", "10.2.0.0/24", dataplane="kernel", retransmit_timeout="3s",
    ).replace("[connections.gw]\n", '[connections.gw]\nstart_action = "trap"\n', 1))
    ours.start(timeout=180)
    theirs = _start_charon(topo.b, tmp_path / "charon")
    try:
        theirs.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK, [IKE], [esp],
            "10.2.0.0/24", "10.1.0.0/24", encap=False))
        # The trap: three policies with our template, no state, nothing negotiated.
        policies = xfrm(topo.a, "policy")
        assert "src 10.1.0.0/24 dst 10.2.0.0/24" in policies, policies
        assert len(_policies(topo.a)) == 3 and _states(topo.a) == {}
        assert theirs.list_sas() == []
        _ping_until_answered(topo, 120)
        log = ours.log_text()
        assert "acquire for gw/net: initiating" in log, log[-3000:]
        assert len(_states(topo.a)) == 2
        assert _ping(topo.a, "10.2.0.1", "10.1.0.1", count=3) == 3
        # down: the SAs go, the configured trap stays, and traffic brings them back.
        assert ours.down("gw").returncode == 0
        assert _states(topo.a) == {} and len(_policies(topo.a)) == 3
        _ping_until_answered(topo, 120)
        assert ours.log_text().count("acquire for gw/net: initiating") == 2
    finally:
        code = ours.stop(timeout=30)
        theirs.stop()
    assert code == 0, ours.log_text()[-3000:]
    assert _states(topo.a) == {} and _policies(topo.a) == []

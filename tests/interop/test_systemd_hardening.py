"""The daemon under the capability bounding set and no_new_privs of contrib/ikev1d.service.

This machine does not run systemd as PID 1, so the unit itself cannot be started
here; ``setpriv`` applies the same CapabilityBoundingSet= and NoNewPrivileges= to
an ``ikev1d daemon`` with the userspace data plane (TUN device, raw ESP socket,
UDP port 500, routes over netlink), which then carries traffic to a second
ikev1d. Without CAP_NET_RAW, which the unit grants, it cannot start.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, LabDaemonError, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.ping import ping

from .test_dataplane_ikev1d import PSK

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing"),
]

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "ikev1d.service"


def unit_capabilities() -> list[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return [c.removeprefix("CAP_").lower() for c in line.split("=", 1)[1].split()]
    raise AssertionError("no CapabilityBoundingSet= in the unit")


class ConfinedDaemon(Ikev1dDaemon):
    def __init__(self, ns: Namespace, work_dir: Path, config_text: str,
                 capabilities: list[str]) -> None:
        super().__init__(ns, work_dir, config_text)
        self.capabilities = capabilities

    def _cli(self) -> list[str]:
        bounding = ",".join(["-all", *(f"+{c}" for c in self.capabilities)])
        return ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all",
                "--no-new-privs", *super()._cli()]


def conf(topo: Topology, side: str) -> str:
    if side == "a":
        return ikev1d_conf("gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
                           ["aes128-sha256-modp2048"], ["aes128gcm16"], topo.inner_net_a,
                           topo.inner_net_b, dataplane="userspace")
    return ikev1d_conf("gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
                       ["aes128-sha256-modp2048"], ["aes128gcm16"], topo.inner_net_b,
                       topo.inner_net_a, dataplane="userspace")


def test_daemon_runs_with_the_units_capabilities_only(two_hosts: Topology,
                                                      tmp_path: Path) -> None:
    topo = two_hosts
    caps = unit_capabilities()
    assert sorted(caps) == ["net_admin", "net_bind_service", "net_raw"]

    without_raw = ConfinedDaemon(topo.a, tmp_path / "no-raw", conf(topo, "a"),
                                 [c for c in caps if c != "net_raw"])
    with pytest.raises(LabDaemonError, match=r"(?i)raw|permitted|permission"):
        without_raw.start()
    without_raw.stop()

    a = ConfinedDaemon(topo.a, tmp_path / "a", conf(topo, "a"), caps)
    b = Ikev1dDaemon(topo.b, tmp_path / "b", conf(topo, "b"))
    try:
        a.start()
        b.start()
        status = topo.a.run(["cat", f"/proc/{a.process.pid}/status"]).stdout \
            if a.process else ""
        # setpriv execs the interpreter: the daemon's own process has the reduced set.
        cap_bnd = next(line for line in status.splitlines() if line.startswith("CapBnd:"))
        assert int(cap_bnd.split()[1], 16) == (1 << 12) | (1 << 13) | (1 << 10), cap_bnd
        assert a.up("gw").returncode == 0
        assert ping(topo.a, topo.inner_addr_b, src=topo.inner_addr_a, count=3) == (3, 3)
        assert a.cli("reload").returncode == 0
    finally:
        codes = [d.stop() for d in (a, b)]
    assert codes == [0, 0], a.log_text()[-2000:]

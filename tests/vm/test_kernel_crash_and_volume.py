"""The kernel data plane after a SIGKILL, and life_bytes as XFRM byte lifetimes (inside the VM).

ikev1d in namespace A with ``dataplane = "kernel"``, strongSwan's charon with
kernel-netlink in B (the setup of test_kernel_dataplane_strongswan.py).

* SIGKILL with the tunnel up leaves ikev1d's SAs and policies in A's kernel (the
  stale policies would blackhole the tunnel and make the next install fail with
  EEXIST). The restarted daemon removes exactly those (an SA and a policy of another
  daemon stay), the tunnel comes back, and ``ip xfrm state/policy`` shows exactly the
  new SAs and their policies.
* ``life_bytes``: the SAs carry the soft and hard byte limits; the kernel's soft
  expiry makes ikev1d renew the SA, and traffic continues on the new one.
"""

from __future__ import annotations

import re

from .test_kernel_dataplane_strongswan import (  # noqa: F401  (make_tunnel: a fixture)
    FOREIGN_SPI,
    MakeTunnel,
    _add_foreign_entries,
    _children,
    _inner_addr,
    _ping,
    _ping_both_ways,
    _policies,
    _states,
    _wait,
    make_tunnel,
)


def test_sigkill_then_restart_removes_the_leftovers_and_the_tunnel_comes_back(
    make_tunnel: MakeTunnel,  # noqa: F811  (the fixture imported above)
) -> None:
    tunnel = make_tunnel([("net", "aes128gcm16")])
    topo = tunnel.topo
    _add_foreign_entries(topo.a, topo.addr_a)
    foreign_policies = _policies(topo.a)
    result = tunnel.ours.up("gw", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    _ping_both_ways(tunnel)
    old = _children(tunnel)["net"]
    old_spis = {old["spi_in"], old["spi_out"]}
    assert set(_states(topo.a)) == old_spis | {FOREIGN_SPI}
    for text in (_states(topo.a)[spi]["text"] for spi in old_spis):
        assert "reqid 488439809(0x1d1d0001) " in text, text  # ikev1d's reqid range

    process = tunnel.ours.process
    assert process is not None
    process.kill()
    process.wait()
    # What a killed daemon leaves: its SAs and policies, still matching the traffic.
    assert set(_states(topo.a)) == old_spis | {FOREIGN_SPI}
    assert len(_policies(topo.a)) == len(foreign_policies) + 3

    tunnel.ours.start(timeout=90)
    assert tunnel.ours.wait_log("removed what a previous run left behind", timeout=30)
    assert set(_states(topo.a)) == {FOREIGN_SPI}
    assert _policies(topo.a) == foreign_policies

    result = tunnel.ours.up("gw", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + tunnel.ours.log_text()[-3000:]
    _ping_both_ways(tunnel)
    new = _children(tunnel)["net"]
    new_spis = {new["spi_in"], new["spi_out"]}
    assert not new_spis & old_spis
    # Exactly the new SAs and their three policies, and the other daemon's entries.
    assert set(_states(topo.a)) == new_spis | {FOREIGN_SPI}
    ours = [p for p in _policies(topo.a) if p not in foreign_policies]
    assert len(ours) == 3 and len(_policies(topo.a)) == len(foreign_policies) + 3
    assert "File exists" not in tunnel.ours.log_text()


def test_life_bytes_are_kernel_byte_lifetimes_and_the_soft_one_renews(
    make_tunnel: MakeTunnel,  # noqa: F811  (the fixture imported above)
) -> None:
    tunnel = make_tunnel([("net", "aes128gcm16")])
    topo = tunnel.topo
    # life_bytes for the child: set in the config before the daemon reads it again.
    text = tunnel.ours.config_path.read_text()
    tunnel.ours.config_path.write_text(
        text.replace('mode = "tunnel"\n', 'mode = "tunnel"\nlife_bytes = 40000\n', 1))
    assert tunnel.ours.cli("reload").returncode == 0
    result = tunnel.ours.up("gw", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    first = _children(tunnel)["net"]
    block = _states(topo.a)[first["spi_out"]]["text"]
    limits = re.search(r"limit: soft (\d+)\(bytes\), hard (\d+)\(bytes\)", block)
    assert limits is not None, block
    soft, hard = int(limits.group(1)), int(limits.group(2))
    assert hard == 40000 and 34000 <= soft <= 36000
    # ~1 kB echo requests at 5/s from A: the soft limit comes after ~35 of them.
    a, b = _inner_addr(1, 0), _inner_addr(2, 0)
    received = topo.a.run(["busybox", "ping", "-c", "60", "-i", "0.2", "-s", "1000",
                           "-W", "5", "-I", a, b], check=False, timeout=120).stdout
    assert tunnel.ours.wait_log("life_bytes nearly reached: renewing", timeout=30)
    _wait(lambda: _children(tunnel)["net"]["spi_in"] != first["spi_in"], 60, "a renewed SA")
    assert _ping(topo.a, b, a) == 3
    match = re.search(r"(\d+) packets received", received)
    assert match is not None and int(match.group(1)) >= 50, received

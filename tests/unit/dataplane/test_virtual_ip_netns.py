"""A virtual IP on the userspace data plane's TUN device carries real traffic (root, namespaces).

Two hosts on a veth link, each running the userspace data plane with one
hand-made SA pair. Client A has only its outer address; the virtual IP
10.3.0.7 goes onto its TUN device and its SA covers 10.3.0.7/32 only. An
ordinary ``ping 10.2.0.1`` on A (no source chosen) is answered only if the
kernel picked the virtual IP as source: from any other address (such as the
virtual IP of another ISAKMP SA on the same device) A finds no SA, and B's SA
admits nothing else (RFC 4301 §5.2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ikev1d_lab.netns import netns_available, two_hosts
from ikev1d_lab.ping import ping

_SIDE = """
import asyncio, ipaddress, subprocess, sys
from ikev1d.dataplane.userspace import create_backend
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished
net = ipaddress.ip_network
side = sys.argv[1]
k1, k2 = bytes(range(20)), bytes(range(20, 40))
a, b = ("192.0.2.1", 500), ("192.0.2.2", 500)
if side == "a":
    local, remote, lts, rts, kin, kout, spis = (
        a, b, "10.3.0.7/32", "10.2.0.0/24", k1, k2, (0xC1, 0xC2))
else:
    local, remote, lts, rts, kin, kout, spis = (
        b, a, "10.2.0.0/24", "10.3.0.7/32", k2, k1, (0xC2, 0xC1))
sa = ChildSaEstablished("rw", "net", 1, 1, spis[0], spis[1], "aes128gcm16", "aesgcm", 128, 16,
                        None, "tunnel", False, local, remote, (net(lts),), (net(rts),), kin, kout)

async def main() -> None:
    backend = create_backend()
    backend.attach(lambda data, l, r: None, asyncio.get_running_loop())
    if side == "a":
        # Another ISAKMP SA's virtual IP first: it becomes the TUN device's primary
        # address, which the kernel would pick without the route's src.
        backend.add_virtual_ip(2, ipaddress.ip_address("10.4.0.9"), ())
        backend.add_virtual_ip(1, ipaddress.ip_address("10.3.0.7"), ())
    backend.install(sa)
    print("ADDR", subprocess.run(["ip", "-o", "addr", "show", "dev", backend.tun.name],
                                 capture_output=True, text=True).stdout.strip(), flush=True)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    backend.remove(ChildSaDeleted("rw", "net", 1, 1, spis[0], spis[1], "test"))
    if side == "a":
        backend.remove_virtual_ip(1, ipaddress.ip_address("10.3.0.7"))
        backend.remove_virtual_ip(2, ipaddress.ip_address("10.4.0.9"))
    print("AFTER", subprocess.run(["ip", "-o", "addr", "show", "dev", backend.tun.name],
                                  capture_output=True, text=True).stdout.strip(), flush=True)
    backend.close()

asyncio.run(main())
"""


def test_ping_from_the_virtual_ip_through_the_tun_device() -> None:
    ok, why = netns_available()
    if not ok or os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip(why or "needs root and /dev/net/tun")
    root = str(Path(__file__).resolve().parents[3])
    with two_hosts(inner_a=None) as topo:
        procs = {}
        try:
            for side, ns in (("a", topo.a), ("b", topo.b)):
                procs[side] = ns.popen([sys.executable, "-c", _SIDE, side], cwd=root,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            lines: dict[str, list[str]] = {"a": [], "b": []}
            for side, proc in procs.items():
                assert proc.stdout is not None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    lines[side].append(line)
                    if line.startswith("READY"):
                        break
                assert any(x.startswith("READY") for x in lines[side]), (
                    lines[side], proc.stderr.read() if proc.stderr else "")
            assert "inet 10.3.0.7/32" in "".join(lines["a"])
            route = topo.a.run(["ip", "route", "get", "10.2.0.1"]).stdout
            assert "src 10.3.0.7" in route, route
            # No source given: the route's src (the virtual IP) is what makes it work.
            assert ping(topo.a, "10.2.0.1", count=2) == (2, 2)
        finally:
            outs = {}
            for side, proc in procs.items():
                outs[side] = proc.communicate("\n", timeout=30)[0]
        after = outs["a"].split("AFTER", 1)[1]
        assert "10.3.0.7" not in after and "10.4.0.9" not in after, outs["a"]


_KERNEL = """
import ipaddress, os, sys
sys.path.insert(0, sys.argv[3])
from ikev1d.dataplane.kernel import KernelBackend
from ikev1d.dataplane.linux.xfrm import RouteSocket
from tests.unit.dataplane.test_kernel import FakeXfrm
backend = KernelBackend(FakeXfrm(), routes=RouteSocket())
backend.recover(sys.argv[2])
if sys.argv[1] == "crash":
    backend.add_virtual_ip(1, ipaddress.ip_address("10.3.0.7"), ())
    backend.add_virtual_ip(2, ipaddress.ip_address("10.3.0.8"), ())  # the host has it
    os._exit(0)  # no cleanup at all, as after SIGKILL
backend.close()
"""


def test_kernel_virtual_ip_on_lo_is_removed_after_a_crash(tmp_path: Path) -> None:
    ok, why = netns_available()
    if not ok or os.geteuid() != 0:
        pytest.skip(why or "needs root")
    root = str(Path(__file__).resolve().parents[3])
    state = str(tmp_path / "ikev1d.kernel-dataplane.json")
    with two_hosts(inner_a="10.3.0.8/32") as topo:
        run = topo.a.run
        crashed = run([sys.executable, "-c", _KERNEL, "crash", state, root], check=False)
        assert crashed.returncode == 0, crashed.stderr
        lo = run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        assert "10.3.0.7/32" in lo and "10.3.0.8/32" in lo, lo
        again = run([sys.executable, "-c", _KERNEL, "restart", state, root], check=False)
        assert again.returncode == 0, again.stderr
        lo = run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        # Ours (proto 73, recorded) is gone; the administrator's stays.
        assert "10.3.0.7/32" not in lo and "10.3.0.8/32" in lo, lo

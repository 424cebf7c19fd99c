"""Fixtures for the kernel data plane tests, which run only inside the VM.

The host kernel has XFRM but no ESP, so these tests are collected everywhere
but skipped unless ``IKEV1D_VM_GUEST=1`` (set by tests/vm/guest.sh, which
``make test-kernel`` / scripts/run-vm-tests.sh boot under qemu).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from ikev1d_lab import netns
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import strongswan_available


@pytest.fixture(autouse=True, scope="session")
def _in_vm_guest() -> None:
    if os.environ.get("IKEV1D_VM_GUEST") != "1":
        pytest.skip("kernel ESP tests run inside the VM: make test-kernel")
    ok, reason = netns.netns_available()
    if not ok:
        pytest.fail(f"the VM guest cannot create namespaces: {reason}")
    ok, reason = strongswan_available()
    if not ok:
        pytest.fail(f"strongSwan is missing in the VM guest: {reason}")


@pytest.fixture
def two_hosts() -> Iterator[Topology]:
    """A (192.0.2.1, inner 10.1.0.1/24 on lo) <-veth-> B (192.0.2.2, inner 10.2.0.1/24)."""
    with netns.two_hosts() as topo:
        yield topo


def xfrm(ns: netns.Namespace, *args: str) -> str:
    """``ip -s xfrm ARGS`` inside ``ns``."""
    proc = subprocess.run([*ns.exec_prefix(), "ip", "-s", "xfrm", *args],
                          capture_output=True, text=True, check=True, timeout=30)
    return proc.stdout

"""A slice of bench/handshakes.py --peers: twelve strongSwan peers, each from its own
address with a pre-shared key of its own, bring up two tunnels each to an ikev1d
gateway holding one connection and one key per peer. A key looked up for the wrong
peer fails that peer's handshakes, so the run is ok only if ikev1d found every peer's
connection and key by its address (from the configuration's indexes). Each ISAKMP
SA must also be held under its own peer's connection: the peers' connections are
alike, so a first message answered from another peer's decision could otherwise
carry that peer's connection over.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

BENCH = Path(__file__).resolve().parents[2] / "bench" / "handshakes.py"
PEERS = 12
TUNNELS = 24


def test_twelve_static_peers_each_with_its_own_key(require_root_netns: None) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tunnels", str(TUNNELS), "--peers", str(PEERS),
         "--repeat", "1", "--auth", "psk", "--groups", "ecp256", "--responders", "ikev1d",
         "--timeout", "20", "--keep"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"from {PEERS} peer addresses" in output, output
    assert f"ikev1d(userspace): ok, {TUNNELS}/{TUNNELS} in" in output, output
    kept = re.search(r"logs kept in (\S+)", output)
    assert kept is not None, output
    work = Path(kept.group(1))
    try:
        established = [
            (m.group(1), m.group(2))
            for log in work.glob("*/ikev1d/ikev1d.log")
            for m in re.finditer(r"\[(\S+) ([\d.]+):\d+\] ISAKMP SA established",
                                 log.read_text())
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert len(established) == TUNNELS, established
    # Peer j (handshakes.py peer_address) has the connection p<j>.
    assert all(address == f"198.18.0.{int(conn[1:]) + 1}" for conn, address in established), \
        established

"""A slice of bench/roadwarriors.py: five strongSwan road warriors (one charon, five
connections with their own IDs and XAUTH users) do Main Mode + XAUTH + Mode Config pull
+ Quick Mode against an ikev1d server. The script exits 0 only when the server holds five
ISAKMP SAs with installed IPsec SAs and five distinct virtual IPs from its pool, and the
client's charon names the same five addresses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

BENCH = Path(__file__).resolve().parents[2] / "bench" / "roadwarriors.py"
CLIENTS = 5


def test_five_road_warriors_get_five_distinct_virtual_ips(require_root_netns: None) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--clients", str(CLIENTS), "--responders", "ikev1d",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"round 1 ikev1d: ok, {CLIENTS}/{CLIENTS} in" in output, output

"""A slice of bench/handshakes.py --shards: three ikev1d daemons, each on an address of
its own, share one strongSwan initiator's connections. Each daemon listens on its
address only, so a shard's log holding its share of the ISAKMP SAs shows that the
initiator's connections were spread over the addresses as the benchmark says; the
shards' CPU cgroup is gone after the run.
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
SHARDS = 3
TUNNELS = 12


def test_three_shards_share_the_connections(require_root_netns: None) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tunnels", str(TUNNELS), "--shards", str(SHARDS),
         "--repeat", "1", "--auth", "psk", "--groups", "ecp256", "--responders", "ikev1d-none",
         "--timeout", "20", "--keep"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"ikev1d(none)x{SHARDS}: ok, {TUNNELS}/{TUNNELS} in" in output, output
    assert f"ikev1d(none): ok, {TUNNELS}/{TUNNELS} in" in output, output
    assert "no CPU cgroup" not in output, output
    kept = re.search(r"logs kept in (\S+)", output)
    assert kept is not None, output
    work = Path(kept.group(1))
    try:
        shards = sorted(work.glob(f"*x{SHARDS}*/ikev1d-*/ikev1d.log"))
        established = [len(re.findall(r"ISAKMP SA established", log.read_text()))
                       for log in shards]
        leftovers = [p for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))
                     if root.is_dir() for p in root.glob(f"{work.name}-*")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert len(shards) == SHARDS, shards
    assert established == [TUNNELS // SHARDS] * SHARDS, established
    assert leftovers == [], leftovers

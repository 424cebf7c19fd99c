"""A paced UDP flow through a tunnel: how many datagrams were lost, and the longest outage.

The sender (in one namespace) sends ``pps`` datagrams a second for ``seconds``,
each carrying its sequence number and the time it was sent (CLOCK_REALTIME, one
clock for all namespaces of the host). The receiver (in the other) takes the
kernel's receive timestamp of each (SO_TIMESTAMPNS: when the datagram reached its
socket, so the receiving script's own scheduling does not count). From that:

* ``lost``: sent minus distinct sequence numbers received;
* ``max_gap_ms``: the longest time the receiver waited between two datagrams
  beyond what the sender itself took, i.e. between consecutive arrivals k, m
  (m > k): ``(arrival_m - arrival_k) - max(0, (sent_m - sent_k) - (m - k) / pps)``.
  A tunnel that delivers nothing for 80 ms while the sender keeps its pace shows
  80 ms; a sender that was not scheduled for 80 ms (a loaded machine) does not
  count against the tunnel, since its own lateness is subtracted;
* ``gaps``: every such wait longer than ``gap_floor_ms``, with the receive times
  that bound it (CLOCK_REALTIME), so a caller can set each beside what else happened
  then (e.g. a renewal's IKE messages on the wire).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ikev1d_lab.netns import Namespace

__all__ = ["FlowResult", "Gap", "analyse", "run_flow"]

#: At most this many gaps are reported per flow (the longest ones), so that a
#: flow through a broken tunnel still prints a bounded result.
MAX_GAPS = 500


@dataclass(frozen=True)
class Gap:
    """The receiver waited ``ms`` beyond the sender's own lateness between the
    arrivals at ``start`` and ``end`` (epoch seconds, kernel receive timestamps)."""

    start: float
    end: float
    ms: float


def analyse(arrivals: Sequence[tuple[int, float, float]], pps: float,
            gap_floor_ms: float) -> dict[str, Any]:
    """The receiver's summary of ``(sequence, sent, received)`` triples in arrival
    order (run in the receiving namespace; see the module text for the gap)."""
    interval = 1.0 / pps
    max_gap = 0.0
    gap_at = 0.0
    reordered = 0
    gaps: list[tuple[float, float, float]] = []
    prev: tuple[int, float, float] | None = None
    t0 = arrivals[0][2] if arrivals else 0.0
    for seq, sent, now in arrivals:
        if prev is not None:
            pseq, psent, pnow = prev
            if seq < pseq:
                reordered += 1
                continue
            sender_late = max(0.0, (sent - psent) - (seq - pseq) * interval)
            gap = (now - pnow) - sender_late
            if gap > max_gap:
                max_gap, gap_at = gap, pnow - t0
            if gap * 1000 > gap_floor_ms:
                gaps.append((pnow, now, gap * 1000))
        prev = (seq, sent, now)
    if len(gaps) > MAX_GAPS:
        gaps = sorted(sorted(gaps, key=lambda g: -g[2])[:MAX_GAPS])
    return {"received": len(arrivals), "unique": len({a[0] for a in arrivals}),
            "reordered": reordered, "max_gap_ms": max_gap * 1000, "gap_at_s": gap_at,
            "t0": t0, "gaps": gaps}


_RECEIVER = r"""
import json, socket, struct, sys, threading, time
from ikev1d_lab.udpflow import analyse
addr, port, pps, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
gap_floor_ms = float(sys.argv[5])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS: struct timespec, CLOCK_REALTIME
s.bind((addr, port)); s.settimeout(0.2)
# The parent writes a line once the sender has finished; until then a silent
# tunnel (a peer not scheduled for seconds) is an outage to measure, not the end.
sender_done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), sender_done.set()), daemon=True).start()
stamp = struct.Struct("@qq")
print("READY", flush=True)
head = struct.Struct("!Qd")
arrivals = []
end = time.monotonic() + deadline; last = None
while time.monotonic() < end:
    try:
        data, anc, _flags, _addr = s.recvmsg(65536, 64)
    except TimeoutError:
        if sender_done.is_set() and time.monotonic() - (last or 0.0) > 1.0:
            break
        continue
    last = time.monotonic()
    now = time.time()
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == 35 and len(value) >= stamp.size:
            sec, nsec = stamp.unpack_from(value); now = sec + nsec / 1e9
    seq, sent = head.unpack_from(data)
    arrivals.append((seq, sent, now))
print(json.dumps(analyse(arrivals, pps, gap_floor_ms)), flush=True)
"""

_SENDER = r"""
import socket, struct, sys, time
src, dst, port, pps, size, seconds = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                      float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
s.bind((src, 0)); s.connect((dst, port))
head = struct.Struct("!Qd")
pad = bytes(max(0, size - head.size))
seq = 0; errors = 0
t0 = time.monotonic(); total = int(pps * seconds)
while seq < total:
    due = min(total, int((time.monotonic() - t0) * pps) + 1)
    while seq < due:
        try:
            s.send(head.pack(seq, time.time()) + pad)
        except OSError:
            errors += 1  # e.g. no route for a moment: a lost datagram like any other
        seq += 1
    time.sleep(min(0.001, max(0.0, t0 + seq / pps - time.monotonic())))
print(f"SENT {seq} ERRORS {errors} IN {time.monotonic() - t0:.3f}", flush=True)
"""


@dataclass(frozen=True)
class FlowResult:
    sent: int
    received: int
    unique: int
    reordered: int
    max_gap_ms: float
    gap_at_s: float  # seconds into the flow where the longest gap began
    send_errors: int
    seconds: float
    t0: float = 0.0  # epoch seconds of the first arrival
    gaps: tuple[Gap, ...] = ()  # every gap over the floor asked for, in order

    @property
    def lost(self) -> int:
        return self.sent - self.unique

    @property
    def lost_percent(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else float("nan")


def run_flow(
    sender: Namespace, receiver: Namespace, src: str, dst: str, port: int,
    *, pps: float, size: int, seconds: float, gap_floor_ms: float = 50.0,
) -> FlowResult:
    """Run one flow from ``src`` (in ``sender``) to ``dst``:``port`` (in ``receiver``);
    its result lists the gaps longer than ``gap_floor_ms``."""
    rx = receiver.popen([sys.executable, "-c", _RECEIVER, dst, str(port), str(pps),
                         str(seconds + 60), str(gap_floor_ms)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    try:
        if rx.stdout is None or rx.stdout.readline().strip() != "READY":
            raise RuntimeError(f"UDP receiver did not start: {rx.communicate(timeout=5)}")
        tx = sender.run([sys.executable, "-c", _SENDER, src, dst, str(port), str(pps),
                         str(size), str(seconds)], check=False, timeout=seconds + 60)
        words = tx.stdout.split()
        if len(words) != 6 or words[0] != "SENT":
            raise RuntimeError(f"UDP sender failed: {tx.stdout}{tx.stderr}")
        # The receiver drains what is still on its way, then reports.
        out, err = rx.communicate(input="done\n", timeout=40)
        summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        if summary is None:
            raise RuntimeError(f"UDP receiver failed: {err}")
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    return FlowResult(
        sent=int(words[1]), received=int(summary["received"]), unique=int(summary["unique"]),
        reordered=int(summary["reordered"]), max_gap_ms=float(summary["max_gap_ms"]),
        gap_at_s=float(summary["gap_at_s"]), send_errors=int(words[3]),
        seconds=float(words[5]), t0=float(summary["t0"]),
        gaps=tuple(Gap(float(a), float(b), float(ms)) for a, b, ms in summary["gaps"]),
    )

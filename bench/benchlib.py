"""What the benchmarks share: finding a daemon's pid in a namespace, and py-spy/perf
around it (py-spy is not a project dependency).

``.venv/bin/pip install py-spy``; sampled without ``--gil``, so time spent in
system calls (TUN reads/writes, sendmsg) counts as well: it is CPU time of the
data plane, spent in the kernel on the daemon's behalf.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ikev1d_lab.netns import Namespace


def start_profiler(pid: int, out: Path, native: bool = False) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of `pid` into `out` (collapsed stacks); None if py-spy is missing."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found; no profile (pip install py-spy into .venv)", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
           "--nonblocking", "--output", str(out)]
    if native:
        cmd.remove("--nonblocking")  # --native needs to pause the process to unwind C stacks
        cmd.append("--native")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return proc


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes the profile and exits
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _frame(text: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    if " (" not in text:
        return text
    func, _, where = text.partition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})"


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """Top functions by self and by inclusive time from py-spy's collapsed stacks."""
    if not path.exists():
        return [f"(no profile at {path})"]
    self_t: collections.Counter[str] = collections.Counter()
    incl_t: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl_t[f] += count
    if total == 0:
        return ["(empty profile)"]
    lines = [f"{total} samples; self time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_t.most_common(top)]
    lines.append("inclusive time:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl_t.most_common(top)]
    return lines


# --- perf (kernel and C frames: where the system calls and OpenSSL time go) ----------------

# Inclusive-time entry points worth showing: the data plane's system calls and the crypto.
# (Not the interpreter's: libpython has no frame pointers, so its call chains are cut short;
# its self time by binary is the figure to read.)
_PERF_SYMBOLS = (
    "__libc_sendmsg", "read", "__GI___libc_write", "__libc_recvfrom", "epoll_wait",
    "__GI___getrandom", "tun_get_user", "tcp_v4_rcv", "net_rx_action", "schedule",
    "_aesni_ctr32_ghash_6x", "aesni_cbc_encrypt",
    "sha256_block_data_order_shaext",
)  # fmt: skip


def start_perf(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """``perf record -g`` of `pid` for `seconds` into `out`; None if perf is missing."""
    perf = shutil.which("perf")
    if perf is None:
        print("perf not found; no kernel profile (apt-get install linux-perf)", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [perf, "record", "-F", "499", "-g", "-p", str(pid), "-o", str(out),
         "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _perf_report(path: Path, *args: str) -> list[str]:
    proc = subprocess.run(
        ["perf", "report", "-i", str(path), "--stdio", "-g", "none", *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    return [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("#")]


def perf_summary(path: Path) -> list[str]:
    """Self time by binary (kernel, interpreter, OpenSSL...) and inclusive time of entry points."""
    if not path.exists():
        return [f"(no perf data at {path})"]
    lines = ["self time by binary:"]
    lines += [f"  {ln.strip()}" for ln in _perf_report(path, "--no-children", "--sort", "dso")[:6]]
    lines.append("inclusive time (children) of system calls and crypto:")
    for ln in _perf_report(path, "--children", "--sort", "sym"):
        fields = ln.split()
        if fields and fields[-1] in _PERF_SYMBOLS:
            lines.append(f"  {fields[0]:>8}  {fields[-1]}")
    return lines


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def find_pid(ns: Namespace, comm_prefix: str, hint: int | None = None) -> int:
    """The pid of the process named `comm_prefix`* in `ns` (prefer `hint` if it matches)."""
    if hint is not None and _comm(hint).startswith(comm_prefix):
        return hint
    for pid in ns.pids():
        if _comm(pid).startswith(comm_prefix):
            return pid
    raise RuntimeError(f"no process {comm_prefix!r} in {ns.name}")

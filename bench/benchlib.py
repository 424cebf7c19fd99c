"""What the benchmarks share: a daemon's pid and CPU time, charon as load generator
(N connections initiated over vici with a window), log summaries, and py-spy/perf
around a daemon (py-spy is not a project dependency).

``.venv/bin/pip install py-spy``; sampled without ``--gil``, so time spent in
system calls (TUN reads/writes, sendmsg) counts as well: it is CPU time of the
data plane, spent in the kernel on the daemon's behalf.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vici

from ikev1d.engine.api import Network
from ikev1d_lab.netns import Namespace
from ikev1d_lab.strongswan import Charon, strongswan_conf

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- process CPU time -----------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of process `pid`, all its threads, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5), counted from 1
    return utime / _CLK_TCK, stime / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads)."""
    return sum(cpu_times(pid))


def runqueue_wait(pid: int) -> float:
    """Seconds the threads of process `pid` spent runnable but waiting for a CPU (the second
    field of /proc/PID/task/TID/schedstat, in ns): on a shared box, how much of a run's wall
    time a process lost to other load rather than to its own work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def own_cpu() -> float:
    """CPU seconds of this process (the vici driver threads), for context."""
    t = os.times()
    return t.user + t.system


# --- charon as load generator and as responder ------------------------------------------


def charon_tuning(threads: int) -> str:
    """strongswan.conf lines (inside charon {}) for many SAs, used on both charons.

    The IKE SA table defaults to a single bucket (a linear list); sized as
    strongSwan's load-tester documentation recommends.  No routes: nothing
    is ever sent through the tunnels, and kernel-libipsec would add one per SA.
    """
    return (
        f"  threads = {threads}\n"
        "  install_routes = no\n"
        "  ikesa_table_size = 4096\n"
        "  ikesa_table_segments = 16\n"
        "  init_limit_half_open = 0\n"
        "  block_threshold = 1000000\n"
    )


def start_charon(
    ns: Namespace, work_dir: Path, load: str, threads: int, log_level: int, extra: str = ""
) -> Charon:
    charon = Charon(ns, work_dir, start=False)
    charon.conf_path.write_text(
        strongswan_conf(
            charon.work_dir,
            {"default": log_level},
            load=load,
            extra=charon_tuning(threads) + extra,
        )
    )
    charon.start()
    return charon


@contextlib.contextmanager
def _vici_session(path: Path, timeout: float) -> Iterator[Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Blocking connect: charon's vici socket has a short listen backlog.
        sock.connect(str(path))
        sock.settimeout(timeout)
        yield vici.Session(sock)
    finally:
        sock.close()


@dataclass(frozen=True)
class DriveResult:
    succeeded: int
    seconds: float
    errors: list[str]
    latencies: list[float]  # seconds per successful initiate (Main Mode + Quick Mode)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def drive(
    initiator: Charon, names: Sequence[str], child: str, window: int, timeout: float,
    rate: float | None = None,
) -> DriveResult:
    """Initiate child `child` of connections `names` with at most `window` handshakes in
    flight; with `rate`, also at most `rate` initiates per second, on a fixed schedule
    (initiate i not before start + i / rate), so that responders that both keep up see
    the same arrival pattern whatever their speed.

    Each ``initiate`` returns at once (vici ``timeout = -1``), so no charon
    worker thread waits on it; completion comes from vici events on a second
    session: ``child-updown`` with ``up`` ends a tunnel's handshake, an
    ``ike-updown`` without ``up`` (the IKE SA went down before its IPsec SA
    came up) fails it.  A tunnel still pending `timeout` s after its
    initiate fails too.
    """
    lock = threading.Lock()
    slots = threading.Semaphore(window)
    started: dict[str, float] = {}
    latencies: list[float] = []
    errors: list[str] = []
    all_done = threading.Event()
    stop = threading.Event()

    def finish(name: str, error: str | None) -> None:
        with lock:
            began = started.pop(name, None)
            if began is None:
                return
            if error is None:
                latencies.append(time.monotonic() - began)
            else:
                errors.append(f"{name}: {error}")
            if len(latencies) + len(errors) >= len(names):
                all_done.set()
        slots.release()

    def listen(session: Any) -> None:
        try:
            for event_type, message in session.listen(["ike-updown", "child-updown"], 0.2):
                if stop.is_set():
                    break
                if event_type is None:
                    continue
                fields = {_text(k): v for k, v in message.items()}
                up = _text(fields.pop("up", b"no")) == "yes"
                kind = _text(event_type)
                for name in fields:
                    if kind == "child-updown" and up:
                        finish(name, None)
                    elif kind == "ike-updown" and not up:
                        finish(name, "IKE SA went down before the IPsec SA was established")
        except (vici.exception.SessionException, OSError):
            pass  # closed under us at the end of the run

    with (
        _vici_session(initiator.vici_path, timeout + 30) as control,
        _vici_session(initiator.vici_path, timeout + 30) as events,
    ):
        listener = threading.Thread(target=listen, args=(events,), daemon=True)
        listener.start()
        time.sleep(0.3)  # the listener has registered for the events
        start = time.monotonic()
        for n, name in enumerate(names):
            if rate is not None:
                pause = start + n / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            while not slots.acquire(timeout=1.0):
                _expire(started, lock, timeout, finish)
            with lock:
                started[name] = time.monotonic()
            request = {"child": child, "ike": name, "timeout": -1, "loglevel": 0}
            try:
                for _log in control.initiate(request):
                    pass
            except (vici.exception.CommandException, vici.exception.SessionException) as exc:
                finish(name, f"initiate refused: {exc}")
        while not all_done.wait(1.0):
            _expire(started, lock, timeout, finish)
        elapsed = time.monotonic() - start
        stop.set()
        listener.join(5.0)
    return DriveResult(len(latencies), elapsed, errors, latencies)


def _expire(started: dict[str, float], lock: threading.Lock, timeout: float, finish: Any) -> None:
    """Fail the tunnels whose handshake has been pending for more than `timeout` s."""
    now = time.monotonic()
    with lock:
        late = [name for name, began in started.items() if now - began > timeout]
    for name in late:
        finish(name, f"not established after {timeout:.0f}s")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]



def wait_count(counter: Any, n: int, timeout: float) -> int:
    """Poll `counter()` until it reaches n (QM3 may still be in flight) or timeout."""
    deadline = time.monotonic() + timeout
    count = 0
    while True:
        count = int(counter())
        if count >= n or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


_LOG_LEVEL_RE = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b")


def summarize_log(text: str, limit: int = 8) -> list[str]:
    """Distinct WARNING/ERROR messages of the ikev1d log with counts (numbers masked)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = _LOG_LEVEL_RE.search(line)
        if m is not None:
            key = re.sub(r"[0-9a-f]{8,}|\d+", "#", line[m.start() :])
            counts[key[:160]] += 1
    return [f"{c}x {msg}" for msg, c in counts.most_common(limit)]



def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


GC_PROBE_DIR = Path(__file__).resolve().parent / "gcprobe"


@contextlib.contextmanager
def gc_pauses(prefix: Path | None) -> Iterator[None]:
    """While open (and ``prefix`` is given), ikev1d daemons started from this process
    time the cyclic garbage collector's pauses into ``prefix.PID`` files
    (``gcprobe/sitecustomize.py``)."""
    if prefix is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "IKEV1D_BENCH_GC_LOG")}
    paths = [str(GC_PROBE_DIR), *filter(None, [saved["PYTHONPATH"]])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    os.environ["IKEV1D_BENCH_GC_LOG"] = str(prefix)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def gc_pause_summary(prefix: Path, since: float, until: float) -> str:
    """One line from the files of ``gc_pauses``: per generation the collections that
    began between ``since`` and ``until`` (``time.monotonic()``), their pauses in total
    and the longest (ms)."""
    runs = [[0, 0.0, 0.0] for _ in range(3)]
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        for line in path.read_text(encoding="ascii").splitlines():
            began, generation, ms = (float(x) for x in line.split()[:3])
            if not since <= began <= until:
                continue
            row = runs[int(generation)]
            row[0] += 1
            row[1] += ms
            row[2] = max(row[2], ms)
    return "; ".join(f"{['young', 'middle', 'full'][g]} {int(n)} ({total:.0f} ms, longest "
                     f"{longest:.1f})" for g, (n, total, longest) in enumerate(runs))


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


class NullRoutes:
    """The userspace data plane's routes for in-process benchmarks: nothing is routed;
    ``local`` is the host's address inside every protected network asked about."""

    def __init__(self, local: str) -> None:
        self.local = ipaddress.ip_address(local)

    def local_address_in(self, networks: tuple[Network, ...]) -> str | None:
        return str(self.local) if any(self.local in n for n in networks) else None

    def add(self, network: Network, src: str | None) -> None:
        pass

    def remove(self, network: Network) -> None:
        pass

    def add_bypass(self, peer: str) -> bool:
        return True

    def add_address(self, address: str) -> bool:
        return True

    def remove_address(self, address: str) -> None:
        pass

    def remove_bypass(self, peer: str) -> None:
        pass

    def owned_bypasses(self) -> list[str]:
        return []

    def remove_stale_bypass(self, peer: str) -> bool:
        return False

    def close(self) -> None:
        pass

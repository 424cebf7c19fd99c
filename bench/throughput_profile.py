"""py-spy around a daemon process for bench/throughput.py (py-spy is not a project dependency).

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

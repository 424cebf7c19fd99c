"""Network namespaces and veth pairs for tests, the demo and benchmarks.

Every test host is a Linux network namespace.  Names carry the owning
process id, so two runs on one machine never collide and leftovers of a
crashed run can be recognised (owner pid dead) and removed by
:func:`cleanup_stale`.  Deleting a namespace first kills every process in it
(``ip netns pids``), which also takes down veth ends living in it.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ikev1d_lab.errors import LabError

__all__ = [
    "DEFAULT_PREFIX",
    "Namespace",
    "NetnsError",
    "Topology",
    "cleanup_stale",
    "kill_namespace_processes",
    "netns_available",
    "two_hosts",
    "veth_pair",
]

DEFAULT_PREFIX = "ikv1d"
_COUNTER = itertools.count(1)
_LOCK = threading.Lock()
_LIVE: dict[str, Namespace] = {}
_IP = "ip"


class NetnsError(LabError):
    """An `ip` command needed by the test rig failed."""


def _next_id() -> int:
    with _LOCK:
        return next(_COUNTER)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_IP, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_available() -> tuple[bool, str]:
    """Whether this process may create network namespaces; (ok, reason)."""
    if os.geteuid() != 0:
        return False, "needs root (ip netns add)"
    name = f"{DEFAULT_PREFIX}-{os.getpid()}-{_next_id()}-probe"
    try:
        add = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return False, "iproute2 `ip` not found"
    if add.returncode != 0:
        return False, f"`ip netns add` failed: {add.stderr.strip()}"
    _ip("netns", "delete", name, check=False)
    return True, ""


def namespace_pids(name: str) -> list[int]:
    """Pids of processes whose network namespace is `name`."""
    proc = _ip("netns", "pids", name, check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def kill_namespace_processes(name: str, grace: float = 2.0) -> None:
    """SIGTERM every process in netns `name`, then SIGKILL what is left after `grace` s."""
    pids = namespace_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in namespace_pids(name) if _pid_alive(p)]
    for pid in namespace_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_namespace(name: str) -> None:
    kill_namespace_processes(name)
    # Deleting the netns destroys the veth ends inside it, and with them their peers.
    _ip("netns", "delete", name, check=False)


_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}")
_STALE_RE = re.compile(r"^(?P<prefix>[A-Za-z][A-Za-z0-9_]*)-(?P<pid>\d+)-(?P<n>\d+)(?:-[\w.]+)?$")


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces named `<prefix>-<pid>-...` whose owner pid is dead; return their names.

    Namespaces of live runs (including our own) are left alone.
    """
    removed: list[str] = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _STALE_RE.match(name)
        if m is None or m.group("prefix") != prefix:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        _delete_namespace(name)
        removed.append(name)
    return removed


@atexit.register
def _cleanup_at_exit() -> None:
    for ns in list(_LIVE.values()):
        ns.close()


class Namespace:
    """A uniquely named network namespace, deleted (with its processes) on close.

    ``with Namespace("a") as ns: ns.run(["ip", "addr"])``.  The name is
    ``<prefix>-<pid>-<counter>[-<label>]``.
    """

    def __init__(self, label: str = "", prefix: str = DEFAULT_PREFIX) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"namespace prefix must match {_PREFIX_RE.pattern}, not {prefix!r}")
        if label and not re.fullmatch(r"[\w.]+", label):
            raise ValueError(f"namespace label must be word characters, not {label!r}")
        suffix = f"-{label}" if label else ""
        self.name = f"{prefix}-{os.getpid()}-{_next_id()}{suffix}"
        self._open = False
        self.create()

    def create(self) -> None:
        _ip("netns", "add", self.name)
        self._open = True
        _LIVE[self.name] = self
        try:
            self.run([_IP, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    @property
    def is_open(self) -> bool:
        return self._open

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command inside this namespace."""
        return [_IP, "netns", "exec", self.name]

    def run(
        self, cmd: Sequence[str], check: bool = True, timeout: float | None = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace, capturing text stdout/stderr."""
        proc = subprocess.run(
            [*self.exec_prefix(), *cmd],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise NetnsError(
                f"[{self.name}] {' '.join(cmd)} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `cmd` inside the namespace (killed at the latest when the namespace closes)."""
        return subprocess.Popen([*self.exec_prefix(), *cmd], **kw)

    def add_address(self, ifname: str, cidr: str) -> None:
        self.run([_IP, "addr", "add", cidr, "dev", ifname])

    def add_lo_address(self, cidr: str) -> None:
        """Put an inner network address on `lo` (the dummy link type is not available)."""
        self.add_address("lo", cidr)

    def add_route(self, dest: str, via: str | None = None, dev: str | None = None) -> None:
        cmd = [_IP, "route", "add", dest]
        if via is not None:
            cmd += ["via", via]
        if dev is not None:
            cmd += ["dev", dev]
        self.run(cmd)

    def link_up(self, ifname: str) -> None:
        self.run([_IP, "link", "set", ifname, "up"])

    def pids(self) -> list[int]:
        return namespace_pids(self.name)

    def close(self) -> None:
        """Kill every process in the namespace and delete it; safe to call twice."""
        if not self._open:
            return
        self._open = False
        _LIVE.pop(self.name, None)
        _delete_namespace(self.name)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def veth_pair(ns_a: Namespace, ns_b: Namespace, addr_a: str, addr_b: str) -> tuple[str, str]:
    """Connect two namespaces with a veth pair; addresses are CIDRs ("192.0.2.1/24").

    Returns the interface names (in ns_a, in ns_b).  Both ends are created
    directly inside their namespaces, so nothing is left in the root namespace
    and deleting either namespace removes the pair.  Names are
    ``v<pid hex><counter hex>a/b``, at most 15 characters.
    """
    tag = f"v{os.getpid():x}{_next_id():x}"
    if len(tag) > 14:
        tag = tag[-14:]
    if_a, if_b = f"{tag}a", f"{tag}b"
    _ip(
        "link", "add", if_a, "netns", ns_a.name, "type", "veth",
        "peer", "name", if_b, "netns", ns_b.name,
    )  # fmt: skip
    for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        ns.add_address(ifname, addr)
        ns.link_up(ifname)
    return if_a, if_b


def _host(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


@dataclass
class Topology:
    """Two hosts on one veth link, each with an inner network on `lo`.

    Defaults: A = 192.0.2.1/24 (inner 10.1.0.1/24), B = 192.0.2.2/24 (inner 10.2.0.1/24).
    """

    a: Namespace
    b: Namespace
    if_a: str
    if_b: str
    outer_a: str
    outer_b: str
    inner_a: str
    inner_b: str
    extra: list[Namespace] = field(default_factory=list)

    @property
    def addr_a(self) -> str:
        """Outer address of A without prefix length."""
        return _host(self.outer_a)

    @property
    def addr_b(self) -> str:
        return _host(self.outer_b)

    @property
    def inner_addr_a(self) -> str:
        return _host(self.inner_a)

    @property
    def inner_addr_b(self) -> str:
        return _host(self.inner_b)

    @property
    def inner_net_a(self) -> str:
        return str(ipaddress.ip_interface(self.inner_a).network)

    @property
    def inner_net_b(self) -> str:
        return str(ipaddress.ip_interface(self.inner_b).network)

    def close(self) -> None:
        for ns in (*self.extra, self.a, self.b):
            ns.close()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def build_two_hosts(
    outer_a: str = "192.0.2.1/24",
    outer_b: str = "192.0.2.2/24",
    inner_a: str | None = "10.1.0.1/24",
    inner_b: str | None = "10.2.0.1/24",
    prefix: str = DEFAULT_PREFIX,
) -> Topology:
    """Create the two-host topology; the caller must `close()` it (or use `two_hosts`)."""
    a = Namespace("a", prefix=prefix)
    try:
        b = Namespace("b", prefix=prefix)
    except BaseException:
        a.close()
        raise
    try:
        if_a, if_b = veth_pair(a, b, outer_a, outer_b)
        if inner_a:
            a.add_lo_address(inner_a)
        if inner_b:
            b.add_lo_address(inner_b)
    except BaseException:
        b.close()
        a.close()
        raise
    return Topology(a, b, if_a, if_b, outer_a, outer_b, inner_a or "", inner_b or "")


@contextlib.contextmanager
def two_hosts(
    outer_a: str = "192.0.2.1/24",
    outer_b: str = "192.0.2.2/24",
    inner_a: str | None = "10.1.0.1/24",
    inner_b: str | None = "10.2.0.1/24",
    prefix: str = DEFAULT_PREFIX,
) -> Iterator[Topology]:
    """Context manager around :func:`build_two_hosts`; always tears the namespaces down."""
    topo = build_two_hosts(outer_a, outer_b, inner_a, inner_b, prefix)
    try:
        yield topo
    finally:
        topo.close()

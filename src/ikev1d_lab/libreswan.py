"""A real Libreswan pluto per network namespace, run from an unpacked Debian tree.

Libreswan conflicts with the strongSwan packages, so it is not installed: ``make
libreswan`` unpacks its .debs (``dpkg-deb -x``) into ``.vm-cache/libreswan/root``
(or ``$IKEV1D_LIBRESWAN_ROOT``), and each pluto runs from there with its own
``--config``, ``--secretsfile``, ``--nssdir``, ``--rundir`` and ``--ipsecdir`` in a
per-test work directory.  Pluto and its ``_updown`` script expect their helpers
in ``/usr/libexec/ipsec``; the host's root is read-only inside the test VM, so
each pluto gets a private mount namespace in which the unpacked
``usr/libexec`` is overlaid on the real one.  The shared libraries that only the
unpacked tree has (libldns, libevent_pthreads) come through ``LD_LIBRARY_PATH``.

Pluto needs kernel ESP to install IPsec SAs, so the tests using it run in the
kernel VM (tests/vm/).  Its view is read through ``whack --status`` and
``whack --trafficstatus`` (what ``ipsec status`` / ``ipsec trafficstatus`` print).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace

__all__ = [
    "LibreswanError",
    "Pluto",
    "PlutoChild",
    "PlutoState",
    "ipsec_conf",
    "ipsec_secrets",
    "libreswan_available",
    "libreswan_root",
    "parse_status",
    "parse_traffic",
]

_REPO = Path(__file__).resolve().parents[2]
_DEFAULT_ROOT = _REPO / ".vm-cache" / "libreswan" / "root"
_LIBDIR = "usr/lib/x86_64-linux-gnu"
_EXECDIR = "usr/libexec/ipsec"
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


class LibreswanError(LabError):
    """pluto did not start, or a whack request failed."""


def libreswan_root() -> Path:
    """Where the unpacked Debian packages are (``make libreswan`` puts them there)."""
    return Path(os.environ.get("IKEV1D_LIBRESWAN_ROOT", str(_DEFAULT_ROOT))).resolve()


def libreswan_available(root: Path | None = None) -> tuple[bool, str]:
    """Whether an unpacked pluto, whack and certutil are there; (ok, reason)."""
    root = root or libreswan_root()
    for rel in (f"{_EXECDIR}/pluto", f"{_EXECDIR}/whack", "usr/bin/certutil"):
        if not os.access(root / rel, os.X_OK):
            return False, f"{root / rel} not found (make libreswan)"
    return True, ""


def _quote(value: str) -> str:
    """An ipsec.secrets string: double-quoted, with the two characters that need it escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ipsec_conf(
    name: str,
    left: str,
    right: str,
    left_subnet: str | None,
    right_subnet: str | None,
    ike: str,
    esp: str,
    *,
    left_id: str | None = None,
    right_id: str | None = None,
    pfs: bool = False,
    aggressive: bool = False,
    authby: str = "secret",
    encapsulation: str = "no",
    ike_lifetime: str = "1h",
    salifetime: str = "1h",
    dpd: tuple[int, int, str] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """ipsec.conf for one IKEv1 connection (PSK, or `authby` ``rsasig`` with ``leftcert=``
    in `extra`); Libreswan is ``left``.

    `ike`/`esp` are in Libreswan's syntax (``aes256-sha2_256;modp2048``,
    ``aes_gcm128``); several proposals are comma separated, in the order pluto
    offers them as initiator (as responder it takes the initiator's order).
    A subnet of None makes the tunnel end the host itself (``leftsubnet``
    left out).  `dpd` is (dpddelay, dpdtimeout, dpdaction).
    """
    conn = [
        f"conn {name}",
        "\tkeyexchange=ike",
        "\tikev2=no",
        f"\tauthby={authby}",
        f"\tleft={left}",
        f"\tright={right}",
        f"\tike={ike}",
        f"\tesp={esp}",
        f"\tpfs={'yes' if pfs else 'no'}",
        f"\taggressive={'yes' if aggressive else 'no'}",
        f"\tencapsulation={encapsulation}",
        f"\tikelifetime={ike_lifetime}",
        f"\tsalifetime={salifetime}",
        "\tkeyingtries=1",
        # _updown installs the route to the peer's subnet (with our address inside our
        # subnet as its source), as in a production setup.
        f"\tleftupdown=/{_EXECDIR}/_updown",
        "\tauto=add",
    ]
    if left_id is not None:
        conn.append(f"\tleftid={left_id}")
    if right_id is not None:
        conn.append(f"\trightid={right_id}")
    if left_subnet is not None:
        conn.append(f"\tleftsubnet={left_subnet}")
        # The source for traffic into the tunnel: the first address of our subnet.
        conn.append(f"\tleftsourceip={_first_host(left_subnet)}")
    if right_subnet is not None:
        conn.append(f"\trightsubnet={right_subnet}")
    if dpd is not None:
        conn += [f"\tdpddelay={dpd[0]}", f"\tdpdtimeout={dpd[1]}", f"\tdpdaction={dpd[2]}"]
    conn += [f"\t{line}" for line in extra]
    return "\n".join([
        "config setup",
        # Libreswan 4.10 drops every IKEv1 packet unless told otherwise.
        "\tikev1-policy=accept",
        "\tuniqueids=no",
        "\tdnssec-enable=no",
        "\tprotostack=xfrm",
        "",
        *conn,
        "",
    ])


def _first_host(cidr: str) -> str:
    base, _, _bits = cidr.partition("/")
    octets = base.split(".")
    return ".".join([*octets[:3], str(int(octets[3]) + 1)])


def ipsec_secrets(left_id: str, right_id: str, psk: str) -> str:
    """ipsec.secrets with one pre-shared key for the pair of IDs."""
    return f"{left_id} {right_id} : PSK {_quote(psk)}\n"


@dataclass
class PlutoChild:
    """One IPsec SA as ``whack --status`` shows it (SPIs as 8 lower-case hex digits)."""

    serial: int
    state: str
    spi_in: str = ""
    spi_out: str = ""
    traffic: str = ""           # pluto's "ESPin=..B ESPout=..B" summary


@dataclass
class PlutoState:
    """What pluto reports for connection `name`: hosts, networks, algorithms and SAs."""

    name: str
    local: str = ""
    remote: str = ""
    local_net: str = ""         # empty for a host-to-host connection
    remote_net: str = ""
    ike_algorithm: str = ""     # e.g. AES_CBC_256-HMAC_SHA2_256-MODP2048 (newest IKE SA)
    esp_algorithm: str = ""     # e.g. AES_GCM_16_128-NONE (newest IPsec SA)
    pfs_group: str = ""         # e.g. MODP2048, or <Phase1> without PFS
    ike_sas: dict[int, str] = field(default_factory=dict)   # serial: "STATE_X (what)"
    children: dict[int, PlutoChild] = field(default_factory=dict)

    @property
    def established(self) -> bool:
        return any("IKE SA established" in s for s in self.ike_sas.values())

    @property
    def installed(self) -> list[PlutoChild]:
        return [c for c in self.children.values() if c.spi_in and c.spi_out]


_ADDR = r"[0-9a-fA-F.:]+"


def parse_status(text: str, name: str) -> PlutoState:
    """The parts of ``whack --status`` (``ipsec status``) that concern connection `name`."""
    view = PlutoState(name)
    quoted = re.escape(f'"{name}"')
    for raw in text.splitlines():
        line = re.sub(r"^\d{3} ", "", raw)  # whack's numeric prefixes
        conn = re.match(quoted + r":\s+(.*)$", line)
        if conn:
            body = conn.group(1)
            hosts = re.match(r"(?:(\S+?)===)?(" + _ADDR + r")(?:\[[^\]]*\])?(?:---\S+)?\.\.\."
                             r"(?:\S+?---)?(" + _ADDR + r")(?:\[[^\]]*\])?(?:===(\S+?))?;", body)
            if hosts:
                view.local_net, view.local = hosts.group(1) or "", hosts.group(2)
                view.remote, view.remote_net = hosts.group(3), hosts.group(4) or ""
            ike = re.match(r"IKEv1 algorithm newest: (\S+)", body)
            if ike:
                view.ike_algorithm = ike.group(1)
            esp = re.match(r"ESP algorithm newest: ([^;\s]+)(?:; pfsgroup=(\S+))?", body)
            if esp:
                view.esp_algorithm, view.pfs_group = esp.group(1), esp.group(2) or ""
            continue
        state = re.match(r"#(\d+): " + quoted + r"(?::\d+)?\s+(STATE_\w+) \(([^)]*)\)", line)
        if state:
            serial, st, what = int(state.group(1)), state.group(2), state.group(3)
            if st.startswith("STATE_QUICK"):
                view.children.setdefault(serial, PlutoChild(serial, st)).state = st
            else:
                view.ike_sas[serial] = f"{st} ({what})"
            continue
        sas = re.match(r"#(\d+): " + quoted + r"(?::\d+)?\s+(.*esp\.\S+.*)$", line)
        if sas:
            child = view.children.setdefault(int(sas.group(1)), PlutoChild(int(sas.group(1)), ""))
            for spi, addr in re.findall(r"esp\.([0-9a-f]+)@(" + _ADDR + r")", sas.group(2)):
                # esp.SPI@peer is the SA pluto sends with, esp.SPI@us the one it receives on.
                if addr == view.remote:
                    child.spi_out = spi.zfill(8)
                else:
                    child.spi_in = spi.zfill(8)
            traffic = re.search(r"Traffic: (.*)$", sas.group(2))
            child.traffic = traffic.group(1) if traffic else ""
    return view


def parse_traffic(text: str, name: str) -> dict[int, tuple[int, int]]:
    """``whack --trafficstatus``: (inBytes, outBytes) by IPsec SA serial."""
    result = {}
    for m in re.finditer(r"#(\d+): " + re.escape(f'"{name}"') + r"[^,]*,.*?inBytes=(\d+), "
                         r"outBytes=(\d+)", text):
        result[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return result


class Pluto:
    """One pluto inside `ns`, configured and logging in `work_dir`.

    ``p = Pluto(ns, dir); p.start(ipsec_conf(...), ipsec_secrets(...)); p.up("gw")``.
    """

    def __init__(self, ns: Namespace, work_dir: Path | str, root: Path | None = None) -> None:
        self.ns = ns
        self.root = (root or libreswan_root()).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.work_dir / "ipsec.conf"
        self.secrets_path = self.work_dir / "ipsec.secrets"
        self.nss_dir = self.work_dir / "nss"
        self.run_dir = self.work_dir / "run"
        self.ipsec_dir = self.work_dir / "ipsec.d"
        self.log_path = self.work_dir / "pluto.log"
        self.stdout_path = self.work_dir / "pluto.stdout"
        self.ctl_path = self.run_dir / "pluto.ctl"
        if len(str(self.ctl_path)) > _MAX_UNIX_PATH:
            raise LibreswanError(f"work dir too long for a unix socket path ({self.ctl_path})")
        self.proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.root / _LIBDIR)}

    def _tool(self, rel: str) -> str:
        return str(self.root / rel)

    def init_nss(self) -> None:
        """``ipsec initnss``: an empty NSS database (no password) in the work dir."""
        self.nss_dir.mkdir(exist_ok=True)
        if (self.nss_dir / "cert9.db").exists():
            return
        proc = subprocess.run(
            [self._tool("usr/bin/certutil"), "-N", "-d", f"sql:{self.nss_dir}",
             "--empty-password"],
            capture_output=True, text=True, check=False, timeout=60, env=self._env())
        if proc.returncode != 0:
            raise LibreswanError(f"certutil -N failed: {proc.stdout} {proc.stderr}")

    def _nss_tool(self, tool: str, *args: str, stdin: bytes = b"") -> None:
        proc = subprocess.run(
            [self._tool(f"usr/bin/{tool}"), "-d", f"sql:{self.nss_dir}", *args],
            input=stdin, capture_output=True, check=False, timeout=60, env=self._env())
        if proc.returncode != 0:
            raise LibreswanError(f"{tool} {' '.join(args)} failed: "
                                 f"{proc.stdout.decode(errors='replace')} "
                                 f"{proc.stderr.decode(errors='replace')}")

    def import_ca(self, cert_pem: bytes, nickname: str) -> None:
        """A CA whose certificates pluto trusts for peers (``certutil -A -t "CT,,"``, as
        Libreswan's documentation says); before `start`."""
        self.init_nss()
        self._nss_tool("certutil", "-A", "-n", nickname, "-t", "CT,,", "-a", stdin=cert_pem)

    def import_pkcs12(self, p12: bytes, password: str) -> None:
        """An end entity's certificate and key from PKCS#12 (``pk12util -i``; its friendly
        name becomes the nickname ``leftcert=`` names); before `start`."""
        self.init_nss()
        path = self.work_dir / "import.p12"
        path.write_bytes(p12)
        try:
            self._nss_tool("pk12util", "-i", str(path), "-W", password)
        finally:
            path.unlink()

    def start(self, conf: str, secrets: str, timeout: float = 60.0) -> None:
        """Write the config and start pluto; it loads every ``auto=add`` connection."""
        if self.proc is not None:
            raise LibreswanError("pluto already started")
        self.conf_path.write_text(conf)
        self.secrets_path.write_text(secrets)
        self.secrets_path.chmod(0o600)
        self.init_nss()
        for d in (self.run_dir, self.ipsec_dir):
            d.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.ctl_path.unlink()
        pluto = shlex.join([
            f"/{_EXECDIR}/pluto", "--nofork", "--config", str(self.conf_path),
            "--secretsfile", str(self.secrets_path), "--nssdir", str(self.nss_dir),
            "--rundir", str(self.run_dir), "--ipsecdir", str(self.ipsec_dir),
            "--logfile", str(self.log_path), "--log-no-append", "--no-dnssec",
            "--dumpdir", str(self.run_dir),
        ])
        lower = f"{self.root / 'usr/libexec'}:/usr/libexec"
        # A private mount namespace: a tmpfs /run (pluto and its helpers keep nothing of
        # another pluto's there), and the unpacked /usr/libexec/ipsec overlaid on the
        # read-only root (two lower layers, no upper: nothing is written).
        script = (
            "mount -t tmpfs none /run && "
            f"{{ mount -t overlay overlay -o lowerdir={shlex.quote(lower)} /usr/libexec || "
            # a filesystem overlayfs refuses as a lower layer: the unpacked tree alone
            f"mount --bind {shlex.quote(str(self.root / 'usr/libexec'))} /usr/libexec; }} && "
            f"exec {pluto}"
        )
        with self.stdout_path.open("wb") as out:
            self.proc = self.ns.popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=self._env())
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise LibreswanError(f"pluto in {self.ns.name} exited with "
                                     f"{self.proc.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LibreswanError(f"pluto in {self.ns.name}: no control socket after "
                                     f"{timeout}s: {self._tail()}")
            time.sleep(0.1)
        # pluto loads the auto=add connections itself (addconn --autoall), which may
        # still be going on when it listens: an initiation before would find "no
        # connection named ...".
        self.wait_log("listening for IKE messages", timeout)
        names = re.findall(r"^conn (\S+)", conf, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            status = self.status_text()
            missing = [name for name in names if f'"{name}":' not in status]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise LibreswanError(f"pluto did not load {missing} in {timeout}s")
            time.sleep(0.2)

    def _answers(self) -> bool:
        if not self.ctl_path.exists():
            return False
        proc = subprocess.run(
            [self._tool(f"{_EXECDIR}/whack"), "--ctlsocket", str(self.ctl_path),
             "--listen"], capture_output=True, text=True, check=False, timeout=30,
            env=self._env())
        return proc.returncode == 0

    def whack(self, *args: str, timeout: float = 60.0,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run whack against this pluto's control socket."""
        proc = subprocess.run(
            [self._tool(f"{_EXECDIR}/whack"), "--ctlsocket", str(self.ctl_path), *args],
            capture_output=True, text=True, check=False, timeout=timeout, env=self._env())
        if check and proc.returncode != 0:
            raise LibreswanError(f"whack {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stdout.strip()} {proc.stderr.strip()}")
        return proc

    def up(self, name: str, timeout: float = 60.0) -> tuple[bool, str]:
        """``ipsec auto --up NAME``: (IPsec SA established, whack's output)."""
        try:
            proc = self.whack("--name", name, "--initiate", timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            return False, f"whack --initiate timed out: {exc}"
        out = proc.stdout + proc.stderr
        return proc.returncode == 0 and "IPsec SA established" in out, out

    def initiate_async(self, name: str) -> None:
        """Start initiating `name` and return at once (``ipsec auto --asynchronous --up``)."""
        self.whack("--name", name, "--initiate", "--asynchronous")

    def down(self, name: str) -> str:
        """``ipsec auto --down NAME``: Deletes sent for the connection's SAs."""
        proc = self.whack("--name", name, "--terminate", check=False)
        return proc.stdout + proc.stderr

    def status_text(self) -> str:
        return self.whack("--status").stdout

    def traffic_text(self) -> str:
        return self.whack("--trafficstatus").stdout

    def status(self, name: str) -> PlutoState:
        return parse_status(self.status_text(), name)

    def traffic(self, name: str) -> dict[int, tuple[int, int]]:
        return parse_traffic(self.traffic_text(), name)

    def wait_for(self, name: str, predicate: Callable[[PlutoState], bool],
                 timeout: float = 30.0) -> PlutoState:
        deadline = time.monotonic() + timeout
        while True:
            view = self.status(name)
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                raise LibreswanError(f"pluto: condition not met within {timeout}s: {view}")
            time.sleep(0.2)

    def wait_log(self, pattern: str, timeout: float = 15.0) -> str:
        """Wait until a log line matches regex `pattern`; return it (raise on timeout)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if regex.search(line):
                    return line
            if time.monotonic() > deadline:
                raise LibreswanError(f"no pluto log line matching {pattern!r} in {timeout}s")
            time.sleep(0.2)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, n: int = 20) -> str:
        text = ""
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text += p.read_text(errors="replace")
        return "\n".join(text.splitlines()[-n:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM pluto (it deletes its SAs), then SIGKILL; safe to call twice."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)

    def kill(self) -> None:
        """SIGKILL: pluto dies without a Delete, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def __enter__(self) -> Pluto:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Pluto({self.ns.name!r}, {str(self.work_dir)!r})"

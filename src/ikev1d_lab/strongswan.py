"""A real strongSwan charon per network namespace, driven over vici.

Each charon runs inside a test namespace and a private mount namespace (a
tmpfs on /run, so pid files of several charons don't collide), with its own
strongswan.conf, vici socket and log file in a per-test work directory.  This
machine's kernel has XFRM but no ESP, so the userspace `kernel-libipsec`
plugin carries ESP, which only works UDP-encapsulated: connections rendered by
:func:`swanctl_conf` therefore default to ``encap = yes``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import vici

from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace

__all__ = [
    "CHARON",
    "DEFAULT_LOAD",
    "ROADWARRIOR_LOAD",
    "SWANCTL",
    "Charon",
    "CharonError",
    "roadwarrior_client_conf",
    "roadwarrior_server_conf",
    "strongswan_available",
    "strongswan_conf",
    "swanctl_conf",
]

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
DEFAULT_LOAD = (
    "random nonce aes sha1 sha2 md5 hmac pem pkcs1 pkcs8 x509 pubkey gmp curve25519 openssl "
    "kernel-libipsec kernel-netlink socket-default vici attr"
)
ROADWARRIOR_LOAD = DEFAULT_LOAD + " xauth-generic"
"""The plugins plus ``xauth-generic`` (libcharon-extauth-plugins): XAUTH with passwords
from swanctl's secrets, both as server and as client."""
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_CRED_DIRS = (
    "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl",
    "pubkey", "private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
)  # fmt: skip


class CharonError(LabError):
    """charon did not start, or a vici/swanctl request failed."""


def strongswan_available() -> tuple[bool, str]:
    """Whether charon and swanctl are installed; (ok, reason)."""
    if not os.access(CHARON, os.X_OK):
        return False, f"{CHARON} not found (apt-get install strongswan-charon)"
    try:
        subprocess.run([SWANCTL, "--version"], capture_output=True, check=False, timeout=10)
    except FileNotFoundError:
        return False, "swanctl not found (apt-get install strongswan-swanctl)"
    return True, ""


def strongswan_conf(
    work_dir: Path,
    log_levels: Mapping[str, int] | None = None,
    load: str = DEFAULT_LOAD,
    extra: str = "",
) -> str:
    """strongswan.conf for a charon of the rig: its own vici socket and log in `work_dir`.

    `log_levels` maps filelog subsystems to levels, e.g. ``{"default": 2, "ike": 4}``
    (``ike = 4`` makes charon log the DH secret, SKEYID and derived keys).
    `extra` is inserted verbatim inside the ``charon { }`` section.
    """
    levels = {"default": 2, **(log_levels or {})}
    level_lines = "\n".join(f"      {k} = {v}" for k, v in levels.items())
    return (
        "charon {\n"
        f"  load = {load}\n"
        f"  plugins {{ vici {{ socket = unix://{work_dir}/charon.vici }} }}\n"
        "  filelog {\n"
        "    f {\n"
        f"      path = {work_dir}/charon.log\n"
        "      time_format = %H:%M:%S\n"
        "      ike_name = yes\n"
        "      flush_line = yes\n"
        "      append = no\n"
        f"{level_lines}\n"
        "    }\n"
        "  }\n"
        f"{extra}"
        "}\n"
    )


def _swanctl_value(value: str) -> str:
    """Quote a swanctl.conf value when it is not a plain token."""
    if re.fullmatch(r"[\w.:/%@,=+-]+", value):
        return value
    if '"' in value or "\\" in value or "\n" in value:
        return "0x" + value.encode().hex()
    return f'"{value}"'


def _secret(psk: str) -> str:
    # Hex form ("0x..") is unambiguous for any PSK; swanctl decodes it to the raw bytes.
    return "0x" + psk.encode().hex()


def swanctl_conf(
    name: str,
    local_addr: str,
    remote_addr: str,
    local_id: str,
    remote_id: str,
    psk: str,
    proposals: Sequence[str],
    esp_proposals: Sequence[str],
    local_ts: Sequence[str] | str,
    remote_ts: Sequence[str] | str,
    *,
    child: str = "net",
    encap: bool = True,
    aggressive: bool = False,
    mode: str = "tunnel",
    rekey_time: str = "0",
    reauth_time: str = "0",
    child_rekey_time: str = "1h",
    life_time: str | None = None,
    start_action: str | None = None,
    dpd_delay: str | None = None,
    dpd_timeout: str | None = None,
    dpd_action: str | None = None,
    vips: Sequence[str] = (),
    pools: Sequence[str] = (),
    unique: str = "no",
    extra_conn: str = "",
    extra_child: str = "",
    auth: str = "psk",
    certs: Sequence[str] = (),
    cacerts: Sequence[str] = (),
) -> str:
    """swanctl.conf text for one IKEv1 connection with one child.

    ``auth = "pubkey"`` authenticates with certificates instead of `psk`:
    `certs` and `cacerts` name files in the swanctl ``x509/`` and ``x509ca/``
    folders beside the file (the private key goes into ``private/``, where
    ``swanctl --load-all`` finds it), and charon sends certificate requests
    (``send_certreq = yes``), without which it sends no certificate in IKEv1.

    `proposals`/`esp_proposals` are strongSwan proposal strings in preference
    order (an ESP proposal naming a DH group means PFS in Quick Mode).  IKEv1
    has no IKE rekeying, only reauthentication: `reauth_time` schedules it and
    together with `rekey_time` sets the Phase 1 lifetime charon proposes ("0"
    disables either).  `encap = yes` because kernel-libipsec carries only
    UDP-encapsulated ESP; with it charon floats to port 4500 from Main Mode
    message 5 on.
    """
    lts = [local_ts] if isinstance(local_ts, str) else list(local_ts)
    rts = [remote_ts] if isinstance(remote_ts, str) else list(remote_ts)
    lines = [
        "connections {",
        f"  {name} {{",
        "    version = 1",
        f"    aggressive = {'yes' if aggressive else 'no'}",
        f"    local_addrs = {_swanctl_value(local_addr)}",
        f"    remote_addrs = {_swanctl_value(remote_addr)}",
        f"    proposals = {','.join(proposals)}",
        f"    encap = {'yes' if encap else 'no'}",
        f"    rekey_time = {rekey_time}",
        f"    reauth_time = {reauth_time}",
        f"    unique = {unique}",
        f"    send_certreq = {'yes' if auth == 'pubkey' else 'no'}",
    ]
    if dpd_delay is not None:
        lines.append(f"    dpd_delay = {dpd_delay}")
    if dpd_timeout is not None:
        lines.append(f"    dpd_timeout = {dpd_timeout}")
    if vips:
        lines.append(f"    vips = {','.join(vips)}")
    if pools:
        lines.append(f"    pools = {','.join(pools)}")
    if extra_conn:
        lines.append(extra_conn.rstrip("\n"))
    local_auth = [f"      auth = {auth}", f"      id = {_swanctl_value(local_id)}"]
    remote_auth = [f"      auth = {auth}", f"      id = {_swanctl_value(remote_id)}"]
    if certs:
        local_auth.append(f"      certs = {','.join(certs)}")
    if cacerts:
        remote_auth.append(f"      cacerts = {','.join(cacerts)}")
    lines += [
        "    local {", *local_auth, "    }",
        "    remote {", *remote_auth, "    }",
        "    children {",
        f"      {child} {{",
        f"        local_ts = {','.join(lts)}",
        f"        remote_ts = {','.join(rts)}",
        f"        esp_proposals = {','.join(esp_proposals)}",
        f"        mode = {mode}",
        f"        rekey_time = {child_rekey_time}",
    ]
    if life_time is not None:
        lines.append(f"        life_time = {life_time}")
    if start_action is not None:
        lines.append(f"        start_action = {start_action}")
    if dpd_action is not None:
        lines.append(f"        dpd_action = {dpd_action}")
    if extra_child:
        lines.append(extra_child.rstrip("\n"))
    lines += ["      }", "    }", "  }", "}"]
    if auth == "psk":
        lines += [
            "secrets {",
            f"  ike-{name} {{",
            f"    id-local = {_swanctl_value(local_id)}",
            f"    id-remote = {_swanctl_value(remote_id)}",
            f"    secret = {_secret(psk)}",
            "  }",
            "}",
        ]
    lines.append("")
    return "\n".join(lines)


def roadwarrior_server_conf(
    name: str,
    local_addr: str,
    local_id: str,
    psk: str,
    proposals: Sequence[str],
    esp_proposals: Sequence[str],
    local_ts: Sequence[str] | str,
    *,
    pool: str = "rw",
    addrs: str = "10.3.0.0/24",
    dns: Sequence[str] = (),
    split_include: Sequence[str] = (),
    subnet: Sequence[str] = (),
    push: bool = False,
    xauth_users: Mapping[str, str] | None = None,
    child: str = "net",
    encap: bool = True,
    unique: str = "no",
) -> str:
    """swanctl.conf for a strongSwan Mode Config (and XAUTH) server of road warriors.

    Any peer address and ID (one group PSK), addresses from pool ``pool``
    (``addrs``, with ``dns``, ``split_include`` and ``subnet`` sent as Mode Config
    attributes), the child's ``remote_ts`` left out so that it is the client's
    virtual IP. ``push``: ``pull = no``, the server sends CFG_SET. With
    ``xauth_users`` (name -> password) a second round ``remote-2 { auth = xauth }``
    and one ``xauth-<name>`` secret each; charon needs :data:`ROADWARRIOR_LOAD`.
    """
    lts = [local_ts] if isinstance(local_ts, str) else list(local_ts)
    lines = [
        "connections {",
        f"  {name} {{",
        "    version = 1",
        "    aggressive = no",
        f"    local_addrs = {_swanctl_value(local_addr)}",
        "    remote_addrs = %any",
        f"    proposals = {','.join(proposals)}",
        f"    encap = {'yes' if encap else 'no'}",
        "    rekey_time = 0",
        "    reauth_time = 0",
        f"    unique = {unique}",
        f"    pools = {pool}",
    ]
    if push:
        lines.append("    pull = no")
    lines += [
        "    local {", "      auth = psk", f"      id = {_swanctl_value(local_id)}", "    }",
        "    remote {", "      auth = psk", "      id = %any", "    }",
    ]
    if xauth_users:
        lines += ["    remote-2 {", "      auth = xauth", "    }"]
    lines += [
        "    children {",
        f"      {child} {{",
        f"        local_ts = {','.join(lts)}",
        f"        esp_proposals = {','.join(esp_proposals)}",
        "        mode = tunnel",
        "      }",
        "    }",
        "  }",
        "}",
        "pools {",
        f"  {pool} {{",
        f"    addrs = {addrs}",
    ]
    if dns:
        lines.append(f"    dns = {','.join(dns)}")
    if split_include:
        lines.append(f"    split_include = {','.join(split_include)}")
    if subnet:
        lines.append(f"    subnet = {','.join(subnet)}")
    lines += ["  }", "}", "secrets {", f"  ike-{name} {{", f"    secret = {_secret(psk)}", "  }"]
    for n, (user, password) in enumerate((xauth_users or {}).items()):
        lines += [f"  xauth-{n} {{", f"    id = {_swanctl_value(user)}",
                  f"    secret = {_secret(password)}", "  }"]
    lines += ["}", ""]
    return "\n".join(lines)


def roadwarrior_client_conf(
    name: str,
    local_addr: str,
    remote_addr: str,
    local_id: str,
    remote_id: str,
    psk: str,
    proposals: Sequence[str],
    esp_proposals: Sequence[str],
    remote_ts: Sequence[str] | str,
    *,
    push: bool = False,
    xauth_id: str | None = None,
    xauth_password: str = "",
    child: str = "net",
    encap: bool = True,
) -> str:
    """swanctl.conf for a strongSwan road warrior asking for a virtual IP (``vips =
    0.0.0.0``), its child's ``local_ts`` left out (the virtual IP). ``push``: ``pull =
    no``, it waits for the server's CFG_SET. ``xauth_id``: a second round ``local-2 {
    auth = xauth }`` logging in as that user with ``xauth_password``."""
    rts = [remote_ts] if isinstance(remote_ts, str) else list(remote_ts)
    lines = [
        "connections {",
        f"  {name} {{",
        "    version = 1",
        "    aggressive = no",
        f"    local_addrs = {_swanctl_value(local_addr)}",
        f"    remote_addrs = {_swanctl_value(remote_addr)}",
        f"    proposals = {','.join(proposals)}",
        f"    encap = {'yes' if encap else 'no'}",
        "    rekey_time = 0",
        "    reauth_time = 0",
        "    vips = 0.0.0.0",
    ]
    if push:
        lines.append("    pull = no")
    lines += [
        "    local {", "      auth = psk", f"      id = {_swanctl_value(local_id)}", "    }",
        "    remote {", "      auth = psk", f"      id = {_swanctl_value(remote_id)}", "    }",
    ]
    if xauth_id is not None:
        lines += ["    local-2 {", "      auth = xauth",
                  f"      xauth_id = {_swanctl_value(xauth_id)}", "    }"]
    lines += [
        "    children {",
        f"      {child} {{",
        f"        remote_ts = {','.join(rts)}",
        f"        esp_proposals = {','.join(esp_proposals)}",
        "        mode = tunnel",
        "      }",
        "    }",
        "  }",
        "}",
        "secrets {",
        f"  ike-{name} {{",
        f"    id-local = {_swanctl_value(local_id)}",
        f"    id-remote = {_swanctl_value(remote_id)}",
        f"    secret = {_secret(psk)}",
        "  }",
    ]
    if xauth_id is not None:
        lines += ["  xauth-client {", f"    id = {_swanctl_value(xauth_id)}",
                  f"    secret = {_secret(xauth_password)}", "  }"]
    lines += ["}", ""]
    return "\n".join(lines)


def _decode(value: Any) -> Any:
    """vici messages carry bytes; turn them (recursively) into str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {_decode(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class Charon:
    """One charon inside `ns`, configured and logging in `work_dir`.

    ``with Charon(ns, dir) as c: c.load_config(text); c.initiate("net")``.
    """

    def __init__(
        self,
        ns: Namespace,
        work_dir: Path | str,
        log_levels: Mapping[str, int] | None = None,
        extra_conf: str = "",
        start: bool = True,
        start_timeout: float = 15.0,
        load: str = DEFAULT_LOAD,
    ) -> None:
        self.ns = ns
        self.work_dir = Path(work_dir).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.work_dir / "strongswan.conf"
        self.swanctl_path = self.work_dir / "swanctl.conf"
        self.vici_path = self.work_dir / "charon.vici"
        self.log_path = self.work_dir / "charon.log"
        self.stdout_path = self.work_dir / "charon.stdout"
        if len(str(self.vici_path)) > _MAX_UNIX_PATH:
            raise CharonError(
                f"work dir too long for a unix socket path ({self.vici_path}); use a shorter one"
            )
        self.conf_path.write_text(strongswan_conf(self.work_dir, log_levels, load=load,
                                                  extra=extra_conf))
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start(start_timeout)

    @property
    def uri(self) -> str:
        return f"unix://{self.vici_path}"

    def start(self, timeout: float = 15.0) -> None:
        """Start charon and wait until its vici socket answers."""
        if self.proc is not None:
            raise CharonError("charon already started")
        with contextlib.suppress(FileNotFoundError):
            self.vici_path.unlink()
        script = (
            "mount -t tmpfs none /run && mkdir -p /run/strongswan && "
            f"STRONGSWAN_CONF={shlex.quote(str(self.conf_path))} exec {CHARON}"
        )
        with self.stdout_path.open("wb") as out:
            self.proc = self.ns.popen(
                ["unshare", "-m", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise CharonError(
                    f"charon in {self.ns.name} exited with {self.proc.returncode}: "
                    f"{self._tail()}"
                )
            if self._vici_answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise CharonError(f"charon in {self.ns.name}: vici not up after {timeout}s")
            time.sleep(0.05)

    def _tail(self, n: int = 20) -> str:
        text = ""
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text += p.read_text(errors="replace")
        return "\n".join(text.splitlines()[-n:])

    def _vici_answers(self) -> bool:
        if not self.vici_path.exists():
            return False
        try:
            with self.session() as s:
                s.version()
        except (OSError, vici.exception.SessionException):
            return False
        return True

    @contextlib.contextmanager
    def session(self, timeout: float = 30.0) -> Iterator[Any]:
        """A vici.Session on this charon's socket (closed afterwards)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.vici_path))
            yield vici.Session(sock)
        finally:
            sock.close()

    def swanctl(
        self, args: Sequence[str], timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this charon's vici socket."""
        proc = subprocess.run(
            [SWANCTL, *args, "--uri", self.uri],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise CharonError(
                f"swanctl {' '.join(args)} failed ({proc.returncode}): "
                f"{proc.stdout.strip()} {proc.stderr.strip()}"
            )
        return proc

    def load_config(self, swanctl_conf_text: str, timeout: float = 30.0) -> str:
        """Write swanctl.conf to the work dir and load it (connections and secrets);
        ``timeout``: seconds swanctl may take (thousands of connections take long)."""
        self.swanctl_path.write_text(swanctl_conf_text)
        # swanctl loads credentials from these folders beside the file (certificate tests
        # put PEM files there); creating them keeps its output free of noise.
        for sub in _CRED_DIRS:
            (self.work_dir / sub).mkdir(exist_ok=True)
        proc = self.swanctl(["--load-all", "--noprompt", "--file", str(self.swanctl_path)],
                            timeout=timeout)
        out = proc.stdout + proc.stderr
        failed = [ln for ln in out.splitlines() if "failed" in ln and "opening directory" not in ln]
        if proc.returncode != 0 or failed:
            raise CharonError(f"swanctl --load-all failed ({proc.returncode}): {out.strip()}")
        return out

    def initiate(
        self, child: str, ike: str | None = None, timeout: float = 15.0
    ) -> tuple[bool, str]:
        """Initiate `child` (of IKE config `ike`); (established, swanctl output)."""
        args = ["--initiate", "--child", child, "--timeout", str(max(1, int(timeout)))]
        if ike is not None:
            args += ["--ike", ike]
        try:
            proc = self.swanctl(args, timeout=timeout + 10)
        except subprocess.TimeoutExpired as exc:
            return False, f"swanctl --initiate timed out: {exc}"
        out = proc.stdout + proc.stderr
        return proc.returncode == 0 and "initiate completed successfully" in out, out

    def terminate(
        self, ike: str | None = None, child: str | None = None, timeout: float = 10.0
    ) -> tuple[bool, str]:
        """Terminate an IKE SA (by config name) or a child; (ok, swanctl output)."""
        args = ["--terminate", "--timeout", str(max(1, int(timeout)))]
        if ike is not None:
            args += ["--ike", ike]
        if child is not None:
            args += ["--child", child]
        proc = self.swanctl(args, timeout=timeout + 10)
        out = proc.stdout + proc.stderr
        return proc.returncode == 0, out

    def list_sas(self) -> list[dict[str, Any]]:
        """IKE SAs as vici reports them, decoded to str.

        Each dict has vici's keys (``state``, ``version``, ``initiator-spi``,
        ``responder-spi``, ``encr-alg``, ``encr-keysize``, ``integ-alg``,
        ``prf-alg``, ``dh-group``, ``local-host``, ``remote-host``, ...) plus
        ``name`` (the connection), and ``children``: a list of dicts with
        ``name``, ``state``, ``mode``, ``encap``, ``spi-in``, ``spi-out``,
        ``encr-alg``, ``integ-alg``, ``dh-group``, ``bytes-in``, ``bytes-out``,
        ``packets-in``, ``packets-out``, ``local-ts``, ``remote-ts``.
        Counters stay strings, as vici sends them.
        """
        result: list[dict[str, Any]] = []
        with self.session() as s:
            for entry in s.list_sas():
                for conn, sa in _decode(entry).items():
                    ike = dict(sa)
                    ike["name"] = conn
                    children = []
                    for child_key, child in (ike.pop("child-sas", None) or {}).items():
                        c = dict(child)
                        c.setdefault("name", child_key)
                        children.append(c)
                    ike["children"] = children
                    result.append(ike)
        return result

    def wait_for(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 10.0,
        interval: float = 0.1,
    ) -> list[dict[str, Any]]:
        """Poll list_sas() until predicate(sas) is true; return the SAs (raise on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            sas = self.list_sas()
            if predicate(sas):
                return sas
            if time.monotonic() > deadline:
                raise CharonError(f"condition not met within {timeout}s; SAs: {sas}")
            time.sleep(interval)

    def wait_log(self, pattern: str, timeout: float = 10.0, interval: float = 0.1) -> str:
        """Wait until a log line matches regex `pattern`; return that line (raise on timeout)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if regex.search(line):
                    return line
            if time.monotonic() > deadline:
                raise CharonError(f"no log line matching {pattern!r} within {timeout}s")
            time.sleep(interval)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM charon's process group, then SIGKILL; safe to call twice."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Anything left in the group (charon's helpers, a stuck charon) is killed outright.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)

    def __enter__(self) -> Charon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Charon({self.ns.name!r}, {str(self.work_dir)!r})"

"""``ikev1d demo``: a complete example on this machine, in a few numbered steps.

1. A real IKEv1 exchange (two strongSwan gateways, recorded with dumpcap) read by
   our pcap reader, decoded by our codec, decrypted by our crypto.
2. Two ikev1d gateways in network namespaces negotiate Main Mode + Quick Mode.
3. Traffic through the tunnel, when the userspace data plane is available.
4. The same site A against a real strongSwan, when strongSwan is installed.
5. Certificates instead of the pre-shared key: a CA made on the fly, RSA signatures
   (RFC 2409 section 5.1), CR/CERT/SIG shown on the wire; against strongSwan when
   step 4 ran, else between the two ikev1d.
6. A road warrior: an ikev1d client logs in with XAUTH, gets a virtual IP from
   the ikev1d server's pool by Mode Config and pings the server's network from it.
7. Teardown: Delete payloads, daemons stopped, namespaces removed.

Everything runs in network namespaces named ``ikdemo-<pid>-...`` and a temporary
directory; both are removed on success, failure, Ctrl-C or SIGTERM.  Output goes
through :class:`Console` (``print`` is for cli.py only), in colour only on a TTY.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import ClassVar, TextIO

from ikev1d.wire.constants import (
    IKE_PORT,
    IPPROTO_ESP,
    NAT_KEEPALIVE,
    NAT_T_PORT,
    NON_ESP_MARKER,
)
from ikev1d_lab import netns, pki
from ikev1d_lab.capture import (
    Capture,
    CaptureError,
    isakmp_decryption_table,
    tshark_available,
)
from ikev1d_lab.daemon import (
    Ikev1dDaemon,
    LabDaemonError,
    ikev1d_conf,
    roadwarrior_client_toml,
    roadwarrior_server_toml,
)
from ikev1d_lab.demo_exchange import DemoDataError, MessageView, load_demo_exchange
from ikev1d_lab.demo_pcap import PcapError, ipv4_of, read_capture, udp_of
from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace, NetnsError, Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import (
    CHARON,
    DEFAULT_LOAD,
    SWANCTL,
    Charon,
    CharonError,
    swanctl_conf,
)

__all__ = ["Console", "DemoFailure", "dataplane_available", "run_demo", "strongswan_missing"]

NS_PREFIX = "ikdemo"
CONNECTION_A = "site-b"  # on site A: the connection to site B
CONNECTION_B = "site-a"
CHILD = "net"
# A demo secret, shown in the config on purpose; 20+ characters so check-config is quiet.
PSK = "ikev1d-demo-pre-shared-key"
IKE_PROPOSALS = ("aes256-sha256-modp2048",)
ESP_PROPOSALS = ("aes128gcm16-modp2048",)
ECHO_PORT = 7777
TOTAL_STEPS = 7
RW_CLIENT, RW_SERVER = "192.0.2.11", "192.0.2.12"
RW_SERVER_ID = "gw.example.org"
RW_NETWORK, RW_GATEWAY = "10.2.0.0/24", "10.2.0.1"
RW_POOL = "10.3.0.0/24"
RW_USER, RW_PASSWORD = "alice", "alice's demo password"
CA_DN = "C=CH, O=ikev1d demo, CN=Demo Root CA"
CERT_DN_A = "C=CH, O=ikev1d demo, CN=site-a.example"
CERT_DN_B = "C=CH, O=ikev1d demo, CN=site-b.example"
# ISAKMP payload types (RFC 2408 section 3.1; 20 NAT-D RFC 3947; 132 IKE fragment).
_PAYLOAD_NAMES = {
    "1": "SA", "4": "KE", "5": "ID", "6": "CERT", "7": "CR", "8": "HASH", "9": "SIG",
    "10": "NONCE", "11": "N", "12": "D", "13": "VID", "20": "NAT-D", "132": "FRAG",
}  # fmt: skip

_ESTABLISHED = ("ISAKMP SA established", "IPsec SA established")
_DELETED = ("IPsec SA deleted", "ISAKMP SA deleted")
_LOG_PREFIX = re.compile(r"^\S+\s+(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+")


class DemoFailure(LabError):
    """A demo step did not show what it should; the message says what and where."""


# --- output -----------------------------------------------------------------------------


class Console:
    """Writes the demo's output; ANSI colours only when asked to (a TTY by default)."""

    _CODES: ClassVar[dict[str, str]] = {
        "bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "step": "1;36",
    }  # fmt: skip

    def __init__(self, out: TextIO, color: bool | None = None) -> None:
        self.out = out
        if color is None:
            color = _is_tty(out) and "NO_COLOR" not in os.environ and (
                os.environ.get("TERM", "") != "dumb"
            )
        self.color = color
        encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
        self.check_mark = "✓" if encoding.startswith("utf") else "ok"
        self.cross_mark = "✗" if encoding.startswith("utf") else "!!"

    def paint(self, text: str, style: str) -> str:
        if not self.color or not text:
            return text
        return f"\x1b[{self._CODES[style]}m{text}\x1b[0m"

    def write(self, text: str = "") -> None:
        try:
            self.out.write(text + "\n")
        except UnicodeEncodeError:  # e.g. tshark's arrows on an ASCII terminal
            encoding = getattr(self.out, "encoding", None) or "ascii"
            self.out.write((text + "\n").encode(encoding, "replace").decode(encoding))
        self.out.flush()

    def line(self, text: str = "", indent: int = 3, style: str | None = None) -> None:
        self.write(" " * indent + (self.paint(text, style) if style else text))

    def lines(self, texts: Sequence[str], indent: int = 5, style: str | None = None) -> None:
        for text in texts:
            self.line(text, indent, style)

    def title(self, text: str) -> None:
        self.write(self.paint(text, "bold"))

    def step(self, number: int, title: str, *explanation: str) -> None:
        self.write()
        self.write(self.paint(f"[{number}/{TOTAL_STEPS}] {title}", "step"))
        for text in explanation:
            self.line(text, style="dim")
        self.write()

    def command(self, where: str, argv: str) -> None:
        self.line(self.paint(f"{where} $ ", "dim") + self.paint(argv, "bold"))

    def ok(self, text: str) -> None:
        self.line(self.paint(f"{self.check_mark} {text}", "green"))

    def skip(self, text: str) -> None:
        self.line(self.paint(f"- skipped: {text}", "yellow"))

    def error(self, text: str) -> None:
        self.write(self.paint(f"{self.cross_mark} {text}", "red"))

    def highlight(self, text: str) -> str:
        """Log lines with the event words in colour."""
        for phrase in _ESTABLISHED:
            text = text.replace(phrase, self.paint(phrase, "green"))
        for phrase in _DELETED:
            text = text.replace(phrase, self.paint(phrase, "yellow"))
        return text


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


# --- helpers ----------------------------------------------------------------------------

STRONGSWAN_PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
# Debian's packages for the charon plugins step 4 loads that libstrongswan (a dependency
# of strongswan-charon) does not ship; a missing one makes charon refuse the config.
_PLUGIN_PACKAGES = {
    "openssl": "libstrongswan-standard-plugins",
    "curve25519": "libstrongswan-extra-plugins",
    "kernel-libipsec": "libcharon-extra-plugins",
    "vici": "strongswan-swanctl",
}


def strongswan_missing(plugin_dir: Path | None = None) -> list[str]:
    """The Debian packages step 4 (ikev1d against strongSwan) lacks here; [] when none."""
    plugin_dir = plugin_dir or STRONGSWAN_PLUGIN_DIR
    missing: list[str] = []
    if not os.access(CHARON, os.X_OK):
        missing.append("strongswan-charon")
    if shutil.which(SWANCTL) is None:
        missing.append("strongswan-swanctl")
    for plugin in DEFAULT_LOAD.split():
        package = _PLUGIN_PACKAGES.get(plugin, "strongswan-charon")
        if not (plugin_dir / f"libstrongswan-{plugin}.so").exists() and package not in missing:
            missing.append(package)
    return missing



def dataplane_available() -> bool:
    """Whether the userspace data plane (TUN + ESP in ikev1d) is in this build."""
    try:
        module = importlib.import_module("ikev1d.dataplane.userspace")
    except ImportError:
        return False
    return hasattr(module, "create_backend")


class LogCursor:
    """New lines of a growing log since the last call to :meth:`mark`."""

    def __init__(self, read: Callable[[], str]) -> None:
        self._read = read
        self._offset = 0

    def mark(self) -> None:
        self._offset = len(self._read())

    def new_text(self) -> str:
        return self._read()[self._offset :]

    def first_lines_with(self, phrases: Sequence[str]) -> list[str]:
        """For each phrase the first new line containing it, without timestamp and level."""
        found: list[str] = []
        lines = self.new_text().splitlines()
        for phrase in phrases:
            for line in lines:
                if phrase in line:
                    found.append(_LOG_PREFIX.sub("", line))
                    break
        return found

    def wait_for(self, phrases: Sequence[str], timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.first_lines_with(phrases)
            if len(lines) == len(phrases) or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


@dataclass
class Site:
    label: str  # "A" / "B"
    ns: Namespace
    address: str
    inner_address: str
    inner_net: str
    ifname: str


@dataclass
class Outcome:
    """What the summary line reports."""

    decoded: int = 0
    decrypted: int = 0
    verified: int = 0
    gateways: bool = False
    traffic: list[str] = field(default_factory=list)
    strongswan: str = "not run"
    certificates: str = "not run"
    road_warrior: str = "not run"
    teardown: bool = False
    notes: list[str] = field(default_factory=list)


class Demo:
    """The demo's resources (namespaces, daemons, charon, temp dir) and its steps."""

    def __init__(self, console: Console, work_dir: Path, stack: contextlib.ExitStack,
                 with_strongswan: bool, dataplane: str = "auto") -> None:
        self.con = console
        self.work = work_dir
        self.stack = stack
        self.with_strongswan = with_strongswan
        self.outcome = Outcome()
        self.auto_dataplane = dataplane == "auto"
        if self.auto_dataplane:
            dataplane = "userspace" if dataplane_available() else "none"
        self.dataplane = dataplane
        self.dataplane_note = ""
        self.topo: Topology | None = None
        self.a: Site | None = None
        self.b: Site | None = None
        self.gw_a: Ikev1dDaemon | None = None
        self.gw_b: Ikev1dDaemon | None = None
        self.charon: Charon | None = None
        self.install_hint = ""  # what to install for the steps that were skipped

    # -- step 1 ---------------------------------------------------------------------------

    def step_decode(self) -> None:
        con = self.con
        try:
            view = load_demo_exchange()
        except DemoDataError as exc:
            con.step(1, "A real IKEv1 exchange, decoded")
            raise DemoFailure(f"step 1: {exc}") from exc
        version = re.search(r"strongSwan [\d.]+", view.source)
        con.step(
            1, "A real IKEv1 exchange, decoded",
            f"Two {version.group(0) if version else 'strongSwan'} gateways (Main Mode + Quick "
            "Mode, pre-shared key), recorded",
            "with dumpcap. ikev1d's own pcap reader, ISAKMP codec and RFC 2409 key derivation",
            "read it; only the pre-shared key and charon's DH secret g^xy come from its log.",
        )
        first = view.messages[0].wire[0] if view.messages else ""
        cookies = re.search(r"i_cookie=(\w+)", first)
        con.line(f"suite {view.suite}, initiator cookie {cookies.group(1) if cookies else '?'}",
                 style="dim")
        for message in view.messages:
            self._show_message(message)
        con.write()
        for check in view.key_checks:
            con.ok(check)
        decrypted = [m for m in view.messages if m.decrypted]
        verified = [c for m in view.messages for c in m.checks]
        self.outcome.decoded = len(view.messages)
        self.outcome.decrypted = len(decrypted)
        self.outcome.verified = len(verified)
        if not view.ok:
            problems = [*view.problems, *(f"{m.title}: {m.problem}" for m in view.messages
                                          if m.problem)]
            raise DemoFailure("step 1: " + "; ".join(problems))
        con.ok(f"{len(view.messages)} messages decoded, {len(decrypted)} decrypted, "
               f"{len(verified)} HASH payloads verified")

    def _show_message(self, m: MessageView) -> None:
        con = self.con
        f = m.frame
        arrow = f"{f.src}:{f.sport} -> {f.dst}:{f.dport}"
        lock = f"  [encrypted, {len(f.data) - 28} bytes]" if m.encrypted else ""
        con.write()
        con.line(con.paint(f"{m.title:<15}", "bold") + f" {m.sender:<9}  {arrow}"
                 + con.paint(lock, "yellow"))
        if not m.encrypted:
            con.lines(m.wire[1:])
            return
        if m.decrypted:
            con.lines([f"decrypted: {m.decrypted[0]}"])
            con.lines(m.decrypted[1:], indent=16)
        for check in m.checks:
            con.line(con.paint(f"{con.check_mark} {check}", "green"), indent=5)
        if m.problem:
            con.line(con.paint(f"{con.cross_mark} {m.problem}", "red"), indent=5)

    # -- step 2 ---------------------------------------------------------------------------

    def build_sites(self) -> None:
        topo = netns.build_two_hosts(prefix=NS_PREFIX)
        self.stack.callback(topo.close)
        self.topo = topo
        self.a = Site("A", topo.a, topo.addr_a, topo.inner_addr_a, topo.inner_net_a, topo.if_a)
        self.b = Site("B", topo.b, topo.addr_b, topo.inner_addr_b, topo.inner_net_b, topo.if_b)

    def _sites(self) -> tuple[Site, Site]:
        if self.a is None or self.b is None:
            raise DemoFailure("the namespaces are not set up")
        return self.a, self.b

    def _daemon(self, site: Site, peer: Site, name: str) -> Ikev1dDaemon:
        config = ikev1d_conf(
            name, site.address, peer.address, site.address, peer.address, PSK,
            IKE_PROPOSALS, ESP_PROPOSALS, site.inner_net, peer.inner_net,
            child=CHILD, dataplane=self.dataplane,
        )  # fmt: skip
        daemon = Ikev1dDaemon(site.ns, self.work / f"ikev1d-{site.label.lower()}", config,
                              log_level="info")
        self.stack.callback(daemon.stop)
        return daemon

    def step_gateways(self) -> None:
        con = self.con
        self.build_sites()
        a, b = self._sites()
        con.step(
            2, "Two ikev1d gateways negotiate",
            f"Site A {a.address} (network {a.inner_net}) and site B {b.address} (network "
            f"{b.inner_net}),",
            f"each a network namespace running `ikev1d daemon`: pre-shared key, "
            f"IKE {IKE_PROPOSALS[0]},",
            f"ESP {ESP_PROPOSALS[0]} (PFS), data plane \"{self.dataplane}\". "
            "A initiates; B answers.",
        )
        self.gw_a = self._daemon(a, b, CONNECTION_A)
        self.gw_b = self._daemon(b, a, CONNECTION_B)
        try:
            _start_together(self.gw_a, self.gw_b)
        except DemoFailure as exc:
            if not (self.auto_dataplane and self.dataplane == "userspace"):
                raise
            # The userspace data plane is new; show why it failed and go on keying only.
            self.gw_a.stop()
            self.gw_b.stop()
            reason = _first_error_line(str(exc))
            self.dataplane_note = f"userspace data plane failed to start: {reason}"
            con.line(con.paint(f"! {self.dataplane_note}", "yellow"))
            con.line(con.paint('! continuing with dataplane = "none" (keying only)', "yellow"))
            self.dataplane = "none"
            self.gw_a = self._daemon(a, b, CONNECTION_A)
            self.gw_b = self._daemon(b, a, CONNECTION_B)
            _start_together(self.gw_a, self.gw_b)
        con.ok(f"ikev1d daemons running in {a.ns.name} and {b.ns.name}")
        log_a = LogCursor(self.gw_a.log_text)
        log_b = LogCursor(self.gw_b.log_text)
        log_a.mark()
        log_b.mark()
        elapsed = self._up("A", self.gw_a)
        self._show_log("site A (initiator)", log_a, _ESTABLISHED)
        self._show_log("site B (responder)", log_b, _ESTABLISHED)
        con.write()
        self._show_status("A", self.gw_a)
        _check_established(self.gw_a, "A")
        _check_established(self.gw_b, "B")
        self.outcome.gateways = True
        con.ok(f"Main Mode + Quick Mode between two ikev1d in {elapsed:.1f} s")

    def _up(self, where: str, daemon: Ikev1dDaemon) -> float:
        con = self.con
        con.command(where, f"ikev1d up {CONNECTION_A}")
        started = time.monotonic()
        result = daemon.up(CONNECTION_A, timeout=15.0, check=False)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise DemoFailure(
                f"`ikev1d up {CONNECTION_A}` on site {where} failed "
                f"({result.returncode}): {(result.stdout + result.stderr).strip()}"
            )
        return elapsed

    def _show_log(self, who: str, cursor: LogCursor, phrases: Sequence[str]) -> None:
        lines = cursor.wait_for(phrases, timeout=5.0)
        self.con.line(f"log of {who}:", style="dim")
        self.con.lines([self.con.highlight(line) for line in lines])
        missing = [p for p in phrases if not any(p in line for line in lines)]
        if missing:
            raise DemoFailure(f"log of {who} has no line with {', '.join(missing)}")

    def _show_status(self, where: str, daemon: Ikev1dDaemon, counters_only: bool = False) -> str:
        """`ikev1d status` (the table for people); only the IPsec SA lines if counters_only."""
        self.con.command(where, "ikev1d status" + ("   (IPsec SA lines)" if counters_only
                                                    else ""))
        result = daemon.cli("status", check=False)
        if result.returncode != 0:
            raise DemoFailure(f"`ikev1d status` on site {where} failed: {result.stderr.strip()}")
        lines = result.stdout.rstrip("\n").splitlines()
        if counters_only:
            lines = [ln for ln in lines if ln.strip().startswith((f"{CHILD}:", "in ", "out "))]
        self.con.lines(lines)
        return result.stdout

    # -- step 3 ---------------------------------------------------------------------------

    def step_traffic(self, number: int, peer: str) -> None:
        """TCP echo from A's network to B's through the tunnel, and what the wire saw."""
        con = self.con
        a, b = self._sites()
        title = "Traffic through the tunnel" + (" (to strongSwan)" if peer == "strongSwan"
                                                 else "")
        if self.dataplane != "userspace":
            if number:
                con.step(number, title)
            if self.dataplane_note:
                con.skip(self.dataplane_note)
                self.outcome.traffic.append("skipped (userspace data plane failed to start)")
            elif not self.auto_dataplane:
                con.skip(f"--dataplane {self.dataplane}: keying only, no traffic")
                self.outcome.traffic.append(f"skipped (--dataplane {self.dataplane})")
            else:
                con.skip("the userspace data plane (ikev1d.dataplane.userspace) is not "
                         "available in this build")
                self.outcome.traffic.append("skipped (no userspace data plane)")
            return
        if number:
            con.step(
                number, title,
                f"A TCP client on {a.inner_address} talks to an echo server on "
                f"{b.inner_address}; ikev1d routes",
                "the remote network into its TUN device and carries the packets in ESP.",
                "dumpcap listens on site A's outside interface meanwhile.",
            )
        if self.gw_a is None:
            raise DemoFailure("site A's ikev1d is not running")
        ok, reason = tshark_available()
        message = f"hello from {a.inner_address}, sent through the tunnel ({os.getpid()})"
        server = _start_echo_server(b.ns, b.inner_address)
        self.stack.callback(_stop_process, server)
        capture_path = self.work / f"traffic-{peer.lower()}.pcap"
        # IPv4 only: the veth's own IPv6 link-local chatter (MLD) is not part of the story.
        capture = Capture(a.ns, a.ifname, capture_path, capture_filter="ip") if ok else None
        try:
            con.command("A", f"echo client {a.inner_address} -> {b.inner_address}:{ECHO_PORT}")
            reply = _echo_client(a.ns, a.inner_address, b.inner_address, message)
        finally:
            if capture is not None:
                capture.stop()
            _stop_process(server)
        con.line(f"sent:     {message}", indent=5)
        con.line(f"received: {reply}", indent=5)
        if reply != f"echo: {message}":
            raise DemoFailure(f"the echo through the tunnel came back as {reply!r}")
        con.write()
        status = self._show_status("A", self.gw_a, counters_only=True)
        if re.search(r"\b[1-9]\d* packets", status) is None:
            raise DemoFailure("the status table shows no packets through the tunnel")
        if capture is None:
            con.skip(f"wire view: {reason}")
        else:
            self._show_wire(capture_path, message)
        self.outcome.traffic.append(f"echo through the tunnel to {peer}")
        con.ok(f"the echo reached {b.inner_address} and came back, encrypted on the wire")

    def _show_wire(self, path: Path, message: str) -> None:
        con = self.con
        con.write()
        con.command("A", f"tshark -r {path.name}")
        tshark = shutil.which("tshark") or "tshark"
        result = subprocess.run(
            [tshark, "-n", "-r", str(path)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        lines = textwrap.dedent(result.stdout).splitlines()
        lines = [ln.rstrip() for ln in lines if ln.strip()]
        con.lines(lines[:8])
        if len(lines) > 8:
            con.line(f"... and {len(lines) - 8} more", indent=5, style="dim")
        raw_esp, udp_esp, ike, other = _classify(path.read_bytes())
        if message.encode() in path.read_bytes():
            raise DemoFailure("the message text crossed the wire in clear")
        if raw_esp + udp_esp == 0 or other:
            raise DemoFailure(f"on the wire: {raw_esp} ESP, {udp_esp} ESP in UDP, {ike} IKE, "
                              f"{other} other packets")
        kinds = [f"{raw_esp} ESP (IP protocol 50)" if raw_esp else "",
                 f"{udp_esp} ESP in UDP 4500 (RFC 3948)" if udp_esp else "",
                 f"{ike} IKE" if ike else ""]  # fmt: skip
        con.ok(f"IPv4 on the wire: only {', '.join(k for k in kinds if k)}; "
               "the message text appears in no packet")

    # -- step 4 ---------------------------------------------------------------------------

    def step_strongswan(self) -> None:
        con = self.con
        if not self.with_strongswan:
            con.step(4, "Against strongSwan")
            con.skip("--no-strongswan")
            self.outcome.strongswan = "skipped (--no-strongswan)"
            return
        missing = strongswan_missing()
        if missing:
            con.step(4, "Against strongSwan")
            con.skip("strongSwan is not installed here" if "strongswan-charon" in missing
                     else "strongSwan here lacks plugins that this step loads")
            self.install_hint = f"apt-get install {' '.join(missing)}"
            con.line(f"to see this step too: {self.install_hint}, then run the demo again",
                     style="dim")
            self.outcome.strongswan = "skipped (strongSwan not installed)"
            return
        a, b = self._sites()
        con.step(
            4, "Against strongSwan",
            "Site B's ikev1d stops (SIGTERM: it sends Delete for its SAs) and a strongSwan",
            "charon takes its place with the same addresses, key and proposals. strongSwan",
            "here carries ESP in userspace (kernel-libipsec), which needs UDP encapsulation:",
            "encap = yes, so both sides move to UDP 4500 (RFC 3947).",
        )
        if self.gw_a is None or self.gw_b is None:
            raise DemoFailure("the ikev1d gateways are not running")
        log_a = LogCursor(self.gw_a.log_text)
        log_a.mark()
        code = self.gw_b.stop()
        if code != 0:
            raise DemoFailure(f"ikev1d on site B exited with {code}: "
                              f"{self.gw_b.log_text()[-800:]}")
        if len(log_a.wait_for(_DELETED, timeout=5.0)) != len(_DELETED):
            raise DemoFailure("site A did not log the Delete from site B's ikev1d")
        con.ok("site B's ikev1d stopped; site A removed the SAs it deleted")
        charon = Charon(b.ns, self.work / "charon-b")
        self.stack.callback(charon.stop)
        self.charon = charon
        charon.load_config(swanctl_conf(
            CONNECTION_B, b.address, a.address, b.address, a.address, PSK,
            IKE_PROPOSALS, ESP_PROPOSALS, b.inner_net, a.inner_net, child=CHILD, encap=True,
        ))  # fmt: skip
        con.ok(f"strongSwan charon running in {b.ns.name}")
        log_a.mark()
        charon_log = LogCursor(charon.log_text)
        charon_log.mark()
        elapsed = self._up("A", self.gw_a)
        self._show_log("site A (ikev1d)", log_a, _ESTABLISHED)
        lines = charon_log.wait_for(("IKE_SA", "CHILD_SA"), timeout=5.0)
        established = [ln for ln in charon_log.new_text().splitlines() if "established" in ln]
        con.line("log of site B (strongSwan):", style="dim")
        con.lines([_charon_line(ln) for ln in established[:2]] or lines)
        con.write()
        con.command("B", "swanctl --list-sas")
        sas = charon.swanctl(["--list-sas"])
        con.lines([ln.rstrip() for ln in sas.stdout.splitlines() if ln.strip()])
        their = charon.list_sas()
        if not their or their[0].get("state") != "ESTABLISHED":
            raise DemoFailure(f"strongSwan does not list an established IKE SA: {their}")
        con.write()
        self._show_status("A", self.gw_a)
        con.ok(f"ikev1d and strongSwan agree on the SAs (set up in {elapsed:.1f} s)")
        self.outcome.strongswan = "established"
        if self.dataplane == "userspace":
            con.write()
            self.step_traffic(0, "strongSwan")

    # -- step 5 ---------------------------------------------------------------------------

    def step_roadwarrior(self) -> None:
        """An ikev1d road warrior: XAUTH, a virtual IP by Mode Config, a ping from it."""
        con = self.con
        con.step(
            6, "A road warrior gets an address",
            f"A laptop ({RW_CLIENT}, no network of its own) connects to an ikev1d server "
            f"({RW_SERVER}, network {RW_NETWORK})",
            f"with the group key, logs in as {RW_USER!r} (XAUTH) and asks for an address "
            f"(Mode Config pull) from pool {RW_POOL};",
            "its tunnel then runs from that virtual IP to the server's network.",
        )
        topo = netns.build_two_hosts(f"{RW_CLIENT}/24", f"{RW_SERVER}/24", None,
                                     f"{RW_GATEWAY}/24", prefix=NS_PREFIX)
        self.stack.callback(topo.close)
        gateway = RW_GATEWAY
        server = Ikev1dDaemon(topo.b, self.work / "rw-server", roadwarrior_server_toml(
            "rw", RW_SERVER, RW_SERVER_ID, PSK, IKE_PROPOSALS, ESP_PROPOSALS, RW_NETWORK,
            addrs=RW_POOL, dns=[gateway], split_include=[RW_NETWORK],
            xauth_users={RW_USER: RW_PASSWORD}, dataplane=self.dataplane,
        ), log_level="info")  # fmt: skip
        client = Ikev1dDaemon(topo.a, self.work / "rw-client", roadwarrior_client_toml(
            "home", RW_CLIENT, RW_SERVER, RW_CLIENT, RW_SERVER_ID, PSK, IKE_PROPOSALS,
            ESP_PROPOSALS, RW_NETWORK, xauth_id=RW_USER, xauth_password=RW_PASSWORD,
            encap=False, dataplane=self.dataplane,
        ), log_level="info")  # fmt: skip
        self.stack.callback(client.stop)
        self.stack.callback(server.stop)
        _start_together(server, client)
        log_client = LogCursor(client.log_text)
        log_server = LogCursor(server.log_text)
        log_client.mark()
        log_server.mark()
        con.command("laptop", "ikev1d up home")
        result = client.up("home", timeout=15.0, check=False)
        if result.returncode != 0:
            raise DemoFailure(f"`ikev1d up home` on the laptop failed: "
                              f"{(result.stdout + result.stderr).strip()}")
        self._show_log("the server", log_server, ("XAUTH authentication of",))
        self._show_log("the laptop", log_client, ("virtual IP", "IPsec SA established"))
        (ike,) = client.status()["ike_sas"]
        vip = ike.get("virtual_ip")
        if not vip:
            raise DemoFailure("the laptop's status shows no virtual IP")
        con.command("laptop", "ikev1d status")
        con.lines([ln for ln in client.cli("status").stdout.splitlines()[:6]])
        if self.dataplane == "userspace":
            con.command("laptop", f"ping {gateway}   (no source chosen: the route's is {vip})")
            answered = ping(topo.a, gateway, count=3)
            if answered != (3, 3):
                raise DemoFailure(f"ping from the virtual IP: {answered[1]} of 3 answered")
            con.ok(f"3 of 3 pings from {vip} through the tunnel answered")
            self.outcome.road_warrior = f"{vip}, ping answered"
        else:
            con.skip(f"data plane \"{self.dataplane}\": no ping")
            self.outcome.road_warrior = f"{vip}, keying only"
        con.command("laptop", "ikev1d down home")
        client.cli("down", "home", check=False)
        for daemon in (client, server):
            if daemon.stop() != 0:
                raise DemoFailure("an ikev1d of the road-warrior step did not exit cleanly")
        topo.close()
        con.ok(f"the laptop had {vip} from pool {RW_POOL}; its daemons and namespaces are gone")

    def step_certificates(self) -> None:
        """Site A again, now authenticated by RSA signatures with certificates."""
        con = self.con
        a, b = self._sites()
        against_strongswan = self.charon is not None
        peer_name = "strongSwan" if against_strongswan else "site B's ikev1d"
        con.step(
            5, "Certificates instead of a pre-shared key",
            "A CA made on the fly (Python `cryptography`) issues an RSA-2048 certificate to "
            "each site;",
            f"site A's ikev1d restarts with it and {peer_name} "
            f"{'loads' if against_strongswan else 'restarts with'} its own. Each side asks "
            "for the",
            "other's certificate (CR), sends its own (CERT) and signs HASH_I/HASH_R (SIG, "
            "RFC 2409 5.1);",
            "the IDs are the certificates' subject DNs, checked against the CA.",
        )
        if self.gw_a is None:
            raise DemoFailure("site A's ikev1d is not running")
        # A year of validity: check-config warns about certificates that expire soon.
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
        ca = pki.issue(CA_DN, ca=True, not_after=until)
        cert_a = pki.issue(CERT_DN_A, ca, not_after=until)
        cert_b = pki.issue(CERT_DN_B, ca, not_after=until)
        for who, issued in (("CA    ", ca), ("site A", cert_a), ("site B", cert_b)):
            con.line(f"{who}  subject \"{issued.subject}\"  (issuer \"{ca.subject}\", "
                     "RSA 2048)", indent=5)
        con.write()
        code = self.gw_a.stop()
        if code != 0:
            raise DemoFailure(f"ikev1d on site A exited with {code}")
        keylog = self.work / "keylog-a"
        keylog.mkdir(mode=0o700)
        self.gw_a = self._cert_daemon(a, b, CONNECTION_A, cert_a, ca, CERT_DN_B,
                                      f"keylog_dir = {json.dumps(str(keylog))}")
        peer_log: LogCursor
        if self.charon is not None:
            charon = self.charon
            for sub, data in (("x509", cert_b.cert_pem()), ("private", cert_b.key_pem()),
                              ("x509ca", ca.cert_pem())):
                folder = charon.work_dir / sub
                folder.mkdir(exist_ok=True)
                (folder / "demo.pem").write_bytes(data)
            charon.load_config(swanctl_conf(
                CONNECTION_B, b.address, a.address, CERT_DN_B, CERT_DN_A, "",
                IKE_PROPOSALS, ESP_PROPOSALS, b.inner_net, a.inner_net, child=CHILD,
                encap=True, auth="pubkey", certs=["demo.pem"], cacerts=["demo.pem"],
            ))  # fmt: skip
            peer_log = LogCursor(charon.log_text)
            _start_together(self.gw_a)
            con.ok("site A's ikev1d restarted with its certificate; strongSwan loaded its "
                   "own (swanctl --load-all)")
        else:
            if self.gw_b is not None:
                self.gw_b.stop()
            self.gw_b = self._cert_daemon(b, a, CONNECTION_B, cert_b, ca, CERT_DN_A)
            peer_log = LogCursor(self.gw_b.log_text)
            _start_together(self.gw_a, self.gw_b)
            con.ok("both ikev1d restarted with their certificates")
        log_a = LogCursor(self.gw_a.log_text)
        log_a.mark()
        peer_log.mark()
        ok, reason = tshark_available()
        capture_path = self.work / "certificates.pcap"
        capture = (Capture(a.ns, a.ifname, capture_path,
                           capture_filter="udp port 500 or udp port 4500") if ok else None)
        try:
            elapsed = self._up("A", self.gw_a)
            self._show_log("site A (ikev1d)", log_a, ("authenticated by RSA signature",
                                                      *_ESTABLISHED))
            keys = _keylog_entries(keylog)
        finally:
            if capture is not None:
                capture.stop()
        if against_strongswan:
            lines = peer_log.wait_for(("authentication of", "using trusted ca certificate",
                                       "IKE_SA"), timeout=5.0)
            theirs = [ln for ln in peer_log.new_text().splitlines()
                      if re.search(r"using trusted ca certificate|authentication of .* "
                                   r"successful|IKE_SA .* established", ln)]
            con.line("log of site B (strongSwan):", style="dim")
            con.lines([_charon_line(ln) for ln in theirs[:5]] or lines)
            if not any(f"authentication of '{CERT_DN_A}'" in ln and "successful" in ln
                       for ln in theirs):  # fmt: skip
                raise DemoFailure("strongSwan did not log a successful signature check of "
                                  f"\"{CERT_DN_A}\"")
        else:
            self._show_log("site B (ikev1d)", peer_log, ("authenticated by RSA signature",
                                                         *_ESTABLISHED))
        con.write()
        status = self.gw_a.status()
        ikes = status.get("ike_sas", [])
        if not ikes or ikes[0].get("auth") != "pubkey-rsa" or (
            ikes[0].get("remote_id") != CERT_DN_B
        ):
            raise DemoFailure(f"site A's status does not show the certificate SA: {ikes}")
        con.command("A", "ikev1d status --json   (auth, IDs)")
        con.lines([f'"auth": "{ikes[0]["auth"]}", "local_id": "{ikes[0]["local_id"]}", '
                   f'"remote_id": "{ikes[0]["remote_id"]}"'])
        if capture is None:
            con.skip(f"wire view: {reason}")
        else:
            self._show_cert_wire(capture_path, keys, a.address)
        if self.dataplane == "userspace":
            con.write()
            con.command("A", f"ping -I {a.inner_address} -c 3 {b.inner_address}")
            sent, received = ping(a.ns, b.inner_address, src=a.inner_address, count=3)
            con.line(f"{received} of {sent} echo replies", indent=5)
            if received != sent:
                raise DemoFailure(f"ping through the certificate tunnel: {received} of {sent} "
                                  "replies")
        self.outcome.certificates = f"established with {peer_name.split()[-1]}"
        con.ok(f"authenticated by certificates, Main Mode + Quick Mode in {elapsed:.1f} s")

    def _cert_daemon(self, site: Site, peer: Site, name: str, ours: pki.Issued,
                     ca: pki.Issued, peer_dn: str, extra_daemon: str = "") -> Ikev1dDaemon:
        folder = self.work / f"ikev1d-{site.label.lower()}-cert"
        folder.mkdir()
        ours.write(folder, "site")
        (folder / "ca.cert.pem").write_bytes(ca.cert_pem())
        config = f"""\
[daemon]
listen = [{json.dumps(site.address)}]
dataplane = {json.dumps(self.dataplane)}
retransmit_timeout = "1s"
retransmit_tries = 4
{extra_daemon}

[connections.{name}]
local_addrs = [{json.dumps(site.address)}]
remote_addrs = [{json.dumps(peer.address)}]
proposals = {json.dumps(list(IKE_PROPOSALS))}

[connections.{name}.local]
auth = "pubkey"
id = {json.dumps(ours.subject)}
certs = ["site.cert.pem"]
private_key = "site.key.pem"

[connections.{name}.remote]
auth = "pubkey"
id = {json.dumps(peer_dn)}
cacerts = ["ca.cert.pem"]

[connections.{name}.children.{CHILD}]
local_ts = [{json.dumps(site.inner_net)}]
remote_ts = [{json.dumps(peer.inner_net)}]
esp_proposals = {json.dumps(list(ESP_PROPOSALS))}
"""
        daemon = Ikev1dDaemon(site.ns, folder, config, log_level="info")
        self.stack.callback(daemon.stop)
        return daemon

    def _show_cert_wire(self, path: Path, keys: dict[str, str], address_a: str) -> None:
        """Main Mode's payloads by message, decrypted with the key site A logged."""
        con = self.con
        con.write()
        con.command("A", f"tshark -r {path.name} -o 'uat:ikev1_decryption_table:...'")
        tshark = shutil.which("tshark") or "tshark"
        result = subprocess.run(
            [tshark, "-n", "-r", str(path), *isakmp_decryption_table(keys),
             "-Y", "isakmp.exchangetype == 2", "-T", "fields", "-e", "ip.src", "-e", "ip.dst",
             "-e", "isakmp.typepayload", "-E", "aggregator=,"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        if result.returncode != 0:
            raise DemoFailure(f"tshark failed: {result.stderr.strip()}")
        seen: dict[bool, set[str]] = {True: set(), False: set()}
        number = 0
        for row in result.stdout.splitlines():
            src, dst, types = [*row.split("\t"), "", "", ""][:3]
            names = [_PAYLOAD_NAMES.get(t, t) for t in types.split(",")
                     if t and t not in ("2", "3")]  # proposal, transform: inside SA
            number += 1
            from_a = src == address_a
            seen[from_a].update(names)
            con.line(f"Main Mode {number}  {src} -> {dst}  " + " ".join(names), indent=5)
        missing = [f"{'A' if side else 'B'}: {kind}" for side in (True, False)
                   for kind in ("CR", "CERT", "SIG") if kind not in seen[side]]
        if missing:
            raise DemoFailure(f"missing on the wire (decrypted by tshark): {', '.join(missing)}")
        con.ok("tshark decrypted messages 5 and 6: each side sent CR, CERT and SIG")

    # -- step 6 ---------------------------------------------------------------------------

    def step_teardown(self) -> None:
        con = self.con
        a, b = self._sites()
        peer = "strongSwan" if self.charon is not None else "ikev1d"
        con.step(
            7, "Teardown",
            f"`ikev1d down` sends Delete payloads for the IPsec SA and the ISAKMP SA to "
            f"{peer};",
            "then the daemons stop and the namespaces and temporary files are removed.",
        )
        if self.gw_a is None:
            raise DemoFailure("site A's ikev1d is not running")
        log_a = LogCursor(self.gw_a.log_text)
        log_a.mark()
        peer_log: LogCursor | None = None
        if self.charon is not None:
            peer_log = LogCursor(self.charon.log_text)
        elif self.gw_b is not None:
            peer_log = LogCursor(self.gw_b.log_text)
        if peer_log is not None:
            peer_log.mark()
        con.command("A", f"ikev1d down {CONNECTION_A}")
        result = self.gw_a.cli("down", CONNECTION_A, check=False)
        if result.returncode != 0:
            raise DemoFailure(f"`ikev1d down` failed: {(result.stdout + result.stderr).strip()}")
        self._show_log("site A", log_a, _DELETED)
        if self.charon is not None and peer_log is not None:
            self.charon.wait_for(lambda sas: not sas, timeout=5.0)
            lines = [ln for ln in peer_log.new_text().splitlines()
                     if "[IKE]" in ln and ("DELETE" in ln or "deleting" in ln)]  # fmt: skip
            con.line("log of site B (strongSwan):", style="dim")
            con.lines([_charon_line(ln) for ln in lines[:4]])
            con.ok("strongSwan lists no SAs any more")
        elif peer_log is not None:
            self._show_log("site B", peer_log, _DELETED)
        con.write()
        for label, daemon in (("A", self.gw_a), ("B", self.gw_b)):
            if daemon is not None and daemon.process is not None and (
                daemon.process.poll() is None
            ):
                code = daemon.stop()
                if code != 0:
                    raise DemoFailure(f"ikev1d on site {label} exited with {code}")
                con.ok(f"ikev1d on site {label} stopped (exit 0)")
        if self.charon is not None:
            self.charon.stop()
            con.ok("strongSwan charon stopped")
        names = [a.ns.name, b.ns.name]
        if self.topo is not None:
            self.topo.close()
        left = [n for n in names if n in _netns_names()]
        if left:
            raise DemoFailure(f"namespaces left behind: {', '.join(left)}")
        con.ok(f"namespaces {', '.join(names)} deleted")
        self.outcome.teardown = True


def _charon_line(line: str) -> str:
    """charon's filelog line without the time and thread: '[IKE] IKE_SA ... established'."""
    m = re.match(r"^\S+\s+\d+\[(\w+)\]\s+(?:<[^>]*>\s+)?(.*)$", line)
    return f"[{m.group(1)}] {m.group(2)}" if m else line.strip()


def _check_established(daemon: Ikev1dDaemon, where: str) -> None:
    """`ikev1d status --json` must show the ISAKMP SA ESTABLISHED and its child INSTALLED."""
    try:
        document = daemon.status()
    except (LabDaemonError, ValueError) as exc:
        raise DemoFailure(f"`ikev1d status --json` on site {where}: {exc}") from exc
    states = [(ike.get("state"), [c.get("state") for c in ike.get("children", [])])
              for ike in document.get("ike_sas", [])]  # fmt: skip
    if states != [("ESTABLISHED", ["INSTALLED"])]:
        raise DemoFailure(f"site {where} reports SAs in states {states}")


def _keylog_entries(folder: Path) -> dict[str, str]:
    """The daemon's ``ikev1_decryption_table`` (``ICOOKIE,KEY`` lines) as a mapping."""
    table = folder / "ikev1_decryption_table"
    entries: dict[str, str] = {}
    if table.exists():
        for line in table.read_text().splitlines():
            cookie, _, key = line.strip().partition(",")
            if cookie and key:
                entries[cookie] = key
    return entries


def _first_error_line(text: str) -> str:
    """The ERROR line of a daemon's stderr, else the first line."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if m := re.search(r"\bERROR\s+(.*)", ln):
            return m.group(1).strip()
    return lines[0] if lines else text


def _netns_names() -> set[str]:
    ip = shutil.which("ip") or "ip"
    listing = subprocess.run(
        [ip, "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return {line.split()[0] for line in listing.splitlines() if line.split()}


def _start_together(*daemons: Ikev1dDaemon) -> None:
    """Start daemons in parallel (each takes a second or two to import and bind)."""
    errors: list[BaseException] = []

    def start(d: Ikev1dDaemon) -> None:
        try:
            d.start(timeout=20.0)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,), daemon=True) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise DemoFailure(f"ikev1d did not start: {errors[0]}")


_ECHO_SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(30)
sys.stdout.write("ready\\n")
sys.stdout.flush()
conn, _ = srv.accept()
conn.settimeout(10)
data = b""
while chunk := conn.recv(65536):
    data += chunk
conn.sendall(b"echo: " + data)
conn.close()
"""

_ECHO_CLIENT = """
import socket, sys
src, dst, port, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
conn = socket.create_connection((dst, port), timeout=10, source_address=(src, 0))
conn.sendall(text.encode())
conn.shutdown(socket.SHUT_WR)
data = b""
while chunk := conn.recv(65536):
    data += chunk
sys.stdout.write(data.decode())
"""


def _start_echo_server(ns: Namespace, address: str) -> subprocess.Popen[str]:
    server: subprocess.Popen[str] = ns.popen(
        [sys.executable, "-c", _ECHO_SERVER, address, str(ECHO_PORT)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ready = server.stdout.readline() if server.stdout is not None else ""
    if ready.strip() != "ready":
        _stop_process(server)
        err = server.stderr.read() if server.stderr is not None else ""
        raise DemoFailure(f"echo server in {ns.name} did not start: {err.strip()}")
    return server


def _echo_client(ns: Namespace, src: str, dst: str, message: str) -> str:
    try:
        result = ns.run([sys.executable, "-c", _ECHO_CLIENT, src, dst, str(ECHO_PORT), message],
                        check=False, timeout=20)
    except subprocess.TimeoutExpired as exc:
        raise DemoFailure(f"no answer from {dst} through the tunnel") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise DemoFailure(f"echo client {src} -> {dst} failed: {last}")
    return result.stdout


def _stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _classify(capture: bytes) -> tuple[int, int, int, int]:
    """(raw ESP, UDP-encapsulated ESP, IKE, other) IPv4 packets in a capture."""
    esp = udp_esp = ike = other = 0
    try:
        packets = read_capture(capture)
    except PcapError as exc:
        raise DemoFailure(f"cannot read the traffic capture: {exc}") from exc
    for packet in packets:
        ip = ipv4_of(packet)
        if ip is None:
            continue  # ARP and the like: not IP traffic
        udp = udp_of(ip)
        if ip.protocol == IPPROTO_ESP:
            esp += 1
        elif udp is not None and NAT_T_PORT in (udp.sport, udp.dport):
            # RFC 3948 §2.2, §2.3: IKE behind the non-ESP marker, keepalives, else ESP
            if udp.payload[:4] == NON_ESP_MARKER:
                ike += 1
            elif udp.payload != NAT_KEEPALIVE:
                udp_esp += 1
        elif udp is not None and IKE_PORT in (udp.sport, udp.dport):
            ike += 1
        else:
            other += 1
    return esp, udp_esp, ike, other


# --- entry point ------------------------------------------------------------------------


def _preflight() -> str | None:
    """Why the demo cannot run here, or None."""
    if os.geteuid() != 0:
        return ("ikev1d demo needs root: it creates network namespaces, veth links and "
                "runs gateways inside them.\n  Run it as root, e.g. `sudo make demo` or "
                "`sudo .venv/bin/ikev1d demo`.")  # fmt: skip
    if shutil.which("ip") is None:
        return "ikev1d demo needs iproute2 (`ip`): apt-get install iproute2"
    ok, reason = netns.netns_available()
    if not ok:
        return f"ikev1d demo cannot create network namespaces here: {reason}"
    return None


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: the demo stops and cleans up.

    A subclass, not KeyboardInterrupt itself: CPython remembers a
    KeyboardInterrupt that leaves code run from source text (``exec`` of a
    string, as dataclasses and namedtuple do while a module is imported) as
    unhandled, even when a caller catches it, and then ends the interpreter by
    SIGINT after everything else ran (exit status -2 instead of 130). It
    compares the exception's exact type, so a subclass is not remembered.
    """


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the demo with :class:`_Interrupted`, so cleanup runs.

    Only the first signal raises; later ones are ignored, because by then the
    cleanup is under way (an exception raised in the middle of it, or after
    the code that catches it, would leave things behind or end the
    interpreter by the signal). Each handler is restored if it was installed,
    even when a signal arrives while they are being installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise _Interrupted(f"signal {signum}")

    previous: dict[signal.Signals, signal._HANDLER] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, was in previous.items():
            signal.signal(signum, was)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C / SIGTERM while cleaning up, so a second one cannot leave leftovers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ikev1d demo", description=__doc__.split("\n")[0])
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--dataplane", choices=("auto", "userspace", "none"), default="auto",
                        help="auto: userspace when it is available and starts, else none")
    parser.add_argument("--no-strongswan", action="store_true",
                        help="skip step 4 (ikev1d against strongSwan)")
    return parser.parse_args(list(argv))


def run_demo(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo; 0 on success, non-zero with a message otherwise (130 when
    interrupted by Ctrl-C, SIGTERM or SIGHUP).

    The SIGTERM/SIGHUP handler is in place before the demo creates anything and
    stays until it has removed everything and said so; a signal outside the
    inner ``try`` (before the first resource, or while the summary is printed)
    reaches :func:`ikev1d.cli.main` as KeyboardInterrupt, which exits 130.
    """
    with _terminate_as_exit():
        return _run_demo(argv, out)


def _run_demo(argv: Sequence[str] | None, out: TextIO | None) -> int:
    args = _parse(argv or [])
    color = {"auto": None, "always": True, "never": False}[args.color]
    con = Console(out if out is not None else sys.stdout, color)
    problem = _preflight()
    if problem is not None:
        con.error(problem)
        return 2
    started = time.monotonic()
    con.title("ikev1d demo: an IKEv1 VPN gateway in Python, shown working on this machine")
    con.line(f"Runs in network namespaces {NS_PREFIX}-{os.getpid()}-* and a temporary "
             "directory, removed at the end.", indent=0, style="dim")
    netns.cleanup_stale(NS_PREFIX)  # leftovers of a demo that was killed hard
    demo: Demo | None = None
    code = 1
    stack = contextlib.ExitStack()
    try:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ikev1d-demo-")))
        demo = Demo(con, work, stack, with_strongswan=not args.no_strongswan,
                    dataplane=args.dataplane)
        demo.step_decode()
        demo.step_gateways()
        demo.step_traffic(3, "ikev1d")
        demo.step_strongswan()
        demo.step_certificates()
        demo.step_roadwarrior()
        demo.step_teardown()
        code = 0
    except KeyboardInterrupt:
        con.write()
        con.error("interrupted; cleaning up")
        code = 130
    except (DemoFailure, LabDaemonError, CharonError, CaptureError, NetnsError, OSError,
            subprocess.SubprocessError) as exc:
        con.write()
        con.error(f"demo failed: {exc}")
        if demo is not None:
            _show_log_tails(con, demo)
        code = 1
    finally:
        with _uninterruptible():
            stack.close()
    elapsed = time.monotonic() - started
    con.write()
    if code == 0 and demo is not None:
        o = demo.outcome
        con.write(con.paint(f"demo finished in {elapsed:.1f} s", "bold"))
        con.line(
            f"summary: {o.decoded} strongSwan messages decoded ({o.decrypted} decrypted, "
            f"{o.verified} hashes verified); ikev1d <-> ikev1d established; "
            f"ikev1d <-> strongSwan {o.strongswan}; certificates {o.certificates}; "
            f"road warrior: {o.road_warrior}; traffic: {', '.join(o.traffic)}; "
            "SAs deleted, everything removed.",
            indent=0,
        )
        if demo.install_hint:
            con.line(f"for the step against strongSwan: {demo.install_hint}", indent=0)
    else:
        con.error(f"demo stopped after {elapsed:.1f} s; namespaces and files removed")
    return code


def _show_log_tails(con: Console, demo: Demo, lines: int = 12) -> None:
    """The end of each log, to explain a failure before the files are removed."""
    for who, read in (("site A ikev1d", demo.gw_a.log_text if demo.gw_a else None),
                      ("site B ikev1d", demo.gw_b.log_text if demo.gw_b else None),
                      ("site B strongSwan", demo.charon.log_text if demo.charon else None)):
        if read is None:
            continue
        tail = read().splitlines()[-lines:]
        if tail:
            con.line(f"last lines of the {who} log:", indent=0, style="dim")
            con.lines(tail, indent=2, style="dim")

"""ikev1d against Libreswan 4.10's pluto, with both kernels carrying the ESP (inside the VM).

ikev1d runs in namespace A with ``dataplane = "kernel"``, pluto (unpacked from its
Debian packages by ``make libreswan``, see ikev1d_lab.libreswan) in B, each
installing its SAs into its own namespace's XFRM. Each case is one connection on
its own address pair (A 192.0.2.<10i+1>, B 192.0.2.<10i+2>) and its own inner
networks (10.1.i.0/24 behind A, 10.2.i.0/24 behind B), so that one ikev1d and one
pluto serve the whole module: every Python process costs seconds under qemu's
emulation. Pluto's ``_updown`` adds B's route into the tunnel, ikev1d adds A's.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.libreswan import (
    Pluto,
    PlutoState,
    ipsec_conf,
    ipsec_secrets,
    libreswan_available,
)
from ikev1d_lab.netns import Namespace

from .conftest import xfrm

PSK = "libreswan-interop-psk-0123456789"


@dataclass(frozen=True)
class Case:
    """One connection, configured alike on both sides unless the case is about a mismatch."""

    name: str
    index: int
    ours_ike: tuple[str, ...]
    ours_esp: tuple[str, ...]
    their_ike: str                  # Libreswan's syntax
    their_esp: str
    their_ike_shown: str = ""       # how pluto names what was negotiated
    their_esp_shown: str = ""
    their_pfs: bool = False
    their_psk: str = PSK
    aggressive: bool = False
    dpd: bool = False                       # short DPD timers on both sides
    our_chosen: tuple[str, str] = ("", "")  # (IKE, ESP) ikev1d reports; default: the first
    their_right_net: str = ""               # what pluto expects behind ikev1d, if not ours

    @property
    def ours_chosen(self) -> tuple[str, str]:
        return (self.our_chosen[0] or self.ours_ike[0], self.our_chosen[1] or self.ours_esp[0])

    @property
    def ours(self) -> str:
        return f"192.0.2.{10 * self.index + 1}"

    @property
    def theirs(self) -> str:
        return f"192.0.2.{10 * self.index + 2}"

    @property
    def our_net(self) -> str:
        return f"10.1.{self.index}.0/24"

    @property
    def their_net(self) -> str:
        return f"10.2.{self.index}.0/24"

    @property
    def our_inner(self) -> str:
        return f"10.1.{self.index}.1"

    @property
    def their_inner(self) -> str:
        return f"10.2.{self.index}.1"


AES256_SHA256 = ("aes256-sha256-modp2048",)
LS_AES256_SHA256 = "aes256-sha2_256;modp2048"
LS_AES256_SHA256_SHOWN = "AES_CBC_256-HMAC_SHA2_256-MODP2048"

CASES = {c.name: c for c in [
    Case("gcm", 1, AES256_SHA256, ("aes128gcm16",), LS_AES256_SHA256, "aes_gcm128",
         LS_AES256_SHA256_SHOWN, "AES_GCM_16_128-NONE"),
    Case("cbc", 2, ("aes128-sha1-modp2048",), ("aes128-sha1",), "aes128-sha1;modp2048",
         "aes128-sha1", "AES_CBC_128-HMAC_SHA1-MODP2048", "AES_CBC_128-HMAC_SHA1_96"),
    Case("tdes", 3, ("3des-sha1-modp1536",), ("3des-sha1",), "3des-sha1;modp1536",
         "3des-sha1", "3DES_CBC_192-HMAC_SHA1-MODP1536", "3DES_CBC_192-HMAC_SHA1_96"),
    Case("pfs", 4, AES256_SHA256, ("aes128gcm16-modp2048",), LS_AES256_SHA256,
         "aes_gcm128;modp2048", LS_AES256_SHA256_SHOWN, "AES_GCM_16_128-NONE",
         their_pfs=True),
    # Libreswan as responder takes the initiator's order: its own ike= prefers aes128-sha1,
    # yet it picks our second proposal (the first it accepts).
    Case("three", 5, ("aes256-sha512-modp4096", "aes256-sha256-modp2048", "aes128-sha1-modp2048"),
         ("aes256gcm16", "aes128gcm16", "aes128-sha1"),
         "aes128-sha1;modp2048,aes256-sha2_256;modp2048", "aes128-sha1,aes_gcm128",
         LS_AES256_SHA256_SHOWN, "AES_GCM_16_128-NONE",
         our_chosen=("aes256-sha256-modp2048", "aes128gcm16")),
    # Failures: one mismatch each.
    Case("p1none", 6, ("aes128-sha256-modp3072",), ("aes128gcm16",), LS_AES256_SHA256,
         "aes_gcm128"),
    Case("p2none", 7, AES256_SHA256, ("aes256gcm16",), LS_AES256_SHA256, "aes_gcm128"),
    Case("badpsk", 8, AES256_SHA256, ("aes128gcm16",), LS_AES256_SHA256, "aes_gcm128",
         their_psk="not-the-same-psk-at-all"),
    Case("aggr", 9, AES256_SHA256, ("aes128gcm16",), LS_AES256_SHA256, "aes_gcm128",
         aggressive=True),
    # Libreswan, like ikev1d, wants the peer's tunnel exactly as configured.
    Case("badid", 10, AES256_SHA256, ("aes128gcm16",), LS_AES256_SHA256, "aes_gcm128",
         their_right_net="10.1.10.0/25"),
    Case("dpd", 11, AES256_SHA256, ("aes128gcm16",), LS_AES256_SHA256, "aes_gcm128",
         LS_AES256_SHA256_SHOWN, "AES_GCM_16_128-NONE", dpd=True),
]}
DPD_DELAY, DPD_TIMEOUT = 6, 18
THEIR_DPD_DELAY, THEIR_DPD_TIMEOUT = 2, 10


def _our_toml(cases: list[Case]) -> str:
    text = f"""\
[daemon]
listen = {json.dumps([c.ours for c in cases])}
dataplane = "kernel"
retransmit_timeout = "3s"
retransmit_tries = 3
"""
    for c in cases:
        text += f"""
[connections.{c.name}]
local_addrs = ["{c.ours}"]
remote_addrs = ["{c.theirs}"]
proposals = {json.dumps(list(c.ours_ike))}
encap = false
rekey_time = "4h"
{_dpd_toml(c)}
[connections.{c.name}.local]
auth = "psk"
id = "{c.ours}"

[connections.{c.name}.remote]
auth = "psk"
id = "{c.theirs}"

[connections.{c.name}.children.net]
local_ts = ["{c.our_net}"]
remote_ts = ["{c.their_net}"]
esp_proposals = {json.dumps(list(c.ours_esp))}
mode = "tunnel"
rekey_time = "1h"

[secrets.{c.name}]
secret = "{PSK}"
ids = ["{c.theirs}"]
"""
    return text


def _dpd_toml(case: Case) -> str:
    if not case.dpd:
        return ""
    return (f'dpd_delay = "{DPD_DELAY}s"\ndpd_timeout = "{DPD_TIMEOUT}s"\n'
            'dpd_action = "clear"\n')


def _their_conf(cases: list[Case]) -> tuple[str, str]:
    confs = [ipsec_conf(c.name, c.theirs, c.ours, c.their_net, c.their_right_net or c.our_net,
                        c.their_ike,
                        c.their_esp, pfs=c.their_pfs, aggressive=c.aggressive,
                        dpd=(THEIR_DPD_DELAY, THEIR_DPD_TIMEOUT, "clear") if c.dpd else None,
                        extra=("retransmit-timeout=10s",))
             for c in cases]
    # One "config setup" section, then every conn.
    head, _, _ = confs[0].partition("conn ")
    conf = head + "".join("conn " + text.partition("conn ")[2] for text in confs)
    secrets = "".join(ipsec_secrets(c.theirs, c.ours, c.their_psk) for c in cases)
    return conf, secrets


@dataclass
class Rig:
    a: Namespace
    b: Namespace
    ours: Ikev1dDaemon
    theirs: Pluto


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ok, reason = libreswan_available()
    if not ok:
        pytest.fail(f"Libreswan is missing in the VM guest: {reason}")
    cases = list(CASES.values())
    work = tmp_path_factory.mktemp("ls")
    with netns.two_hosts() as topo:
        for c in cases:
            topo.a.add_address(topo.if_a, f"{c.ours}/24")
            topo.b.add_address(topo.if_b, f"{c.theirs}/24")
            topo.a.add_lo_address(f"{c.our_inner}/24")
            topo.b.add_lo_address(f"{c.their_inner}/24")
        ours = Ikev1dDaemon(topo.a, work / "ikev1d", _our_toml(cases))
        theirs = Pluto(topo.b, work / "pluto")
        try:
            ours.start(timeout=180)
            theirs.start(*_their_conf(cases))
            yield Rig(topo.a, topo.b, ours, theirs)
        finally:
            # pluto's view, for the host to read after the run
            (work / "pluto" / "status.txt").write_text(_safe(theirs.status_text))
            code = ours.stop(timeout=30)
            theirs.stop()
    assert code == 0, ours.log_text()[-3000:]


@pytest.fixture
def case(rig: Rig, request: pytest.FixtureRequest) -> Iterator[Case]:
    """The case named by the test's (indirect) parameter."""
    chosen = CASES[request.param]
    yield chosen
    # Whatever a failed test left behind must not reach the next: pluto deletes (and sends
    # Deletes for) every SA of the connection.
    rig.theirs.down(chosen.name)


def _safe(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as exc:
        return f"unavailable: {exc}"


# --- helpers --------------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def _ping(ns: Namespace, dst: str, src: str, count: int = 3) -> int:
    """Echo replies received (busybox ping: native, fast under emulation)."""
    busybox = shutil.which("busybox")
    cmd = ([busybox, "ping", "-c", str(count), "-i", "0.2", "-W", "5", "-w", "20"] if busybox
           else ["ping", "-c", str(count), "-i", "0.2", "-W", "5", "-w", "20"])
    out = ns.run([*cmd, "-I", src, dst], check=False, timeout=60).stdout
    match = re.search(r"(\d+) (?:packets )?received", out)
    return int(match.group(1)) if match else 0


def _our_sa(rig: Rig, case: Case) -> dict[str, Any] | None:
    for ike in rig.ours.status()["ike_sas"]:
        if ike["name"] == case.name:
            return dict(ike)
    return None


def _spis(ns: Namespace, src: str, dst: str) -> set[str]:
    """SPIs of the XFRM states from `src` to `dst` in `ns` that carry keys (not the larval
    states SPI allocation leaves until they expire)."""
    found = set()
    for block in re.split(r"\n(?=src )", xfrm(ns, "state").strip()):
        spi = re.match(rf"src {re.escape(src)} dst {re.escape(dst)}\n\s*proto esp spi "
                       r"0x([0-9a-f]{8})", block)
        if spi and re.search(r"^\s*(aead|enc) ", block, re.MULTILINE):
            found.add(spi.group(1))
    return found


def _initiate(rig: Rig, case: Case, by_us: bool) -> None:
    if by_us:
        result = rig.ours.up(case.name, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr + rig.theirs.log_text()
    else:
        ok, out = rig.theirs.up(case.name, timeout=90)
        assert ok, out + rig.ours.log_text()[-3000:]


def _check_views(rig: Rig, case: Case, initiator_us: bool,
                 traffic: bool = False) -> tuple[dict[str, Any], PlutoState]:
    """Both sides established with the same SPIs, algorithms and networks, in both kernels
    (and, with `traffic`, ikev1d counted the pings in both directions)."""
    their_view = rig.theirs.wait_for(case.name, lambda v: v.established and bool(v.installed),
                                     timeout=30)
    # pluto's words, kept with the run's logs (tests/unit/test_lab_libreswan.py parses them)
    (rig.theirs.work_dir / f"status-{case.name}.txt").write_text(rig.theirs.status_text())
    ike = _our_sa(rig, case)
    assert ike is not None and ike["state"] == "ESTABLISHED", ike
    assert ike["initiator"] is initiator_us
    assert ike["proposal"] == case.ours_chosen[0]
    (child,) = ike["children"]
    assert child["state"] == "INSTALLED" and child["mode"] == "tunnel" and not child["encap"]
    assert child["proposal"] == case.ours_chosen[1]
    assert child["local_ts"] == [case.our_net] and child["remote_ts"] == [case.their_net]
    if traffic:
        assert child["packets_in"] >= 6 and child["packets_out"] >= 6, child

    (their_child,) = their_view.installed
    assert (their_child.spi_in, their_child.spi_out) == (child["spi_out"], child["spi_in"]), (
        their_view, child)
    assert their_view.ike_algorithm == case.their_ike_shown, their_view
    assert their_view.esp_algorithm == case.their_esp_shown, their_view
    if case.their_pfs:
        assert their_view.pfs_group == case.ours_chosen[1].rsplit("-", 1)[1].upper(), their_view
    assert (their_view.local, their_view.remote) == (case.theirs, case.ours)
    assert (their_view.local_net, their_view.remote_net) == (case.their_net, case.our_net)

    # What each side installed into its kernel: the same pair of SPIs.
    assert _spis(rig.a, case.ours, case.theirs) == {child["spi_out"]}
    assert _spis(rig.a, case.theirs, case.ours) == {child["spi_in"]}
    assert _spis(rig.b, case.theirs, case.ours) == {child["spi_in"]}
    assert _spis(rig.b, case.ours, case.theirs) == {child["spi_out"]}
    return ike, their_view


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "initiator"), [
    ("gcm", "ikev1d"), ("gcm", "libreswan"), ("cbc", "libreswan"), ("tdes", "ikev1d"),
    ("pfs", "libreswan"), ("three", "ikev1d"),
], indirect=["case"])
def test_libreswan_psk_tunnel_traffic_and_delete(rig: Rig, case: Case, initiator: str) -> None:
    """Main Mode + Quick Mode, ping both ways, then the initiator deletes.

    The initiator deletes because pluto revives a connection it initiated when the peer
    deletes it; so Deletes go both ways over the two parametrisations of "gcm".
    """
    by_us = initiator == "ikev1d"
    _initiate(rig, case, by_us)
    # As Quick Mode responder pluto installs its outbound SA only when message 3 arrives,
    # which can be seconds after ikev1d is done (the guest's kernel loads the cipher's
    # modules on first use): traffic waits for both sides.
    rig.theirs.wait_for(case.name, lambda v: v.established and bool(v.installed), timeout=30)
    received = (_ping(rig.a, case.their_inner, case.our_inner),
                _ping(rig.b, case.our_inner, case.their_inner))
    ike, their_view = _check_views(rig, case, by_us, traffic=True)
    (child,) = ike["children"]
    assert received == (3, 3), rig.ours.log_text()[-3000:]
    (their_child,) = their_view.installed
    their_in, their_out = rig.theirs.traffic(case.name)[their_child.serial]
    # Three echo requests and three replies each way, 84 octets each (pluto counts the
    # inner IP packets).
    assert their_in >= 6 * 84 and their_out >= 6 * 84, (their_in, their_out)

    if by_us:
        assert rig.ours.down(case.name).returncode == 0
        _wait(lambda: not rig.theirs.status(case.name).ike_sas
              and not rig.theirs.status(case.name).installed, 30,
              "pluto to act on ikev1d's Deletes")
        rig.theirs.wait_log(rf'"{case.name}" #\d+: received Delete SA\(0x{child["spi_in"]}\) '
                            r"payload: deleting IPsec State", timeout=5)
    else:
        rig.theirs.down(case.name)
        _wait_our_log(rig, case, "ISAKMP SA deleted (deleted by peer)", 30)
        assert _our_sa(rig, case) is None
    _wait(lambda: not _spis(rig.a, case.ours, case.theirs)
          and not _spis(rig.a, case.theirs, case.ours), 30, "ikev1d's SAs to leave the kernel")
    _wait(lambda: not _spis(rig.b, case.ours, case.theirs)
          and not _spis(rig.b, case.theirs, case.ours), 30, "pluto's SAs to leave the kernel")
    _wait_our_log(rig, case, "IPsec SA deleted", 5)


@pytest.mark.parametrize("case", ["p1none"], indirect=True)
@pytest.mark.parametrize("initiator", ["ikev1d", "libreswan"])
def test_libreswan_phase1_no_proposal_chosen(rig: Rig, case: Case, initiator: str) -> None:
    if initiator == "ikev1d":
        out = _our_failed_up(rig, case)
        assert "peer sent NO-PROPOSAL-CHOSEN" in out, out
        rig.theirs.wait_log(rf'"{case.name}" #\d+: no acceptable Oakley Transform', 10)
    else:
        rig.theirs.initiate_async(case.name)
        line = _wait_our_log(rig, case, "NO-PROPOSAL-CHOSEN: peer offered", 60, peer=True)
        # the log line lists what was offered next to what we accept
        assert "aes256-sha256-modp2048" in line and "aes128-sha256-modp3072" in line, line
        rig.theirs.wait_log(rf'"{case.name}" #\d+: received and ignored notification payload: '
                            "NO_PROPOSAL_CHOSEN", 30)
    _no_sa(rig, case)


@pytest.mark.parametrize("case", ["p2none"], indirect=True)
@pytest.mark.parametrize("initiator", ["ikev1d", "libreswan"])
def test_libreswan_phase2_no_proposal_chosen(rig: Rig, case: Case, initiator: str) -> None:
    if initiator == "ikev1d":
        out = _our_failed_up(rig, case)
        assert "peer sent NO-PROPOSAL-CHOSEN" in out, out
        rig.theirs.wait_log(rf'"{case.name}" #\d+: sending encrypted notification '
                            "NO_PROPOSAL_CHOSEN", 10)
    else:
        rig.theirs.initiate_async(case.name)
        line = _wait_our_log(rig, case, "NO-PROPOSAL-CHOSEN: peer offered", 60)
        assert "aes128gcm16" in line and "aes256gcm16" in line, line
        rig.theirs.wait_log(rf'"{case.name}" #\d+: received and ignored notification payload: '
                            "NO_PROPOSAL_CHOSEN", 30)
    _no_child(rig, case)


@pytest.mark.parametrize("case", ["badid"], indirect=True)
@pytest.mark.parametrize("initiator", ["ikev1d", "libreswan"])
def test_libreswan_invalid_id_information(rig: Rig, case: Case, initiator: str) -> None:
    if initiator == "ikev1d":
        out = _our_failed_up(rig, case)
        assert "peer sent INVALID-ID-INFORMATION" in out, out
        rig.theirs.wait_log(rf'"{case.name}" #\d+: sending encrypted notification '
                            "INVALID_ID_INFORMATION", 10)
    else:
        rig.theirs.initiate_async(case.name)
        _wait_our_log(rig, case, "INVALID-ID-INFORMATION", 60)
        rig.theirs.wait_log(rf'"{case.name}" #\d+: received and ignored notification payload: '
                            "INVALID_ID_INFORMATION", 30)
    _no_child(rig, case)


@pytest.mark.parametrize("case", ["badpsk"], indirect=True)
@pytest.mark.parametrize("initiator", ["ikev1d", "libreswan"])
def test_libreswan_wrong_psk(rig: Rig, case: Case, initiator: str) -> None:
    if initiator == "ikev1d":
        out = _our_failed_up(rig, case)
        # pluto cannot read our message 5 and only repeats its message 4; ikev1d keeps
        # retransmitting message 5 until it gives up.
        assert "authentication failed: peer did not answer our ID/HASH" in out, out
        rig.theirs.wait_log(rf'"{case.name}" #\d+: probable authentication failure '
                            r"\(mismatch of preshared secrets\?\)", 10)
    else:
        rig.theirs.initiate_async(case.name)
        _wait_our_log(rig, case, "authentication failed: cannot read message 5", 60)
        rig.theirs.wait_log(rf'"{case.name}" #\d+: received and ignored notification payload: '
                            "AUTHENTICATION_FAILED", 30)
    _no_sa(rig, case)


@pytest.mark.parametrize("case", ["aggr"], indirect=True)
def test_libreswan_aggressive_mode_is_refused(rig: Rig, case: Case) -> None:
    rig.theirs.initiate_async(case.name)
    _wait_our_log(rig, case, "Aggressive Mode is not supported", 60, peer=True)
    rig.theirs.wait_log(rf'"{case.name}" #\d+: received and ignored notification payload: '
                        "INVALID_EXCHANGE_TYPE", 30)
    _no_sa(rig, case)


# --- failure helpers ------------------------------------------------------------------------


def _our_failed_up(rig: Rig, case: Case) -> str:
    result = rig.ours.up(case.name, timeout=40, check=False)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def _wait_our_log(rig: Rig, case: Case, text: str, timeout: float, *,
                  peer: bool = False) -> str:
    """The first line of ikev1d's log with `text` about this case's connection (or only its
    peer's address, before the connection is known)."""
    tag = case.theirs if peer else f"[{case.name} "
    found: list[str] = []

    def seen() -> bool:
        found[:] = [ln for ln in rig.ours.log_text().splitlines() if text in ln and tag in ln]
        return bool(found)

    _wait(seen, timeout, f"{text!r} in ikev1d's log")
    return found[0]


def _no_sa(rig: Rig, case: Case) -> None:
    ike = _our_sa(rig, case)
    assert ike is None or ike["state"] != "ESTABLISHED", ike
    assert not rig.theirs.status(case.name).established
    _no_child(rig, case, ike_checked=True)


def _no_child(rig: Rig, case: Case, ike_checked: bool = False) -> None:
    if not ike_checked:
        ike = _our_sa(rig, case)
        assert ike is None or not ike["children"], ike
    assert not rig.theirs.status(case.name).installed
    assert not _spis(rig.a, case.ours, case.theirs) and not _spis(rig.a, case.theirs, case.ours)
    assert not _spis(rig.b, case.ours, case.theirs) and not _spis(rig.b, case.theirs, case.ours)


def _pluto_dpd(rig: Rig, case: Case) -> tuple[int, int]:
    """pluto's DPD sequence numbers on the connection's ISAKMP SA: (last R-U-THERE it
    received, last it sent)."""
    text = rig.theirs.status_text()
    (rig.theirs.work_dir / f"status-{case.name}-dpd.txt").write_text(text)
    for line in text.splitlines():
        m = re.search(rf'#\d+: "{case.name}"\S* STATE_MAIN_\w+ .*lastdpd=-?\d+s'
                      r"\(seq in:(\d+) out:(\d+)\)", line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return 0, 0


# Last in the module: it kills pluto.
@pytest.mark.parametrize("case", ["dpd"], indirect=True)
def test_libreswan_dpd_answered_then_a_killed_pluto_is_detected(rig: Rig, case: Case) -> None:
    """R-U-THERE from ikev1d answered with R-U-THERE-ACK (RFC 3706) while pluto lives;
    after kill -9 of pluto, ikev1d declares it dead within dpd_timeout and clears the SAs."""
    _initiate(rig, case, by_us=True)
    rig.theirs.wait_for(case.name, lambda v: v.established and bool(v.installed), timeout=30)
    # pluto answers ikev1d's R-U-THEREs ("seq in" is the last it received; "lastdpd" the
    # age of the last sign of life) and, while they keep coming, sends none of its own
    # ("seq out" stays 0, even with its dpddelay shorter than ours). It would declare
    # ikev1d dead and log it if nothing came for its dpdtimeout.
    _wait(lambda: _pluto_dpd(rig, case)[0] > 0, 3 * DPD_TIMEOUT, "R-U-THERE answered")
    first = _pluto_dpd(rig, case)[0]
    time.sleep(DPD_TIMEOUT)
    assert _pluto_dpd(rig, case)[0] > first  # ikev1d kept asking, pluto kept answering
    assert rig.theirs.status(case.name).established
    assert "DPD: No response" not in rig.theirs.log_text()
    assert "not responding" not in rig.ours.log_text()

    rig.theirs.kill()
    line = _wait_our_log(rig, case, "DPD: peer", 3 * DPD_TIMEOUT)
    assert f"{case.theirs} not responding" in line and "action clear" in line, line
    _wait(lambda: not _spis(rig.a, case.ours, case.theirs)
          and not _spis(rig.a, case.theirs, case.ours), 30, "ikev1d's SAs to leave the kernel")
    assert _our_sa(rig, case) is None

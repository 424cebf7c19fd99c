"""ikev1d against Libreswan 4.10's pluto as road warriors (XAUTH + Mode Config, both roles)
and INITIAL-CONTACT after a restart of either side, in the VM (kernel ESP on both sides).

One ikev1d (namespace A, ``dataplane = "kernel"``) and one pluto (namespace B) serve
the module, as in test_libreswan.py: each case is one connection on its own address pair
(A 192.0.2.<10i+1>, B 192.0.2.<10i+2>) with its own networks (10.1.i.0/24 behind A,
10.2.i.0/24 behind B, pool 10.3.i.0/24).

Libreswan as XAUTH / Mode Config **server**, ikev1d as client (``vips = ["0.0.0.0"]``,
``local_xauth``), what works in ipsec.conf (left = pluto)::

    leftsubnet=10.2.i.0/24          the network the client reaches
    leftxauthserver=yes  leftmodecfgserver=yes
    rightxauthclient=yes rightmodecfgclient=yes
    rightaddresspool=10.3.i.10-10.3.i.20
    modecfgpull=yes|no   modecfgdns=10.2.i.53   xauthby=file

and the user in ``<ipsecdir>/passwd`` as ``user:crypt(3) hash:connection``. pluto sends
INTERNAL_IP4_ADDRESS, DNS and its ``leftsubnet`` as CISCO_SPLIT_INC (UNITY_SPLIT_INCLUDE).

Libreswan as **client**, ikev1d as server (``pools``, ``remote_xauth``, the child's
``remote_ts`` omitted)::

    (no leftsubnet: pluto's end of the tunnel becomes the virtual IP /32)
    rightsubnet=10.1.i.0/24
    leftxauthclient=yes leftmodecfgclient=yes leftusername=carol
    rightxauthserver=yes rightmodecfgserver=yes
    modecfgpull=yes|no

with ``@carol : XAUTH "password"`` in its secrets file. ``leftsubnet=0.0.0.0/0`` is not
needed; pluto puts the leased address on its side and uses it as the source into the
tunnel ("setting ip source address to 10.3.i.1/32"). Given DNS servers, its _updown
rewrites /etc/resolv.conf (seconds under emulation), so the pool here has none.

Push with pluto as client (``modecfgpull=no``, our ``modecfg = "push"``): pluto takes the
CFG_SET only under the message ID of the XAUTH status exchange, on its CBC chain, which
is how ikev1d sends it after XAUTH. Under a new message ID (draft-dukes-ike-mode-cfg's
form, strongSwan's) pluto takes the address and brings up its IPsec SA, but its ISAKMP
SA stays in STATE_XAUTH_I1 ("XAUTH client - possibly awaiting CFG_set"). Now it reaches
STATE_MAIN_I4 ("IKE SA established"), but pluto 4.10 enters that state with a
retransmission timer that nothing stops: it resends its ACK and deletes the ISAKMP SA
at its ``retransmit-timeout`` (30 s in this case), then starts over. The case checks
both (see docs/interop-libreswan.md); use pull with Libreswan clients.

INITIAL-CONTACT: Libreswan 4.10 sends it in Main Mode message 5 as initiator only with
``initial-contact=yes`` (the default is no; ``whack --status`` shows
``initial-contact:no``) and never honours a received one in IKEv1 ("ignoring
informational payload IPSEC_INITIAL_CONTACT"): its older SAs stay until they expire or
DPD removes them. See docs/interop-libreswan.md.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d.daemon.control import StatusRequest, decode_status
from ikev1d.daemon.control_client import send_request
from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.libreswan import Pluto, PlutoState, ipsec_conf, libreswan_available
from ikev1d_lab.netns import Namespace

from .test_libreswan import _ping, _spis, _wait

PSK = "libreswan-road-warrior-psk-0123"
IKE, ESP = "aes256-sha256-modp2048", "aes128gcm16"
LS_IKE, LS_ESP = "aes256-sha2_256;modp2048", "aes_gcm128"
# XAUTH users: (name, password) per case; "badpw" cases log in with another password.
PASSWORDS = {"alice": "alice's password", "bob": "bob's password", "carol": "carol's password",
             "dave": "dave's password", "erin": "erin's password"}
WRONG = "not the password"


@dataclass(frozen=True)
class Case:
    name: str
    index: int
    role: str               # "server": pluto is the Mode Config server; "client"; "ic": PSK only
    modecfg: str = "pull"
    user: str = ""
    wrong_password: bool = False
    their_initial_contact: bool = False     # ipsec.conf initial-contact=yes
    our_unique: str = "no"

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

    @property
    def pool(self) -> str:
        return f"10.3.{self.index}.0/24"

    @property
    def dns(self) -> str:
        return f"10.2.{self.index}.53"


CASES = {c.name: c for c in [
    Case("lspull", 1, "server", "pull", "alice"),
    Case("lspush", 2, "server", "push", "alice"),
    Case("lsbad", 3, "server", "pull", "bob", wrong_password=True),
    Case("lcpull", 4, "client", "pull", "carol"),
    Case("lcpush", 5, "client", "push", "erin"),
    Case("lcbad", 6, "client", "pull", "dave", wrong_password=True),
    # INITIAL-CONTACT, PSK site to site: pluto restarted (with and without its
    # initial-contact=yes), ikev1d restarted (with unique "no" and "never").
    Case("icl", 7, "ic", their_initial_contact=True),
    Case("icln", 8, "ic"),
    Case("ico", 9, "ic"),
    Case("icon", 10, "ic", our_unique="never"),
]}


# --- configuration ------------------------------------------------------------------------


def _our_toml(cases: list[Case]) -> str:
    text = f"""\
[daemon]
listen = {json.dumps([c.ours for c in cases])}
dataplane = "kernel"
retransmit_timeout = "3s"
# pluto as Quick Mode initiator sends message 3 only after its _updown has run, which
# takes up to ~20 s under emulation: ours waits 3 + 6 + 12 + 24 s.
retransmit_tries = 4
"""
    for c in cases:
        text += f"""
[connections.{c.name}]
local_addrs = ["{c.ours}"]
remote_addrs = ["{c.theirs}"]
proposals = ["{IKE}"]
unique = "{c.our_unique}"
"""
        if c.role == "server":      # we are the client
            text += f'vips = ["0.0.0.0"]\nmodecfg = "{c.modecfg}"\n'
        elif c.role == "client":    # we are the server
            text += f'pools = ["{c.name}"]\nmodecfg = "{c.modecfg}"\n'
        text += f"""
[connections.{c.name}.local]
auth = "psk"
id = "{c.ours}"

[connections.{c.name}.remote]
auth = "psk"
id = "{c.theirs}"
"""
        if c.role == "server":
            text += (f'\n[connections.{c.name}.local_xauth]\nauth = "xauth"\n'
                     f'xauth_id = "{c.user}"\n')
        elif c.role == "client":
            text += f'\n[connections.{c.name}.remote_xauth]\nauth = "xauth"\n'
        text += f"""
[connections.{c.name}.children.net]
esp_proposals = ["{ESP}"]
mode = "tunnel"
"""
        if c.role != "server":
            text += f'local_ts = ["{c.our_net}"]\n'
        if c.role != "client":
            text += f'remote_ts = ["{c.their_net}"]\n'
        if c.role == "client":
            # No DNS: pluto's _updown would put it into /etc/resolv.conf, slowly.
            text += f'\n[pools.{c.name}]\naddrs = "{c.pool}"\n'
        text += f"""
[secrets.{c.name}]
secret = "{PSK}"
ids = ["{c.theirs}"]
"""
    # XAUTH passwords: the client's own (a wrong one for "bad" cases), the server's users.
    client_users = {c.user: WRONG if c.wrong_password else PASSWORDS[c.user]
                    for c in cases if c.role == "server"}
    server_users = {c.user: PASSWORDS[c.user] for c in cases if c.role == "client"}
    for n, (user, password) in enumerate({**client_users, **server_users}.items()):
        text += (f'\n[secrets.xauth{n}]\ntype = "xauth"\nids = ["{user}"]\n'
                 f'secret = {json.dumps(password)}\n')
    return text


def _their_conf(cases: list[Case]) -> tuple[str, str]:
    confs = []
    for c in cases:
        # lcpush: pluto's ISAKMP SA lives for its retransmit-timeout (see the case)
        extra = [f"retransmit-timeout={30 if c.name == 'lcpush' else 10}s"]
        left_subnet: str | None = c.their_net
        right_subnet: str | None = c.our_net
        if c.role == "server":
            right_subnet = None     # the client's virtual IP
            extra += ["leftxauthserver=yes", "leftmodecfgserver=yes", "rightxauthclient=yes",
                      "rightmodecfgclient=yes",
                      f"rightaddresspool=10.3.{c.index}.10-10.3.{c.index}.20",
                      f"modecfgpull={'yes' if c.modecfg == 'pull' else 'no'}",
                      f"modecfgdns={c.dns}", "xauthby=file"]
        elif c.role == "client":
            left_subnet = None      # our virtual IP
            extra += ["leftxauthclient=yes", "leftmodecfgclient=yes", f"leftusername={c.user}",
                      "rightxauthserver=yes", "rightmodecfgserver=yes",
                      f"modecfgpull={'yes' if c.modecfg == 'pull' else 'no'}"]
        if c.their_initial_contact:
            extra.append("initial-contact=yes")
        confs.append(ipsec_conf(c.name, c.theirs, c.ours, left_subnet, right_subnet, LS_IKE,
                                LS_ESP, extra=extra))
    head, _, _ = confs[0].partition("conn ")
    conf = head + "".join("conn " + text.partition("conn ")[2] for text in confs)
    secrets = "".join(f'{c.theirs} {c.ours} : PSK "{PSK}"\n' for c in cases)
    secrets += "".join(
        f'@{c.user} : XAUTH "{WRONG if c.wrong_password else PASSWORDS[c.user]}"\n'
        for c in cases if c.role == "client")
    return conf, secrets


def _their_passwd(cases: list[Case]) -> str:
    """pluto's XAUTH users (``xauthby=file``): ``user:crypt(3) hash:connection``."""
    lines = []
    for c in cases:
        if c.role != "server":
            continue
        hashed = subprocess.run(["openssl", "passwd", "-6", "-salt", f"salt{c.index:04d}",
                                 "-stdin"], input=PASSWORDS[c.user], capture_output=True,
                                text=True, check=True, timeout=60).stdout.strip()
        lines.append(f"{c.user}:{hashed}:{c.name}\n")
    return "".join(lines)


# --- the rig --------------------------------------------------------------------------------


@dataclass
class Rig:
    a: Namespace
    b: Namespace
    ours: Ikev1dDaemon
    theirs: Pluto
    work: Path


def _start_pluto(rig_b: Namespace, work: Path, cases: list[Case], n: int = 0) -> Pluto:
    pluto = Pluto(rig_b, work / "pluto")
    if n:   # a restart: keep the earlier log
        log = pluto.log_path
        if log.exists():
            log.rename(log.with_name(f"pluto.{n}.log"))
    pluto.ipsec_dir.mkdir(parents=True, exist_ok=True)
    (pluto.ipsec_dir / "passwd").write_text(_their_passwd(cases))
    pluto.start(*_their_conf(cases))
    return pluto


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ok, reason = libreswan_available()
    if not ok:
        pytest.fail(f"Libreswan is missing in the VM guest: {reason}")
    cases = list(CASES.values())
    work = tmp_path_factory.mktemp("lsrw")
    with netns.two_hosts(inner_a=None, inner_b=None) as topo:
        for c in cases:
            topo.a.add_address(topo.if_a, f"{c.ours}/24")
            topo.b.add_address(topo.if_b, f"{c.theirs}/24")
            if c.role != "server":
                topo.a.add_lo_address(f"{c.our_inner}/24")
            if c.role != "client":
                topo.b.add_lo_address(f"{c.their_inner}/24")
        ours = Ikev1dDaemon(topo.a, work / "ikev1d", _our_toml(cases))
        rigs: list[Rig] = []
        try:
            ours.start(timeout=180)
            rigs.append(Rig(topo.a, topo.b, ours, _start_pluto(topo.b, work, cases), work))
            yield rigs[0]
        finally:
            if rigs:    # the tests may have restarted pluto: the rig has the current one
                (work / "pluto" / "status.txt").write_text(_safe_status(rigs[0].theirs))
            code = ours.stop(timeout=30)
            if rigs:
                rigs[0].theirs.stop()
    assert code == 0, ours.log_text()[-3000:]


def _safe_status(pluto: Pluto) -> str:
    try:
        return pluto.status_text()
    except Exception as exc:
        return f"unavailable: {exc}"


@pytest.fixture(autouse=True)
def _logs_as_we_go(rig: Rig, request: pytest.FixtureRequest) -> Iterator[None]:
    """Both daemons' logs, copied next to the run's results after each test (the guest's
    temporary files reach the host only when the whole run ends)."""
    yield
    xml = request.config.option.xmlpath
    if not xml:
        return
    out = Path(xml).parent / "libreswan-rw"
    out.mkdir(exist_ok=True)
    (out / "ikev1d.log").write_text(rig.ours.log_text())
    (out / "pluto.log").write_text(rig.theirs.log_text())
    (out / "pluto-status.txt").write_text(_safe_status(rig.theirs))


@pytest.fixture
def case(rig: Rig, request: pytest.FixtureRequest) -> Iterator[Case]:
    chosen = CASES[request.param]
    yield chosen
    rig.theirs.down(chosen.name)
    rig.ours.cli("down", chosen.name, check=False)


# --- views ----------------------------------------------------------------------------------


def _our_status(rig: Rig, cli: bool = False) -> dict[str, Any]:
    """ikev1d's status document: from ``ikev1d status --json`` with `cli`, else straight from
    the control socket (the same document without a Python process, which costs seconds
    under emulation)."""
    if cli:
        return rig.ours.status()
    document: dict[str, Any] = decode_status(
        send_request(str(rig.ours.socket_path), StatusRequest())).to_json()
    return document


def _our_sas(rig: Rig, case: Case, cli: bool = False) -> list[dict[str, Any]]:
    return [ike for ike in _our_status(rig, cli)["ike_sas"] if ike["name"] == case.name]


def _their_vip(rig: Rig, case: Case) -> str:
    """The virtual IP as pluto shows it on the connection line: the client's end of the
    tunnel (``...192.0.2.41[...]===10.3.4.10/32`` as server, ``10.3.4.1/32===...`` as
    client)."""
    text = rig.theirs.status_text()
    for line in text.splitlines():
        m = re.match(rf'^(?:\d{{3}} )?"{case.name}"(?:\[\d+\])?: +(\S+?)===\S+\.\.\.\S+?'
                     r"(?:===(\S+?))?;", line)
        if m:
            ends = (m.group(1), m.group(2) or "")
            vip = ends[1] if case.role == "server" else ends[0]
            return vip.removesuffix("/32")
    return ""


def _their_children(rig: Rig, case: Case) -> list[tuple[int, str, str]]:
    """pluto's installed IPsec SAs: (serial, spi_in, spi_out)."""
    return [(c.serial, c.spi_in, c.spi_out) for c in rig.theirs.status(case.name).installed]


def _kernel(ns: Namespace, src: str, dst: str) -> set[str]:
    return _spis(ns, src, dst)


def _their_rw_up(view: PlutoState) -> bool:
    """pluto's ISAKMP SA and an IPsec SA are there. Its ISAKMP SA's state does not say
    "IKE SA established" after Mode Config: as server in pull mode it stays in
    STATE_MODE_CFG_R1 ("sent ModeCfg reply, expecting Ack")."""
    return bool(view.ike_sas) and bool(view.installed)


def _established_rw(rig: Rig, case: Case) -> None:
    """Both sides agree on the virtual IP and the SPIs, in both kernels too, and pings
    from (or to) the virtual IP cross the tunnel both ways."""
    view = rig.theirs.wait_for(case.name, _their_rw_up, timeout=40)
    (rig.work / f"status-{case.name}.txt").write_text(rig.theirs.status_text())
    (ike,) = _our_sas(rig, case, cli=True)
    assert ike["state"] == "ESTABLISHED" and ike["auth"] == "psk+xauth", ike
    vip = ike["virtual_ip"]
    assert vip and vip.startswith(f"10.3.{case.index}."), ike
    assert _their_vip(rig, case) == vip, rig.theirs.status_text()[-3000:]
    (child,) = ike["children"]
    if case.role == "server":   # we are the client
        assert child["local_ts"] == [f"{vip}/32"] and child["remote_ts"] == [case.their_net]
        assert ike["dns"] == [case.dns], ike
        assert ike["initiator"] is True
    else:
        assert child["local_ts"] == [case.our_net] and child["remote_ts"] == [f"{vip}/32"]
        assert ike["initiator"] is False
    (their_child,) = view.installed
    assert (their_child.spi_in, their_child.spi_out) == (child["spi_out"], child["spi_in"]), (
        view, child)
    assert _kernel(rig.a, case.ours, case.theirs) == {child["spi_out"]}
    assert _kernel(rig.a, case.theirs, case.ours) == {child["spi_in"]}
    assert _kernel(rig.b, case.theirs, case.ours) == {child["spi_in"]}
    assert _kernel(rig.b, case.ours, case.theirs) == {child["spi_out"]}
    if case.role == "server":
        pings = (_ping(rig.a, case.their_inner, vip), _ping(rig.b, vip, case.their_inner))
    else:
        pings = (_ping(rig.b, case.our_inner, vip), _ping(rig.a, vip, case.our_inner))
    assert pings == (3, 3), (pings, rig.ours.log_text()[-3000:])
    (ike,) = _our_sas(rig, case)
    (child,) = ike["children"]
    assert child["packets_in"] >= 6 and child["packets_out"] >= 6, child
    (their_child,) = rig.theirs.status(case.name).installed
    their_in, their_out = rig.theirs.traffic(case.name)[their_child.serial]
    assert their_in >= 6 * 84 and their_out >= 6 * 84, (their_in, their_out)


# --- Libreswan as XAUTH / Mode Config server ------------------------------------------------


@pytest.mark.parametrize("case", ["lspull", "lspush"], indirect=True)
def test_libreswan_server_xauth_mode_config(rig: Rig, case: Case) -> None:
    """ikev1d logs in with XAUTH, gets its address from pluto's pool (pulled, or pushed by
    pluto), and pings pluto's network from it."""
    result = rig.ours.up(case.name, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr + rig.theirs.log_text()[-3000:]
    _established_rw(rig, case)
    rig.theirs.wait_log(rf'"{case.name}" #\d+: XAUTH: User {case.user}: Authentication '
                        "Successful", 5)
    if case.modecfg == "pull":
        rig.theirs.wait_log(rf'"{case.name}" #\d+: sent ModeCfg reply', 5)
    else:
        rig.theirs.wait_log(rf'"{case.name}" #\d+: received ModeCfg Ack', 5)
    line = next(ln for ln in rig.ours.log_text().splitlines()
                if f"[{case.name} " in ln and "virtual IP" in ln and "assigned" in ln)
    # pluto sends its leftsubnet as CISCO_SPLIT_INC, which we show as a split network
    assert f"split networks {case.their_net}" in line, line
    assert rig.ours.down(case.name).returncode == 0
    _wait(lambda: not rig.theirs.status(case.name).ike_sas, 30, "pluto to act on our Delete")
    _wait(lambda: not _kernel(rig.a, case.ours, case.theirs), 30, "our SAs to go")
    # the address left this host with the SA
    assert f"10.3.{case.index}." not in rig.a.run(["ip", "-o", "addr"]).stdout


@pytest.mark.parametrize("case", ["lsbad"], indirect=True)
def test_libreswan_server_refuses_a_wrong_xauth_password(rig: Rig, case: Case) -> None:
    result = rig.ours.up(case.name, timeout=60, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert f"XAUTH authentication failed for user '{case.user}': the server refused it" in out
    assert WRONG not in rig.ours.log_text()
    rig.theirs.wait_log(rf'"{case.name}" #\d+: XAUTH: User {case.user}: Authentication '
                        "Failed: Incorrect Username or Password", 10)
    # pluto asks again (it does not end the SA on a failed login) until its
    # retransmit-timeout; we have ended ours.
    _wait(lambda: not rig.theirs.status(case.name).ike_sas, 40, "pluto to give up")
    assert not _our_sas(rig, case)
    assert not _kernel(rig.a, case.ours, case.theirs) and not _kernel(rig.b, case.theirs,
                                                                         case.ours)


# --- Libreswan as XAUTH / Mode Config client ------------------------------------------------


@pytest.mark.parametrize("case", ["lcpull", "lcpush"], indirect=True)
def test_libreswan_client_xauth_mode_config(rig: Rig, case: Case) -> None:
    """pluto logs in to ikev1d with XAUTH, pulls an address from ikev1d's pool (or has it
    pushed by ikev1d) and reaches ikev1d's network from it."""
    ok, out = rig.theirs.up(case.name, timeout=90)
    assert ok, out + rig.ours.log_text()[-3000:]
    assert "XAUTH: Successfully Authenticated" in out, out
    _established_rw(rig, case)
    vip = _our_sas(rig, case)[0]["virtual_ip"]
    if case.modecfg == "pull":
        assert f"Received IPv4 address: {vip}/32" in out, out
    line = next(ln for ln in rig.ours.log_text().splitlines()
                if f"[{case.name} " in ln and "XAUTH authentication of" in ln)
    assert f"'{case.user}' successful" in line, line
    pool = next(p for p in _our_status(rig)["pools"] if p["name"] == case.name)
    assert pool["online"] == 1, pool
    if case.modecfg == "push":
        # Pushed under the message ID of our XAUTH status exchange, the address takes
        # pluto's ISAKMP SA from STATE_XAUTH_I1 to STATE_MAIN_I4 ("IKE SA established");
        # under a new message ID it stayed in STATE_XAUTH_I1.
        theirs = [ln for ln in rig.theirs.log_text().splitlines() if f'"{case.name}"' in ln]
        got = max(i for i, ln in enumerate(theirs) if f"Received IP address {vip}/32" in ln)
        assert any("IKE SA established" in ln for ln in theirs[got:]), theirs
        assert rig.theirs.status(case.name).established, rig.theirs.status_text()[-3000:]
        # pluto 4.10 enters STATE_MAIN_I4 from there with its retransmission timer
        # running (its state table's, meant for STATE_XAUTH_I1): it resends its ACK,
        # which we drop, and at its retransmit-timeout deletes the ISAKMP SA and
        # starts over, whatever the server does (docs/interop-libreswan.md).
        rig.theirs.wait_log(rf'"{case.name}" #\d+: STATE_MAIN_I4: 30 second timeout '
                            "exceeded", 60)
    rig.theirs.down(case.name)
    _wait(lambda: not _our_sas(rig, case), 30, "ikev1d to act on pluto's Delete")
    _wait(lambda: not _kernel(rig.b, case.theirs, case.ours), 30, "pluto's SAs to go")


@pytest.mark.parametrize("case", ["lcbad"], indirect=True)
def test_libreswan_client_with_a_wrong_xauth_password_is_refused(rig: Rig, case: Case) -> None:
    ok, out = rig.theirs.up(case.name, timeout=90)
    assert not ok, out
    # our STATUS(fail), in pluto's words
    assert "Received Cisco XAUTH status: FAIL" in out, out
    assert "XAUTH: aborting entire IKE Exchange" in out, out
    line = next((ln for ln in rig.ours.log_text().splitlines()
                 if f"[{case.name} " in ln
                 and f"XAUTH authentication failed for user '{case.user}'" in ln), "")
    assert line, rig.ours.log_text()[-3000:]
    assert WRONG not in rig.ours.log_text()
    rig.theirs.down(case.name)  # pluto would revive the connection and try again
    _wait(lambda: not rig.theirs.status(case.name).ike_sas, 30, "pluto without an SA")
    _wait(lambda: not any(ike["state"] == "ESTABLISHED" for ike in _our_sas(rig, case)), 30,
          "ikev1d without an SA")
    pool = next(p for p in _our_status(rig)["pools"] if p["name"] == case.name)
    assert pool["online"] == 0, pool
    assert not _kernel(rig.a, case.ours, case.theirs) and not _kernel(rig.b, case.theirs,
                                                                         case.ours)


# --- INITIAL-CONTACT (last: they restart pluto and ikev1d) ---------------------------------


def _site_up(rig: Rig, case: Case, by_us: bool) -> tuple[str, str]:
    """A PSK site-to-site tunnel up and agreed on; ikev1d's (spi_in, spi_out)."""
    if by_us:
        result = rig.ours.up(case.name, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        ok, out = rig.theirs.up(case.name, timeout=90)
        assert ok, out + rig.ours.log_text()[-3000:]
    rig.theirs.wait_for(case.name, lambda v: v.established and bool(v.installed), timeout=40)
    return _our_newest(rig, case)


def _our_newest(rig: Rig, case: Case) -> tuple[str, str]:
    children = [ch for ike in _our_sas(rig, case) for ch in ike["children"]]
    if not children:
        return "", ""
    child = max(children, key=lambda ch: ch["expires_in_s"])
    return child["spi_in"], child["spi_out"]


def _their_newest(rig: Rig, case: Case) -> tuple[str, str]:
    installed = rig.theirs.status(case.name).installed
    if not installed:
        return "", ""
    child = max(installed, key=lambda c: c.serial)
    return child.spi_in, child.spi_out


def test_libreswan_restarted_initial_contact(rig: Rig) -> None:
    """pluto is killed (kill -9) and started again, and initiates again. With
    ``initial-contact=yes`` it sends INITIAL-CONTACT and ikev1d removes the stale SAs at
    once: one ISAKMP SA and the IPsec SA pair pluto has. Without it (Libreswan's default)
    ikev1d keeps the stale ones next to the new ones."""
    cases = [CASES["icl"], CASES["icln"]]
    before = {c.name: _site_up(rig, c, by_us=False) for c in cases}
    for c in cases:
        assert len(_our_sas(rig, c)) == 1
    rig.theirs.kill()
    rig.theirs = _start_pluto(rig.b, rig.work, list(CASES.values()), n=1)
    for c in cases:
        spis = _site_up(rig, c, by_us=False)
        assert spis != before[c.name]
    rig.theirs.wait_log(r'"icl" #\d+: sending INITIAL_CONTACT', 5)
    assert not re.search(r'"icln" #\d+: sending INITIAL_CONTACT', rig.theirs.log_text())

    icl, icln = cases
    # pluto sends it in every Main Mode it initiates, the first one too ("no stale SAs")
    line = next((ln for ln in rig.ours.log_text().splitlines()
                 if "[icl " in ln and "INITIAL-CONTACT from" in ln and "removing" in ln), "")
    assert f"INITIAL-CONTACT from {icl.theirs}: removing 1 stale ISAKMP SA and 1 IPsec SA" \
        in line, rig.ours.log_text()[-3000:]
    (ike,) = _our_sas(rig, icl)
    (child,) = ike["children"]
    assert _their_newest(rig, icl) == (child["spi_out"], child["spi_in"])
    assert _kernel(rig.a, icl.ours, icl.theirs) == {child["spi_out"]}
    assert _kernel(rig.a, icl.theirs, icl.ours) == {child["spi_in"]}
    assert _ping(rig.a, icl.their_inner, icl.our_inner) == 3
    # no INITIAL-CONTACT: the dead pluto's SAs stay at ikev1d (until DPD or expiry)
    assert len(_our_sas(rig, icln)) == 2, _our_sas(rig, icln)
    assert not any("[icln " in ln and "INITIAL-CONTACT" in ln
                   for ln in rig.ours.log_text().splitlines())
    assert _our_newest(rig, icln)[::-1] == _their_newest(rig, icln)


def test_ikev1d_restarted_initial_contact_ignored_by_libreswan(rig: Rig) -> None:
    """ikev1d is killed (kill -9) and started again, and initiates again. It sends
    INITIAL-CONTACT (unique = "no"), which pluto 4.10 logs and ignores: its stale ISAKMP
    and IPsec SAs stay next to the new ones. With unique = "never" ikev1d sends none."""
    cases = [CASES["ico"], CASES["icon"]]
    before = {c.name: _site_up(rig, c, by_us=True) for c in cases}
    their_before = {c.name: set(rig.theirs.status(c.name).ike_sas) for c in cases}
    rig.ours.process.kill()  # type: ignore[union-attr]
    rig.ours.process.wait(10)  # type: ignore[union-attr]
    old_log = rig.ours.log_text()
    rig.ours.start(timeout=180)
    for c in cases:
        spis = _site_up(rig, c, by_us=True)
        assert spis != before[c.name]
    ico = cases[0]
    sent = rig.ours.log_text().removeprefix(old_log)
    rig.theirs.wait_log(r'"ico" #\d+: ignoring informational payload IPSEC_INITIAL_CONTACT', 5)
    assert not re.search(r'"icon" #\d+: ignoring informational payload IPSEC_INITIAL_CONTACT',
                         rig.theirs.log_text())
    for c in cases:
        view = rig.theirs.status(c.name)
        # the stale ISAKMP SA is still there, next to the new one
        assert their_before[c.name] <= set(view.ike_sas) and len(view.ike_sas) == 2, view
        assert _their_newest(rig, c) == _our_newest(rig, c)[::-1]
        assert len(_our_sas(rig, c)) == 1
    assert _ping(rig.a, ico.their_inner, ico.our_inner) == 3
    # the restarted ikev1d held no SA with either peer; unique = "never" sends nothing
    assert "[ico " in sent and "[icon " in sent
    assert re.search(r"\[ico \S+\] sending INITIAL-CONTACT", sent), sent[-3000:]
    assert not re.search(r"\[icon \S+\] sending INITIAL-CONTACT", sent), sent[-3000:]

"""Random packet loss on the path and Main Mode + Quick Mode attempts through it.

The loss is an nftables rule on the input hook of each end's namespace that drops
a random share of the IKE datagrams (UDP 500 and 4500) it receives:
``numgen random mod 100 < PERCENT drop`` (this machine has no ``tc netem``).
Both ends dropping 30 % means each message in either direction is lost with
probability 0.3.

An attempt is one ``ikev1d up`` (or ``swanctl --initiate``) against a strongSwan
peer; it counts when it reports success *and* both sides hold an ESTABLISHED
ISAKMP SA with an INSTALLED IPsec SA. Between attempts the loss is lifted, both
sides delete what they hold (and forget half-open state) and the loss is put back,
so that one attempt's leftovers cannot help or hurt the next.

Arithmetic, for comparing the counts (RFC 2408 section 5: the initiator
retransmits; a responder answers a repeated request with its last response): one
request/response round succeeds when both get through, 0.7 * 0.7 = 0.49, so it
fails after ``k`` transmissions with probability 0.51^k. Main Mode and Quick Mode
are five such rounds (MM1/2, MM3/4, MM5/6, QM1/2, QM2/3 with the responder
retransmitting QM2), so an attempt fails with about 1 - (1 - 0.51^k)^5:
k = 11 (10 retransmissions) 0.3 %, k = 6 (5 retransmissions) 8.5 %.

ikev1d's ``retransmit_tries`` counts transmissions in all, charon's
``retransmit_tries`` counts retransmissions: "N retransmissions" here is
``retransmit_tries = N + 1`` for ikev1d and ``N`` for charon, both with the same
first timeout and a doubling interval (``retransmit_base = 2``). Both keep a
half-open SA for the whole retransmission span (``half_open_timeout``, 30 s by
default in both): otherwise a Main Mode round could use only the retransmissions
of its first 30 s.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ikev1d_lab.daemon import Ikev1dDaemon, LabDaemonError, ikev1d_conf
from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.strongswan import Charon, CharonError, swanctl_conf

__all__ = ["LossError", "LossPair", "LossResult", "clear_loss", "lose_every_other_quick_mode_3",
           "lose_quick_mode_3",
           "loss_pair", "set_loss"]

NFT_TABLE = "ikev1d_loss"
PSK = "loss-test-pre-shared-key-0123456789"
PROPOSAL = "aes128-sha256-modp2048"
ESP = "aes128-sha256"
CONNECTION = "lossy"
CHILD = "net"


class LossError(LabError):
    """nft refused the loss rule, or a side could not be reset between attempts."""


def _nft(ns: Namespace, script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    proc = subprocess.run([*ns.exec_prefix(), nft, "-f", "-"], input=script, text=True,
                          capture_output=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise LossError(f"nft in {ns.name} failed: {proc.stderr.strip()}")


def set_loss(ns: Namespace, percent: int) -> None:
    """Drop `percent` % of the IKE datagrams (UDP 500/4500) arriving in `ns`."""
    if not 0 <= percent <= 100:
        raise LossError(f"loss of {percent} % is not a percentage")
    clear_loss(ns)
    _nft(ns, (
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    udp dport {{ 500, 4500 }} numgen random mod 100 < {percent} counter drop\n"
        "  }\n"
        "}\n"
    ))  # fmt: skip


def lose_every_other_quick_mode_3(ns: Namespace) -> None:
    """Drop every other short Quick Mode message arriving in `ns` over UDP 4500: the
    message 3s (HDR and HASH(3), under 120 octets with the UDP header; a message 1
    carries SA, nonce and IDs). The peer retransmits message 3 when the responder
    retransmits message 2 (RFC 2408 section 5), so each renewal still completes, a
    retransmission interval late. Counted by :func:`dropped`; removed by
    :func:`clear_loss`."""
    _lose_quick_mode_3(ns, "numgen inc mod 2 0 ")


def lose_quick_mode_3(ns: Namespace) -> None:
    """Drop every Quick Mode message 3 arriving in `ns` over UDP 4500 (see
    :func:`lose_every_other_quick_mode_3`) until :func:`clear_loss`: the responder
    stays between its message 2 and message 3 for as long as the test needs."""
    _lose_quick_mode_3(ns, "")


def _lose_quick_mode_3(ns: Namespace, which: str) -> None:
    # The ISAKMP header follows the UDP header and the RFC 3948 non-ESP marker; its
    # exchange type is octet 18 (RFC 2408 section 3.1).
    clear_loss(ns)
    _nft(ns, (
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    udp dport 4500 udp length < 120 @th,64,32 0 @th,240,8 32 "
        f"{which}counter drop\n"
        "  }\n"
        "}\n"
    ))  # fmt: skip


def clear_loss(ns: Namespace) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    ns.run([nft, "delete", "table", "inet", NFT_TABLE], check=False)


def dropped(ns: Namespace) -> int:
    """Datagrams the loss rule in `ns` has dropped so far."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    out = ns.run([nft, "list", "table", "inet", NFT_TABLE], check=False).stdout
    for word, following in zip(out.split(), out.split()[1:], strict=False):
        if word == "packets" and following.isdigit():
            return int(following)
    return 0


@dataclass
class LossResult:
    """Attempts through the lossy path in one direction."""

    initiator: str
    attempts: int = 0
    established: int = 0
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.established / self.attempts if self.attempts else 0.0


@dataclass
class LossPair:
    """ikev1d in namespace A and strongSwan in B, PSK, with a lossy path between."""

    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon
    percent: int
    deadline: float  # seconds an attempt may take
    drops: int = 0  # datagrams the loss rules dropped, all attempts
    restarts: int = 0  # ikev1d restarted to forget a half-open SA of a failed attempt

    def _loss(self, percent: int) -> None:
        for ns in (self.topo.a, self.topo.b):
            self.drops += dropped(ns)
            if percent:
                set_loss(ns, percent)
            else:
                clear_loss(ns)

    def _ours_up(self) -> bool:
        ikes = self.ours.status().get("ike_sas", [])
        return any(ike.get("state") == "ESTABLISHED" and any(
            c.get("state") == "INSTALLED" for c in ike.get("children", [])) for ike in ikes)

    def _theirs_up(self) -> bool:
        return any(sa.get("state") == "ESTABLISHED" and any(
            c.get("state") == "INSTALLED" for c in sa.get("children", []))
            for sa in self.theirs.list_sas())  # fmt: skip

    def reset(self) -> None:
        """No loss, no SAs on either side (Deletes, then whatever is left by force)."""
        self._loss(0)
        with contextlib.suppress(LabDaemonError):
            self.ours.cli("down", CONNECTION, check=False)
        for sa in self.theirs.list_sas():
            with contextlib.suppress(CharonError, subprocess.SubprocessError):
                self.theirs.swanctl(["--terminate", "--ike-id", str(sa.get("uniqueid", "")),
                                     "--force", "--timeout", "2"])
        deadline = time.monotonic() + 10.0
        restarted = False
        while time.monotonic() < deadline:
            ours = self.ours.status().get("ike_sas")
            if not ours and not self.theirs.list_sas():
                return
            if ours and not restarted and time.monotonic() > deadline - 8.0 and all(
                ike.get("state") == "CONNECTING" for ike in ours
            ):
                # A responder's half-open SA of a failed attempt waits for its timeout
                # and `down` does not touch it: start afresh instead of waiting.
                self.ours.stop()
                self.ours.start(timeout=20.0)
                self.restarts += 1
                restarted = True
            time.sleep(0.2)
        ours, theirs = self.ours.status().get("ike_sas"), self.theirs.list_sas()
        if ours or theirs:
            raise LossError(f"SAs left after reset: ikev1d {ours}, strongSwan {theirs}")

    def attempt(self, we_initiate: bool) -> tuple[bool, float, str]:
        """One Main Mode + Quick Mode through the loss: (established, seconds, why not)."""
        self.reset()
        self._loss(self.percent)
        started = time.monotonic()
        if we_initiate:
            result = self.ours.up(CONNECTION, timeout=self.deadline, check=False)
            ok, out = result.returncode == 0, result.stdout + result.stderr
        else:
            ok, out = self.theirs.initiate(CHILD, CONNECTION, timeout=self.deadline)
        elapsed = time.monotonic() - started
        # The initiator is done once it has sent QM3; if QM3 is lost, the responder
        # retransmits QM2 (doubling intervals) until a repeated QM3 gets through, so
        # wait as long as its retransmissions can take (bounded: a run must end).
        settle = time.monotonic() + (min(self.deadline, 120.0) if ok else 0.0)
        both = False
        while True:
            both = self._ours_up() and self._theirs_up()
            if both or time.monotonic() >= settle:
                break
            time.sleep(0.2)
        why = "" if ok and both else (
            "initiator reported success but the responder has no IPsec SA" if ok
            else (out.strip().splitlines() or ["initiate failed"])[-1])
        return ok and both, elapsed, why

    def run(self, attempts: int, we_initiate: bool) -> LossResult:
        result = LossResult("ikev1d" if we_initiate else "strongSwan")
        for index in range(attempts):
            ok, seconds, why = self.attempt(we_initiate)
            result.attempts += 1
            result.seconds.append(seconds)
            if ok:
                result.established += 1
            else:
                result.failures.append(f"attempt {index + 1}: {why}")
        self.reset()
        return result


def retransmission_span(retransmissions: int, timeout: float) -> float:
    """Seconds from the first transmission until a doubling initiator gives up."""
    return float(timeout * (2 ** (retransmissions + 1) - 1))


def charon_retransmit_conf(retransmissions: int, timeout: float, half_open: float) -> str:
    """strongswan.conf lines: `retransmissions` with a doubling interval from `timeout`,
    and half-open IKE SAs kept for `half_open` seconds."""
    return (f"  retransmit_tries = {retransmissions}\n"
            f"  retransmit_timeout = {timeout}\n"
            "  retransmit_base = 2\n"
            "  retransmit_jitter = 0\n"
            f"  half_open_timeout = {int(half_open)}\n")


@contextlib.contextmanager
def loss_pair(topo: Topology, work_dir: Path, percent: int, retransmissions: int,
              timeout: float = 0.5) -> Iterator[LossPair]:
    """ikev1d (A) and strongSwan (B) configured for each other, `retransmissions` each."""
    # A doubling interval: the last retransmission goes out after timeout * (2^N - 1) s,
    # and an answer is awaited one more interval.
    span = retransmission_span(retransmissions, timeout)
    deadline = span * 2 + 10.0
    # Both responders keep a half-open SA 30 s by default: with a longer span, Main Mode
    # rounds would lose the retransmissions after 30 s (the responder has forgotten the
    # exchange). Keep it for the whole span, so that "N retransmissions" holds.
    half_open = max(30.0, span + 10.0)
    ours = Ikev1dDaemon(topo.a, work_dir / "ikev1d", ikev1d_conf(
        CONNECTION, topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK, [PROPOSAL], [ESP],
        topo.inner_net_a, topo.inner_net_b, child=CHILD, dataplane="none",
        retransmit_timeout=f"{timeout}s", retransmit_tries=retransmissions + 1,
        extra_daemon=f'half_open_timeout = "{int(half_open)}s"',
    ), log_level="info")  # fmt: skip
    theirs = Charon(topo.b, work_dir / "charon", extra_conf=charon_retransmit_conf(
        retransmissions, timeout, half_open), start=False)
    try:
        ours.start(timeout=20.0)
        theirs.start()
        # keyingtries = 1: charon gives up after its retransmissions instead of starting over.
        theirs.load_config(swanctl_conf(
            CONNECTION, topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK, [PROPOSAL],
            [ESP], topo.inner_net_b, topo.inner_net_a, child=CHILD,
            extra_conn="    keyingtries = 1",
        ))  # fmt: skip
        pair = LossPair(topo, ours, theirs, percent, deadline)
        yield pair
    finally:
        for ns in (topo.a, topo.b):
            clear_loss(ns)
        theirs.stop()
        code = ours.stop()
        if code not in (0, None):
            raise LossError(f"ikev1d exited with {code}: {ours.log_text()[-2000:]}")

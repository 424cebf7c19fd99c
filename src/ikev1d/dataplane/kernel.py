"""``dataplane = "kernel"``: the negotiated IPsec SAs and their policies in Linux XFRM.

For each IPsec SA pair (RFC 4301 §4.4.2 SAD, §4.4.1 SPD), this backend installs

* two XFRM states: inbound (src = peer, dst = us, SPI ``spi_in``, ``keymat_in``)
  and outbound (src = us, dst = peer, SPI ``spi_out``, ``keymat_out``), with
  the kernel's names for the transform (``rfc4106(gcm(aes))`` with its ICV
  length, ``cbc(aes)`` / ``cbc(des3_ede)`` with ``hmac(sha1)`` truncated to
  96 bits or ``hmac(sha256/384/512)`` to half the hash, RFC 4868 §2.1), the
  mode, a 64-packet replay window, and UDP encapsulation (RFC 3948) when NAT
  traversal is on;
* XFRM policies ``out`` (local_ts -> remote_ts) and ``in`` (and ``fwd`` in
  tunnel mode, for routed traffic) for every pair of local and remote
  networks, each with an ESP template naming the outer addresses and a reqid.

* a route to each remote network with a source address inside the local
  networks, when this host has one (tunnel mode; like strongSwan's table 220).
  A Mode Config client's virtual IP is added on ``lo`` (with ``proto`` 73 like
  our routes, and recorded in the state file) and is the source of the routes
  of that ISAKMP SA's IPsec SAs; with split networks from the server, only
  those are routed.

The reqid ties policies to states. Like strongSwan, one reqid belongs to one
set of policies (outer addresses, mode, networks), not to one SA pair: a
rekeyed SA pair (make-before-break) gets the reqid of the pair it replaces,
so the policies stay put, the kernel sends on the newest outbound state
(``xfrm_state_find`` prefers the most recently added) and the old pair can be
deleted without a gap. Policies are removed with the last SA pair using them.

Only what was installed here is deleted again (by SPI and destination for
states, selector and direction for policies); other XFRM entries are left
alone. A failed install is rolled back before ``DataplaneError`` is raised.

Crash safety: XFRM entries outlive the process, so a daemon killed with its
tunnels up leaves policies that blackhole the tunnelled traffic and SAs whose
re-installation fails with EEXIST. Everything installed here is therefore
marked twice: its reqid comes from a range reserved for ikev1d (:data:`REQIDS`;
a mark or an if_id would change which packets match, a reqid does not), and a
state file (:meth:`KernelBackend.recover`, beside the control socket) lists it
before it is added and until it is deleted. At start, what the file lists and
the kernel still holds *with a reqid of ours* is removed: a stale file cannot
make us delete another daemon's entries (strongSwan's reqids count from 1,
Libreswan's from 16384), and entries of ours the file does not list (another
ikev1d in the same namespace) are left alone, with a warning.

Traps (``start_action = "trap"``, ``dpd_action = "hold"``) are policies without
a state, as in strongSwan: the same out / in / fwd policies an SA pair of the
child would get, with a reqid of their own. A packet matching the out policy
finds no SA for the template, and the kernel reports it with XFRM_MSG_ACQUIRE
(group XFRMNLGRP_ACQUIRE, read with the expiry reports); its template's reqid
names the trap, and the daemon is told which child to negotiate. The SA pair
negotiated then has the trap's policy key, so it takes the trap's reqid and its
policies (the kernel drops the acquire's larval state when the SA is added), and
the policies stay when the pair goes. A trap also gets the routes an SA pair
would, so that the host's own packets reach the policy. Trap policies carry
our reqids and are in the state file like every other policy.

A road warrior's trap whose local end is the virtual IP that Mode Config has not
given yet has as local selector the whole address family (0.0.0.0/0 or ::/0, as
strongSwan installs a dynamic local end with virtual IPs), and routes to the
remote networks that name no source, at :data:`TRAP_ROUTE_METRIC`: the host's
first packet leaves from an address of its own, matches the trap and is
acquired. The SA pair then has the virtual IP as local network, so its policies
are its own (more specific, so preferred) and its route, from the virtual IP at
the default metric, is preferred to the trap's; both go with the pair, and the
trap's stay.

``life_bytes`` becomes the SAs' hard byte lifetime, with a soft one before it
(:func:`~ikev1d.dataplane.base.soft_limit`); the kernel reports both with
XFRM_MSG_EXPIRE (read from :class:`~ikev1d.dataplane.linux.xfrm.XfrmExpireSocket`),
which become renewal and deletion requests to the engine.

Counters are the kernel's own (``xfrm_lifetime_cur``: what ``ip -s xfrm
state`` prints as "current"). The netlink side is :mod:`ikev1d.dataplane.linux.xfrm`;
tests hand in a fake with the same methods (:class:`XfrmLike`).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from ikev1d.dataplane.base import (
    AcquireHandler,
    Address,
    DataplaneError,
    ExpireHandler,
    SendUdp,
    soft_limit,
    split_routes,
    zero_counters,
)
from ikev1d.dataplane.esp import (
    EspAlgorithm,
    UnsupportedEspAlgorithm,
    esp_algorithm,
    keymat_length,
)
from ikev1d.dataplane.linux.xfrm import (
    RTPROT_IKEV1D,
    InstalledPolicy,
    InstalledState,
    Route,
    XfrmAcquire,
    XfrmAlgorithm,
    XfrmExpire,
    XfrmPolicy,
    XfrmSelector,
    XfrmState,
    XfrmStateCounters,
    XfrmTemplate,
)
from ikev1d.dataplane.statefile import StateFile
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, Endpoint, Network, TrapInstalled
from ikev1d.status import Counters

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "POLICY_PRIORITY_BASE",
    "PROBE_SPI",
    "REPLAY_WINDOW",
    "REQIDS",
    "ExpireSourceLike",
    "KernelBackend",
    "RoutesLike",
    "XfrmLike",
    "create_backend",
    "plan_policies",
    "plan_states",
    "policy_priority",
    "xfrm_algorithms",
]

log = logging.getLogger(__name__)

REPLAY_WINDOW: Final = 64
"""Packets; RFC 4303 §3.4.3 asks for at least 32 and recommends 64."""
MAX_PACKETS: Final = 2**32 - 1
"""Packets an SA may carry: its 32-bit ESP sequence numbers (no ESN)."""
PROBE_SPI: Final = 0xFF
"""SPIs 1-255 are reserved by IANA (RFC 4303 §2.1): never negotiated, so safe for a probe."""
POLICY_PRIORITY_BASE: Final = 200_000
"""Lower is preferred; more specific selectors get lower numbers (see policy_priority)."""

REQIDS: Final = range(0x1D1D_0001, 0x1D1E_0000)
"""The reqids ikev1d gives its SAs and policies: the mark that tells them from other
daemons' entries after a crash (see the module's docstring)."""

TRAP_ROUTE_METRIC: Final = 2048
"""The metric of a trap's route when the trap's local end is a virtual IP still to
come: above both families' default (IPv4 0, IPv6 1024), so that the route the SA
pair adds from the virtual IP is preferred while it is there, and this one is
used again when it goes."""

_GONE: Final = (errno.ENOENT, errno.ESRCH)
"""What the kernel answers for an SA or policy that is not (any longer) there."""


class XfrmLike(Protocol):
    """The netlink operations the backend needs (``linux.xfrm.XfrmSocket``)."""

    def add_state(self, state: XfrmState) -> None: ...
    def delete_state(self, dst: str, spi: int) -> None: ...
    def state_counters(self, dst: str, spi: int) -> XfrmStateCounters: ...
    def add_policy(self, policy: XfrmPolicy) -> None: ...
    def delete_policy(self, selector: XfrmSelector, direction: str) -> None: ...
    def dump_states(self) -> list[InstalledState]: ...
    def dump_policies(self) -> list[InstalledPolicy]: ...
    def close(self) -> None: ...


class ExpireSourceLike(Protocol):
    """The kernel's expiry reports (``linux.xfrm.XfrmExpireSocket``)."""

    def fileno(self) -> int: ...
    def read(self) -> list[XfrmExpire | XfrmAcquire]: ...
    def close(self) -> None: ...


class RoutesLike(Protocol):
    """The rtnetlink operations for tunnel routes (``linux.xfrm.RouteSocket``)."""

    def local_addresses(self) -> list[str]: ...
    def route_to(self, address: str) -> tuple[int, str | None]: ...
    def add_route(self, route: Route) -> None: ...
    def delete_route(self, route: Route) -> None: ...
    def host_addresses(self) -> list[tuple[str, int, int | None]]: ...
    def add_address(self, address: str, ifindex: int) -> None: ...
    def delete_address(self, address: str, ifindex: int) -> None: ...
    def close(self) -> None: ...


LOOPBACK_INDEX: Final = 1
"""``lo`` is the first interface of every network namespace (net/core/dev.c registers it
first); a Mode Config virtual IP goes there, as strongSwan's kernel-netlink puts it on an
interface of its own choosing."""

PrepareSockets = Callable[[SendUdp], tuple[int, list[str]]]
"""Given attach()'s ``send_udp``: (NAT-T sockets now decapsulating ESP-in-UDP, problems)."""


# --- what to install (pure) -----------------------------------------------------------------


def _esp_algorithm(sa: ChildSaEstablished) -> EspAlgorithm:
    try:
        return esp_algorithm(sa.encryption, sa.key_length, sa.integrity, sa.icv_length)
    except UnsupportedEspAlgorithm as exc:
        raise DataplaneError(f"IPsec SA {sa.child}: {exc}") from None


def xfrm_algorithms(sa: ChildSaEstablished, keymat: bytes) -> tuple[XfrmAlgorithm, ...]:
    """The kernel transforms for one direction, keyed from that direction's KEYMAT.

    KEYMAT is the encryption key, for AES-GCM followed by the 4-octet salt
    (RFC 4106 §8.1, which the kernel takes as the key's last four octets), then
    the integrity key (RFC 2409 §5.5).
    """
    alg = _esp_algorithm(sa)
    need = keymat_length(alg)
    if len(keymat) < need:
        raise DataplaneError(
            f"IPsec SA {sa.child}: KEYMAT of {len(keymat)} octets, {sa.proposal} needs {need}"
        )
    try:
        return _xfrm_algorithms(alg, keymat)
    except DataplaneError as exc:
        raise DataplaneError(f"IPsec SA {sa.child}: {exc}") from None


def _xfrm_algorithms(alg: EspAlgorithm, keymat: bytes) -> tuple[XfrmAlgorithm, ...]:
    """The kernel's names (net/xfrm/xfrm_algo.c, in the transform table) with their keys."""
    need = keymat_length(alg)
    enc_end = alg.key_length + alg.salt_length
    cipher = alg.cipher.xfrm
    if cipher is None:
        raise DataplaneError(f"the kernel has no {alg.encryption}")
    if alg.aead:
        return (XfrmAlgorithm("aead", cipher, keymat[:enc_end], alg.icv_length * 8),)
    algorithms = [XfrmAlgorithm("crypt", cipher, keymat[:enc_end])]
    if alg.mac is not None:
        # HMAC truncated to the ICV: 96 bits (RFC 2403, 2404) or half the hash (RFC 4868 §2.1).
        algorithms.append(XfrmAlgorithm("auth", alg.mac.xfrm, keymat[enc_end:need],
                                        alg.mac.icv_bytes * 8))
    return tuple(algorithms)


def _host_network(address: str) -> Network:
    return ipaddress.ip_network(address)


def plan_states(sa: ChildSaEstablished, reqid: int) -> tuple[XfrmState, XfrmState]:
    """(inbound, outbound) XFRM states for an SA pair."""
    local, remote = sa.local[0], sa.remote[0]
    in_selector: XfrmSelector | None = None
    out_selector: XfrmSelector | None = None
    if sa.mode == "transport":
        # Transport mode protects the two hosts' own traffic.
        in_selector = XfrmSelector(_host_network(remote), _host_network(local))
        out_selector = XfrmSelector(_host_network(local), _host_network(remote))
    elif sa.mode != "tunnel":
        raise DataplaneError(f"IPsec SA {sa.child}: unknown mode {sa.mode!r}")
    in_encap = out_encap = None
    if sa.encap:
        # RFC 3948: the ports as seen on the wire, the peer's possibly NAT-mapped.
        in_encap = (sa.remote[1], sa.local[1])
        out_encap = (sa.local[1], sa.remote[1])
    # life_bytes: the hard limit, and a renewal request before it (RFC 2407 §4.5 lifetimes).
    hard = max(sa.life_bytes, 0)
    soft = soft_limit(hard, sa.spi_in) if hard else 0
    # Without ESN the sequence number must not cycle (RFC 4303 section 3.3.3): the
    # kernel then drops every packet, renewing nothing. A packet lifetime asks for
    # the renewal before that, as a byte lifetime does.
    soft_packets = soft_limit(MAX_PACKETS, sa.spi_in)
    inbound = XfrmState(remote, local, sa.spi_in, reqid, sa.mode,
                        xfrm_algorithms(sa, sa.keymat_in), REPLAY_WINDOW, in_encap, in_selector,
                        soft, hard, soft_packets, MAX_PACKETS)
    outbound = XfrmState(local, remote, sa.spi_out, reqid, sa.mode,
                         xfrm_algorithms(sa, sa.keymat_out), REPLAY_WINDOW, out_encap,
                         out_selector, soft, hard, soft_packets, MAX_PACKETS)
    return inbound, outbound


def policy_priority(selector: XfrmSelector) -> int:
    """More specific selectors first, like strongSwan's automatic priorities."""
    return POLICY_PRIORITY_BASE - 256 * (selector.src.prefixlen + selector.dst.prefixlen)


def plan_policies(sa: ChildSaEstablished, reqid: int) -> tuple[XfrmPolicy, ...]:
    """out / in (/ fwd in tunnel mode) for every same-family (local_ts, remote_ts) pair."""
    return _plan_policies(sa.local[0], sa.remote[0], sa.mode, sa.local_ts, sa.remote_ts,
                          reqid, f"IPsec SA {sa.child}")


def plan_trap_policies(trap: TrapInstalled, reqid: int) -> tuple[XfrmPolicy, ...]:
    """The policies of a trapped child: those its SA pair will share."""
    return _plan_policies(trap.local, trap.remote, trap.mode, trap.local_ts, trap.remote_ts,
                          reqid, f"trap {trap.conn}/{trap.child}")


def _plan_policies(local: str, remote: str, mode: str, local_nets: tuple[Network, ...],
                   remote_nets: tuple[Network, ...], reqid: int,
                   what: str) -> tuple[XfrmPolicy, ...]:
    outbound = XfrmTemplate(local, remote, reqid, mode)
    inbound = XfrmTemplate(remote, local, reqid, mode)
    policies: list[XfrmPolicy] = []
    for local_ts in local_nets:
        for remote_ts in remote_nets:
            if local_ts.version != remote_ts.version:
                continue
            out_sel = XfrmSelector(local_ts, remote_ts)
            in_sel = XfrmSelector(remote_ts, local_ts)
            policies.append(XfrmPolicy(out_sel, "out", policy_priority(out_sel), outbound))
            policies.append(XfrmPolicy(in_sel, "in", policy_priority(in_sel), inbound))
            if mode == "tunnel":
                policies.append(XfrmPolicy(in_sel, "fwd", policy_priority(in_sel), inbound))
    if not policies:
        raise DataplaneError(
            f"{what}: no local/remote network pair of the same address family"
        )
    return tuple(policies)


def _policy_key(sa: ChildSaEstablished) -> tuple[object, ...]:
    return (sa.local[0], sa.remote[0], sa.mode, sa.local_ts, sa.remote_ts)


def _trap_key(trap: TrapInstalled) -> tuple[object, ...]:
    """The policy key an SA pair negotiated for this trap will have."""
    return (trap.local, trap.remote, trap.mode, trap.local_ts, trap.remote_ts)


# --- the backend ----------------------------------------------------------------------------


@dataclass
class _PolicySet:
    reqid: int
    policies: tuple[XfrmPolicy, ...]
    users: set[tuple[object, ...]] = field(default_factory=set)
    """SA pairs (spi_in, spi_out) and traps ("trap", conn, child) using the policies."""
    routes: tuple[Route, ...] = ()
    """The routes the trap added (SA pairs keep their own)."""
    pending: tuple[XfrmPolicy, ...] = ()
    """``out`` policies not added yet: the set came with a new tunnel's inbound half
    (``install_inbound``), and nothing is sent through the tunnel before its pair is
    complete. ``policies`` holds what is in the kernel."""


@dataclass(frozen=True)
class _InstalledPair:
    key: tuple[object, ...]
    inbound: XfrmState
    outbound: XfrmState
    routes: tuple[Route, ...] = ()
    child_id: int = 0


def _state_record(state: XfrmState) -> list[object]:
    return [state.dst, state.spi, state.reqid]


def _policy_record(policy: XfrmPolicy) -> list[object]:
    return [str(policy.selector.src), str(policy.selector.dst), policy.direction,
            policy.template.reqid]


def _route_record(route: Route) -> list[object]:
    return [str(route.dst), route.oif, route.gateway, route.prefsrc, route.metric]


def _dynamic_local(trap: TrapInstalled) -> bool:
    """Whether the trap's local end is a virtual IP to come (the whole family)."""
    return all(n.prefixlen == 0 for n in trap.local_ts)


def _state_text(state: XfrmState) -> str:
    return f"SA {state.spi:08x} {state.src} -> {state.dst}"


def _policy_text(policy: XfrmPolicy) -> str:
    return f"policy {policy.selector.src} -> {policy.selector.dst} {policy.direction}"


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.errno == errno.EPROTONOSUPPORT:
        text += " (this kernel has no ESP: load esp4/esp6)"
    elif exc.errno in (errno.ENOSYS, errno.ENOENT) and "algorithm" in text:
        text += " (the kernel lacks this crypto algorithm)"
    elif exc.errno == errno.EEXIST:
        text += " (another IPsec daemon's entry?)"
    return text


class KernelBackend:
    """SAs and policies in Linux XFRM. Single-threaded (the daemon's event loop)."""

    name = "kernel"

    def __init__(
        self,
        xfrm: XfrmLike,
        *,
        routes: RoutesLike | None = None,
        prepare_sockets: PrepareSockets | None = None,
        expire_source: ExpireSourceLike | None = None,
        first_reqid: int = REQIDS.start,
    ) -> None:
        """``routes``: install tunnel routes (see :meth:`_add_routes`); None: no routes.
        ``expire_source``: the kernel's soft/hard expiry reports; None: not listened to."""
        self.xfrm = xfrm
        self.expire_source = expire_source
        self._expired: ExpireHandler | None = None
        self._acquire: AcquireHandler | None = None
        self._traps: dict[tuple[str, str], tuple[object, ...]] = {}
        """(conn, child) -> the key of the policy set the trap uses."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reported: dict[tuple[int, int], bool] = {}
        """Pairs whose expiry was reported: False soft, True hard (each once)."""
        self._state_file: StateFile | None = None
        self._reqids_in_use: set[int] = set()
        """Reqids of our range that entries we do not own hold (another ikev1d's)."""
        self.routes = routes
        self._route_refs: dict[Route, int] = {}
        self._prepare_sockets = prepare_sockets
        self._next_reqid = first_reqid
        self._policy_sets: dict[tuple[object, ...], _PolicySet] = {}
        self._pairs: dict[tuple[int, int], _InstalledPair] = {}
        self._inbound_only: dict[tuple[int, int], tuple[tuple[object, ...], XfrmState]] = {}
        """(spi_in, spi_out) -> (policy key, inbound state) from ``install_inbound``."""
        self._decap_sockets = 0
        self._decap_problems: list[str] = []
        self._vips: dict[tuple[int, int], tuple[Address, tuple[Network, ...]]] = {}
        """By (ISAKMP SA, address family): a dual-stack client holds one of each."""
        """ISAKMP SA -> (virtual IP, split networks) of a Mode Config client."""
        self._address_refs: dict[Address, tuple[int, bool]] = {}
        """Virtual IP -> (ISAKMP SAs using it, whether it was added here)."""
        self._closed = False

    # --- DataplaneBackend ---

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        """Prepare the daemon's UDP sockets (bypass policies, ESP-in-UDP decapsulation).

        The kernel sends and receives ESP itself, so neither ``send_udp`` nor
        the loop is needed beyond this.
        """
        if self.expire_source is not None and self.expire_source.fileno() >= 0:
            loop.add_reader(self.expire_source.fileno(), self.handle_expire_readable)
            self._loop = loop
        if self._prepare_sockets is None:
            return
        self._decap_sockets, self._decap_problems = self._prepare_sockets(send_udp)
        for problem in self._decap_problems:
            log.warning("kernel data plane: %s", problem)

    def set_expire_handler(self, handler: ExpireHandler) -> None:
        self._expired = handler

    def set_acquire_handler(self, handler: AcquireHandler) -> None:
        self._acquire = handler

    def install_trap(self, trap: TrapInstalled) -> None:
        """Policies without SA for a trapped child (or the policies of its SA pair, when
        one is installed already, which then stay when the pair goes)."""
        if self._closed:
            raise DataplaneError("kernel data plane is closed")
        name = (trap.conn, trap.child)
        key = _trap_key(trap)
        if self._traps.get(name) == key:
            return
        self.remove_trap(trap.conn, trap.child)
        user = ("trap", trap.conn, trap.child)
        policy_set = self._policy_sets.get(key)
        if policy_set is None:
            reqid = self._allocate_reqid()
            policies = plan_trap_policies(trap, reqid)
            self._save(policies=policies)
            undo: list[XfrmPolicy] = []
            try:
                for policy in policies:
                    self._call(f"adding {_policy_text(policy)}", self.xfrm.add_policy, policy)
                    undo.append(policy)
            except DataplaneError:
                for policy in reversed(undo):
                    try:
                        self.xfrm.delete_policy(policy.selector, policy.direction)
                    except OSError as exc:
                        log.error("kernel data plane: rollback step failed: %s", exc)
                self._save()
                raise
            policy_set = _PolicySet(reqid, policies)
            self._policy_sets[key] = policy_set
        elif policy_set.pending:
            # A new tunnel's inbound half holds the set: a trap needs its out policies
            # now (they raise the acquires).
            self._save(policies=policy_set.pending)
            self._add_entries((), policy_set.pending)
            policy_set.policies += policy_set.pending
            policy_set.pending = ()
        if not policy_set.routes and _dynamic_local(trap):
            policy_set.routes = self._add_trap_routes(trap)
        elif not policy_set.routes:
            # Its own references, also when an SA pair has the same routes already:
            # they must outlive that pair.
            policy_set.routes = self._add_routes(trap.conn, trap.child, trap.mode,
                                                 trap.remote, trap.local_ts, trap.remote_ts)
        self._save()
        policy_set.users.add(user)
        self._traps[name] = key
        log.info("kernel data plane: trap for %s/%s, reqid %d", trap.conn, trap.child,
                 policy_set.reqid, extra={"conn": trap.conn})

    def remove_trap(self, conn: str, child: str) -> None:
        key = self._traps.pop((conn, child), None)
        if key is None:
            return
        policy_set = self._policy_sets.get(key)
        if policy_set is None:
            return
        policy_set.users.discard(("trap", conn, child))
        errors = self._remove_routes(policy_set.routes)
        policy_set.routes = ()
        if not policy_set.users:
            errors += self._delete_policy_set(key, policy_set)
        self._save()
        if errors:
            raise DataplaneError("kernel data plane: " + "; ".join(errors))

    def _acquire_for(self, report: XfrmAcquire) -> None:
        """The kernel wants an SA for a policy: negotiate the trapped child it belongs to."""
        for (conn, child), key in self._traps.items():
            policy_set = self._policy_sets.get(key)
            if policy_set is not None and policy_set.reqid == report.reqid:
                log.debug("kernel data plane: acquire for %s/%s (reqid %d)", conn, child,
                          report.reqid)
                if self._acquire is not None:
                    self._acquire(conn, child)
                return
        log.debug("kernel data plane: acquire for reqid %d, which is no trap of ours",
                  report.reqid)

    def handle_expire_readable(self) -> None:
        """The kernel's XFRM_MSG_EXPIRE reports: renew an SA at its soft byte limit,
        delete it (the kernel has already) at its hard one; and its XFRM_MSG_ACQUIRE."""
        if self.expire_source is None:
            return
        try:
            reports = self.expire_source.read()
        except OSError as exc:
            log.warning("kernel data plane: reading expiry reports: %s", exc)
            return
        for report in reports:
            if isinstance(report, XfrmAcquire):
                self._acquire_for(report)
            else:
                self._expire(report)

    def _expire(self, report: XfrmExpire) -> None:
        found = next(((pair_id, pair) for pair_id, pair in self._pairs.items()
                      if (report.dst, report.spi) in ((pair.inbound.dst, pair.inbound.spi),
                                                      (pair.outbound.dst, pair.outbound.spi))),
                     None)
        if found is None:
            return  # not ours, or already removed
        pair_id, pair = found
        if self._reported.get(pair_id) is True or (
            not report.hard and pair_id in self._reported
        ):
            return
        self._reported[pair_id] = report.hard
        # The report does not say which limit it was; with life_bytes, that one is
        # far nearer than 2^32 packets of at least 1 byte each.
        what = "life_bytes" if pair.inbound.hard_bytes else "sequence numbers"
        reason = (f"{what} reached: the kernel deleted the SA" if report.hard
                  else f"{what} nearly reached: renewing")
        log.log(logging.WARNING if report.hard else logging.INFO,
                "kernel data plane: SAs %08x_i %08x_o: %s", pair_id[0], pair_id[1], reason)
        if self._expired is not None:
            self._expired(pair.child_id, report.hard, reason)

    def recover(self, state_file: str) -> None:
        """Remove what the run that last used ``state_file`` left in XFRM and the routing
        table, if it still carries our reqids (routes: our ``proto``), then record there
        what this run installs."""
        self._state_file = StateFile(state_file)
        recorded = self._state_file.load()
        states = {(str(s[0]), s[1]) for s in _rows(recorded.get("states"), 3)
                  if isinstance(s[1], int)}
        policies = {(str(p[0]), str(p[1]), str(p[2])) for p in _rows(recorded.get("policies"), 4)}
        removed: list[str] = []
        foreign = 0
        try:
            installed_states = self.xfrm.dump_states()
            installed_policies = self.xfrm.dump_policies()
        except OSError as exc:
            log.warning("kernel data plane: cannot list XFRM entries to remove an earlier "
                        "run's: %s", _reason(exc))
            installed_states, installed_policies = [], []
        # Policies first: without them no packet looks for the states any more.
        for policy in installed_policies:
            ours = [r for r in policy.reqids if r in REQIDS]
            if not ours:
                continue
            sel = policy.selector
            if sel is not None and (str(sel.src), str(sel.dst), policy.direction) in policies:
                if self._delete_leftover(self.xfrm.delete_policy, sel, policy.direction):
                    removed.append(f"policy {sel.src} -> {sel.dst} {policy.direction}")
                    continue
            foreign += 1
            self._reqids_in_use.update(ours)
        for state in installed_states:
            if state.reqid not in REQIDS:
                continue
            if (state.dst, state.spi) in states and self._delete_leftover(
                    self.xfrm.delete_state, state.dst, state.spi):
                removed.append(f"SA {state.spi:08x} {state.src} -> {state.dst}")
                continue
            foreign += 1
            self._reqids_in_use.add(state.reqid)
        if self.routes is not None:
            for row in _rows(recorded.get("routes"), 4):
                try:
                    route = Route(ipaddress.ip_network(str(row[0])), int(str(row[1])),
                                  str(row[2]), None if row[3] is None else str(row[3]),
                                  int(str(row[4])) if len(row) > 4 else 0)
                except ValueError:  # not what this file's writer records: skipped
                    continue
                if self._delete_leftover(self.routes.delete_route, route):
                    removed.append(f"route to {route.dst}")
        if self.routes is not None:
            removed.extend(self._recover_addresses(recorded.get("addresses")))
        if removed:
            log.warning("kernel data plane: removed what a previous run left behind "
                        "(recorded in %s): %s", state_file, ", ".join(removed))
        if foreign:
            log.warning("kernel data plane: %d XFRM entries carry ikev1d reqids but are not "
                        "recorded in %s (another ikev1d's?): left alone", foreign, state_file)
        self._save()

    def _recover_addresses(self, recorded: object) -> list[str]:
        """Delete the virtual IPs a killed run left on ``lo``: those the state file lists
        that still carry our IFA_PROTO (an administrator's same address does not)."""
        if self.routes is None:
            return []
        rows = {(str(r[0]), r[1]) for r in _rows(recorded, 2) if isinstance(r[1], int)}
        if not rows:
            return []
        try:
            present = self.routes.host_addresses()
        except OSError as exc:
            log.warning("kernel data plane: cannot list addresses: %s", _reason(exc))
            return []
        removed = []
        for address, index, proto in present:
            if (address, index) in rows and proto == RTPROT_IKEV1D and self._delete_leftover(
                    self.routes.delete_address, address, index):
                removed.append(f"virtual IP {address}")
        return removed

    @staticmethod
    def _delete_leftover(operation: Callable[..., None], *args: object) -> bool:
        try:
            operation(*args)
        except OSError as exc:
            if exc.errno not in _GONE:
                log.warning("kernel data plane: cannot remove a leftover entry: %s",
                            _reason(exc))
            return False
        return True

    def _save(self, states: tuple[XfrmState, ...] = (), policies: tuple[XfrmPolicy, ...] = (),
              routes: tuple[Route, ...] = (), addresses: tuple[Address, ...] = ()) -> None:
        """Record what is installed, plus what is about to be (written before it is)."""
        if self._state_file is None:
            return
        all_states = [s for p in self._pairs.values() for s in (p.inbound, p.outbound)]
        all_states += [state for _, state in self._inbound_only.values()]
        self._state_file.save({
            "reqids": [REQIDS.start, REQIDS.stop - 1],
            "states": [_state_record(s) for s in (*all_states, *states)],
            "policies": [_policy_record(p) for p in (*self.policies, *policies)],
            "routes": [_route_record(r) for r in (*self._route_refs, *routes)],
            "addresses": [[str(a), LOOPBACK_INDEX] for a in (
                *(a for a, (_, added) in self._address_refs.items() if added), *addresses)],
        })

    def _allocate_reqid(self) -> int:
        for _ in range(len(REQIDS)):
            reqid = self._next_reqid
            self._next_reqid = reqid + 1 if reqid + 1 in REQIDS else REQIDS.start
            if reqid not in self._reqids_in_use and all(
                    s.reqid != reqid for s in self._policy_sets.values()):
                return reqid
        raise DataplaneError("kernel data plane: no free reqid left")

    def install_inbound(self, sa: ChildSaEstablished) -> None:
        """The inbound state of ``sa`` alone, before Quick Mode message 3: for a
        decrypted tunnel-mode packet the kernel also wants an ``in`` (or ``fwd``) policy
        whose template names the state's reqid, else it drops the packet
        (XfrmInNoPols). A renewal or a trap has its policies already; for a new tunnel
        the ``in``/``fwd`` ones come with the state, and the ``out`` ones with the
        outbound state in ``install`` (until then our side sends nothing on it)."""
        if self._closed:
            raise DataplaneError("kernel data plane is closed")
        pair_id = (sa.spi_in, sa.spi_out)
        if pair_id in self._pairs or pair_id in self._inbound_only:
            return
        if sa.encap and self._prepare_sockets is not None and self._decap_sockets == 0:
            return  # install refuses the pair, and says why
        key = _policy_key(sa)
        policy_set = self._policy_sets.get(key)
        if policy_set is None:
            reqid = self._allocate_reqid()
            planned = plan_policies(sa, reqid)
            policies = tuple(p for p in planned if p.direction != "out")
            policy_set = _PolicySet(reqid, policies,
                                    pending=tuple(p for p in planned if p.direction == "out"))
        else:
            policies = ()
        inbound, _ = plan_states(sa, policy_set.reqid)
        self._save((inbound,), policies)
        self._add_entries((inbound,), policies)
        self._policy_sets[key] = policy_set
        # A user of the policies: the pair it renews may go first.
        policy_set.users.add(pair_id)
        self._inbound_only[pair_id] = (key, inbound)
        log.debug("kernel data plane: receiving on SA %08x_i reqid %d before Quick Mode "
                  "message 3", sa.spi_in, policy_set.reqid, extra={"conn": sa.conn})

    def install(self, sa: ChildSaEstablished) -> None:
        if self._closed:
            raise DataplaneError("kernel data plane is closed")
        pair_id = (sa.spi_in, sa.spi_out)
        if pair_id in self._pairs:
            raise DataplaneError(
                f"IPsec SA {sa.child}: SPIs {sa.spi_in:08x}/{sa.spi_out:08x} already installed"
            )
        if sa.encap and self._prepare_sockets is not None and self._decap_sockets == 0:
            self._remove_inbound_only(pair_id)
            problems = "; ".join(self._decap_problems) or "no NAT-T socket"
            raise DataplaneError(
                f"IPsec SA {sa.child} is UDP-encapsulated but the kernel cannot receive it: "
                f"{problems}"
            )
        if pair_id in self._inbound_only:
            self._complete(sa)
            return
        key = _policy_key(sa)
        policy_set = self._policy_sets.get(key)
        reqid = policy_set.reqid if policy_set is not None else self._allocate_reqid()
        inbound, outbound = plan_states(sa, reqid)
        new_policies = plan_policies(sa, reqid) if policy_set is None else ()

        if policy_set is not None:
            new_policies = policy_set.pending  # another pair's half added the rest
        # Recorded before they exist: a crash between the two leaves nothing unlisted.
        self._save((inbound, outbound), new_policies)
        self._add_entries((inbound, outbound), new_policies)
        if policy_set is None:
            policy_set = _PolicySet(reqid, new_policies)
            self._policy_sets[key] = policy_set
        else:
            policy_set.policies += policy_set.pending
            policy_set.pending = ()
        policy_set.users.add(pair_id)
        self._installed(sa, key, inbound, outbound, reqid,
                        f"{len(new_policies)} policies" if new_policies else "policies shared")

    def _complete(self, sa: ChildSaEstablished) -> None:
        """The outbound state (and routes) joins the inbound half ``install_inbound``
        put there; the policies are those it already uses."""
        pair_id = (sa.spi_in, sa.spi_out)
        key, inbound = self._inbound_only[pair_id]
        policy_set = self._policy_sets[key]
        _, outbound = plan_states(sa, policy_set.reqid)
        pending = policy_set.pending
        self._save((outbound,), pending)
        try:
            self._add_entries((outbound,), pending)
        except DataplaneError:
            self._remove_inbound_only(pair_id)
            raise
        policy_set.policies += pending
        policy_set.pending = ()
        del self._inbound_only[pair_id]
        self._installed(sa, key, inbound, outbound, policy_set.reqid,
                        f"{len(policy_set.policies)} policies" if pending else "policies shared")

    def _add_entries(self, states: tuple[XfrmState, ...],
                     policies: tuple[XfrmPolicy, ...]) -> None:
        """Add states, then policies (a policy without its SA would drop, and ACQUIRE);
        on a failure take back what was added, record the rest, and raise."""
        undo: list[Callable[[], None]] = []
        try:
            for state in states:
                self._call(f"adding {_state_text(state)}", self.xfrm.add_state, state)
                undo.append(functools.partial(self.xfrm.delete_state, state.dst, state.spi))
            for policy in policies:
                self._call(f"adding {_policy_text(policy)}", self.xfrm.add_policy, policy)
                undo.append(functools.partial(
                    self.xfrm.delete_policy, policy.selector, policy.direction))
        except DataplaneError:
            for step in reversed(undo):
                try:
                    step()
                except OSError as exc:
                    log.error("kernel data plane: rollback step failed: %s", exc)
            self._save()
            raise

    def _installed(self, sa: ChildSaEstablished, key: tuple[object, ...], inbound: XfrmState,
                   outbound: XfrmState, reqid: int, policies: str) -> None:
        """Both states are in: the pair is recorded (before its routes, which the
        state file lists by pair), gets its routes, and is saved and logged."""
        pair_id = (sa.spi_in, sa.spi_out)
        self._pairs[pair_id] = _InstalledPair(key, inbound, outbound, (), sa.child_id)
        routes = self._add_routes(sa.conn, sa.child, sa.mode, sa.remote[0], sa.local_ts,
                                  sa.remote_ts, sa.ike_id)
        self._pairs[pair_id] = _InstalledPair(key, inbound, outbound, routes, sa.child_id)
        self._save()
        log.info(
            "kernel data plane: installed SAs %08x_i %08x_o reqid %d (%s, %s%s), %s",
            sa.spi_in, sa.spi_out, reqid, sa.proposal, sa.mode,
            ", UDP-encapsulated" if sa.encap else "", policies,
            extra={"conn": sa.conn},
        )

    def _remove_inbound_only(self, pair_id: tuple[int, int]) -> None:
        found = self._inbound_only.pop(pair_id, None)
        if found is None:
            return
        key, inbound = found
        errors: list[str] = []
        try:
            self.xfrm.delete_state(inbound.dst, inbound.spi)
        except OSError as exc:
            if exc.errno not in _GONE:
                errors.append(f"deleting {_state_text(inbound)}: {_reason(exc)}")
        policy_set = self._policy_sets.get(key)
        if policy_set is not None:
            policy_set.users.discard(pair_id)
            if not policy_set.users:
                errors += self._delete_policy_set(key, policy_set)
        log.debug("kernel data plane: removed SA %08x_i (no Quick Mode message 3)", pair_id[0])
        self._save()
        if errors:
            raise DataplaneError("kernel data plane: " + "; ".join(errors))

    def remove(self, sa: ChildSaDeleted) -> None:
        if (sa.spi_in, sa.spi_out) in self._inbound_only:
            self._remove_inbound_only((sa.spi_in, sa.spi_out))
            return
        self._remove_pair((sa.spi_in, sa.spi_out))

    # --- CarriesVirtualIps ---

    def add_virtual_ip(self, ike_id: int, address: Address, split: tuple[Network, ...]) -> None:
        """Add a Mode Config virtual IP on ``lo`` (see ``CarriesVirtualIps``).

        Recorded in the state file before it is added, so a run after a crash
        removes it; an address the host has already (on any interface) is not ours:
        used as it is, never removed."""
        if self._closed:
            raise DataplaneError("kernel data plane is closed")
        key = (ike_id, address.version)
        old = self._vips.get(key)
        if old is not None and old[0] == address:
            self._vips[key] = (address, split)
            return
        if old is not None:
            self.remove_virtual_ip(ike_id, old[0])
        users, added = self._address_refs.get(address, (0, False))
        if users == 0 and self.routes is not None:
            try:
                present = {ipaddress.ip_address(a) for a, _, _ in self.routes.host_addresses()}
            except OSError as exc:
                raise DataplaneError(f"kernel data plane: virtual IP {address}: "
                                     f"{_reason(exc)}") from None
            if address in present:
                log.info("kernel data plane: virtual IP %s is on this host already; used as "
                         "it is and left there", address)
            else:
                self._save(addresses=(address,))
                try:
                    self.routes.add_address(str(address), LOOPBACK_INDEX)
                except OSError as exc:
                    self._save()
                    raise DataplaneError(f"kernel data plane: adding virtual IP {address}: "
                                         f"{_reason(exc)}") from None
                added = True
        self._address_refs[address] = (users + 1, added)
        self._vips[key] = (address, split)
        self._save()
        log.debug("kernel data plane: virtual IP %s%s", address, " on lo" if added else "")

    def remove_virtual_ip(self, ike_id: int, address: Address) -> None:
        key = (ike_id, address.version)
        vip = self._vips.get(key)
        if vip is None or vip[0] != address:
            return
        del self._vips[key]
        users, added = self._address_refs.pop(address, (0, False))
        if users > 1:
            self._address_refs[address] = (users - 1, added)
            return
        if added and self.routes is not None:
            try:
                self.routes.delete_address(str(address), LOOPBACK_INDEX)
            except OSError as exc:
                if exc.errno not in (*_GONE, errno.EADDRNOTAVAIL):
                    log.warning("kernel data plane: removing virtual IP %s: %s", address,
                                _reason(exc))
        self._save()

    def counters(self, spi_in: int, spi_out: int) -> Counters:
        pair = self._pairs.get((spi_in, spi_out))
        if pair is None:
            return zero_counters()
        inbound = self._state_counters(pair.inbound)
        outbound = self._state_counters(pair.outbound)
        return Counters(
            bytes_in=inbound.bytes,
            bytes_out=outbound.bytes,
            packets_in=inbound.packets,
            packets_out=outbound.packets,
        )

    def _state_counters(self, state: XfrmState) -> XfrmStateCounters:
        """The kernel's counters of one state; zeros when it cannot say (the state may
        have just expired), as status should still answer."""
        try:
            return self.xfrm.state_counters(state.dst, state.spi)
        except OSError as exc:
            log.debug("kernel data plane: counters of %s: %s", _state_text(state), exc)
            return XfrmStateCounters(0, 0)

    def receive_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        # With UDP_ENCAP set on the NAT-T socket the kernel takes ESP-in-UDP itself;
        # what still reaches us matched no SA (or decapsulation is off).
        log.debug("kernel data plane: ignoring %d octets of ESP-in-UDP from %s",
                  len(data), remote[0])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for pair_id in list(self._pairs):
                try:
                    self._remove_pair(pair_id)
                except DataplaneError as exc:
                    log.error("kernel data plane: %s", exc)
            for pair_id in list(self._inbound_only):
                try:
                    self._remove_inbound_only(pair_id)
                except DataplaneError as exc:
                    log.error("kernel data plane: %s", exc)
            for conn, child in list(self._traps):
                try:
                    self.remove_trap(conn, child)
                except DataplaneError as exc:
                    log.error("kernel data plane: %s", exc)
            for (ike_id, _), (address, _) in list(self._vips.items()):
                self.remove_virtual_ip(ike_id, address)
        finally:
            if self.expire_source is not None:
                if self._loop is not None:
                    self._loop.remove_reader(self.expire_source.fileno())
                self.expire_source.close()
            self.xfrm.close()
            if self.routes is not None:
                self.routes.close()
            if (self._state_file is not None and not self._pairs and not self._policy_sets
                    and not self._address_refs and not self._inbound_only):
                self._state_file.remove()

    def probe(self) -> None:
        """Add and delete a throw-away ESP SA, so a kernel without ESP fails at start.

        Raises DataplaneError with the reason (e.g. no esp4 module) instead of
        letting every later install fail.
        """
        alg = esp_algorithm("aes", 128, "sha1")
        state = XfrmState("127.0.0.1", "127.0.0.1", PROBE_SPI, 0, "transport",
                          _xfrm_algorithms(alg, bytes(keymat_length(alg))))
        for attempt in (1, 2):
            try:
                self.xfrm.add_state(state)
            except OSError as exc:
                if exc.errno == errno.EEXIST and attempt == 1:
                    # Left by a daemon that was killed between the two calls.
                    self._call("removing an old probe SA", self.xfrm.delete_state,
                               state.dst, state.spi)
                    continue
                raise DataplaneError(
                    f"kernel data plane cannot start: the kernel refuses an ESP SA: {_reason(exc)}"
                ) from None
            break
        self._call("removing the probe SA", self.xfrm.delete_state, state.dst, state.spi)

    # --- helpers ---

    @property
    def installed(self) -> dict[tuple[int, int], tuple[XfrmState, XfrmState]]:
        """(spi_in, spi_out) -> (inbound, outbound) states now installed."""
        return {k: (p.inbound, p.outbound) for k, p in self._pairs.items()}

    @property
    def policies(self) -> list[XfrmPolicy]:
        return [p for s in self._policy_sets.values() for p in s.policies]

    @staticmethod
    def _call(what: str, operation: Callable[..., None], *args: object) -> None:
        try:
            operation(*args)
        except OSError as exc:
            raise DataplaneError(f"kernel data plane: {what}: {_reason(exc)}") from None

    def _add_routes(self, conn: str, child: str, mode: str, remote: str,
                    local_nets: tuple[Network, ...],
                    remote_nets: tuple[Network, ...],
                    ike_id: int | None = None) -> tuple[Route, ...]:
        """Routes to the remote networks with a source address inside the local ones.

        As strongSwan does (its table 220): without them a program on this host
        would send to the remote networks from its outer address, which no policy
        covers. Only when this host has an address in the SA's local networks (or
        the ISAKMP SA has a virtual IP, which is then the source), only in tunnel
        mode, and never over an existing route (that one is left alone). A route
        that cannot be added is logged, not fatal: the SAs still serve forwarded
        traffic.
        """
        if self.routes is None or mode != "tunnel":
            return ()
        try:
            addresses = [ipaddress.ip_address(a) for a in self.routes.local_addresses()]
            oif, gateway = self.routes.route_to(remote)
        except OSError as exc:
            log.warning("kernel data plane: no routes for %s: %s", child, _reason(exc),
                        extra={"conn": conn})
            return ()
        added: list[Route] = []
        vips = {version: vip for (owner, version), vip in self._vips.items()
                if owner == ike_id}
        remote_networks = remote_nets
        if vips:
            # The split networks came with the addresses; they are the same list.
            remote_networks = split_routes(remote_networks, next(iter(vips.values()))[1])
        for remote_ts in remote_networks:
            vip = vips.get(remote_ts.version)
            if vip is not None:
                source: Address | None = vip[0]
            else:
                source = next((a for a in addresses for net in local_nets
                               if a.version == remote_ts.version and a in net), None)
            if source is None:
                continue
            route = Route(remote_ts, oif, gateway or remote, str(source))
            if self._add_route(route, conn):
                added.append(route)
        return tuple(added)

    def _add_trap_routes(self, trap: TrapInstalled) -> tuple[Route, ...]:
        """The routes of a trap whose local end is a virtual IP to come: to each remote
        network of the virtual IP's family, with no source and a metric above the SA
        pair's route (see the module's docstring)."""
        if self.routes is None or trap.mode != "tunnel":
            return ()
        try:
            oif, gateway = self.routes.route_to(trap.remote)
        except OSError as exc:
            log.warning("kernel data plane: no routes for %s: %s", trap.child, _reason(exc),
                        extra={"conn": trap.conn})
            return ()
        families = {n.version for n in trap.local_ts}
        return tuple(
            route for remote_ts in trap.remote_ts if remote_ts.version in families
            for route in [Route(remote_ts, oif, gateway or trap.remote, None,
                                TRAP_ROUTE_METRIC)]
            if self._add_route(route, trap.conn))

    def _add_route(self, route: Route, conn: str) -> bool:
        """Add a route, or count one more user of it; False when it could not be added
        (logged: the SAs still serve forwarded traffic)."""
        if self.routes is None:
            return False
        if route not in self._route_refs:
            self._save(routes=(route,))
            try:
                self.routes.add_route(route)
            except OSError as exc:
                level = logging.INFO if exc.errno == errno.EEXIST else logging.WARNING
                log.log(level, "kernel data plane: route to %s not added: %s",
                        route.dst, _reason(exc), extra={"conn": conn})
                return False
            self._route_refs[route] = 0
        self._route_refs[route] += 1
        return True

    def _remove_routes(self, routes: tuple[Route, ...]) -> list[str]:
        errors: list[str] = []
        for route in routes:
            self._route_refs[route] -= 1
            if self._route_refs[route] > 0:
                continue
            del self._route_refs[route]
            if self.routes is None:
                continue
            try:
                self.routes.delete_route(route)
            except OSError as exc:
                if exc.errno not in _GONE:
                    errors.append(f"deleting route to {route.dst}: {_reason(exc)}")
        return errors

    def _delete_policy_set(self, key: tuple[object, ...], policy_set: _PolicySet) -> list[str]:
        del self._policy_sets[key]
        errors: list[str] = []
        for policy in policy_set.policies:
            try:
                self.xfrm.delete_policy(policy.selector, policy.direction)
            except OSError as exc:
                if exc.errno not in _GONE:
                    errors.append(f"deleting {_policy_text(policy)}: {_reason(exc)}")
        return errors

    def _remove_pair(self, pair_id: tuple[int, int]) -> None:
        """Delete an SA pair's states, and its policies when no other pair uses them."""
        pair = self._pairs.pop(pair_id, None)
        if pair is None:
            return
        self._reported.pop(pair_id, None)
        errors = self._remove_routes(pair.routes)
        for state in (pair.outbound, pair.inbound):
            try:
                self.xfrm.delete_state(state.dst, state.spi)
            except OSError as exc:
                if exc.errno not in _GONE:
                    errors.append(f"deleting {_state_text(state)}: {_reason(exc)}")
        policy_set = self._policy_sets.get(pair.key)
        if policy_set is not None:
            policy_set.users.discard(pair_id)
            if not policy_set.users:
                errors += self._delete_policy_set(pair.key, policy_set)
        log.info("kernel data plane: removed SAs %08x_i %08x_o", pair_id[0], pair_id[1])
        self._save()
        if errors:
            raise DataplaneError("kernel data plane: " + "; ".join(errors))


def _rows(value: object, width: int) -> list[list[object]]:
    """The well-formed rows of a list from the state file (others are skipped)."""
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, list) and len(row) >= width]


def create_backend(config: object = None) -> KernelBackend:
    """Open the XFRM netlink socket; DataplaneError if the kernel has no XFRM."""
    from ikev1d.dataplane.linux.xfrm import (
        RouteSocket,
        XfrmExpireSocket,
        XfrmSocket,
        prepare_ike_sockets,
    )

    try:
        xfrm = XfrmSocket()
    except OSError as exc:
        raise DataplaneError(
            f"kernel data plane cannot start: no XFRM netlink: {exc.strerror or exc}"
        ) from None
    try:
        routes = RouteSocket()
    except OSError as exc:
        xfrm.close()
        raise DataplaneError(
            f"kernel data plane cannot start: no route netlink: {exc.strerror or exc}"
        ) from None
    try:
        expire: XfrmExpireSocket | None = XfrmExpireSocket()
    except OSError as exc:
        log.warning("kernel data plane: no XFRM expiry reports or acquires (life_bytes is "
                    "enforced by the kernel but not renewed before; traps catch traffic but "
                    "start nothing): %s", exc.strerror or exc)
        expire = None
    backend = KernelBackend(xfrm, routes=routes, prepare_sockets=prepare_ike_sockets,
                            expire_source=expire)
    try:
        backend.probe()
    except DataplaneError:
        xfrm.close()
        routes.close()
        if expire is not None:
            expire.close()
        raise
    log.info("kernel data plane: XFRM over netlink")
    return backend

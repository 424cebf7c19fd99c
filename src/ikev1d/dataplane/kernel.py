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

The reqid ties policies to states. Like strongSwan, one reqid belongs to one
set of policies (outer addresses, mode, networks), not to one SA pair: a
rekeyed SA pair (make-before-break) gets the reqid of the pair it replaces,
so the policies stay put, the kernel sends on the newest outbound state
(``xfrm_state_find`` prefers the most recently added) and the old pair can be
deleted without a gap. Policies are removed with the last SA pair using them.

Only what was installed here is deleted again (by SPI and destination for
states, selector and direction for policies); other XFRM entries are left
alone. A failed install is rolled back before ``DataplaneError`` is raised.

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

from ikev1d.dataplane.base import DataplaneError, SendUdp, zero_counters
from ikev1d.dataplane.esp import (
    EspAlgorithm,
    UnsupportedEspAlgorithm,
    esp_algorithm,
    keymat_length,
)
from ikev1d.dataplane.linux.xfrm import (
    Route,
    XfrmAlgorithm,
    XfrmPolicy,
    XfrmSelector,
    XfrmState,
    XfrmStateCounters,
    XfrmTemplate,
)
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, Endpoint, Network
from ikev1d.status import Counters

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "POLICY_PRIORITY_BASE",
    "PROBE_SPI",
    "REPLAY_WINDOW",
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
PROBE_SPI: Final = 0xFF
"""SPIs 1-255 are reserved by IANA (RFC 4303 §2.1): never negotiated, so safe for a probe."""
POLICY_PRIORITY_BASE: Final = 200_000
"""Lower is preferred; more specific selectors get lower numbers (see policy_priority)."""

_GONE: Final = (errno.ENOENT, errno.ESRCH)
"""What the kernel answers for an SA or policy that is not (any longer) there."""


class XfrmLike(Protocol):
    """The netlink operations the backend needs (``linux.xfrm.XfrmSocket``)."""

    def add_state(self, state: XfrmState) -> None: ...
    def delete_state(self, dst: str, spi: int) -> None: ...
    def state_counters(self, dst: str, spi: int) -> XfrmStateCounters: ...
    def add_policy(self, policy: XfrmPolicy) -> None: ...
    def delete_policy(self, selector: XfrmSelector, direction: str) -> None: ...
    def close(self) -> None: ...


class RoutesLike(Protocol):
    """The rtnetlink operations for tunnel routes (``linux.xfrm.RouteSocket``)."""

    def local_addresses(self) -> list[str]: ...
    def route_to(self, address: str) -> tuple[int, str | None]: ...
    def add_route(self, route: Route) -> None: ...
    def delete_route(self, route: Route) -> None: ...
    def close(self) -> None: ...


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
    inbound = XfrmState(remote, local, sa.spi_in, reqid, sa.mode,
                        xfrm_algorithms(sa, sa.keymat_in), REPLAY_WINDOW, in_encap, in_selector)
    outbound = XfrmState(local, remote, sa.spi_out, reqid, sa.mode,
                         xfrm_algorithms(sa, sa.keymat_out), REPLAY_WINDOW, out_encap,
                         out_selector)
    return inbound, outbound


def policy_priority(selector: XfrmSelector) -> int:
    """More specific selectors first, like strongSwan's automatic priorities."""
    return POLICY_PRIORITY_BASE - 256 * (selector.src.prefixlen + selector.dst.prefixlen)


def plan_policies(sa: ChildSaEstablished, reqid: int) -> tuple[XfrmPolicy, ...]:
    """out / in (/ fwd in tunnel mode) for every same-family (local_ts, remote_ts) pair."""
    local, remote = sa.local[0], sa.remote[0]
    outbound = XfrmTemplate(local, remote, reqid, sa.mode)
    inbound = XfrmTemplate(remote, local, reqid, sa.mode)
    policies: list[XfrmPolicy] = []
    for local_ts in sa.local_ts:
        for remote_ts in sa.remote_ts:
            if local_ts.version != remote_ts.version:
                continue
            out_sel = XfrmSelector(local_ts, remote_ts)
            in_sel = XfrmSelector(remote_ts, local_ts)
            policies.append(XfrmPolicy(out_sel, "out", policy_priority(out_sel), outbound))
            policies.append(XfrmPolicy(in_sel, "in", policy_priority(in_sel), inbound))
            if sa.mode == "tunnel":
                policies.append(XfrmPolicy(in_sel, "fwd", policy_priority(in_sel), inbound))
    if not policies:
        raise DataplaneError(
            f"IPsec SA {sa.child}: no local/remote network pair of the same address family"
        )
    return tuple(policies)


def _policy_key(sa: ChildSaEstablished) -> tuple[object, ...]:
    return (sa.local[0], sa.remote[0], sa.mode, sa.local_ts, sa.remote_ts)


# --- the backend ----------------------------------------------------------------------------


@dataclass
class _PolicySet:
    reqid: int
    policies: tuple[XfrmPolicy, ...]
    users: set[tuple[int, int]] = field(default_factory=set)


@dataclass(frozen=True)
class _InstalledPair:
    key: tuple[object, ...]
    inbound: XfrmState
    outbound: XfrmState
    routes: tuple[Route, ...] = ()


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
        first_reqid: int = 1,
    ) -> None:
        """``routes``: install tunnel routes (see :meth:`_add_routes`); None: no routes."""
        self.xfrm = xfrm
        self.routes = routes
        self._route_refs: dict[Route, int] = {}
        self._prepare_sockets = prepare_sockets
        self._next_reqid = first_reqid
        self._policy_sets: dict[tuple[object, ...], _PolicySet] = {}
        self._pairs: dict[tuple[int, int], _InstalledPair] = {}
        self._decap_sockets = 0
        self._decap_problems: list[str] = []
        self._closed = False

    # --- DataplaneBackend ---

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        """Prepare the daemon's UDP sockets (bypass policies, ESP-in-UDP decapsulation).

        The kernel sends and receives ESP itself, so neither ``send_udp`` nor
        the loop is needed beyond this.
        """
        if self._prepare_sockets is None:
            return
        self._decap_sockets, self._decap_problems = self._prepare_sockets(send_udp)
        for problem in self._decap_problems:
            log.warning("kernel data plane: %s", problem)

    def install(self, sa: ChildSaEstablished) -> None:
        if self._closed:
            raise DataplaneError("kernel data plane is closed")
        pair_id = (sa.spi_in, sa.spi_out)
        if pair_id in self._pairs:
            raise DataplaneError(
                f"IPsec SA {sa.child}: SPIs {sa.spi_in:08x}/{sa.spi_out:08x} already installed"
            )
        if sa.encap and self._prepare_sockets is not None and self._decap_sockets == 0:
            problems = "; ".join(self._decap_problems) or "no NAT-T socket"
            raise DataplaneError(
                f"IPsec SA {sa.child} is UDP-encapsulated but the kernel cannot receive it: "
                f"{problems}"
            )
        key = _policy_key(sa)
        policy_set = self._policy_sets.get(key)
        reqid = policy_set.reqid if policy_set is not None else self._next_reqid
        inbound, outbound = plan_states(sa, reqid)
        new_policies = plan_policies(sa, reqid) if policy_set is None else ()

        undo: list[Callable[[], None]] = []
        try:
            # States before policies: a policy without its SA would drop (and ACQUIRE).
            for state in (inbound, outbound):
                self._call(f"adding {_state_text(state)}", self.xfrm.add_state, state)
                undo.append(functools.partial(self.xfrm.delete_state, state.dst, state.spi))
            for policy in new_policies:
                self._call(f"adding {_policy_text(policy)}", self.xfrm.add_policy, policy)
                undo.append(functools.partial(
                    self.xfrm.delete_policy, policy.selector, policy.direction))
        except DataplaneError:
            for step in reversed(undo):
                try:
                    step()
                except OSError as exc:
                    log.error("kernel data plane: rollback step failed: %s", exc)
            raise
        if policy_set is None:
            policy_set = _PolicySet(reqid, new_policies)
            self._policy_sets[key] = policy_set
            self._next_reqid += 1
        policy_set.users.add(pair_id)
        routes = self._add_routes(sa)
        self._pairs[pair_id] = _InstalledPair(key, inbound, outbound, routes)
        log.info(
            "kernel data plane: installed SAs %08x_i %08x_o reqid %d (%s, %s%s), %s",
            sa.spi_in, sa.spi_out, reqid, sa.proposal, sa.mode,
            ", UDP-encapsulated" if sa.encap else "",
            f"{len(new_policies)} policies" if new_policies else "policies shared",
            extra={"conn": sa.conn},
        )

    def remove(self, sa: ChildSaDeleted) -> None:
        self._remove_pair((sa.spi_in, sa.spi_out))

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
        finally:
            self.xfrm.close()
            if self.routes is not None:
                self.routes.close()

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

    def _add_routes(self, sa: ChildSaEstablished) -> tuple[Route, ...]:
        """Routes to the remote networks with a source address inside the local ones.

        As strongSwan does (its table 220): without them a program on this host
        would send to the remote networks from its outer address, which no policy
        covers. Only when this host has an address in the SA's local networks, only
        in tunnel mode, and never over an existing route (that one is left alone).
        A route that cannot be added is logged, not fatal: the SAs still serve
        forwarded traffic.
        """
        if self.routes is None or sa.mode != "tunnel":
            return ()
        try:
            addresses = [ipaddress.ip_address(a) for a in self.routes.local_addresses()]
            oif, gateway = self.routes.route_to(sa.remote[0])
        except OSError as exc:
            log.warning("kernel data plane: no routes for %s: %s", sa.child, _reason(exc),
                        extra={"conn": sa.conn})
            return ()
        added: list[Route] = []
        for remote_ts in sa.remote_ts:
            source = next((a for a in addresses for net in sa.local_ts
                           if a.version == remote_ts.version and a in net), None)
            if source is None:
                continue
            route = Route(remote_ts, oif, gateway or sa.remote[0], str(source))
            if route not in self._route_refs:
                try:
                    self.routes.add_route(route)
                except OSError as exc:
                    level = logging.INFO if exc.errno == errno.EEXIST else logging.WARNING
                    log.log(level, "kernel data plane: route to %s not added: %s",
                            remote_ts, _reason(exc), extra={"conn": sa.conn})
                    continue
                self._route_refs[route] = 0
            self._route_refs[route] += 1
            added.append(route)
        return tuple(added)

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

    def _remove_pair(self, pair_id: tuple[int, int]) -> None:
        """Delete an SA pair's states, and its policies when no other pair uses them."""
        pair = self._pairs.pop(pair_id, None)
        if pair is None:
            return
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
                del self._policy_sets[pair.key]
                for policy in policy_set.policies:
                    try:
                        self.xfrm.delete_policy(policy.selector, policy.direction)
                    except OSError as exc:
                        if exc.errno not in _GONE:
                            errors.append(f"deleting {_policy_text(policy)}: {_reason(exc)}")
        log.info("kernel data plane: removed SAs %08x_i %08x_o", pair_id[0], pair_id[1])
        if errors:
            raise DataplaneError("kernel data plane: " + "; ".join(errors))


def create_backend(config: object = None) -> KernelBackend:
    """Open the XFRM netlink socket; DataplaneError if the kernel has no XFRM."""
    from ikev1d.dataplane.linux.xfrm import RouteSocket, XfrmSocket, prepare_ike_sockets

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
    backend = KernelBackend(xfrm, routes=routes, prepare_sockets=prepare_ike_sockets)
    try:
        backend.probe()
    except DataplaneError:
        xfrm.close()
        routes.close()
        raise
    log.info("kernel data plane: XFRM over netlink")
    return backend

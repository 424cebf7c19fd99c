"""Trap policies: children that wait for traffic and are negotiated when it comes.

A trap is what strongSwan calls a routed (trapped) child: the data plane
catches outbound packets that a child's traffic selectors cover while no IPsec
SA carries them, and reports them once (an *acquire*, after the kernel's
XFRM_MSG_ACQUIRE, RFC 2367 section 3.1.6's SADB_ACQUIRE); the engine then
initiates that child. Traps come from two settings, with swanctl.conf's meaning:

* ``start_action = "trap"`` (on the connection, for all its children, or on one
  child): installed when the configuration is loaded, removed when it no longer
  says so; an IPsec SA negotiated through it leaves it in place, so traffic
  brings the tunnel back whenever it goes (lifetime end, Delete from the peer).
* ``dpd_action = "hold"``: when DPD (RFC 3706) declares the peer dead, its SAs are
  removed and every child of the connection is trapped, so the next packet
  re-establishes the tunnel instead of leaking or vanishing. Like strongSwan's
  dpd_action trap it stays until ``down``, or a reload that no longer says
  "hold" (or drops the connection or child), removes it.
  A Delete from the peer is a deliberate close, not a lost peer: it installs no
  trap (strongSwan's default close_action none).

Acquires are bounded: while a negotiation started by one runs (until its IPsec
SA is up, it fails, or one whole retransmission budget has passed) further
acquires for that child are ignored, so a stream of packets into a trap costs
one Main Mode, not one per packet.

The engine is sans-I/O: it emits ``TrapInstalled``/``TrapRemoved`` events for
the data plane, and the daemon calls ``Engine.acquire`` for what the data plane
reports.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ikev1d.config import Config, ConnectionConfig, DpdAction, StartAction
from ikev1d.engine.api import (
    ChildSaEstablished,
    ConnectionFailed,
    EngineError,
    Event,
    IkeSaDeleted,
    TrapInstalled,
    TrapRemoved,
)

if TYPE_CHECKING:
    from ikev1d.engine.engine import Engine

log = logging.getLogger("ikev1d.engine")

START_ACTION = "start_action"
DPD_ACTION = "dpd_action"


@dataclass
class Trap:
    spec: TrapInstalled
    pending_until: float = 0.0
    """Until then an acquire is not acted on: a negotiation it started may still run."""


def trapped_children(conn: ConnectionConfig) -> list[str]:
    """The children ``start_action = "trap"`` traps, on the connection or the child."""
    if conn.start_action is StartAction.TRAP:
        return list(conn.children)
    return [name for name, child in conn.children.items()
            if child.start_action is StartAction.TRAP]


class Traps:
    """The engine's trapped children, by (connection, child)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._traps: dict[tuple[str, str], Trap] = {}

    def __len__(self) -> int:
        return len(self._traps)

    def specs(self) -> list[TrapInstalled]:
        return [trap.spec for trap in self._traps.values()]

    def get(self, conn: str, child: str) -> TrapInstalled | None:
        trap = self._traps.get((conn, child))
        return trap.spec if trap is not None else None

    # -- installing and removing ---------------------------------------------------------

    def _spec(self, conn: ConnectionConfig, child_name: str, origin: str) -> TrapInstalled:
        """The trap for one child; EngineError when it has no peer address to trap for."""
        local, remote = self.engine.initiation_addresses(conn)
        child = conn.children[child_name]
        local_ts, remote_ts = child.traffic_selectors(local, remote)
        if conn.vips and not child.local_ts:
            # Our end will be the virtual IP that Mode Config has not given us yet:
            # trap every source of its family, as strongSwan's trap manager installs
            # a dynamic local selector as %any of the virtual IP's family. The first
            # packet (from one of the host's own addresses) brings the connection
            # up and is dropped; the child then runs from the virtual IP.
            families = {ipaddress.ip_address(v).version for v in conn.vips}
            local_ts = tuple(ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
                             for version in sorted(families)
                             if any(n.version == version for n in remote_ts))
            if not local_ts:
                raise EngineError("no remote network of the virtual IP's address family")
        return TrapInstalled(conn.name, child_name, local, remote, child.mode.value,
                             local_ts, remote_ts, origin)

    def install(self, conn: ConnectionConfig, child: str, origin: str) -> None:
        """Trap a child; a trap that exists is recomputed, and replaced (removed and
        installed again) only when what it catches changed, so that its route or
        policy does not flap."""
        key = (conn.name, child)
        old = self._traps.get(key)
        if old is not None and old.spec.origin == START_ACTION:
            origin = START_ACTION  # a configured trap stays one while configured
        try:
            spec = self._spec(conn, child, origin)
        except EngineError as exc:
            log.warning("cannot trap %s/%s: %s", conn.name, child, exc,
                        extra={"conn": conn.name})
            return
        if old is not None:
            if _with_origin(old.spec, origin) == spec:
                old.spec = spec
                return
            self.engine.emit(TrapRemoved(conn.name, child))
        self._traps[key] = Trap(spec)
        log.info("trap installed for %s/%s (%s): %s === %s", conn.name, child, spec.origin,
                 ",".join(map(str, spec.local_ts)), ",".join(map(str, spec.remote_ts)),
                 extra={"conn": conn.name})
        self.engine.emit(spec)

    def remove(self, conn: str, child: str, reason: str) -> None:
        if self._traps.pop((conn, child), None) is None:
            return
        log.info("trap removed for %s/%s: %s", conn, child, reason, extra={"conn": conn})
        self.engine.emit(TrapRemoved(conn, child))

    def hold(self, conn: ConnectionConfig) -> None:
        """dpd_action = "hold": trap every child of a connection whose peer is gone."""
        for child in conn.children:
            self.install(conn, child, DPD_ACTION)

    def release(self, conn: str, reason: str) -> None:
        """Remove the traps of a connection that DPD installed (``down``); configured
        ones stay, as the configuration still asks for them."""
        for (name, child), trap in list(self._traps.items()):
            if name == conn and trap.spec.origin == DPD_ACTION:
                self.remove(name, child, reason)

    def sync(self, config: Config) -> None:
        """Make the traps what ``config`` says: configured traps installed, traps of
        connections or children that are gone (or no longer trapped) removed, and
        every remaining trap recomputed from the new settings."""
        for (name, child), trap in list(self._traps.items()):
            conn = config.connections.get(name)
            if conn is None or child not in conn.children:
                self.remove(name, child, "no longer in the configuration")
            elif child in trapped_children(conn):
                continue  # installed below
            elif trap.spec.origin == DPD_ACTION and conn.dpd_action is DpdAction.HOLD:
                self.install(conn, child, DPD_ACTION)
            elif trap.spec.origin == DPD_ACTION:
                self.remove(name, child, "dpd_action is no longer \"hold\"")
            else:
                self.remove(name, child, "start_action is no longer \"trap\"")
        for conn in config.connections.values():
            for child in trapped_children(conn):
                held = self._traps.get((conn.name, child))
                if held is not None:
                    held.spec = _with_origin(held.spec, START_ACTION)
                self.install(conn, child, START_ACTION)

    def clear(self, reason: str) -> None:
        for name, child in list(self._traps):
            self.remove(name, child, reason)

    # -- traffic --------------------------------------------------------------------------

    def acquire(self, conn: str, child: str, now: float) -> None:
        """The data plane caught a packet for a trapped child: negotiate it, unless
        a negotiation is on its way already or the child is up."""
        trap = self._traps.get((conn, child))
        engine = self.engine
        if trap is None:
            engine.logs.log(log, logging.DEBUG, "acquire-unknown", now,
                            "acquire for %s/%s: no such trap (removed meanwhile?)", conn,
                            child, extra={"conn": conn})
            return
        if (now < trap.pending_until or engine.child_is_up(conn, child)
                or engine.child_in_progress(conn, child)):
            return
        engine.logs.log(log, logging.INFO, f"acquire:{conn}/{child}", now,
                        "acquire for %s/%s: initiating", conn, child, extra={"conn": conn})
        engine.stats.acquires += 1
        trap.pending_until = now + engine.retransmit_budget()
        try:
            engine.initiate(conn, child, now)
        except EngineError as exc:
            trap.pending_until = 0.0
            engine.logs.log(log, logging.WARNING, f"acquire-failed:{conn}", now,
                            "acquire for %s/%s: cannot initiate: %s", conn, child, exc,
                            extra={"conn": conn})

    def observe(self, event: Event) -> None:
        """A negotiation ended: the next acquire for its child may start another."""
        match event:
            case ChildSaEstablished() | ConnectionFailed() if event.child is not None:
                trap = self._traps.get((event.conn, event.child))
                if trap is not None:
                    trap.pending_until = 0.0
            case ConnectionFailed() | IkeSaDeleted():
                for (name, _), trap in self._traps.items():
                    if name == event.conn:
                        trap.pending_until = 0.0


def _with_origin(spec: TrapInstalled, origin: str) -> TrapInstalled:
    return TrapInstalled(spec.conn, spec.child, spec.local, spec.remote, spec.mode,
                         spec.local_ts, spec.remote_ts, origin)

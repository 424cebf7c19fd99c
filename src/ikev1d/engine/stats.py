"""Counts of what the engine has done since it started, for monitoring.

The engine counts at the few places where a handshake starts, succeeds or
fails, where a renewal completes, where DPD declares a peer dead and where a
Main Mode request is dropped for the half-open limits. The counts only grow;
the daemon reads them on a scrape (``ikev1d.daemon.metrics``).

Failure reasons are people's text; ``failure_kind`` maps them to a short,
bounded set of names so that a monitoring system gets one series per kind, not
one per message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PHASE1 = "1"
PHASE2 = "2"

FAILURE_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # First match wins: an authentication failure that also names a notification
    # is an authentication failure.
    ("authentication_failed", ("authentication failed", "AUTHENTICATION-FAILED",
                               "INVALID-HASH-INFORMATION", "does not verify")),
    ("no_proposal_chosen", ("NO-PROPOSAL-CHOSEN", "no proposal", "no acceptable")),
    ("invalid_id_information", ("INVALID-ID-INFORMATION", "traffic selector")),
    ("timeout", ("no response", "expired", "timed out")),
    ("peer_notification", ("peer sent",)),
    ("malformed", ("PAYLOAD-MALFORMED", "malformed", "cannot decrypt", "lacks",
                   "unexpected", "missing")),
    ("install_failed", ("installing",)),
)
"""(kind, phrases that mark it in a failure reason), checked in this order."""

OTHER = "other"


def failure_kind(reason: str) -> str:
    """The kind of a failure reason: one of ``FAILURE_KINDS``' names or ``"other"``."""
    lowered = reason.lower()
    for kind, phrases in FAILURE_KINDS:
        if any(phrase.lower() in lowered for phrase in phrases):
            return kind
    return OTHER


def role(initiator: bool) -> str:
    return "initiator" if initiator else "responder"


@dataclass
class EngineStats:
    """Monotonic counters; keys are label tuples as named on each member."""

    started: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(phase, role)"""
    succeeded: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(phase, role)"""
    failed: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(phase, role, failure kind)"""
    rekeys: Counter[str] = field(default_factory=Counter)
    """phase: renewals completed (the new SA is up and took over)"""
    half_open_dropped: int = 0
    """Main Mode requests dropped because of the half-open limits."""
    dpd_failures: int = 0
    """Peers declared dead by Dead Peer Detection (RFC 3706)."""
    acquires: int = 0
    """Negotiations started because traffic hit a trapped child."""

    def handshake_started(self, phase: str, initiator: bool) -> None:
        self.started[phase, role(initiator)] += 1

    def handshake_succeeded(self, phase: str, initiator: bool) -> None:
        self.succeeded[phase, role(initiator)] += 1

    def handshake_failed(self, phase: str, initiator: bool, reason: str) -> None:
        self.failed[phase, role(initiator), failure_kind(reason)] += 1

    def snapshot(self) -> EngineStats:
        """A copy that later counting does not change."""
        return EngineStats(Counter(self.started), Counter(self.succeeded),
                           Counter(self.failed), Counter(self.rekeys),
                           self.half_open_dropped, self.dpd_failures, self.acquires)

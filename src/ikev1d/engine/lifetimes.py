"""The lifetime an SA gets from what we configured and what the peer proposed.

RFC 2407 section 4.5 and RFC 2409 section 5.5: lifetimes are proposed and the
shorter one wins, so a peer can shorten ours. A peer (or anyone who can get
an authenticated exchange going) that proposes one second would make us renew
every second, so a proposal below a floor (``[daemon] min_phase1_lifetime`` /
``min_phase2_lifetime``) is raised to it. Our own configured lifetime is still
honoured when it is shorter than the floor: the administrator chose it.

When to renew within a lifetime is left to the implementation (RFC 2409
section 4.5 only says SAs are renewed before they expire); :func:`rekey_delay`
decides it for both phases.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("ikev1d.engine")

__all__ = ["MIN_LIFE_BYTES", "RENEWAL_RETRANSMITS", "agreed_life_bytes", "agreed_lifetime",
           "rekey_delay"]

#: The least volume lifetime a peer can impose on an IPsec SA: less would renew
#: it every few hundred packets (a rekey storm by volume, like one by time).
MIN_LIFE_BYTES = 1 << 20


def agreed_lifetime(
    ours: float, proposed: float | None, floor: float, what: str,
    extra: Mapping[str, object] | None = None,
) -> float:
    """min(ours, proposed), with a proposed value below ``floor`` raised to it (logged)."""
    if not proposed:
        return ours
    if proposed < floor and proposed < ours:
        raised = min(ours, floor)
        log.info("the peer proposes a %s lifetime of %d s, below the minimum of %d s: "
                 "using %d s", what, int(proposed), int(floor), int(raised), extra=extra)
        return raised
    return min(ours, float(proposed))


def agreed_life_bytes(
    ours: int, proposed_kilobytes: int | None, what: str,
    extra: Mapping[str, object] | None = None,
) -> int:
    """The volume lifetime in bytes (0: none): the smaller of ours (0: none) and
    the peer's proposal in kilobytes (RFC 2407 section 4.5, SA Life Type 2), a
    proposal below :data:`MIN_LIFE_BYTES` raised to it (logged)."""
    if not proposed_kilobytes:
        return ours
    proposed = proposed_kilobytes * 1024
    if proposed < MIN_LIFE_BYTES and (not ours or proposed < ours):
        raised = min(ours, MIN_LIFE_BYTES) if ours else MIN_LIFE_BYTES
        log.info("the peer proposes a %s lifetime of %d kilobytes, below the minimum of %d: "
                 "using %d", what, proposed_kilobytes, MIN_LIFE_BYTES // 1024, raised // 1024,
                 extra=extra)
        return raised
    return min(ours, proposed) if ours else proposed


#: A renewal starts at least this many retransmission intervals before the SA's
#: end (when the lifetime allows), so that its exchange survives a lost message
#: and a peer or host that is slow to answer, and the old SA is still there when
#: the new one comes up (make before break).
RENEWAL_RETRANSMITS = 2


def rekey_delay(lifetime: float, initiator: bool, retransmit_timeout: float,
                fraction: float) -> float:
    """Seconds after an SA came up at which to renew it.

    Before its end by a margin: 10 % of the lifetime (at most 9 minutes), but at
    least :data:`RENEWAL_RETRANSMITS` retransmission intervals and at most half the
    lifetime; then earlier by a jitter (``fraction`` in [0, 1] of 5 %, at most a
    minute) so that both ends rarely renew at once. The side that did not
    initiate the SA waits half the margin and jitter longer, so that normally one
    side renews and the other sees the new SA arrive. Never before half the
    lifetime.
    """
    margin = max(min(0.1 * lifetime, 540.0),
                 min(RENEWAL_RETRANSMITS * retransmit_timeout, 0.5 * lifetime))
    jitter = fraction * min(0.05 * lifetime, 60.0)
    if not initiator:
        margin /= 2
        jitter /= 2
    return max(lifetime - margin - jitter, 0.5 * lifetime)

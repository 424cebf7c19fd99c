"""The lifetime an SA gets from what we configured and what the peer proposed.

RFC 2407 section 4.5 and RFC 2409 section 5.5: lifetimes are proposed and the
shorter one wins, so a peer can shorten ours. A peer (or anyone who can get
an authenticated exchange going) that proposes one second would make us renew
every second, so a proposal below a floor (``[daemon] min_phase1_lifetime`` /
``min_phase2_lifetime``) is raised to it. Our own configured lifetime is still
honoured when it is shorter than the floor: the administrator chose it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("ikev1d.engine")

__all__ = ["MIN_LIFE_BYTES", "agreed_life_bytes", "agreed_lifetime"]

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

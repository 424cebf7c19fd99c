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

__all__ = ["agreed_lifetime"]


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

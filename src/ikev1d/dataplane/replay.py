"""The receiver's anti-replay sliding window (RFC 4303 §3.4.3 and Appendix A).

The window is a bitmap kept in a Python int: bit ``i`` set means sequence number
``top - i`` has been received and authenticated. The check (before the ICV) and
the update (after the ICV verified) are separate, as §3.4.3 requires: "the
receive window is updated only if the integrity verification succeeds", so a
forged packet cannot move the window.

Sequence numbers are 32 bits (no ESN, RFC 4303 §2.2.1). Adding ESN later means
reconstructing the high-order 32 bits from ``top`` (Appendix A2.2) before
``check``; the bitmap logic below works on the full 64-bit number unchanged.
"""

from __future__ import annotations

__all__ = ["DEFAULT_REPLAY_WINDOW", "ReplayWindow"]

DEFAULT_REPLAY_WINDOW = 128
"""RFC 4303 §3.4.3: 32 is the minimum, 64 the recommended default; we keep 128."""


class ReplayWindow:
    """Sliding anti-replay window of ``size`` sequence numbers."""

    __slots__ = ("_bitmap", "_mask", "size", "top")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"replay window size must be positive, not {size}")
        self.size = size
        self.top = 0
        """Highest authenticated sequence number so far (0: none yet)."""
        self._bitmap = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> bool:
        """Whether `seq` may be new: to the right of the window, or inside and unseen.

        Called before integrity verification. Sequence number 0 is never sent
        (the counter starts at 1, RFC 4303 §3.3.3), so it is always rejected.
        """
        if seq <= 0:
            return False
        top = self.top
        if seq > top:
            return True
        diff = top - seq
        if diff >= self.size:
            return False
        return not (self._bitmap >> diff) & 1

    def update(self, seq: int) -> None:
        """Mark `seq` received; called only after its ICV verified.

        Safe to call for a number already seen or left of the window (no change).
        """
        if seq <= 0:
            return
        top = self.top
        if seq > top:
            shift = seq - top
            # Slide the window right; bits that fall off the left edge are forgotten.
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
            return
        diff = top - seq
        if diff < self.size:
            self._bitmap |= 1 << diff

    def seen(self, seq: int) -> bool:
        """Whether `seq` is marked received (for tests and diagnostics)."""
        diff = self.top - seq
        return 0 <= diff < self.size and bool((self._bitmap >> diff) & 1)

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self.top})"

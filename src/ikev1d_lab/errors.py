"""The root of the lab's exceptions (the demo, the namespace rig, strongSwan control).

The lab is not the product: a namespace that cannot be set up or a charon
that will not start is a problem of the test rig, not an error ikev1d raised,
so these stay apart from ``ikev1d.errors.Ikev1dError``. They are
``RuntimeError``s, as they were before they had a common root.
"""

from __future__ import annotations

__all__ = ["LabError"]


class LabError(RuntimeError):
    """The root of every error the lab raises on purpose."""

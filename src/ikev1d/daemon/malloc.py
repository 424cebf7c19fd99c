"""The C library's allocator, tuned for a daemon whose threads take turns.

glibc gives every thread that allocates while another holds the allocator's lock
an arena of its own (up to eight per core), and memory freed in one arena is not
reused for another's requests. The daemon's threads (the netlink thread of the
userspace data plane, the worker thread that loads a configuration or writes a
large ``status`` answer) run Python, one at a time under the interpreter's lock,
so separate arenas buy them nothing; what they cost was measured: with one more
thread in the daemon, 10,000 tunnels took 146 MiB instead of 122 (9.6 KiB per
tunnel instead of 7.0; ``bench/scale.py``), the same with a single arena as with
no such thread. So the daemon asks for one arena before it starts any thread,
unless ``MALLOC_ARENA_MAX`` in its environment says otherwise.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["limit_arenas"]

log = logging.getLogger("ikev1d.daemon")

M_ARENA_MAX = -8
"""``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc's malloc.h)."""


def limit_arenas(arenas: int = 1) -> bool:
    """Ask glibc's malloc for at most ``arenas`` arenas; False where that is not glibc
    (musl, say) or ``MALLOC_ARENA_MAX`` is set, which then decides."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    log.debug("malloc: at most %d arena(s): %s", arenas, "set" if done else "refused")
    return done

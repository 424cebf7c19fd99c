"""The daemon asks glibc's malloc for one arena (``ikev1d.daemon.malloc``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ikev1d.daemon import malloc

# Counts glibc's arenas after threads have allocated: malloc_info() writes one <heap>
# element per arena.
PROBE = r"""
import ctypes, sys, tempfile, threading
from ikev1d.daemon.malloc import limit_arenas
if sys.argv[1] == "limit":
    print("limited", limit_arenas())
def work():
    keep = [bytearray(4096 + i) for i in range(2000)]
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print("heaps", open(f.name).read().count("<heap nr="))
"""


def _heaps(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=60,
                         env={k: v for k, v in {**os.environ, **env}.items()
                              if k != "MALLOC_ARENA_MAX" or "MALLOC_ARENA_MAX" in env})
    return out.stdout, int(out.stdout.split("heaps")[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr(
    "CS_GNU_LIBC_VERSION") is None, reason="glibc's malloc only")
def test_threads_share_one_arena_once_limited_and_not_before() -> None:
    text, heaps = _heaps("limit")
    assert "limited True" in text
    assert heaps == 1
    _, heaps = _heaps("free")
    assert heaps > 1  # what the limit prevents: an arena per thread
    text, heaps = _heaps("limit", MALLOC_ARENA_MAX="3")
    assert "limited False" in text  # the environment decides


def test_nothing_is_asked_when_the_environment_decides(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert malloc.limit_arenas() is False


def test_the_daemon_limits_the_arenas_before_it_starts(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    from ikev1d.daemon import runtime

    order: list[str] = []

    class Started:
        def __init__(self, *args: object, **kwargs: object) -> None:
            order.append("daemon")

        async def run(self) -> None:
            order.append("run")

    monkeypatch.setattr(runtime, "limit_arenas", lambda: order.append("arenas"))
    monkeypatch.setattr(runtime, "Daemon", Started)
    assert runtime.run_daemon(runtime.DaemonOptions("x.toml", "x.sock")) == 0
    assert order == ["arenas", "daemon", "run"]

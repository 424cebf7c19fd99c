"""Starting the userspace data plane: clear errors, nothing left behind on failure."""

from __future__ import annotations

import threading
import time

import pytest

from ikev1d.dataplane import userspace
from ikev1d.dataplane.base import DataplaneError, create_backend
from ikev1d.dataplane.linux import tun


def _netlink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ikev1d-netlink")]


def _wait_no_netlink_threads() -> bool:
    deadline = time.monotonic() + 2
    while _netlink_threads():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_missing_tun_device_is_a_clear_dataplane_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tun, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(DataplaneError, match=r"/nonexistent/net/tun does not exist"):
        create_backend("userspace", None)
    assert _wait_no_netlink_threads()


def test_refused_tun_device_is_a_clear_dataplane_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(path: str, flags: int) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("ikev1d.dataplane.linux.tun.os.open", refuse)
    with pytest.raises(DataplaneError, match="no permission to open /dev/net/tun"):
        userspace.create_backend(None)
    assert _wait_no_netlink_threads()


def test_raw_socket_failure_closes_the_tun_device(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []

    class FakeTunDevice:
        name, index = "fake0", 99

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def close(self) -> None:
            closed.append("tun")

    def no_raw(family: int = 2) -> None:
        raise tun.TunError(1, "no permission for a raw ESP socket")

    monkeypatch.setattr(tun, "TunDevice", FakeTunDevice)
    monkeypatch.setattr(tun, "RawEspSocket", no_raw)
    with pytest.raises(DataplaneError, match="raw ESP socket"):
        userspace.create_backend(None)
    assert closed == ["tun"]
    assert _wait_no_netlink_threads()

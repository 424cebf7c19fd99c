"""The data plane interface: the "none" backend and the backend factory."""

from __future__ import annotations

import ipaddress
import sys
import types

import pytest

from ikev1d.dataplane.base import (
    DataplaneBackend,
    DataplaneError,
    InstallsInboundFirst,
    NoneBackend,
    create_backend,
)
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished
from ikev1d.status import Counters


def _sa() -> ChildSaEstablished:
    net = (ipaddress.ip_network("10.0.0.0/24"),)
    return ChildSaEstablished("c", "net", 1, 1, 0xC0000001, 0xD0000001, "aes128gcm16",
                              "aes-gcm-16", 16, 16, None, "tunnel", False,
                              ("127.0.0.1", 500), ("127.0.0.2", 500), net, net,
                              b"k" * 20, b"k" * 20)


def test_none_backend_installs_nothing_and_counts_zero() -> None:
    backend = create_backend("none")
    assert isinstance(backend, NoneBackend)
    assert isinstance(backend, DataplaneBackend)
    backend.install(_sa())
    assert backend.counters(0xC0000001, 0xD0000001) == Counters(0, 0, 0, 0, drops=None)
    backend.remove(ChildSaDeleted("c", "net", 1, 1, 0xC0000001, 0xD0000001, "test"))
    backend.remove(ChildSaDeleted("c", "net", 1, 1, 5, 6, "unknown pair is fine"))
    backend.close()
    assert backend.closed


def test_none_backend_takes_an_inbound_half_and_completes_or_drops_it() -> None:
    backend = NoneBackend()
    assert isinstance(backend, InstallsInboundFirst)
    sa = _sa()
    backend.install_inbound(sa)
    assert backend.inbound_only == {(sa.spi_in, sa.spi_out): sa} and backend.installed == {}
    backend.install(sa)
    assert backend.inbound_only == {} and backend.installed == {(sa.spi_in, sa.spi_out): sa}
    backend.remove(ChildSaDeleted("c", "net", 1, 1, sa.spi_in, sa.spi_out, "test"))
    backend.install_inbound(sa)
    backend.remove(ChildSaDeleted("c", "net", 1, 1, sa.spi_in, sa.spi_out, "withdrawn"))
    assert backend.inbound_only == {} and backend.installed == {}


def test_unknown_backend_name() -> None:
    with pytest.raises(DataplaneError, match="unknown data plane 'tap'"):
        create_backend("tap")


def test_missing_or_broken_backend_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ikev1d.dataplane.kernel", None)
    with pytest.raises(DataplaneError, match="data plane 'kernel' is not available"):
        create_backend("kernel")

    module = types.ModuleType("ikev1d.dataplane.userspace")

    def failing(config: object) -> NoneBackend:
        raise OSError(2, "No such file or directory", "/dev/net/tun")

    module.create_backend = failing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ikev1d.dataplane.userspace", module)
    with pytest.raises(DataplaneError, match=r"'userspace' cannot start: .*/dev/net/tun"):
        create_backend("userspace", object())


def test_backend_module_factory_receives_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    module = types.ModuleType("ikev1d.dataplane.kernel")

    def factory(config: object) -> NoneBackend:
        seen.append(config)
        return NoneBackend()

    module.create_backend = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ikev1d.dataplane.kernel", module)
    marker = object()
    assert isinstance(create_backend("kernel", marker), NoneBackend)
    assert seen == [marker]

"""One exception root: every exception class ikev1d defines is an Ikev1dError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import ikev1d
import ikev1d_lab
from ikev1d.errors import Ikev1dError
from ikev1d_lab.errors import LabError


def _modules(package: ModuleType) -> list[ModuleType]:
    names = [package.__name__] + [
        info.name
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
        if not info.name.endswith(".__main__")
    ]
    return [importlib.import_module(name) for name in names]


def _exceptions(package: ModuleType) -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in _modules(package):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_ikev1d_exception_derives_from_ikev1d_error() -> None:
    exceptions = _exceptions(ikev1d)
    assert len(exceptions) > 30  # the walk found the package's modules
    outside = {name for name, cls in exceptions.items() if not issubclass(cls, Ikev1dError)}
    assert not outside, sorted(outside)


def test_builtin_bases_are_kept() -> None:
    # callers catch these as ValueError / OSError too
    exceptions = _exceptions(ikev1d)
    for name in ("ikev1d.proposals.ProposalError", "ikev1d.durations.DurationError",
                 "ikev1d.dataplane.packet.PacketError",
                 "ikev1d.dataplane.esp.UnsupportedEspAlgorithm"):
        assert issubclass(exceptions[name], ValueError), name
    for name in ("ikev1d.dataplane.linux.xfrm.XfrmError", "ikev1d.dataplane.linux.tun.TunError"):
        assert issubclass(exceptions[name], OSError), name


def test_oserror_subclasses_still_carry_errno() -> None:
    from ikev1d.dataplane.linux.xfrm import XfrmError

    err = XfrmError(17, "File exists")
    assert (err.errno, err.strerror) == (17, "File exists")
    with pytest.raises(Ikev1dError):
        raise err


def test_every_lab_exception_derives_from_lab_error() -> None:
    exceptions = _exceptions(ikev1d_lab)
    # Besides errors, the demo has one KeyboardInterrupt of its own (SIGTERM ends it
    # like Ctrl-C): a signal, not an error, and it must not be caught as one.
    interrupts = {name for name, cls in exceptions.items() if issubclass(cls, KeyboardInterrupt)}
    assert interrupts == {"ikev1d_lab.demo._Interrupted"}
    assert {name for name, cls in exceptions.items()
            if not issubclass(cls, LabError) and name not in interrupts} == set()
    assert not any(issubclass(cls, Ikev1dError) for cls in exceptions.values())

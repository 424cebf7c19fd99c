"""scripts/check_imports.py finds what it is there to find: cycles and wrong-way arrows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_imports.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return _load()


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_tree_has_no_cycle_and_no_forbidden_arrow(check: ModuleType) -> None:
    graph = check.import_graph()
    assert "ikev1d.engine.engine" in graph
    assert check.cycles(graph) == []
    assert check.forbidden_arrows(graph) == []


def test_a_cycle_through_a_lazy_import_is_found(
    check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path, {
        "ikev1d/__init__.py": "",
        "ikev1d/wire/__init__.py": "",
        "ikev1d/wire/a.py": "from ikev1d.wire.b import x\n",
        "ikev1d/wire/b.py": "def f():\n    from ikev1d.wire import a\n",
        "ikev1d/wire/c.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ikev1d.wire.a import y\n"
        ),
        "ikev1d_lab/__init__.py": "",
    })
    monkeypatch.setattr(check, "SRC", tmp_path)
    graph = check.import_graph()
    assert check.cycles(graph) == [["ikev1d.wire.a", "ikev1d.wire.b"]]
    # Imports only for type checking never run: no arrow.
    assert graph["ikev1d.wire.c"] == set()


def test_wrong_way_arrows_are_found(
    check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path, {
        "ikev1d/__init__.py": "",
        "ikev1d/cli.py": "",
        "ikev1d/wire/__init__.py": "from ikev1d import cli\n",
        "ikev1d/engine/__init__.py": "",
        "ikev1d/engine/engine.py": "from ..daemon.runtime import Daemon\n",
        "ikev1d/daemon/__init__.py": "",
        "ikev1d/daemon/runtime.py": "import ikev1d_lab.demo\n",
        "ikev1d_lab/__init__.py": "",
        "ikev1d_lab/demo.py": "import ikev1d.engine.engine\n",
    })
    monkeypatch.setattr(check, "SRC", tmp_path)
    problems = check.forbidden_arrows(check.import_graph())
    assert [p.split(" (")[0] for p in problems] == [
        "ikev1d.daemon.runtime -> ikev1d_lab.demo",
        "ikev1d.engine.engine -> ikev1d.daemon.runtime",
        "ikev1d.wire -> ikev1d.cli",
    ]
    assert check.main([]) == 1

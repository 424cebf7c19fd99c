"""Project-wide pytest plumbing: kept light so unit tests start fast.

Everything under tests/interop/ is marked ``interop`` automatically (run only
the pure tests with ``pytest -m "not interop"``); the heavy fixtures live in
tests/interop/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEROP_DIR = Path(__file__).parent / "interop"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEROP_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.interop)

"""A seeded slice of the structure-aware engine fuzzer (tests/fuzzing/engine_fuzz.py);
``make fuzz`` runs a million cases."""

from __future__ import annotations

import os

from tests.fuzzing.engine_fuzz import SCENARIOS, record, run

CASES = int(os.environ.get("IKEV1D_FUZZ_CASES", "20000"))


def test_recorded_exchanges_cover_every_exchange_both_ways() -> None:
    for scenario in SCENARIOS:
        trace = record(scenario)
        # MM 1-6, QM 1-3 each way, DPD both ways, Delete (ESP and ISAKMP).
        assert len(trace) >= 17, scenario.name


def test_fuzz_slice_leaves_nothing_and_raises_nothing() -> None:
    result = run(CASES, seed=20240611)
    assert result.failures == []
    assert result.cases == CASES
    # Every message of Main Mode, Quick Mode and Informational, received by each side.
    labels = {label.split("->")[0] for label in result.targets}
    assert {"MM1", "MM2", "MM3", "MM4", "MM5", "MM6", "QM1", "QM2", "QM3", "INFO1",
            "TX1", "TX2"} <= labels
    assert {label.split("->")[1] for label in result.targets} == {"a", "b"}
    # 100 mutants, a handshake and a shutdown per batch: the log stays small.
    assert result.max_lines_per_batch <= 100


def test_fuzz_slice_under_tracemalloc_does_not_grow() -> None:
    result = run(max(CASES // 10, 500), seed=7, memory=True)
    assert result.failures == []
    assert result.max_growth_bytes < 1_000_000

#!/usr/bin/env python3
"""Run the structure-aware engine fuzzer (tests/fuzzing/engine_fuzz.py).

    scripts/fuzz_engine.py [--cases N] [--seed S] [--no-memory]

Prints progress, then the figures: cases, cases/s, the largest number of log
lines in a batch, memory growth under tracemalloc, cases per target message;
exits 1 if any batch raised, leaked or logged an internal error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzzing.engine_fuzz import Fuzzer, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true",
                        help="skip tracemalloc (about four times faster)")
    args = parser.parse_args()
    step = max(args.cases // 20, 1)
    mark = [step]

    def progress(fuzzer: Fuzzer) -> None:
        if fuzzer.cases >= mark[0]:
            mark[0] += step
            print(f"{fuzzer.cases} cases, {len(fuzzer.failures)} failures", flush=True)

    result = run(args.cases, args.seed, memory=not args.no_memory, progress=progress)
    print(f"cases: {result.cases} in {result.batches} batches, {result.seconds:.1f} s, "
          f"{result.rate:.0f} cases/s")
    print(f"most log lines in a batch: {result.max_lines_per_batch}")
    if not args.no_memory:
        print(f"memory growth after the first batch: {result.max_growth_bytes} bytes")
    for label, count in result.targets.items():
        print(f"  {label}: {count}")
    for failure in result.failures[:50]:
        print(f"FAILURE: {failure}")
    print(f"failures: {len(result.failures)}")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())

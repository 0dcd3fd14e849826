"""`make bench`: every benchmark in one run, so ratios compare figures from the same conditions."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from billing_common.service import run_event_loop

BENCHES = [
    "bench.echo_baseline",
    "bench.grpc_runtime",
    "bench.tracing_cost",
    "bench.quota_check",
    "bench.usage_ledger",
    "bench.gateway_charge",
    "bench.tier_scan",
    "bench.recurring_run",
    "bench.dunning_recovery",
]


def main() -> None:
    for name in BENCHES:
        print(f"\n== {name}")
        run_event_loop(importlib.import_module(name).main())


if __name__ == "__main__":
    main()

"""`python -m demo`: seed the demo company once, bill a quarter on the suite clock, print a summary.

`make run` starts it once the services are SERVING (unless `make run DEMO=0`). It calls the
services as the operator, with a token from the development signing key. Run again, it finds
the company seeded and the quarter billed (the clock is past it) and prints the summary only.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic

from google.protobuf.timestamp_pb2 import Timestamp

from billing.recurring.v1 import recurring_pb2 as rpb
from billing_common import tokens
from demo.company import seed
from demo.quarter import Summary, bill, clock_now, read_back
from demo.stubs import Stubs

# The demo quarter: far enough ahead of wall time that the suite clock can be set to it.
QUARTER_START = date(2031, 1, 1)
QUARTER_DAYS = 90
CUSTOMERS = 300
DEFAULT_ADDRESSES = {
    "quota": "127.0.0.1:50052",
    "recurring": "127.0.0.1:50053",
    "dunning": "127.0.0.1:50054",
    "tier": "127.0.0.1:50055",
}


async def play(stubs: Stubs, customers: int, days: int, start: date) -> Summary:
    """Seed (idempotent), bring the clock to the day before `start` at noon, bill what is left of
    the `days` simulated days, then read the outcome back from the services."""
    eve = datetime.combine(start - timedelta(days=1), time(12), UTC)
    end = eve + timedelta(days=days)
    now = await clock_now(stubs)
    if now < eve:
        stamp = Timestamp()
        stamp.FromDatetime(eve)
        await stubs.recurring.SetClock(rpb.SetClockRequest(now=stamp))
        now = eve
    summary = Summary()
    mark = monotonic()
    company = await seed(stubs, customers, start, now)
    summary.timings.seeding = monotonic() - mark
    await bill(stubs, company, eve, end, summary)
    mark = monotonic()
    await read_back(stubs, company, eve, summary)
    summary.timings.read_back = monotonic() - mark
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--private-key", type=Path, required=True, help="the development signing key (PEM)")
    parser.add_argument("--days", type=int, default=QUARTER_DAYS)
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    for name, address in DEFAULT_ADDRESSES.items():
        parser.add_argument(f"--{name}", default=address, help=f"{name}'s gRPC address")
    args = parser.parse_args()
    key = tokens.SigningKey.from_pem(args.private_key.read_bytes())

    token = tokens.issue(key, "operator")

    async def run() -> Summary:
        stubs = Stubs.connect({name: getattr(args, name) for name in DEFAULT_ADDRESSES}, token)
        try:
            return await play(stubs, args.customers, args.days, QUARTER_START)
        finally:
            await stubs.close()

    print(f"demo: {args.customers} customers, {args.days} days from {QUARTER_START} on the suite clock")
    summary = asyncio.run(run())
    for line in summary.lines():
        print(f"  {line}")


if __name__ == "__main__":
    main()

"""The figures printed after a chaos run: time per fault, charges, failures, events, quota's answers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from billing.common.v1 import common_pb2 as common
from tests.chaos.checks import Observed
from tests.chaos.harness import START_ORDER, ChaosSuite
from tests.chaos.scenarios import SIZE, Scenario
from tests.chaos.workload import UsageLoad


def summary(
    plan: list[Scenario],
    seen: list[Observed],
    charges_by_merchant: dict[str, Counter[str]],
    usage: UsageLoad,
    events: dict[str, tuple[int, int]],
    suite: ChaosSuite,
    errors_logged: dict[str, int],
    timings: dict[str, float],
) -> str:
    lines = [
        f"chaos ({SIZE.name}): {sum(len(s.customers) for s in plan)} customers, "
        f"{sum(timings.values()):.0f} s ("
        + ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in timings.items())
        + ")"
    ]
    failures: Counter[tuple[str, str]] = Counter()
    for observed in seen:
        for invoice in observed.invoices:
            for txn in invoice.transactions:
                if txn.failure_type not in (common.FAILURE_TYPE_UNSPECIFIED, common.FAILURE_TYPE_NONE):
                    kind = common.FailureType.Name(txn.failure_type).removeprefix("FAILURE_TYPE_").lower()
                    failures[observed.customer.card, f"{kind} {txn.decline_code}"] += 1
    for scenario in plan:
        outcomes = charges_by_merchant.get(scenario.merchant, Counter())
        lines.append(
            f"  {scenario.name:42s} {sum(scenario.steps.values()):5.1f} s ("
            + ", ".join(f"{step} {seconds:.1f}" for step, seconds in scenario.steps.items())
            + ")"
            "  sandbox: "
            + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
            + f"  | {scenario.detail}"
        )
    lines.append(
        "  failed charges by card and type: "
        + ", ".join(f"{card}/{kind}: {n}" for (card, kind), n in sorted(failures.items()))
    )
    lines.append(
        "  events (published/written): "
        + ", ".join(f"{service} {published}/{written}" for service, (published, written) in events.items())
    )
    by_phase: dict[str, Counter[str]] = {}
    for (phase, rpc, code), n in usage.answers.items():
        by_phase.setdefault(phase, Counter())[f"{rpc} {code}"] += n
    for phase, answers in by_phase.items():
        lines.append(
            f"  quota answers during {phase}: " + ", ".join(f"{k} {n}" for k, n in sorted(answers.items()))
        )
    lines.append(
        f"  usage: {len(usage.accepted)} events accepted, {len(usage.waiting)} unanswered, "
        f"{len(usage.refused)} refused"
    )
    lines.append(
        "  starts: "
        + ", ".join(f"{name} {service.starts}" for name, service in suite.services.items())
        + "; error log lines: "
        + ", ".join(f"{name} {n}" for name, n in errors_logged.items())
    )
    return "\n".join(lines)


async def event_counts(suite: ChaosSuite) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    async with suite.admin() as conn:
        for service in START_ORDER:
            published, written = await conn.fetchrow(
                f"SELECT count(published_at), count(*) FROM {suite.table(service, 'outbox')}"
            ) or (0, 0)
            counts[service] = (int(published), int(written))
    return counts


def errors_in_logs(log_dir: Path) -> dict[str, int]:
    level = re.compile(rb'"level":\s*"(ERROR|CRITICAL)"')
    return {
        name: sum(1 for line in (log_dir / f"{name}.log").read_bytes().splitlines() if level.search(line))
        for name in START_ORDER
    }

"""The rules the use cases apply, decided by pure functions: usage periods, gateway outages, charge
requests, runs, new subscriptions, retries, credit and how charge answers read."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from billing_common.money import Money
from billing_common.payments import MethodType
from billing_common.subscriptions import ExhaustedAction, Frequency, SubscriptionStatus
from recurring.domain import amendments, ledger
from recurring.domain.events import RunCompleted, SubscriptionCreated
from recurring.domain.invoicing import Invoice, PeriodUsage, Transaction, UsageCharge
from recurring.domain.outages import OutageStep, halts, outage_steps
from recurring.domain.payments import (
    ChargeRequest,
    ChargeResult,
    NoAnswer,
    Outcome,
    PaymentStatus,
    described,
    tally,
)
from recurring.domain.proration import ProrationLine
from recurring.domain.runs import (
    Run,
    RunCounts,
    RunKind,
    RunState,
    WorkItem,
    check_resume,
    check_resumed,
    check_run,
    dry_run_of,
    ending,
    lock_name,
    new_run,
    reopens,
)
from recurring.domain.schedule import local_day, midnight
from recurring.domain.settlement import (
    Books,
    Change,
    ExhaustionPolicy,
    Retrying,
    Rules,
    charge_request,
    check_retry,
    retry,
    void,
    write_off,
)
from recurring.domain.status import InvoiceStatus
from recurring.domain.subscription import Cause, PaymentMethod, PlanInfo, Subscription, created_entry
from recurring.domain.usage import UsagePeriod, periods_to_ask, sort_answers

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 1, 3, 6, tzinfo=UTC)
DUE = date(2026, 3, 1)
USD = "USD"
RULES = Rules(minimum_charge_minor=50, max_failures=3, defer_delay=timedelta(minutes=1), halt_threshold=5)


def usd(minor: int) -> Money:
    return Money(minor, USD)


def subscription(**fields: object) -> Subscription:
    sub = Subscription(
        subscription_id="sub_1",
        account_id="acct_1",
        merchant_id="merch_1",
        status=SubscriptionStatus.ACTIVE,
        plan_code="pro",
        plan_version=1,
        amount=usd(3000),
        frequency=Frequency.MONTHLY,
        start_date=date(2026, 1, 1),
        anchor_day=1,
        payment_method=PaymentMethod(MethodType.CARD, "tok_visa"),
        trial_days=0,
        trial_end=None,
        current_period_start=date(2026, 2, 1),
        current_period_end=DUE,
        next_billing_date=DUE,
        tier_mapped=False,
        cancel_at_period_end=False,
        version=1,
        created_at=NOW - timedelta(days=60),
        updated_at=NOW - timedelta(days=60),
    )
    return dataclasses.replace(sub, **fields)  # type: ignore[arg-type]


def item(item_id: int = 1, sid: str = "sub_1", *, run_id: str = "run_1", gateway: str = "") -> WorkItem:
    return WorkItem(item_id, run_id, sid, DUE, f"{sid}:{DUE}", gateway, "token")


# ------------------------------------------------------------------ days in the billing time zone


def test_the_local_day_is_the_day_in_the_billing_time_zone_not_in_utc() -> None:
    assert local_day(datetime(2026, 2, 28, 23, 30, tzinfo=UTC), BERLIN) == date(2026, 3, 1)
    assert local_day(datetime(2026, 2, 28, 22, 30, tzinfo=UTC), BERLIN) == date(2026, 2, 28)


def test_midnight_is_when_the_day_begins_in_the_billing_time_zone() -> None:
    assert midnight(date(2026, 3, 1), BERLIN) == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert midnight(date(2026, 7, 1), BERLIN) == datetime(2026, 6, 30, 22, tzinfo=UTC)


# ------------------------------------------------------------------ usage billed in arrears


def test_usage_is_asked_for_the_current_period_up_to_the_due_date_from_midnight_to_midnight() -> None:
    asked = periods_to_ask([item()], {"sub_1": subscription()}, set(), BERLIN)

    assert asked == [
        (
            item(),
            UsagePeriod(
                "acct_1", datetime(2026, 1, 31, 23, tzinfo=UTC), datetime(2026, 2, 28, 23, tzinfo=UTC)
            ),
        )
    ]


@pytest.mark.parametrize(
    "changed",
    [
        {"plan_code": ""},  # a custom amount bills no usage
        {"status": SubscriptionStatus.PAUSED},
        {"next_billing_date": date(2026, 4, 1)},  # no longer due on this date
        {"current_period_start": DUE},  # no period behind the due date (the first invoice)
    ],
)
def test_no_usage_is_asked_for_an_occurrence_that_bills_none(changed: dict[str, object]) -> None:
    assert periods_to_ask([item()], {"sub_1": subscription(**changed)}, set(), BERLIN) == []


def test_no_usage_is_asked_for_an_occurrence_invoiced_already_or_a_missing_subscription() -> None:
    assert periods_to_ask([item()], {"sub_1": subscription()}, {f"sub_1:{DUE}"}, BERLIN) == []
    assert periods_to_ask([item()], {}, set(), BERLIN) == []


def test_quota_unavailable_lets_the_item_wait_and_another_error_counts_as_ours() -> None:
    found = PeriodUsage((UsageCharge("api_calls", 10, "0.01", usd(10)),))
    broken = RuntimeError("bad summary")
    asked = [item(1), item(2, "sub_2"), item(3, "sub_3")]

    usages = sort_answers(asked, [found, Unavailable("quota is down"), broken], RULES.defer_delay)

    assert usages.found == {1: found}
    assert usages.waiting == {2: (RULES.defer_delay, "usage unavailable: quota is down")}
    assert usages.failed == {3: broken}


def test_every_asked_item_needs_its_answer() -> None:
    with pytest.raises(ValueError):
        sort_answers([item()], [], RULES.defer_delay)


# ------------------------------------------------------------------ gateway outages in a run


def test_an_unreachable_answer_counts_one_more_and_a_run_of_answers_resets_the_count_once() -> None:
    card, ach = item(1, gateway="sandbox-card"), item(2, gateway="sandbox-ach")
    outcomes = [
        (card, Outcome.PAID),
        (card, Outcome.FAILED),  # same run of answers: no second reset
        (card, Outcome.DEFERRED),
        (ach, Outcome.AWAITING),
        (card, Outcome.PAID),  # after an unreachable one: reset again
        (card, Outcome.DEFERRED),
    ]

    assert outage_steps(outcomes) == [
        OutageStep("run_1", "sandbox-card", reachable=True),
        OutageStep("run_1", "sandbox-card", reachable=False),
        OutageStep("run_1", "sandbox-ach", reachable=True),
        OutageStep("run_1", "sandbox-card", reachable=True),
        OutageStep("run_1", "sandbox-card", reachable=False),
    ]


def test_outages_are_counted_per_run_and_an_answer_without_a_gateway_counts_for_none() -> None:
    outcomes = [
        (item(1, gateway="stripe"), Outcome.PAID),
        (item(2, run_id="run_2", gateway="stripe"), Outcome.PAID),
        (item(3), Outcome.FAILED),  # refused before routing
        (item(4, run_id="run_2", gateway="stripe"), Outcome.DEFERRED),
    ]

    assert outage_steps(outcomes) == [
        OutageStep("run_1", "stripe", reachable=True),
        OutageStep("run_2", "stripe", reachable=True),
        OutageStep("run_2", "stripe", reachable=False),
    ]


def test_a_gateway_halts_at_the_threshold_of_unreachable_answers_in_a_row() -> None:
    assert not halts(4, RULES)
    assert halts(5, RULES)
    assert halts(6, RULES)


# ------------------------------------------------------------------ charging


def attempt(number: int = 1, **fields: object) -> Transaction:
    found = Transaction(
        transaction_id=f"txn_{number}",
        invoice_id="inv_1",
        attempt=number,
        idempotency_key=f"inv_1:{number}",
        retry_key=None,
        amount=usd(2500),
        created_at=NOW,
    )
    return dataclasses.replace(found, **fields)  # type: ignore[arg-type]


def test_a_charge_asks_for_the_attempts_amount_under_its_key_with_the_subscriptions_method() -> None:
    sub = subscription(merchant_id="m-stripe", payment_method=PaymentMethod(MethodType.ACH, "tok_ach"))

    assert charge_request(attempt(2), sub) == ChargeRequest(
        merchant_id="m-stripe",
        method_type=MethodType.ACH,
        token="tok_ach",
        amount=usd(2500),
        idempotency_key="inv_1:2",
        invoice_id="inv_1",
    )


# ------------------------------------------------------------------ runs


def test_one_lock_per_date_and_kind_guards_the_creation_of_a_run() -> None:
    assert lock_name(RunKind.DAILY, date(2026, 11, 21)) == "daily:lock:2026-11-21"
    assert lock_name(RunKind.MONTHLY, date(2026, 11, 21)) != lock_name(RunKind.DAILY, date(2026, 11, 21))


def test_a_run_is_asked_for_by_date_and_kind() -> None:
    assert check_run(DUE, RunKind.DAILY) == (DUE, RunKind.DAILY)
    with pytest.raises(InvalidArgument) as no_date:
        check_run(None, RunKind.DAILY)
    assert fields_of(no_date) == ["billing_date"]
    with pytest.raises(InvalidArgument) as no_kind:
        check_run(DUE, None)
    assert fields_of(no_kind) == ["kind"]


def test_a_resume_names_a_gateway_and_must_resume_its_halt_or_parked_items() -> None:
    with pytest.raises(InvalidArgument) as no_gateway:
        check_resume("")
    assert fields_of(no_gateway) == ["gateway"]
    check_resume("stripe")
    check_resumed("run_1", "stripe", resumed=True, requeued=0)
    check_resumed("run_1", "stripe", resumed=False, requeued=2)
    with pytest.raises(
        FailedPrecondition, match="gateway stripe is neither halted nor has parked items in run run_1"
    ):
        check_resumed("run_1", "stripe", resumed=False, requeued=0)


def test_a_new_run_is_a_real_run_running_from_now() -> None:
    assert new_run("run_1", DUE, RunKind.MONTHLY, NOW) == Run(
        "run_1", DUE, RunKind.MONTHLY, RunState.RUNNING, False, NOW
    )


def test_a_dry_run_is_finished_when_counted_with_what_it_would_bill_pending() -> None:
    dry = dry_run_of("dry_1", DUE, RunKind.DAILY, billable=7, skipped=2, now=NOW)

    assert (dry.state, dry.dry_run, dry.finished_at) == (RunState.DRY_RUN, True, NOW)
    assert dry.counts == RunCounts(due=9, skipped=2, pending=7)


@pytest.mark.parametrize(
    ("state", "queued", "expected"),
    [
        (RunState.COMPLETED, 3, True),
        (RunState.COMPLETED, 0, False),
        (RunState.RUNNING, 3, False),
        (RunState.HALTED, 3, False),
    ],
)
def test_only_a_completed_run_given_newly_due_items_runs_again(
    state: RunState, queued: int, expected: bool
) -> None:
    run = dataclasses.replace(new_run("run_1", DUE, RunKind.MONTHLY, NOW), state=state)

    assert reopens(run, queued) is expected


def test_a_run_with_nothing_open_completes_now_with_its_counts_unless_a_gateway_is_halted() -> None:
    running = new_run("run_1", DUE, RunKind.DAILY, NOW)
    counts = RunCounts(due=3, charged=2, parked=1)
    later = NOW + timedelta(hours=2)

    assert ending(running, 0, counts, later) == (
        completed := dataclasses.replace(running, state=RunState.COMPLETED, finished_at=later, counts=counts),
        [RunCompleted(completed)],
    )
    halted = dataclasses.replace(running, halted_gateways=("stripe",))
    assert ending(halted, 0, counts, later) == (dataclasses.replace(halted, state=RunState.HALTED), [])


@pytest.mark.parametrize(("state", "open_items"), [(RunState.RUNNING, 1), (RunState.COMPLETED, 0)])
def test_a_run_with_open_items_or_not_running_does_not_end(state: RunState, open_items: int) -> None:
    run = dataclasses.replace(new_run("run_1", DUE, RunKind.DAILY, NOW), state=state)

    assert ending(run, open_items, RunCounts(), NOW) is None


def test_an_amendment_writes_only_the_fields_that_changed_with_its_prorations_and_events() -> None:
    sub = subscription()
    assert amendments.written(sub, amendments.Amendment(sub), Cause("rpc"), NOW) == Change()

    raised = dataclasses.replace(sub, amount=usd(4000))
    line = ProrationLine("Remaining time at the new price", usd(500))
    amendment = amendments.Amendment(raised, [line], [SubscriptionCreated(raised)])
    change = amendments.written(sub, amendment, Cause("rpc", reason="upgrade"), NOW)

    assert change.subscriptions == {"sub_1": raised}
    assert [(entry.reason, list(entry.changes)) for entry in change.history] == [("upgrade", ["amount"])]
    assert change.new_prorations == {"sub_1": [line]}
    assert [announced.event for announced in change.events] == [SubscriptionCreated(raised)]


# ------------------------------------------------------------------ tier changes


def test_only_the_billed_accounts_own_tier_moves_its_plans() -> None:
    assert amendments.tier_moving_plans("acct_1", "") == "acct_1"
    assert amendments.tier_moving_plans("acct_1", "acct_1") == "acct_1"
    assert amendments.tier_moving_plans("db_7", "acct_1") is None


# ------------------------------------------------------------------ new subscriptions

CARD = PaymentMethod(MethodType.CARD, "tok_visa")
TRIAL_PLAN = PlanInfo("pro", 3, "Pro", usd(6000), Frequency.MONTHLY, trial_days=14)


def command(plan_code: str = "pro", **fields: object) -> amendments.CreateCommand:
    cmd = amendments.CreateCommand("acct_1", "merch_1", plan_code, None, None, None, 0, CARD, False)
    return dataclasses.replace(cmd, **fields)  # type: ignore[arg-type]


def test_a_plan_subscription_snapshots_the_plan_and_starts_with_its_trial() -> None:
    created = amendments.create(command(), TRIAL_PLAN, "sub_1", DUE, NOW)
    sub = created.subscription

    assert (sub.subscription_id, sub.amount, sub.plan_version) == ("sub_1", usd(6000), 3)
    assert (sub.status, sub.trial_end, sub.next_billing_date) == (
        SubscriptionStatus.TRIALING,
        date(2026, 3, 15),
        date(2026, 4, 1),
    )
    assert created.events == [SubscriptionCreated(sub)]


def test_a_custom_subscription_is_priced_by_its_amount_from_its_start_date() -> None:
    cmd = command("", custom_amount=usd(1200), frequency=Frequency.WEEKLY, start_date=date(2026, 3, 4))

    sub = amendments.create(cmd, None, "sub_1", DUE, NOW).subscription

    assert (sub.amount, sub.frequency, sub.status) == (usd(1200), Frequency.WEEKLY, SubscriptionStatus.ACTIVE)
    assert (sub.start_date, sub.next_billing_date, sub.plan_version) == (
        date(2026, 3, 4),
        date(2026, 3, 4),
        0,
    )


def test_a_plan_subscription_may_not_name_another_frequency_than_its_plan() -> None:
    with pytest.raises(InvalidArgument):
        amendments.create(command(frequency=Frequency.WEEKLY), TRIAL_PLAN, "sub_1", DUE, NOW)


def test_a_new_subscriptions_history_records_every_field_from_nothing() -> None:
    sub = subscription()

    entry = created_entry(sub, Cause("operator", "evt_1", "ignored"), NOW)

    assert (entry.subscription_id, entry.actor, entry.cause_event_id, entry.reason) == (
        "sub_1",
        "operator",
        "evt_1",
        "created",
    )
    assert entry.changes["amount"] == {"previous": None, "new": {"amount_minor": 3000, "currency": USD}}
    assert entry.changes["status"] == {"previous": None, "new": "active"}
    assert {"version", "created_at", "updated_at"}.isdisjoint(entry.changes)
    assert len(entry.changes) == len(dataclasses.fields(Subscription)) - 3


# ------------------------------------------------------------------ how charge answers read

DECLINED = ChargeResult("pay_1", PaymentStatus.DECLINED, "stripe", decline_code="insufficient_funds")
SILENT = NoAnswer("UNAVAILABLE", "connection refused", ours=False)
WAIT = NoAnswer("RESOURCE_EXHAUSTED", "rate limit taken", ours=False, retry_after=timedelta(seconds=1))


def test_an_answer_reads_as_its_outcome_gateway_and_decline_code() -> None:
    assert described(DECLINED) == {
        "outcome": "failed",
        "gateway": "stripe",
        "decline_code": "insufficient_funds",
    }
    paid = ChargeResult("pay_2", PaymentStatus.SUCCEEDED, "sandbox-card")
    assert described(paid) == {"outcome": "paid", "gateway": "sandbox-card", "decline_code": ""}


def test_a_charge_without_an_answer_reads_as_no_answer_with_the_calls_status_code() -> None:
    assert described(SILENT) == {"outcome": "no_answer", "gateway": "", "decline_code": "UNAVAILABLE"}


def test_a_batch_tallies_recorded_outcomes_back_pressure_and_no_answers() -> None:
    counts = tally([Outcome.PAID, Outcome.PAID, Outcome.FAILED], [DECLINED, SILENT, WAIT, WAIT])

    assert counts == {"paid": 2, "failed": 1, "no_answer": 1, "back_pressure": 2}
    assert tally([], [DECLINED]) == {}


def fields_of(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [violation.field for violation in error.value.violations]


# ------------------------------------------------------------------ dunning's retries


def invoice(status: InvoiceStatus = InvoiceStatus.PAYMENT_FAILED) -> Invoice:
    return Invoice(
        invoice_id="inv_1",
        subscription_id="sub_1",
        account_id="acct_1",
        merchant_id="merch_1",
        occurrence_key=f"sub_1:{DUE}",
        status=status,
        billing_date=DUE,
        period_start=DUE,
        period_end=date(2026, 4, 1),
        total=usd(2500),
        credit_applied=usd(0),
        amount_due=usd(2500),
        created_at=NOW,
    )


def new_ids(prefix: str) -> str:
    return f"{prefix}_new"


def test_a_retry_names_its_invoice_and_key() -> None:
    check_retry("inv_1", "case_1:2")
    with pytest.raises(InvalidArgument) as missing:
        check_retry("", "")
    assert fields_of(missing) == ["invoice_id", "idempotency_key"]


def test_a_retry_key_resends_or_replays_its_earlier_attempt_and_is_refused_for_another_invoice() -> None:
    unanswered = attempt(2, retry_key="case_1:2")
    declined = attempt(2, retry_key="case_1:2", status=PaymentStatus.DECLINED, payment_id="pay_1")

    assert retry(unanswered, invoice(), [], "case_1:2", NOW, new_ids) == Retrying(unanswered)
    assert retry(declined, invoice(), [], "case_1:2", NOW, new_ids) == Retrying(declined, replayed=True)
    other = dataclasses.replace(invoice(), invoice_id="inv_2")
    with pytest.raises(FailedPrecondition, match="case_1:2"):
        retry(unanswered, other, [], "case_1:2", NOW, new_ids)


def test_a_retry_charges_the_failed_invoice_again_as_its_next_attempt_under_the_key() -> None:
    declined = attempt(1, status=PaymentStatus.DECLINED, payment_id="pay_1")

    retrying = retry(None, invoice(), [declined], "case_1:2", NOW, lambda prefix: f"{prefix}_9")

    new = retrying.attempt
    assert (new.transaction_id, new.attempt, new.idempotency_key, new.retry_key) == (
        "txn_9",
        2,
        "inv_1:2",
        "case_1:2",
    )
    assert (new.amount, new.answered) == (usd(2500), False)
    assert (retrying.replayed, retrying.change.attempts) == (False, [new])


@pytest.mark.parametrize(
    ("status", "last"),
    [
        (InvoiceStatus.PAID, None),
        (InvoiceStatus.VOID, None),
        (InvoiceStatus.PAYMENT_FAILED, attempt(1)),  # still unanswered
        (InvoiceStatus.PAYMENT_FAILED, attempt(1, status=PaymentStatus.PENDING, payment_id="pay_1")),
    ],
)
def test_a_retry_is_refused_while_the_invoice_cannot_be_charged(
    status: InvoiceStatus, last: Transaction | None
) -> None:
    with pytest.raises(FailedPrecondition):
        retry(None, invoice(status), [last] if last else [], "case_1:2", NOW, new_ids)


# ------------------------------------------------------------------ account credit


def test_credit_is_granted_in_a_positive_amount_to_a_named_account_under_a_key() -> None:
    assert ledger.check_credit("acct_1", usd(500), "key_1") == usd(500)
    for amount in (None, usd(0), usd(-5)):
        with pytest.raises(InvalidArgument) as refused:
            ledger.check_credit("acct_1", amount, "key_1")
        assert fields_of(refused) == ["amount"]
    with pytest.raises(InvalidArgument) as missing:
        ledger.check_credit("", usd(500), "")
    assert fields_of(missing) == ["account_id", "idempotency_key"]


def test_a_balance_is_read_for_a_named_account_in_a_currency() -> None:
    ledger.check_account("acct_1", USD)
    with pytest.raises(InvalidArgument) as missing:
        ledger.check_account("", "")
    assert fields_of(missing) == ["account_id", "currency"]


def test_ledger_entries_are_listed_for_a_named_account_only() -> None:
    ledger.check_entries_of("acct_1")
    with pytest.raises(InvalidArgument) as missing:
        ledger.check_entries_of("")
    assert fields_of(missing) == ["account_id"]


# ------------------------------------------------------------------ dunning exhausted


@pytest.mark.parametrize(
    ("default", "merchant", "action", "cancels"),
    [
        (ExhaustedAction.SUSPEND, "merch_1", None, False),
        (ExhaustedAction.CANCEL, "merch_1", None, True),
        (ExhaustedAction.SUSPEND, "merch_cancels", None, True),
        # The event's action wins over the policy, either way.
        (ExhaustedAction.CANCEL, "merch_cancels", ExhaustedAction.SUSPEND, False),
        (ExhaustedAction.SUSPEND, "merch_1", ExhaustedAction.CANCEL, True),
    ],
)
def test_dunning_exhausted_cancels_as_the_event_says_else_as_the_merchants_policy(
    default: ExhaustedAction, merchant: str, action: ExhaustedAction | None, cancels: bool
) -> None:
    policy = ExhaustionPolicy(default, frozenset({"merch_cancels"}))

    assert policy.cancels(merchant, action) is cancels


def test_dunning_exhausted_for_an_invoice_recurring_does_not_hold_changes_nothing() -> None:
    policy = ExhaustionPolicy(ExhaustedAction.SUSPEND, frozenset())

    assert write_off("inv_9", Books({}, {}, {}), policy, None, Cause("dunning"), NOW) == Change()


def test_voiding_an_invoice_that_does_not_exist_is_not_found() -> None:
    with pytest.raises(NotFound, match="inv_9"):
        void("inv_9", Books({}, {}, {}), "goodwill", NOW)

"""The console's pure rules: diffs of a subscription's history, tier and dunning timelines, figures,
cache tags, people and sessions."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.domain import billing, dunning, history, invalidation, tiers
from console.domain.people import Person, Role, hash_password, parse_accounts, password_matches
from console.domain.sessions import SessionRules, new_session

T0 = datetime(2031, 5, 5, 3, 1, tzinfo=UTC)


def change(field: str, before: object, after: object) -> dict[str, str]:
    return {"field": field, "previous_json": json.dumps(before), "new_json": json.dumps(after)}


# ------------------------------------------------------------------------------ history


def test_a_plan_change_reads_as_one_line_per_changed_value_not_two_blobs() -> None:
    entry = {
        "changes": [
            change("plan_code", "lite", "pro"),
            change(
                "amount", {"amount_minor": 1000, "currency": "USD"}, {"amount_minor": 4900, "currency": "USD"}
            ),
        ],
        "actor": "recurring:tier.changed",
        "reason": "tier changed",
        "changed_at": T0,
    }
    diff = history.entry_diff(entry)
    assert diff.lines == (
        history.DiffLine("plan_code", "lite", "pro"),
        history.DiffLine("amount.amount_minor", "1000", "4900"),
    )
    assert diff.actor == "recurring:tier.changed"


def test_a_field_that_appears_or_goes_shows_an_empty_side() -> None:
    entry = {"changes": [{"field": "cancel_at", "previous_json": "", "new_json": '"2031-06-01"'}]}
    assert history.entry_diff(entry).lines == (history.DiffLine("cancel_at", "", "2031-06-01"),)
    nested = history.value_diff("method", {"type": "CARD", "token": "a"}, {"type": "CARD"})
    assert nested == [history.DiffLine("method.token", "a", "")]


def test_the_history_reads_newest_first() -> None:
    entries = [
        {"changes": [change("status", "a", "b")], "changed_at": T0 + timedelta(days=d)} for d in (0, 2, 1)
    ]
    assert [d.changed_at for d in history.history_diffs(entries)] == [
        T0 + timedelta(days=2),
        T0 + timedelta(days=1),
        T0,
    ]


@given(
    st.recursive(
        st.integers() | st.text(max_size=5),
        lambda inner: st.dictionaries(st.text(max_size=3), inner, max_size=3),
    )
)
def test_a_value_compared_with_itself_has_no_diff(value: object) -> None:
    assert history.value_diff("f", value, value) == []


# ------------------------------------------------------------------------------ tiers


def tier_change(
    account: str, before: str, after: str, at: datetime, rule: str = "sso-pro", **extra: object
) -> dict[str, object]:
    return {
        "change_id": f"{account}-{at.isoformat()}",
        "account_id": account,
        "previous_tier": before,
        "new_tier": after,
        "rule_id": rule,
        "rule_set_version": "v3",
        "evidence_before": [{"name": "sso_active", "value": "false"}, {"name": "api_clients", "value": "0"}],
        "evidence_after": [{"name": "sso_active", "value": "true"}, {"name": "api_clients", "value": "0"}],
        "scan_id": "scan-1",
        "cause": "",
        "effective_at": at,
        **extra,
    }


def test_when_and_why_an_account_became_pro_names_the_rule_and_what_changed_first() -> None:
    steps = tiers.timeline(
        [
            tier_change("acme", "LITE", "PRO", T0 + timedelta(days=10)),
            tier_change("acme", "UNSPECIFIED", "LITE", T0, rule="default-lite"),
        ]
    )
    assert [s.new_tier for s in steps] == ["LITE", "PRO"]
    assert steps[0].previous_tier == ""
    became = tiers.when_became(steps, "PRO")
    assert became is not None and became.effective_at == T0 + timedelta(days=10)
    assert became.rule_id == "sso-pro" and became.trigger == "scan scan-1"
    assert became.evidence[0] == tiers.EvidenceChange("sso_active", "false", "true")
    assert "became Pro (was Lite) by rule sso-pro" in became.sentence


def test_an_account_that_left_pro_again_has_no_answer_for_pro() -> None:
    steps = tiers.timeline(
        [tier_change("acme", "LITE", "PRO", T0), tier_change("acme", "PRO", "LITE", T0 + timedelta(days=1))]
    )
    assert tiers.when_became(steps, "PRO") is None
    assert tiers.when_became([], "PRO") is None


def test_the_review_list_filters_by_date_rule_and_tier_newest_first() -> None:
    changes = [
        tier_change("a", "LITE", "PRO", T0),
        tier_change("b", "LITE", "PLUS", T0 + timedelta(days=1), rule="api-plus"),
        tier_change("c", "LITE", "PRO", T0 + timedelta(days=2)),
    ]
    everything = tiers.for_review(changes, tiers.ReviewFilter())
    assert [s.account_id for s in everything] == ["c", "b", "a"]
    pro_after_start = tiers.ReviewFilter(since=date(2031, 5, 6), tier="PRO")
    assert [s.account_id for s in tiers.for_review(changes, pro_after_start)] == ["c"]
    assert [s.account_id for s in tiers.for_review(changes, tiers.ReviewFilter(rule_id="api-plus"))] == ["b"]
    until_first = tiers.ReviewFilter(until=date(2031, 5, 5))
    assert [s.account_id for s in tiers.for_review(changes, until_first)] == ["a"]


def test_each_account_counts_once_in_the_tier_of_its_latest_change() -> None:
    changes = [
        tier_change("a", "LITE", "PRO", T0),
        tier_change("a", "PRO", "PLUS", T0 + timedelta(days=1)),
        tier_change("b", "", "PRO", T0),
    ]
    assert tiers.distribution(changes) == {"LITE": 0, "PLUS": 1, "PRO": 1}


# ------------------------------------------------------------------------------ dunning


def test_a_case_timeline_puts_attempts_with_their_estimate_between_transitions() -> None:
    case = {
        "history": [
            {"from_state": "OPEN", "to_state": "RETRY_SCHEDULED", "cause": "payment_failed", "at": T0},
            {
                "from_state": "RETRY_SCHEDULED",
                "to_state": "HELD",
                "cause": "operator_pause: by operator:alice",
                "at": T0 + timedelta(hours=5),
            },
        ],
        "attempts": [
            {
                "number": 1,
                "scheduled_at": T0 + timedelta(days=1),
                "attempted_at": T0 + timedelta(hours=2),
                "estimated_success_bp": 4250,
                "sample_size": 120,
                "reason": "best hour after payday",
                "outcome": "FAILED",
                "decline_code": "insufficient_funds",
            }
        ],
    }
    entries = dunning.timeline(case)
    assert [e.kind for e in entries] == ["transition", "attempt", "transition"]
    attempt = entries[1]
    assert attempt.title == "Attempt 1: failed (insufficient_funds)"
    assert (attempt.estimated_success_bp, attempt.sample_size, attempt.detail) == (
        4250,
        120,
        "best hour after payday",
    )
    assert entries[2].detail.endswith("by operator:alice")


def test_an_attempt_sits_between_the_transitions_that_started_and_ended_it_at_one_instant() -> None:
    def moved(from_state: str, to_state: str) -> dict[str, object]:
        return {"from_state": from_state, "to_state": to_state, "cause": "", "at": T0}

    case = {
        "history": [
            moved("OPEN", "RETRY_SCHEDULED"),
            moved("RETRY_SCHEDULED", "ATTEMPTING"),
            moved("ATTEMPTING", "EXHAUSTED"),
        ],
        "attempts": [{"number": 1, "scheduled_at": T0, "attempted_at": T0, "outcome": "FAILED"}],
    }
    assert [e.title for e in dunning.timeline(case)] == [
        "open → retry_scheduled",
        "retry_scheduled → attempting",
        "Attempt 1: failed",
        "attempting → exhausted",
    ]


def test_recovery_rate_counts_only_cases_that_ended_and_by_day_opened() -> None:
    cases = [
        {"state": "RECOVERED", "opened_at": T0},
        {"state": "EXHAUSTED", "opened_at": T0},
        {"state": "RECOVERED", "opened_at": T0 + timedelta(days=1)},
        {"state": "RETRY_SCHEDULED", "opened_at": T0 + timedelta(days=2)},
    ]
    assert dunning.recovery_rate(cases) == pytest.approx(2 / 3)
    assert dunning.recovery_rate(cases[3:]) is None
    assert dunning.recovery_by_day(cases) == [(date(2031, 5, 5), 0.5), (date(2031, 5, 6), 1.0)]
    assert dunning.backlog(cases)["RETRY_SCHEDULED"] == 1


# ------------------------------------------------------------------------------ billing


def test_revenue_per_day_sums_billed_invoices_per_currency_and_leaves_void_ones_out() -> None:
    day = date(2031, 5, 5)
    invoices = [
        {"billing_date": day, "status": "PAID", "total": {"amount_minor": 2500, "currency": "USD"}},
        {"billing_date": day, "status": "PAYMENT_FAILED", "total": {"amount_minor": 1000, "currency": "USD"}},
        {"billing_date": day, "status": "VOID", "total": {"amount_minor": 9999, "currency": "USD"}},
        {"billing_date": day, "status": "PAID", "total": {"amount_minor": 700, "currency": "EUR"}},
    ]
    assert billing.revenue_by_day(invoices) == {"EUR": [(day, 700)], "USD": [(day, 3500)]}


def test_a_runs_summary_reads_progress_counts_and_halted_gateways() -> None:
    run = {
        "run_id": "r1",
        "billing_date": date(2031, 5, 5),
        "kind": "DAILY",
        "state": "HALTED",
        "progress_per_mille": 625,
        "counts": {"due": 8, "charged": 4, "failed": 1, "parked": 1},
        "halted_gateways": ["sandbox-card"],
        "duration": timedelta(seconds=12),
    }
    summary = billing.run_summary(run)
    assert (summary.progress_percent, summary.failed, summary.parked) == (62.5, 1, 1)
    assert summary.halted_gateways == ("sandbox-card",)
    assert billing.run_durations([summary]) == [("2031-05-05 daily", 12.0)]


def test_a_run_that_took_no_time_on_the_suite_clock_is_charted_at_zero_and_an_unfinished_one_not() -> None:
    def run(run_id: str, duration: timedelta | None) -> billing.RunSummary:
        return billing.run_summary(
            {"run_id": run_id, "billing_date": date(2031, 3, 31), "kind": "DAILY", "duration": duration}
        )

    assert billing.run_durations([run("r1", timedelta(0)), run("r2", None)]) == [("2031-03-31 daily", 0.0)]


def test_a_runs_working_time_is_its_duration_when_recurring_reports_one() -> None:
    run = {"run_id": "r1", "duration": timedelta(0), "working_time": timedelta(seconds=1.5)}
    assert billing.run_summary(run).duration == timedelta(seconds=1.5)
    assert billing.run_summary({"run_id": "r2", "duration": timedelta(0)}).duration == timedelta(0)


MONTH = (T0, T0 + timedelta(days=31))
DAY = (T0, T0 + timedelta(days=1))


def test_usage_is_shown_against_each_entitlement() -> None:
    entitlements = [
        {
            "entitlement": {"key": "api.calls", "limit": 1000},
            "sources": [{"kind": "plan", "reference": "pro@1"}],
            "period_start": MONTH[0],
            "period_end": MONTH[1],
        },
        {"entitlement": {"key": "seats", "unlimited": True}, "sources": []},
    ]
    rows = billing.usage_against_entitlements(
        entitlements, {MONTH: [{"key": "api.calls", "quantity": 250}, {"key": "x", "quantity": 3}]}
    )
    assert [(r.key, r.used, r.limit, r.percent, r.period) for r in rows] == [
        ("api.calls", 250, 1000, 25.0, MONTH),
        ("seats", None, None, None, None),
        ("x", 3, None, None, MONTH),
    ]
    assert rows[0].sources == "plan pro@1"


def test_a_daily_limit_is_measured_against_todays_usage_not_the_billing_periods() -> None:
    entitlements = [
        {
            "entitlement": {"key": "api.calls", "unlimited": True},
            "period_start": MONTH[0],
            "period_end": MONTH[1],
        },
        {"entitlement": {"key": "exports.daily", "limit": 5}, "period_start": DAY[0], "period_end": DAY[1]},
    ]
    assert billing.usage_periods(entitlements) == [MONTH, DAY]
    rows = billing.usage_against_entitlements(
        entitlements,
        {
            MONTH: [{"key": "api.calls", "quantity": 19975}, {"key": "exports.daily", "quantity": 65}],
            DAY: [{"key": "exports.daily", "quantity": 2}],
        },
    )
    assert [(r.key, r.used, r.percent, r.period) for r in rows] == [
        ("api.calls", 19975, None, MONTH),
        ("exports.daily", 2, 40.0, DAY),
    ]
    nothing_today = billing.usage_against_entitlements(entitlements, {MONTH: [], DAY: []})
    assert [(r.used, r.percent) for r in nothing_today] == [(0, None), (0, 0.0)]


def test_usage_periods_are_each_entitlements_own_and_skip_empty_ones() -> None:
    assert billing.usage_periods(
        [
            {"period_start": None},
            {"period_start": T0, "period_end": T0},
            {"period_start": MONTH[0], "period_end": MONTH[1]},
            {"period_start": MONTH[0], "period_end": MONTH[1]},
        ]
    ) == [MONTH]


# ------------------------------------------------------------------------------ cache tags


def test_an_event_stales_exactly_the_reads_that_name_what_it_names() -> None:
    account_page = invalidation.read_tags("ListInvoices", {"account_id": "acme", "page_size": 100})
    other_account = invalidation.read_tags("GetAccountBalance", {"account_id": "globex"})
    case_page = invalidation.read_tags("GetCase", {"case_id": "c1"})
    paid = invalidation.event_tags(
        "invoice.paid", invalidation.ids_in({"facts": {"invoice_id": "i1", "account_id": "acme"}})
    )
    assert account_page & paid and not other_account & paid and not case_page & paid
    held = invalidation.event_tags("dunning.held", invalidation.ids_in({"case": {"case_id": "c1"}}))
    assert case_page & held
    assert invalidation.read_tags("ListRuns", {}) & invalidation.event_tags("run.completed", {})


# ------------------------------------------------------------------------------ people and sessions


def test_a_password_hash_matches_its_password_only() -> None:
    stored = hash_password("correct horse battery", salt=b"0123456789abcdef")
    assert password_matches(stored, "correct horse battery")
    assert not password_matches(stored, "correct horse batterx")
    assert not password_matches("plain-text", "plain-text")


def test_the_users_file_names_each_person_once_with_a_known_role() -> None:
    stored = hash_password("x" * 12)
    accounts = parse_accounts(f"# people\nalice operator {stored}\nbob finance {stored}  # reads\n")
    assert accounts["alice"].person == Person("alice", Role.OPERATOR)
    assert accounts["bob"].person.caller == "finance:bob" and not accounts["bob"].person.may_act
    for bad in (
        f"eve admin {stored}",
        "eve operator",
        f"a operator {stored}\na finance {stored}",
        f"e:v operator {stored}",
    ):
        with pytest.raises(ValueError, match="line"):
            parse_accounts(bad)


def test_a_session_expires_when_idle_and_at_the_latest_after_its_longest_life() -> None:
    rules = SessionRules(idle=timedelta(minutes=30), longest=timedelta(hours=8))
    session = new_session(T0, Person("alice", Role.OPERATOR))
    assert not session.expired(T0 + timedelta(minutes=29), rules)
    assert session.expired(T0 + timedelta(minutes=30), rules)
    busy = session
    for minutes in range(20, 8 * 60, 20):
        busy = busy.seen(T0 + timedelta(minutes=minutes))
    assert busy.expired(T0 + timedelta(hours=8), rules)


def test_forms_are_accepted_with_the_sessions_own_token_only() -> None:
    session = new_session(T0)
    other = new_session(T0)
    assert session.accepts(session.csrf_token)
    assert not session.accepts(other.csrf_token) and not session.accepts("")


def test_a_runs_parked_items_come_first_and_the_rest_keep_the_order_they_were_queued() -> None:
    items = [
        {"subscription_id": "s1", "gateway": "sandbox-card", "status": "CHARGED", "reason": "paid"},
        {"subscription_id": "s2", "gateway": "sandbox-card", "status": "PARKED", "reason": "CurrencyError"},
        {"subscription_id": "s3", "gateway": "sandbox-ach", "status": "FAILED", "reason": "declined"},
        {"subscription_id": "s4", "gateway": "sandbox-card", "status": "PARKED", "reason": "KeyError"},
    ]
    rows = billing.run_items(items)
    assert [(r.subscription_id, r.parked) for r in rows] == [
        ("s2", True),
        ("s4", True),
        ("s1", False),
        ("s3", False),
    ]
    assert (rows[0].gateway, rows[0].outcome, rows[0].reason, rows[0].invoice_id) == (
        "sandbox-card",
        "PARKED",
        "CurrencyError",
        "",
    )

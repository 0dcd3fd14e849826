"""The operators' RPCs: queries, pause/resume, retry now, reset, policies and their validation."""

from datetime import timedelta

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.dunning.v1 import dunning_pb2 as pb
from billing.dunning.v1 import dunning_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.paging import NOT_ISSUED
from billing_devtools.testing.rpc import every_page, field_violations

from .conftest import START, Dunning, fixed_policy, payment_failed


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_pause_resume_and_retry_now(dunning: Dunning) -> None:
    await dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=fixed_policy("merchant-1", 1, 3, 5, 7)))
    await dunning.env.publish(payment_failed("inv-1"))
    case = await dunning.case_in_state("inv-1", pb.CASE_STATE_RETRY_SCHEDULED)
    assert case.attempts[0].scheduled_at.ToDatetime().replace(tzinfo=START.tzinfo) == START + timedelta(
        days=1
    )

    paused = (
        await dunning.operator.PauseCase(pb.PauseCaseRequest(case_id=case.case_id, reason="call"))
    ).dunning_case
    assert paused.state == pb.CASE_STATE_HELD
    assert paused.attempts[0].outcome == pb.ATTEMPT_OUTCOME_CANCELLED
    assert (
        paused.history[-1].cause == "operator_pause: call (by operator)"
    )  # who asked, as their token names them
    held = await dunning.events.wait_for("dunning.held")
    assert held[0].reason == "call"

    dunning.clock.advance(timedelta(days=2))
    resumed = (await dunning.operator.ResumeCase(pb.ResumeCaseRequest(case_id=case.case_id))).dunning_case
    assert resumed.state == pb.CASE_STATE_RETRY_SCHEDULED
    assert [a.number for a in resumed.attempts] == [1, 2]
    # Day 1 of the schedule has passed while it was held: the attempt is due now.
    assert resumed.next_attempt_at.ToDatetime().replace(tzinfo=START.tzinfo) == dunning.clock.now()

    error = await rpc_error(dunning.operator.ResumeCase(pb.ResumeCaseRequest(case_id=case.case_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    dunning.clock.advance(timedelta(hours=1))
    now_case = (await dunning.operator.RetryNow(pb.RetryNowRequest(case_id=case.case_id))).dunning_case
    assert now_case.state == pb.CASE_STATE_RETRY_SCHEDULED
    assert now_case.next_attempt_at.ToDatetime().replace(tzinfo=START.tzinfo) == dunning.clock.now()
    assert now_case.version > resumed.version
    assert [t.cause.split(":")[0] for t in now_case.history] == [
        "payment_failed",
        "operator_pause",
        "operator_resume",
        "operator_retry_now",
    ]


async def test_reset_only_applies_to_a_case_stuck_in_an_attempt(dunning: Dunning) -> None:
    await dunning.env.publish(payment_failed("inv-1"))
    case = await dunning.case_in_state("inv-1", pb.CASE_STATE_RETRY_SCHEDULED)
    error = await rpc_error(dunning.operator.ResetCase(pb.ResetCaseRequest(case_id=case.case_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    unchanged = await dunning.case("inv-1")
    assert unchanged.version == case.version


async def test_unknown_and_malformed_cases(dunning: Dunning) -> None:
    missing = await rpc_error(dunning.operator.GetCase(pb.GetCaseRequest(invoice_id="nope")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    missing = await rpc_error(
        dunning.operator.PauseCase(pb.PauseCaseRequest(case_id="00000000-0000-0000-0000-000000000000"))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    bad = await rpc_error(dunning.operator.RetryNow(pb.RetryNowRequest(case_id="not-a-uuid")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(bad) == {"case_id": "must be a case id (UUID)"}
    empty = await rpc_error(dunning.operator.GetCase(pb.GetCaseRequest()))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_cases_filters_and_pages(dunning: Dunning) -> None:
    for n in range(5):
        await dunning.env.publish(payment_failed(f"inv-a{n}", merchant="m-a", account="acct-a"))
    await dunning.env.publish(payment_failed("inv-b", "merchant", merchant="m-b", account="acct-b"))
    await dunning.case_in_state("inv-b", pb.CASE_STATE_HELD)
    await dunning.case_in_state("inv-a4", pb.CASE_STATE_RETRY_SCHEDULED)

    seen: list[str] = []
    token = ""
    while True:
        page = await dunning.operator.ListCases(
            pb.ListCasesRequest(merchant_id="m-a", page_size=2, page_token=token)
        )
        assert len(page.cases) <= 2
        seen += [c.invoice_id for c in page.cases]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"inv-a{n}" for n in range(5)]

    held = await dunning.operator.ListCases(pb.ListCasesRequest(state=pb.CASE_STATE_HELD))
    assert [c.invoice_id for c in held.cases] == ["inv-b"]
    by_account = await dunning.operator.ListCases(pb.ListCasesRequest(account_id="acct-b"))
    assert [c.merchant_id for c in by_account.cases] == ["m-b"]
    bad = await rpc_error(dunning.operator.ListCases(pb.ListCasesRequest(page_token="garbage!")))
    assert field_violations(bad) == {"page_token": NOT_ISSUED}


# invoice -> (merchant, account, failure kind): soft failures wait for a retry, merchant ones are held
CASES = {f"inv-{n}": (f"m-{n % 3}", f"acct-{n % 2}", "merchant" if n % 4 == 0 else "soft") for n in range(10)}
STATE_OF_KIND = {"soft": pb.CASE_STATE_RETRY_SCHEDULED, "merchant": pb.CASE_STATE_HELD}


@pytest.fixture
async def many_cases(dunning: Dunning) -> Dunning:
    for invoice_id, (merchant, account, kind) in CASES.items():
        await dunning.env.publish(payment_failed(invoice_id, kind, merchant=merchant, account=account))
    for invoice_id, (_, _, kind) in CASES.items():
        await dunning.case_in_state(invoice_id, STATE_OF_KIND[kind])
    return dunning


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4),
    st.sampled_from(["", "m-0", "m-1"]),
    st.sampled_from(["", "acct-1"]),
    st.sampled_from(["soft", "merchant", ""]),
)
async def test_listing_cases_page_by_page_gives_each_case_of_the_filter_once_in_order(
    many_cases: Dunning, sizes: list[int], merchant: str, account: str, kind: str
) -> None:
    request = pb.ListCasesRequest(
        merchant_id=merchant, account_id=account, state=STATE_OF_KIND[kind] if kind else 0
    )
    listed = await every_page(many_cases.operator.ListCases, request, "cases", sizes)
    in_one_page = await many_cases.operator.ListCases(
        pb.ListCasesRequest(merchant_id=merchant, account_id=account, state=request.state, page_size=100)
    )
    assert [c.case_id for c in listed] == [c.case_id for c in in_one_page.cases]
    assert sorted(c.invoice_id for c in listed) == sorted(
        invoice_id
        for invoice_id, (m, a, k) in CASES.items()
        if merchant in ("", m) and account in ("", a) and kind in ("", k)
    )


async def test_policies_default_set_and_validated(dunning: Dunning) -> None:
    default = await dunning.operator.GetPolicy(pb.GetPolicyRequest(merchant_id="m-1"))
    assert default.is_default
    assert default.policy.max_attempts == 8
    assert default.policy.max_window.ToTimedelta() == timedelta(days=14)
    assert default.policy.WhichOneof("schedule") == "adaptive"

    stored = await dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=fixed_policy("m-1", 1, 3, 5, 7)))
    assert list(stored.policy.fixed.day_offsets) == [1, 3, 5, 7]
    own = await dunning.operator.GetPolicy(pb.GetPolicyRequest(merchant_id="m-1"))
    assert not own.is_default and own.policy == stored.policy

    bad = fixed_policy("m-1", 3, 2, 30, attempts=0)
    error = await rpc_error(dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == {
        "policy.max_attempts": "must be between 1 and 25",
        "policy.fixed.day_offsets": "has more days than max_attempts allows",
        "policy.fixed.day_offsets[1]": "must be greater than the day before it",
        "policy.fixed.day_offsets[2]": "falls after max_window",
    }
    no_schedule = pb.RetryPolicy(merchant_id="m-1", max_attempts=3)
    no_schedule.max_window.FromTimedelta(timedelta(days=7))
    error = await rpc_error(dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=no_schedule)))
    assert field_violations(error) == {"policy.schedule": "is required: fixed or adaptive"}
    # Nothing changed.
    assert (await dunning.operator.GetPolicy(pb.GetPolicyRequest(merchant_id="m-1"))).policy == stored.policy

    # A new default applies to merchants without a policy of their own.
    await dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=fixed_policy("", 2, 4)))
    other = await dunning.operator.GetPolicy(pb.GetPolicyRequest(merchant_id="m-2"))
    assert other.is_default and list(other.policy.fixed.day_offsets) == [2, 4]


async def test_only_operators_may_call(dunning: Dunning) -> None:
    async with open_channel(f"127.0.0.1:{dunning.host.port}", dunning.env.token("recurring")) as channel:
        stub = dunning_pb2_grpc.DunningServiceStub(channel)
        error = await rpc_error(stub.GetPolicy(pb.GetPolicyRequest()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED

from datetime import UTC, datetime, timedelta

import pytest

from billing_common.auth import AccessPolicy, Authenticator, issue_token
from billing_common.clock import ControllableClock
from billing_common.errors import PermissionDenied, Unauthenticated

SECRET = "unit-test-signing-key-of-32-bytes!"
POLICY = AccessPolicy.for_service(
    "billing.quota.v1.QuotaService", {"CheckQuota": {"recurring"}, "ListPlans": {"*"}}
)


def test_controllable_clock_moves_only_forward() -> None:
    clock = ControllableClock(datetime(2026, 1, 31, 3, 1, tzinfo=UTC))
    assert clock.advance(timedelta(days=1)) == datetime(2026, 2, 1, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError):
        clock.set(datetime(2026, 3, 1))


def test_caller_on_the_allow_list_is_admitted() -> None:
    auth = Authenticator(SECRET, POLICY)
    token = issue_token(SECRET, "recurring")
    assert auth.authorize("/billing.quota.v1.QuotaService/CheckQuota", f"Bearer {token}") == "recurring"
    assert (
        auth.authorize("/billing.quota.v1.QuotaService/ListPlans", f"Bearer {issue_token(SECRET, 'tier')}")
        == "tier"
    )


def test_missing_forged_or_unlisted_callers_are_refused() -> None:
    auth = Authenticator(SECRET, POLICY)
    method = "/billing.quota.v1.QuotaService/CheckQuota"
    with pytest.raises(Unauthenticated):
        auth.authorize(method, None)
    with pytest.raises(Unauthenticated):
        auth.authorize(method, f"Bearer {issue_token('another-signing-key-of-32-bytes!!', 'recurring')}")
    with pytest.raises(Unauthenticated):
        auth.authorize(method, "Basic abc")
    with pytest.raises(PermissionDenied):
        auth.authorize(method, f"Bearer {issue_token(SECRET, 'dunning')}")
    with pytest.raises(PermissionDenied):
        auth.authorize(
            "/billing.quota.v1.QuotaService/Unlisted", f"Bearer {issue_token(SECRET, 'recurring')}"
        )


def test_health_is_open_and_insecure_mode_is_explicit() -> None:
    assert Authenticator(SECRET, POLICY).authorize("/grpc.health.v1.Health/Check", None) == "anonymous"
    with pytest.raises(ValueError):
        Authenticator("", POLICY)
    assert Authenticator("", POLICY, insecure=True).authorize(
        "/billing.quota.v1.QuotaService/CheckQuota", None
    )

from datetime import UTC, datetime

from billing_common.tiers import Tier
from tier.domain.accounts import AccountKind
from tier.domain.estate import PlannedChange, TierRecord
from tier.domain.events import TierChanged, announced
from tier.domain.rules import TierDecision

AT = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
LITE = TierDecision(Tier.LITE, "default", "v1", (("sso_active", "false"),))
PRO = TierDecision(Tier.PRO, "sso-pro", "v1", (("sso_active", "true"),))


def change(account_id: str, previous: TierDecision | None, decision: TierDecision) -> PlannedChange:
    record = None if previous is None else TierRecord(AccountKind.END_USER, previous, AT, 7)
    return PlannedChange(account_id, AccountKind.END_USER, record, decision, "dist-1")


def test_a_move_is_announced_with_both_tiers_and_the_evidence_on_each_side() -> None:
    [event] = announced([change("eu-1", LITE, PRO)], "scan-1", AT)
    assert event == TierChanged(
        account_id="eu-1",
        kind=AccountKind.END_USER,
        previous_tier=Tier.LITE,
        new_tier=Tier.PRO,
        rule_id="sso-pro",
        rule_set_version="v1",
        evidence_before=(("sso_active", "false"),),
        evidence_after=(("sso_active", "true"),),
        scan_id="scan-1",
        billed_account_id="dist-1",
        effective_at=AT,
    )


def test_an_accounts_first_tier_goes_to_the_history_only() -> None:
    written = [change("eu-new", None, LITE), change("eu-1", LITE, PRO), change("eu-2", None, PRO)]
    assert [e.account_id for e in announced(written, "scan-1", AT)] == ["eu-1"]

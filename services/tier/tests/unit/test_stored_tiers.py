from billing_common.tiers import Tier
from tier.adapters.codec import STORED_TIERS


def test_the_tier_columns_keep_reading_the_numbers_earlier_versions_stored() -> None:
    assert STORED_TIERS == {1: Tier.LITE, 2: Tier.PLUS, 3: Tier.PRO}
    assert all(STORED_TIERS[tier.rank] is tier for tier in Tier)

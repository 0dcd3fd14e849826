import pytest

from billing_common.tiers import Tier


def test_tiers_are_ordered_lowest_first_lite_plus_pro() -> None:
    assert Tier.LITE < Tier.PLUS < Tier.PRO
    assert Tier.PRO > Tier.PLUS >= Tier.PLUS > Tier.LITE
    assert max(Tier.PLUS, Tier.PRO, Tier.LITE) is Tier.PRO
    assert sorted([Tier.PRO, Tier.LITE, Tier.PLUS]) == [Tier.LITE, Tier.PLUS, Tier.PRO]
    assert [tier.rank for tier in Tier] == [1, 2, 3]


def test_a_tier_reads_and_writes_as_its_lower_case_word() -> None:
    assert Tier("plus") is Tier.PLUS
    assert Tier.PRO == "pro" and f"{Tier.LITE}" == "lite"


@pytest.mark.parametrize("text", ["lite", "plus", "pro", "zzz"])
def test_a_tier_is_not_ordered_against_plain_text(text: str) -> None:
    with pytest.raises(TypeError, match="ordered among tiers only"):
        assert text > Tier.PLUS
    with pytest.raises(TypeError, match="ordered among tiers only"):
        assert text >= Tier.PLUS

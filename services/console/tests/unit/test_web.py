"""What the web layer writes into pages by itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from console.entrypoints.web import _money, _period, _script_json


def test_chart_data_in_a_page_parses_back_and_cannot_close_its_script_element() -> None:
    data = {"note": "</script><script>alert(1)</script>", "days": [["2031-05-05", 2500]]}
    written = str(_script_json(data))
    assert "<" not in written and ">" not in written and "&#" not in written
    assert json.loads(written) == data


def test_money_is_shown_in_major_units_of_its_currency() -> None:
    assert _money({"amount_minor": 123456, "currency": "USD"}) == "1,234.56 USD"
    assert _money({"amount_minor": -2500, "currency": "USD"}) == "-25.00 USD"
    assert _money({"amount_minor": 500, "currency": "JPY"}) == "500 JPY"
    assert _money(None) == "—"


def test_a_usage_period_reads_as_a_day_as_dates_or_to_the_minute() -> None:
    def at(day: int, hour: int = 0) -> datetime:
        return datetime(2031, 3, day, hour, tzinfo=UTC)

    assert _period(at(31), datetime(2031, 4, 1, tzinfo=UTC)) == "2031-03-31"
    assert _period(at(5), datetime(2031, 4, 5, tzinfo=UTC)) == "2031-03-05 to 2031-04-05"
    assert _period(at(5, 3), at(5, 4)) == "2031-03-05 03:00 UTC to 2031-03-05 04:00 UTC"

"""What the web layer writes into pages by itself."""

from __future__ import annotations

import json

from console.entrypoints.web import _money, _script_json


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

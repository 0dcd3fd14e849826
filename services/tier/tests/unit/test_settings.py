import json
from pathlib import Path

import pytest

from billing_common.settings import SettingsError, load_settings, setting_text
from tier.domain.rules import DEFAULT_RULE_SET
from tier.entrypoints.main import rule_set_of
from tier.settings import TierSettings

RULES = {
    "version": "2026-12-test",
    "rules": [{"id": "everyone", "tier": "LITE", "when": {}}],
}


def test_the_rule_set_file_is_read_and_checked_as_the_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(RULES))
    settings = load_settings(TierSettings, "TIER", {"TIER_RULES_FILE": str(path)})
    assert settings.rules_file is not None
    assert rule_set_of(settings).version == "2026-12-test"
    assert setting_text(settings.rules_file) == str(path)


def test_no_rule_set_file_means_the_built_in_rule_set() -> None:
    settings = load_settings(TierSettings, "TIER", {})
    assert settings.rules_file is None
    assert rule_set_of(settings) is DEFAULT_RULE_SET


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        ("{not json", "Expecting property name"),
        (json.dumps({"version": "", "rules": []}), "version: must be a non-empty string"),
    ],
)
def test_a_rule_set_file_that_cannot_be_used_stops_the_service_naming_the_variable(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "rules.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError, match=f"TIER_RULES_FILE=.*{reason}"):
        load_settings(TierSettings, "TIER", {"TIER_RULES_FILE": str(path)})

import tomllib
from pathlib import Path

import pytest

from billing_devtools import contracts
from billing_devtools.contracts import TemplateError, configuration, expand, to_toml
from billing_devtools.services import PACKAGES, SERVICE_LIST, package_of

TEMPLATE = """
[tool.billing_devtools.importlinter]
root_packages = ["billing_common", "{service}"]
include_external_packages = true

[[tool.billing_devtools.importlinter.contracts]]
name = "Each service is layered"
type = "layers"
containers = ["{service}"]
layers = ["entrypoints", "adapters", "app", "domain"]

[[tool.billing_devtools.importlinter.contracts]]
name = "Metrics stay out of \\"app\\" and domain"
type = "forbidden"
source_modules = ["{service}.app", "{service}.domain", "billing_common.service"]
forbidden_modules = ["prometheus_client"]
"""


def _expanded(tmp_path: Path, packages: list[str]) -> dict[str, object]:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(TEMPLATE, encoding="utf-8")
    config = tomllib.loads(configuration(pyproject, packages))["tool"]["importlinter"]
    assert isinstance(config, dict)
    return config


def test_a_list_item_with_service_stands_for_every_package_in_order(tmp_path: Path) -> None:
    config = _expanded(tmp_path, ["quota", "tier"])
    assert config["root_packages"] == ["billing_common", "quota", "tier"]
    assert config["include_external_packages"] is True
    layered, metrics = config["contracts"]  # type: ignore[misc]
    assert layered == {
        "name": "Each service is layered",
        "type": "layers",
        "containers": ["quota", "tier"],
        "layers": ["entrypoints", "adapters", "app", "domain"],
    }
    assert metrics["name"] == 'Metrics stay out of "app" and domain'
    assert metrics["source_modules"] == [
        "quota.app",
        "tier.app",
        "quota.domain",
        "tier.domain",
        "billing_common.service",
    ]


def test_a_sixth_service_is_under_every_contract_without_an_edit_of_them(tmp_path: Path) -> None:
    five = _expanded(tmp_path, ["a", "b", "c", "d", "e"])
    six = _expanded(tmp_path, ["a", "b", "c", "d", "e", "invoicing"])
    assert "invoicing" not in str(five)
    assert six["root_packages"] == [*five["root_packages"], "invoicing"]  # type: ignore[misc]
    for contract in six["contracts"]:  # type: ignore[attr-defined]
        assert "invoicing" in str(contract)


def test_service_outside_a_list_is_refused_naming_where() -> None:
    with pytest.raises(TemplateError, match=r"importlinter\.contracts\[0\]\.name"):
        expand({"contracts": [{"name": "{service} is layered"}]}, ["quota"])


def test_a_value_import_linter_does_not_take_is_refused() -> None:
    with pytest.raises(TypeError, match="not an import-linter setting"):
        to_toml({"root_packages": [1]})


def test_the_repository_s_contracts_cover_every_package_of_services_toml() -> None:
    assert SERVICE_LIST.name == "services.toml"
    assert len(PACKAGES) == len(set(PACKAGES)) >= 2
    config = tomllib.loads(configuration(contracts.ROOT / "pyproject.toml", PACKAGES))["tool"]["importlinter"]
    assert set(PACKAGES) <= set(config["root_packages"])
    assert "{service}" not in str(config)
    runtime = next(c for c in config["contracts"] if "billing_devtools" in c.get("forbidden_modules", []))
    assert set(runtime["source_modules"]) == {*PACKAGES, "billing_common"}
    assert {"pytest", "hypothesis"} <= set(runtime["forbidden_modules"])


def test_the_dockerfile_s_service_argument_is_a_listed_name() -> None:
    assert package_of("gateway-adapter") == "gateway_adapter"
    with pytest.raises(SystemExit, match=r"'no-such-service' is not a service of services\.toml: one of"):
        package_of("no-such-service")

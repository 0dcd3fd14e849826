"""The import contracts over every service of services.toml (`make contracts`).

The root pyproject.toml writes each contract once, under `[tool.billing_devtools.importlinter]`;
a list item holding `{service}` stands for one item per listed package, in the list's order. The
expansion is written as import-linter's own configuration (`[tool.importlinter]`) and checked, so
a new service is under every contract once it is in services.toml.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from importlinter.cli import lint_imports

from billing_devtools.services import PACKAGES

ROOT = Path(__file__).resolve().parents[4]
PLACEHOLDER = "{service}"


class TemplateError(ValueError):
    """A `{service}` where it cannot stand for a list of packages."""


def expand(value: Any, packages: Sequence[str], where: str = "importlinter") -> Any:
    """`value` with every list item that holds `{service}` repeated once per package."""
    if isinstance(value, dict):
        return {key: expand(item, packages, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        expanded: list[Any] = []
        for index, item in enumerate(value):
            if isinstance(item, str) and PLACEHOLDER in item:
                expanded.extend(item.replace(PLACEHOLDER, package) for package in packages)
            else:
                expanded.append(expand(item, packages, f"{where}[{index}]"))
        return expanded
    if isinstance(value, str) and PLACEHOLDER in value:
        raise TemplateError(f"{where}: {PLACEHOLDER} stands for a list of packages; use it in a list item")
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string (ASCII, escaped) is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"not an import-linter setting: {value!r}")


def to_toml(config: dict[str, Any]) -> str:
    """import-linter's configuration: `[tool.importlinter]` and one table per contract."""
    lines = ["[tool.importlinter]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in config.items() if key != "contracts"]
    for contract in config.get("contracts", []):
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in contract.items()]
    return "\n".join(lines) + "\n"


def configuration(pyproject: Path, packages: Sequence[str]) -> str:
    """The contracts of `pyproject` expanded over `packages`, as import-linter reads them."""
    template = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["billing_devtools"][
        "importlinter"
    ]
    return to_toml(expand(template, packages))


def main() -> int:
    written = ROOT / ".build" / "importlinter.toml"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(configuration(ROOT / "pyproject.toml", PACKAGES), encoding="utf-8")
    return lint_imports(config_filename=str(written), no_logo=True)


if __name__ == "__main__":
    sys.exit(main())

"""What the manifests of each gRPC service are rendered from: its services.toml entry and its
folder services/<name>/deploy/ (deploy.toml, config.env, objects of its own)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from billing_devtools.services import SERVICE_LIST, read_list

# What deploy.toml may say (a key it does not know is refused by name, not ignored).
KNOWN_KEYS = {
    "": {"description", "page_tokens", "scaler_note", "https_egress", "secret", "webhooks", "prod"},
    "prod": {"replicas", "replicas_note", "db_pool_max", "pool_note", "resources", "resources_note"},
    "webhooks": {"port", "note"},
}


class DeclarationError(ValueError):
    """A service's entry or deploy folder is missing something the manifests need."""


@dataclass(frozen=True)
class SecretKey:
    """A key of `<name>-secrets` beyond the database, Redis and broker URLs: read as `<PREFIX>_<KEY>`."""

    key: str
    note: str
    placeholder: str
    optional: bool = False

    def variable(self, prefix: str) -> str:
        return f"{prefix}_{self.key.upper().replace('-', '_')}"


@dataclass(frozen=True)
class Service:
    """A gRPC service as its manifests need it: its services.toml entry and services/<name>/deploy/."""

    name: str
    package: str
    prefix: str
    # The services it calls by gRPC (services.toml `calls`): its token, addresses and network policy.
    calls: tuple[str, ...]
    description: str
    # Whether its List RPCs hand out page tokens (Secret key `page-token-keys`).
    page_tokens: bool
    secrets: tuple[SecretKey, ...]
    # Why it calls out to the internet on 443 (None: it does not).
    https_egress: str | None
    # The HTTP port of its webhooks and what arrives there (None: it has none).
    webhooks_port: int | None
    webhooks_note: str
    # Why its autoscaler has its shape (the comment of its HPA).
    scaler_note: str
    prod_replicas: tuple[int, int]
    prod_replicas_note: str
    prod_db_pool_max: int
    prod_pool_note: str
    # Container resources in prod when the common ones do not fit, and why.
    prod_resources: dict[str, Any] | None
    prod_resources_note: str
    own_settings: str
    # Its own objects (file name -> text), e.g. a KEDA ScaledObject.
    objects: dict[str, str]

    @property
    def scaled_object(self) -> str | None:
        """The file of its own ScaledObject, if it brings one (then no HPA is rendered)."""
        for file_name, text in self.objects.items():
            if any(doc and doc.get("kind") == "ScaledObject" for doc in yaml.safe_load_all(text)):
                return file_name
        return None


@dataclass(frozen=True)
class Web:
    """The console: listed in the base, the overlays and the Secrets template; its folder is kept by hand."""

    name: str
    package: str
    prefix: str


@dataclass(frozen=True)
class Suite:
    services: tuple[Service, ...]
    web: Web

    def callers_of(self, name: str) -> list[str]:
        return [service.name for service in self.services if name in service.calls]


def load(root: Path = SERVICE_LIST.parent) -> Suite:
    """The suite as services.toml under `root` and its services' deploy folders declare it."""
    listed = read_list(root / "services.toml")
    services = tuple(
        _service(entry, root / "services" / entry["name"] / "deploy") for entry in listed["grpc"]
    )
    names = {service.name for service in services}
    for service in services:
        unknown = set(service.calls) - names
        if unknown:
            raise DeclarationError(
                f"{service.name}: calls {sorted(unknown)}, not gRPC services of services.toml"
            )
    return Suite(services, Web(listed["web"]["name"], listed["web"]["package"], listed["web"]["prefix"]))


def _service(entry: dict[str, Any], folder: Path) -> Service:
    declaration_file = folder / "deploy.toml"
    if not declaration_file.is_file():
        raise DeclarationError(f"{entry['name']}: {declaration_file} is missing (description, [prod])")
    declared = tomllib.loads(declaration_file.read_text(encoding="utf-8"))
    for table, known in KNOWN_KEYS.items():
        unknown = set(declared.get(table, {}) if table else declared) - known
        if unknown:
            raise DeclarationError(
                f"{declaration_file}: unknown {'[' + table + '] ' if table else ''}keys {sorted(unknown)}"
            )
    try:
        prod = declared["prod"]
        low, high = prod["replicas"]
        webhooks = declared.get("webhooks", {})
        own_settings = folder / "config.env"
        return Service(
            name=entry["name"],
            package=entry["package"],
            prefix=entry["prefix"],
            calls=tuple(entry.get("calls", ())),
            description=declared["description"],
            page_tokens=declared.get("page_tokens", False),
            secrets=tuple(SecretKey(**secret) for secret in declared.get("secret", ())),
            https_egress=declared.get("https_egress"),
            webhooks_port=webhooks.get("port"),
            webhooks_note=webhooks.get("note", ""),
            scaler_note=declared.get("scaler_note", "CPU follows the calls it serves."),
            prod_replicas=(low, high),
            prod_replicas_note=prod.get("replicas_note", ""),
            prod_db_pool_max=prod["db_pool_max"],
            prod_pool_note=prod.get("pool_note", ""),
            prod_resources=prod.get("resources"),
            prod_resources_note=prod.get("resources_note", ""),
            own_settings=own_settings.read_text(encoding="utf-8") if own_settings.is_file() else "",
            objects={path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.yaml"))},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DeclarationError(f"{declaration_file}: {error!r}") from error

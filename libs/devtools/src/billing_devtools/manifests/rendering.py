"""The text of every rendered manifest: templates (templates/) filled from the declarations."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import yaml

from billing_devtools.manifests.declarations import SecretKey, Service, Suite

GENERATED = (
    "# Rendered by `make manifests-write` (billing_devtools.manifests) from services.toml and\n"
    "# {source}: edit those, not this file.\n"
)
ZERO_DIGEST = "sha256:" + "0" * 64
# Prod pins each image by digest; a service's image not pinned yet gets this registry and zeros.
PLACEHOLDER_REGISTRY = "registry.example.com/billing"
# Anywhere outside the private ranges and the cloud metadata address: the public APIs a service calls.
PUBLIC_INTERNET = [
    {
        "ipBlock": {
            "cidr": "0.0.0.0/0",
            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"],
        }
    },
    {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}},
]
ADMIN_DSN_NOTE = "Dev only; leave this key out in prod (roles and schemas created beforehand, see README)."
TOKEN_MOUNT = """\
# Its own token for calls to other services (<P>_AUTH_TOKEN_FILE); replaced in place when renewed.
- name: token
  mountPath: /etc/billing/token
  readOnly: true"""


# ---------------------------------------------------------------------------------------------
# Templates: `{{field}}` is a value; a line holding only `{{>block}}` is replaced by the block's
# lines at that line's indentation (and dropped when the block is empty).

_BLOCK = re.compile(r"^(?P<indent> *)\{\{>(?P<name>\w+)\}\}\n", re.MULTILINE)
_FIELD = re.compile(r"\{\{(?P<name>\w+)\}\}")


def fill(template: str, fields: dict[str, Any], blocks: dict[str, str] | None = None) -> str:
    """`template` with its fields and blocks filled; a name it uses and is not given is an error."""
    given = blocks or {}

    def block(match: re.Match[str]) -> str:
        text = given[match["name"]]
        return "".join(f"{match['indent']}{line}\n" if line else "\n" for line in text.splitlines())

    return _FIELD.sub(lambda match: str(fields[match["name"]]), _BLOCK.sub(block, template))


def _template(name: str) -> str:
    return (resources.files("billing_devtools.manifests") / "templates" / name).read_text(encoding="utf-8")


def _comment(text: str) -> str:
    return "\n".join(f"# {line}" if line else "#" for line in text.splitlines()) if text else ""


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as the hand-written manifests have them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120).rstrip("\n")


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's)."""
    return json.dumps(text)


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


# ---------------------------------------------------------------------------------------------
# A service's folder deploy/k8s/base/<name>/


def service_files(suite: Suite, service: Service) -> dict[str, str]:
    """deploy/k8s/base/<name>/: file name -> text."""
    source = GENERATED.format(source=f"services/{service.name}/deploy/")
    fields = {
        "name": service.name,
        "package": service.package,
        "prefix": service.prefix,
        "description": _quoted(service.description),
        "scaler_owner": (
            "the KEDA ScaledObject (through the HPA it makes)"
            if service.scaled_object
            else "the HorizontalPodAutoscaler"
        ),
        "webhooks_port": service.webhooks_port,
    }
    files = {
        "serviceaccount.yaml": fill(_template("serviceaccount.yaml"), fields),
        "migration-job.yaml": fill(_template("migration-job.yaml"), fields),
        "partitions-cronjob.yaml": fill(_template("partitions-cronjob.yaml"), fields),
        "deployment.yaml": fill(_template("deployment.yaml"), fields, _deployment_blocks(service)),
        "service.yaml": fill(_template("service.yaml"), fields),
    }
    if service.webhooks_port is not None:
        note = {"webhooks_note": _comment(service.webhooks_note)}
        files["webhook-service.yaml"] = fill(_template("webhook-service.yaml"), fields, note)
    for file_name, text in service.objects.items():
        if file_name != service.scaled_object:
            files[file_name] = text
    files["pdb.yaml"] = fill(_template("pdb.yaml"), fields)
    scaler = service.scaled_object
    if scaler:
        files[scaler] = service.objects[scaler]
    else:
        files["hpa.yaml"] = fill(
            _template("hpa.yaml"), fields, {"scaler_note": _comment(service.scaler_note)}
        )
    files["networkpolicy.yaml"] = _network_policy(suite, service)
    listed = "\n".join(f"- {file_name}" for file_name in files)
    files["kustomization.yaml"] = fill(_template("kustomization.yaml"), fields, {"resources": listed})
    files["config.env"] = fill(_template("config.env"), fields, _settings_blocks(service))
    return {file_name: source + text for file_name, text in files.items()}


def _deployment_blocks(service: Service) -> dict[str, str]:
    variables = []
    if service.page_tokens:
        variables.append(
            "# Keys of its page tokens, the same in every pod (the service does not start without).\n"
            + _secret_variable(service, SecretKey("page-token-keys", "", ""))
        )
    for secret in service.secrets:
        variables.append(_comment(secret.note) + "\n" + _secret_variable(service, secret))
    calls = bool(service.calls)
    return {
        "webhook_port": (
            _yaml([{"name": "http-webhooks", "containerPort": service.webhooks_port, "protocol": "TCP"}])
            if service.webhooks_port is not None
            else ""
        ),
        "secret_variables": "\n".join(variables),
        "token_mount": (TOKEN_MOUNT if calls else ""),
        "token_volume": (
            f"- name: token\n  secret:\n    secretName: {service.name}-token\n    defaultMode: 0440"
            if calls
            else ""
        ),
    }


def _secret_variable(service: Service, secret: SecretKey) -> str:
    reference: dict[str, Any] = {"name": f"{service.name}-secrets", "key": secret.key}
    if secret.optional:
        reference["optional"] = True
    return _yaml([{"name": secret.variable(service.prefix), "valueFrom": {"secretKeyRef": reference}}])


def _settings_blocks(service: Service) -> dict[str, str]:
    addresses = "\n".join(
        f"{service.prefix}_{_env_name(callee)}_ADDR=dns:///{callee}:50051" for callee in service.calls
    )
    own = service.own_settings.rstrip("\n")
    return {
        "token_file": (
            f"# The token it presents to the services it calls: Secret {service.name}-token, mounted; read "
            f"again when renewed.\n{service.prefix}_AUTH_TOKEN_FILE=/etc/billing/token/token"
            if service.calls
            else ""
        ),
        "addresses": (
            "# Other services, by their headless Services in this namespace: DNS answers every ready pod's\n"
            "# address, and the client's round_robin spreads calls over all of them.\n" + addresses
            if service.calls
            else ""
        ),
        "webhook_port": (
            f"# HTTP listener of its webhooks.\n{service.prefix}_WEBHOOK_PORT={service.webhooks_port}"
            if service.webhooks_port is not None
            else ""
        ),
        "own_settings": (
            f"# {service.name}'s own settings (services/{service.name}/deploy/config.env).\n{own}"
            if own
            else ""
        ),
    }


def _network_policy(suite: Suite, service: Service) -> str:
    callers = suite.callers_of(service.name)
    grpc_from = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": caller}}} for caller in callers]
    grpc_from += [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "console"}}},
        {"namespaceSelector": {"matchLabels": {"billing-suite/operator-access": "true"}}},
    ]
    ingress = [
        "# gRPC from its callers ({callers}), the console (any pod of this namespace labelled\n"
        "# app.kubernetes.io/component=console) and operators' tooling (namespaces labelled\n"
        "# billing-suite/operator-access=true).\n".format(callers=", ".join(callers) or "no other service")
        + _yaml([{"ports": [{"port": "grpc", "protocol": "TCP"}], "from": grpc_from}]),
        "# Prometheus scrapes /metrics from the monitoring namespace only.\n"
        + _yaml([_from_namespace("metrics", {"kubernetes.io/metadata.name": "monitoring"})]),
    ]
    if service.webhooks_port is not None:
        ingress.append(
            "# Webhooks arrive through the ingress controller only.\n"
            + _yaml([_from_namespace("http-webhooks", {"kubernetes.io/metadata.name": "ingress-nginx"})])
        )
    egress = []
    if service.calls:
        to = [
            {
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/name": callee,
                        "app.kubernetes.io/component": "grpc-service",
                    }
                }
            }
            for callee in service.calls
        ]
        egress.append(
            f"# The services it calls ({', '.join(service.calls)}), pod by pod (headless Services).\n"
            + _yaml([{"to": to, "ports": [{"port": 50051, "protocol": "TCP"}]}])
        )
    if service.https_egress:
        egress.append(
            f"# {service.https_egress}:\n"
            "# anywhere outside the private ranges (and the cloud metadata address).\n"
            + _yaml([{"to": PUBLIC_INTERNET, "ports": [{"port": 443, "protocol": "TCP"}]}])
        )
    head = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": service.name, "labels": {"app.kubernetes.io/name": service.name}},
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": service.name,
                    "app.kubernetes.io/component": "grpc-service",
                }
            },
            "policyTypes": ["Ingress", "Egress"] if egress else ["Ingress"],
        },
    }
    text = _yaml(head) + "\n  ingress:\n" + _indent("\n".join(ingress), 4)
    if egress:
        text += "\n  egress:\n" + _indent("\n".join(egress), 4)
    return text + "\n"


def _from_namespace(port: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "ports": [{"port": port, "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": labels}}],
    }


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else "" for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# The shared lists: the base's folders, the overlays, the Secrets template


def base_kustomization(suite: Suite) -> str:
    folders = "\n".join(f"- {service.name}" for service in suite.services) + f"\n- {suite.web.name}"
    return GENERATED.format(source="services/<name>/deploy/") + fill(
        _template("base-kustomization.yaml"), {"web": suite.web.name}, {"services": folders}
    )


def dev_kustomization(suite: Suite) -> str:
    names = [*(service.name for service in suite.services), suite.web.name]
    images = _yaml([{"name": f"billing-{name}", "newTag": "dev"} for name in names])
    settings = _yaml(
        [
            {
                "name": f"{service.name}-config",
                "behavior": "merge",
                "literals": [f"{service.prefix}_TEST_CLOCK=true", f"{service.prefix}_LOG_LEVEL=DEBUG"],
            }
            for service in suite.services
        ]
        # The console's "today" is the suite's instant too.
        + [
            {
                "name": f"{suite.web.name}-config",
                "behavior": "merge",
                "literals": [f"{suite.web.prefix}_TEST_CLOCK=true"],
            }
        ]
    )
    admin_dsn = "\n".join(
        f"- target:\n    kind: Job\n    name: {service.name}-migrate\n  patch: |-\n"
        + _indent(
            _yaml(
                [
                    {
                        "op": "add",
                        "path": "/spec/template/spec/containers/0/env/-",
                        "value": {
                            "name": f"{service.prefix}_DB_ADMIN_URL",
                            "valueFrom": {
                                "secretKeyRef": {
                                    "name": f"{service.name}-migration",
                                    "key": "database-admin-url",
                                    "optional": True,
                                }
                            },
                        },
                    }
                ]
            ),
            4,
        )
        for service in suite.services
    )
    blocks = {"images": images, "settings": settings, "admin_dsn": admin_dsn}
    return GENERATED.format(source="services/<name>/deploy/") + fill(
        _template("dev-kustomization.yaml"), {}, blocks
    )


def prod_kustomization(suite: Suite, pinned: dict[str, dict[str, str]]) -> str:
    """The prod overlay; `pinned` (image name -> entry) keeps the digests the overlay pins already."""
    names = [*(service.name for service in suite.services), suite.web.name]
    images = _yaml(
        [
            pinned.get(
                f"billing-{name}",
                {
                    "name": f"billing-{name}",
                    "newName": f"{PLACEHOLDER_REGISTRY}/billing-{name}",
                    "digest": ZERO_DIGEST,
                },
            )
            for name in names
        ]
    )
    settings = []
    for service in suite.services:
        budget = service.prod_replicas[1] * service.prod_db_pool_max
        pool = f"{service.prod_replicas[1]} x {service.prod_db_pool_max} = {budget}"
        settings.append(
            f"- name: {service.name}-config\n  behavior: merge\n  literals:\n"
            f"    - {service.prefix}_TEST_CLOCK=false\n"
            f"    # {pool}{' ' + service.prod_pool_note if service.prod_pool_note else ''}\n"
            f"    - {service.prefix}_DB_POOL_MAX={service.prod_db_pool_max}"
        )
    settings.append(
        f"- name: {suite.web.name}-config\n  behavior: merge\n  literals:\n"
        f"    - {suite.web.prefix}_TEST_CLOCK=false"
    )
    sizing = []
    for service in suite.services:
        if service.prod_resources is None:
            continue
        operation = [
            {
                "op": "replace",
                "path": "/spec/template/spec/containers/0/resources",
                "value": service.prod_resources,
            }
        ]
        target = {"group": "apps", "version": "v1", "kind": "Deployment", "name": service.name}
        sizing.append(_patch(service.prod_resources_note, _yaml(operation), target))
    ranges = []
    for service in suite.services:
        low, high = service.prod_replicas
        if service.scaled_object:
            body = {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": service.name},
                "spec": {"minReplicaCount": low, "maxReplicaCount": high},
            }
        else:
            body = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": service.name},
                "spec": {"minReplicas": low, "maxReplicas": high},
            }
        ranges.append(_patch(service.prod_replicas_note, _yaml(body), None))
    blocks = {
        "images": images,
        "settings": "\n".join(settings),
        "resources": "\n".join(sizing),
        "ranges": "\n".join(ranges),
    }
    return GENERATED.format(source="services/<name>/deploy/") + fill(
        _template("prod-kustomization.yaml"), {}, blocks
    )


def _patch(note: str, body: str, target: dict[str, str] | None) -> str:
    lines = [_comment(note)] if note else []
    lines.append("- patch: |-\n" + _indent(body, 4))
    if target:
        lines.append("  target:\n" + _indent(_yaml(target), 4))
    return "\n".join(lines)


def secrets_template(suite: Suite) -> str:
    callers = [service.name for service in suite.services if service.calls]
    paging = [service.name for service in suite.services if service.page_tokens]
    documents = [
        GENERATED.format(source="services/<name>/deploy/")
        + fill(
            _template("secrets.example.yaml"), {"callers": ", ".join(callers), "paging": ", ".join(paging)}
        )
    ]
    for service in suite.services:
        if service.calls:
            documents.append(
                _secret(
                    "",
                    f"{service.name}-token",
                    {"token": _quoted(f"REPLACE_ME_jwt_with_subject_{service.name}")},
                )
            )
    for service in suite.services:
        if service.calls:
            about = f"calls {' and '.join(service.calls)} (its token: Secret {service.name}-token)"
        else:
            about = "calls no other service, so it holds no token"
        keys = {
            "database-url": _quoted(
                f"postgresql://{service.package}:REPLACE_ME_password@REPLACE_ME_pgbouncer_host:6432/billing"
            ),
            "redis-url": _quoted("redis://:REPLACE_ME_password@REPLACE_ME_redis_host:6379/0"),
            "amqp-url": _quoted(
                f"amqp://{service.package}:REPLACE_ME_password@REPLACE_ME_rabbitmq_host:5672/billing"
            ),
        }
        if service.page_tokens:
            keys["page-token-keys"] = _quoted("REPLACE_ME_at_least_32_random_characters")
        for secret in service.secrets:
            keys[secret.key] = _quoted(secret.placeholder)
        notes = {secret.key: secret.note for secret in service.secrets}
        documents.append(_secret(f"{service.name}: {about}", f"{service.name}-secrets", keys, notes))
    for service in suite.services:
        keys = {
            "database-url": _quoted(
                f"postgresql://{service.package}_owner:REPLACE_ME_password@REPLACE_ME_postgres_host:5432/billing"
            ),
            "database-admin-url": _quoted(
                "postgresql://postgres:REPLACE_ME_password@REPLACE_ME_postgres_host:5432/billing"
            ),
        }
        notes = {"database-admin-url": ADMIN_DSN_NOTE}
        about = f"{service.name}'s migration Job: the owner of schema {service.package}"
        documents.append(_secret(about, f"{service.name}-migration", keys, notes))
    web = {"name": suite.web.name, "package": suite.web.package}
    return "---\n".join(documents) + fill(_template("console-secrets.example.yaml"), web)


def _secret(about: str, name: str, keys: dict[str, str], notes: dict[str, str] | None = None) -> str:
    lines = [_comment(about)] if about else []
    lines += [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {name}",
        "  namespace: billing",
        "type: Opaque",
        "stringData:",
    ]
    for key, value in keys.items():
        note = (notes or {}).get(key)
        if note:
            lines.append(_indent(_comment(note), 2))
        lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"

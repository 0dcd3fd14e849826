"""The rendered manifests of every kustomization: valid for Kubernetes 1.29-1.37, and kept to the
suite's rules (probes, resources, security, disruption budgets, autoscaling, headless gRPC
Services, default-deny networking with the callers' allow-lists, settings that exist)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml

from billing_common.settings import CommonSettings, load_settings
from billing_devtools.manifests import load as load_suite
from billing_devtools.services import CONSOLE, SERVICES
from deploy.k8s.checks.kustomize import Object, pod_template, render
from deploy.k8s.checks.netpol import Endpoint, allowed, selects

DEPLOY = Path(__file__).resolve().parents[1]
KUSTOMIZATIONS = {
    "base": DEPLOY / "base",
    "dev": DEPLOY / "overlays" / "dev",
    "prod": DEPLOY / "overlays" / "prod",
}
KUBERNETES_VERSIONS = [f"1.{minor}" for minor in range(29, 38)]
# Kinds of operators the suite expects (KEDA, Prometheus operator), checked by the tests below
# rather than by the Kubernetes schemas.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("grafana.integreatly.org/v1beta1", "GrafanaDashboard"),
}
# Who calls whom by gRPC, as services.toml declares it (every other pair is refused).
GRPC_CALLS = {(service.name, callee) for service in load_suite().services for callee in service.calls}
# NetworkPolicy peers that are not rendered here: namespaces of the cluster and of the engines,
# labelled as deploy/k8s/README.md says, and the console to come.
EXTERNAL_NAMESPACE_SELECTORS = [
    {"kubernetes.io/metadata.name": "kube-system"},
    {"kubernetes.io/metadata.name": "monitoring"},
    {"kubernetes.io/metadata.name": "ingress-nginx"},
    {"billing-suite/postgresql": "true"},
    {"billing-suite/redis": "true"},
    {"billing-suite/rabbitmq": "true"},
    {"billing-suite/otlp-collector": "true"},
    {"billing-suite/operator-access": "true"},
]
FUTURE_POD_SELECTORS = [{"app.kubernetes.io/component": "console"}]
# Read by the OpenTelemetry SDK (the specification's variables), not by a settings class.
LIBRARY_VARIABLES = {
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}
# The longest call a service makes or serves: a charge (recurring -> gateway-adapter -> Stripe), a
# retry attempt (dunning -> recurring), a signal provider's request (tier). The drain must outlast it.
CALL_TIMEOUTS = {
    "recurring": "charge_timeout",
    "dunning": "attempt_timeout",
    "gateway-adapter": "stripe_timeout",
    "tier": "provider_timeout",
}
# What the host needs after the drain: background tasks, stop hooks, pool, Redis, broker (5 s each at most).
CLOSING_S = 20


@functools.cache
def rendered(name: str) -> tuple[Object, ...]:
    return tuple(render(KUSTOMIZATIONS[name]))


def _is_console(workload: Object) -> bool:
    return bool(pod_template(workload)["metadata"]["labels"].get("app.kubernetes.io/component") == "console")


def of_kind(name: str, kind: str) -> list[Object]:
    return [obj for obj in rendered(name) if obj["kind"] == kind]


def workloads(name: str) -> list[Object]:
    return of_kind(name, "Deployment") + of_kind(name, "Job") + of_kind(name, "CronJob")


def containers(workload: Object) -> list[Object]:
    spec = pod_template(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def config_map_data(name: str, namespace: str, config_map: str) -> dict[str, str]:
    for obj in of_kind(name, "ConfigMap"):
        if obj["metadata"]["name"] == config_map and obj["metadata"].get("namespace") == namespace:
            return dict(obj.get("data", {}))
    raise AssertionError(f"{name}: ConfigMap {namespace}/{config_map} is referenced but not rendered")


def environment(name: str, workload: Object, container: Object) -> dict[str, str | None]:
    """Every variable the container gets: values from ConfigMaps and literals; None from Secrets/fields."""
    namespace = workload["metadata"]["namespace"]
    variables: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        variables.update(config_map_data(name, namespace, source["configMapRef"]["name"]))
    for variable in container.get("env", []):
        variables[variable["name"]] = variable.get("value")
    return variables


def service_of(container: Object) -> tuple[str, str, type[CommonSettings]]:
    """The service a container runs (from `python -m <package>.entrypoints.main`): name, prefix, settings."""
    command = container["command"]
    assert command[:2] == ["python", "-m"], command
    package = command[2].removesuffix(".entrypoints.main")
    for service, prefix, known_package, *_ in [*SERVICES, CONSOLE]:
        if known_package == package:
            return service, prefix, settings_of(package)
    raise AssertionError(f"{command}: not one of the suite's services")


def settings_of(package: str) -> type[CommonSettings]:
    """The settings class a service's package declares in `<package>.settings`."""
    module = importlib.import_module(f"{package}.settings")
    (settings_class,) = (
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, CommonSettings)
        and value.__module__ == module.__name__
    )
    return settings_class


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas


@functools.cache
def _schema_folder(version: str) -> Any:
    return resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"


@functools.cache
def _registry(version: str) -> referencing.Registry[Any]:
    definitions = json.loads((_schema_folder(version) / "_definitions.json").read_text())
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _schema_folder(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    registry = referencing.Resource.from_contents(schema) @ _registry(version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_is_valid_for_kubernetes_1_29_to_1_37(name: str) -> None:
    problems = []
    for obj in rendered(name):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            validator = _validator(version, obj["apiVersion"], obj["kind"])
            if validator is None:
                problems.append(f"{obj['kind']} {obj['apiVersion']}: no schema in Kubernetes {version}")
                continue
            for error in validator.iter_errors(obj):
                where = ".".join(str(part) for part in error.absolute_path)
                problems.append(f"{version} {obj['kind']}/{obj['metadata']['name']} {where}: {error.message}")
    assert problems == []


# ---------------------------------------------------------------------------------------------
# Pods


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_deployment_has_probes_resources_and_a_restricted_security_context(name: str) -> None:
    for workload in workloads(name):
        label = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = pod_template(workload)["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, label
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", label
        assert pod["automountServiceAccountToken"] is False, label
        for container in containers(workload):
            if workload["kind"] == "Deployment":
                # gRPC services answer grpc.health.v1; the console, a web application, over HTTP.
                kind = "httpGet" if _is_console(workload) else "grpc"
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert kind in container.get(probe, {}), f"{label}: {probe}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{label}: {bound}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, label
            assert security["readOnlyRootFilesystem"] is True, label
            assert security["capabilities"]["drop"] == ["ALL"], label


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_deployment_has_a_disruption_budget_that_selects_its_pods(name: str) -> None:
    budgets = of_kind(name, "PodDisruptionBudget")
    for deployment in of_kind(name, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [pdb for pdb in budgets if selects(pdb["spec"]["selector"], labels)]
        assert len(matching) == 1, deployment["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_deployment_is_scaled_by_exactly_one_scaled_object_or_hpa(name: str) -> None:
    targets = [hpa["spec"]["scaleTargetRef"] for hpa in of_kind(name, "HorizontalPodAutoscaler")] + [
        scaled["spec"]["scaleTargetRef"] for scaled in of_kind(name, "ScaledObject")
    ]
    for deployment in of_kind(name, "Deployment"):
        scalers = [
            t
            for t in targets
            if t.get("kind", "Deployment") == "Deployment" and t["name"] == deployment["metadata"]["name"]
        ]
        assert len(scalers) == 1, deployment["metadata"]["name"]
        # A replica count in the manifest would be reset by every apply, fighting the autoscaler.
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]
    deployments = {d["metadata"]["name"] for d in of_kind(name, "Deployment")}
    assert {t["name"] for t in targets} <= deployments


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_recurring_and_dunning_scale_on_their_backlogs_and_recurring_before_its_runs(name: str) -> None:
    scaled = {obj["metadata"]["name"]: obj["spec"] for obj in of_kind(name, "ScaledObject")}
    assert set(scaled) == {"recurring", "dunning"}
    for spec in scaled.values():
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] in {"prometheus", "cron"}, trigger
            if trigger["type"] == "prometheus":
                assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
                assert int(trigger["metadata"]["threshold"]) > 0
            else:
                assert {"timezone", "start", "end", "desiredReplicas"} <= set(trigger["metadata"])
                assert all(len(trigger["metadata"][edge].split()) == 5 for edge in ("start", "end"))
    queries = {
        service: [t["metadata"]["query"] for t in spec["triggers"] if t["type"] == "prometheus"]
        for service, spec in scaled.items()
    }
    assert queries == {
        "recurring": ['max(recurring_work_backlog_items{namespace="billing"})'],
        "dunning": ['max(dunning_due_attempts_backlog{namespace="billing"})'],
    }
    # Scaled up before the daily run (03:01), before the monthly run (03:06) on the 1st, and on
    # the month's last days; scaled out before 03:00 every time.
    crons = {t["name"]: t["metadata"] for t in scaled["recurring"]["triggers"] if t["type"] == "cron"}
    days = {name: cron["start"].split()[2] for name, cron in crons.items()}
    assert sorted(days.values()) == ["*", "1", "28-31"]
    for cron in crons.values():
        minute, hour = (int(field) for field in cron["start"].split()[:2])
        assert (hour, minute) < (3, 0)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_drain_longer_than_the_longest_call_and_are_given_time_to(name: str) -> None:
    longest_call = timedelta(0)
    drains = {}
    for deployment in of_kind(name, "Deployment"):
        if _is_console(deployment):  # serves pages, not calls: nothing of its own outlasts a request
            continue
        (container,) = containers(deployment)
        service, prefix, settings_class = service_of(container)
        values = {
            key: value for key, value in environment(name, deployment, container).items() if value is not None
        }
        settings = load_settings(settings_class, prefix, values)
        if service in CALL_TIMEOUTS:
            longest_call = max(longest_call, getattr(settings, CALL_TIMEOUTS[service]))
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        pod = deployment["spec"]["template"]["spec"]
        drains[service] = settings.grpc_shutdown_grace
        budget = int(pre_stop[1]) + settings.grpc_shutdown_grace.total_seconds() + CLOSING_S
        assert pod["terminationGracePeriodSeconds"] >= budget, service
    assert longest_call == timedelta(seconds=30)
    assert all(drain > longest_call for drain in drains.values()), drains


# ---------------------------------------------------------------------------------------------
# Services and addresses


def _is_grpc(port: Object) -> bool:
    return port.get("appProtocol") == "grpc" or port.get("name") == "grpc"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_grpc_service_is_headless(name: str) -> None:
    grpc_services = [s for s in of_kind(name, "Service") if any(_is_grpc(p) for p in s["spec"]["ports"])]
    assert {s["metadata"]["name"] for s in grpc_services} == {service for service, *_ in SERVICES}
    for service in grpc_services:
        assert service["spec"].get("clusterIP") == "None", service["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_clients_reach_other_services_through_dns_targets_of_headless_services(name: str) -> None:
    headless = {
        s["metadata"]["name"]: [p["port"] for p in s["spec"]["ports"] if _is_grpc(p)]
        for s in of_kind(name, "Service")
        if s["spec"].get("clusterIP") == "None"
    }
    addresses = {}
    for workload in of_kind(name, "Deployment"):
        for container in containers(workload):
            for variable, value in environment(name, workload, container).items():
                if variable.endswith("_ADDR") and value is not None:
                    addresses[variable] = value
    # The console's addresses: one per service it has a client for (a `<service>_addr` setting).
    console_calls = [f.name for f in dataclasses.fields(settings_of(CONSOLE[2])) if f.name.endswith("_addr")]
    listed = {service.replace("-", "_") for service, *_ in SERVICES}
    assert console_calls and {call.removesuffix("_addr") for call in console_calls} <= listed
    prefixes = {service: prefix for service, prefix, *_ in SERVICES}
    assert set(addresses) == {
        *(f"{prefixes[caller]}_{callee.upper().replace('-', '_')}_ADDR" for caller, callee in GRPC_CALLS),
        *(f"CONSOLE_{call.upper()}" for call in console_calls),
    }
    for variable, value in addresses.items():
        match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", value)
        assert match, f"{variable}={value}"
        assert int(match[2]) in headless.get(match[1], []), f"{variable}={value}"


# ---------------------------------------------------------------------------------------------
# Network policies


def _namespaces(name: str) -> dict[str, dict[str, str]]:
    """Every namespace an object is rendered into, with its labels (as the API server sets them)."""
    labels = {ns["metadata"]["name"]: ns["metadata"].get("labels", {}) for ns in of_kind(name, "Namespace")}
    used = {obj["metadata"]["namespace"] for obj in rendered(name) if "namespace" in obj["metadata"]}
    return {ns: {**labels.get(ns, {}), "kubernetes.io/metadata.name": ns} for ns in used | set(labels)}


def _pod(name: str, workload: Object) -> Endpoint:
    namespace = workload["metadata"]["namespace"]
    ports = {
        p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", []) if "name" in p
    }
    return Endpoint(
        namespace, pod_template(workload)["metadata"]["labels"], _namespaces(name)[namespace], ports
    )


def _pods(name: str) -> dict[str, Endpoint]:
    return {
        pod_template(w)["metadata"]["labels"]["app.kubernetes.io/name"]: _pod(name, w)
        for w in workloads(name)
    }


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_namespace_denies_all_traffic_by_default(name: str) -> None:
    for namespace in _namespaces(name):
        default_deny = [
            p
            for p in of_kind(name, "NetworkPolicy")
            if p["metadata"]["namespace"] == namespace
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert default_deny, namespace


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_network_policy_selects_and_names_peers_that_exist(name: str) -> None:
    pods = list(_pods(name).values())
    namespaces = _namespaces(name)
    for policy in of_kind(name, "NetworkPolicy"):
        label = policy["metadata"]["name"]
        selector = policy["spec"]["podSelector"]
        assert (
            any(selects(selector, pod.labels) for pod in pods)
            or selector.get("matchLabels") in FUTURE_POD_SELECTORS
        ), f"{label}: selects no pod"
        rules = [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]
        for peer in (peer for rule in rules for peer in [*rule.get("from", []), *rule.get("to", [])]):
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer:
                known = any(
                    selects(peer["namespaceSelector"], ns_labels) for ns_labels in namespaces.values()
                )
                expected = peer["namespaceSelector"].get("matchLabels") in EXTERNAL_NAMESPACE_SELECTORS
                assert known or expected, (
                    f"{label}: namespaceSelector {peer['namespaceSelector']} matches nothing"
                )
            else:
                matches = any(
                    pod.namespace == policy["metadata"]["namespace"]
                    and selects(peer["podSelector"], pod.labels)
                    for pod in pods
                )
                future = peer["podSelector"].get("matchLabels") in FUTURE_POD_SELECTORS
                assert matches or future, f"{label}: podSelector {peer['podSelector']} matches no pod"
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port["port"], str):
                    selected = [pod for pod in pods if selects(selector, pod.labels)]
                    assert all(port["port"] in pod.ports for pod in selected), f"{label}: port {port['port']}"


def _outsider(
    namespace: str, labels: dict[str, str] | None = None, namespace_labels: dict[str, str] | None = None
) -> Endpoint:
    """A pod of a namespace not rendered here (monitoring, the data stores, operators' tooling)."""
    return Endpoint(
        namespace, labels or {}, {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})}
    )


# The console's HTTP port is the webhook port too (8080): people come through the ingress controller.
GRPC, METRICS, WEBHOOKS = 50051, 9464, 8080
PUBLIC_ADDRESS = Endpoint("", ip="203.0.113.10")
PRIVATE_ADDRESS = Endpoint("", ip="10.20.30.40")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_grpc_reaches_each_service_from_its_callers_the_console_and_operators_only(name: str) -> None:
    policies = of_kind(name, "NetworkPolicy")
    pods = _pods(name)
    services = {
        n: pod for n, pod in pods.items() if pod.labels.get("app.kubernetes.io/component") == "grpc-service"
    }
    console = Endpoint("billing", {"app.kubernetes.io/component": "console"}, pods["tier"].namespace_labels)
    operators = _outsider("tooling", namespace_labels={"billing-suite/operator-access": "true"})
    stranger = _outsider("default")
    reachable = {
        (caller, callee)
        for caller, source in pods.items()
        for callee, destination in services.items()
        if caller != callee and caller != "console" and allowed(policies, source, destination, GRPC)
    }
    assert reachable == GRPC_CALLS
    for destination in services.values():
        assert allowed(policies, console, destination, GRPC)
        if "console" in pods:
            assert allowed(policies, pods["console"], destination, GRPC)
        assert allowed(policies, operators, destination, GRPC)
        assert not allowed(policies, stranger, destination, GRPC)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_metrics_only_from_monitoring_and_webhooks_only_from_the_ingress_controller(name: str) -> None:
    policies = of_kind(name, "NetworkPolicy")
    pods = _pods(name)
    services = {
        n: pod for n, pod in pods.items() if pod.labels.get("app.kubernetes.io/component") == "grpc-service"
    }
    monitoring, ingress = _outsider("monitoring"), _outsider("ingress-nginx")
    for service, destination in services.items():
        assert allowed(policies, monitoring, destination, METRICS), service
        assert not allowed(policies, monitoring, destination, GRPC), service
        assert not allowed(policies, ingress, destination, METRICS), service
        assert allowed(policies, ingress, destination, WEBHOOKS) == (service == "gateway-adapter"), service
        for source in pods.values():
            assert not allowed(policies, source, destination, METRICS)
            assert not allowed(policies, source, destination, WEBHOOKS)
    assert not allowed(policies, monitoring, services["gateway-adapter"], WEBHOOKS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_people_reach_the_console_through_the_ingress_controller_and_prometheus_its_metrics(
    name: str,
) -> None:
    policies = of_kind(name, "NetworkPolicy")
    pods = _pods(name)
    console = pods["console"]
    monitoring, ingress, stranger = _outsider("monitoring"), _outsider("ingress-nginx"), _outsider("default")
    assert allowed(policies, ingress, console, WEBHOOKS)
    assert allowed(policies, monitoring, console, METRICS)
    assert not allowed(policies, monitoring, console, WEBHOOKS)
    assert not allowed(policies, stranger, console, WEBHOOKS)
    for source in pods.values():
        assert not allowed(policies, source, console, WEBHOOKS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_reach_out_only_to_what_they_need(name: str) -> None:
    policies = of_kind(name, "NetworkPolicy")
    dns = _outsider("kube-system", {"k8s-app": "kube-dns"})
    postgresql = _outsider("data", namespace_labels={"billing-suite/postgresql": "true"})
    redis = _outsider("cache", namespace_labels={"billing-suite/redis": "true"})
    rabbitmq = _outsider("broker", namespace_labels={"billing-suite/rabbitmq": "true"})
    collector = _outsider("observability", namespace_labels={"billing-suite/otlp-collector": "true"})
    for pod_name, pod in _pods(name).items():
        migration = pod.labels["app.kubernetes.io/component"] == "migration"
        # The console keeps no facts: no database at all.
        keeps_facts = pod.labels["app.kubernetes.io/component"] != "console"
        assert allowed(policies, pod, dns, 53), pod_name
        assert allowed(policies, pod, postgresql, 5432) == keeps_facts, pod_name
        assert allowed(policies, pod, postgresql, 6432) == (keeps_facts and not migration), pod_name
        assert allowed(policies, pod, redis, 6379) != migration, pod_name
        assert allowed(policies, pod, rabbitmq, 5672) != migration, pod_name
        assert allowed(policies, pod, collector, 4317) != migration, pod_name
        assert not allowed(policies, pod, postgresql, 6379), pod_name
        assert not allowed(policies, pod, redis, 5432), pod_name
        assert allowed(policies, pod, PUBLIC_ADDRESS, 443) == (pod_name in {"gateway-adapter", "tier"}), (
            pod_name
        )
        assert not allowed(policies, pod, PUBLIC_ADDRESS, 80), pod_name
        assert not allowed(policies, pod, PRIVATE_ADDRESS, 443), pod_name


# ---------------------------------------------------------------------------------------------
# Settings and secrets


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_variable_set_in_deploy_is_read_by_a_settings_class_and_parses(name: str) -> None:
    for workload in workloads(name):
        for container in containers(workload):
            service, prefix, settings_class = service_of(container)
            fields = {f"{prefix}_{f.name.upper()}" for f in dataclasses.fields(settings_class)}
            variables = environment(name, workload, container)
            expanded = {
                match
                for value in variables.values()
                if value is not None
                for match in re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", value)
            }
            unread = set(variables) - fields - LIBRARY_VARIABLES - expanded
            assert unread == set(), f"{workload['metadata']['name']}: nothing reads {sorted(unread)}"
            values = {key: value for key, value in variables.items() if value is not None and key in fields}
            assert load_settings(settings_class, prefix, values).service_name == service


def test_the_secrets_template_has_every_key_the_manifests_read() -> None:
    documents = yaml.safe_load_all((DEPLOY / "secrets" / "secrets.example.yaml").read_text())
    template = {
        doc["metadata"]["name"]: set(doc["stringData"])
        for doc in documents
        if doc and doc["kind"] == "Secret"
    }
    for name in KUSTOMIZATIONS:
        for workload in workloads(name):
            for container in containers(workload):
                for variable in container.get("env", []):
                    ref = variable.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in template.get(ref["name"], set()), f"{name}: {ref}"


def test_every_service_of_services_toml_is_one_folder_of_the_base_and_nothing_else_is() -> None:
    """A service is its folder services/<name>/ plus its entry in services.toml; its manifests are
    deploy/k8s/base/<name>/: a kustomization listed by the base, its ConfigMap from config.env, its image."""
    listed = {service: prefix for service, prefix, *_ in [*SERVICES, CONSOLE]}
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    folders = {
        entry
        for entry in base["resources"]
        if (DEPLOY / "base" / entry / "kustomization.yaml").is_file() and entry != "monitoring"
    }
    assert folders == set(listed), "deploy/k8s/base and services.toml list different services"
    for service, prefix in listed.items():
        folder = DEPLOY / "base" / service
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        assert kustomization["configMapGenerator"] == [{"name": f"{service}-config", "envs": ["config.env"]}]
        assert kustomization["images"] == [{"name": f"billing-{service}", "newTag": "latest"}]
        settings = (folder / "config.env").read_text().splitlines()
        names = {line.split("=", 1)[0] for line in settings if line.strip() and not line.startswith("#")}
        foreign = {n for n in names if not n.startswith(f"{prefix}_")} - LIBRARY_VARIABLES
        assert names and not foreign, f"{service}: config.env sets {sorted(foreign)}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_runs_the_image_built_for_its_own_service(name: str) -> None:
    """deploy/docker/Dockerfile builds one image per service (SERVICE=<name>): billing-<name>."""
    for workload in workloads(name):
        for container in containers(workload):
            service, *_ = service_of(container)
            image = re.split(r"[@]", container["image"])[0]
            repository = re.sub(r":[^/:]+$", "", image).rsplit("/", 1)[-1]
            assert repository == f"billing-{service}", f"{workload['metadata']['name']}: {container['image']}"


def test_dev_runs_every_image_at_the_moving_dev_tag() -> None:
    for workload in workloads("dev"):
        for container in containers(workload):
            image = container["image"]
            assert image.endswith(":dev"), f"{workload['metadata']['name']}: {image}"


def test_the_dockerfile_builds_any_listed_service_and_names_none() -> None:
    """A new service needs no edit of the Dockerfile: SERVICE picks it, the workspace globs its pyproject."""
    dockerfile = (DEPLOY.parent / "docker" / "Dockerfile").read_text()
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert "ARG SERVICE" in instructions
    assert "services/*/pyproject.toml" in instructions
    for service, _, package, *_ in [*SERVICES, CONSOLE]:
        assert f"services/{service}" not in instructions, service
        assert f"{package}.entrypoints" not in instructions, service


def test_prod_pins_images_by_digest_and_wires_no_admin_dsn() -> None:
    for workload in workloads("prod"):
        for container in containers(workload):
            assert re.fullmatch(r"[^@:]+(:\d+)?[^@:]*@sha256:[0-9a-f]{64}", container["image"]), container[
                "image"
            ]
            for variable in container.get("env", []):
                assert not variable["name"].endswith("_DB_ADMIN_URL"), workload["metadata"]["name"]
                ref = variable.get("valueFrom", {}).get("secretKeyRef", {})
                assert ref.get("key") != "database-admin-url", workload["metadata"]["name"]


def test_prod_never_turns_the_test_clock_on() -> None:
    """The suite's test clock moves every service's time (and the console's "today") at an
    operator's call: never in production."""
    for workload in workloads("prod"):
        for container in containers(workload):
            _, prefix, settings_class = service_of(container)
            variables = environment("prod", workload, container)
            assert variables.get(f"{prefix}_TEST_CLOCK") == "false", workload["metadata"]["name"]
            values = {key: value for key, value in variables.items() if value is not None}
            assert not load_settings(settings_class, prefix, values).test_clock, workload["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_only_migration_jobs_hold_the_schema_owners_credentials(name: str) -> None:
    for workload in workloads(name):
        for container in containers(workload):
            names = {variable["name"] for variable in container.get("env", [])}
            owner = {n for n in names if n.endswith(("_DB_MIGRATION_URL", "_DB_ADMIN_URL"))}
            if workload["kind"] in ("Job", "CronJob"):
                assert "--migrate-only" in container["command"]
                assert owner, workload["metadata"]["name"]
            elif not _is_console(workload):
                assert owner == set(), workload["metadata"]["name"]
                values = environment(name, workload, container)
                _, prefix, _ = service_of(container)
                assert values[f"{prefix}_MIGRATE_ON_START"] == "false"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_service_makes_and_drops_its_time_partitions_daily(name: str) -> None:
    cronjobs = of_kind(name, "CronJob")
    for deployment in (d for d in of_kind(name, "Deployment") if not _is_console(d)):  # no database
        command = pod_template(deployment)["spec"]["containers"][0]["command"]
        keeping = [
            job
            for job in cronjobs
            if containers(job)[0]["command"] == [*command, "--migrate-only"]
            and job["spec"]["concurrencyPolicy"] == "Forbid"
            and re.fullmatch(r"\d+ \d+ \* \* \*", job["spec"]["schedule"])
        ]
        assert len(keeping) == 1, deployment["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# The renderer


def _kubectl_objects(folder: Path) -> Iterator[Object]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    output = subprocess.run(  # noqa: S603
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
    )
    return (doc for doc in yaml.safe_load_all(output.stdout) if doc)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_renderer_prints_what_kubectl_kustomize_prints(name: str) -> None:
    def keyed(objects: Any) -> dict[tuple[str, str], Object]:
        return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}

    assert keyed(rendered(name)) == keyed(_kubectl_objects(KUSTOMIZATIONS[name]))

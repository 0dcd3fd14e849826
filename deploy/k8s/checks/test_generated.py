"""The per-service manifests are what billing_devtools.manifests renders from services.toml and each
service's deploy folder, and a new service needs nothing more than its entry and its folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from billing_devtools.manifests import ROOT, DeclarationError, out_of_date, write
from deploy.k8s.checks.kustomize import Object, pod_template, render


def test_every_committed_manifest_is_what_the_generator_renders() -> None:
    problems = out_of_date()
    assert problems == [], "run `make manifests-write`:\n" + "\n".join(problems)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of what the generator reads and writes: services.toml, the deploy folders, deploy/k8s."""
    shutil.copy(ROOT / "services.toml", tmp_path / "services.toml")
    for folder in (ROOT / "services").glob("*/deploy"):
        shutil.copytree(folder, tmp_path / folder.relative_to(ROOT))
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "deploy" / "k8s")
    return tmp_path


def test_a_manifest_edited_by_hand_or_left_over_is_named_and_rendered_again(scratch: Path) -> None:
    deployment = scratch / "deploy/k8s/base/quota/deployment.yaml"
    deployment.write_text(deployment.read_text().replace("maxSurge: 1", "maxSurge: 3"))
    (scratch / "deploy/k8s/base/quota/hpa.yaml").unlink()
    (scratch / "deploy/k8s/base/tier/extra.yaml").write_text("kind: ConfigMap\n")
    assert out_of_date(scratch) == [
        "deploy/k8s/base/quota/deployment.yaml: differs",
        "deploy/k8s/base/quota/hpa.yaml: missing",
        "deploy/k8s/base/tier/extra.yaml: not rendered",
    ]
    write(scratch)
    assert out_of_date(scratch) == []


SIXTH_ENTRY = """
[[grpc]]
name = "invoicing"
package = "invoicing"
prefix = "INVOICING"
port = 50056
metrics_port = 9470
stub = "billing.invoicing.v1.invoicing_pb2_grpc:InvoicingServiceStub"
calls = ["quota"]
"""
SIXTH_DEPLOY = """
description = "invoice documents"
page_tokens = true

[prod]
replicas = [2, 4]
db_pool_max = 5
"""


def _named(objects: list[Object], kind: str, name: str) -> Object:
    matching = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matching) == 1, f"{kind}/{name}: {len(matching)} rendered"
    return matching[0]


def test_a_sixth_service_gets_every_object_from_its_entry_and_its_folder_alone(scratch: Path) -> None:
    with (scratch / "services.toml").open("a") as services_toml:
        services_toml.write(SIXTH_ENTRY)
    folder = scratch / "services/invoicing/deploy"
    folder.mkdir(parents=True)
    (folder / "deploy.toml").write_text(SIXTH_DEPLOY)
    (folder / "config.env").write_text("INVOICING_PDF_TIMEOUT=10s\n")

    write(scratch)

    assert out_of_date(scratch) == []
    for overlay in ("dev", "prod"):
        objects = render(scratch / "deploy/k8s/overlays" / overlay)
        deployment = _named(objects, "Deployment", "invoicing")
        for kind, name in [
            ("Service", "invoicing"),
            ("ServiceAccount", "invoicing"),
            ("PodDisruptionBudget", "invoicing"),
            ("Job", "invoicing-migrate"),
            ("CronJob", "invoicing-partitions"),
            ("NetworkPolicy", "invoicing"),
            ("HorizontalPodAutoscaler", "invoicing"),
        ]:
            _named(objects, kind, name)
        (container,) = pod_template(deployment)["spec"]["containers"]
        assert container["command"] == ["python", "-m", "invoicing.entrypoints.main"]
        image = container["image"]
        assert image == (
            "billing-invoicing:dev"
            if overlay == "dev"
            else "registry.example.com/billing/billing-invoicing@sha256:" + "0" * 64
        )
        (config_name,) = (
            source["configMapRef"]["name"]
            for source in container["envFrom"]
            if source["configMapRef"]["name"].startswith("invoicing-config")
        )
        settings = _named(objects, "ConfigMap", config_name)["data"]
        assert settings["INVOICING_PDF_TIMEOUT"] == "10s"
        assert settings["INVOICING_QUOTA_ADDR"] == "dns:///quota:50051"
        assert settings["INVOICING_TEST_CLOCK"] == ("true" if overlay == "dev" else "false")
        quota_policy = _named(objects, "NetworkPolicy", "quota")
        callers = quota_policy["spec"]["ingress"][0]["from"]
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "invoicing"}}} in callers
    prod = render(scratch / "deploy/k8s/overlays/prod")
    assert _named(prod, "HorizontalPodAutoscaler", "invoicing")["spec"]["maxReplicas"] == 4
    template = yaml.safe_load_all((scratch / "deploy/k8s/secrets/secrets.example.yaml").read_text())
    keys = {
        doc["metadata"]["name"]: set(doc["stringData"]) for doc in template if doc and doc["kind"] == "Secret"
    }
    assert keys["invoicing-secrets"] == {"database-url", "redis-url", "amqp-url", "page-token-keys"}
    assert keys["invoicing-migration"] == {"database-url", "database-admin-url"}
    assert keys["invoicing-token"] == {"token"}


def test_a_service_without_its_deploy_declaration_is_refused_by_name(scratch: Path) -> None:
    with (scratch / "services.toml").open("a") as services_toml:
        services_toml.write(SIXTH_ENTRY)
    with pytest.raises(DeclarationError, match=re.escape("services/invoicing/deploy/deploy.toml is missing")):
        write(scratch)


def test_a_mistyped_deploy_declaration_is_refused_naming_the_key(scratch: Path) -> None:
    declaration = scratch / "services/tier/deploy/deploy.toml"
    declaration.write_text(declaration.read_text().replace("https_egress =", "https_egres ="))
    with pytest.raises(DeclarationError, match=re.escape("unknown keys ['https_egres']")):
        write(scratch)


def test_rendering_again_keeps_the_digests_prod_pins(scratch: Path) -> None:
    prod = scratch / "deploy/k8s/overlays/prod/kustomization.yaml"
    digest = "sha256:" + "ab" * 32
    pinned = "registry.internal/billing-quota"
    prod.write_text(
        prod.read_text().replace(
            "newName: registry.example.com/billing/billing-quota\n    digest: sha256:" + "0" * 64,
            f"newName: {pinned}\n    digest: {digest}",
        )
    )
    write(scratch)
    (quota,) = (
        container
        for obj in render(scratch / "deploy/k8s/overlays/prod")
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "quota"
        for container in pod_template(obj)["spec"]["containers"]
    )
    assert quota["image"] == f"{pinned}@{digest}"

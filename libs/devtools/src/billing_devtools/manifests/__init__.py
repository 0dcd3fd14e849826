"""The Kubernetes manifests of every gRPC service, rendered from services.toml and each service's
own folder, so that a new service is one folder plus one entry.

What every gRPC service gets (Deployment, headless Service, ServiceAccount, PodDisruptionBudget,
migration Job, partition CronJob, NetworkPolicy, HPA, ConfigMap) comes from the templates in
templates/ (`rendering`); what differs lives with the service, in `services/<name>/deploy/`:

- `deploy.toml`: its description, its prod pods and pool, what it reaches outside the suite, its
  own Secret keys, its webhooks (`declarations.Service` has every field);
- `config.env`: its own settings, appended to the ones every service sets;
- any other `*.yaml`: an object of its own, copied as it is (a KEDA `ScaledObject` there replaces
  the HPA).

The rendered files stay committed, so `kubectl apply -k` needs no Python and a review shows what
changes in the cluster. `make manifests` fails naming every file that differs from its rendering;
`make manifests-write` (`python -m billing_devtools.manifests --write`) renders them again.
The console (`[web]`) keeps its hand-written folder deploy/k8s/base/<name>/; it is listed in the
base, the overlays and the Secrets template from here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from billing_devtools.manifests.declarations import DeclarationError, Service, Suite, load
from billing_devtools.manifests.rendering import (
    ZERO_DIGEST,
    base_kustomization,
    dev_kustomization,
    prod_kustomization,
    secrets_template,
    service_files,
)
from billing_devtools.services import SERVICE_LIST

__all__ = ["ROOT", "DeclarationError", "Service", "Suite", "load", "out_of_date", "rendered", "write"]

ROOT = SERVICE_LIST.parent


def rendered(root: Path = ROOT) -> dict[Path, str]:
    """Every file the generator owns, relative to `root`, with the text it should hold."""
    suite = load(root)
    k8s = Path("deploy/k8s")
    files = {}
    for service in suite.services:
        for file_name, text in service_files(suite, service).items():
            files[k8s / "base" / service.name / file_name] = text
    files[k8s / "base" / "kustomization.yaml"] = base_kustomization(suite)
    files[k8s / "overlays" / "dev" / "kustomization.yaml"] = dev_kustomization(suite)
    prod = k8s / "overlays" / "prod" / "kustomization.yaml"
    files[prod] = prod_kustomization(suite, _pinned_images(root / prod))
    files[k8s / "secrets" / "secrets.example.yaml"] = secrets_template(suite)
    return files


def _pinned_images(prod: Path) -> dict[str, dict[str, str]]:
    if not prod.is_file():
        return {}
    images = yaml.safe_load(prod.read_text(encoding="utf-8")).get("images", [])
    return {image["name"]: image for image in images if image.get("digest", ZERO_DIGEST) != ZERO_DIGEST}


def out_of_date(root: Path = ROOT) -> list[str]:
    """What differs from the rendering: `<path>: differs`, `<path>: missing`, `<path>: not rendered`
    (a file of a service's rendered folder that no declaration makes)."""
    files = rendered(root)
    problems = []
    for path, text in sorted(files.items()):
        target = root / path
        if not target.is_file():
            problems.append(f"{path}: missing")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs")
    for path in sorted(_owned_folders_files(root, files)):
        if path not in files:
            problems.append(f"{path}: not rendered")
    return problems


def write(root: Path = ROOT) -> list[Path]:
    """Render every file under `root`, remove what no declaration makes any more; returns what changed."""
    files = rendered(root)
    changed = []
    for path, text in sorted(files.items()):
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in sorted(_owned_folders_files(root, files) - set(files)):
        (root / path).unlink()
        changed.append(path)
    return changed


def _owned_folders_files(root: Path, files: dict[Path, str]) -> set[Path]:
    folders = {path.parent for path in files if path.parent.parent.name == "base"}
    return {
        path.relative_to(root)
        for folder in folders
        if (root / folder).is_dir()
        for path in (root / folder).iterdir()
    }

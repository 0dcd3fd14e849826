"""Render a kustomization the way `kustomize build` does, for the features deploy/k8s uses.

No kustomize can be installed from the package registries a fresh development machine or CI
reaches, so `make lint` renders with this. It knows resources (files and folders), namespace,
labels, configMapGenerator (with kustomize's content hash in the name and the references to it
rewritten), images, and patches (JSON 6902, or strategic merge patches of maps). Anything else in
a kustomization, or a list inside a strategic merge patch, is refused rather than rendered
differently from kustomize; `test_manifests` compares the output with `kubectl kustomize` where
kubectl is installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "images",
    "patches",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not know, or refers to what is not there."""


@dataclass
class _Generated:
    """A generated ConfigMap: its name before the hash suffix, so references can be rewritten."""

    name: str
    obj: Object


@dataclass
class _Build:
    objects: list[Object] = field(default_factory=list)
    generated: list[_Generated] = field(default_factory=list)


def render(folder: Path) -> list[Object]:
    """The objects `kustomize build folder` prints (in no particular order)."""
    build = _build(folder.resolve())
    renames = {}
    for generated in build.generated:
        hashed = f"{generated.name}-{config_map_hash(generated.obj)}"
        renames[generated.name] = hashed
        generated.obj["metadata"]["name"] = hashed
    for obj in build.objects:
        for spec in _pod_specs(obj):
            _rename_config_map_references(spec, renames)
    return build.objects


def _build(folder: Path) -> _Build:
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not know: {sorted(unknown)}")
    build = _Build()
    for entry in kustomization.get("resources", []):
        target = folder / entry
        if target.is_dir():
            inner = _build(target)
            build.objects += inner.objects
            build.generated += inner.generated
        elif target.is_file():
            build.objects += _load(target)
        else:
            raise KustomizeError(f"{path}: resource {entry} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        _generate(folder, generator, build)
    for patch in kustomization.get("patches", []):
        _patch(folder, patch, build.objects)
    if "namespace" in kustomization:
        for obj in build.objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels", []):
        _label(entry, build.objects)
    for image in kustomization.get("images", []):
        _set_image(image, build.objects)
    return build


def _load(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _generate(folder: Path, generator: dict[str, Any], build: _Build) -> None:
    unknown = set(generator) - {"name", "envs", "literals", "files", "behavior", "options"}
    if unknown or set(generator.get("options", {})) - {"labels", "disableNameSuffixHash"}:
        raise KustomizeError(f"configMapGenerator {generator['name']}: unknown fields")
    data: dict[str, str] = {}
    for env_file in generator.get("envs", []):
        data.update(_env_pairs((folder / env_file).read_text()))
    data.update(_env_pairs("\n".join(generator.get("literals", []))))
    for entry in generator.get("files", []):
        key, _, file_name = entry.rpartition("=")
        data[key or Path(file_name).name] = (folder / file_name).read_text()
    behavior = generator.get("behavior", "create")
    existing = next((g for g in build.generated if g.name == generator["name"]), None)
    if behavior == "create":
        if existing:
            raise KustomizeError(f"configMapGenerator {generator['name']} exists already")
        obj: Object = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}}
        labels = generator.get("options", {}).get("labels")
        if labels:
            obj["metadata"]["labels"] = dict(labels)
        obj["data"] = data
        build.objects.append(obj)
        if not generator.get("options", {}).get("disableNameSuffixHash"):
            build.generated.append(_Generated(generator["name"], obj))
    elif behavior in ("merge", "replace"):
        if not existing:
            raise KustomizeError(f"configMapGenerator {generator['name']}: nothing to {behavior}")
        existing.obj["data"] = {**existing.obj.get("data", {}), **data} if behavior == "merge" else data
    else:
        raise KustomizeError(f"configMapGenerator {generator['name']}: behavior {behavior}")


def _env_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise KustomizeError(f"{line!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def config_map_hash(obj: Object) -> str:
    """kustomize's suffix: the SHA-256 of the ConfigMap's data encoded as Go's encoding/json does
    (kustomize hashes the generated map before it has a name), its first ten hex digits with 0, 1,
    3, a and e swapped for letters (no word can form)."""
    encoded = {"data": obj.get("data", {}), "kind": "ConfigMap", "name": ""}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for plain, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(plain, escaped)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _patch(folder: Path, entry: dict[str, Any], objects: list[Object]) -> None:
    if set(entry) - {"path", "patch", "target"}:
        raise KustomizeError(f"patch {entry}: unknown fields")
    body = yaml.safe_load((folder / entry["path"]).read_text() if "path" in entry else entry["patch"])
    target = entry.get("target")
    if isinstance(body, list):
        if not target:
            raise KustomizeError(f"JSON 6902 patch {entry} needs a target")
        for obj in _targets(objects, target):
            for operation in body:
                _json6902(obj, operation)
        return
    target = target or {"kind": body["kind"], "name": body["metadata"]["name"]}
    matched = list(_targets(objects, target))
    if not matched:
        raise KustomizeError(f"patch {entry}: no object matches {target}")
    for obj in matched:
        _merge(obj, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")})


def _targets(objects: list[Object], target: dict[str, Any]) -> Iterator[Object]:
    if set(target) - {"group", "version", "kind", "name"}:
        raise KustomizeError(f"target {target}: unknown fields")
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        if (
            target.get("kind", obj["kind"]) == obj["kind"]
            and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
            and target.get("group", group) == group
            and target.get("version", version) == version
        ):
            yield obj


def _merge(obj: Object, patch: Object) -> None:
    for key, value in patch.items():
        if isinstance(value, list):
            raise KustomizeError(f"a list ({key}) in a strategic merge patch: use a JSON 6902 patch")
        if value is None:
            obj.pop(key, None)
        elif isinstance(value, dict) and isinstance(obj.get(key), dict):
            _merge(obj[key], value)
        else:
            obj[key] = copy.deepcopy(value)


def _json6902(obj: Object, operation: dict[str, Any]) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if op == "add" and isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), copy.deepcopy(operation["value"]))
    elif op in ("add", "replace"):
        if op == "replace" and (last not in node if isinstance(node, dict) else int(last) >= len(node)):
            raise KustomizeError(f"replace {operation['path']}: nothing there")
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise KustomizeError(f"JSON 6902 operation {op} is not supported here")


def _label(entry: dict[str, Any], objects: list[Object]) -> None:
    if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get("includeSelectors"):
        raise KustomizeError(f"labels {entry}: only pairs (and includeTemplates) are supported here")
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeTemplates") and obj["kind"] in POD_TEMPLATE_KINDS:
            template = pod_template(obj).setdefault("metadata", {})
            template.setdefault("labels", {}).update(entry["pairs"])
            if obj["kind"] == "CronJob":
                jobs = obj["spec"]["jobTemplate"].setdefault("metadata", {})
                jobs.setdefault("labels", {}).update(entry["pairs"])


def _set_image(image: dict[str, Any], objects: list[Object]) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"images {image}: unknown fields")
    for obj in objects:
        for spec in _pod_specs(obj):
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                name, tag, digest = _split_image(container["image"])
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{name}@{image['digest']}"
                else:
                    tag = image.get("newTag", tag)
                    container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _split_image(image: str) -> tuple[str, str, str]:
    rest, _, digest = image.partition("@")
    name, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        return rest, "", digest
    return name, tag, digest


def pod_template(obj: Object) -> Object:
    """The pod template of a workload (a CronJob's is inside its job template)."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    template: Object = spec.setdefault("template", {})
    return template


def _pod_specs(obj: Object) -> Iterator[Object]:
    if obj["kind"] in POD_TEMPLATE_KINDS:
        yield pod_template(obj)["spec"]


def _rename_config_map_references(spec: Object, renames: dict[str, str]) -> None:
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref and ref["name"] in renames:
                ref["name"] = renames[ref["name"]]
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {}).get("configMapKeyRef")
            if ref and ref["name"] in renames:
                ref["name"] = renames[ref["name"]]
    for volume in spec.get("volumes", []):
        ref = volume.get("configMap")
        if ref and ref["name"] in renames:
            ref["name"] = renames[ref["name"]]

"""The kustomize subset manifests/ uses, so labkit renders without kubectl and exactly as `kubectl kustomize` does.

Supported: resources (files, directories), components, inline RFC 6902 patches (through `jsonpatch`) with a target,
`namespace`, `images` (name -> newName/newTag), `configurations` that add image field paths, and `sortOptions.order`
(legacy or fifo; read from the top kustomization only, as kustomize does). Anything else is
refused, so the files cannot drift from what kubectl renders (tests/test_manifests.py compares the two).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import yaml

from labkit.manifests.checks import ManifestError

_KUSTOMIZATION_KEYS = set(
    "apiVersion kind resources components patches namespace images configurations sortOptions".split()
)
# Kinds without a namespace, which kustomize's namespace transformer leaves alone (a Namespace is renamed instead).
_CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume", "PriorityClass",
    "StorageClass", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}  # fmt: skip
# kustomize's legacy output order (api/resid/gvk.go), as far as manifests/ needs it: the kinds listed first, in this
# order, then the rest by kind and name (kustomize puts webhook configurations last; manifests/ has none).
_ORDER_FIRST = (
    "Namespace ResourceQuota StorageClass CustomResourceDefinition ServiceAccount PodSecurityPolicy Role ClusterRole "
    "RoleBinding ClusterRoleBinding ConfigMap Secret Endpoints Service LimitRange PriorityClass PersistentVolume "
    "PersistentVolumeClaim Deployment StatefulSet CronJob PodDisruptionBudget"
).split()


def to_yaml(objects: dict | Iterable[dict]) -> str:
    """Multi-document YAML, in the order given (render_all already uses kubectl's order)."""
    objects = [objects] if isinstance(objects, dict) else list(objects)
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=120)


def load_yaml(text: str, where: str = "(document)") -> list[dict]:
    """Objects from multi-document YAML (a `kind: List` is flattened)."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise ManifestError(where, "(file)", f"not valid YAML: {exc}") from None
    for doc in docs:
        if not isinstance(doc, dict):
            raise ManifestError(where, "(root)", f"expected a mapping, got {type(doc).__name__}")
    return [obj for doc in docs for obj in (doc.get("items", []) if doc.get("kind") == "List" else [doc])]


def kustomize_build(directory: str | Path) -> list[dict]:
    """What `kubectl kustomize DIRECTORY` prints, for the kustomize features manifests/ uses."""
    sort = _kustomization(Path(directory)).get("sortOptions") or {"order": "legacy"}
    if not isinstance(sort, dict) or set(sort) != {"order"} or sort["order"] not in ("legacy", "fifo"):
        where = str(Path(directory) / "kustomization.yaml")
        raise ManifestError(where, "sortOptions", "labkit's renderer reads only `order: legacy` or `order: fifo`")
    objects = _build(Path(directory))
    return objects if sort["order"] == "fifo" else sorted(objects, key=_legacy_sort_key)


def _legacy_sort_key(obj: dict) -> tuple:
    kind, meta = obj.get("kind", ""), obj.get("metadata", {})
    rank = _ORDER_FIRST.index(kind) if kind in _ORDER_FIRST else len(_ORDER_FIRST)
    return rank, kind, meta.get("name", ""), meta.get("namespace", "")


def _kustomization(directory: Path) -> dict:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise ManifestError(str(directory), "(directory)", "has no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - _KUSTOMIZATION_KEYS
    if unknown:
        problem = "not supported by labkit's renderer: keep manifests/ to the subset it reads, so kubectl agrees"
        raise ManifestError(str(path), ", ".join(sorted(unknown)), problem)
    return spec


def _build(directory: Path) -> list[dict]:
    spec = _kustomization(directory)
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if not target.exists():
            raise ManifestError(str(directory / "kustomization.yaml"), "resources", f"{entry!r} does not exist")
        objects.extend(_build(target) if target.is_dir() else load_yaml(target.read_text(), str(target)))
    for entry in spec.get("components", []):
        component = (directory / entry).resolve()
        _transform(component, _kustomization(component), objects)
    _transform(directory, spec, objects)
    return objects


def _transform(directory: Path, spec: dict, objects: list[dict]) -> None:
    for patch in spec.get("patches", []):
        operations = yaml.safe_load(patch.get("patch", "null"))
        if not isinstance(operations, list):
            raise ManifestError(str(directory), "patches", "only inline JSON6902 patches (a list of operations)")
        for obj in filter(lambda obj: _target_matches(patch.get("target", {}), obj, directory), objects):
            for op in operations:
                try:
                    jsonpatch.apply_patch(obj, [copy.deepcopy(op)], in_place=True)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                    where, problem = f"{directory.name} patch", f"{op.get('op')}: {exc}"
                    raise ManifestError(where, op.get("path", "?"), problem) from None
    if "namespace" in spec:  # kustomize api/filters/namespace: after patches; ServiceAccount subjects follow
        for obj in objects:
            meta = obj.setdefault("metadata", {})
            if obj["kind"] == "Namespace":
                meta["name"] = spec["namespace"]
            elif obj["kind"] not in _CLUSTER_SCOPED:
                meta["namespace"] = spec["namespace"]
            for subject in obj.get("subjects", []) if obj["kind"] in ("RoleBinding", "ClusterRoleBinding") else []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = spec["namespace"]
    image_paths = [
        field_spec["path"].split("/")
        for conf in spec.get("configurations", [])
        for field_spec in (yaml.safe_load((directory / conf).read_text()) or {}).get("images", [])
    ]
    for image in spec.get("images", []):
        if set(image) - {"name", "newName", "newTag", "digest"}:  # e.g. tagSuffix: refused, not silently ignored
            unknown = sorted(set(image) - {"name", "newName", "newTag", "digest"})
            raise ManifestError(str(directory), "images", f"labkit's renderer does not support {', '.join(unknown)}")
        for obj in objects:
            _set_image(obj, image, image_paths)


def _target_matches(target: dict, obj: dict, where: Path) -> bool:
    if set(target) - {"kind", "name"}:
        raise ManifestError(str(where), "patches.target", "labkit's renderer selects by kind and name only")
    return all(value == (obj["kind"] if key == "kind" else obj["metadata"]["name"]) for key, value in target.items())


def _new_image(old: str, image: dict) -> str:
    """kustomize api/filters/imagetag/updater.go: a new tag or digest replaces both old ones; both: NAME:TAG@DIGEST."""
    name, _, digest = old.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    name, tag = (name[:colon], name[colon + 1 :]) if colon > slash else (name, "")
    if name != image["name"]:
        return old
    if "newTag" in image or "digest" in image:
        tag, digest = str(image.get("newTag", "")), str(image.get("digest", ""))
    return image.get("newName", name) + (tag and f":{tag}") + (digest and f"@{digest}")


def _set_image(node: Any, image: dict, extra_paths: list[list[str]]) -> None:
    """Every containers[]/initContainers[] image at any depth (kustomize's default), plus the configured paths."""
    if isinstance(node, list):
        for child in node:
            _set_image(child, image, [])
    elif isinstance(node, dict):
        for key, child in node.items():
            if key in ("containers", "initContainers") and isinstance(child, list):
                for container in child:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _new_image(container["image"], image)
            _set_image(child, image, [])
        for path in extra_paths:
            parent = node
            for part in path[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and isinstance(parent.get(path[-1]), str):
                parent[path[-1]] = _new_image(parent[path[-1]], image)

"""Kubernetes objects for DeepSpeed jobs, rendered from manifests/ and validated before submission.

manifests/ (kustomize) is the single source of truth: `kubectl apply -k manifests/overlays/<accelerator>` and
`render_all(MpiJobSpec(accelerator=...))` give the same objects (a test compares them with `kubectl kustomize`).
This module reads those files with a small kustomize subset (resources, components, JSON6902 patches, images),
then patches in the spec's parameters and validates every object:
  * MPIJob / TrainJob against structural copies of the upstream CRDs (labkit/schemas, made by scripts/make_schemas.py),
    strict about unknown fields, plus the MPI Operator's own admission rules;
  * core kinds (Namespace, PVC, RBAC) and every embedded pod template against Kubernetes' published schemas
    (`kubernetes-validate`), plus pod rules the schemas cannot express (hugepages, extended resources);
  * no secret material anywhere (literal tokens, keys, secret-looking env values).
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from labkit.errors import ConfigError, LabkitError

ACCELERATORS = ("cpu", "nvidia", "gaudi")
JOB_KINDS = ("interactive", "batch", "trainjob")
# The extended resource each accelerator's pods request (one per slot).
ACCELERATOR_RESOURCE = {"cpu": None, "nvidia": "nvidia.com/gpu", "gaudi": "habana.ai/gaudi"}
KUBERNETES_VERSION = "1.32"          # schemas used for core kinds (kubernetes-validate)
SSH_PORT = 2222                      # sshd in images/ listens here; worker readiness probes check it
SSH_USER, SSH_UID = "mpiuser", 1000  # the images' non-root user
SSH_AUTH_MOUNT_PATH = "/home/mpiuser/.ssh"
SHARED_VOLUME, SHM_VOLUME = "shared", "dshm"   # volume names in manifests/jobs/*
NAME_MAX = 40   # `<name>-worker-<i>` and `<name>-launcher-xxxxx` must stay valid 63-char pod host names

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$")
_IMAGE = re.compile(r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$")


class ManifestError(LabkitError):
    """A rendered or loaded object that the cluster would reject; names the object and the field path."""

    def __init__(self, obj_ref: str, path: str, problem: str, *, more: int = 0):
        self.obj_ref, self.path, self.problem = obj_ref, path, problem
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"{obj_ref}: {path}: {problem}{tail}")


# ----------------------------------------------------------------------------------------------- locating files
def manifests_dir() -> Path:
    """manifests/ of this kit: $LABKIT_MANIFESTS, else next to the package (source checkout, editable install)."""
    env = os.environ.get("LABKIT_MANIFESTS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "manifests")
    for candidate in candidates:
        if (candidate / "base" / "kustomization.yaml").is_file():
            return candidate
    raise ConfigError("LABKIT_MANIFESTS", f"no kit manifests/ directory found (looked in {', '.join(map(str, candidates))})",
                      "run from a labkit source checkout, or set LABKIT_MANIFESTS to its manifests/ directory")


def overlay_dir(accelerator: str, kind: str = "interactive") -> Path:
    """manifests/overlays/<accelerator>[/batch|/trainjob]: the kustomization `kubectl apply -k` uses."""
    if accelerator not in ACCELERATORS:
        raise ConfigError("accelerator", f"{accelerator!r} is not one of {', '.join(ACCELERATORS)}",
                          "pick cpu (kind/minikube), nvidia or gaudi")
    if kind not in JOB_KINDS:
        raise ConfigError("kind", f"{kind!r} is not one of {', '.join(JOB_KINDS)}", "pick interactive, batch or trainjob")
    path = manifests_dir() / "overlays" / accelerator
    return path if kind == "interactive" else path / kind


# ----------------------------------------------------------------------------------------------- kustomize subset
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images", "configurations"}
# kustomize's legacy output order (api/resid/gvk.go); kinds not listed sort after, by kind then name.
_ORDER_FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
                "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
                "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
                "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget"]
_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


def _load_yaml_docs(path: Path) -> list[dict]:
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), "(file)", f"not valid YAML: {exc}") from None


def _kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise ManifestError(str(directory), "(directory)", "has no kustomization.yaml")


def kustomize_build(directory: str | Path) -> list[dict]:
    """What `kubectl kustomize DIRECTORY` prints, for the kustomize features manifests/ uses."""
    objects = _build(Path(directory), expect_kind="Kustomization")
    return sorted(objects, key=_legacy_sort_key)


def _legacy_sort_key(obj: dict):
    kind = obj.get("kind", "")
    if kind in _ORDER_FIRST:
        rank = _ORDER_FIRST.index(kind)
    elif kind in _ORDER_LAST:
        rank = len(_ORDER_FIRST) + 1 + _ORDER_LAST.index(kind)
    else:
        rank = len(_ORDER_FIRST)
    meta = obj.get("metadata", {})
    return rank, kind, meta.get("name", ""), meta.get("namespace", "")


def _build(directory: Path, expect_kind: str) -> list[dict]:
    kfile = _kustomization_file(directory)
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ManifestError(str(kfile), ", ".join(sorted(unknown)),
                            "not supported by labkit's renderer (it reads resources, components, patches, images, "
                            "configurations); keep manifests/ to that subset so labkit and kubectl stay identical")
    kind = spec.get("kind", "Kustomization")
    if kind != expect_kind:
        raise ManifestError(str(kfile), "kind", f"is {kind}, expected {expect_kind}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if not target.exists():
            raise ManifestError(str(kfile), "resources", f"{entry!r} does not exist")
        objects.extend(_build(target, "Kustomization") if target.is_dir() else _load_yaml_docs(target))
    for entry in spec.get("components", []):
        component = (directory / entry).resolve()
        objects.extend(_build(component, "Component"))  # a component's own resources (none in manifests/)
        _apply_transformers(component, _kustomization_file_spec(component), objects)
    _apply_transformers(directory, spec, objects)
    return objects


def _kustomization_file_spec(directory: Path) -> dict:
    return yaml.safe_load(_kustomization_file(directory).read_text()) or {}


def _apply_transformers(directory: Path, spec: dict, objects: list[dict]) -> None:
    for patch in spec.get("patches", []):
        operations = yaml.safe_load(patch["patch"]) if "patch" in patch else _load_yaml_docs(directory / patch["path"])[0]
        if not isinstance(operations, list):
            raise ManifestError(str(directory), "patches", "only JSON6902 patches (a list of operations) are supported")
        for obj in objects:
            if _target_matches(patch.get("target", {}), obj):
                for op in operations:
                    _json_patch(obj, op, where=f"{directory.name} patch")
    image_paths = [fs["path"].split("/") for conf in spec.get("configurations", [])
                   for fs in (yaml.safe_load((directory / conf).read_text()) or {}).get("images", [])
                   if "path" in fs]
    for image in spec.get("images", []):
        for obj in objects:
            _set_image(obj, image, image_paths)


def _target_matches(target: dict, obj: dict) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    meta = obj.get("metadata", {})
    checks = {"kind": obj.get("kind"), "name": meta.get("name"), "namespace": meta.get("namespace"),
              "group": group, "version": version}
    return all(checks[key] == value for key, value in target.items() if key in checks)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ManifestError("patch", path, "a JSON pointer must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json_patch(doc: Any, op: dict, where: str) -> None:
    """One RFC 6902 operation (add, replace, remove, test) applied in place."""
    kind, parts = op.get("op"), _pointer(op.get("path", ""))
    if kind not in ("add", "replace", "remove", "test"):
        raise ManifestError(where, op.get("path", "?"), f"patch op {kind!r} is not supported (use add, replace, "
                            "remove or test)")
    parent = doc
    for part in parts[:-1]:
        try:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError):
            raise ManifestError(where, op["path"], f"{kind}: path does not exist") from None
    last = parts[-1]
    if isinstance(parent, list):
        if not (last == "-" or last.isdigit()):
            raise ManifestError(where, op["path"], f"{last!r} is not a list index")
        index = len(parent) if last == "-" else int(last)
        if index > len(parent) or (kind != "add" and index >= len(parent)):
            raise ManifestError(where, op["path"], f"{kind}: index {index} is out of range")
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index]
        elif kind == "test" and parent[index] != op["value"]:
            raise ManifestError(where, op["path"], "test failed")
    else:
        if kind in ("replace", "remove", "test") and last not in parent:
            raise ManifestError(where, op["path"], f"{kind}: path does not exist")
        if kind in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        elif kind == "test" and parent[last] != op["value"]:
            raise ManifestError(where, op["path"], "test failed")


def _split_image(ref: str) -> tuple[str, str]:
    """('repo/name', ':tag' or '@digest' or '')."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return (ref[:colon], ref[colon:]) if colon > slash else (ref, "")


def _new_image(old: str, image: dict) -> str | None:
    name, suffix = _split_image(old)
    if name != image["name"]:
        return None
    if "digest" in image:
        suffix = "@" + image["digest"]
    elif "newTag" in image:
        suffix = ":" + str(image["newTag"])
    return image.get("newName", name) + suffix


def _set_image(node: Any, image: dict, extra_paths: list[list[str]]) -> None:
    # Default field specs: every containers[]/initContainers[] image at any depth (kustomize's behaviour).
    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key in ("containers", "initContainers") and isinstance(child, list):
                    for container in child:
                        if isinstance(container, dict) and isinstance(container.get("image"), str):
                            container["image"] = _new_image(container["image"], image) or container["image"]
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)
    walk(node)
    for path in extra_paths:
        parent = node
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), str):
            parent[path[-1]] = _new_image(parent[path[-1]], image) or parent[path[-1]]


# ----------------------------------------------------------------------------------------------- the job spec
@dataclass
class MpiJobSpec:
    """Parameters of one DeepSpeed job. Fields left None take the overlay's value (manifests/overlays/<accelerator>)."""

    name: str = "deepspeed-interactive"        # DNS-1035 label, <= 40 chars; left at this default, batch and
                                               # trainjob renders keep their own (deepspeed-batch, deepspeed-trainjob)
    namespace: str = "workloads"
    image: str | None = None                   # None: the overlay's image (images/images.yaml)
    workers: int = 2                           # worker pods
    slots_per_worker: int | None = None        # GPUs/HPUs per worker (nvidia/gaudi), CPU ranks per worker (cpu)
    accelerator: str = "cpu"                   # cpu | nvidia | gaudi -> manifests/overlays/<accelerator>
    launcher_command: list[str] | None = None  # None: `sleep infinity` (interactive) or the overlay's training command
    deadline_seconds: int = 4 * 3600           # runPolicy.activeDeadlineSeconds: ends forgotten interactive jobs
    ttl_seconds_after_finished: int = 600
    pvc_name: str = "labkit-shared"
    storage_class: str | None = None           # None: the overlay's (nfs-client); "" : the cluster's default class
    storage_size: str = "20Gi"
    cpu: str | None = None                     # per-worker cpu request = limit, e.g. "4"
    memory: str | None = None                  # per-worker memory request = limit, e.g. "32Gi"
    hugepages_2mi: str | None = None           # gaudi only: per-worker hugepages-2Mi (request = limit)
    shm_size: str | None = None                # size limit of the memory-backed /dev/shm
    hf_token_secret: str | None = "hf-token"   # name of an existing Secret with key `token` (never a value); None: no token

    # ---- validation: one ConfigError naming the field, before anything is rendered or submitted
    def validate(self) -> None:
        _check_name("name", self.name, _DNS1035, "a DNS-1035 label: lower-case letters, digits, '-', starting "
                    "with a letter", max_len=NAME_MAX, example="deepspeed-interactive")
        _check_name("namespace", self.namespace, _DNS1123_LABEL, "a DNS-1123 label", max_len=63, example="workloads")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError("accelerator", f"{self.accelerator!r} is not one of {', '.join(ACCELERATORS)}",
                              "pick cpu (kind/minikube, no accelerators), nvidia or gaudi")
        if self.image is not None and (not isinstance(self.image, str) or not _IMAGE.match(self.image)):
            raise ConfigError("image", f"{self.image!r} is not an image reference",
                              "use REGISTRY/REPOSITORY:TAG, e.g. ghcr.io/labkit/deepspeed:<tag>, or None for the default")
        _check_int("workers", self.workers, 1, 512)
        if self.slots_per_worker is not None:
            top = 8 if self.accelerator == "gaudi" else 64
            _check_int("slots_per_worker", self.slots_per_worker, 1, top,
                       extra="a Gaudi node has 8 HPUs" if self.accelerator == "gaudi" else "")
        if self.launcher_command is not None:
            if (not isinstance(self.launcher_command, (list, tuple)) or not self.launcher_command
                    or not all(isinstance(part, str) and part for part in self.launcher_command)):
                raise ConfigError("launcher_command", f"{self.launcher_command!r} is not a non-empty list of strings",
                                  'pass an argv list, e.g. ["sleep", "infinity"] or ["deepspeed", "--hostfile", ...]')
            leak = find_secret_material(" ".join(self.launcher_command))
            if leak:
                raise ConfigError("launcher_command", f"contains what looks like a secret ({leak[0]})",
                                  "pass secrets through a Kubernetes Secret (hf_token_secret), never on the command line")
        _check_int("deadline_seconds", self.deadline_seconds, 60, 30 * 24 * 3600,
                   extra="it stops the job (and frees its accelerators) after this many seconds")
        _check_int("ttl_seconds_after_finished", self.ttl_seconds_after_finished, 0, 30 * 24 * 3600)
        _check_name("pvc_name", self.pvc_name, _DNS1123_SUBDOMAIN, "a DNS-1123 subdomain", max_len=253,
                    example="labkit-shared")
        if self.storage_class not in (None, ""):
            _check_name("storage_class", self.storage_class, _DNS1123_SUBDOMAIN, "a DNS-1123 subdomain",
                        max_len=253, example="nfs-client")
        for name in ("storage_size", "cpu", "memory", "hugepages_2mi", "shm_size"):
            value = getattr(self, name)
            if (value is not None or name == "storage_size") and (not isinstance(value, str) or not _QUANTITY.match(value)):
                raise ConfigError(name, f"{value!r} is not a Kubernetes quantity",
                                  'use a string like "4", "500m", "16Gi" (or None for the overlay\'s value)')
        if self.hugepages_2mi is not None and self.accelerator != "gaudi":
            raise ConfigError("hugepages_2mi", f"is only used by the gaudi overlay, not {self.accelerator}",
                              "leave it None, or set accelerator='gaudi'")
        if self.hf_token_secret is not None:
            if find_secret_material(self.hf_token_secret):
                raise ConfigError("hf_token_secret", "looks like a token value, not a Secret name",
                                  "create a Secret (kubectl -n NS create secret generic hf-token --from-literal=token=...) "
                                  "and pass its name, e.g. 'hf-token'")
            _check_name("hf_token_secret", self.hf_token_secret, _DNS1123_SUBDOMAIN, "a Secret name (DNS-1123 "
                        "subdomain)", max_len=253, example="hf-token")

    def resolved(self, kind: str = "interactive") -> "MpiJobSpec":
        """A copy with every None taken from the overlay (image, slots, cpu, memory, command, storage class...)."""
        self.validate()
        objects = kustomize_build(overlay_dir(self.accelerator, kind))
        values = _values_from_job(_job_object(objects), self.accelerator)
        pvc = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
        values["storage_class"] = pvc["spec"].get("storageClassName", "")
        return replace(self, **{k: v for k, v in values.items() if getattr(self, k) is None})

    @classmethod
    def from_overlay(cls, accelerator: str = "cpu", kind: str = "interactive") -> "MpiJobSpec":
        """The spec whose render equals the overlay's files exactly (every field read from manifests/)."""
        objects = kustomize_build(overlay_dir(accelerator, kind))
        job = _job_object(objects)
        meta = job["metadata"]
        pvc = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
        values = _values_from_job(job, accelerator)
        if job["kind"] == "MPIJob":
            values["workers"] = job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
            policy = job["spec"].get("runPolicy", {})
            values["deadline_seconds"] = policy.get("activeDeadlineSeconds")
            values["ttl_seconds_after_finished"] = policy.get("ttlSecondsAfterFinished")
        else:
            values["workers"] = job["spec"]["trainer"]["numNodes"]
            values["deadline_seconds"] = job["spec"].get("activeDeadlineSeconds")
        values = {k: v for k, v in values.items() if v is not None}
        return cls(name=meta["name"], namespace=meta["namespace"], accelerator=accelerator,
                   pvc_name=pvc["metadata"]["name"], storage_class=pvc["spec"].get("storageClassName", ""),
                   storage_size=pvc["spec"]["resources"]["requests"]["storage"],
                   hf_token_secret=_hf_secret_name(job), **values)


def _check_name(field_name: str, value: Any, pattern: re.Pattern, what: str, *, max_len: int, example: str) -> None:
    if isinstance(value, str) and len(value) > max_len:
        raise ConfigError(field_name, f"{value[:20]!r}... has {len(value)} characters, more than {max_len}",
                          f"use a shorter name, like {example!r}")
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(field_name, f"{value!r} is not {what}", f"use something like {example!r}")


def _check_int(field_name: str, value: Any, low: int, high: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        why = f" ({extra})" if extra else ""
        raise ConfigError(field_name, f"{value!r} is not a whole number from {low} to {high}{why}",
                          f"set {field_name} to an integer in [{low}, {high}]")


def _job_object(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] in ("MPIJob", "TrainJob"))


def _worker_container(job: dict) -> dict:
    if job["kind"] == "TrainJob":
        return job["spec"]["trainer"]
    return job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]


def _resources(job: dict) -> dict:
    container = _worker_container(job)
    return container.get("resourcesPerNode" if job["kind"] == "TrainJob" else "resources", {})


def _values_from_job(job: dict, accelerator: str) -> dict:
    """Parameter values an overlay's job carries, in MpiJobSpec field names."""
    requests = _resources(job).get("requests", {})
    if job["kind"] == "MPIJob":
        launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
        slots = job["spec"].get("slotsPerWorker", 1)
        image, command = launcher["image"], launcher.get("args") or launcher.get("command")
        shm = next((v["emptyDir"].get("sizeLimit") for v in
                    job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"].get("volumes", [])
                    if v["name"] == SHM_VOLUME), None)
    else:
        trainer = job["spec"]["trainer"]
        slots, image, command, shm = trainer.get("numProcPerNode", 1), trainer["image"], trainer.get("command"), None
    return {"image": image, "slots_per_worker": slots, "launcher_command": list(command) if command else None,
            "cpu": _str_or_none(requests.get("cpu")), "memory": _str_or_none(requests.get("memory")),
            "hugepages_2mi": _str_or_none(requests.get("hugepages-2Mi")) if accelerator == "gaudi" else None,
            "shm_size": _str_or_none(shm)}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _hf_secret_name(job: dict) -> str | None:
    for container in _all_containers(job):
        for env in container.get("env", []):
            if env.get("name") == "HF_TOKEN":
                return env.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
    return None


def _all_containers(job: dict) -> list[dict]:
    if job["kind"] == "TrainJob":
        return [job["spec"]["trainer"]]
    return [c for replica in job["spec"]["mpiReplicaSpecs"].values()
            for c in replica["template"]["spec"].get("containers", [])]


def _pod_specs(job: dict) -> dict[str, dict]:
    if job["kind"] != "MPIJob":
        return {}
    return {role: replica["template"]["spec"] for role, replica in job["spec"]["mpiReplicaSpecs"].items()}


# ----------------------------------------------------------------------------------------------- rendering
def render_all(spec: MpiJobSpec, kind: str = "interactive") -> list[dict]:
    """Every object `kubectl apply -k manifests/overlays/<accelerator>[/<kind>]` creates, with spec's parameters."""
    spec.validate()
    objects = kustomize_build(overlay_dir(spec.accelerator, kind))
    for obj in objects:
        _apply_common(obj, spec)
        if obj["kind"] == "MPIJob":
            _apply_mpijob(obj, spec)
        elif obj["kind"] == "TrainJob":
            _apply_trainjob(obj, spec)
    for obj in objects:
        validate_object(obj)
    return objects


def render_mpijob(spec: MpiJobSpec, kind: str = "interactive") -> dict:
    """The MPIJob alone (interactive or batch), validated."""
    if kind not in ("interactive", "batch"):
        raise ConfigError("kind", f"{kind!r} does not render an MPIJob", "use interactive or batch")
    return _job_object(render_all(spec, kind))


def render_trainjob(spec: MpiJobSpec) -> dict:
    """The Kubeflow Trainer v2 TrainJob (runtime deepspeed-distributed) for the same parameters, validated."""
    return _job_object(render_all(spec, "trainjob"))


def _apply_common(obj: dict, spec: MpiJobSpec) -> None:
    meta = obj.setdefault("metadata", {})
    if obj["kind"] == "Namespace":
        meta["name"] = spec.namespace
        return
    if "namespace" in meta:
        meta["namespace"] = spec.namespace
    for subject in obj.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["namespace"] = spec.namespace
    if obj["kind"] == "PersistentVolumeClaim":
        meta["name"] = spec.pvc_name
        obj["spec"]["resources"]["requests"]["storage"] = spec.storage_size
        if spec.storage_class == "":
            obj["spec"].pop("storageClassName", None)
        elif spec.storage_class is not None:
            obj["spec"]["storageClassName"] = spec.storage_class


def _set_env_secret(container: dict, secret: str | None) -> None:
    env = container.get("env", [])
    for entry in list(env):
        if entry.get("name") == "HF_TOKEN":
            if secret is None:
                env.remove(entry)
            else:
                entry["valueFrom"]["secretKeyRef"]["name"] = secret


def _set_resources(resources: dict, spec: MpiJobSpec) -> None:
    """cpu/memory/hugepages as request = limit; the accelerator resource follows slots_per_worker."""
    accel = ACCELERATOR_RESOURCE[spec.accelerator]
    for section in ("requests", "limits"):
        values = resources.setdefault(section, {})
        if spec.cpu is not None:
            values["cpu"] = spec.cpu
        if spec.memory is not None:
            values["memory"] = spec.memory
        if spec.hugepages_2mi is not None:
            values["hugepages-2Mi"] = spec.hugepages_2mi
        if accel and spec.slots_per_worker is not None:
            values[accel] = spec.slots_per_worker


def _apply_name(job: dict, spec: MpiJobSpec) -> None:
    if spec.name != MpiJobSpec.name:
        job["metadata"]["name"] = spec.name


def _apply_mpijob(job: dict, spec: MpiJobSpec) -> None:
    _apply_name(job, spec)
    body = job["spec"]
    if spec.slots_per_worker is not None:
        body["slotsPerWorker"] = spec.slots_per_worker
    body["runPolicy"]["activeDeadlineSeconds"] = spec.deadline_seconds
    body["runPolicy"]["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    replicas = body["mpiReplicaSpecs"]
    replicas["Worker"]["replicas"] = spec.workers
    if spec.launcher_command is not None:
        # args, not command: the image's entrypoint waits for the workers' DNS names before running it.
        replicas["Launcher"]["template"]["spec"]["containers"][0]["args"] = list(spec.launcher_command)
    _set_resources(replicas["Worker"]["template"]["spec"]["containers"][0].setdefault("resources", {}), spec)
    for role, pod in _pod_specs(job).items():
        for volume in pod.get("volumes", []):
            if volume["name"] == SHARED_VOLUME:
                volume["persistentVolumeClaim"]["claimName"] = spec.pvc_name
            if volume["name"] == SHM_VOLUME and role == "Worker" and spec.shm_size is not None:
                volume["emptyDir"]["sizeLimit"] = spec.shm_size
        for container in pod.get("containers", []):
            if spec.image is not None:
                container["image"] = spec.image
            _set_env_secret(container, spec.hf_token_secret)


def _apply_trainjob(job: dict, spec: MpiJobSpec) -> None:
    _apply_name(job, spec)
    job["spec"]["activeDeadlineSeconds"] = spec.deadline_seconds
    trainer = job["spec"]["trainer"]
    trainer["numNodes"] = spec.workers
    if spec.slots_per_worker is not None:
        trainer["numProcPerNode"] = spec.slots_per_worker
    if spec.image is not None:
        trainer["image"] = spec.image
    if spec.launcher_command is not None:
        trainer["command"] = list(spec.launcher_command)
    _set_resources(trainer.setdefault("resourcesPerNode", {}), spec)
    _set_env_secret(trainer, spec.hf_token_secret)


def to_yaml(objects: dict | Iterable[dict]) -> str:
    """Multi-document YAML, in the order given (render_all already uses kubectl's order)."""
    if isinstance(objects, dict):
        objects = [objects]
    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False, width=120)


def load_yaml(text: str) -> list[dict]:
    """Objects from multi-document YAML (a `kind: List` is flattened)."""
    out: list[dict] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if not isinstance(doc, dict):
            raise ManifestError("(document)", "(root)", f"expected a mapping, got {type(doc).__name__}")
        out.extend(doc.get("items", []) if doc.get("kind") == "List" else [doc])
    return out


# ----------------------------------------------------------------------------------------------- secrets
_SECRET_PATTERNS = [
    ("a PEM private key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")),
    ("an OpenSSH public/private key", re.compile(r"\b(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+) AAAA[0-9A-Za-z+/]{20,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("a GitHub token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")),
    ("a Slack token", re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}")),
    ("an inline password/token assignment",
     re.compile(r"(?i)\b(password|passwd|api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token)\s*[=:]\s*['\"]?[^\s'\"$]{8,}")),
]
_SECRET_ENV_NAME = re.compile(r"(?i)(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|PRIVATE_?KEY|CREDENTIALS?)")


def find_secret_material(text: str) -> list[str]:
    """Descriptions of anything in `text` that looks like key material or a credential (empty list: clean)."""
    return [what for what, pattern in _SECRET_PATTERNS if pattern.search(text)]


def _check_secrets(obj: dict, ref: str) -> None:
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        raise ManifestError(ref, "data", "a Secret with values must not be rendered or committed; create it with "
                            "kubectl create secret ... and reference it by name")
    leaks = find_secret_material(json.dumps(obj))
    if leaks:
        raise ManifestError(ref, "(any field)", f"contains what looks like {leaks[0]}; reference a Secret instead")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("env"), list):
                for i, env in enumerate(node["env"]):
                    if isinstance(env, dict) and _SECRET_ENV_NAME.search(str(env.get("name", ""))) and env.get("value"):
                        raise ManifestError(ref, f"{path}.env[{i}].value",
                                            f"{env['name']} has a literal value; use valueFrom.secretKeyRef")
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")
    walk(obj, "")


# ----------------------------------------------------------------------------------------------- validation
@functools.lru_cache(maxsize=None)
def _crd_validators() -> dict[tuple[str, str], Any]:
    import jsonschema

    int_limits = {"int32": 2**31 - 1, "int64": 2**63 - 1}
    checker = jsonschema.FormatChecker()
    for fmt, top in int_limits.items():
        checker.checks(fmt)(lambda value, top=top: not isinstance(value, int) or -top - 1 <= value <= top)
    out = {}
    for path in sorted((Path(__file__).parent / "schemas").glob("*.json")):
        doc = json.loads(path.read_text())
        schema = _strict(doc["schema"])
        # The API server fills metadata itself; check the parts a manifest sets in _check_metadata.
        schema["properties"]["metadata"] = {"type": "object"}
        out[(doc["apiVersion"], doc["kind"])] = jsonschema.Draft7Validator(schema, format_checker=checker)
    return out


def _strict(node: Any) -> Any:
    """Reject unknown fields as `kubectl apply` (strict field validation) does: a typo must not vanish silently."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _path_text(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def _error_text(error) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} (check the spelling)"
    if error.validator == "pattern" and "KMGTPE" in str(error.validator_value):
        return f"{error.instance!r} is not a Kubernetes quantity (e.g. \"4\", \"500m\", \"16Gi\")"
    if error.validator == "anyOf" and len(str(error.instance)) < 60:
        return f"{error.instance!r} is neither an integer nor a string"
    return error.message if len(error.message) < 300 else error.message[:300] + "..."


def object_ref(obj: dict) -> str:
    return f"{obj.get('kind', '?')} {obj.get('metadata', {}).get('name', '?')}"


def validate_object(obj: dict) -> None:
    """Raise ManifestError naming the first field path the cluster (or its operators) would reject."""
    ref = object_ref(obj)
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj.get(key):
            raise ManifestError(ref, key, "missing")
    _check_metadata(obj, ref)
    _check_secrets(obj, ref)
    validator = _crd_validators().get((obj["apiVersion"], obj["kind"]))
    if validator is not None:
        errors = sorted(validator.iter_errors(obj), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
        if errors:
            raise ManifestError(ref, _path_text(errors[0].absolute_path), _error_text(errors[0]), more=len(errors) - 1)
        if obj["kind"] == "MPIJob":
            _check_mpijob(obj, ref)
        elif obj["kind"] == "TrainJob":
            _check_trainjob(obj, ref)
        return
    if obj["apiVersion"].startswith(("kubeflow.org/", "trainer.kubeflow.org/")):
        known = ", ".join(f"{k} {v}" for v, k in sorted(_crd_validators()))
        raise ManifestError(ref, "apiVersion", f"{obj['apiVersion']} {obj['kind']} is not a version labkit knows "
                            f"({known}); regenerate labkit/schemas with scripts/make_schemas.py")
    if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
        raise ManifestError(ref, "kind", "the kit grants nothing cluster-wide; use a namespaced Role/RoleBinding")
    _validate_core(obj, ref, "")


def _check_metadata(obj: dict, ref: str) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ManifestError(ref, "metadata", "missing")
    name = meta.get("name")
    if not isinstance(name, str) or not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        raise ManifestError(ref, "metadata.name", f"{name!r} is not a valid object name (DNS-1123 subdomain)")
    namespace = meta.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _DNS1123_LABEL.match(namespace)):
        raise ManifestError(ref, "metadata.namespace", f"{namespace!r} is not a DNS-1123 label")
    for section in ("labels", "annotations"):
        for key, value in (meta.get(section) or {}).items():
            if not isinstance(value, str):
                raise ManifestError(ref, f"metadata.{section}.{key}", f"{value!r} must be a string (quote it)")


def _validate_core(obj: dict, ref: str, prefix: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise ManifestError(ref, "kind", f"no published Kubernetes {KUBERNETES_VERSION} schema for "
                            f"{obj['apiVersion']} {obj['kind']}") from None
    except kubernetes_validate.ValidationError as exc:
        path = _path_text(exc.path)
        if prefix:
            path = prefix + path[len("spec"):] if path.startswith("spec") else f"{prefix}.{path}"
        problem = exc.message
        if exc.validator == "additionalProperties":
            problem = exc.message.replace("Additional properties are not allowed", "unknown field") + " (check the spelling)"
        raise ManifestError(ref, path, problem) from None


def _check_pod_spec(pod: dict, ref: str, path: str, *, namespace: str) -> None:
    """Pod rules the schemas cannot express, then the published Pod schema itself."""
    pod_obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template", "namespace": namespace},
               "spec": pod}
    _validate_core(pod_obj, ref, path)
    volumes = {v.get("name") for v in pod.get("volumes", [])}
    names = set()
    for i, container in enumerate(pod.get("containers", [])):
        cpath = f"{path}.containers[{i}]"
        name = container.get("name", "")
        if not _DNS1123_LABEL.match(name) or name in names:
            raise ManifestError(ref, f"{cpath}.name", f"{name!r} must be a unique DNS-1123 label")
        names.add(name)
        if not container.get("image"):
            raise ManifestError(ref, f"{cpath}.image", "missing")
        for j, mount in enumerate(container.get("volumeMounts", [])):
            if mount.get("name") not in volumes:
                raise ManifestError(ref, f"{cpath}.volumeMounts[{j}].name",
                                    f"{mount.get('name')!r} is not a volume of this pod (volumes: {sorted(volumes)})")
        _check_resources(container.get("resources", {}), ref, f"{cpath}.resources")


def _check_resources(resources: dict, ref: str, path: str) -> None:
    requests, limits = resources.get("requests", {}) or {}, resources.get("limits", {}) or {}
    for key in set(requests) | set(limits):
        if key.startswith("hugepages-"):
            if str(requests.get(key)) != str(limits.get(key)):
                raise ManifestError(ref, f"{path}.requests.{key}", f"hugepages request ({requests.get(key)}) must "
                                    f"equal the limit ({limits.get(key)})")
            if not ({"cpu", "memory"} & (set(requests) | set(limits))):
                raise ManifestError(ref, f"{path}.requests", f"{key} needs a cpu or memory request as well")
        elif "/" in key and not key.startswith("kubernetes.io/"):
            # Extended resources (nvidia.com/gpu, habana.ai/gaudi): whole numbers, request == limit, never overcommitted.
            for section, values in (("requests", requests), ("limits", limits)):
                if key in values and not re.fullmatch(r"\d+", str(values[key])):
                    raise ManifestError(ref, f"{path}.{section}.{key}", f"{values[key]!r} must be a whole number")
            if key in requests and key in limits and str(requests[key]) != str(limits[key]):
                raise ManifestError(ref, f"{path}.requests.{key}", "must equal the limit (extended resources "
                                    "cannot be overcommitted)")
            if key in requests and key not in limits:
                raise ManifestError(ref, f"{path}.limits.{key}", "missing: extended resources need a limit")


def _check_mpijob(job: dict, ref: str) -> None:
    """The MPI Operator's admission rules (pkg/apis/kubeflow/validation) and the kit's SSH contract."""
    name, spec = job["metadata"]["name"], job["spec"]
    if not _DNS1035.match(name):
        raise ManifestError(ref, "metadata.name", f"{name!r} must be a DNS-1035 label (the operator names a "
                            "Service after it)")
    replicas = spec["mpiReplicaSpecs"]
    workers = replicas.get("Worker", {}).get("replicas", 1)
    host = f"{name}-worker-{max(workers, 1) - 1}"
    if len(host) > 63:
        raise ManifestError(ref, "metadata.name", f"worker host name {host!r} would exceed 63 characters; use a "
                            f"name of at most {NAME_MAX} characters")
    if "Launcher" not in replicas:
        raise ManifestError(ref, "spec.mpiReplicaSpecs.Launcher", "missing (an MPIJob needs exactly one launcher)")
    unknown = set(replicas) - {"Launcher", "Worker"}
    if unknown:
        raise ManifestError(ref, f"spec.mpiReplicaSpecs.{sorted(unknown)[0]}", "only Launcher and Worker exist")
    for role, replica in replicas.items():
        path = f"spec.mpiReplicaSpecs.{role}"
        if "replicas" not in replica:
            raise ManifestError(ref, f"{path}.replicas", "missing")
        if replica.get("restartPolicy") not in ("Never", "OnFailure"):
            raise ManifestError(ref, f"{path}.restartPolicy", f"{replica.get('restartPolicy')!r} is not supported "
                                "(Never or OnFailure)")
        if not replica.get("template", {}).get("spec", {}).get("containers"):
            raise ManifestError(ref, f"{path}.template.spec.containers", "must define at least one container")
    if replicas["Launcher"]["replicas"] != 1:
        raise ManifestError(ref, "spec.mpiReplicaSpecs.Launcher.replicas", "must be 1")
    if "Worker" in replicas and replicas["Worker"]["replicas"] < 1:
        raise ManifestError(ref, "spec.mpiReplicaSpecs.Worker.replicas", "must be greater than or equal to 1")
    if spec.get("slotsPerWorker", 1) < 1:
        raise ManifestError(ref, "spec.slotsPerWorker", "must be at least 1")
    if spec.get("mpiImplementation", "OpenMPI") not in ("OpenMPI", "Intel"):
        raise ManifestError(ref, "spec.mpiImplementation", "the operator accepts OpenMPI or Intel")
    policy = spec.get("runPolicy", {})
    if policy.get("cleanPodPolicy", "None") not in ("None", "Running", "All"):
        raise ManifestError(ref, "spec.runPolicy.cleanPodPolicy", "must be None, Running or All")
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if policy.get(key, 0) < 0:
            raise ManifestError(ref, f"spec.runPolicy.{key}", "must be non-negative")
    if spec.get("launcherCreationPolicy", "AtStartup") not in ("AtStartup", "WaitForWorkersReady"):
        raise ManifestError(ref, "spec.launcherCreationPolicy", "must be AtStartup or WaitForWorkersReady")
    for role, pod in _pod_specs(job).items():
        _check_pod_spec(pod, ref, f"spec.mpiReplicaSpecs.{role}.template.spec",
                        namespace=job["metadata"].get("namespace", "default"))
    _check_ssh_contract(job, ref)


def _check_ssh_contract(job: dict, ref: str) -> None:
    """The kit's images run sshd as mpiuser on 2222: the job must mount keys and probe where they are."""
    spec = job["spec"]
    if spec.get("sshAuthMountPath", "/root/.ssh") != SSH_AUTH_MOUNT_PATH:
        raise ManifestError(ref, "spec.sshAuthMountPath", f"must be {SSH_AUTH_MOUNT_PATH} (the kit's images run "
                            f"sshd as {SSH_USER}, uid {SSH_UID})")
    worker = spec["mpiReplicaSpecs"].get("Worker")
    if not worker:
        return
    pod = worker["template"]["spec"]
    container = pod["containers"][0]
    probe = (container.get("readinessProbe") or {}).get("tcpSocket", {}).get("port")
    if spec.get("launcherCreationPolicy") == "WaitForWorkersReady" and probe is None:
        raise ManifestError(ref, "spec.mpiReplicaSpecs.Worker.template.spec.containers[0].readinessProbe",
                            "WaitForWorkersReady needs a readiness probe (tcpSocket on the sshd port)")
    if probe is not None and probe not in (SSH_PORT, "ssh"):
        raise ManifestError(ref, "spec.mpiReplicaSpecs.Worker.template.spec.containers[0].readinessProbe.tcpSocket"
                            ".port", f"{probe} is not the images' sshd port {SSH_PORT}")
    uid = (container.get("securityContext") or {}).get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
    if uid is not None and uid != SSH_UID:
        raise ManifestError(ref, "spec.mpiReplicaSpecs.Worker.template.spec.securityContext.runAsUser",
                            f"{uid} is not the images' {SSH_USER} uid {SSH_UID}")


def _check_trainjob(job: dict, ref: str) -> None:
    spec = job["spec"]
    trainer = spec.get("trainer", {})
    if trainer.get("numNodes", 1) < 1:
        raise ManifestError(ref, "spec.trainer.numNodes", "must be at least 1")
    _check_resources(trainer.get("resourcesPerNode", {}), ref, "spec.trainer.resourcesPerNode")


def validate_objects(objects: Iterable[dict]) -> None:
    for obj in objects:
        validate_object(obj)


def spec_fields() -> list[str]:
    return [f.name for f in fields(MpiJobSpec)]

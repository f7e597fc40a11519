"""JobSpec, the parameters of one DeepSpeed job, and the objects it renders from manifests/ (the one source of truth).

`kubectl apply -k manifests/overlays/<accelerator>[/<kind>]` and `render_all(JobSpec(accelerator=...), kind)` give the
same objects; the spec's fields go where _FIELD_PATHS says (the same table reads an overlay's values back).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from labkit import shared_volume
from labkit.devices import ACCELERATOR_RESOURCE, ACCELERATORS
from labkit.errors import ConfigError, check_choice, check_int
from labkit.manifests.checks import (
    DNS1035,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    NAME_MAX,
    checkpoint_secret,
    find_secret_material,
    pod_templates,
    validate_objects,
    value_at,
)
from labkit.manifests.kustomize import kustomize_build

OVERLAY_KINDS = ("interactive", "batch", "trainjob")  # manifests/overlays/<accelerator>[/batch|/trainjob]
LAB_KIND = "lab"  # render_all(spec, "lab"): manifests/lab, a lab of its own in spec.namespace (no job)
JOB_KINDS = ("MPIJob", "TrainJob", "ConfigMap")  # what `--no-job` leaves out: the job and its proxy ConfigMap
SHARED_VOLUME, SHM_VOLUME = "shared", "dshm"  # volume names in manifests/jobs/*
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # a source checkout: manifests/ and images/ live here
# A Kubernetes quantity without a sign: sizes and requests are never negative (pkg/apis/core/validation/validation.go,
# ValidateNonnegativeQuantity; a claim's storage must even be positive: ValidatePersistentVolumeClaimSpec)
_QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$")
_IMAGE = re.compile(r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$")
_MONTH_S = 30 * 24 * 3600
CHECKPOINT_FLAG = "--checkpoint-dir="
# Where a JobSpec field lives in each job kind: render_all writes there, from_overlay/resolved read from there.
_FIELD_PATHS = {
    "MPIJob": {
        "workers": "spec.mpiReplicaSpecs.Worker.replicas",
        "slots_per_worker": "spec.slotsPerWorker",
        "deadline_seconds": "spec.runPolicy.activeDeadlineSeconds",
        "ttl_seconds_after_finished": "spec.runPolicy.ttlSecondsAfterFinished",
        # args, not command: the image's entrypoint waits for the workers' DNS names before running it.
        "launcher_command": "spec.mpiReplicaSpecs.Launcher.template.spec.containers.0.args",
    },
    "TrainJob": {
        "workers": "spec.trainer.numNodes",
        "slots_per_worker": "spec.trainer.numProcPerNode",
        "launcher_command": "spec.trainer.args",  # args, as above (Trainer sets them on the launcher's container)
    },
}
_WORKER_POD = "spec.mpiReplicaSpecs.Worker.template.spec"
_RESOURCES_PATH = {"MPIJob": f"{_WORKER_POD}.containers.0.resources", "TrainJob": "spec.trainer.resourcesPerNode"}
_RESOURCE_KEYS = {"cpu": "cpu", "memory": "memory", "hugepages_2mi": "hugepages-2Mi"}  # request = limit
_OVERLAY_FIELDS = ("image", "slots_per_worker", "launcher_command", "storage_class", *_RESOURCE_KEYS, "shm_size")
# Text fields: (pattern, what the value must be, example, most characters). None skips all but _REQUIRED.
_TEXT_RULES = {
    "name": (DNS1035, "a DNS-1035 label (a-z, 0-9, '-', starting with a letter)", "deepspeed-interactive", NAME_MAX),
    "namespace": (DNS1123_LABEL, "a DNS-1123 label", "workloads", 63),
    "lab_namespace": (DNS1123_LABEL, "a DNS-1123 label", "workloads", 63),
    "pvc_name": (DNS1123_SUBDOMAIN, "a DNS-1123 subdomain", "labkit-shared", 253),
    "storage_class": (DNS1123_SUBDOMAIN, "a DNS-1123 subdomain", "nfs-client", 253),
    "hf_token_secret": (DNS1123_SUBDOMAIN, "a Secret name (DNS-1123 subdomain)", "hf-token", 253),
    "image": (_IMAGE, "an image reference (REGISTRY/REPOSITORY:TAG)", "ghcr.io/labkit/deepspeed:<tag>", 512),
    "storage_size": (_QUANTITY, "a Kubernetes quantity (no sign)", "20Gi", 64),
    **{name: (_QUANTITY, "a Kubernetes quantity (no sign)", '"4", "500m" or "16Gi"', 64) for name in _RESOURCE_KEYS},
    "shm_size": (_QUANTITY, "a Kubernetes quantity (no sign)", "16Gi", 64),
    "queue": (DNS1123_LABEL, "a Kueue LocalQueue name (DNS-1123 label)", "lab-queue", 63),
}
_REQUIRED = ("name", "namespace", "pvc_name", "storage_size")
PROXY_CONFIGMAP, PROXY_FIELDS = "labkit-proxy", ("http_proxy", "https_proxy", "no_proxy")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # kueue pkg/controller/constants (QueueLabel)
_PROXY_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?/?$")
_NO_PROXY_ITEM = re.compile(r"^\*?[A-Za-z0-9.:/-]+$")
CLUSTER_NO_PROXY = ("localhost", "127.0.0.1", ".svc", ".cluster.local")  # workers' DNS names, the API server
# The namespace each overlay puts its objects in (tests check it against kubectl kustomize): Gaudi's hostIPC needs
# Pod Security "privileged", so its jobs never share the lab's and cpu/nvidia jobs' restricted namespace.
SHARED_LAB, GAUDI_SUFFIX = "workloads", "-gaudi"  # the shared lab's namespace; a lab's Gaudi jobs: <lab>-gaudi
NAMESPACES = {"cpu": SHARED_LAB, "nvidia": SHARED_LAB, "gaudi": SHARED_LAB + GAUDI_SUFFIX}
DEFAULT_NAMESPACE = "the lab's, $LABKIT_NAMESPACE, else workloads; Gaudi jobs: <that>-gaudi"  # default_namespace's rule
LAB_USER = "system:serviceaccount:{}:labkit"  # the lab's identity (manifests/lab) as RBAC matches a User subject


def env_lab_namespace(accelerator: str = "cpu") -> str | None:
    """The namespace of the lab this runs in (LABKIT_NAMESPACE, set by manifests/lab from its pod's), None outside
    one; checked as a label that `<lab>-gaudi` (a Gaudi job's default) keeps within 63 characters."""
    lab = os.environ.get(shared_volume.NAMESPACE_ENV)
    if not lab:
        return None
    gaudi = accelerator == "gaudi"
    most = 63 - len(GAUDI_SUFFIX) if gaudi else 63  # <lab>-gaudi must still be a label
    if not DNS1123_LABEL.match(lab) or len(lab) > most:
        problem = f"{lab!r} is not a DNS-1123 label of at most {most} characters" + (" (+ '-gaudi')" if gaudi else "")
        fix = "set it to your lab's namespace (e.g. alice), unset it for workloads, or pass -n / namespace= explicitly"
        raise ConfigError(shared_volume.NAMESPACE_ENV, problem, fix)
    return lab


def default_namespace(accelerator: str = "cpu") -> str:
    """Where a job goes when no namespace is given (an explicit one always wins): the lab's own, as kubectl in a pod
    defaults to the pod's. manifests/lab sets LABKIT_NAMESPACE from its pod's namespace, so a learner's lab (alice)
    submits to alice and her Gaudi jobs to alice-gaudi (docs/security.md's recipe); unset: the shared lab's NAMESPACES.
    JobSpec's own default. `labkit manifests render` keeps NAMESPACES: an admin renders for a namespace, not a lab."""
    lab = env_lab_namespace(accelerator)
    if lab is None:
        return NAMESPACES.get(accelerator, SHARED_LAB)
    return lab + GAUDI_SUFFIX if accelerator == "gaudi" else lab


@dataclass
class JobSpec:
    """Parameters of one DeepSpeed job (MPIJob or TrainJob). None takes the overlay's value (see `resolved`)."""

    name: str = "deepspeed-interactive"  # left at this default, batch and trainjob renders keep their own names
    namespace: str | None = None  # None: default_namespace(accelerator), the lab's own, else the overlay's NAMESPACES
    # The namespace of the lab whose ServiceAccount `labkit` submits here. Gaudi only: its jobs never share the lab's
    # namespace, so its RoleBinding names the lab's identity (None: the shared lab's, workloads); a cpu/nvidia lab
    # runs in its jobs' namespace.
    lab_namespace: str | None = None
    image: str | None = None  # None: the overlay's image (images/images.yaml)
    workers: int = 2  # worker pods
    slots_per_worker: int | None = None  # GPUs/HPUs per worker (nvidia/gaudi), CPU ranks per worker (cpu)
    accelerator: str = "cpu"  # cpu | nvidia | gaudi -> manifests/overlays/<accelerator>
    launcher_command: list[str] | None = None  # None: `sleep infinity` (interactive) or the overlay's training command
    deadline_seconds: int = 4 * 3600  # activeDeadlineSeconds: ends forgotten interactive jobs
    ttl_seconds_after_finished: int = 600
    pvc_name: str = "labkit-shared"
    storage_class: str | None = None  # None: the overlay's (nfs-client); "": the cluster's default class
    storage_size: str = "20Gi"
    cpu: str | None = None  # per-worker cpu request = limit, e.g. "4"
    memory: str | None = None  # per-worker memory request = limit, e.g. "32Gi"
    hugepages_2mi: str | None = None  # gaudi only: per-worker hugepages-2Mi (request = limit)
    shm_size: str | None = None  # size limit of the memory-backed /dev/shm
    hf_token_secret: str | None = "hf-token"  # name of an existing Secret with key `token` (never a value); None: none
    # TrainJob only: write deadline_seconds as spec.activeDeadlineSeconds, which exists from Kubeflow Trainer v2.2.0
    # (older CRDs reject it). cluster.trainjob_has_deadline(api_client) says whether the served CRD has it.
    trainjob_deadline: bool = False
    # Proxy settings (the Gaudi/Omnia guide's "proxy settings"): into every pod of the job from the ConfigMap
    # PROXY_CONFIGMAP, never into images. URLs without credentials; no_proxy always gets the cluster's own names.
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    # Kueue's LocalQueue in the job's namespace: label QUEUE_LABEL on the MPIJob/TrainJob. Kueue's webhook then
    # suspends the job until Kueue admits it (a suspended job has no pods and holds no accelerators).
    queue: str | None = None

    def __post_init__(self) -> None:
        if self.namespace is None:  # where kubectl in the lab's pod would put it, as the CLI and chapters do
            self.namespace = default_namespace(self.accelerator)

    def lab(self) -> str:
        """The namespace of the lab that submits this job: lab_namespace, else the one this runs in (LABKIT_NAMESPACE:
        `labkit job render` in alice's lab binds her lab), else the shared lab's."""
        return self.lab_namespace or env_lab_namespace(self.accelerator) or SHARED_LAB

    def validate(self) -> None:
        """One ConfigError naming the field, before anything is rendered or submitted."""
        check_choice("accelerator", self.accelerator, ACCELERATORS, "pick cpu (kind/minikube), nvidia or gaudi")
        lab = self.lab() if self.accelerator == "gaudi" else SHARED_LAB  # the lab's namespace: its cpu/nvidia jobs'
        if self.accelerator == "gaudi" and self.namespace in (SHARED_LAB, lab):
            problem = f"{self.namespace} is the lab's and the cpu/nvidia jobs' namespace (Pod Security restricted); "
            problem += "Gaudi's hostIPC needs a privileged namespace of its own"
            raise ConfigError("namespace", problem, f"leave it unset ({lab + GAUDI_SUFFIX}) or name another one")
        gaudi_ns = self.namespace == NAMESPACES["gaudi"] or (  # the shared lab's Gaudi namespace, or this lab's
            self.namespace.endswith(GAUDI_SUFFIX) and self.namespace == self.lab() + GAUDI_SUFFIX
        )
        if self.accelerator != "gaudi" and gaudi_ns:  # its Namespace would relabel it
            problem = f"{self.namespace} is the Gaudi jobs' privileged namespace; a {self.accelerator} job's "
            problem += "Namespace object would set it to Pod Security restricted, and Gaudi's pods would be refused"
            raise ConfigError("namespace", problem, f"leave it unset ({NAMESPACES['cpu']}) or name another one")
        if self.accelerator != "gaudi" and self.lab_namespace not in (None, self.namespace):
            problem = f"a {self.accelerator} namespace's jobs are submitted from the lab in that namespace itself"
            raise ConfigError("lab_namespace", problem, "leave it out (gaudi only), or pass the same as namespace")
        if isinstance(self.hf_token_secret, str) and find_secret_material(self.hf_token_secret):
            fix = "kubectl -n NS create secret generic hf-token --from-literal=token=..., then pass its name"
            raise ConfigError("hf_token_secret", "looks like a token value, not a Secret name", fix)
        for field_name, (pattern, what, example, longest) in _TEXT_RULES.items():
            value = getattr(self, field_name)
            if (value is None and field_name not in _REQUIRED) or (field_name, value) == ("storage_class", ""):
                continue
            fix = f"use something like {example}" + (" or None" if field_name in _OVERLAY_FIELDS else "")
            if isinstance(value, str) and len(value) > longest:
                too_long = f"{value[:20]!r}... has {len(value)} characters, more than {longest}"
                raise ConfigError(field_name, too_long, fix)
            if not isinstance(value, str) or not pattern.match(value):
                raise ConfigError(field_name, f"{value!r} is not {what}", fix)
        if not float(re.match(r"[\d.]*", self.storage_size).group().strip(".") or 0):
            raise ConfigError(
                "storage_size",
                f"{self.storage_size!r} is zero: the API server refuses an empty claim",
                "use something like 20Gi",
            )
        check_int("workers", self.workers, 1, maximum=512)
        if self.slots_per_worker is not None:
            gaudi = self.accelerator == "gaudi"
            fix = "a Gaudi node has 8 HPUs: pass 1..8" if gaudi else None
            check_int("slots_per_worker", self.slots_per_worker, 1, fix, maximum=8 if gaudi else 64)
        command = self.launcher_command
        if command is not None:
            if not (isinstance(command, (list, tuple)) and command and all(isinstance(p, str) and p for p in command)):
                fix = 'pass an argv list, e.g. ["sleep", "infinity"] or ["deepspeed", "--hostfile", ...]'
                raise ConfigError("launcher_command", f"{command!r} is not a non-empty list of strings", fix)
            leak = find_secret_material(" ".join(command))
            if leak:
                fix = "pass secrets through a Kubernetes Secret (hf_token_secret), never on the command line"
                raise ConfigError("launcher_command", f"contains what looks like a secret ({leak[0]})", fix)
        fix = "it stops the job (and frees its accelerators) after this many seconds: pass 60 or more"
        check_int("deadline_seconds", self.deadline_seconds, 60, fix, maximum=_MONTH_S)
        check_int("ttl_seconds_after_finished", self.ttl_seconds_after_finished, 0, maximum=_MONTH_S)
        for field_name in ("http_proxy", "https_proxy"):
            value = getattr(self, field_name)
            if value is not None and not (isinstance(value, str) and _PROXY_URL.match(value)):
                shown = "a URL with credentials" if isinstance(value, str) and "@" in value else repr(value)
                fix = "pass http://HOST:PORT (no user:password: credentials would sit in a ConfigMap), or None"
                raise ConfigError(field_name, f"{shown} is not a proxy URL without credentials", fix)
        items = (self.no_proxy or "").split(",") if self.no_proxy is not None else []
        bad = [i for i in items if not _NO_PROXY_ITEM.match(i.strip())]
        if not isinstance(self.no_proxy, (str, type(None))) or bad:
            fix = "pass comma-separated hosts, domains (.example.com) or CIDRs, e.g. 10.0.0.0/8,.corp.example"
            raise ConfigError("no_proxy", f"{bad[0] if bad else self.no_proxy!r} is not a host, domain or CIDR", fix)
        if self.hugepages_2mi is not None and self.accelerator != "gaudi":
            fix = "leave it None, or set accelerator='gaudi'"
            raise ConfigError("hugepages_2mi", f"is only used by the gaudi overlay, not {self.accelerator}", fix)

    def resolved(self, kind: str = "interactive") -> JobSpec:
        """A validated copy with every None taken from the overlay (image, slots, cpu, memory, command, storage...)."""
        self.validate()
        values = _overlay_values(self.accelerator, kind)
        return replace(self, **{name: values[name] for name in _OVERLAY_FIELDS if getattr(self, name) is None})

    @classmethod
    def from_overlay(cls, accelerator: str = "cpu", kind: str = "interactive") -> JobSpec:
        """The spec whose render equals the overlay's files exactly (every field read from manifests/)."""
        return cls(accelerator=accelerator, **_overlay_values(accelerator, kind))


# ----------------------------------------------------------------------------------------------- locating files
def kit_dir(field: str, problem: str, marker: str, candidates: list[Path]) -> Path:
    """The first candidate directory that holds `marker` (a relative file path)."""
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    fix = "set LABKIT_MANIFESTS to a labkit source checkout's manifests/ directory (an editable install finds it)"
    raise ConfigError(field, f"{problem} (looked in {', '.join(map(str, candidates))})", fix)


def manifests_dir() -> Path:
    """manifests/ of this kit: $LABKIT_MANIFESTS, else next to the package (source checkout, editable install)."""
    env = os.environ.get("LABKIT_MANIFESTS")
    candidates = [Path(env), PACKAGE_ROOT / "manifests"] if env else [PACKAGE_ROOT / "manifests"]
    return kit_dir("LABKIT_MANIFESTS", "no kit manifests/ directory found", "base/kustomization.yaml", candidates)


def overlay_dir(accelerator: str, kind: str = "interactive") -> Path:
    """manifests/overlays/<accelerator>[/batch|/trainjob] (manifests/lab for "lab"): what `kubectl apply -k` uses."""
    check_choice("accelerator", accelerator, ACCELERATORS, "pick cpu (kind/minikube), nvidia or gaudi")
    check_choice("kind", kind, (*OVERLAY_KINDS, LAB_KIND))
    if kind == LAB_KIND:
        return manifests_dir() / "lab"
    path = manifests_dir() / "overlays" / accelerator
    return path if kind == "interactive" else path / kind


# ----------------------------------------------------------------------------------------------- rendering
def render_all(spec: JobSpec, kind: str = "interactive") -> list[dict]:
    """Every object `kubectl apply -k manifests/overlays/<accelerator>[/<kind>]` creates, with spec's parameters,
    checked as the cluster would check them."""
    spec.validate()
    if kind == "trainjob" and spec.workers < 2:  # kubeflow/trainer plugins/mpi/mpi.go: max(numNodes - 1, 1) nodes
        problem = f"a TrainJob on the kit's runtime runs the launcher as a node plus at least one node: {spec.workers}"
        raise ConfigError("workers", problem + " would still start 2 rank pods", "pass workers=2 or more")
    if kind == LAB_KIND and spec.accelerator == "gaudi":  # the lab's namespace is restricted; Gaudi's is privileged
        fix = "render the lab with accelerator cpu or nvidia; a Gaudi namespace binds it with lab_namespace"
        raise ConfigError("accelerator", "the lab never runs in a Gaudi (privileged) namespace", fix)
    objects = kustomize_build(overlay_dir(spec.accelerator, kind))
    for obj in objects:
        _apply_common(obj, spec)
        if obj["kind"] in _FIELD_PATHS:
            _apply_job(obj, spec)
        if obj["kind"] in _FIELD_PATHS and spec.queue:
            obj["metadata"].setdefault("labels", {})[QUEUE_LABEL] = spec.queue
        if obj["kind"] == "TrainJob" and spec.trainjob_deadline:
            obj["spec"]["activeDeadlineSeconds"] = spec.deadline_seconds
        if obj["kind"] in (*_FIELD_PATHS, "TrainingRuntime") and spec.image is not None:  # runtime: every node
            for container in _containers(obj):
                container["image"] = spec.image
    proxy = proxy_settings(spec)
    if proxy:
        _add_proxy(objects, spec.namespace, proxy)
    validate_objects(objects)
    return objects


def proxy_settings(spec: JobSpec) -> dict[str, str]:
    """The proxy variables every pod of the job gets (upper and lower case: tools read either); {} without a proxy."""
    if spec.http_proxy is None and spec.https_proxy is None:
        return {}
    given = [i.strip() for i in (spec.no_proxy or "").split(",") if i.strip()]
    values = {"HTTP_PROXY": spec.http_proxy, "HTTPS_PROXY": spec.https_proxy or spec.http_proxy}
    values["NO_PROXY"] = ",".join(dict.fromkeys(given + list(CLUSTER_NO_PROXY)))
    return {k: v for key, v in values.items() if v for k in (key, key.lower())}


def _add_proxy(objects: list[dict], namespace: str, proxy: dict[str, str]) -> None:
    """One ConfigMap; every container of the job (and of the kit's TrainingRuntime) reads it through envFrom."""
    meta = {"name": PROXY_CONFIGMAP, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "labkit"}}
    objects.insert(-1, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": proxy})
    source = {"configMapRef": {"name": PROXY_CONFIGMAP}}
    for obj in objects:
        if obj["kind"] == "TrainJob":  # the trainer has env only (no envFrom): one configMapKeyRef per variable
            env = obj["spec"]["trainer"].setdefault("env", [])
            env += [{"name": k, "valueFrom": {"configMapKeyRef": {"name": PROXY_CONFIGMAP, "key": k}}} for k in proxy]
        elif obj["kind"] in ("MPIJob", "TrainingRuntime"):
            for container in _containers(obj):
                container.setdefault("envFrom", []).append(source)


def render_job(spec: JobSpec, kind: str = "interactive") -> dict:
    """The job object alone: the MPIJob (interactive, batch) or the TrainJob (trainjob)."""
    return _job_object(render_all(spec, kind))


def _apply_common(obj: dict, spec: JobSpec) -> None:
    meta = obj.setdefault("metadata", {})
    if obj["kind"] == "Namespace":
        meta["name"] = spec.namespace
        return
    if "namespace" in meta:
        meta["namespace"] = spec.namespace
    for subject in obj.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["namespace"] = spec.namespace
        elif subject.get("kind") == "User" and subject["name"] == LAB_USER.format(SHARED_LAB):
            subject["name"] = LAB_USER.format(spec.lab())
    if obj["kind"] == "ClusterRoleBinding" and spec.namespace != SHARED_LAB:
        meta["name"] += f"-{spec.namespace}"  # one per learner's lab: never the shared lab's binding, overwritten
    if obj["kind"] == "Deployment":  # the lab: its claim, by volume and by the name it hands to `labkit job submit`
        pod = obj["spec"]["template"]["spec"]
        for volume in [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]:
            volume["persistentVolumeClaim"]["claimName"] = spec.pvc_name
        for entry in [e for c in pod["containers"] for e in c.get("env", []) if e["name"] == shared_volume.CLAIM_ENV]:
            entry["value"] = spec.pvc_name
    if obj["kind"] == "NetworkPolicy":  # the lab's rule names its own namespace ("from outside it")
        for rule in obj["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                for expr in (peer.get("namespaceSelector") or {}).get("matchExpressions") or []:
                    own = NAMESPACES.get(spec.accelerator)
                    expr["values"] = [spec.namespace if v == own else v for v in expr.get("values", [])]
    if obj["kind"] == "PersistentVolumeClaim":
        meta["name"] = spec.pvc_name
        obj["spec"]["resources"]["requests"]["storage"] = spec.storage_size
        if spec.storage_class == "":
            obj["spec"].pop("storageClassName", None)
        elif spec.storage_class is not None:
            obj["spec"]["storageClassName"] = spec.storage_class


def _apply_job(job: dict, spec: JobSpec) -> None:
    if spec.name != JobSpec.name:
        job["metadata"]["name"] = spec.name
    for field_name, path in _FIELD_PATHS[job["kind"]].items():
        value = getattr(spec, field_name)
        if value is not None:
            *parents, last = path.split(".")
            _node(job, parents)[last] = list(value) if isinstance(value, (list, tuple)) else value
    name = job["metadata"]["name"]
    if job["kind"] == "MPIJob":  # (a TrainJob's pods mount no PVC)
        args = value_at(job, _FIELD_PATHS["MPIJob"]["launcher_command"]) or []
        for i, arg in enumerate(args if spec.launcher_command is None else []):
            # Each job's own folder on the shared volume: a job resumes only its own checkpoints, never another's.
            if arg.startswith(f"{CHECKPOINT_FLAG}{shared_volume.ROOT}/{shared_volume.RUNS}/"):
                args[i] = f"{CHECKPOINT_FLAG}{shared_volume.run_dir(name)}"
        _check_shared_paths(args, name)
    accelerator = ACCELERATOR_RESOURCE[spec.accelerator]
    values = {key: getattr(spec, name) for name, key in _RESOURCE_KEYS.items()}
    values |= {accelerator: spec.slots_per_worker} if accelerator else {}
    resources = _node(job, _RESOURCES_PATH[job["kind"]].split("."))
    for section in ("requests", "limits"):
        resources.setdefault(section, {}).update({key: v for key, v in values.items() if v is not None})
    for container in _containers(job):
        for entry in [e for e in container.get("env", []) if e.get("name") == "HF_HOME"]:  # the job's own cache
            entry["value"] = f"{shared_volume.run_dir(name)}/hf-home"
        for mount in container.get("volumeMounts", []):  # the job's own folder: the one it may write
            if mount["name"] == SHARED_VOLUME and mount.get("subPath", "").startswith(f"{shared_volume.RUNS}/"):
                mount.update(mountPath=shared_volume.run_dir(name), subPath=shared_volume.run_subpath(name))
        for entry in [e for e in container.get("env", []) if e.get("name") == "HF_TOKEN"]:
            if spec.hf_token_secret is None:
                container["env"].remove(entry)
            else:
                entry["valueFrom"]["secretKeyRef"]["name"] = spec.hf_token_secret
    for path, pod in pod_templates(job):
        for volume in pod.get("volumes", []):
            if volume["name"] == SHARED_VOLUME:
                volume["persistentVolumeClaim"]["claimName"] = spec.pvc_name
            if "secret" in volume:  # the job's own checkpoint key (the only Secret volume validation lets through)
                volume["secret"]["secretName"] = checkpoint_secret(name)
            if volume["name"] == SHM_VOLUME and path == _WORKER_POD and spec.shm_size is not None:
                volume["emptyDir"]["sizeLimit"] = spec.shm_size


def _check_shared_paths(args: list[str], job: str) -> None:
    """A command's /shared paths must lie in what the job's pods mount: there is nothing else of the volume there."""
    outside = shared_volume.outside_mounts(args, job)
    if outside:
        own, inputs = shared_volume.run_dir(job), shared_volume.DATA_DIR
        problem = f"{outside[0]} is not in job {job}'s pods: of the shared volume they mount {own} and {inputs} only"
        raise ConfigError("launcher_command", problem, f"write under {own}; read inputs from {inputs} (read-only)")


# ----------------------------------------------------------------------------------------------- reading overlays
def _overlay_values(accelerator: str, kind: str) -> dict[str, Any]:
    """Every JobSpec field as the overlay's files set it."""
    objects = kustomize_build(overlay_dir(accelerator, kind))
    job, pvc = _job_object(objects), next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
    requests = value_at(job, _RESOURCES_PATH[job["kind"]] + ".requests") or {}
    volumes = value_at(job, f"{_WORKER_POD}.volumes") or []
    env = [e for c in _containers(job) for e in c.get("env", []) if e.get("name") == "HF_TOKEN"]
    values = {name: value_at(job, path) for name, path in _FIELD_PATHS[job["kind"]].items()}
    values |= {name: None if requests.get(key) is None else str(requests[key]) for name, key in _RESOURCE_KEYS.items()}
    return values | {
        "name": job["metadata"]["name"],
        "namespace": job["metadata"]["namespace"],
        "image": _containers(job)[0]["image"],
        "shm_size": next((v["emptyDir"].get("sizeLimit") for v in volumes if v["name"] == SHM_VOLUME), None),
        "pvc_name": pvc["metadata"]["name"],
        "storage_class": pvc["spec"].get("storageClassName", ""),
        "storage_size": pvc["spec"]["resources"]["requests"]["storage"],
        "hf_token_secret": env[0]["valueFrom"]["secretKeyRef"]["name"] if env else None,
    }


def _node(obj: Any, parts: list[str]) -> Any:
    """The value at a path's parts, creating missing mappings empty (for writing)."""
    for part in parts:
        obj = obj[int(part)] if isinstance(obj, list) else obj.setdefault(part, {})
    return obj


def _job_object(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] in _FIELD_PATHS)


def _containers(obj: dict) -> list[dict]:
    if obj["kind"] == "TrainJob":
        return [obj["spec"]["trainer"]]  # the trainer carries image, command and env as a container does
    return [c for _, pod in pod_templates(obj) for c in pod.get("containers", [])]

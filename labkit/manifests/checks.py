"""What the cluster (or its operators) would reject in an object, and secret material anywhere in it.

MPIJob / TrainJob: the upstream CRDs' schemas (labkit/schemas) plus the MPI Operator's admission rules; core kinds and
pod templates: Kubernetes' published schemas (`kubernetes-validate`) plus the pod rules no schema expresses.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labkit import shared_volume
from labkit.errors import LabkitError
from labkit.manifests import pod_security

KUBERNETES_VERSION = "1.32"  # schemas used for core kinds (kubernetes-validate)
SSH_PORT = 2222  # sshd in images/ listens here; worker readiness probes check it
SSH_USER, SSH_UID = "mpiuser", 1000  # the images' non-root user
SSH_AUTH_MOUNT_PATH = "/home/mpiuser/.ssh"
CHECKPOINT_KEY_VOLUME = "checkpoint-key"  # the one Secret volume a job pod may mount: its own `<job>-checkpoint`
# Volume types a job pod may have (manifests/admission's allowedVolumeFields): others could reach the shared storage.
JOB_VOLUME_TYPES = frozenset("persistentVolumeClaim emptyDir secret configMap downwardAPI projected".split())
NAME_MAX = 40  # `<name>-worker-<i>` and `<name>-launcher-xxxxx` must stay valid 63-char pod host names
NODE_READER = "labkit-node-reader"  # the one ClusterRole (manifests/base/node-reader): listing nodes for device=auto
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_SECRET_PATTERNS = [
    ("a PEM private key", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    ("an OpenSSH public/private key", r"\b(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+) AAAA[0-9A-Za-z+/]{20,}"),
    ("a Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}\b"),
    ("a GitHub token", r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    ("an AWS access key id", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("a JSON web token", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    ("a Slack token", r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
    (  # also inside an env name (WANDB_API_KEY=, HF_TOKEN=): `_` is a word character, so no \b before the word
        "an inline password/token assignment",
        r"(?i)(?<![a-z0-9])[a-z0-9_]*(password|passwd|api[_-]?key|secret[_-]?key|token)\s*[=:]\s*['\"]?[^\s'\"$]{8,}",
    ),
    ("a password/token flag", r"(?i)--(password|passwd|token|api[_-]?key|secret)[= ]['\"]?[^\s'\"$-][^\s'\"$]{7,}"),
]
_SECRET_ENV_NAME = re.compile(r"(?i)(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|PRIVATE_?KEY|CREDENTIALS?)")
_MPIJOB = "spec.mpiReplicaSpecs"
_WORKER_CONTAINER = f"{_MPIJOB}.Worker.template.spec.containers[0]"
# The MPI Operator's admission rules that the CRD schema does not carry (mpiImplementation's enum it does), applied
# after the operator's defaults: (path, default, allowed values or the minimum).
_MPIJOB_RULES = [
    (f"{_MPIJOB}.Launcher.replicas", 1, (1,)),
    (f"{_MPIJOB}.Worker.replicas", 1, 1),
    ("spec.slotsPerWorker", 1, 1),
    ("spec.runPolicy.cleanPodPolicy", "None", ("None", "Running", "All")),
    ("spec.launcherCreationPolicy", "AtStartup", ("AtStartup", "WaitForWorkersReady")),
    *[(f"spec.runPolicy.{key}", 0, 0) for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit")],
]


class ManifestError(LabkitError):
    """A rendered or loaded object that the cluster would reject; names the object and the field path."""

    def __init__(self, obj_ref: str, path: str, problem: str, *, more: int = 0):
        self.obj_ref, self.path, self.problem = obj_ref, path, problem
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"{obj_ref}: {path}: {problem}{tail}")


def find_secret_material(text: str) -> list[str]:
    """Descriptions of anything in `text` that looks like key material or a credential (empty list: clean)."""
    return [what for what, pattern in _SECRET_PATTERNS if re.search(pattern, text)]


def value_at(obj: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted path (list indices as digits), or default where a mapping lacks a key."""
    for part in path.split("."):
        try:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part]
        except (KeyError, TypeError):
            return default
    return obj


def checkpoint_secret(job: str) -> str:
    """The job's own Secret with the key that signs its checkpoints (labkit.checkpoint), made at submit."""
    return f"{job}-checkpoint"


def object_ref(obj: dict) -> str:
    return f"{obj.get('kind', '?')} {obj.get('metadata', {}).get('name', '?')}"


def validate_objects(objects: Iterable[dict], *, pod_security: str | None = None) -> None:
    """validate_object for each, then Pod Security: every pod template at the level its namespace enforces (from a
    Namespace object among them), else at `pod_security` (None: not checked)."""
    objects = list(objects)
    levels = namespace_levels(objects)
    for obj in objects:
        validate_object(obj)
        level = levels.get((obj.get("metadata") or {}).get("namespace"), pod_security)
        if level:
            check_pod_security(obj, level)


def namespace_levels(objects: Iterable[dict]) -> dict[str, str]:
    """{namespace: its enforced Pod Security level} for the Namespace objects among `objects`."""
    levels = {}
    for obj in objects:
        if obj.get("kind") == "Namespace" and isinstance(obj.get("metadata"), dict):
            level = (obj["metadata"].get("labels") or {}).get(pod_security.ENFORCE_LABEL, "privileged")
            if level not in pod_security.LEVELS:
                path = f"metadata.labels.{pod_security.ENFORCE_LABEL}"
                raise ManifestError(object_ref(obj), path, f"{level!r} is not one of {', '.join(pod_security.LEVELS)}")
            levels[obj["metadata"].get("name")] = level
    return levels


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(field path, pod spec) of every pod an object makes: MPIJob replicas, TrainingRuntime jobs, Deployment, Pod."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "MPIJob":
        replicas = spec.get("mpiReplicaSpecs") or {}
        return [(f"{_MPIJOB}.{role}.template.spec", value_at(r, "template.spec") or {}) for role, r in replicas.items()]
    if kind == "TrainingRuntime":
        jobs = value_at(obj, "spec.template.spec.replicatedJobs") or []
        path = "spec.template.spec.replicatedJobs[{}].template.spec.template.spec"
        return [(path.format(i), value_at(j, "template.spec.template.spec") or {}) for i, j in enumerate(jobs)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [("spec.template.spec", value_at(obj, "spec.template.spec") or {})]
    if kind == "CronJob":
        return [("spec.jobTemplate.spec.template.spec", value_at(obj, "spec.jobTemplate.spec.template.spec") or {})]
    return [("spec", spec)] if kind == "Pod" else []


def check_pod_security(obj: dict, level: str) -> None:
    """ManifestError for the first pod field `level` refuses: the API server would accept the object and its
    controller's pods would then be refused (seen as events only)."""
    for path, pod in pod_templates(obj):
        found = pod_security.violations(pod, level)
        if found:
            field, problem = found[0]
            ns = (obj.get("metadata") or {}).get("namespace", "default")
            why = f"{problem}: namespace {ns} enforces Pod Security {level!r}"
            raise ManifestError(object_ref(obj), f"{path}.{field}", why, more=len(found) - 1)


def validate_object(obj: dict) -> None:
    """Raise ManifestError naming the first field path the cluster (or its operators) would reject."""
    ref = object_ref(obj)
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj.get(key):
            raise ManifestError(ref, key, "missing")
    _check_metadata(obj, ref)
    _check_secrets(obj, ref)
    validator = _crd_validators().get((obj["apiVersion"], obj["kind"]))
    if validator is not None:  # the CRD's own schema (labkit/schemas, from the upstream CRDs), then the rules it lacks
        errors = sorted(validator.iter_errors(obj), key=lambda e: (len(e.path), list(map(str, e.path))))
        if errors:
            raise ManifestError(ref, _path_text(errors[0].absolute_path), _error_text(errors[0]), more=len(errors) - 1)
        rules = {"MPIJob": _check_mpijob, "TrainJob": _check_trainjob, "TrainingRuntime": _check_training_runtime}
        rules[obj["kind"]](obj, ref)
    elif obj["apiVersion"].startswith(("kubeflow.org/", "trainer.kubeflow.org/")):
        known = ", ".join(f"{k} {v}" for v, k in sorted(_crd_validators()))
        problem = f"is not a version labkit knows ({known}); regenerate labkit/schemas with scripts/make_schemas.py"
        raise ManifestError(ref, "apiVersion", f"{obj['apiVersion']} {obj['kind']} {problem}")
    else:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            _check_cluster_rbac(obj, ref)
        _validate_core(obj, ref, "")


def _check_cluster_rbac(obj: dict, ref: str) -> None:
    """The kit grants nothing cluster-wide but listing nodes (manifests/base/node-reader: device=auto)."""
    fix = "use a namespaced Role/RoleBinding"
    if obj["kind"] == "ClusterRoleBinding":
        if (obj.get("roleRef") or {}).get("name") != NODE_READER:
            raise ManifestError(ref, "roleRef.name", f"the kit binds no ClusterRole but {NODE_READER}; {fix}")
        return
    for i, rule in enumerate(obj.get("rules") or []):
        reads_nodes = rule.get("apiGroups") == [""] and rule.get("resources") == ["nodes"]
        if not reads_nodes or not set(rule.get("verbs") or ["?"]) <= {"get", "list"}:
            problem = "the kit grants nothing cluster-wide but get/list on nodes"
            raise ManifestError(ref, f"rules[{i}]", f"{problem}; {fix}")


# ----------------------------------------------------------------------------------------------- schemas
@functools.cache
def _crd_validators() -> dict[tuple[str, str], Any]:
    """The CRD copies of labkit/schemas (scripts/make_schemas.py made them strict, with integer bounds)."""
    import jsonschema

    docs = [json.loads(path.read_text()) for path in (Path(__file__).parent.parent / "schemas").glob("*.json")]
    return {(doc["apiVersion"], doc["kind"]): jsonschema.Draft7Validator(doc["schema"]) for doc in docs}


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
        return f'{error.instance!r} is not a Kubernetes quantity (e.g. "4", "500m", "16Gi")'
    if error.validator == "anyOf" and len(str(error.instance)) < 60:
        return f"{error.instance!r} is neither an integer nor a string"
    return error.message if len(error.message) < 300 else error.message[:300] + "..."


def _validate_core(obj: dict, ref: str, prefix: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.utils.VersionNotSupportedError:  # releases before 1.N ship no 1.N schemas
        raise LabkitError(
            f"kubernetes-validate {kubernetes_validate.utils.__version__} has no Kubernetes {KUBERNETES_VERSION} "
            f"schemas. Fix: pip install 'kubernetes-validate>={KUBERNETES_VERSION}' (or `make install`)"
        ) from None
    except kubernetes_validate.SchemaNotFoundError:
        what = f"{obj['apiVersion']} {obj['kind']}"
        raise ManifestError(ref, "kind", f"no published Kubernetes {KUBERNETES_VERSION} schema for {what}") from None
    except kubernetes_validate.ValidationError as exc:
        path = _path_text(exc.path)
        if prefix:
            path = prefix + path[len("spec") :] if path.startswith("spec") else f"{prefix}.{path}"
        problem = exc.message
        if exc.validator == "additionalProperties":
            problem = problem.replace("Additional properties are not allowed", "unknown field")
            problem += " (check the spelling)"
        raise ManifestError(ref, path, problem) from None


# ----------------------------------------------------------------------------------------------- object rules
def _check_metadata(obj: dict, ref: str) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ManifestError(ref, "metadata", "missing")
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        raise ManifestError(ref, "metadata.name", f"{name!r} is not a valid object name (DNS-1123 subdomain)")
    if namespace is not None and (not isinstance(namespace, str) or not DNS1123_LABEL.match(namespace)):
        raise ManifestError(ref, "metadata.namespace", f"{namespace!r} is not a DNS-1123 label")
    for section in ("labels", "annotations"):
        for key, value in (meta.get(section) or {}).items():
            if not isinstance(value, str):
                raise ManifestError(ref, f"metadata.{section}.{key}", f"{value!r} must be a string (quote it)")


def _check_secrets(obj: dict, ref: str) -> None:
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        problem = "a Secret with values must not be rendered or committed; kubectl create it, reference it by name"
        raise ManifestError(ref, "data", problem)
    leaks = find_secret_material(json.dumps(obj))
    if leaks:
        raise ManifestError(ref, "(any field)", f"contains what looks like {leaks[0]}; reference a Secret instead")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")
        elif isinstance(node, dict):
            for i, env in enumerate(node.get("env") if isinstance(node.get("env"), list) else []):
                if isinstance(env, dict) and _SECRET_ENV_NAME.search(str(env.get("name", ""))) and env.get("value"):
                    where = f"{path}.env[{i}].value"
                    raise ManifestError(ref, where, f"{env['name']} has a literal value; use valueFrom.secretKeyRef")
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else key)

    walk(obj, "")


def _check_pod_spec(pod: dict, ref: str, path: str, *, namespace: str) -> None:
    """The published Pod schema, then the pod rules it cannot express."""
    template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template", "namespace": namespace}}
    _validate_core({**template, "spec": pod}, ref, path)
    volumes, names = {v.get("name") for v in pod.get("volumes", [])}, set()
    for i, container in enumerate(pod.get("containers", [])):
        cpath, name = f"{path}.containers[{i}]", container.get("name", "")
        if not DNS1123_LABEL.match(name) or name in names:
            raise ManifestError(ref, f"{cpath}.name", f"{name!r} must be a unique DNS-1123 label")
        names.add(name)
        if not container.get("image"):
            raise ManifestError(ref, f"{cpath}.image", "missing")
        for j, mount in enumerate(container.get("volumeMounts", [])):
            if mount.get("name") not in volumes:
                problem = f"{mount.get('name')!r} is not a volume of this pod (volumes: {sorted(volumes)})"
                raise ManifestError(ref, f"{cpath}.volumeMounts[{j}].name", problem)
        _check_resources(container.get("resources", {}), ref, f"{cpath}.resources")


def _check_resources(resources: dict, ref: str, path: str) -> None:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for key in set(requests) | set(limits):
        request, limit = requests.get(key), limits.get(key)
        for section, value in (("requests", request), ("limits", limit)):
            if str(value).startswith("-"):  # validation.go ValidateNonnegativeQuantity
                raise ManifestError(ref, f"{path}.{section}.{key}", f"{value} must be greater than or equal to 0")
        if key.startswith("hugepages-"):
            if str(request) != str(limit):
                problem = f"hugepages request ({request}) must equal the limit ({limit})"
                raise ManifestError(ref, f"{path}.requests.{key}", problem)
            if not {"cpu", "memory"} & (set(requests) | set(limits)):
                raise ManifestError(ref, f"{path}.requests", f"{key} needs a cpu or memory request as well")
        elif "/" in key and not key.startswith("kubernetes.io/"):
            # Extended resources (nvidia.com/gpu, habana.ai/gaudi): whole numbers, request == limit.
            for section, value in (("requests", request), ("limits", limit)):
                if value is not None and not re.fullmatch(r"\d+", str(value)):
                    raise ManifestError(ref, f"{path}.{section}.{key}", f"{value!r} must be a whole number")
            if request is not None and limit is None:
                raise ManifestError(ref, f"{path}.limits.{key}", "missing: extended resources need a limit")
            if request is not None and str(request) != str(limit):
                problem = "must equal the limit (extended resources cannot be overcommitted)"
                raise ManifestError(ref, f"{path}.requests.{key}", problem)


def _check_mpijob(job: dict, ref: str) -> None:
    """The MPI Operator's admission rules (pkg/apis/kubeflow/validation) and the kit's SSH contract."""
    name, spec = job["metadata"]["name"], job["spec"]
    if not DNS1035.match(name):
        raise ManifestError(ref, "metadata.name", f"{name!r} must be a DNS-1035 label (the operator names a Service)")
    replicas = spec["mpiReplicaSpecs"]
    host = f"{name}-worker-{max(replicas.get('Worker', {}).get('replicas', 1), 1) - 1}"
    if len(host) > 63:
        problem = f"worker host name {host!r} would exceed 63 characters; use a name of at most {NAME_MAX} characters"
        raise ManifestError(ref, "metadata.name", problem)
    if "Launcher" not in replicas:
        raise ManifestError(ref, f"{_MPIJOB}.Launcher", "missing (an MPIJob needs exactly one launcher)")
    for role, replica in replicas.items():
        path = f"{_MPIJOB}.{role}"
        if role not in ("Launcher", "Worker"):
            raise ManifestError(ref, path, "only Launcher and Worker exist")
        if "replicas" not in replica:
            raise ManifestError(ref, f"{path}.replicas", "missing")
        if replica.get("restartPolicy") not in ("Never", "OnFailure"):
            problem = f"{replica.get('restartPolicy')!r} is not supported (Never or OnFailure)"
            raise ManifestError(ref, f"{path}.restartPolicy", problem)
        if not replica.get("template", {}).get("spec", {}).get("containers"):
            raise ManifestError(ref, f"{path}.template.spec.containers", "must define at least one container")
    for path, default, allowed in _MPIJOB_RULES:
        value = value_at(job, path, default)
        if isinstance(allowed, tuple) and value not in allowed:
            raise ManifestError(ref, path, f"must be {' or '.join(map(str, allowed))} (not {value!r})")
        if not isinstance(allowed, tuple) and value < allowed:
            raise ManifestError(ref, path, f"must be at least {allowed}")
    for role, replica in replicas.items():
        pod, path = replica["template"]["spec"], f"{_MPIJOB}.{role}.template.spec"
        _check_pod_spec(pod, ref, path, namespace=job["metadata"].get("namespace", "default"))
        _check_job_pod_identity(pod, ref, path, checkpoint_secret(name))
        _check_job_pod_storage(pod, ref, path, name)
    _check_ssh_contract(spec, ref)


def _check_job_pod_identity(pod: dict, ref: str, path: str, own_secret: str) -> None:
    """A job pod runs as nobody and mounts no Secret of its own choosing: learners share the namespace, so another
    ServiceAccount, API token or Secret volume (other jobs' `<job>-ssh`, the lab's) would be someone else's. Pod
    Security does not cover these fields; the operator mounts the job's own SSH Secret itself, and the job its own
    checkpoint key (own_secret)."""
    if pod.get("serviceAccountName", "default") != "default":
        problem = f"{pod['serviceAccountName']!r}: job pods run as the namespace's default identity"
        raise ManifestError(ref, f"{path}.serviceAccountName", problem + "; remove it")
    if pod.get("automountServiceAccountToken") is not False:
        raise ManifestError(ref, f"{path}.automountServiceAccountToken", "must be false (job pods need no API token)")
    for i, volume in enumerate(pod.get("volumes") or []):
        if volume.get("secret", {}).get("secretName") == own_secret and volume["name"] == CHECKPOINT_KEY_VOLUME:
            continue
        if "secret" in volume or any("secret" in s for s in (volume.get("projected") or {}).get("sources") or []):
            problem = f"Secret volumes other than the job's own {own_secret} are not allowed in job pods"
            raise ManifestError(ref, f"{path}.volumes[{i}]", problem)
    for j, container in enumerate(pod.get("containers") or []):
        if any("secretRef" in source for source in container.get("envFrom") or []):
            raise ManifestError(ref, f"{path}.containers[{j}].envFrom", "whole Secrets are not allowed; use one key")


def _check_job_pod_storage(pod: dict, ref: str, path: str, job: str) -> None:
    """Of a PVC a job pod mounts its own folder read-write and the shared inputs read-only, nothing else: every job's
    pods run as uid 1000, so any more of the shared volume would let one job rewrite another's checkpoints and caches.
    Volume types that could reach the same storage otherwise (hostPath, nfs, csi, ephemeral...) are refused."""
    claims = set()
    for i, volume in enumerate(pod.get("volumes") or []):
        kinds = set(volume) - {"name"} - JOB_VOLUME_TYPES
        if kinds:
            problem = f"{', '.join(sorted(kinds))} volumes are not allowed in job pods (storage: the shared PVC)"
            raise ManifestError(ref, f"{path}.volumes[{i}]", problem)
        if "persistentVolumeClaim" in volume:
            claims.add(volume.get("name"))
    for section in ("initContainers", "containers"):
        for j, container in enumerate(pod.get(section) or []):
            for k, mount in enumerate(container.get("volumeMounts") or []):
                if mount.get("name") in claims and not shared_volume.job_may_mount(mount, job):
                    own, inputs = shared_volume.run_subpath(job), ", ".join(shared_volume.INPUTS)
                    problem = f"a PVC is mounted here only as subPath {own} or, read-only, {inputs}"
                    raise ManifestError(ref, f"{path}.{section}[{j}].volumeMounts[{k}]", problem)


def _check_ssh_contract(spec: dict, ref: str) -> None:
    """The kit's images run sshd as mpiuser on 2222: the job must mount keys and probe where they are."""
    if spec.get("sshAuthMountPath", "/root/.ssh") != SSH_AUTH_MOUNT_PATH:
        problem = f"must be {SSH_AUTH_MOUNT_PATH} (the kit's images run sshd as {SSH_USER}, uid {SSH_UID})"
        raise ManifestError(ref, "spec.sshAuthMountPath", problem)
    if "Worker" not in spec["mpiReplicaSpecs"]:
        return
    pod = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    probe = (container.get("readinessProbe") or {}).get("tcpSocket", {}).get("port")
    if spec.get("launcherCreationPolicy") == "WaitForWorkersReady" and probe is None:
        problem = "WaitForWorkersReady needs a readiness probe (tcpSocket on the sshd port)"
        raise ManifestError(ref, f"{_WORKER_CONTAINER}.readinessProbe", problem)
    if probe not in (None, SSH_PORT, "ssh"):
        problem = f"{probe} is not the images' sshd port {SSH_PORT}"
        raise ManifestError(ref, f"{_WORKER_CONTAINER}.readinessProbe.tcpSocket.port", problem)
    uid = (container.get("securityContext") or {}).get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
    if uid not in (None, SSH_UID):
        problem = f"{uid} is not the images' {SSH_USER} uid {SSH_UID}"
        raise ManifestError(ref, f"{_MPIJOB}.Worker.template.spec.securityContext.runAsUser", problem)


def _check_training_runtime(runtime: dict, ref: str) -> None:
    """Each replicated job's template is a batch/v1 Job spec: checked against the Kubernetes schema."""
    jobs = value_at(runtime, "spec.template.spec.replicatedJobs") or []
    if not jobs:
        raise ManifestError(ref, "spec.template.spec.replicatedJobs", "missing")
    for i, rjob in enumerate(jobs):
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": rjob.get("name", "x")}}
        job["spec"] = (rjob.get("template") or {}).get("spec")
        _validate_core(job, ref, f"spec.template.spec.replicatedJobs[{i}].template.spec")


def _check_trainjob(job: dict, ref: str) -> None:
    trainer = job["spec"].get("trainer", {})
    if trainer.get("numNodes", 1) < 1:
        raise ManifestError(ref, "spec.trainer.numNodes", "must be at least 1")
    _check_resources(trainer.get("resourcesPerNode", {}), ref, "spec.trainer.resourcesPerNode")

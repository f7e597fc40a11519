"""Cluster inventory through the official `kubernetes` client: nodes, their accelerators and huge pages, and the CRDs
the kit's jobs need (MPIJob v2beta1, Kubeflow Trainer's TrainJob).

No kubeconfig is a normal state (a laptop): `discover_cluster` then returns a report saying "no cluster configured" and
`load_client` raises one LabkitError that says how to configure one. The kubernetes package is imported only inside
functions, so `import labkit.cluster` stays cheap on machines without it (the GPU benchmark image).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, LabkitError, check_choice, check_number
from labkit.tabular import format_bytes, html_table, text_table

NO_CLUSTER_MESSAGE = (
    "no cluster configured: set KUBECONFIG or create ~/.kube/config (kind and minikube write one), "
    "or run inside a pod with a service account"
)
# Extended resources of the device plugins, by accelerator kind.
ACCELERATOR_RESOURCES = {"nvidia": "nvidia.com/gpu", "gaudi": "habana.ai/gaudi", "amd": "amd.com/gpu"}
TRACKED_RESOURCES = (*ACCELERATOR_RESOURCES.values(), "hugepages-2Mi", "hugepages-1Gi", "cpu", "memory")
# GKE's accelerator label values (cloud.google.com/gke-accelerator) as the products people know.
GKE_ACCELERATORS = {
    "nvidia-tesla-k80": "NVIDIA K80", "nvidia-tesla-p4": "NVIDIA P4", "nvidia-tesla-p100": "NVIDIA P100",
    "nvidia-tesla-v100": "NVIDIA V100", "nvidia-tesla-t4": "NVIDIA T4", "nvidia-l4": "NVIDIA L4",
    "nvidia-tesla-a100": "NVIDIA A100 40GB", "nvidia-a100-80gb": "NVIDIA A100 80GB",
    "nvidia-h100-80gb": "NVIDIA H100 80GB", "nvidia-h100-mega-80gb": "NVIDIA H100 Mega 80GB",
    "nvidia-h200-141gb": "NVIDIA H200 141GB", "nvidia-b200": "NVIDIA B200",
}  # fmt: skip
# Labels naming a node's accelerator, best first: (label, kind, product; None = the label's value). The product labels
# come from NVIDIA GPU feature discovery, GKE and the AMD node labeller; the "true" flags from Intel's and NFD's rules
# (PCI vendors 1da3 = Habana Labs, 10de = NVIDIA).
PRODUCT_LABELS = (
    ("nvidia.com/gpu.product", "nvidia", None),
    ("cloud.google.com/gke-accelerator", "nvidia", GKE_ACCELERATORS),
    ("amd.com/gpu.product-name", "amd", None),
    ("beta.amd.com/gpu.product-name", "amd", None),
)
FLAG_LABELS = (
    ("intel.feature.node.kubernetes.io/gaudi", "gaudi", "Intel Gaudi"),
    ("feature.node.kubernetes.io/pci-1da3.present", "gaudi", "Intel Gaudi"),
    ("feature.node.kubernetes.io/pci-10de.present", "nvidia", "NVIDIA GPU (no GPU feature discovery label)"),
)
LABEL_NVIDIA_MEMORY = "nvidia.com/gpu.memory"  # MiB per GPU (GFD)
LABEL_AMD_VRAM = "amd.com/gpu.vram"  # e.g. 192G
ACCELERATOR_LABEL_PREFIXES = (
    "nvidia.com/",
    "amd.com/",
    "beta.amd.com/",
    "habana.ai/",
    "cloud.google.com/gke-accelerator",
    *(label for label, _, _ in FLAG_LABELS),
    "node.kubernetes.io/instance-type",
)
MPIJOB_CRD, MPIJOB_VERSION = "mpijobs.kubeflow.org", "v2beta1"
TRAINJOB_CRD, TRAINJOB_VERSION = "trainjobs.trainer.kubeflow.org", "v1alpha1"
# The one fix for a cluster that cannot run the kit's MPIJobs (labkit check/discover and the kubernetes backend).
MPI_OPERATOR_FIX = (
    "install the MPI Operator v0.5 or later: kubectl apply --server-side -f "
    "https://raw.githubusercontent.com/kubeflow/mpi-operator/v0.6.0/deploy/v2beta1/mpi-operator.yaml "
    "(or use the local backend)"
)
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def mpijob_problem(served: Sequence[str] | None) -> tuple[str, str] | None:
    """(problem, fix) when mpijobs.kubeflow.org, serving `served` versions (None: no such API), cannot take the kit's
    MPIJobs; None when it serves v2beta1."""
    if served is None:
        return "the MPIJob CRD is not installed (no MPI Operator)", MPI_OPERATOR_FIX
    if MPIJOB_VERSION in served:
        return None
    if "v1" in served:
        problem = (
            f"{MPIJOB_CRD} is served at v1 (Kubeflow training-operator v1), not {MPIJOB_VERSION}: the kit's "
            "MPIJob manifests would be rejected, and the two CRD versions cannot coexist"
        )
        fix = (
            "disable the training-operator's MPIJob support (its --enable-scheme flag without mpijob), delete its "
            f"v1 {MPIJOB_CRD} CRD, then {MPI_OPERATOR_FIX}"
        )
        return problem, fix
    return f"{MPIJOB_CRD} serves {', '.join(served) or 'no version'}, not {MPIJOB_VERSION}", MPI_OPERATOR_FIX


# --------------------------------------------------------------------------------------------------------------------
# Where the cluster configuration comes from


@dataclass(frozen=True)
class KubeconfigSource:
    """Which configuration a client would use: kubeconfig file(s) or the pod's service account. Holds no credentials."""

    kind: str  # "file" | "in-cluster"
    paths: tuple[str, ...] = ()
    context: str | None = None  # the context that would be used
    server: str | None = None  # the API server URL of that context's cluster

    def describe(self) -> str:
        if self.kind == "in-cluster":
            return f"in-cluster service account (server {self.server})"
        ctx = f", context {self.context}" if self.context else ""
        return f"kubeconfig {', '.join(self.paths)}{ctx}" + (f", server {self.server}" if self.server else "")


def _read_kubeconfig_summary(paths: Iterable[str], context: str | None) -> tuple[str | None, str | None]:
    """(context, server) the way kubectl merges files: the first file that sets a value wins. Never returns secrets."""
    import yaml

    current, named = None, {"contexts": {}, "clusters": {}}
    for path in paths:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            problem = f"{path} is not a readable kubeconfig ({type(exc).__name__}: {exc})"
            raise ConfigError(
                "kubeconfig", problem, "fix or remove that file, or point KUBECONFIG at a valid one"
            ) from None
        if not isinstance(doc, dict):
            fix = "point KUBECONFIG at a file written by kubectl, kind or minikube"
            raise ConfigError("kubeconfig", f"{path} is not a kubeconfig (top level is not a mapping)", fix)
        current = current or doc.get("current-context")
        for section, items in named.items():
            for item in doc.get(section) or []:
                if isinstance(item, dict) and item.get("name"):
                    items.setdefault(item["name"], item.get(section[:-1]) or {})
    contexts, clusters = named["contexts"], named["clusters"]
    chosen = context or current
    if chosen and chosen not in contexts:
        problem = f"context {chosen!r} is not in {', '.join(paths)} (contexts: {', '.join(sorted(contexts)) or 'none'})"
        fix = "pick one of those contexts (kubectl config get-contexts)"
        raise ConfigError("context" if context else "kubeconfig", problem, fix)
    server = clusters.get((contexts.get(chosen) or {}).get("cluster"), {}).get("server") if chosen else None
    return chosen, _without_userinfo(server)


def _without_userinfo(url: str | None) -> str | None:
    """https://user:secret@host:6443 -> https://host:6443: a server URL is shown, credentials never are."""
    if not url or "@" not in url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def find_kubeconfig(
    kubeconfig: str | os.PathLike | None = None, context: str | None = None, env: Mapping[str, str] | None = None
) -> KubeconfigSource | None:
    """The configuration a client would load, or None when no cluster is configured.

    Order as kubectl: an explicit file, then $KUBECONFIG (a list; missing entries are skipped), then ~/.kube/config,
    then the in-cluster service account. An explicit file that does not exist is a ConfigError (a typo, not no cluster).
    """
    env = os.environ if env is None else env
    if kubeconfig:
        if not Path(kubeconfig).expanduser().is_file():
            fix = "pass an existing kubeconfig file, or leave it empty to use $KUBECONFIG or ~/.kube/config"
            raise ConfigError("kubeconfig", f"{Path(kubeconfig).expanduser()} does not exist", fix)
        candidates = [kubeconfig]
    elif env.get("KUBECONFIG"):
        candidates = [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
    else:
        candidates = [Path(env.get("HOME") or Path.home()) / ".kube" / "config"]
    paths = [str(Path(p).expanduser()) for p in candidates if Path(p).expanduser().is_file()]
    if paths:
        return KubeconfigSource("file", tuple(paths), *_read_kubeconfig_summary(paths, context))
    if env.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.is_file():
        host, port = env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443")
        return KubeconfigSource("in-cluster", server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    return None


def _load_configuration(source: KubeconfigSource, context: str | None):
    """A kubernetes.client.Configuration for `source` (never the client's global default)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if source.kind == "in-cluster":
            config.load_incluster_config(client_configuration=cfg)
        else:  # always pass the file(s): the client reads $KUBECONFIG once, when it is first imported
            config.load_kube_config(
                config_file=os.pathsep.join(source.paths),
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
    except config.ConfigException as exc:
        raise LabkitError(
            f"cannot load the cluster configuration from {source.describe()}: {exc}. "
            "Fix: check it with `kubectl config view` and `kubectl get nodes`"
        ) from None
    return cfg


def _client(source: KubeconfigSource | None, context: str | None, *, retries: bool = True):
    """An ApiClient for `source`; retries=False fails fast: a dead server costs one timeout, not four."""
    from kubernetes import client

    if source is None:
        raise LabkitError(NO_CLUSTER_MESSAGE)
    cfg = _load_configuration(source, context)
    if not retries:
        cfg.retries = False
    return client.ApiClient(configuration=cfg)


def load_client(kubeconfig: str | os.PathLike | None = None, context: str | None = None):
    """A kubernetes ApiClient for the configured cluster, or a LabkitError saying that no cluster is configured.

    `kubeconfig`: a kubeconfig path (default $KUBECONFIG, ~/.kube/config, then the in-cluster service account);
    `context`: a context name from it (default: its current-context).
    """
    return _client(find_kubeconfig(kubeconfig, context), context)


_REASONS = (
    "Connection refused",
    "timed out",
    "Name or service not known",
    "No route to host",
    "certificate verify failed",
    "Network is unreachable",
)


def short_reason(exc: BaseException) -> str:
    """The useful part of a client/urllib3 error: 'Connection refused', 'HTTP 401 Unauthorized', a timeout."""
    status = getattr(exc, "status", None)
    if status:  # kubernetes ApiException with an HTTP status
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(getattr(exc, "reason", None) or exc)
    return next((marker for marker in _REASONS if marker in text), text[:200])


# --------------------------------------------------------------------------------------------------------------------
# API server reachability (used by `labkit check`)


@dataclass(frozen=True)
class ApiProbe:
    """Whether the API server answered, within a hard time limit."""

    reachable: bool
    server: str | None
    version: str | None = None  # e.g. v1.32.0
    status: int | None = None  # HTTP status when the server answered with an error (401, 403, ...)
    error: str | None = None
    elapsed_s: float = 0.0


def probe_api_server(
    kubeconfig: str | os.PathLike | None = None, context: str | None = None, *, timeout: float = 2.0
) -> ApiProbe:
    """GET /version with `timeout` seconds in all (config loading included); never hangs.

    The request runs in a daemon thread joined with the time limit: an exec credential plugin or a black-holed address
    cannot stall the caller. Raises LabkitError only when no cluster is configured.
    """
    source = find_kubeconfig(kubeconfig, context)
    if source is None:
        raise LabkitError(NO_CLUSTER_MESSAGE)
    # Import before the clock starts: a cold import of the client takes seconds on a busy laptop and is not the network.
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    outcome: dict[str, Any] = {}
    start = time.monotonic()

    def call() -> None:
        try:
            api = _client(source, context, retries=False)
        except LabkitError as exc:
            outcome["unreachable"] = str(exc)
            return
        try:
            outcome["version"] = client.VersionApi(api).get_code(_request_timeout=(timeout, timeout)).git_version
        except ApiException as exc:  # with a status the server answered (e.g. 401/403); without, TLS and the like
            outcome.update(
                {"status": exc.status, "error": short_reason(exc)} if exc.status else {"unreachable": short_reason(exc)}
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, timed out, no route
            outcome["unreachable"] = short_reason(exc)
        except Exception as exc:  # it answered, but not with a /version this client version can parse
            outcome["error"] = f"unexpected /version reply ({type(exc).__name__})"
        finally:
            api.close()

    worker = threading.Thread(target=call, name="labkit-api-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    elapsed = time.monotonic() - start
    if worker.is_alive() or "unreachable" in outcome:
        error = outcome.get("unreachable", f"no answer within {timeout:g} s")
        return ApiProbe(False, source.server, error=error, elapsed_s=elapsed)
    return ApiProbe(True, source.server, outcome.get("version"), outcome.get("status"), outcome.get("error"), elapsed)


# --------------------------------------------------------------------------------------------------------------------
# Nodes


def _number(quantity: Any) -> float | int:
    """A Kubernetes quantity ('8', '500m', '1Ti', '64Gi') as a number: int where whole (devices, bytes), else float."""
    from kubernetes.utils import parse_quantity

    value = parse_quantity(str(quantity))
    return int(value) if value == value.to_integral_value() else float(value)


def accelerator_from_labels(labels: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(kind, product) named by a node's labels: NVIDIA GFD, GKE, AMD node labeller, Intel/NFD; (None, None) if none."""
    labels = labels or {}
    for label, kind, products in PRODUCT_LABELS:
        if labels.get(label):
            return kind, (products or {}).get(labels[label], labels[label])
    for label, kind, product in FLAG_LABELS:
        if str(labels.get(label, "")).lower() == "true":
            return kind, product
    return None, None


@dataclass(frozen=True)
class NodeInventory:
    """What one node offers the kit: accelerators, huge pages, CPU and memory (capacity and allocatable)."""

    name: str
    ready: bool
    schedulable: bool
    accelerator_kind: str | None  # nvidia | amd | gaudi | None
    accelerator_product: str | None
    accelerator_memory: int | None  # bytes per device, where a label says
    capacity: dict[str, int | float] = field(default_factory=dict)  # resource -> devices / cores / bytes
    allocatable: dict[str, int | float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # the accelerator-related labels only
    taints: tuple[str, ...] = ()

    @property
    def accelerators(self) -> int:
        """Allocatable devices of the node's accelerator kind (0 when it has none)."""
        return int(sum(self.allocatable.get(r, 0) for r in ACCELERATOR_RESOURCES.values()))

    @property
    def hugepages_2mi_bytes(self) -> int:
        return int(self.allocatable.get("hugepages-2Mi", 0))

    def row(self) -> dict[str, Any]:
        capacity = int(sum(self.capacity.get(r, 0) for r in ACCELERATOR_RESOURCES.values()))
        return {
            "node": self.name,
            "ready": "yes" if self.ready else "NO",
            "schedulable": "yes" if self.schedulable else "cordoned",
            "kind": self.accelerator_kind or "cpu",
            "product": self.accelerator_product or "-",
            "accelerators": f"{self.accelerators}/{capacity}",
            "hugepages-2Mi": format_bytes(self.hugepages_2mi_bytes, "GiB"),  # pages are binary-sized
            "cpu": self.allocatable.get("cpu"),
            "memory": format_bytes(self.allocatable.get("memory")),
            "taints": ", ".join(self.taints) or "-",
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "taints": list(self.taints),
            "accelerators": self.accelerators,
            "hugepages_2mi_bytes": self.hugepages_2mi_bytes,
        }


def _resources(mapping: Mapping[str, Any] | None) -> dict[str, int | float]:
    return {name: _number(value) for name, value in (mapping or {}).items() if name in TRACKED_RESOURCES}


def _label_memory(labels: Mapping[str, str]) -> int | None:
    """Bytes per device from GFD's MiB label or the AMD labeller's '192G'; None when absent or unreadable."""
    if labels.get(LABEL_NVIDIA_MEMORY, "").isdigit():
        return int(labels[LABEL_NVIDIA_MEMORY]) * 2**20
    vram = labels.get(LABEL_AMD_VRAM)
    try:
        return _number(vram[:-1] + "Gi" if vram.endswith("G") else vram) if vram else None
    except Exception:  # an unexpected label format is not worth failing the inventory for
        return None


def node_inventory(node) -> NodeInventory:
    """A NodeInventory from a kubernetes.client V1Node."""
    meta, spec, status = node.metadata, node.spec, node.status
    labels = dict(meta.labels or {})
    capacity = _resources(status.capacity if status else None)
    kind, product = accelerator_from_labels(labels)
    if kind is None:  # a device plugin without labels still shows up as a resource
        kind = next((k for k, resource in ACCELERATOR_RESOURCES.items() if capacity.get(resource)), None)
        product = f"unknown {kind} accelerator (no product label)" if kind else None
    ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])) if status else False
    taints = tuple(f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}" for t in (spec and spec.taints or []))
    return NodeInventory(
        meta.name,
        ready,
        not bool(spec and spec.unschedulable),
        kind,
        product,
        _label_memory(labels),
        capacity,
        _resources(status.allocatable if status else None),
        {k: v for k, v in labels.items() if k.startswith(ACCELERATOR_LABEL_PREFIXES)},
        taints,
    )


def list_node_inventory(api_client, *, timeout: float = 10.0) -> list[NodeInventory]:
    from kubernetes import client

    nodes = client.CoreV1Api(api_client).list_node(_request_timeout=timeout)
    return sorted((node_inventory(n) for n in nodes.items), key=lambda n: n.name)


# --------------------------------------------------------------------------------------------------------------------
# CRDs


@dataclass(frozen=True)
class CrdStatus:
    """Whether a CRD is installed and serves the version the kit's manifests use."""

    name: str
    wanted_version: str
    installed: bool | None  # None: could not tell (e.g. no RBAC to read CRDs)
    served_versions: tuple[str, ...] = ()
    storage_version: str | None = None
    problem: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.installed) and self.wanted_version in self.served_versions

    def row(self) -> dict[str, Any]:
        state = {None: "unknown", False: "missing"}.get(self.installed, "ok" if self.ok else "wrong version")
        return {
            "crd": self.name,
            "wanted": self.wanted_version,
            "served": ", ".join(self.served_versions) or "-",
            "state": state,
            "problem": self.problem or "-",
            "fix": self.fix or "-",
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"served_versions": list(self.served_versions), "ok": self.ok}


def _served(crd) -> tuple[tuple[str, ...], str | None]:
    versions = crd.spec.versions or []
    return tuple(v.name for v in versions if v.served), next((v.name for v in versions if v.storage), None)


def mpijob_crd_status(crd) -> CrdStatus:
    """MPIJob CRD (a V1CustomResourceDefinition, None when absent): v2beta1 served, or what is wrong with it."""
    served, storage = _served(crd) if crd is not None else ((), None)
    problem, fix = mpijob_problem(served if crd is not None else None) or (None, None)
    return CrdStatus(MPIJOB_CRD, MPIJOB_VERSION, crd is not None, served, storage, problem, fix)


def trainjob_crd_status(crd) -> CrdStatus:
    """Kubeflow Trainer v2's TrainJob CRD (trainer.kubeflow.org, v1alpha1)."""
    if crd is None:
        fix = "optional: install Kubeflow Trainer v2 to submit TrainJobs; MPIJobs do not need it"
        return CrdStatus(
            TRAINJOB_CRD, TRAINJOB_VERSION, False, problem="Kubeflow Trainer (TrainJob) is not installed", fix=fix
        )
    served, storage = _served(crd)
    if TRAINJOB_VERSION in served:
        return CrdStatus(TRAINJOB_CRD, TRAINJOB_VERSION, True, served, storage)
    problem = f"{TRAINJOB_CRD} serves {', '.join(served) or 'no version'}, not {TRAINJOB_VERSION}"
    fix = f"install a Kubeflow Trainer release that serves trainer.kubeflow.org/{TRAINJOB_VERSION}"
    return CrdStatus(TRAINJOB_CRD, TRAINJOB_VERSION, True, served, storage, problem, fix)


def read_crd(api_client, name: str, *, timeout: float = 10.0):
    """The CRD object, None when it does not exist; ApiException for anything else (e.g. 403)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        return client.ApiextensionsV1Api(api_client).read_custom_resource_definition(name, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def crd_statuses(api_client, *, timeout: float = 10.0) -> list[CrdStatus]:
    from kubernetes.client.exceptions import ApiException

    out = []
    for name, wanted, judge in (
        (MPIJOB_CRD, MPIJOB_VERSION, mpijob_crd_status),
        (TRAINJOB_CRD, TRAINJOB_VERSION, trainjob_crd_status),
    ):
        try:
            out.append(judge(read_crd(api_client, name, timeout=timeout)))
        except ApiException as exc:
            if exc.status not in (401, 403):
                raise
            fix = (
                "ask for read access to customresourcedefinitions, or check with "
                f"`kubectl api-resources --api-group={name.split('.', 1)[1]}`"
            )
            out.append(CrdStatus(name, wanted, None, problem=f"cannot read CRDs ({short_reason(exc)})", fix=fix))
    return out


# --------------------------------------------------------------------------------------------------------------------
# The whole picture

NODE_COLUMNS = (
    "node",
    "ready",
    "schedulable",
    "kind",
    "product",
    "accelerators",
    "hugepages-2Mi",
    "cpu",
    "memory",
    "taints",
)
CRD_COLUMNS = ("crd", "wanted", "served", "state", "problem", "fix")


@dataclass
class ClusterReport:
    """Everything `labkit discover --cluster` and notebook 01 show about the cluster."""

    configured: bool
    reachable: bool = False
    source: str | None = None
    server: str | None = None
    nodes: list[NodeInventory] = field(default_factory=list)
    crds: list[CrdStatus] = field(default_factory=list)
    error: str | None = None

    def totals(self) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for node in self.nodes:
            if node.accelerator_kind and node.accelerators:
                by_kind[node.accelerator_kind] = by_kind.get(node.accelerator_kind, 0) + node.accelerators
        return {
            "nodes": len(self.nodes),
            "ready_nodes": sum(n.ready for n in self.nodes),
            "accelerators": by_kind,
            "hugepages_2mi_bytes": sum(n.hugepages_2mi_bytes for n in self.nodes),
        }

    def summary(self) -> str:
        """One sentence on what the cluster offers the kit, computed from this report."""
        if not self.reachable:
            return f"No cluster inventory ({self.error})."
        totals = self.totals()
        per_kind = ", ".join(f"{n} {k}" for k, n in sorted(totals["accelerators"].items())) or "no accelerators"
        mpijob = next((c for c in self.crds if c.name == MPIJOB_CRD), None)
        usable = mpijob is not None and mpijob.ok
        mpi = (
            "MPIJob v2beta1 is served"
            if usable
            else f"MPIJob v2beta1 is NOT usable: {mpijob.problem if mpijob else 'not checked'}"
        )
        return (
            f"The cluster has {totals['nodes']} node(s), {totals['ready_nodes']} ready, with {per_kind} allocatable "
            f"and {totals['hugepages_2mi_bytes'] / 2**30:.0f} GiB of 2 MiB huge pages; {mpi}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "configured": self.configured,
            "reachable": self.reachable,
            "source": self.source,
            "server": self.server,
            "error": self.error,
            "totals": self.totals(),
            "nodes": [n.to_dict() for n in self.nodes],
            "crds": [c.to_dict() for c in self.crds],
        }

    def _tables(self) -> list[tuple[list[dict], tuple[str, ...]]]:
        return [([n.row() for n in self.nodes], NODE_COLUMNS), ([c.row() for c in self.crds], CRD_COLUMNS)]

    def text(self) -> str:
        if not self.configured or not self.reachable:
            return f"cluster: {self.error}"
        tables = [
            text_table(rows, columns) if rows or columns is CRD_COLUMNS else "(no nodes)"
            for rows, columns in self._tables()
        ]
        return "\n\n".join([f"cluster: {self.source}", *tables])

    def _repr_html_(self) -> str:
        if not self.configured or not self.reachable:
            return f"<p><b>cluster:</b> {escape(self.error or '')}</p>"
        tables = "".join(html_table(rows, columns, status_column=None) for rows, columns in self._tables())
        return f"<p><b>cluster:</b> {escape(self.source or '')}</p>{tables}"


def discover_cluster(
    kubeconfig: str | os.PathLike | None = None, context: str | None = None, *, timeout: float = 10.0
) -> ClusterReport:
    """Nodes and CRDs of the configured cluster. No cluster configured, or one that does not answer, is a report with
    `error` set, not an exception; an explicit kubeconfig path that does not exist is a ConfigError."""
    source = find_kubeconfig(kubeconfig, context)
    if source is None:
        return ClusterReport(configured=False, error=NO_CLUSTER_MESSAGE)
    report = ClusterReport(configured=True, source=source.describe(), server=source.server)
    try:
        api = _client(source, context, retries=False)
    except LabkitError as exc:
        report.error = str(exc)
        return report
    try:
        report.nodes = list_node_inventory(api, timeout=timeout)
        report.reachable = True
        report.crds = crd_statuses(api, timeout=timeout)
    except Exception as exc:  # unreachable, refused, forbidden: the report says which
        failed = "reading CRDs" if report.reachable else "listing nodes"
        report.error = f"{failed} on {source.server} failed: {short_reason(exc)}"
    finally:
        api.close()
    return report


def resolve_cluster_mode(
    cluster: str, kubeconfig: str | os.PathLike | None = None, context: str | None = None, timeout: float = 10.0
) -> bool:
    """Notebook parameters `cluster` (auto|on|off), `kubeconfig`, `context`, `api_timeout_s` -> whether to query the
    cluster. Bad values, and 'on' without a configured cluster, are ConfigErrors raised before any work; 'auto'
    queries only when a configuration exists."""
    value = str(cluster).strip().lower()
    check_choice("cluster", value, ("auto", "on", "off"), "use 'auto' (query when configured), 'on' or 'off'")
    check_number("api_timeout_s", timeout, 0.0, "use e.g. 10.0", strict=True)
    if timeout > 300:
        raise ConfigError("api_timeout_s", f"{timeout!r} is not a number of seconds in (0, 300]", "use e.g. 10.0")
    if value == "off":
        return False
    source = find_kubeconfig(kubeconfig or None, context or None)
    if source is None and value == "on":
        raise ConfigError("cluster", f"'on' but {NO_CLUSTER_MESSAGE}", "configure a cluster or use cluster='auto'")
    return source is not None

"""Cluster inventory through the official `kubernetes` client (configuration and access: labkit.kube): nodes, their
accelerators and huge pages, and the CRDs the kit's jobs need (MPIJob v2beta1, Kubeflow Trainer's TrainJob), with the
one verdict on an MPI Operator. No cluster configured is a report that says so, not an exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any

from labkit.devices import ACCELERATOR_RESOURCE
from labkit.errors import ConfigError, LabkitError, check_choice, check_number
from labkit.kube import NO_CLUSTER_MESSAGE, api_client, find_kubeconfig, request_json, short_reason, unreachable
from labkit.tabular import format_bytes, html_table, text_table

# Resources a node inventory keeps: the accelerators' device plugins, huge pages, CPU and memory
TRACKED_RESOURCES = (*filter(None, ACCELERATOR_RESOURCE.values()), "hugepages-2Mi", "hugepages-1Gi", "cpu", "memory")
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
    "nvidia.com/", "amd.com/", "beta.amd.com/", "habana.ai/", "cloud.google.com/gke-accelerator",
    *(label for label, _, _ in FLAG_LABELS), "node.kubernetes.io/instance-type",
)  # fmt: skip
MPIJOB_CRD, MPIJOB_VERSION = "mpijobs.kubeflow.org", "v2beta1"
TRAINJOB_CRD, TRAINJOB_VERSION = "trainjobs.trainer.kubeflow.org", "v1alpha1"
# The one fix for a cluster that cannot run the kit's MPIJobs (labkit check/discover and the kubernetes backend).
MPI_OPERATOR_FIX = (
    "install the MPI Operator v0.5 or later: kubectl apply --server-side -f "
    "https://raw.githubusercontent.com/kubeflow/mpi-operator/v0.6.0/deploy/v2beta1/mpi-operator.yaml "
    "(or use the local backend)"
)


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


# ------------------------------------------------------------------------------------------------------------- nodes
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
        return _devices(self.allocatable)

    @property
    def hugepages_2mi_bytes(self) -> int:
        return int(self.allocatable.get("hugepages-2Mi", 0))

    def row(self) -> dict[str, Any]:
        state = ("yes" if self.ready else "NO", "yes" if self.schedulable else "cordoned")
        kind = (self.accelerator_kind or "cpu", self.accelerator_product or "-")
        hugepages = format_bytes(self.hugepages_2mi_bytes, "GiB")  # pages are binary-sized
        cpu, memory = self.allocatable.get("cpu"), format_bytes(self.allocatable.get("memory"))
        devices, taints = f"{self.accelerators}/{_devices(self.capacity)}", ", ".join(self.taints) or "-"
        return dict(zip(NODE_COLUMNS, (self.name, *state, *kind, devices, hugepages, cpu, memory, taints)))

    def to_dict(self) -> dict[str, Any]:
        extra = {"accelerators": self.accelerators, "hugepages_2mi_bytes": self.hugepages_2mi_bytes}
        return asdict(self) | {"taints": list(self.taints)} | extra


def _devices(resources: Mapping[str, Any]) -> int:
    return int(sum(resources.get(r, 0) for r in ACCELERATOR_RESOURCE.values() if r))


def _accelerator_counts(nodes: Iterable[NodeInventory]) -> dict[str, int]:
    """Allocatable devices per accelerator kind, in the order the kinds first appear."""
    counts: dict[str, int] = {}
    for node in nodes:
        if node.accelerator_kind and node.accelerators:
            counts[node.accelerator_kind] = counts.get(node.accelerator_kind, 0) + node.accelerators
    return counts


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
        kind = next((k for k, resource in ACCELERATOR_RESOURCE.items() if resource and capacity.get(resource)), None)
        product = f"unknown {kind} accelerator (no product label)" if kind else None
    ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])) if status else False
    taints = tuple(f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}" for t in (spec and spec.taints or []))
    schedulable, allocatable = not bool(spec and spec.unschedulable), _resources(status.allocatable if status else None)
    shown = {k: v for k, v in labels.items() if k.startswith(ACCELERATOR_LABEL_PREFIXES)}
    memory = _label_memory(labels)
    return NodeInventory(meta.name, ready, schedulable, kind, product, memory, capacity, allocatable, shown, taints)


def list_node_inventory(api_client, *, timeout: float = 10.0) -> list[NodeInventory]:
    from kubernetes import client

    nodes = client.CoreV1Api(api_client).list_node(_request_timeout=timeout)
    return sorted((node_inventory(n) for n in nodes.items), key=lambda n: n.name)


# Reading nodes is cluster-scoped: the kit's namespaced Role cannot, the ClusterRole in manifests/base/node-reader can.
NODES_FORBIDDEN = (
    "cpu assumed: this identity may not list nodes (cluster scope). Fix: an admin runs "
    "`kubectl apply -k manifests/base/node-reader` (ClusterRole labkit-node-reader), or name the accelerator "
    "(--accelerator nvidia|gaudi; notebooks: device=cuda|hpu)"
)


def cluster_accelerator(api_client, *, may_list: bool = True, timeout: float = 10.0) -> tuple[str, str]:
    """device=auto on a cluster: (nvidia | gaudi | cpu, why), the accelerator with the most allocatable devices on
    ready nodes; cpu, saying why, when there is none or the nodes cannot be read (may_list: RBAC's answer)."""
    try:
        nodes = list_node_inventory(api_client, timeout=timeout) if may_list else None
    except Exception as exc:  # noqa: BLE001 - auto falls back to cpu, saying why
        if getattr(exc, "status", None) != 403:
            return "cpu", f"cpu assumed: the cluster's nodes are not readable ({short_reason(exc)})"
        nodes = None
    if nodes is None:
        return "cpu", NODES_FORBIDDEN
    counts = _accelerator_counts(n for n in nodes if n.ready and n.accelerator_kind in ("nvidia", "gaudi"))
    if not counts:
        return "cpu", f"no GPU or Gaudi node among {len(nodes)} node(s)"
    kind = max(counts, key=counts.get)
    return kind, f"{counts[kind]} {kind} device(s) allocatable on the cluster's ready nodes"


# ------------------------------------------------------------------------------------------------------------- CRDs
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
        return bool(self.installed) and self.wanted_version in self.served_versions and self.problem is None

    def row(self) -> dict[str, Any]:
        wrong = "too old" if self.wanted_version in self.served_versions else "wrong version"
        state = {None: "unknown", False: "missing"}.get(self.installed, "ok" if self.ok else wrong)
        served = ", ".join(self.served_versions) or "-"
        values = (self.name, self.wanted_version, served, state, self.problem or "-", self.fix or "-")
        return dict(zip(CRD_COLUMNS, values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"served_versions": list(self.served_versions), "ok": self.ok}


def _served(crd) -> tuple[tuple[str, ...], str | None]:
    versions = (crd.spec.versions or []) if crd is not None else []
    return tuple(v.name for v in versions if v.served), next((v.name for v in versions if v.storage), None)


def _spec_fields(crd, version: str) -> set[str] | None:
    """The spec fields the CRD's schema declares for that version (None: unknown, or a schema that keeps any)."""
    for each in (crd.spec.versions or []) if crd is not None else []:
        schema = each.schema.open_apiv3_schema if each.name == version and each.schema else None
        spec = (schema.properties or {}).get("spec") if schema is not None else None
        if spec is not None and spec.properties:
            return set(spec.properties)
    return None


def mpijob_crd_status(crd) -> CrdStatus:
    """MPIJob CRD (a V1CustomResourceDefinition, None when absent): v2beta1 served, or what is wrong with it."""
    served, storage = _served(crd)
    problem, fix = mpijob_problem(served if crd is not None else None) or (None, None)
    fields = _spec_fields(crd, MPIJOB_VERSION)
    if problem is None and fields is not None and "launcherCreationPolicy" not in fields:
        # MPI Operator v0.4.0 (its manifests/base/kubeflow.org_mpijobs.yaml): the launcher starts before the workers.
        problem = f"{MPIJOB_CRD} has no spec.launcherCreationPolicy: an MPI Operator older than v0.5"
        fix = MPI_OPERATOR_FIX
    return CrdStatus(MPIJOB_CRD, MPIJOB_VERSION, crd is not None, served, storage, problem, fix)


def trainjob_crd_status(crd) -> CrdStatus:
    """Kubeflow Trainer v2's TrainJob CRD (trainer.kubeflow.org, v1alpha1)."""
    served, storage = _served(crd)
    problem = fix = None
    if crd is None:
        problem = "Kubeflow Trainer (TrainJob) is not installed"
        fix = "optional: install Kubeflow Trainer v2 to submit TrainJobs; MPIJobs do not need it"
    elif TRAINJOB_VERSION not in served:
        problem = f"{TRAINJOB_CRD} serves {', '.join(served) or 'no version'}, not {TRAINJOB_VERSION}"
        fix = f"install a Kubeflow Trainer release that serves trainer.kubeflow.org/{TRAINJOB_VERSION}"
    elif "podSpecOverrides" in (_spec_fields(crd, TRAINJOB_VERSION) or ()):
        # Trainer v2.0 (its only release with podSpecOverrides) applies resourcesPerNode to the launcher job alone
        # (pkg/runtime/framework/plugins/jobset/builder.go at v2.0.0; v2.1.0 adds the runLauncherAsNode node job).
        problem = "Kubeflow Trainer v2.0 gives the kit's node pods none of the TrainJob's resourcesPerNode (no GPUs)"
        fix = "install Kubeflow Trainer v2.1.0 or later"
    return CrdStatus(TRAINJOB_CRD, TRAINJOB_VERSION, crd is not None, served, storage, problem, fix)


def trainjob_has_deadline(api_client, *, timeout: float = 10.0) -> bool:
    """Whether the served TrainJob has spec.activeDeadlineSeconds (Kubeflow Trainer >= v2.2.0), from the OpenAPI v3
    discovery document every authenticated user may read (no CRD read, which needs cluster RBAC)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    path = f"/openapi/v3/apis/trainer.kubeflow.org/{TRAINJOB_VERSION}"
    try:
        document = request_json(api_client, "GET", path, timeout=timeout) or {}
    except ApiException as exc:
        fix = "is Kubeflow Trainer v2 installed? (labkit discover --cluster)"
        raise LabkitError(f"GET {path}: HTTP {exc.status}. Fix: {fix}") from None
    except HTTPError as exc:  # refused, timed out, no route: no answer at all
        raise unreachable(f"GET {path}", exc) from None
    schemas = (document.get("components") or {}).get("schemas") or {}
    trainjob = next((v for k, v in schemas.items() if k.endswith(".TrainJob")), {})
    spec = ((trainjob.get("properties") or {}).get("spec") or {}).get("properties") or {}
    return "activeDeadlineSeconds" in spec


def crd_statuses(api_client, *, timeout: float = 10.0) -> list[CrdStatus]:
    """Each CRD's status; a CRD that does not exist is judged as absent, one this identity may not read is unknown."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api, out = client.ApiextensionsV1Api(api_client), []
    crds = ((MPIJOB_CRD, MPIJOB_VERSION, mpijob_crd_status), (TRAINJOB_CRD, TRAINJOB_VERSION, trainjob_crd_status))
    for name, wanted, judge in crds:
        try:
            out.append(judge(api.read_custom_resource_definition(name, _request_timeout=timeout)))
        except ApiException as exc:
            if exc.status == 404:
                out.append(judge(None))
                continue
            if exc.status not in (401, 403):
                raise
            fix = (
                "ask for read access to customresourcedefinitions, or check with "
                f"`kubectl api-resources --api-group={name.split('.', 1)[1]}`"
            )
            out.append(CrdStatus(name, wanted, None, problem=f"cannot read CRDs ({short_reason(exc)})", fix=fix))
    return out


# ------------------------------------------------------------------------------------------------ the whole picture
NODE_COLUMNS = tuple("node ready schedulable kind product accelerators hugepages-2Mi cpu memory taints".split())
CRD_COLUMNS = ("crd", "wanted", "served", "state", "problem", "fix")


@dataclass(repr=False)
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
        return {
            "nodes": len(self.nodes),
            "ready_nodes": sum(n.ready for n in self.nodes),
            "accelerators": _accelerator_counts(self.nodes),
            "hugepages_2mi_bytes": sum(n.hugepages_2mi_bytes for n in self.nodes),
        }

    def summary(self) -> str:
        """One sentence on what the cluster offers the kit, computed from this report."""
        if not self.reachable:
            return f"No cluster inventory ({self.error})."
        totals = self.totals()
        per_kind = ", ".join(f"{n} {k}" for k, n in sorted(totals["accelerators"].items())) or "no accelerators"
        mpijob = next((c for c in self.crds if c.name == MPIJOB_CRD), None)
        mpi = f"MPIJob v2beta1 is NOT usable: {mpijob.problem if mpijob else 'not checked'}"
        mpi = "MPIJob v2beta1 is served" if mpijob is not None and mpijob.ok else mpi
        return (
            f"The cluster has {totals['nodes']} node(s), {totals['ready_nodes']} ready, with {per_kind} allocatable "
            f"and {totals['hugepages_2mi_bytes'] / 2**30:.0f} GiB of 2 MiB huge pages; {mpi}."
        )

    def to_dict(self) -> dict[str, Any]:
        nodes, crds = [n.to_dict() for n in self.nodes], [c.to_dict() for c in self.crds]
        keys = ("configured", "reachable", "source", "server", "error")
        return {k: getattr(self, k) for k in keys} | {"totals": self.totals(), "nodes": nodes, "crds": crds}

    def _tables(self) -> list[tuple[list[dict], tuple[str, ...]]]:
        return [([n.row() for n in self.nodes], NODE_COLUMNS), ([c.row() for c in self.crds], CRD_COLUMNS)]

    def text(self) -> str:
        if not self.configured or not self.reachable:
            return f"cluster: {self.error}"
        tables = [
            text_table(rows, cols) if rows or cols is CRD_COLUMNS else "(no nodes)" for rows, cols in self._tables()
        ]
        return "\n\n".join([f"cluster: {self.source}", *tables])

    __repr__ = text  # the notebook's plain-text output

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
        api = api_client(source, context, retries=False)
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

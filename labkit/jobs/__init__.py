"""Interactive MPI jobs behind one interface: `get_backend("local" | "kubernetes")` -> JobBackend.

    backend = labkit.jobs.get_backend("local")
    with backend.submit(JobSpec(name="demo", workers=2)) as job:   # deleted on exit
        job.wait_ready()
        job.exec(["cat", "/etc/mpi/hostfile"])

The Kubernetes client is imported only inside the kubernetes backend's methods, so importing this package stays cheap.
"""

from __future__ import annotations

from labkit.errors import check_choice
from labkit.jobs.base import CLUSTER_HOSTFILE, ExecResult, Job, JobBackend, JobNotFound, JobNotReady, JobStatus
from labkit.jobs.kubernetes import KubernetesBackend
from labkit.jobs.local import LocalBackend

BACKENDS = ("local", "kubernetes")

__all__ = [
    "BACKENDS",
    "CLUSTER_HOSTFILE",
    "ExecResult",
    "Job",
    "JobBackend",
    "JobNotFound",
    "JobNotReady",
    "JobStatus",
    "KubernetesBackend",
    "LocalBackend",
    "get_backend",
]


def get_backend(
    name: str = "local",
    *,
    namespace: str = "workloads",
    jobs_dir: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> JobBackend:
    """The backend called `name`; each takes the options that apply to it (local: jobs_dir; kubernetes: kubeconfig,
    context), so callers pass them all without asking which backend they got."""
    check_choice("backend", name, BACKENDS)
    if name == "local":
        return LocalBackend(root=jobs_dir, namespace=namespace)
    return KubernetesBackend(kubeconfig=kubeconfig, context=context, namespace=namespace)

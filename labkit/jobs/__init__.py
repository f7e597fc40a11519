"""Interactive MPI jobs behind one interface: `get_backend("local" | "kubernetes")` -> JobBackend.

with labkit.jobs.get_backend("local").submit(JobSpec(name="demo")) as job:   # deleted on exit
    job.wait_ready()
    job.exec(["cat", "/etc/mpi/hostfile"])
"""

from __future__ import annotations

from labkit.errors import check_choice
from labkit.jobs.base import CLUSTER_HOSTFILE, ExecResult, Job, JobBackend, JobNotFound, JobNotReady, JobStatus
from labkit.jobs.kubernetes import KubernetesBackend
from labkit.jobs.local import LocalBackend

BACKENDS = ("local", "kubernetes")
__all__ = ["BACKENDS", "CLUSTER_HOSTFILE", "ExecResult", "Job", "JobBackend", "JobNotFound", "JobNotReady"]
__all__ += ["JobStatus", "KubernetesBackend", "LocalBackend", "get_backend"]


def get_backend(name="local", *, namespace=None, jobs_dir=None, kubeconfig=None, context=None) -> JobBackend:
    """The backend called `name`; callers pass every option, each backend takes those that apply to it. namespace
    None: manifests.default_namespace() (the lab's own, else workloads)."""
    check_choice("backend", name, BACKENDS)
    if name == "local":
        return LocalBackend(root=jobs_dir, namespace=namespace)
    return KubernetesBackend(kubeconfig=kubeconfig, context=context, namespace=namespace)

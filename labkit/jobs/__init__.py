"""Interactive MPI jobs behind one interface: `get_backend("local" | "kubernetes")` -> JobBackend.

    backend = labkit.jobs.get_backend("local")
    with backend.submit(MpiJobSpec(name="demo", workers=2)) as job:   # deleted on exit
        job.wait_ready()
        job.exec(["cat", "/etc/mpi/hostfile"])

This package imports nothing heavy: the Kubernetes client is loaded only by the kubernetes backend, and
`hello_deepspeed.py` (run inside ranks) imports nothing from here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.jobs.base import (BACKENDS, CLUSTER_HOSTFILE, ExecResult, Job, JobBackend, JobNotFound, JobNotReady,
                              JobStatus, cluster_training_command, parse_metrics, parse_train_command, print_output,
                              validate_backend_name, validate_job_name)

if TYPE_CHECKING:  # pragma: no cover
    from labkit.jobs.kubernetes import KubernetesBackend
    from labkit.jobs.local import LocalBackend

__all__ = ["BACKENDS", "CLUSTER_HOSTFILE", "ExecResult", "Job", "JobBackend", "JobNotFound", "JobNotReady", "JobStatus",
           "KubernetesBackend", "LocalBackend", "cluster_training_command", "get_backend", "parse_metrics",
           "parse_train_command", "print_output", "validate_backend_name", "validate_job_name"]


def get_backend(name: str = "local", **options: Any) -> JobBackend:
    """The backend called `name`; options go to its constructor (local: root, namespace;
    kubernetes: kubeconfig, context, namespace, api_client)."""
    validate_backend_name(name)
    if name == "local":
        from labkit.jobs.local import LocalBackend

        return LocalBackend(**options)
    from labkit.jobs.kubernetes import KubernetesBackend

    return KubernetesBackend(**options)


def __getattr__(attr: str):  # lazy: importing labkit.jobs must not import the Kubernetes client
    if attr == "LocalBackend":
        from labkit.jobs.local import LocalBackend

        return LocalBackend
    if attr == "KubernetesBackend":
        from labkit.jobs.kubernetes import KubernetesBackend

        return KubernetesBackend
    raise AttributeError(f"module 'labkit.jobs' has no attribute {attr!r}")

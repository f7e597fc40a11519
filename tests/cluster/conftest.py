"""`make cluster-test`: the job scenario of the local-backend tests, against the cluster in YOUR kubeconfig.

Opt-in: without a kubeconfig (or in-cluster service account) every test here is skipped with the reason - the one
skip the suite allows. With one, nothing is skipped: an unreachable API server, a missing MPI Operator or an image
without labkit are failures that name the fix.

Environment knobs (all optional):
  KUBECONFIG / LABKIT_CLUSTER_CONTEXT  which cluster (default: kubectl's current context)
  LABKIT_CLUSTER_NAMESPACE             namespace for the test jobs (default: workloads; created if you may)
  LABKIT_CLUSTER_ACCELERATOR           cpu | nvidia | gaudi (default: cpu, e.g. kind or minikube)
  LABKIT_CLUSTER_IMAGE                 image for launcher and workers (default: the overlay's; it must contain labkit)
  LABKIT_CLUSTER_READY_TIMEOUT         seconds to wait for pods, image pulls included (default: 900)

A kind cluster that runs it:  kind create cluster; kubectl apply --server-side -f
https://raw.githubusercontent.com/kubeflow/mpi-operator/v0.6.0/deploy/v2beta1/mpi-operator.yaml; kind load
docker-image <your labkit image>; then `make cluster-test LABKIT_CLUSTER_IMAGE=<that image>`.
"""

from __future__ import annotations

import os
import uuid

import pytest


def _settings() -> dict:
    return {
        "context": os.environ.get("LABKIT_CLUSTER_CONTEXT") or None,
        "namespace": os.environ.get("LABKIT_CLUSTER_NAMESPACE", "workloads"),
        "accelerator": os.environ.get("LABKIT_CLUSTER_ACCELERATOR", "cpu"),
        "image": os.environ.get("LABKIT_CLUSTER_IMAGE") or None,
        "ready_timeout": float(os.environ.get("LABKIT_CLUSTER_READY_TIMEOUT", "900")),
    }


@pytest.fixture(scope="session")
def cluster_settings() -> dict:
    from labkit import kube

    settings = _settings()
    source = kube.find_kubeconfig(None, settings["context"])
    if source is None:
        pytest.skip(
            f"cluster tests are opt-in and {kube.NO_CLUSTER_MESSAGE}; "
            "then run `make cluster-test` (see tests/cluster/conftest.py for a kind recipe)"
        )
    probe = kube.probe_api_server(None, settings["context"], timeout=10.0)
    assert probe.reachable and not probe.status, (
        f"a cluster is configured ({source.describe()}) but its API server did not answer: "
        f"{probe.error or probe.status}. Fix: check `kubectl get nodes` with the same kubeconfig"
    )
    return {**settings, "source": source.describe()}


@pytest.fixture(scope="session")
def cluster_backend(cluster_settings):
    from labkit.jobs import KubernetesBackend

    backend = KubernetesBackend(
        context=cluster_settings["context"], namespace=cluster_settings["namespace"], request_timeout=60.0
    )
    backend.check_operator()  # a clear failure (with the install command) when the MPI Operator is missing
    return backend


@pytest.fixture
def job_spec(cluster_settings):
    from labkit.manifests import JobSpec

    return JobSpec(
        name=f"labkit-ct-{uuid.uuid4().hex[:6]}",
        namespace=cluster_settings["namespace"],
        workers=2,
        slots_per_worker=1,
        accelerator=cluster_settings["accelerator"],
        image=cluster_settings["image"],
        deadline_seconds=30 * 60,
        ttl_seconds_after_finished=60,
    )


def pytest_collection_modifyitems(config, items):
    """`make test` (plain pytest) does not run these: only an explicit `pytest tests/cluster` (`make cluster-test`)
    does. Deselected, not skipped: the main suite reports no skips."""
    here = os.path.dirname(os.path.abspath(__file__))
    explicit = any(os.path.abspath(str(arg).split("::")[0]).startswith(here) for arg in config.args)
    if explicit:
        return
    ours = [item for item in items if str(item.fspath).startswith(here)]
    if ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if not str(item.fspath).startswith(here)]

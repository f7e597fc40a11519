"""The service as a job: the MPIJob launcher's command runs the ranks, and a Service reaches rank 0.

With `deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi`, Open MPI fills the hostfile's hosts in order, so
rank 0 (the HTTP endpoint) runs on worker 0, not on the launcher: the Service selects that one pod by the MPI
Operator's labels (job-name, job-role=worker, replica-index=0), and a NetworkPolicy lets the lab pod (of the job's
namespace, and of the lab's own, manifests.default_namespace(), when the job runs elsewhere, as Gaudi jobs do) reach
its port (the kit's default policy denies all other ingress to job pods). On the local backend the job's hostfile has
one line (`localhost slots=N`), so DeepSpeed launches every rank locally, in the job's own process group, and the
endpoint is on this machine.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from labkit import devices, launch, manifests
from labkit.jobs.base import CLUSTER_HOSTFILE
from labkit.serving.config import SERVE_MODULE, ServeConfig

JOB_LABELS = ("training.kubeflow.org/job-name", "training.kubeflow.org/job-role", "training.kubeflow.org/replica-index")


def serve_command(config: ServeConfig, *, one_host: bool, master_port: int | None = None) -> list[str]:
    """What the launcher runs: DeepSpeed over the operator's hostfile, every rank `python -m labkit.ranks.serve`."""
    ranks = ["--module", SERVE_MODULE, *config.argv()]
    if one_host:  # one hostfile line: DeepSpeed starts the ranks here (no ssh, no mpirun)
        port = ["--master_port", str(master_port or launch.free_port())]
        return [*launch.job_deepspeed(), "--hostfile", CLUSTER_HOSTFILE, *port, "--log_level", "error", *ranks]
    return [*launch.cluster_deepspeed(CLUSTER_HOSTFILE, manifests.SSH_PORT), *ranks]


def job_spec(config: ServeConfig, *, one_host: bool, **spec) -> manifests.JobSpec:
    """A JobSpec whose launcher runs the service (validated: ConfigError before anything is submitted). `spec`:
    JobSpec fields (name, namespace, workers, slots_per_worker, accelerator, deadline_seconds...)."""
    spec.setdefault("name", "deepspeed-serve")
    job = manifests.JobSpec(launcher_command=serve_command(config, one_host=one_host), **spec)
    job.validate()
    config.validate(job.workers * (job.slots_per_worker or 1))
    return job


def rank0_selector(job_name: str) -> dict[str, str]:
    """The labels of the pod where rank 0 runs: worker 0 of the job."""
    return dict(zip(JOB_LABELS, (job_name, "worker", "0")))


def render_service(spec: manifests.JobSpec, config: ServeConfig) -> list[dict]:
    """The Service (ClusterIP, `<job>-serve:<port>`) and the NetworkPolicy that open rank 0's endpoint to the lab
    pod (of the job's namespace and of the lab's own), validated as the cluster would check them."""
    metadata = {
        "name": f"{spec.name}-serve",
        "namespace": spec.namespace,
        "labels": {"app.kubernetes.io/part-of": "labkit"},
    }
    port = {"name": "http", "port": config.port, "targetPort": config.port, "protocol": "TCP"}
    service_spec = {"type": "ClusterIP", "selector": rank0_selector(spec.name), "ports": [port]}
    lab_pod = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "lab"}}}
    peers = [lab_pod]  # a podSelector alone selects pods of the policy's own namespace (NetworkPolicyPeer)
    lab_namespace = manifests.default_namespace()  # where the lab that reaches it runs (restricted: never Gaudi's)
    if spec.namespace != lab_namespace:
        peers.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": lab_namespace}}, **lab_pod})
    ingress = {"ports": [{"port": config.port, "protocol": "TCP"}], "from": peers}
    rank0_pod = {"matchLabels": rank0_selector(spec.name)}
    policy_spec = {"podSelector": rank0_pod, "policyTypes": ["Ingress"], "ingress": [ingress]}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": service_spec}
    # Each object its own metadata: an edit to one (a label, an owner reference) must not change the other.
    policy_meta = copy.deepcopy(metadata)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": policy_meta,
        "spec": policy_spec,
    }
    manifests.validate_objects([service, policy])
    return [service, policy]


def cluster_manifests(config: ServeConfig, **spec) -> list[dict]:
    """What `kubectl apply` needs to serve in a cluster: the MPIJob (its launcher runs the service over the hostfile),
    the Service to rank 0 on worker 0 and the NetworkPolicy letting the lab pod in. Rank 0 listens on every interface
    (a Service reaches the pod's address, not its loopback) and the ranks use the accelerator's device. `spec`:
    JobSpec fields (name, namespace, workers, slots_per_worker, accelerator, image...)."""
    device = devices.DEVICE_OF[spec.get("accelerator", "cpu")]
    config = replace(config, host="0.0.0.0", device=device)
    resolved = job_spec(config, one_host=False, **spec).resolved()
    config.validate(resolved.workers * resolved.slots_per_worker)
    mpijob = [o for o in manifests.render_all(resolved) if o["kind"] == "MPIJob"]
    return mpijob + render_service(resolved, config)

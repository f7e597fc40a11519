"""Kubeflow Trainer v2: a TrainJob expanded the way Trainer expands it runs the kit's image on every node, and the
deadline is written only where the served TrainJob CRD has the field."""

from __future__ import annotations

import copy

import pytest
from kit_testing import fake_cluster

from labkit import cluster
from labkit.cli import main
from labkit.errors import ConfigError, LabkitError
from labkit.manifests import JobSpec, render_all
from labkit.manifests.render import _overlay_values

ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"


def expand(trainjob: dict, runtime: dict) -> list[dict]:
    """The replicated jobs Trainer builds from a TrainJob and its runtime: kubeflow/trainer
    pkg/runtime/framework/plugins/jobset/builder.go (Builder.Trainer): the trainer's image, command and args replace
    those of container `node` ONLY in the replicated job labelled ancestor-step `trainer`; its env goes there and, with
    mpi.runLauncherAsNode, into the `node` job too."""
    jobs = copy.deepcopy(runtime["spec"]["template"]["spec"]["replicatedJobs"])
    trainer = trainjob["spec"].get("trainer") or {}
    as_node = ((runtime["spec"].get("mlPolicy") or {}).get("mpi") or {}).get("runLauncherAsNode", False)
    for rjob in jobs:
        ancestor = ((rjob["template"].get("metadata") or {}).get("labels") or {}).get(ANCESTOR)
        for container in rjob["template"]["spec"]["template"]["spec"]["containers"]:
            if container["name"] != "node":
                continue
            if ancestor == "trainer":
                rjob["replicas"] = 1
                container.update({k: trainer[k] for k in ("image", "command", "args") if k in trainer})
            if ancestor == "trainer" or as_node and rjob["name"] == "node":
                container["env"] = container.get("env", []) + trainer.get("env", [])
    return jobs


def trainjob_and_runtime(spec: JobSpec) -> tuple[dict, dict]:
    objects = render_all(spec, "trainjob")
    trainjob = next(o for o in objects if o["kind"] == "TrainJob")
    ref = trainjob["spec"]["runtimeRef"]
    runtime = next(o for o in objects if (o["kind"], o["metadata"]["name"]) == (ref["kind"], ref["name"]))
    assert runtime["metadata"]["namespace"] == trainjob["metadata"]["namespace"]  # a namespaced TrainingRuntime
    return trainjob, runtime


@pytest.mark.parametrize("accelerator", ["cpu", "nvidia", "gaudi"])
@pytest.mark.parametrize("image", [None, "registry.example/me/deepspeed:mine"])
def test_every_trainjob_node_runs_the_kits_image(accelerator, image):
    trainjob, runtime = trainjob_and_runtime(JobSpec(accelerator=accelerator, image=image))
    kit_image = image or _overlay_values(accelerator, "trainjob")["image"]
    nodes = expand(trainjob, runtime)
    assert {j["name"] for j in nodes} == {"node", "launcher"}
    pods = [j["template"]["spec"]["template"]["spec"] for j in nodes]
    assert {c["image"] for pod in pods for c in pod["containers"]} == {kit_image}
    if accelerator == "gaudi":  # Habana's requirements on every rank's pod, not only the launcher's
        assert all(pod.get("hostIPC") for pod in pods)
    # every node drops every capability (restricted needs it; SYS_NICE would do nothing for uid 1000)
    assert all(pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]} for pod in pods)


def test_the_builtin_runtime_would_keep_its_own_image_on_the_nodes():
    """Why the kit ships its runtime: with Trainer's deepspeed-distributed, `node` keeps the runtime's image."""
    trainjob, runtime = trainjob_and_runtime(JobSpec())
    builtin = copy.deepcopy(runtime)
    for rjob in builtin["spec"]["template"]["spec"]["replicatedJobs"]:
        rjob["template"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
            "ghcr.io/kubeflow/trainer/deepspeed-runtime"
        )
    images = {
        j["name"]: j["template"]["spec"]["template"]["spec"]["containers"][0]["image"]
        for j in expand(trainjob, builtin)
    }
    assert images["node"] == "ghcr.io/kubeflow/trainer/deepspeed-runtime" != images["launcher"]


@pytest.mark.parametrize("version, has_deadline", [("2.1.0", False), ("2.2.0", True)])
def test_the_deadline_is_written_only_where_the_served_crd_has_it(version, has_deadline):
    assert "activeDeadlineSeconds" not in trainjob_and_runtime(JobSpec())[0]["spec"]  # the overlay: every version
    with fake_cluster(trainer_version=version) as (api, backend):
        served = cluster.trainjob_has_deadline(backend.api_client)
    assert served is has_deadline and api.denied == []  # OpenAPI discovery: readable by the ServiceAccount
    trainjob = trainjob_and_runtime(JobSpec(deadline_seconds=3600, trainjob_deadline=served))[0]
    assert trainjob["spec"].get("activeDeadlineSeconds") == (3600 if has_deadline else None)


def test_asking_a_cluster_without_trainer_says_so_in_one_line():
    with fake_cluster() as (api, backend), pytest.raises(LabkitError) as err:  # no Trainer: its OpenAPI path is 404
        cluster.trainjob_has_deadline(backend.api_client)
    assert str(err.value) == (
        "GET /openapi/v3/apis/trainer.kubeflow.org/v1alpha1: HTTP 404. "
        "Fix: is Kubeflow Trainer v2 installed? (labkit discover --cluster)"
    )


@pytest.mark.parametrize(
    "change,path",
    [
        (lambda rt: rt["spec"]["mlPolicy"]["mpi"].update(numProcPerNod=2), "spec.mlPolicy.mpi"),  # a typo
        (lambda rt: rt["spec"]["mlPolicy"]["mpi"].update(mpiImplementation="MVAPICH"), "mpiImplementation"),
        (lambda rt: rt["spec"]["mlPolicy"].update(numNodes="two"), "spec.mlPolicy.numNodes"),
    ],
)
def test_the_kits_runtime_is_checked_against_trainers_own_crd_schema(change, path):
    """TrainingRuntime objects are validated against kubeflow/trainer's CRD (labkit/schemas, scripts/make_schemas.py),
    not only their pod templates: a typo or a value Trainer does not accept is refused by field before submit."""
    from labkit.manifests import ManifestError
    from labkit.manifests.checks import validate_object

    runtime = next(o for o in render_all(JobSpec(), "trainjob") if o["kind"] == "TrainingRuntime")
    validate_object(runtime)
    broken = copy.deepcopy(runtime)
    change(broken)
    with pytest.raises(ManifestError) as err:
        validate_object(broken)
    assert path in err.value.path or path in str(err.value)


def _selects(selector: dict, labels: dict) -> bool:
    """A NetworkPolicy podSelector (matchLabels, matchExpressions Exists/In) against a pod's labels."""
    exprs = selector.get("matchExpressions", [])
    matched = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in exprs:
        matched &= e["key"] in labels if e["operator"] == "Exists" else labels.get(e["key"]) in e.get("values", [])
    return matched


@pytest.mark.parametrize("accelerator", ["cpu", "nvidia", "gaudi"])
def test_trainers_pods_start_sshd_reach_each_other_and_schedule_on_tainted_nodes(accelerator):
    """What Trainer builds from the kit's TrainJob on a real cluster: the image entrypoint runs on every node (it makes
    sshd's host key; `command` would skip it and sshd exits), JobSet's pod labels let the ranks through the namespace's
    NetworkPolicies (Trainer adds no training.kubeflow.org label), every rank pod tolerates its accelerator's taint
    (the launcher runs as a node and gets resourcesPerNode), and no rank pod gets an API token."""
    spec = JobSpec(accelerator=accelerator)
    objects = render_all(spec, "trainjob")
    trainjob, runtime = trainjob_and_runtime(spec)
    kinds = [o["kind"] for o in objects]
    assert kinds.index("TrainingRuntime") < kinds.index("TrainJob")  # Trainer's webhook refuses a TrainJob first
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"]]
    # kubernetes-sigs/jobset: every pod of a JobSet carries jobset.sigs.k8s.io/jobset-name (= the TrainJob's name)
    jobset = {"jobset.sigs.k8s.io/jobset-name": trainjob["metadata"]["name"]}
    taint = {"nvidia": "nvidia.com/gpu", "gaudi": "habana.ai/gaudi"}.get(accelerator)
    for rjob in expand(trainjob, runtime):
        pod = rjob["template"]["spec"]["template"]
        labels = {**(pod.get("metadata") or {}).get("labels", {}), **jobset}
        (container,) = pod["spec"]["containers"]
        assert "command" not in container and container["args"], rjob["name"]
        assert any(_selects(p["podSelector"], labels) and _selects(p["ingress"][0]["from"][0]["podSelector"], labels)
                   for p in policies), rjob["name"]  # fmt: skip
        assert pod["spec"]["automountServiceAccountToken"] is False
        if taint:
            assert taint in {t["key"] for t in pod["spec"].get("tolerations", [])}, rjob["name"]
    assert expand(trainjob, runtime)[1]["template"]["spec"]["template"]["spec"]["containers"][0]["args"][0] == "mpirun"


def test_one_worker_is_refused_for_a_trainjob_and_job_only_refuses_an_image_the_nodes_would_not_run(capsys):
    with pytest.raises(ConfigError) as err:
        render_all(JobSpec(workers=1), "trainjob")
    assert err.value.field == "workers" and "2 rank pods" in str(err.value)
    render_all(JobSpec(workers=1), "batch")  # an MPIJob with one worker is fine
    argv = ["manifests", "render", "--kind", "trainjob", "--job-only", "--trainjob-deadline", "no"]
    assert main([*argv, "--image", "registry.example/me/ds:1"]) == 2
    assert "image" in capsys.readouterr().err
    assert main(argv) == 0 and "kind: TrainJob" in capsys.readouterr().out


def test_each_accelerator_has_its_own_runtime_so_overlays_in_one_namespace_do_not_swap_images():
    """cpu and nvidia TrainJobs share the namespace `workloads`: one runtime name for both would make the overlay
    applied last decide every TrainJob's node image and resources (Trainer's builder.go: trainer.image reaches the
    launcher only)."""
    runtimes = {}
    for accelerator in ("cpu", "nvidia", "gaudi"):
        trainjob, runtime = trainjob_and_runtime(JobSpec(accelerator=accelerator))
        runtimes[(runtime["metadata"]["namespace"], runtime["metadata"]["name"])] = accelerator
        assert trainjob["spec"]["runtimeRef"]["name"] == f"labkit-deepspeed-{accelerator}"
        node = expand(trainjob, runtime)[0]["template"]["spec"]["template"]["spec"]["containers"][0]
        assert node["image"] == _overlay_values(accelerator, "trainjob")["image"]
    assert len(runtimes) == 3 and ("workloads", "labkit-deepspeed-cpu") in runtimes
    assert ("workloads", "labkit-deepspeed-nvidia") in runtimes

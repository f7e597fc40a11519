"""Kubeflow Trainer v2: a TrainJob expanded the way Trainer expands it runs the kit's image on every node, and the
deadline is written only where the served TrainJob CRD has the field."""

from __future__ import annotations

import copy

import pytest
from kit_testing import fake_cluster

from labkit import cluster
from labkit.errors import LabkitError
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

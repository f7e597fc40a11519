"""The kit's objects against the CRDs of each MPI Operator and Kubeflow Trainer release it may meet on a cluster,
recorded from the upstream tags by scripts/upstream_crds.py (tests/data/upstream-crds/, descriptions dropped):
what an API server would silently drop from them (tests/fake_crd.prune: apiextensions-apiserver's pruning), and what
`labkit discover --cluster` says of each release's CRD. labkit/schemas holds only the newest release's schemas."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json

import kubernetes_validate
import pytest
from fake_crd import crd_schema, prune, served_schema, upstream_crd, upstream_release
from fake_rbac import ADMIN
from kit_testing import ROOT, fake_cluster, raw
from kubernetes import client

from labkit import cluster
from labkit.manifests import JobSpec, kustomize_build, render_all
from labkit.serving.config import ServeConfig
from labkit.serving.job import cluster_manifests

TOO_OLD = ("v0.3.0", "v0.4.0")  # serve v2beta1 without spec.launcherCreationPolicy
OPERATOR = ["v0.3.0", "v0.4.0", "v0.5.0", "v0.6.0", "v0.7.0", "v0.8.0", "v0.8.2"]
TRAINER = ["v2.0.0", "v2.1.0", "v2.2.0", "v2.3.0"]
KIT_SETUPS = [(acc, kind) for acc in ("cpu", "nvidia", "gaudi") for kind in ("interactive", "batch")]


def as_client_object(document: dict):
    """The CRD as `labkit discover --cluster` receives it: deserialized by the official client."""
    return client.ApiClient()._ApiClient__deserialize(document, "V1CustomResourceDefinition")


def dropped(obj: dict, document: dict, version: str) -> list[str]:
    return prune(copy.deepcopy(obj), served_schema(document, version))


def test_every_release_is_recorded_from_its_upstream_commit():
    for name in [f"mpi-operator-{t}" for t in OPERATOR] + [f"trainer-{t}" for t in TRAINER]:
        record = upstream_release(name)
        assert len(record["commit"]) == 40 and record["crds"] and record["release"] == name.rsplit("-", 1)[1]


@pytest.mark.parametrize("tag", OPERATOR)
@pytest.mark.parametrize(("accelerator", "kind"), KIT_SETUPS)
def test_the_kits_mpijob_loses_nothing_on_operators_from_v0_5_on(tag, accelerator, kind):
    """v0.3.0/v0.4.0 serve v2beta1 without spec.launcherCreationPolicy: the launcher would start before its workers. The
    kit's dry run asks for fieldValidation=Strict, so there it is refused instead of dropped."""
    (job,) = [o for o in render_all(JobSpec.from_overlay(accelerator, kind), kind) if o["kind"] == "MPIJob"]
    lost = dropped(job, upstream_crd(f"mpi-operator-{tag}", "MPIJob"), "v2beta1")
    assert lost == (["spec.launcherCreationPolicy"] if tag in TOO_OLD else []), lost


@pytest.mark.parametrize("tag", OPERATOR)
def test_discover_calls_operators_before_v0_5_too_old(tag):
    status = cluster.mpijob_crd_status(as_client_object(upstream_crd(f"mpi-operator-{tag}", "MPIJob")))
    assert status.installed and "v2beta1" in status.served_versions
    if tag in TOO_OLD:
        assert not status.ok and status.row()["state"] == "too old"
        assert "no spec.launcherCreationPolicy" in status.problem and "MPI Operator v0.5 or later" in status.fix
    else:
        assert status.ok, status.problem


@pytest.mark.parametrize("tag", TRAINER)
@pytest.mark.parametrize("deadline", [False, True])
def test_the_kits_trainjob_and_runtime_lose_nothing_on_trainer_from_v2_1(tag, deadline):
    """spec.activeDeadlineSeconds came with v2.2.0: `--trainjob-deadline yes` is for those releases only (auto asks the
    cluster). v2.0.0 is refused by discover (below), whatever it would keep."""
    objects = render_all(JobSpec(trainjob_deadline=deadline), "trainjob")
    trainjob = next(o for o in objects if o["kind"] == "TrainJob")
    runtime = next(o for o in objects if o["kind"] == "TrainingRuntime")
    lost_job = dropped(trainjob, upstream_crd(f"trainer-{tag}", "TrainJob"), "v1alpha1")
    lost_runtime = dropped(runtime, upstream_crd(f"trainer-{tag}", "TrainingRuntime"), "v1alpha1")
    assert lost_runtime == [], lost_runtime
    older = tag in ("v2.0.0", "v2.1.0")
    assert lost_job == (["spec.activeDeadlineSeconds"] if deadline and older else []), lost_job


@pytest.mark.parametrize("tag", TRAINER)
def test_discover_calls_only_trainer_v2_0_too_old(tag):
    status = cluster.trainjob_crd_status(as_client_object(upstream_crd(f"trainer-{tag}", "TrainJob")))
    assert status.installed and "v1alpha1" in status.served_versions
    if tag == "v2.0.0":
        assert not status.ok and status.row()["state"] == "too old" and "v2.1.0 or later" in status.fix
    else:
        assert status.ok, status.problem


def test_the_fakes_schemas_drop_what_the_newest_releases_drop():
    """The fake API server prunes with labkit/schemas: for the kit's objects it must agree with the newest releases."""
    newest = {
        "MPIJob": ("mpi-operator-v0.8.2", "kubeflow.org", "mpijobs", "v2beta1"),
        "TrainJob": ("trainer-v2.3.0", "trainer.kubeflow.org", "trainjobs", "v1alpha1"),
        "TrainingRuntime": ("trainer-v2.3.0", "trainer.kubeflow.org", "trainingruntimes", "v1alpha1"),
    }
    objects = render_all(JobSpec(), "interactive") + render_all(JobSpec(trainjob_deadline=True), "trainjob")
    for obj in (o for o in objects if o["kind"] in newest):
        name, group, plural, version = newest[obj["kind"]]
        fake = prune(copy.deepcopy(obj), crd_schema(group, plural, version))
        assert fake == dropped(obj, upstream_crd(name, obj["kind"]), version) == [], obj["kind"]
        # and an unknown field goes in both
        probe = {**obj, "spec": {**obj["spec"], "noSuchField": 1}}
        assert prune(copy.deepcopy(probe), crd_schema(group, plural, version)) == ["spec.noSuchField"]
        assert dropped(probe, upstream_crd(name, obj["kind"]), version) == ["spec.noSuchField"]


# 1.30: the admission policy's ValidatingAdmissionPolicy v1 (README, "Pointing it at a real cluster")
OLDEST_KUBERNETES = 30


def kubernetes_releases() -> list[str]:
    """Every Kubernetes minor from OLDEST_KUBERNETES to the newest whose schemas kubernetes-validate ships."""
    newest = int(kubernetes_validate.utils.latest_version().split(".")[1])
    return [f"1.{minor}" for minor in range(OLDEST_KUBERNETES, newest + 1)]


@functools.cache
def every_kit_object() -> list[tuple[str, dict]]:
    """(where, object) for what the kit creates or hands to kubectl: each kustomization, each overlay's job through
    render_all (proxy and queue set), the serving job; pod templates of custom resources as Pods."""
    found = [
        (str(k.parent), o)
        for k in sorted(ROOT.glob("manifests/**/kustomization.yaml"))
        for o in kustomize_build(k.parent)
    ]
    for acc in ("cpu", "nvidia", "gaudi"):
        for kind in ("interactive", "batch", "trainjob"):
            spec = JobSpec.from_overlay(acc, kind)
            spec = dataclasses.replace(spec, http_proxy="http://proxy:3128", queue="lab-queue")
            found += [(f"render_all {acc}/{kind}", o) for o in render_all(spec, kind)]
        found += [
            (f"serve {acc}", o) for o in cluster_manifests(ServeConfig(mode="replicas"), name="srv", accelerator=acc)
        ]

    def pods(where: str, value, path: str = ""):
        if isinstance(value, dict):
            if isinstance(value.get("spec"), dict) and "containers" in value["spec"]:
                yield (
                    f"{where} {path}",
                    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": value["spec"]},
                )
            for key, item in value.items():
                yield from pods(where, item, f"{path}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from pods(where, item, f"{path}[{i}]")

    custom = [(w, o) for w, o in found if "kubeflow.org" in o["apiVersion"]]  # MPIJob, TrainJob, TrainingRuntime
    core = [(w, o) for w, o in found if "kubeflow.org" not in o["apiVersion"]]
    return core + [pod for w, o in custom for pod in pods(w, o)]


@pytest.mark.parametrize("release", kubernetes_releases())
def test_every_object_the_kit_renders_is_valid_as_is_on_each_kubernetes_release(release):
    """Strict: a field a release's schema lacks is an error, not dropped. The MPI Operator creates the pods without
    fieldValidation=Strict, so a pod field newer than the cluster would vanish without a word; labkit validates at
    1.32 (checks.KUBERNETES_VERSION) only."""
    objects = every_kit_object()
    assert len(objects) > 150 and {o["kind"] for _w, o in objects} >= {"Pod", "NetworkPolicy", "Role", "Deployment"}
    problems, seen = [], set()
    for where, obj in objects:
        if (key := json.dumps(obj, sort_keys=True)) in seen:
            continue
        seen.add(key)
        try:
            kubernetes_validate.validate(obj, release, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where} {obj['kind']}: {exc.message}")
    assert problems == [], problems[:5]


@pytest.mark.parametrize("release", [kubernetes_releases()[0], kubernetes_releases()[-1]])
def test_a_submit_passes_strict_decoding_on_the_oldest_and_newest_release(release):
    """The same through the API: every create the kit sends asks fieldValidation=Strict, and a fake API server of
    that release decodes each built-in kind to that release's fields (tests/fake_crd.py)."""
    with fake_cluster(kubernetes_release=release) as (api, backend):
        probe = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "probe"}}
        probe["status"] = {"healthStatus": {}}  # a field from 1.35 on: the fake's release decides
        admin = next(token for token, user in api.users.items() if user == ADMIN)
        path = "/api/v1/namespaces/workloads/persistentvolumeclaims?fieldValidation=Strict"
        code, _ = raw(api, "POST", path, probe, token=admin)
        assert code == (400 if release == kubernetes_releases()[0] else 201)
        spec = JobSpec(name="strict", workers=1, http_proxy="http://proxy:3128", queue="lab-queue")
        with backend.submit(spec):
            assert {"MPIJob", "ConfigMap", "Secret"} <= {o["kind"] for o in api.objects.values()}
        assert not api.warnings


def test_the_release_check_sees_a_pod_field_newer_than_the_cluster():
    """Pod-level `resources` came with 1.32: labkit's own check (1.32) passes it, a 1.30 cluster would drop it."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    pod["spec"] = {"containers": [{"name": "c", "image": "i"}], "resources": {"limits": {"cpu": "1"}}}
    kubernetes_validate.validate(pod, "1.32", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="'resources' was unexpected"):
        kubernetes_validate.validate(pod, "1.30", strict=True)

"""manifests/admission (issue 12.1): the ValidatingAdmissionPolicy that refuses, for kubectl too, a job whose pods
would borrow another ServiceAccount, an API token or a Secret. No API server runs here (the fake one does not
evaluate CEL), so: the objects are checked against Kubernetes 1.30's schema (kubernetes-validate, strict), the
binding against the namespaces the kit renders, and every CEL rule is evaluated with cel-python (standard CEL, which
is all the rules use) on the kit's own jobs, which must pass, and on each attack, which must fail by its rule."""

from __future__ import annotations

import copy
import re

import celpy
import kubernetes_validate
import pytest
from celpy import celtypes
from kit_testing import kubectl_kustomize

from labkit import manifests as m
from labkit import shared_volume
from labkit.devices import ACCELERATORS
from labkit.manifests.checks import JOB_VOLUME_TYPES, validate_objects

ADMISSION = m.manifests_dir() / "admission"
POLICY, BINDING = m.kustomize_build(ADMISSION)  # labkit's renderer: the first test checks it against kubectl's
KUEUE = "system:serviceaccount:kueue-system:kueue-controller-manager"  # the policy's runtimePatchers


def test_the_policy_renders_as_kubectl_does():
    assert [POLICY, BINDING] == kubectl_kustomize(ADMISSION)


def admit(obj: dict, user: str = "learner", old: dict | None = None) -> list[str]:
    """The messages of every validation the object fails ([] = admitted), evaluated as the API server does: the
    variables in order (each sees the earlier ones as variables.NAME), then each validation on `object`, the
    request made by `user`: a CREATE, or with `old` an UPDATE of it (`oldObject` is null on a CREATE)."""
    env = celpy.Environment()
    variables: dict = {}
    request = {"userInfo": {"username": user}, "operation": "UPDATE" if old is not None else "CREATE"}
    activation = {"object": celpy.json_to_cel(obj), "request": celpy.json_to_cel(request),
                  "oldObject": celpy.json_to_cel(old)}  # fmt: skip

    def run(expression: str):
        activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
        result = env.program(env.compile(expression)).evaluate(activation)
        assert not isinstance(result, celpy.CELEvalError), f"{expression}: {result}"
        return result

    for variable in POLICY["spec"]["variables"]:
        variables[variable["name"]] = run(variable["expression"])
    failed = []
    for validation in POLICY["spec"]["validations"]:
        result = run(validation["expression"])
        assert isinstance(result, celtypes.BoolType), (validation["expression"], result)
        if not result:
            failed.append(validation["message"])
    return failed


def test_the_objects_are_valid_kubernetes_1_30_admission_objects():
    for obj in (POLICY, BINDING):
        kubernetes_validate.validate(obj, "1.30", strict=True)  # field names as upstream's types.go has them
    assert (POLICY["kind"], BINDING["kind"]) == ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    assert POLICY["apiVersion"] == BINDING["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert BINDING["spec"]["policyName"] == POLICY["metadata"]["name"]
    assert BINDING["spec"]["validationActions"] == ["Deny"] and POLICY["spec"]["failurePolicy"] == "Fail"
    rules = {
        (r["apiGroups"][0], r["resources"][0]): set(r["operations"])
        for r in POLICY["spec"]["matchConstraints"]["resourceRules"]
    }
    assert rules == {
        ("kubeflow.org", "mpijobs"): {"CREATE", "UPDATE"},
        ("trainer.kubeflow.org", "trainjobs"): {"CREATE", "UPDATE"},
    }
    validate_objects([POLICY, BINDING])  # and the kit's own checks (secret scan ...)


@pytest.mark.parametrize("namespace", [None, "alice"])
@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_the_binding_selects_every_namespace_the_kit_renders(accelerator, namespace):
    objects = m.render_all(m.JobSpec(accelerator=accelerator, namespace=namespace))
    labels = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["labels"]
    selector = BINDING["spec"]["matchResources"]["namespaceSelector"]
    assert set(selector) == {"matchLabels"} and selector["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("kind", m.OVERLAY_KINDS)
@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_the_kits_own_jobs_are_admitted(accelerator, kind):
    job = next(o for o in m.render_all(m.JobSpec(accelerator=accelerator), kind) if o["kind"] in ("MPIJob", "TrainJob"))
    assert admit(job) == []


def _mpijob() -> dict:
    return m.render_job(m.JobSpec())


def _worker(job: dict) -> dict:
    return job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]


def _launcher(job: dict) -> dict:
    return job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]


def _mounts(pod: dict) -> list[dict]:
    """The first container's mounts: [own folder, inputs, /dev/shm, checkpoint key] in the kit's jobs."""
    return pod["containers"][0]["volumeMounts"]


SHARED, VOLUME_TYPES = "only as its own folder", "hostPath, nfs, csi"
# What a learner with the lab's token could put in an MPIJob with kubectl, and the rule that must refuse it.
ATTACKS = {
    "the lab's ServiceAccount": (lambda j: _worker(j).update(serviceAccountName="labkit"), "ServiceAccount"),
    "the deprecated serviceAccount": (lambda j: _launcher(j).update(serviceAccount="labkit"), "ServiceAccount"),
    "an API token": (lambda j: _worker(j).update(automountServiceAccountToken=True), "API token"),
    "no token setting": (lambda j: _launcher(j).pop("automountServiceAccountToken"), "API token"),
    "another job's ssh key": (
        lambda j: _worker(j)["volumes"].append({"name": "k", "secret": {"secretName": "other-ssh"}}),
        "Secret and token volumes",
    ),
    "another job's checkpoint key": (
        lambda j: _worker(j)["volumes"].append({"name": "c", "secret": {"secretName": "other-checkpoint"}}),
        "Secret and token volumes",
    ),
    "a projected Secret": (
        lambda j: _worker(j)["volumes"].append({"name": "p", "projected": {"sources": [{"secret": {"name": "x"}}]}}),
        "Secret and token volumes",
    ),
    "a projected token": (
        lambda j: (
            _launcher(j)
            .setdefault("volumes", [])
            .append({"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}})
        ),
        "Secret and token volumes",
    ),
    "a whole Secret": (
        lambda j: _worker(j)["containers"][0].update(envFrom=[{"secretRef": {"name": "lab-token"}}]),
        "envFrom",
    ),
    "an init container's whole Secret": (
        lambda j: _worker(j).update(
            initContainers=[{"name": "i", "image": "x", "envFrom": [{"secretRef": {"name": "s"}}]}]
        ),
        "envFrom",
    ),
    "a key of another Secret": (
        lambda j: _launcher(j)["containers"][0]["env"].append(
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "other-ssh", "key": "id_rsa"}}}
        ),
        "allowedSecrets",
    ),
    # The shared volume (issue 12): job pods all run as uid 1000, so a mount beyond the job's own folder (read-write)
    # and the inputs (read-only) would reach other jobs' checkpoints and caches.
    "the whole shared volume": (lambda j: _mounts(_worker(j))[0].pop("subPath"), SHARED),
    "another job's folder": (lambda j: _mounts(_launcher(j))[0].update(subPath="runs/other-job"), SHARED),
    "the runs folder of every job": (lambda j: _mounts(_worker(j))[0].update(subPath="runs"), SHARED),
    "every job's folder read-only": (lambda j: _mounts(_worker(j))[0].update(subPath="runs", readOnly=True), SHARED),
    "the inputs read-write": (lambda j: _mounts(_worker(j))[1].pop("readOnly"), SHARED),
    "the inputs with readOnly false": (lambda j: _mounts(_launcher(j))[1].update(readOnly=False), SHARED),
    "a subPathExpr": (
        lambda j: _mounts(_worker(j))[0].update(subPathExpr=_mounts(_worker(j))[0].pop("subPath")),
        SHARED,
    ),
    "an init container's whole-volume mount": (
        lambda j: _worker(j).update(
            initContainers=[{"name": "i", "image": "x", "volumeMounts": [{"name": "shared", "mountPath": "/s"}]}]
        ),
        SHARED,
    ),
    "the same claim as a second volume": (
        lambda j: (
            _worker(j)["volumes"].append({"name": "again", "persistentVolumeClaim": {"claimName": "labkit-shared"}}),
            _mounts(_worker(j)).append({"name": "again", "mountPath": "/again"}),
        ),
        SHARED,
    ),
    "a hostPath": (lambda j: _worker(j)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), VOLUME_TYPES),
    "an inline CSI volume": (
        lambda j: _launcher(j)["volumes"].append({"name": "n", "csi": {"driver": "nfs.csi.k8s.io"}}),
        VOLUME_TYPES,
    ),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_is_refused_by_its_rule(attack):
    job = _mpijob()
    change, rule = ATTACKS[attack]
    change(job)
    failed = admit(job)
    assert len(failed) == 1 and rule in failed[0], failed


@pytest.mark.parametrize(
    "field, value",
    [  # Trainer v2.2+, v2.1, v2.0: each can run the runtime's pods as the lab's ServiceAccount
        ("runtimePatches", [{"manager": "x", "trainingRuntimeSpec": {}}]),
        ("podTemplateOverrides", [{"targetJobs": [{"name": "node"}], "spec": {"serviceAccountName": "labkit"}}]),
        ("podSpecOverrides", [{"targetJobs": [{"name": "node"}], "serviceAccountName": "labkit"}]),
    ],
)
def test_a_trainjob_may_not_patch_its_runtime_or_read_other_secrets(field, value):
    job = m.render_job(m.JobSpec(), "trainjob")
    assert not admit(job)
    patched = copy.deepcopy(job)
    patched["spec"][field] = value
    assert [f for f in admit(patched) if field in f]
    assert not admit(patched, user=KUEUE)  # admitting it
    other = copy.deepcopy(job)
    other["spec"]["trainer"]["env"].append(
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "lab-token", "key": "t"}}}
    )
    assert [f for f in admit(other) if "allowedSecrets" in f]


# What Kueue's mutating webhook appends to every TrainJob a learner creates (kubernetes-sigs/kueue v0.19.2,
# pkg/controller/jobs/trainjob/trainjob_webhook.go Default), and what its controller later writes into that entry
# when it admits the job (trainjob_controller.go RunWithPodSetsInfo: nodeSelector, tolerations, scheduling gates).
KUEUE_STUB = {"manager": "kueue.x-k8s.io/manager", "trainingRuntimeSpec": {"template": {"spec": {}}}}
KUEUE_ADMITTED = {
    "manager": "kueue.x-k8s.io/manager",
    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {
        "template": {"spec": {"nodeSelector": {"pool": "h100"}, "tolerations": [{"key": "nvidia.com/gpu"}]}}}}}]}}},
}  # fmt: skip


def with_patches(job: dict, patches: list[dict], field: str = "runtimePatches") -> dict:
    patched = copy.deepcopy(job)
    patched["spec"][field] = copy.deepcopy(patches)
    return patched


def test_a_learners_trainjob_passes_on_a_kueue_cluster_and_only_kueue_fills_its_patch():
    """On a Kueue v0.17+ cluster every TrainJob create arrives with Kueue's empty runtimePatch in it (mutating
    webhooks run before validating policies), in the learner's own request."""
    job = m.render_job(m.JobSpec(), "trainjob")
    created = with_patches(job, [KUEUE_STUB])
    assert not admit(created)
    queue = {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "lab"}}, "spec": {}}  # v0.17.0-v0.17.1's stub
    assert not admit(with_patches(job, [{**KUEUE_STUB, "trainingRuntimeSpec": {"template": queue}}]))
    admitted = with_patches(job, [KUEUE_ADMITTED])
    assert not admit(admitted, user=KUEUE, old=created)  # Kueue's controller admits the job
    assert admit(admitted) and admit(admitted, old=created)  # a learner writing pod fields under Kueue's name
    relabelled = copy.deepcopy(admitted)
    relabelled["metadata"].setdefault("labels", {})["note"] = "mine"
    assert not admit(relabelled, old=admitted)  # an update that keeps Kueue's patch as it was
    evil = copy.deepcopy(KUEUE_ADMITTED)
    evil["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "serviceAccountName"
    ] = "labkit"
    assert admit(with_patches(job, [evil]), old=admitted)  # ... but not one that changes it
    assert admit(with_patches(job, [KUEUE_STUB, {**KUEUE_STUB, "manager": "me"}]))  # another manager's entry


def test_older_kueues_overrides_survive_a_learners_update():
    """Kueue v0.14.5-v0.16 writes podTemplateOverrides (Trainer v2.1), v0.14.0-v0.14.4 podSpecOverrides (v2.0)."""
    job = m.render_job(m.JobSpec(), "trainjob")
    entry = {"targetJobs": [{"name": "node"}], "spec": {"nodeSelector": {"pool": "h100"}}}
    admitted = with_patches(job, [entry], "podTemplateOverrides")
    assert not admit(admitted, user=KUEUE, old=job)
    assert admit(admitted, old=job)  # a learner adding it
    relabelled = copy.deepcopy(admitted)
    relabelled["metadata"].setdefault("labels", {})["note"] = "mine"
    assert not admit(relabelled, old=admitted)


def test_the_policy_reads_the_kits_shared_volume_layout():
    """The policy's lists are labkit/shared_volume.py's, its volume types those labkit validate allows."""
    variables = {v["name"]: v["expression"] for v in POLICY["spec"]["variables"]}
    assert variables["sharedInputs"] == repr(list(shared_volume.INPUTS))
    assert variables["ownRunDir"] == f"'{shared_volume.RUNS}/' + object.metadata.name"
    (types_rule,) = [v["expression"] for v in POLICY["spec"]["validations"] if VOLUME_TYPES in v["message"]]
    assert set(re.findall(r"has\(v\.(\w+)\)", types_rule)) == JOB_VOLUME_TYPES


@pytest.mark.parametrize(
    "attack",
    ["the lab's ServiceAccount", "an API token", "another job's ssh key", "a whole Secret"]
    + [a for a, (_, rule) in ATTACKS.items() if rule in (SHARED, VOLUME_TYPES)],
)
def test_the_policy_and_labkit_validate_refuse_the_same_attacks(attack):
    """The kit's own check (labkit manifests validate, submit) and the cluster's policy agree on what they share."""
    objects = m.render_all(m.JobSpec())
    job = next(o for o in objects if o["kind"] == "MPIJob")
    ATTACKS[attack][0](job)
    assert admit(job), attack
    with pytest.raises(m.ManifestError):
        validate_objects(objects)

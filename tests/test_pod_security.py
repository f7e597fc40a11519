"""Pod Security before submit (issue 12.1): the kit refuses, by field, what the namespace's level would refuse, and
agrees with the fake API server's admission (both written from kubernetes pod-security-admission/policy/)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import pytest
import yaml
from fake_apiserver import FakeApiServer
from kit_testing import fake_cluster

from labkit.errors import ConfigError
from labkit.manifests import (
    NAMESPACES,
    OVERLAY_KINDS,
    JobSpec,
    ManifestError,
    kustomize_build,
    manifests_dir,
    overlay_dir,
    render_all,
    to_yaml,
)
from labkit.manifests.checks import validate_objects
from labkit.manifests.pod_security import ENFORCE_LABEL, violations


def _job(accelerator: str = "cpu") -> dict:
    return next(o for o in render_all(JobSpec(accelerator=accelerator)) if o["kind"] == "MPIJob")


def _worker(job: dict) -> dict:
    return job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]


# What an attacker in the class would try with the lab's token (issue 12.1), each a change to the worker pod.
ATTACKS = {
    "hostPath /": lambda pod: pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
    "privileged": lambda pod: pod["containers"][0]["securityContext"].update(privileged=True),
    "hostNetwork": lambda pod: pod.update(hostNetwork=True),
    "SYS_ADMIN": lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    # in the runtime's default set: baseline admits it, restricted allows only NET_BIND_SERVICE to be added
    "CHOWN": lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]),
    "uid 0": lambda pod: pod["containers"][0]["securityContext"].update(runAsUser=0),
    "pod uid 0": lambda pod: pod["securityContext"].update(runAsUser=0),
    "escalation": lambda pod: pod["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
    "root": lambda pod: pod["securityContext"].update(runAsNonRoot=False),
    "no seccomp": lambda pod: pod["securityContext"].pop("seccompProfile"),
    "nfs": lambda pod: pod["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
}
BASELINE_REFUSES = {"hostPath /", "privileged", "hostNetwork", "SYS_ADMIN"}


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_kit_and_the_fake_admission_refuse_the_same_pods(attack):
    job = _job()
    ATTACKS[attack](_worker(job))
    with FakeApiServer() as api:
        for level in ("restricted", "baseline", "privileged"):
            api.namespace_labels["workloads"] = {"pod-security.kubernetes.io/enforce": level}
            refused_by_fake = api._pod_security_violation("workloads", _worker(job)) is not None
            refused_by_kit = bool(violations(_worker(job), level))
            expected = level == "restricted" or (level == "baseline" and attack in BASELINE_REFUSES)
            assert refused_by_kit == refused_by_fake == expected, (attack, level)


@pytest.mark.parametrize("accelerator", ["cpu", "nvidia", "gaudi"])
def test_every_rendered_pod_meets_its_namespaces_level(accelerator):
    objects = render_all(JobSpec(accelerator=accelerator))  # render validates at the namespace's level
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert level == ("privileged" if accelerator == "gaudi" else "restricted")
    for replica in _job(accelerator)["spec"]["mpiReplicaSpecs"].values():
        assert violations(replica["template"]["spec"], "restricted" if accelerator != "gaudi" else "privileged") == []


def test_validate_names_the_field_and_the_namespace_level():
    objects = render_all(JobSpec())
    job = next(o for o in objects if o["kind"] == "MPIJob")
    ATTACKS["hostNetwork"](_worker(job))  # (a hostPath volume is refused earlier, by the job pods' storage rule)
    with pytest.raises(ManifestError) as err:
        validate_objects(objects)
    assert err.value.path == "spec.mpiReplicaSpecs.Worker.template.spec.hostNetwork"
    assert "namespace workloads enforces Pod Security 'restricted'" in err.value.problem


def _validate_cli(tmp_path, objects, *flags):
    path = tmp_path / "objects.yaml"
    path.write_text(to_yaml(objects))
    code = "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "manifests", "validate", str(path), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_labkit_manifests_validate_no_longer_says_ok_to_a_node_takeover(tmp_path):
    job = _job()
    ATTACKS["hostPath /"](_worker(job))
    ATTACKS["privileged"](_worker(job))
    refused = _validate_cli(tmp_path, [job])  # no Namespace in the input: the kit's level, restricted
    assert (
        refused.returncode == 1 and "INVALID" in refused.stdout and "hostPath volumes are not allowed" in refused.stdout
    )
    # An explicit privileged level admits the privileged container, never a hostPath in a job pod: it would reach the
    # shared volume around the job's own subPath (manifests/admission refuses it in every namespace, Gaudi's too).
    privileged = _validate_cli(tmp_path, [job], "--pod-security", "privileged")
    assert privileged.returncode == 1 and "hostPath volumes are not allowed in job pods" in privileged.stdout
    _worker(job)["volumes"].pop()
    assert _validate_cli(tmp_path, [job], "--pod-security", "privileged").returncode == 0  # an explicit choice
    gaudi = render_all(JobSpec(accelerator="gaudi"))  # its Namespace (privileged) comes along and sets the level
    assert _validate_cli(tmp_path, gaudi).returncode == 0


def test_submit_refuses_before_creating_anything(monkeypatch):
    import labkit.manifests

    def tampered(*args, **kwargs):  # what a modified overlay renders; render_all validates at the namespace's level
        objects = render_all(*args, **kwargs)
        ATTACKS["privileged"](_worker(next(o for o in objects if o["kind"] == "MPIJob")))
        validate_objects(objects)
        return objects

    monkeypatch.setattr(labkit.manifests, "render_all", tampered)  # what KubernetesBackend.submit calls
    with fake_cluster() as (api, backend):
        with pytest.raises(ManifestError, match="privileged containers are not allowed"):
            backend.submit(JobSpec(name="takeover"))
        assert not api.objects and not api.pods


def test_a_bad_level_label_is_refused():
    objects = render_all(JobSpec())
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "strict"
    with pytest.raises(ManifestError, match="'strict' is not one of privileged, baseline, restricted"):
        validate_objects(copy.deepcopy(objects))


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda pod: pod.update(serviceAccountName="labkit"), "serviceAccountName"),
        (lambda pod: pod.update(automountServiceAccountToken=True), "automountServiceAccountToken"),
        (lambda pod: pod["volumes"].append({"name": "k", "secret": {"secretName": "other-ssh"}}), "volumes[3]"),
        (lambda pod: pod["volumes"][2]["secret"].update(secretName="alice-checkpoint"), "volumes[2]"),  # her key
        (lambda pod: pod["containers"][0].update(envFrom=[{"secretRef": {"name": "hf-token"}}]), "envFrom"),
    ],
)
def test_job_pods_cannot_borrow_an_identity_or_a_secret(change, field):
    """What Pod Security does not cover (issue 12.1): another ServiceAccount (the lab's), an API token, another job's
    `<job>-ssh` Secret or checkpoint key. validate refuses them by field; the job's own SSH key is mounted by the
    operator, its own checkpoint key (`<job>-checkpoint`) is the one Secret volume allowed."""
    objects = render_all(JobSpec())
    change(_worker(next(o for o in objects if o["kind"] == "MPIJob")))
    with pytest.raises(ManifestError) as err:
        validate_objects(objects)
    assert err.value.path.startswith("spec.mpiReplicaSpecs.Worker.template.spec.") and field in err.value.path


def _kustomize(directory) -> list[dict]:
    """`kubectl kustomize DIRECTORY` (labkit's renderer where kubectl is missing: tests/test_manifests.py shows they
    agree on every overlay)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return kustomize_build(directory)
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("kind", OVERLAY_KINDS)
@pytest.mark.parametrize("accelerator", ["cpu", "nvidia", "gaudi"])
def test_gaudi_alone_is_privileged_in_a_namespace_of_its_own(accelerator, kind):
    """hostIPC needs Pod Security "privileged" (baseline forbids it): only the gaudi overlays ask for it, in
    workloads-gaudi, so the namespace the lab and the cpu/nvidia jobs share stays restricted."""
    objects = _kustomize(overlay_dir(accelerator, kind))
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    assert len(namespaces) == 1
    name, labels = namespaces[0]["metadata"]["name"], namespaces[0]["metadata"]["labels"]
    gaudi = accelerator == "gaudi"
    assert name == ("workloads-gaudi" if gaudi else "workloads") == NAMESPACES[accelerator]
    assert labels["pod-security.kubernetes.io/enforce"] == ("privileged" if gaudi else "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] != "Namespace"} == {name}
    subjects = [s for o in objects if o["kind"] == "RoleBinding" for s in o["subjects"]]
    accounts = [s for s in subjects if s["kind"] == "ServiceAccount"]
    assert accounts and all(s["namespace"] == name for s in accounts)
    # Gaudi's binding also names the lab's own identity (workloads:labkit), which runs in the restricted namespace
    users = [s["name"] for s in subjects if s["kind"] == "User"]
    assert users == (["system:serviceaccount:workloads:labkit"] if gaudi else [])
    pods = _pod_templates(objects)
    assert pods and any(p.get("hostIPC") for p in pods) == gaudi
    for pod in pods:
        assert violations(pod, "baseline" if not gaudi else "privileged") == []
        assert "SYS_NICE" not in str(pod)  # no effect for uid 1000: dropped


def test_the_lab_namespace_stays_restricted():
    objects = [o for o in _kustomize(manifests_dir() / "lab") if not o["kind"].startswith("Cluster")]  # node-reader
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objects} == {"workloads"}
    base = _kustomize(manifests_dir() / "base")
    assert next(o for o in base if o["kind"] == "Namespace")["metadata"]["labels"][ENFORCE_LABEL] == "restricted"


def test_a_gaudi_job_is_never_rendered_into_the_restricted_namespace():
    with pytest.raises(ConfigError, match="^namespace: workloads is the lab's.*leave it unset \\(workloads-gaudi\\)"):
        render_all(JobSpec(accelerator="gaudi", namespace="workloads"))
    assert JobSpec(accelerator="gaudi").namespace == "workloads-gaudi" and JobSpec().namespace == "workloads"
    mine = render_all(JobSpec(accelerator="gaudi", namespace="alice-gaudi"))
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in mine} == {"alice-gaudi"}


def _pod_templates(objects: list[dict]) -> list[dict]:
    out = []
    for obj in objects:
        if obj["kind"] == "MPIJob":
            out += [r["template"]["spec"] for r in obj["spec"]["mpiReplicaSpecs"].values()]
        if obj["kind"] == "TrainingRuntime":
            jobs = obj["spec"]["template"]["spec"]["replicatedJobs"]
            out += [r["template"]["spec"]["template"]["spec"] for r in jobs]
    return out

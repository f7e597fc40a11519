"""Pod Security before submit (issue 12.1): the kit refuses, by field, what the namespace's level would refuse, and
agrees with the fake API server's admission (both written from kubernetes pod-security-admission/policy/)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from fake_apiserver import FakeApiServer
from kit_testing import fake_cluster

from labkit.manifests import JobSpec, ManifestError, render_all, to_yaml
from labkit.manifests.checks import validate_objects
from labkit.manifests.pod_security import violations


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
    ATTACKS["hostPath /"](_worker(job))
    with pytest.raises(ManifestError) as err:
        validate_objects(objects)
    assert err.value.path == "spec.mpiReplicaSpecs.Worker.template.spec.volumes[3].hostPath"
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

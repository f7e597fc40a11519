"""manifests/ and labkit.manifests: every overlay renders, validates, equals `kubectl kustomize`, leaks nothing."""

from __future__ import annotations

import copy
import gzip
import io
import re
import shutil
import sys
from contextlib import redirect_stdout

import pytest
import yaml
from fake_rbac import SERVICE_ACCOUNT, Attributes, allowed, load_bindings
from kit_testing import ROOT, kubectl_kustomize

from labkit import manifests as m
from labkit.devices import ACCELERATORS
from labkit.errors import ConfigError, LabkitError
from labkit.manifests import checks, render

OVERLAYS = [(a, k) for a in ACCELERATORS for k in m.OVERLAY_KINDS]
# Exactly what labkit.jobs.kubernetes calls in a job namespace (tests/test_k8s_fidelity.py checks it against every
# request): (apiGroup, resource) -> verbs.
KIT_CALLS = {
    ("kubeflow.org", "mpijobs"): {"create", "get", "list", "delete"},
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "delete"},
    ("batch", "jobs"): {"get"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "pods/exec"): {"create", "get"},
    ("", "events"): {"list"},
    ("", "configmaps"): {"create", "get"},  # the proxy ConfigMap; reading only that one
    ("", "secrets"): {"create"},  # each job's checkpoint key; no Secret is readable, its own ones included
}


def job_of(objects):
    return next(o for o in objects if o["kind"] in ("MPIJob", "TrainJob"))


def worker(job):
    return job["spec"]["mpiReplicaSpecs"]["Worker"]


def launcher(job):
    return job["spec"]["mpiReplicaSpecs"]["Launcher"]


def container(replica):
    return replica["template"]["spec"]["containers"][0]


# ------------------------------------------------------------------------------------------- overlays and kubectl
@pytest.mark.parametrize("accelerator,kind", OVERLAYS)
def test_overlay_renders_and_every_object_validates(accelerator, kind):
    objects = m.render_all(m.JobSpec(accelerator=accelerator), kind)
    kinds = [o["kind"] for o in objects]
    if kind == "trainjob":  # in the order listed (sortOptions fifo): the runtime before the TrainJob that names it
        assert kinds[:5] == ["Namespace", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding"]
        assert kinds[-2:] == ["TrainingRuntime", "TrainJob"]
    else:
        assert kinds[:4] == ["Namespace", "ServiceAccount", "Role", "RoleBinding"]
        assert "PersistentVolumeClaim" in kinds and "MPIJob" in kinds
    assert kinds.count("NetworkPolicy") == 4  # default deny, MPIJob pods, Trainer's (JobSet) pods, the lab
    for obj in objects:
        m.validate_object(obj)  # raises on any problem
        own = m.NAMESPACES[accelerator]
        assert obj["metadata"].get("namespace", own) == own and (
            obj["kind"] != "Namespace" or obj["metadata"]["name"] == own
        )


@pytest.mark.parametrize("accelerator,kind", OVERLAYS)
def test_labkit_render_equals_kubectl_kustomize(accelerator, kind):
    expected = kubectl_kustomize(m.overlay_dir(accelerator, kind))
    assert m.kustomize_build(m.overlay_dir(accelerator, kind)) == expected
    # Default parameters change nothing: the Python render IS the files.
    assert m.render_all(m.JobSpec(accelerator=accelerator), kind) == expected
    assert m.render_all(m.JobSpec.from_overlay(accelerator, kind), kind) == expected


def test_lab_kustomization_equals_kubectl_and_validates():
    objects = m.kustomize_build(ROOT / "manifests" / "lab")
    assert objects == kubectl_kustomize(ROOT / "manifests" / "lab")
    m.validate_objects(objects)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "labkit"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "value" not in env["JUPYTER_TOKEN"] and env["JUPYTER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]


def test_spec_defaults_are_the_manifest_values():
    from_files = m.JobSpec.from_overlay("cpu")
    defaults = m.JobSpec()
    for name in (
        "name",
        "namespace",
        "workers",
        "accelerator",
        "deadline_seconds",
        "ttl_seconds_after_finished",
        "pvc_name",
        "storage_size",
        "hf_token_secret",
    ):
        assert getattr(defaults, name) == getattr(from_files, name), name
    resolved = m.JobSpec(accelerator="gaudi").resolved()
    assert resolved.slots_per_worker == 8 and resolved.hugepages_2mi and resolved.image.startswith("ghcr.io/")
    assert resolved.launcher_command == ["sleep", "infinity"]
    assert m.JobSpec(accelerator="nvidia").resolved("batch").launcher_command[0] == "deepspeed"


# ------------------------------------------------------------------------------------------- parameters
def test_parameters_reach_every_object():
    spec = m.JobSpec(
        name="ds-big",
        namespace="team-a",
        image="registry.example.com/ds:1",
        workers=4,
        slots_per_worker=8,
        accelerator="nvidia",
        launcher_command=["python", "train.py"],
        deadline_seconds=3600,
        ttl_seconds_after_finished=60,
        pvc_name="data",
        storage_class="fast",
        storage_size="1Ti",
        cpu="16",
        memory="128Gi",
        shm_size="64Gi",
        hf_token_secret="my-hf",
    )
    objects = m.render_all(spec)
    by_kind = {o["kind"]: o for o in objects}
    assert by_kind["Namespace"]["metadata"]["name"] == "team-a"
    assert all(o["metadata"].get("namespace", "team-a") == "team-a" for o in objects)
    assert by_kind["RoleBinding"]["subjects"][0]["namespace"] == "team-a"
    pvc = by_kind["PersistentVolumeClaim"]
    assert (
        pvc["metadata"]["name"],
        pvc["spec"]["storageClassName"],
        pvc["spec"]["resources"]["requests"]["storage"],
    ) == ("data", "fast", "1Ti")
    job = by_kind["MPIJob"]
    assert job["metadata"]["name"] == "ds-big"
    assert job["spec"]["slotsPerWorker"] == 8 and worker(job)["replicas"] == 4
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 60
    assert container(launcher(job))["args"] == ["python", "train.py"]
    res = container(worker(job))["resources"]
    for section in ("requests", "limits"):
        assert res[section] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": 8}
    for replica in (launcher(job), worker(job)):
        pod = replica["template"]["spec"]
        assert container(replica)["image"] == "registry.example.com/ds:1"
        assert {v["name"]: v for v in pod["volumes"]}["shared"]["persistentVolumeClaim"]["claimName"] == "data"
        hf = {e["name"]: e for e in container(replica)["env"]}["HF_TOKEN"]
        assert hf["valueFrom"]["secretKeyRef"]["name"] == "my-hf"
    assert {v["name"]: v for v in worker(job)["template"]["spec"]["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "64Gi"


def test_trainjob_parameters_and_no_token():
    spec = m.JobSpec(
        accelerator="gaudi", workers=3, slots_per_worker=4, hf_token_secret=None, memory="200Gi", deadline_seconds=600
    )
    assert "activeDeadlineSeconds" not in m.render_job(spec, "trainjob")["spec"]  # Trainer < 2.2 rejects it
    spec.trainjob_deadline = True
    job = m.render_job(spec, "trainjob")
    trainer = job["spec"]["trainer"]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "labkit-deepspeed-gaudi",
    }
    assert (trainer["numNodes"], trainer["numProcPerNode"], job["spec"]["activeDeadlineSeconds"]) == (3, 4, 600)
    assert trainer["resourcesPerNode"]["limits"]["habana.ai/gaudi"] == 4
    assert trainer["resourcesPerNode"]["limits"]["memory"] == "200Gi"
    assert "HF_TOKEN" not in {e["name"] for e in trainer.get("env", [])}
    assert trainer["image"].startswith("ghcr.io/labkit/deepspeed-gaudi:")


def test_storage_class_empty_string_means_cluster_default():
    pvc = next(
        o
        for o in m.render_all(m.JobSpec(accelerator="nvidia", storage_class=""))
        if o["kind"] == "PersistentVolumeClaim"
    )
    assert "storageClassName" not in pvc["spec"]
    cpu_pvc = next(o for o in m.render_all(m.JobSpec()) if o["kind"] == "PersistentVolumeClaim")
    assert "storageClassName" not in cpu_pvc["spec"] and cpu_pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"name": "Deep_Speed"}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"name": "1st-job"}, "name"),
        ({"namespace": "Work Loads"}, "namespace"),
        ({"namespace": "workloads-gaudi"}, "namespace"),  # a cpu job would relabel Gaudi's privileged namespace
        ({"namespace": "workloads", "accelerator": "gaudi"}, "namespace"),
        ({"workers": 0}, "workers"),
        ({"workers": True}, "workers"),
        ({"workers": "2"}, "workers"),
        ({"slots_per_worker": 0}, "slots_per_worker"),
        ({"slots_per_worker": 16, "accelerator": "gaudi"}, "slots_per_worker"),
        ({"accelerator": "tpu"}, "accelerator"),
        ({"image": "not an image"}, "image"),
        ({"launcher_command": "sleep infinity"}, "launcher_command"),
        ({"launcher_command": []}, "launcher_command"),
        ({"launcher_command": ["train", "--token", "hf_" + "a" * 34]}, "launcher_command"),
        ({"deadline_seconds": 0}, "deadline_seconds"),
        ({"ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
        ({"pvc_name": "Shared_Data"}, "pvc_name"),
        ({"storage_size": "20 GB"}, "storage_size"),
        ({"storage_size": None}, "storage_size"),
        ({"storage_size": "-5Gi"}, "storage_size"),  # the API server: must be greater than or equal to 0
        ({"storage_size": "0.0Gi"}, "storage_size"),  # ... and a claim's storage greater than zero
        ({"cpu": "-4"}, "cpu"),
        ({"shm_size": "-1Gi"}, "shm_size"),
        ({"cpu": "four"}, "cpu"),
        ({"memory": 32}, "memory"),
        ({"hugepages_2mi": "1Gi", "accelerator": "nvidia"}, "hugepages_2mi"),
        ({"hf_token_secret": "hf_" + "Q" * 34}, "hf_token_secret"),
        ({"hf_token_secret": "My Secret"}, "hf_token_secret"),
        ({"queue": "Team_A"}, "queue"),
        ({"queue": "q" * 64}, "queue"),
    ],
)
def test_bad_parameters_raise_one_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        m.render_all(m.JobSpec(**kwargs))
    assert info.value.field == field
    assert "Fix:" in str(info.value)
    if field == "hf_token_secret" and kwargs[field].startswith("hf_"):  # a token typed where its Secret's name goes
        assert "looks like a token" in str(info.value) and kwargs[field] not in str(info.value)  # never echoed


@pytest.mark.parametrize("kind", ["interactive", "batch", "trainjob"])
def test_a_queue_labels_the_job_alone_for_kueue(kind):
    """Kueue manages a job labelled kueue.x-k8s.io/queue-name (its webhook suspends it until admitted); only the
    MPIJob or TrainJob gets the label, not the Namespace, Role or PVC around it."""
    objects = m.render_all(m.JobSpec(queue="lab-queue"), kind)
    labelled = [o["kind"] for o in objects if m.QUEUE_LABEL in (o["metadata"].get("labels") or {})]
    assert labelled == [m.render_job(m.JobSpec(), kind)["kind"]]
    assert m.render_job(m.JobSpec(queue="lab-queue"), kind)["metadata"]["labels"][m.QUEUE_LABEL] == "lab-queue"
    assert not any(m.QUEUE_LABEL in (o["metadata"].get("labels") or {}) for o in m.render_all(m.JobSpec(), kind))


def test_cli_render_and_submit_take_a_queue(capsys):
    from labkit.cli import main

    assert main(["manifests", "render", "--job-only", "--queue", "lab-queue"]) == 0
    assert f"{m.QUEUE_LABEL}: lab-queue" in capsys.readouterr().out
    assert main(["job", "render", "--queue", "lab-queue"]) == 0
    assert f"{m.QUEUE_LABEL}: lab-queue" in capsys.readouterr().out
    assert main(["manifests", "render", "--queue", "Team_A"]) == 2
    assert "queue" in capsys.readouterr().err


def test_bad_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="^kind:"):
        m.render_all(m.JobSpec(), "daemon")
    with pytest.raises(ConfigError, match="^kind:"):
        m.render_job(m.JobSpec(), "job")


# ------------------------------------------------------------------------------------------- job contents
@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_interactive_job_follows_the_operator_contract(accelerator):
    job = m.render_job(m.JobSpec(accelerator=accelerator))
    spec = job["spec"]
    assert job["apiVersion"] == "kubeflow.org/v2beta1"
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    assert spec["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 4 * 3600 and spec["runPolicy"]["ttlSecondsAfterFinished"]
    assert launcher(job)["replicas"] == 1 and container(launcher(job))["args"] == ["sleep", "infinity"]
    # args (not command) so the image entrypoint (waits for worker DNS) still runs
    for replica in (launcher(job), worker(job)):
        assert "command" not in container(replica)
        pod = replica["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == "labkit-shared"
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        mounts = {vm["mountPath"] for vm in container(replica)["volumeMounts"]}
        assert {"/shared/runs/deepspeed-interactive", "/shared/data", "/dev/shm"} <= mounts
    w = container(worker(job))
    assert w["args"] == ["/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config"]
    assert w["readinessProbe"]["tcpSocket"]["port"] == m.SSH_PORT == w["ports"][0]["containerPort"]


def test_accelerator_resources():
    nvidia = m.render_job(m.JobSpec(accelerator="nvidia", slots_per_worker=4))
    assert nvidia["spec"]["slotsPerWorker"] == 4
    assert container(worker(nvidia))["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "nvidia.com/gpu" not in container(launcher(nvidia))["resources"].get("limits", {})

    gaudi = m.render_job(m.JobSpec(accelerator="gaudi"))
    pod = worker(gaudi)["template"]["spec"]
    res = container(worker(gaudi))["resources"]
    assert gaudi["spec"]["slotsPerWorker"] == 8 == res["limits"]["habana.ai/gaudi"]
    assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"]
    assert res["requests"]["cpu"] and res["requests"]["memory"]
    assert pod["hostIPC"] is True
    assert "add" not in container(worker(gaudi))["securityContext"]["capabilities"]  # SYS_NICE: no effect for uid 1000

    cpu = m.render_job(m.JobSpec(accelerator="cpu"))
    env = {e["name"]: e.get("value") for e in container(worker(cpu))["env"]}
    assert env["DS_ACCELERATOR"] == "cpu"
    assert not any("/" in key for key in container(worker(cpu))["resources"]["limits"])


def test_batch_job_runs_training_and_completes():
    job = m.render_job(m.JobSpec(accelerator="nvidia"), "batch")
    assert job["metadata"]["name"] == "deepspeed-batch"
    args = container(launcher(job))["args"]
    assert args[0] == "deepspeed" and "--hostfile=/etc/mpi/hostfile" in args  # Open MPI 5 ignores OMPI_MCA_orte_*
    assert launcher(job)["restartPolicy"] == "Never" and job["spec"]["runPolicy"]["backoffLimit"] == 0
    assert "--force_multi" in args  # one worker must still run the ranks on the worker, not the launcher
    custom = m.render_job(m.JobSpec(name="run-7", launcher_command=["deepspeed", "x.py"]), "batch")
    assert custom["metadata"]["name"] == "run-7" and container(launcher(custom))["args"] == ["deepspeed", "x.py"]


# ------------------------------------------------------------------------------------------- validation
@pytest.fixture
def job():
    return m.render_job(m.JobSpec(accelerator="gaudi"))


def _break(obj, path, value):
    broken = copy.deepcopy(obj)
    node = broken
    for part in path[:-1]:
        node = node[part]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return broken


W = ["spec", "mpiReplicaSpecs", "Worker", "template", "spec"]
WC = W + ["containers", 0]


@pytest.mark.parametrize(
    "path,value,message",
    [
        (
            ["spec", "mpiReplicaSpecs", "Launcher", "replicas"],
            2,
            "MPIJob deepspeed-interactive: spec.mpiReplicaSpecs.Launcher.replicas: must be 1",
        ),
        (
            ["spec", "mpiReplicaSpecs", "Worker", "replicas"],
            0,
            "spec.mpiReplicaSpecs.Worker.replicas: must be at least 1",
        ),
        (["spec", "mpiReplicaSpecs", "Launcher"], KeyError, "spec.mpiReplicaSpecs.Launcher: missing"),
        (["spec", "slotPerWorker"], 2, "spec: unknown field 'slotPerWorker'"),
        (["spec", "mpiReplicaSpecs", "Worker", "restartPolicy"], "Always", "Worker.restartPolicy: 'Always'"),
        (
            ["spec", "mpiImplementation"],
            "MVAPICH",
            "spec.mpiImplementation: 'MVAPICH' is not one of ['OpenMPI', 'Intel', 'MPICH']",
        ),
        (
            ["spec", "runPolicy", "cleanPodPolicy"],
            "Always",
            "spec.runPolicy.cleanPodPolicy: must be None or Running or All (not 'Always')",
        ),
        (["spec", "runPolicy", "backoffLimit"], -1, "spec.runPolicy.backoffLimit: must be at least 0"),
        (["spec", "slotsPerWorker"], 2**31, "spec.slotsPerWorker"),
        (
            ["spec", "runPolicy", "activeDeadlineSeconds"],
            "4h",
            "spec.runPolicy.activeDeadlineSeconds: '4h' is not of type",
        ),
        (["spec", "sshAuthMountPath"], "/root/.ssh", "spec.sshAuthMountPath: must be /home/mpiuser/.ssh"),
        (
            WC + ["resources", "limits", "memory"],
            "256 GB",
            "containers[0].resources.limits.memory: '256 GB' is not a Kubernetes quantity",
        ),
        (WC + ["resources", "limits", "hugepages-2Mi"], "16Gi", "requests.hugepages-2Mi: hugepages request"),
        (WC + ["resources", "requests", "cpu"], "-4", "requests.cpu: -4 must be greater than or equal to 0"),
        (
            WC + ["resources", "limits", "habana.ai/gaudi"],
            "0.5",
            "limits.habana.ai/gaudi: '0.5' must be a whole number",
        ),
        (WC + ["readinessProbe", "tcpSocket", "port"], 22, "readinessProbe.tcpSocket.port: 22 is not the images' sshd"),
        (WC + ["readinessProbe"], KeyError, "WaitForWorkersReady needs a readiness probe"),
        (
            WC + ["livenessProbe"],
            {"tcpSocket": {"port": 2222}, "periodSecond": 5},
            "livenessProbe: unknown field 'periodSecond'",
        ),
        (WC + ["volumeMounts", 0, "name"], "data", "volumeMounts[0].name: 'data' is not a volume of this pod"),
        (W + ["hostIPC"], "yes", "hostIPC: 'yes' is not of type 'boolean'"),
        (W + ["securityContext", "runAsUser"], 0, "runAsUser: 0 is not the images' mpiuser uid 1000"),
        (["metadata", "name"], "Bad.Name", "metadata.name"),
        (["metadata", "labels", "team"], 7, "metadata.labels.team: 7 must be a string"),
    ],
)
def test_validate_object_names_the_field(job, path, value, message):
    with pytest.raises(m.ManifestError) as info:
        m.validate_object(_break(job, path, value))
    assert message in str(info.value)
    assert isinstance(info.value, LabkitError)


@pytest.mark.parametrize("implementation", ["OpenMPI", "Intel", "MPICH"])
def test_every_mpi_implementation_the_crd_lists_is_accepted(job, implementation):
    m.validate_object(_break(job, ["spec", "mpiImplementation"], implementation))


def test_hugepages_need_cpu_or_memory(job):
    broken = copy.deepcopy(job)
    res = broken["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
    for section in ("requests", "limits"):
        res[section] = {"hugepages-2Mi": "1Gi", "habana.ai/gaudi": 8}
    with pytest.raises(m.ManifestError, match="needs a cpu or memory request"):
        m.validate_object(broken)


def test_trainjob_and_core_kinds_are_validated():
    trainjob = m.render_job(m.JobSpec(), "trainjob")
    with pytest.raises(m.ManifestError, match=r"spec.trainer.numProcPerNode: 0 is less than the minimum of 1"):
        m.validate_object(_break(trainjob, ["spec", "trainer", "numProcPerNode"], 0))
    with pytest.raises(m.ManifestError, match=r"spec.runtimeRef: 'name' is a required property"):
        m.validate_object(_break(trainjob, ["spec", "runtimeRef", "name"], KeyError))
    objects = {o["kind"]: o for o in m.render_all(m.JobSpec())}
    with pytest.raises(m.ManifestError, match=r"PersistentVolumeClaim labkit-shared: spec: unknown field.*accessMode"):
        m.validate_object(_break(objects["PersistentVolumeClaim"], ["spec", "accessMode"], ["ReadWriteOnce"]))
    with pytest.raises(m.ManifestError, match=r"Role labkit: rules\[0\].*verbs"):
        m.validate_object(_break(objects["Role"], ["rules", 0, "verbs"], "get"))
    cluster_role = dict(objects["Role"], kind="ClusterRole")
    with pytest.raises(m.ManifestError, match="nothing cluster-wide"):
        m.validate_object(cluster_role)
    # The one cluster-wide grant (manifests/base/node-reader, in the lab): listing nodes, for device=auto.
    reader, binding = m.kustomize_build(ROOT / "manifests" / "base" / "node-reader")
    assert reader["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    m.validate_objects([reader, binding])
    assert {"ClusterRole", "ClusterRoleBinding"} <= {o["kind"] for o in m.kustomize_build(ROOT / "manifests" / "lab")}
    with pytest.raises(m.ManifestError, match=r"rules\[0\]: the kit grants nothing cluster-wide but get/list on nodes"):
        m.validate_object(_break(reader, ["rules", 0, "verbs"], ["list", "watch"]))
    with pytest.raises(m.ManifestError, match="roleRef.name: the kit binds no ClusterRole but labkit-node-reader"):
        m.validate_object(_break(binding, ["roleRef", "name"], "cluster-admin"))
    with pytest.raises(m.ManifestError, match="not a version labkit knows"):
        m.validate_object(dict(trainjob, apiVersion="trainer.kubeflow.org/v9"))


def test_unsupported_kustomize_features_are_refused(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [pvc.yaml]\nnamePrefix: dev-\n")
    (tmp_path / "pvc.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(m.ManifestError, match="namePrefix: not supported by labkit's renderer"):
        m.kustomize_build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [pvc.yaml]\nsortOptions: {order: random}\n")
    with pytest.raises(m.ManifestError, match="sortOptions: labkit's renderer reads only `order: legacy` or `order: f"):
        m.kustomize_build(tmp_path)


def test_sort_options_fifo_keeps_the_listed_order_as_kubectl_does(tmp_path):
    for name in ("b", "a"):
        (tmp_path / f"{name}.yaml").write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [b.yaml, a.yaml]\n")
    assert [o["metadata"]["name"] for o in m.kustomize_build(tmp_path)] == ["a", "b"]  # legacy: sorted by name
    (tmp_path / "kustomization.yaml").write_text("resources: [b.yaml, a.yaml]\nsortOptions: {order: fifo}\n")
    assert [o["metadata"]["name"] for o in m.kustomize_build(tmp_path)] == ["b", "a"]
    assert m.kustomize_build(tmp_path) == kubectl_kustomize(tmp_path)


@pytest.mark.parametrize(
    "old, entry",
    [
        ("reg.io/team/app:1.0", {"newTag": "2.0"}),
        ("reg.io/team/app:1.0", {"digest": "sha256:" + "0" * 64}),  # a digest replaces the tag
        ("reg.io/team/app:1.0", {"newTag": "2.0", "digest": "sha256:" + "1" * 64}),  # both kept
        ("reg.io/team/app@sha256:" + "2" * 64, {"newTag": "3.0"}),  # a tag replaces the old digest
        ("reg.io/team/app:1.0", {"newName": "mirror.local:5000/app"}),  # a registry port is not a tag
        ("mirror.local:5000/team/app", {"newTag": "4.0"}),
    ],
)
def test_image_entries_rewrite_tags_and_digests_as_kubectl_does(tmp_path, old, entry):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    pod["spec"]["containers"][0]["image"] = old
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    name = old.split("@")[0].rsplit(":", 1)[0] if old.count(":") > (":5000" in old) else old.split("@")[0]
    images = [{"name": name, **entry}]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["pod.yaml"], "images": images}))
    (built,) = m.kustomize_build(tmp_path)
    assert built["spec"]["containers"][0]["image"] != old and [built] == kubectl_kustomize(tmp_path)


def test_an_image_entry_the_renderer_does_not_know_is_refused(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("images: [{name: app, tagSuffix: -x}]\n")
    with pytest.raises(m.ManifestError, match="images: labkit's renderer does not support tagSuffix"):
        m.kustomize_build(tmp_path)


def test_json_patches_apply_exactly_or_fail_clearly(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: '1'}\n")
    patch = (
        "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap}\n    patch: |-\n"
        "      - {op: add, path: /data/b, value: '2'}\n      - {op: remove, path: /data/a}\n"
        "      - {op: add, path: /metadata/labels, value: {app: x}}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(patch)
    (obj,) = m.kustomize_build(tmp_path)
    assert obj["data"] == {"b": "2"} and obj["metadata"]["labels"] == {"app": "x"}
    assert [obj] == kubectl_kustomize(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(patch.replace("/data/a}", "/data/zzz}"))
    with pytest.raises(m.ManifestError, match="/data/zzz: remove: can't remove a non-existent object 'zzz'"):
        m.kustomize_build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(patch.replace("op: remove", "op: frob"))
    with pytest.raises(m.ManifestError, match="frob: Unknown operation 'frob'"):
        m.kustomize_build(tmp_path)
    # Every RFC 6902 operation works as in kubectl (move, copy, test included).
    moved = patch.replace("{op: remove, path: /data/a}", "{op: move, from: /data/a, path: /data/c}")
    (tmp_path / "kustomization.yaml").write_text(moved + "      - {op: test, path: /data/c, value: '1'}\n")
    (obj,) = m.kustomize_build(tmp_path)
    assert obj["data"] == {"b": "2", "c": "1"}
    assert [obj] == kubectl_kustomize(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(m.ManifestError, match="'missing.yaml' does not exist"):
        m.kustomize_build(tmp_path)


def test_manifests_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_MANIFESTS", str(ROOT / "manifests"))
    assert m.manifests_dir() == ROOT / "manifests"
    # A copy elsewhere (as in the lab image, where the package is installed without the repository) works too.
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    monkeypatch.setenv("LABKIT_MANIFESTS", str(tmp_path / "manifests"))
    assert m.overlay_dir("nvidia").is_relative_to(tmp_path)
    assert "MPIJob" in [o["kind"] for o in m.render_all(m.JobSpec(accelerator="nvidia"))]


def test_missing_manifests_dir_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_MANIFESTS", str(tmp_path / "nowhere"))
    monkeypatch.setattr(render, "PACKAGE_ROOT", tmp_path / "site-packages")
    with pytest.raises(ConfigError, match="^LABKIT_MANIFESTS: no kit manifests/ directory found"):
        m.manifests_dir()


# ------------------------------------------------------------------------------------------- security
def test_role_is_namespaced_and_least_privilege():
    for accelerator, kind in OVERLAYS:
        kinds = {o["kind"] for o in m.render_all(m.JobSpec(accelerator=accelerator), kind)}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Secret"}
    role = next(o for o in m.render_all(m.JobSpec()) if o["kind"] == "Role")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for res in rule["resources"]:
            grants.setdefault((rule["apiGroups"][0], res), set()).update(rule["verbs"])
    assert grants == KIT_CALLS
    assert {"resourceNames": ["labkit-proxy"], "verbs": ["get"]}.items() <= next(
        r for r in role["rules"] if r["verbs"] == ["get"] and r["resources"] == ["configmaps"]
    ).items()
    assert all("*" not in str(rule) for rule in role["rules"])


def test_no_secret_material_in_any_rendered_manifest():
    texts = [m.to_yaml(m.render_all(m.JobSpec(accelerator=a), k)) for a, k in OVERLAYS]
    texts.append(m.to_yaml(m.kustomize_build(ROOT / "manifests" / "lab")))
    texts += [p.read_text() for p in (ROOT / "manifests").rglob("*.yaml")]
    for text in texts:
        assert m.find_secret_material(text) == []
        assert "PRIVATE KEY" not in text and "BEGIN OPENSSH" not in text
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "Secret":
                pytest.fail("a Secret object is rendered")


@pytest.mark.parametrize(
    "planted,what",
    [
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----", "PEM private key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleQ user@host", "OpenSSH"),
        ("hf_" + "abcdEFGHijklMNOPqrstUVWXyz012345", "Hugging Face token"),
        ("ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "GitHub token"),
        ("AKIA" + "IOSFODNN7EXAMPLE", "AWS access key"),
        ("password=" + "hunter2hunter2", "password/token assignment"),
        ("WANDB_API_KEY=" + "0123456789abcdef", "password/token assignment"),  # inside an env name
        ("HF_TOKEN=" + "abcdefghij0123456789", "password/token assignment"),
        ("--token " + "sekritvalue123", "password/token flag"),
    ],
)
def test_secret_scanner_catches_planted_material(planted, what):
    assert any(what in hit for hit in m.find_secret_material(f"args: [run, '{planted}']"))
    job = m.render_job(m.JobSpec())
    job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["metadata"]["annotations"] = {"note": planted}
    with pytest.raises(m.ManifestError, match="looks like"):
        m.validate_object(job)


@pytest.mark.parametrize(
    "clean", ["HF_TOKEN=$HF_TOKEN", "--max-tokens=512 --tokenizer gpt2", "--token-file /run/secrets/t",
              "TOKENIZERS_PARALLELISM=false", "--max_new_tokens 64"],
)  # fmt: skip
def test_secret_scanner_leaves_references_and_token_counts_alone(clean):
    assert m.find_secret_material(clean) == []


def test_literal_secret_env_value_is_rejected():
    job = m.render_job(m.JobSpec())
    env = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "HF_TOKEN"] + [{"name": "HF_TOKEN", "value": "short-but-literal"}]
    with pytest.raises(m.ManifestError, match=r"env\[\d+\]\.value: HF_TOKEN has a literal value"):
        m.validate_object(job)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf-token", "namespace": "workloads"},
        "stringData": {"token": "x"},
    }
    with pytest.raises(m.ManifestError, match="Secret with values"):
        m.validate_object(secret)


# ------------------------------------------------------------------------------------------- schemas and CLI
def test_a_kubernetes_validate_without_our_schemas_is_refused_in_one_line(monkeypatch):
    # kubernetes-validate 1.30.0/1.31.0 ship no 1.32 schemas and raised their own bare VersionNotSupportedError on
    # every core object (docs/benchmarks.md, dependency floors); a version no installed release has stands in here.
    role = next(o for o in m.render_all(m.JobSpec()) if o["kind"] == "Role")
    floor = re.search(r'"kubernetes-validate>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert floor == checks.KUBERNETES_VERSION  # the release that brought the schemas labkit validates against
    monkeypatch.setattr(checks, "KUBERNETES_VERSION", "1.99")
    with pytest.raises(
        LabkitError, match=r"has no Kubernetes 1.99 schemas\. Fix: pip install 'kubernetes-validate>=1.99'"
    ):
        m.validate_object(role)


def test_structural_schemas_are_current_and_lean(tmp_path):
    # The upstream CRDs travel with the tests (tests/data/crd-sources, gzipped verbatim: tests/data/README.md), so a
    # clean clone compares the generated copies with their sources instead of skipping when the sources are elsewhere.
    for packed in (ROOT / "tests" / "data" / "crd-sources").glob("*.yaml.gz"):
        (tmp_path / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_schemas
    finally:
        sys.path.pop(0)
    for path in (ROOT / "labkit" / "schemas").glob("*.json"):
        text = path.read_text()
        assert '"description"' not in text  # dropped, as promised
        assert "x-kubernetes-validations" not in text
    assert make_schemas.main(["--source", str(tmp_path), "--check"]) == 0
    # and the comparison can fail: a changed source makes the copies stale
    crd = tmp_path / "kubeflow.org_mpijobs.yaml"
    crd.write_text(crd.read_text().replace("- OpenMPI\n", "- OpenMPI\n                - Changed\n", 1))
    assert make_schemas.main(["--source", str(tmp_path), "--check"]) == 1


def run_cli(*argv) -> tuple[int, str]:
    from labkit.cli import main

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(argv))
    return code, buffer.getvalue()


def test_cli_render_output_file_is_checked_before_rendering(tmp_path, capsys):
    said = {tmp_path / "no" / "x.yaml": f"{tmp_path / 'no'} is not a folder", tmp_path: f"{tmp_path} is a folder"}
    for where, problem in said.items():
        assert run_cli("manifests", "render", "-o", str(where)) == (2, "")  # a FileNotFoundError traceback before
        assert f"labkit: error: --output: {problem}" in capsys.readouterr().err


def test_cli_validate_fails_on_input_without_objects(tmp_path, monkeypatch):
    """An empty stdin or a file of comments passed as valid (exit 0, nothing printed): a wrong path or an empty
    pipe must not read as a checked manifest."""
    comment = tmp_path / "comment.yaml"
    comment.write_text("# only a comment\n---\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out = run_cli("manifests", "validate", "-", str(comment))
    assert code == 1
    assert out.splitlines() == [f"INVALID {where}: no Kubernetes objects in it" for where in ("-", comment)]


def test_cli_render_and_validate(tmp_path, capsys):
    code, out = run_cli(
        "manifests",
        "render",
        "--accelerator",
        "nvidia",
        "--kind",
        "batch",
        "--workers",
        "3",
        "--slots",
        "2",
        "--command",
        "deepspeed --hostfile /etc/mpi/hostfile train.py --epochs 1",
    )
    assert code == 0
    objects = m.load_yaml(out)
    m.validate_objects(objects)
    job = job_of(objects)
    assert worker(job)["replicas"] == 3 and job["spec"]["slotsPerWorker"] == 2
    assert container(launcher(job))["args"][-2:] == ["--epochs", "1"]

    good = tmp_path / "good.yaml"
    good.write_text(out)
    bad = tmp_path / "bad.yaml"
    bad.write_text(out.replace("slotsPerWorker: 2", "slotsPerWorker: two"))
    code, out = run_cli("manifests", "validate", str(good), str(ROOT / "manifests" / "overlays" / "gaudi"))
    assert code == 0 and "INVALID" not in out and "MPIJob deepspeed-interactive" in out
    code, out = run_cli("manifests", "validate", str(bad))
    assert code == 1 and "INVALID" in out and "spec.slotsPerWorker: 'two' is not of type 'integer'" in out

    code, _ = run_cli("manifests", "render", "--workers", "0")
    assert code == 2
    assert "labkit: error: --workers:" in capsys.readouterr().err
    for flag, value in (("--shm-size", "8Gi"), ("--ttl", "5")):  # accepted and silently ignored before
        assert run_cli("manifests", "render", "--kind", "trainjob", flag, value)[0] == 2
        assert f"labkit: error: {flag}: a TrainJob has no such setting" in capsys.readouterr().err
    for minutes, said in [
        ("inf", "a finite number >= 1, got inf"),
        ("nan", "a finite number >= 1, got nan"),
        ("0.5", "a number >= 1, got 0.5"),
    ]:
        assert run_cli("job", "render", "--deadline-minutes", minutes)[0] == 2  # not a traceback from int(inf)
        assert f"labkit: error: --deadline-minutes: must be {said}" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["batch", "trainjob"])
def test_default_training_commands_parse_with_the_training_script(kind):
    """The commands in manifests/ must be ones labkit.ranks.train accepts (a typo would only show in the cluster)."""
    import argparse

    from labkit.ranks import train as train_rank

    argv = m.JobSpec().resolved(kind).launcher_command
    script_args = argv[argv.index("labkit.ranks.train") + 1 :]
    parsed = train_rank.add_arguments(argparse.ArgumentParser(exit_on_error=False)).parse_args(script_args)
    assert parsed.synthetic is True and parsed.epochs == 2
    if kind == "batch":
        assert parsed.checkpoint_dir.startswith("/shared/")  # on the PVC every pod mounts
        # ... and the launcher part is one DeepSpeed's own runner accepts, with the flags the cluster needs.
        from deepspeed.launcher import runner

        assert argv[0] == "deepspeed"
        ds = runner.parse_args(argv[1:])
        assert (ds.hostfile, ds.launcher, ds.force_multi, ds.no_ssh_check, ds.module, ds.user_script) == (
            "/etc/mpi/hostfile",
            "openmpi",
            True,
            True,
            True,
            "labkit.ranks.train",
        )
    else:
        assert argv[:3] == ["mpirun", "--hostfile", "/etc/mpi/hostfile"]


def test_each_batch_job_checkpoints_in_its_own_folder_of_the_shared_volume():
    """Two batch jobs never share (and never resume) each other's checkpoints (issue 12.3)."""

    def checkpoint_dirs(spec: m.JobSpec) -> list[str]:
        job = next(o for o in m.render_all(spec, "batch") if o["kind"] == "MPIJob")
        args = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
        return [a for a in args if a.startswith("--checkpoint-dir=")]

    assert checkpoint_dirs(m.JobSpec()) == ["--checkpoint-dir=/shared/runs/deepspeed-batch"]
    assert checkpoint_dirs(m.JobSpec(name="alice-run")) == ["--checkpoint-dir=/shared/runs/alice-run"]
    own = ["deepspeed", "--module", "labkit.ranks.train", "--checkpoint-dir=/shared/runs/bob/try-2"]
    assert checkpoint_dirs(m.JobSpec(name="bob", launcher_command=own)) == [own[-1]]  # yours, in your folder
    with pytest.raises(ConfigError) as exc:  # another job's folder: not in bob's pods at all
        checkpoint_dirs(m.JobSpec(name="bob", launcher_command=[*own[:-1], "--checkpoint-dir=/shared/runs/alice"]))
    assert exc.value.field == "launcher_command"
    assert exc.value.problem.startswith("/shared/runs/alice is not in job bob")
    assert "/shared/runs/bob" in exc.value.fix


@pytest.mark.parametrize("kind", ["interactive", "batch"])
def test_each_job_pod_mounts_only_its_own_folder_of_the_shared_volume_and_the_inputs_read_only(kind):
    """Issue 12: job pods (all uid 1000) see, of the shared volume, their own runs/<job> read-write at the path every
    command names, and the lab's inputs (data) read-only; no pod mounts the whole volume."""
    job = next(o for o in m.render_all(m.JobSpec(name="alice-run"), kind) if o["kind"] == "MPIJob")
    own = {"name": "shared", "mountPath": "/shared/runs/alice-run", "subPath": "runs/alice-run"}
    inputs = {"name": "shared", "mountPath": "/shared/data", "subPath": "data", "readOnly": True}
    for role, replica in job["spec"]["mpiReplicaSpecs"].items():
        mounts = container(replica)["volumeMounts"]
        assert [v for v in mounts if v["name"] == "shared"] == [own, inputs], role
    args = container(launcher(job))["args"]
    assert all(a.startswith("--checkpoint-dir=/shared/runs/alice-run") for a in args if "/shared" in a)


@pytest.mark.parametrize("kind", ["interactive", "batch"])
def test_every_job_pod_reads_its_own_checkpoint_key_and_keeps_its_own_hf_cache(kind):
    """Issue 12.3: each pod mounts the job's own `<job>-checkpoint` Secret read-only where labkit.checkpoint reads it
    (ranks started over ssh see no pod env, but do see this file); HF_HOME is the job's own folder."""
    from labkit import checkpoint

    job = next(o for o in m.render_all(m.JobSpec(name="alice-run"), kind) if o["kind"] == "MPIJob")
    for role, replica in job["spec"]["mpiReplicaSpecs"].items():
        pod = replica["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": "alice-run-checkpoint", "defaultMode": 0o440, "optional": True}, role
        (container,) = pod["containers"]
        (mount,) = [v for v in container["volumeMounts"] if v["name"] == volume["name"]]
        assert (mount["mountPath"], mount["readOnly"]) == (str(checkpoint.MOUNTED_KEY.parent), True)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HOME"] == "/shared/runs/alice-run/hf-home", role


def test_network_policies_deny_by_default_and_keep_job_pods_from_the_lab():
    """Issue 12.6: nothing reaches a pod unless allowed; job pods reach job pods; the lab's 8888 only from outside the
    namespace; and the kit's ServiceAccount cannot add a policy of its own (policies only ever allow more)."""
    objects = m.render_all(m.JobSpec())
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["labkit-default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    job_rule = {"key": "training.kubeflow.org/job-name", "operator": "Exists"}
    jobs = policies["labkit-job-pods"]
    assert jobs["podSelector"]["matchExpressions"] == [job_rule]
    assert jobs["ingress"] == [{"from": [{"podSelector": {"matchExpressions": [job_rule]}}]}]
    lab = policies["labkit-lab"]
    assert lab["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "lab"}
    (rule,) = lab["ingress"]
    assert rule["ports"] == [{"port": 8888, "protocol": "TCP"}]
    assert rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["workloads"]
    assert rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    role = next(o for o in objects if o["kind"] == "Role")
    assert not [r for r in role["rules"] if "networking.k8s.io" in r["apiGroups"] or "*" in r["apiGroups"]]
    # in a namespace of a learner's own, "outside" means outside theirs
    alice = m.render_all(m.JobSpec(namespace="alice"))
    lab_alice = next(o for o in alice if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "labkit-lab")
    assert lab_alice["metadata"]["namespace"] == "alice"
    assert lab_alice["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["alice"]


# ------------------------------------------------------------------------------------------- a learner's namespaces
def applied(*renders: list[dict]) -> list[dict]:
    """What the cluster holds after `kubectl apply` of each render in turn: an object of the same kind, namespace and
    name is replaced."""
    held = {}
    for obj in (o for objects in renders for o in objects):
        held[obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]] = obj
    return list(held.values())


def granted(grants: dict, user: str, namespace: str) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) of KIT_CALLS and listing nodes that RBAC lets `user` do there (ConfigMaps:
    the one the kit reads, the proxy's)."""
    calls = {(g, r, v) for (g, r), verbs in KIT_CALLS.items() for v in verbs} | {("", "nodes", "list")}
    where = {"nodes": ""}
    names = {"configmaps": render.PROXY_CONFIGMAP}
    return {
        (g, r, v)
        for g, r, v in calls
        if allowed(user, Attributes(v, g, r, where.get(r, namespace), names.get(r, "")), grants)
    }


def test_a_learners_lab_and_gaudi_namespace_bind_her_identity_and_leave_the_shared_lab_alone():
    """security.md's recipe: alice's lab in `alice` (manifests/lab there), her Gaudi jobs in `alice-gaudi` bound to her
    lab's ServiceAccount, applied after the shared lab. She may do exactly what the kit calls in both, the shared
    lab's identity nothing in hers, and the shared lab still lists nodes (its cluster-wide binding is not replaced)."""
    alice = "system:serviceaccount:alice:labkit"
    shared = m.render_all(m.JobSpec(), m.LAB_KIND)
    lab = m.render_all(m.JobSpec(namespace="alice"), m.LAB_KIND)
    gaudi = m.render_all(m.JobSpec(accelerator="gaudi", namespace="alice-gaudi", lab_namespace="alice"))
    grants = load_bindings(docs=applied(shared, lab, [o for o in gaudi if o["kind"] not in m.JOB_KINDS]))
    kit_calls = {(g, r, v) for (g, r), verbs in KIT_CALLS.items() for v in verbs}
    for namespace in ("alice", "alice-gaudi"):
        assert granted(grants, alice, namespace) == kit_calls | {("", "nodes", "list")}
        assert granted(grants, SERVICE_ACCOUNT, namespace) == {("", "nodes", "list")}
    assert granted(grants, SERVICE_ACCOUNT, "workloads") == kit_calls | {("", "nodes", "list")}
    assert granted(grants, alice, "workloads") == {("", "nodes", "list")}
    lab_pod = next(o for o in lab if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert lab_pod["serviceAccountName"] == "labkit"  # alice's lab runs as the identity bound above
    m.validate_objects(lab)


def test_a_lab_namespace_is_for_gaudi_and_a_lab_is_never_gaudi():
    with pytest.raises(ConfigError, match="^lab_namespace: "):
        m.render_all(m.JobSpec(namespace="alice", lab_namespace="bob"))
    with pytest.raises(ConfigError, match="^accelerator: the lab never runs in a Gaudi"):
        m.render_all(m.JobSpec(accelerator="gaudi"), m.LAB_KIND)
    with pytest.raises(ConfigError, match="^lab_namespace: 'Bob' is not a DNS-1123 label"):
        m.render_all(m.JobSpec(accelerator="gaudi", lab_namespace="Bob"))


def test_a_namespace_set_up_starts_no_job(capsys):
    """Setting a namespace up (the documented admin step) must leave nothing running: an MPIJob there would hold its
    workers (GPUs on nvidia) and take chapter 03's default name, so the learner's first run would fail."""
    setups = [["--no-job"], ["--no-job", "--accelerator", "gaudi"], ["--no-job", "--kind", "trainjob"]]
    for argv in [*setups, ["--kind", "lab", "--namespace", "alice"]]:
        code, out = run_cli("manifests", "render", *argv)
        assert code == 0, argv
        kinds = {o["kind"] for o in m.load_yaml(out)}
        assert not kinds & {"MPIJob", "TrainJob"} and {"Namespace", "RoleBinding", "PersistentVolumeClaim"} <= kinds
    runtime = m.load_yaml(run_cli("manifests", "render", "--no-job", "--kind", "trainjob")[1])
    assert "TrainingRuntime" in {o["kind"] for o in runtime}  # what a --job-only TrainJob needs in place
    refused = {
        "--workers": ["--no-job", "--workers", "3"],
        "--no-hf-token": ["--kind", "lab", "--no-hf-token"],
        "--job-only": ["--no-job", "--job-only"],
        "--lab-namespace": ["--no-job", "--lab-namespace", "x"],  # a cpu lab runs in its own namespace
    }
    for flag, argv in refused.items():
        assert run_cli("manifests", "render", *argv)[0] == 2
        assert capsys.readouterr().err.startswith(f"labkit: error: {flag}: ")


@pytest.mark.parametrize("doc", ["docs/instructor.md", "docs/security.md"])
def test_each_documented_namespace_set_up_renders_no_job(doc):
    lines = re.findall(r"labkit manifests render[^`|>\n]*", (ROOT / doc).read_text())
    assert lines
    for line in lines:
        code, out = run_cli(*line.split()[1:])
        assert code == 0, line
        assert not {o["kind"] for o in m.load_yaml(out)} & {"MPIJob", "TrainJob"}, line

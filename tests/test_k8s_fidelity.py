"""The Kubernetes backend as the kit's ServiceAccount (system:serviceaccount:workloads:labkit) against a fake API
server that enforces manifests/base/rbac.yaml and behaves like the MPI Operator v0.8.2 and the API server
(tests/fake_apiserver.py, tests/fake_rbac.py cite the upstream files)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from fake_apiserver import JOBSETS, TRAINJOBS, FakeApiServer, now_iso
from fake_crd import served_schema, upstream_crd
from fake_rbac import ADMIN, ESCALATION, SERVICE_ACCOUNT, exec_verbs, load_bindings, request_attributes
from kit_testing import fake_cluster, raw, wait_until
from kubernetes.stream import ws_client

from labkit.chapters.interactive import plan_interactive_job
from labkit.cli import main
from labkit.cluster import NODES_FORBIDDEN
from labkit.errors import ConfigError, LabkitError
from labkit.jobs import Job, JobNotFound, JobNotReady, get_backend
from labkit.jobs.k8s_objects import fatal_event
from labkit.manifests import JobSpec, render_all, render_job
from labkit.manifests.checks import validate_object

MPIJOB_PATH = "/apis/kubeflow.org/v2beta1/namespaces/workloads/mpijobs"
NODES = json.loads((Path(__file__).parent / "data" / "nodes.json").read_text())["items"]  # 10 nvidia, 8 gaudi ready


@pytest.fixture
def api():
    with FakeApiServer(ready_delay=0.3, grace_s=0.3) as server:
        yield server


@pytest.fixture
def backend(api):
    return get_backend("kubernetes", kubeconfig=api.kubeconfig)


def granted_by_role() -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for _ns, rules in load_bindings()[SERVICE_ACCOUNT]
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used_by_kit(api) -> set[tuple[str, str, str]]:
    used = set()
    for method, path, query in api.requests:
        attrs = request_attributes(method, path, query)
        if attrs is not None and attrs.resource != "selfsubjectaccessreviews":
            used |= {(attrs.group, attrs.resource, verb) for verb in exec_verbs(attrs)}
    return used


def test_the_service_account_runs_every_job_command_inside_its_role(api, backend):
    assert api.identity == SERVICE_ACCOUNT
    api.nodes = NODES
    assert backend.accelerator_for("auto", 0, 1)[0] == "nvidia"  # device=auto lists nodes (the ClusterRole)
    proxy = dict(http_proxy="http://proxy.corp:3128")  # the proxy ConfigMap: created, then reused (get)
    job = backend.submit(JobSpec(name="demo", workers=2, **proxy))
    assert job.wait_ready(timeout=20).ready
    # The operator's launcher: a batch/v1 Job created after the workers were Ready, its pod without a replica-index.
    (launcher,) = [
        p for p in api.pods.values() if p["metadata"]["labels"]["training.kubeflow.org/job-role"] == "launcher"
    ]
    assert "training.kubeflow.org/replica-index" not in launcher["metadata"]["labels"]
    assert ("/apis/batch/v1", "jobs", "workloads", "demo-launcher") in api.objects
    assert job.run(["cat", "/etc/mpi/hostfile"]).output.startswith("demo-worker-0.demo.workloads.svc")
    assert job.logs() == "" and job.status().deadline is not None
    assert [s.name for s in backend.list()] == ["demo"]
    assert job.delete() is True and not api.pods
    api.scenario = "unschedulable"  # a job that cannot start: its diagnosis reads the events
    stuck = backend.submit(JobSpec(name="stuck", workers=1, **proxy))
    with pytest.raises(JobNotReady, match="FailedScheduling"):
        stuck.wait_ready(timeout=2)
    assert api.denied == []  # not one call outside the Role
    # ...and nothing in the Role that the kit does not call (TrainJobs are submitted with kubectl from the lab).
    unused = granted_by_role() - used_by_kit(api)
    # (`job list --stale --delete` lists and deletes TrainJobs: test_job_list_stale_delete_removes_finished_trainjobs;
    # `job status|delete NAME` get and delete them: test_job_status_and_delete_by_name_find_a_trainjob_too)
    assert unused == {("trainer.kubeflow.org", "trainjobs", v) for v in ("create", "get", "delete")}
    # The shared objects were not created by it (an admin applied manifests/base): it asked instead.
    created = {p for m, p, q in api.requests if m == "POST" and "dryRun" not in q}
    configmaps, secrets = "/api/v1/namespaces/workloads/configmaps", "/api/v1/namespaces/workloads/secrets"
    assert created == {MPIJOB_PATH, configmaps, secrets, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"}


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/v1/namespaces/workloads/persistentvolumeclaims/labkit-shared"),  # exists: 403 all the same
        ("GET", "/api/v1/namespaces/workloads"),
        ("GET", "/api/v1/nodes/dgx-h100-01"),  # the ClusterRole grants list only
        ("GET", "/apis/kubeflow.org/v2beta1/mpijobs"),  # every namespace
        ("GET", "/api/v1/namespaces/workloads/secrets"),
        ("GET", "/api/v1/namespaces/default/pods"),  # outside the RoleBinding's namespace
        ("GET", "/api/v1/namespaces/workloads/pods/somepod"),  # get is not granted, list/watch are
        ("POST", "/api/v1/namespaces/workloads/serviceaccounts"),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/workloads/roles/labkit"),
    ],
)
def test_the_fake_refuses_what_the_role_does_not_grant(api, method, path):
    api.objects[("/api/v1", "persistentvolumeclaims", "workloads", "labkit-shared")] = {"metadata": {}}
    code, status = raw(api, method, path, {} if method == "POST" else None)
    assert code == 403 and f'User "{SERVICE_ACCOUNT}" cannot' in status["message"]


def test_device_auto_reads_the_nodes_allocatable_with_the_node_reader_cluster_role(api, backend):
    """device=auto on the kubernetes backend (the lab pod, as the kit's ServiceAccount): the accelerator with the most
    allocatable devices on ready nodes, through manifests/base/node-reader; without it, cpu and one line saying which
    permission is missing and the fix."""
    api.nodes = NODES  # ready: 8 + 2 nvidia.com/gpu, 8 habana.ai/gaudi (6 more GPUs on a NotReady node)
    kind, workers, why = backend.accelerator_for("auto", 0, 1)
    assert (kind, workers) == ("nvidia", 2) and why.startswith("10 nvidia device(s) allocatable")
    api.nodes = [n for n in NODES if "habana.ai/gaudi" in n["status"]["allocatable"] or "cp" in n["metadata"]["name"]]
    assert backend.accelerator_for("auto", 3, 8)[:2] == ("gaudi", 3)
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="auto")
    assert plan.spec.accelerator == "gaudi" and "8 gaudi device(s)" in plan.device_reason
    assert api.denied == []
    api.grants[SERVICE_ACCOUNT] = [(ns, rules) for ns, rules in api.grants[SERVICE_ACCOUNT] if ns != "*"]  # no binding
    asked, direct = (get_backend("kubernetes", kubeconfig=api.kubeconfig) for _ in range(2))
    direct.allowed = lambda *attributes: True  # no SelfSubjectAccessReview answer: the list's own 403 says it
    for refused in (asked, direct):
        kind, _, why = refused.accelerator_for("auto", 2, 1)
        assert kind == "cpu" and why == NODES_FORBIDDEN and "\n" not in why
    assert "may not list nodes" in why and "kubectl apply -k manifests/base/node-reader" in why
    assert [(u, a.resource, a.verb) for u, a in api.denied] == [(SERVICE_ACCOUNT, "nodes", "list")]


def test_exec_needs_both_get_and_create_on_pods_exec(api, backend):
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    # The newest protocol the client offers: v5 from the kubernetes client that knows it (its ws_client names it), v4
    # before (the kit's floor, kubernetes 30, offers only v4 and exec works the same there).
    newest = "v5.channel.k8s.io" if hasattr(ws_client, "V5_CHANNEL_PROTOCOL") else "v4.channel.k8s.io"
    assert job.exec(["true"], on_output=None) == 0 and api.exec_protocols == [newest]
    for rule in api.grants[SERVICE_ACCOUNT][0][1]:
        if rule["resources"] == ["pods/exec"]:
            rule["verbs"] = ["get"]  # a Role written for clusters before 1.35
    with pytest.raises(Exception, match="403|Forbidden"):
        job.exec(["true"], on_output=None)


def test_a_refused_call_says_which_refusal_and_its_fix(api, backend, capsys):
    """403 (RBAC: the message names the verb and resource) and 401 (the credentials: a workshop token that expired)
    are different fixes; neither is a traceback, and the token never shows."""
    backend.submit(JobSpec(name="demo", workers=1))
    for rule in api.grants[SERVICE_ACCOUNT][0][1]:
        if "mpijobs" in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    with pytest.raises(LabkitError) as err:
        backend.delete("demo", kind="MPIJob")
    refusal = str(err.value)
    assert 'cannot delete resource "mpijobs"' in refusal and "kubectl auth can-i --list -n workloads" in refusal
    expired = Path(api.kubeconfig).with_name("expired-kubeconfig")
    expired.write_text(Path(api.kubeconfig).read_text().replace(api.token, "expired"))
    assert main(["job", "list", "--backend", "kubernetes", "--kubeconfig", str(expired)]) == 2
    said = capsys.readouterr().err
    assert "refused your credentials (401)" in said and "get a fresh kubeconfig" in said and api.token not in said


def test_events_that_are_not_readable_are_said_not_swallowed():
    with fake_cluster(scenario="unschedulable", ready_delay=0.2) as (api, backend):
        rules = api.grants[SERVICE_ACCOUNT][0][1]
        rules[:] = [r for r in rules if r["resources"] != ["events"]]
        with pytest.raises(JobNotReady) as err:
            backend.submit(JobSpec(name="big")).wait_ready(timeout=2)
        assert "events not readable" in str(err.value) and "cannot list resource" in str(err.value)


def test_a_worker_never_ready_fails_within_the_timeout_with_the_scheduler_message_and_deletes_the_job():
    with fake_cluster(scenario="unschedulable", ready_delay=0.2, grace_s=0.2) as (api, backend):
        job = backend.submit(JobSpec(name="big", accelerator="nvidia", slots_per_worker=8))
        time.sleep(0.5)
        st = job.status()  # no launcher Job: the operator's deadline is not running at all
        assert st.deadline is None and "no deadline yet" in st.message
        start = time.monotonic()
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=3)
        assert time.monotonic() - start < 6
        text = str(err.value)
        assert "FailedScheduling" in text and "0/1 nodes are available: 1 Insufficient nvidia.com/gpu" in text
        assert "was deleted, so it holds no accelerators" in text
        assert wait_until(lambda: not api.pods and not api.objects, timeout=5)  # workers gone: GPUs freed


def test_job_submit_wait_that_times_out_deletes_the_job_and_the_remaining_time_is_the_launcher_jobs(api, backend):
    import subprocess
    import sys

    cli = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())", "job", "submit"]
    base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig, "--accelerator", "nvidia", "--slots", "8"]
    api.scenario = "unschedulable"
    out = subprocess.run([*cli, "--name", "big", "--wait", "3", *base], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "FailedScheduling" in out.stderr and "holds no accelerators" in out.stderr
    assert wait_until(lambda: not api.pods and not api.objects, timeout=5) and api.denied == []
    api.scenario = "ready"  # a started job: the deadline counts from the launcher Job's start, not the MPIJob's
    job = backend.submit(JobSpec(name="demo", workers=1, deadline_seconds=3600))
    job.wait_ready(timeout=20)
    launcher = api.objects[("/apis/batch/v1", "jobs", "workloads", "demo-launcher")]
    launcher["status"]["startTime"] = now_iso(time.time() - 600)
    (mpijob,) = [o for o in api.objects.values() if o.get("kind") == "MPIJob"]
    mpijob["metadata"]["creationTimestamp"] = now_iso(time.time() - 3000)
    assert 2990 <= job.status().remaining_s <= 3000


def test_pod_security_baseline_refusal_reaches_the_user_and_the_job_is_deleted():
    # Gaudi's own namespace (workloads-gaudi), already there at a level an admin set too strict for hostIPC.
    with fake_cluster(ready_delay=0.2, identity=ADMIN, namespaces=("default", "workloads-gaudi")) as (api, backend):
        api.namespace_labels["workloads-gaudi"] = {"pod-security.kubernetes.io/enforce": "baseline"}
        job = backend.submit(JobSpec(name="hpu", accelerator="gaudi", slots_per_worker=8))  # accepted, no pods
        start = time.monotonic()
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=60)
        assert time.monotonic() - start < 15  # the refusal is final: no waiting out the timeout
        text = str(err.value)  # the operator's own event for a refused worker (not the Job controller's FailedCreate)
        assert "MPIJobFailed: worker pod created failed" in text and 'violates PodSecurity "baseline:latest"' in text
        assert "hostIPC=true" in text and not api.pods
        assert not [key for key in api.objects if key[1] == "jobs"]  # a refused worker stops the sync: no launcher


def test_a_job_named_like_an_object_it_does_not_own_fails_fast_naming_it(api, backend):
    # The lab's own Service (manifests/lab/service.yaml) holds the name the operator wants for the job's Service.
    lab = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "labkit-lab", "namespace": "workloads"}}
    api.objects[("/api/v1", "services", "workloads", "labkit-lab")] = lab
    job = backend.submit(JobSpec(name="labkit-lab", workers=1))
    start = time.monotonic()
    with pytest.raises(JobNotReady) as err:
        job.wait_ready(timeout=60)
    assert time.monotonic() - start < 15  # final: the operator retries but never creates a pod
    assert 'ErrResourceExists: Resource "labkit-lab"' in str(err.value) and not api.pods
    assert api.objects[("/api/v1", "services", "workloads", "labkit-lab")] is lab  # not the kit's to delete


def test_operator_rule_violations_are_events_not_422_and_mpich_is_valid(api):
    job = render_job(JobSpec(name="mpich"))
    job["spec"]["mpiImplementation"] = "MPICH"
    validate_object(job)  # labkit accepts what the CRD and the operator accept
    bad = json.loads(json.dumps(job))
    bad["metadata"]["name"] = "two-launchers"
    bad["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] = 2
    code, _ = raw(api, "POST", MPIJOB_PATH, bad)
    assert code == 201  # the API server accepts it: the operator has no admission webhook
    assert wait_until(lambda: any(e["reason"] == "ValidationError" for e in api.events), timeout=5)
    (event,) = [e for e in api.events if e["reason"] == "ValidationError"]
    assert (
        event["message"]
        == "Found validation errors: spec.mpiReplicaSpecs[Launcher].replicas: Invalid value: 2: must be 1"
    )
    assert not api.pods  # ...and the controller creates nothing for it
    code, _ = raw(api, "POST", MPIJOB_PATH, job)
    assert code == 201 and wait_until(lambda: len(api.pods) == 3, timeout=5)  # MPICH: workers, then the launcher
    bad["spec"]["mpiImplementation"], bad["metadata"]["name"] = "MVAPICH", "mvapich"  # the CRD's enum: a 422
    code, reply = raw(api, "POST", MPIJOB_PATH, bad)
    assert code == 422 and 'spec.mpiImplementation: Unsupported value: "MVAPICH"' in reply["message"]
    hostfile = (api.root / "workloads" / "mpich" / "etc-mpi" / "hostfile").read_text()
    assert hostfile.splitlines()[0] == "mpich-worker-0.mpich.workloads.svc:1"  # MPICH's form, not OpenMPI's slots=


def test_a_custom_resource_is_pruned_to_its_crds_schema_and_defaulted_and_strict_refuses_unknown_fields(api):
    job = render_job(JobSpec(name="pruned"))
    del job["spec"]["slotsPerWorker"], job["spec"]["sshAuthMountPath"]  # the CRD's defaults: 1 and /root/.ssh
    job["spec"]["gangScheduling"] = True  # neither is in the CRD
    job["spec"]["mpiReplicaSpecs"]["Worker"]["spares"] = 1
    code, reply = raw(api, "POST", MPIJOB_PATH + "?fieldValidation=Strict", job)
    assert code == 400 and reply["reason"] == "BadRequest"
    assert reply["message"] == (
        'MPIJob in version "v2beta1" cannot be handled as a MPIJob: strict decoding error: '
        'unknown field "spec.gangScheduling", unknown field "spec.mpiReplicaSpecs.Worker.spares"'
    )
    code, reply = raw(api, "POST", MPIJOB_PATH + "?dryRun=All", job)  # no fieldValidation: Warn, the default
    assert code == 201 and api.warnings == [
        'unknown field "spec.gangScheduling"',
        'unknown field "spec.mpiReplicaSpecs.Worker.spares"',
    ]
    assert "gangScheduling" not in reply["spec"] and "spares" not in reply["spec"]["mpiReplicaSpecs"]["Worker"]
    assert (reply["spec"]["slotsPerWorker"], reply["spec"]["sshAuthMountPath"]) == (1, "/root/.ssh")
    assert reply["spec"]["runPolicy"]["suspend"] is False and not api.objects  # a dry run stores nothing
    code, _ = raw(api, "POST", MPIJOB_PATH, job)
    stored = api.objects[("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "pruned")]
    assert code == 201 and stored["spec"]["slotsPerWorker"] == 1 and "gangScheduling" not in stored["spec"]


def test_a_built_in_kind_is_decoded_to_its_fields_metadata_included_and_strict_refuses_unknown_ones(api):
    # json.go's strict unmarshal into the Go struct (fake_crd.py's docstring): the same 400 as for a custom resource,
    # but metadata is checked too (a CRD's metadata is not pruned by its schema)
    path = "/api/v1/namespaces/workloads/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "proxy", "owner": "me"}, "data": {"a": "b"}}
    code, reply = raw(api, "POST", path + "?fieldValidation=Strict", {"spec": {}} | body)
    assert code == 400 and reply["reason"] == "BadRequest"
    assert reply["message"] == (  # in the body's order, as the decoder meets them (a CRD's pruning sorts them)
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
        'unknown field "spec", unknown field "metadata.owner"'
    )
    code, reply = raw(api, "POST", path, body)  # Warn: dropped, one warning each, the rest stored
    assert code == 201 and api.warnings == ['unknown field "metadata.owner"'] and reply["data"] == {"a": "b"}
    assert "owner" not in api.objects[("/api/v1", "configmaps", "workloads", "proxy")]["metadata"]


def test_every_object_the_kit_creates_passes_strict_decoding_at_kubernetes_1_32(api, backend):
    with backend.submit(JobSpec(name="strict", workers=1, http_proxy="http://proxy.example:3128")):
        kinds = {obj["kind"] for obj in api.objects.values()}
    assert {"MPIJob", "ConfigMap", "Secret"} <= kinds and not api.warnings  # each sent with fieldValidation=Strict


def test_an_mpi_operator_older_than_v0_5_is_refused_at_submit_naming_the_field_and_nothing_is_created(api, backend):
    # MPI Operator v0.4.0's CRD (manifests/base/kubeflow.org_mpijobs.yaml at that tag) serves v2beta1 without these:
    # under the default fieldValidation=Warn its API server would drop launcherCreationPolicy and start the launcher
    # before the workers, with only a warning header the client never shows.
    served = served_schema(upstream_crd("mpi-operator-v0.4.0", "MPIJob"), "v2beta1")
    api.crd_schemas[("kubeflow.org", "mpijobs", "v2beta1")] = served
    before = dict(api.objects)
    with pytest.raises(ConfigError) as err:
        backend.submit(JobSpec(name="old-operator", workers=1))
    assert err.value.field == "MPIJob/old-operator spec.launcherCreationPolicy"
    assert "MPI Operator's MPIJob CRD on this cluster has no spec.launcherCreationPolicy" in err.value.problem
    assert "MPI Operator v0.5 or later" in err.value.fix
    assert api.objects == before and not api.pods and not api.warnings  # refused at the dry run: nothing made
    posts = [q for method, path, q in api.requests if method == "POST" and "accessreviews" not in path]
    assert posts and all(q.get("fieldValidation") == "Strict" for q in posts)


def test_a_suspended_mpijob_says_so_and_who_resumes_it_not_that_the_operator_may_be_down(api, backend):
    """Kueue's webhook suspends a job it manages until it admits it; the operator then makes no pods."""
    api.kueue = True
    backend.submit(JobSpec(name="queued", workers=1, queue="lab-queue"))
    stored = api.objects[("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "queued")]
    assert stored["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-queue"
    st = backend.status("queued")
    assert st.phase == "Pending" and st.message.startswith("MPIJob suspended") and not api.pods
    with pytest.raises(JobNotReady) as err:
        backend.wait_ready("queued", timeout=1)
    text = str(err.value)
    assert "MPIJob workloads/queued is suspended (spec.runPolicy.suspend: true)" in text and "get workloads" in text
    assert "MPIJobSuspended" in text and "is the MPI Operator running" not in text
    assert "stays queued: wait again" in text and "failed" not in text
    assert backend.status("queued").phase == "Pending"  # kept: it holds nothing and keeps its place in the queue


def test_a_queued_trainjob_says_who_resumes_it():
    """A TrainJob applied from the lab with a queue: Kueue's TrainJob webhook suspends it (spec.suspend) until it admits
    it, and Trainer's condition then says only "TrainJob is suspended": `job status` read that as an unexplained
    Pending. It now names the queue's step and the patch, as for a suspended MPIJob; a finished one keeps its words."""
    with fake_cluster(trainer_version="2.2.0") as (api, backend):
        api.kueue = True
        job = render_job(JobSpec(name="queued-tj", queue="lab-queue"), "trainjob")
        code, stored = raw(api, "POST", f"{TRAINJOBS}/namespaces/workloads/trainjobs", job)  # as the lab, kubectl apply
        assert code == 201 and stored["spec"]["suspend"] is True, stored
        assert stored["spec"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-queue"  # what its pods get
        st = backend.status("queued-tj", kind="TrainJob")
        assert (st.kind, st.phase) == ("TrainJob", "Pending"), st
        assert "TrainJob workloads/queued-tj is suspended (spec.suspend: true)" in st.message, st.message
        assert (
            "get workloads" in st.message
            and """patch trainjob queued-tj --type merge -p '{"spec":{"suspend":false}}'""" in st.message
        )
        assert [c["message"] for c in api.objects[(TRAINJOBS, "trainjobs", "workloads", "queued-tj")]["status"]
                ["conditions"]] == ["TrainJob is suspended"]  # Trainer's own words, which the kit explains  # fmt: skip
        api.trainer_resume("workloads", "queued-tj")  # Kueue admits it
        st = backend.status("queued-tj", kind="TrainJob")
        assert (st.phase, st.message) == ("Pending", "0 of 0 active child Job(s) ready"), st  # no word of a queue
        assert st.deadline is None  # the kit's TrainJob sets no activeDeadlineSeconds unless asked
        api.trainjob_finished("workloads", "queued-tj")
        st = backend.status("queued-tj", kind="TrainJob")
        assert (st.phase, st.message) == ("Succeeded", "jobset completed successfully")  # a finished one: its words


def test_a_trainjob_owns_its_jobset_and_says_which_job_failed(capsys):
    """What Trainer's controller makes of a TrainJob applied from the lab (v2.3.0, simulated by the fake from its
    source): a JobSet of its name owned with blockOwnerDeletion, so a foreground delete waits for it; no condition
    until it ends; a deadline in Trainer's words; a failure says which of its Jobs failed first, in the JobSet's words,
    which `job status` shows."""
    with fake_cluster(trainer_version="2.2.0", grace_s=0.1) as (api, backend):
        job = render_job(JobSpec(name="tj", trainjob_deadline=True, deadline_seconds=600), "trainjob")
        assert raw(api, "POST", f"{TRAINJOBS}/namespaces/workloads/trainjobs", job)[0] == 201
        jobset = api.objects[(JOBSETS, "jobsets", "workloads", "tj")]
        (owner,) = jobset["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"], owner["blockOwnerDeletion"]) == (
            "TrainJob", "tj", True, True
        )  # fmt: skip
        st = backend.status("tj", kind="TrainJob")
        assert (st.phase, st.message) == ("Pending", "0 of 0 active child Job(s) ready"), st
        assert st.deadline == pytest.approx(st.created + 600)  # counted from creation: it was never suspended
        late = render_job(JobSpec(name="late", trainjob_deadline=True, deadline_seconds=60), "trainjob")
        assert raw(api, "POST", f"{TRAINJOBS}/namespaces/workloads/trainjobs", late)[0] == 201
        api.trainjob_deadline("workloads", "late")
        st = backend.status("late", kind="TrainJob")
        assert (st.phase, st.message) == ("DeadlineExceeded", "TrainJob exceeded its active deadline"), st
        assert (JOBSETS, "jobsets", "workloads", "late") not in api.objects  # deleted
        api.trainjob_finished("workloads", "tj", failed_job="tj-node-0")
        kit = ["--kind", "TrainJob", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
        assert main(["job", "status", "tj", *kit]) == 0
        out = capsys.readouterr().out
        assert "Failed" in out and "jobset failed due to one or more job failures (first failed job: tj-node-0)" in out
        assert main(["job", "delete", "tj", *kit]) == 0
        assert wait_until(lambda: not any(k[3] == "tj" or k[3].startswith("tj-") for k in api.objects), timeout=5), [
            k for k in api.objects if "tj" in k[3]
        ]  # the TrainJob, its JobSet and its runtime snapshot: the garbage collector's


def test_a_deadline_under_clean_pod_policy_none_leaves_the_workers_for_list_stale(api, backend):
    job = render_job(JobSpec(name="keep", workers=2))
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "None"  # the CRD's default (the kit's manifests say Running)
    assert raw(api, "POST", MPIJOB_PATH, job)[0] == 201
    backend.wait_ready("keep", timeout=20)
    api.expire_deadline("workloads", "keep")
    workers = sorted(name for _, name in api.pods)
    assert workers == ["keep-worker-0", "keep-worker-1"]  # still holding their devices
    (st,) = backend.list()
    assert st.phase == "DeadlineExceeded" and st.past_deadline  # what `list --stale` flags
    assert backend.delete("keep") is True and not api.pods


def test_deadline_and_ttl_act_on_the_launcher_job_only_so_a_finished_name_stays_taken(api, backend):
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    api.expire_deadline("workloads", "demo")
    assert job.status().phase == "DeadlineExceeded"
    assert wait_until(lambda: not api.pods, timeout=10)  # cleanPodPolicy Running: the workers go in their grace period
    api.expire_ttl("workloads", "demo")  # ttlSecondsAfterFinished deletes the Job, not the MPIJob
    assert [(s.name, s.phase, s.deadline) for s in backend.list()] == [("demo", "DeadlineExceeded", None)]
    with pytest.raises(ConfigError, match="already exists"):
        backend.submit(JobSpec(name="demo", workers=1))
    assert job.delete() is True and backend.list() == []


def test_a_job_ended_by_its_deadline_under_an_operator_before_v0_8_2_is_not_shown_running():
    """MPI Operator v0.5.0-v0.8.1 leave Failed=True and, set again after it, Running=True: the job is finished (and
    `list --stale` finds it) before and after the TTL takes its launcher Job."""
    with fake_cluster(operator_release="v0.8.0", ready_delay=0.3, grace_s=0.3) as (api, backend):
        job = backend.submit(JobSpec(name="demo", workers=1))
        job.wait_ready(timeout=20)
        api.expire_deadline("workloads", "demo")
        conditions = api._job("workloads", "demo")["status"]["conditions"]
        assert [(c["type"], c["status"]) for c in conditions][-2:] == [("Failed", "True"), ("Running", "True")]
        assert job.status().phase == "DeadlineExceeded"
        api.expire_ttl("workloads", "demo")  # no launcher Job left to read the deadline from
        (stale,) = backend.list()
        assert (stale.phase, stale.name) == ("DeadlineExceeded", "demo")


def test_a_deadline_during_an_exec_ends_it_and_says_it_was_the_deadline(api, backend):
    """The Job controller's FailureTarget deletes the launcher pod (the exec'd training dies with it) before the
    operator marks the MPIJob Failed: the exec names the deadline and the job shows DeadlineExceeded meanwhile."""
    job = backend.submit(JobSpec(name="demo", workers=1, deadline_seconds=600))
    job.wait_ready(timeout=20)
    timer = threading.Timer(1.0, lambda: api.expire_deadline("workloads", "demo", settle=False))
    timer.start()
    try:
        result = job.run(["sleep", "60"])
    finally:
        timer.cancel()
    assert result.returncode == 137 and result.duration_s < 15  # SIGKILLed with its container, not after 60 s
    assert result.failure == "stopped by its deadline after 10 min"
    conditions = api._job("workloads", "demo")["status"]["conditions"]
    assert not any(c["type"] == "Failed" for c in conditions)  # the operator has not seen the Job's Failed yet
    status = job.status()
    assert status.phase == "DeadlineExceeded" and status.past_deadline and not status.ready
    api.settle_deadline("workloads", "demo")
    assert job.status().phase == "DeadlineExceeded"
    assert wait_until(lambda: not api.pods, timeout=10)  # cleanPodPolicy Running: the workers go in their grace period


def test_an_exec_whose_job_is_deleted_meanwhile_says_so(api, backend):
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    pidfiles = set(Path("/tmp").glob("labkit-exec-*.pid"))
    timer = threading.Timer(1.0, lambda: get_backend("kubernetes", kubeconfig=api.kubeconfig).delete("demo"))
    timer.start()  # another process (`labkit job delete demo`) while the exec runs
    try:
        result = job.run(["sleep", "60"])
    finally:
        timer.join()
    assert result.returncode == 137 and result.duration_s < 15
    assert result.failure == "stopped: MPIJob workloads/demo was deleted while it ran"
    # its pidfile was in the killed pod's /tmp: gone with the pod (here this host's /tmp, where it would pile up)
    # (no new one left: other runs on this machine may add or remove theirs meanwhile)
    assert set(Path("/tmp").glob("labkit-exec-*.pid")) <= pidfiles


def exec_while_the_launcher_pod_goes(api, backend):
    """An exec whose launcher pod is deleted (or evicted) a second in, the MPIJob staying: (its ExecResult, the pod)."""
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    launcher = next(name for _, name in api.pods if "launcher" in name)
    timer = threading.Timer(1.0, lambda: api.delete_job_pods("workloads", "demo", ("launcher",)))
    timer.start()
    try:
        return job.run(["sh", "-c", "echo started; sleep 60"]), launcher
    finally:
        timer.join()


def test_an_exec_whose_launcher_pod_is_evicted_says_so(api, backend):
    result, launcher = exec_while_the_launcher_pod_goes(api, backend)
    assert result.returncode == 137
    assert (
        result.failure
        == f"launcher pod {launcher} was deleted or evicted while it ran (kubectl get events -n workloads)"
    )


def test_deleting_a_pod_ends_every_process_exec_d_into_it(api, backend):
    # EXEC_SCRIPT runs the command under setsid, outside the exec's own process group: it must go with the pod too
    exec_while_the_launcher_pod_goes(api, backend)
    assert wait_until(lambda: not api.exec_tag_pids(), timeout=10), api.exec_tag_pids()


def test_a_deleted_pod_stays_terminating_with_its_exec_running_until_its_grace_period_ends(api, backend):
    """Graceful deletion as the API server and the kubelet do it (fake_apiserver.delete_pod cites them): the pod is
    still listed, Running, with a deletionTimestamp; the command exec'd into it runs on (`sleep infinity` as PID 1
    ignores SIGTERM) and dies with the pod when the grace period ends."""
    api.grace_s = 3
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    launcher = next(name for _, name in api.pods if "launcher" in name)
    results = []
    running = threading.Thread(target=lambda: results.append(job.run(["sleep", "60"])))
    running.start()
    try:
        assert wait_until(lambda: api.exec_tag_pids(), timeout=10)
        api.delete_job_pods("workloads", "demo", ("launcher",))
        (pod,) = backend._pods("demo", "workloads", "launcher").items  # as listed by the kit's Role
        assert pod.metadata.name == launcher and pod.metadata.deletion_timestamp and pod.status.phase == "Running"
        assert api.exec_tag_pids() and running.is_alive()  # not killed at the deletion
        assert wait_until(lambda: ("workloads", launcher) not in api.pods, timeout=15)
    finally:
        running.join(timeout=30)
    assert results[0].returncode == 137 and not api.exec_tag_pids()


def test_a_terminating_launcher_pod_is_not_ready_and_exec_refuses_it(api, backend):
    """During its grace period a deleted launcher pod still says Running and Ready: status must not count it, and an
    exec must not start there (it would die with the pod), but say why."""
    api.grace_s = 30
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    launcher = next(name for _, name in api.pods if "launcher" in name)
    api.delete_job_pods("workloads", "demo", ("launcher",))
    assert not job.status().ready
    with pytest.raises(JobNotReady, match=f"launcher pod {launcher} is terminating"):
        job.run(["true"])
    assert not api.exec_protocols  # no exec reached the dying pod


def test_delete_and_a_create_of_a_name_being_deleted_answer_as_the_api_server_does(api, backend):
    """Background DELETE of a custom resource: 200 and a Status naming it (store.go finalizeDelete); foreground: 200
    and the object with its deletionTimestamp; a create meanwhile: 409 AlreadyExists, "object is being deleted"."""
    api.grace_s = 30
    body = render_job(JobSpec(name="demo", workers=1))
    assert raw(api, "POST", MPIJOB_PATH, body)[0] == 201
    code, reply = raw(api, "DELETE", f"{MPIJOB_PATH}/demo", {"propagationPolicy": "Foreground"})
    assert code == 200 and reply["kind"] == "MPIJob" and reply["metadata"]["deletionTimestamp"]
    code, reply = raw(api, "POST", MPIJOB_PATH, body)
    assert (code, reply["reason"]) == (409, "AlreadyExists")
    assert reply["message"] == 'object is being deleted: mpijobs.kubeflow.org "demo" already exists'
    assert reply["details"] == {"name": "demo", "group": "kubeflow.org", "kind": "mpijobs"}
    other = render_job(JobSpec(name="other", workers=1))
    assert raw(api, "POST", MPIJOB_PATH, other)[0] == 201
    code, reply = raw(api, "DELETE", f"{MPIJOB_PATH}/other", {})
    assert code == 200 and reply["status"] == "Success"
    assert reply["details"] == {"name": "other", "group": "kubeflow.org", "kind": "mpijobs", "uid": "uid-other"}


def test_a_create_answers_the_object_as_stored_before_the_operator_writes_its_status(api):
    """Both CRDs serve the status subresource, so a create drops any status and sets generation 1
    (apiextensions-apiserver pkg/registry/customresource/strategy.go, PrepareForCreate); the reply is that object:
    the operator's conditions come later, through /status, and only a later GET shows them."""
    body = {**render_job(JobSpec(name="demo", workers=1)), "status": {"conditions": [{"type": "Succeeded"}]}}
    code, created = raw(api, "POST", MPIJOB_PATH, body)
    assert code == 201 and "status" not in created and created["metadata"]["generation"] == 1
    code, stored = raw(api, "GET", f"{MPIJOB_PATH}/demo")
    assert [c["type"] for c in stored["status"]["conditions"]][0] == "Created"
    assert not any(c["type"] == "Succeeded" for c in stored["status"]["conditions"])


def test_a_rank_failing_in_a_kubernetes_exec_is_named_in_one_line(api, backend, tmp_path):
    """The same one-line diagnosis as a local exec: the rank, its error (from the exec's own output)."""
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    mpirun = tmp_path / "mpirun"  # a stand-in launcher whose rank 1 reports its error the way kit ranks do
    mpirun.write_text("#!/bin/sh\necho 'LABKIT_RANK_ERROR rank=1 RuntimeError: CUDA out of memory' >&2\nexit 3\n")
    mpirun.chmod(0o755)
    result = job.run([str(mpirun), "-n", "2", "python", "train.py"])
    assert result.returncode != 0
    assert result.failure.startswith("rank 1 failed") and "CUDA out of memory" in result.failure, result.output
    plain = job.run(["sh", "-c", "exit 4"])  # a command that starts no ranks: its exit code, no diagnosis
    assert plain.returncode == 4 and plain.failure == ""


def test_a_rank_killed_in_a_pod_that_stays_is_diagnosed_without_waiting_for_a_deadline(api, backend, tmp_path):
    """SIGKILL with the launcher pod still running (the OOM killer, not the deadline or a deletion, which take the
    pod): the exec reads the launcher Job once, not for the 3 s the Job controller may take to record a deadline."""
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    mpirun = tmp_path / "mpirun"
    mpirun.write_text("#!/bin/sh\necho 'LABKIT_RANK_ERROR rank=0 MemoryError' >&2\nkill -KILL $$\n")
    mpirun.chmod(0o755)
    before = len(api.requests)
    result = job.run([str(mpirun), "-n", "2", "python", "train.py"])
    launcher_reads = [path for _, path, _ in api.requests[before:] if path.endswith("/jobs/demo-launcher")]
    assert result.returncode == 137 and result.failure.startswith("rank 0 failed"), result.output
    assert len(launcher_reads) == 1 and api.pods  # the pod stayed


def test_foreground_deletion_keeps_the_job_until_its_pods_are_gone(api, backend):
    api.grace_s = 1.5  # the launcher's `sleep infinity` ignores SIGTERM: it takes its whole grace period
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    start = time.monotonic()
    deleting = threading.Thread(target=lambda: job.delete())
    deleting.start()
    assert wait_until(lambda: api.delete_bodies, timeout=5)
    assert job.status().phase == "Terminating"  # still there, with a deletionTimestamp, while its pods stop
    deleting.join(timeout=30)
    assert time.monotonic() - start >= 1.4  # delete() returned only once the MPIJob was really gone
    assert api.delete_bodies[-1] == {"propagationPolicy": "Foreground"} and not api.pods and backend.list() == []


@pytest.mark.parametrize("accelerator", ["cpu", "nvidia", "gaudi"])
@pytest.mark.parametrize("kind", ["interactive", "batch"])
def test_each_overlay_namespace_allows_its_own_pods(accelerator, kind):
    """The namespace's Pod Security level (the fake applies it as admission does) admits every pod of the overlay."""
    objects = render_all(JobSpec(accelerator=accelerator), kind)
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert level == ("privileged" if accelerator == "gaudi" else "restricted")  # only Gaudi needs more than restricted
    with FakeApiServer() as api:
        api.namespace_labels["workloads"] = namespace["metadata"]["labels"]
        job = next(o for o in objects if o["kind"] == "MPIJob")
        for replica in job["spec"]["mpiReplicaSpecs"].values():
            assert api._pod_security_violation("workloads", replica["template"]["spec"]) is None
        if accelerator == "gaudi":  # ...and baseline would refuse them, which is why
            api.namespace_labels["workloads"] = {"pod-security.kubernetes.io/enforce": "baseline"}
            worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
            assert "hostIPC=true" in api._pod_security_violation("workloads", worker)[1]


def test_job_list_stale_delete_removes_finished_jobs_only(api, backend):
    import subprocess
    import sys

    for name in ("done", "live"):
        job = backend.submit(JobSpec(name=name, workers=1))
        job.wait_ready(timeout=20)
    api.expire_deadline("workloads", "done")
    api.expire_ttl("workloads", "done")  # what the operator's TTL does: the MPIJob stays
    cli = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())", "job", "list"]
    base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
    out = subprocess.run([*cli, "--stale", "--delete", *base], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "deleted MPIJob workloads/done (DeadlineExceeded)" in out.stdout and "live" not in out.stdout
    assert [s.name for s in backend.list()] == ["live"] and api.denied == []
    refused = subprocess.run([*cli, "--delete", *base], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--stale --delete" in refused.stderr


def test_proxy_settings_reach_every_pod_from_one_configmap(api, backend):
    spec = JobSpec(name="px", workers=1, http_proxy="http://proxy.corp:3128", no_proxy="10.0.0.0/8")
    objects = render_all(spec)
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmap["data"]["HTTPS_PROXY"] == configmap["data"]["https_proxy"] == "http://proxy.corp:3128"
    assert configmap["data"]["NO_PROXY"] == "10.0.0.0/8,localhost,127.0.0.1,.svc,.cluster.local"
    job = next(o for o in objects if o["kind"] == "MPIJob")
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            assert {"configMapRef": {"name": "labkit-proxy"}} in container["envFrom"]
            assert "proxy" not in str(container.get("env", [])).lower()  # one source: the ConfigMap
    trainjob_objects = render_all(JobSpec(accelerator="gaudi", http_proxy="http://proxy.corp:3128"), "trainjob")
    trainer = next(o for o in trainjob_objects if o["kind"] == "TrainJob")["spec"]["trainer"]
    assert {e["name"] for e in trainer["env"]} >= {"HTTP_PROXY", "NO_PROXY", "https_proxy"}
    runtime = next(o for o in trainjob_objects if o["kind"] == "TrainingRuntime")
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        assert rjob["template"]["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]
    # Submitted as the ServiceAccount: created once, reused by the next job with the same settings, refused otherwise.
    backend.submit(spec)
    backend.submit(JobSpec(name="px2", workers=1, http_proxy="http://proxy.corp:3128", no_proxy="10.0.0.0/8"))
    assert api.objects[("/api/v1", "configmaps", "workloads", "labkit-proxy")]["data"] == configmap["data"]
    with pytest.raises(ConfigError) as err:
        backend.submit(JobSpec(name="px3", workers=1, http_proxy="http://other:8080"))
    assert err.value.field == "http_proxy" and "holds other proxy settings" in str(err.value)
    assert api.denied == []
    with pytest.raises(ConfigError, match="^http_proxy: a URL with credentials"):
        JobSpec(http_proxy="http://user:pw@proxy:3128").validate()
    with pytest.raises(ConfigError) as err:  # notebook 03's parameters: named as the notebook names them
        plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cpu", no_proxy="a b")
    assert err.value.field == "no_proxy"
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cpu", https_proxy="http://p:1")
    assert plan.spec.https_proxy == "http://p:1" and any(o["kind"] == "ConfigMap" for o in plan.objects)


def test_a_job_that_never_started_is_flagged_stale_once_its_deadline_would_have_passed():
    """A kubectl-applied MPIJob whose worker is never Ready has no launcher Job, so the operator's deadline never runs
    while the scheduled workers hold accelerators. Past its activeDeadlineSeconds since creation, `list` flags it (and
    `job list --stale --delete` removes it)."""
    with fake_cluster(scenario="unschedulable", ready_delay=0.2, grace_s=0.2) as (api, backend):
        backend.submit(JobSpec(name="stuck", accelerator="nvidia", slots_per_worker=8, deadline_seconds=60))
        (fresh,) = backend.list()
        assert fresh.deadline is None and not fresh.past_deadline and "no deadline yet" in fresh.message
        (job,) = [o for o in api.objects.values() if o.get("kind") == "MPIJob"]
        job["metadata"]["creationTimestamp"] = now_iso(time.time() - 61)  # as if created a minute ago
        (late,) = backend.list()
        assert late.phase == "Pending" and late.past_deadline and "never started within its deadline" in late.message
        assert backend.delete("stuck") and wait_until(lambda: not api.objects, timeout=5)


# What a reason comes with (kubeflow/trainer v2.3.0 pkg/constants/constants.go; a Complete or Failed is the JobSet's
# condition copied, kubernetes-sigs/jobset v0.12.0 pkg/controllers: the success and failure policies).
TRAINER_WORDS = {
    "AllJobsCompleted": "jobset completed successfully",
    "FailedJobs": "jobset failed due to one or more job failures (first failed job: {name}-node-0)",
    "DeadlineExceeded": "TrainJob exceeded its active deadline",
    "Suspended": "TrainJob is suspended",
    "Resumed": "TrainJob is resumed",
}


def trainjob(
    name: str, age_s: float, conditions=(), deadline_s: int | None = None, active: int = 0, ready: int | None = None
) -> dict:
    """A TrainJob as Kubeflow Trainer leaves it: the kit's overlay, then the controller's status (kubeflow/trainer
    pkg/apis/trainer/v1alpha1/trainjob_types.go: conditions Complete, Failed (reason DeadlineExceeded), Suspended)."""
    spec = JobSpec(name=name, trainjob_deadline=deadline_s is not None, deadline_seconds=deadline_s or 3600)
    obj = render_job(spec, "trainjob")
    obj["metadata"].update(creationTimestamp=now_iso(time.time() - age_s), uid=f"uid-{name}")
    conds = [
        {"type": t, "status": st, "reason": r, "message": TRAINER_WORDS.get(r, f"{t} {r}").format(name=name),
         "lastTransitionTime": now_iso(time.time() - ago)}
        for t, st, r, ago in conditions
    ]  # fmt: skip
    ready = active if ready is None else ready
    obj["status"] = {"conditions": conds, "jobsStatus": [{"name": "node", "active": active, "ready": ready}]}
    return obj


def test_job_list_stale_delete_removes_finished_trainjobs():
    """TrainJobs (created from the lab with kubectl) have no TTL either: `job list --stale --delete` removes those
    Trainer marked finished (Complete, Failed; DeadlineExceeded) and those past spec.activeDeadlineSeconds (from
    creation, or from the last resume; never while suspended), as the ServiceAccount, and keeps the rest."""
    import subprocess
    import sys

    with fake_cluster(trainer_version="2.2.0", grace_s=1) as (api, backend):  # grace: the JobSets' going
        jobs = [
            trainjob("done", 900, [("Complete", "True", "AllJobsCompleted", 60)]),
            trainjob("crashed", 900, [("Failed", "True", "FailedJobs", 60)]),
            trainjob("timed-out", 900, [("Failed", "True", "DeadlineExceeded", 60)], deadline_s=600),
            trainjob("overdue", 900, deadline_s=600, active=2),  # Trainer's controller did not act: flagged
            trainjob("resumed", 900, [("Suspended", "False", "Resumed", 30)], deadline_s=600, active=2),
            trainjob("suspended", 900, [("Suspended", "True", "Suspended", 800)], deadline_s=600),
            trainjob("running", 900, active=2),
        ]
        for obj in jobs:
            api.objects[(TRAINJOBS, "trainjobs", "workloads", obj["metadata"]["name"])] = obj
        listed = {st.name: st for st in backend.list()}
        assert {n: (st.kind, st.phase) for n, st in listed.items()} == {
            "done": ("TrainJob", "Succeeded"), "crashed": ("TrainJob", "Failed"),
            "timed-out": ("TrainJob", "DeadlineExceeded"), "overdue": ("TrainJob", "Running"),
            "resumed": ("TrainJob", "Running"), "suspended": ("TrainJob", "Pending"),
            "running": ("TrainJob", "Running"),
        }  # fmt: skip
        overdue = listed["overdue"]
        assert overdue.past_deadline and (overdue.workers, overdue.slots_per_worker) == (2, 1)
        assert listed["resumed"].remaining_s > 500 and listed["suspended"].deadline is None
        cli = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())", "job", "list"]
        base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
        out = subprocess.run([*cli, "--stale", "--delete", *base], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for name, phase in [("done", "Succeeded"), ("crashed", "Failed"), ("timed-out", "DeadlineExceeded")]:
            assert f"deleted TrainJob workloads/{name} ({phase})" in out.stdout
        assert "deleted TrainJob workloads/overdue (Running)" in out.stdout and "PAST DEADLINE" in out.stdout
        # "deleted" once gone: foreground deletion keeps each until its JobSet went, and the kit waited for that
        assert sorted(st.name for st in backend.list()) == ["resumed", "running", "suspended"]
        assert api.denied == [] and api.delete_bodies[-1] == {"propagationPolicy": "Foreground"}
        assert {(g, r, v) for g, r, v in used_by_kit(api) if r == "trainjobs"} == {
            ("trainer.kubeflow.org", "trainjobs", "list"), ("trainer.kubeflow.org", "trainjobs", "delete"),
            ("trainer.kubeflow.org", "trainjobs", "get"),  # waiting for each to go
        }  # fmt: skip


def test_job_status_and_delete_by_name_find_a_trainjob_too(capsys):
    """`labkit job status|delete NAME` reach a TrainJob as well as an MPIJob, as the ServiceAccount (the Role's get and
    delete on trainjobs); one error when neither exists; a name both kinds hold is never guessed: --kind says which."""
    from labkit.cli import main

    with fake_cluster(trainer_version="2.2.0", ready_delay=None, grace_s=0.1) as (api, backend):
        backend.submit(JobSpec(name="both", workers=1))
        unscheduled = trainjob("waiting", 60, active=2, ready=1)  # a Job with a pending pod is active, not ready
        done = trainjob("both", 60, [("Complete", "True", "AllJobsCompleted", 5)])
        for obj in (trainjob("tj", 60, active=2), done, unscheduled):
            api.objects[(TRAINJOBS, "trainjobs", "workloads", obj["metadata"]["name"])] = obj

        def job(*argv: str) -> tuple[int, str]:
            code = main(["job", *argv, "--backend", "kubernetes", "--kubeconfig", api.kubeconfig])
            out, err = capsys.readouterr()
            return code, out + err

        code, out = job("status", "tj")
        assert code == 0 and "TrainJob" in out and "Running" in out and "2 of 2 active child Job(s) ready" in out
        code, out = job("status", "waiting")
        assert code == 0 and "Pending" in out and "1 of 2 active child Job(s) ready" in out
        code, out = job("status", "nothing")
        assert code == 2 and "no MPIJob or TrainJob named 'nothing' in namespace workloads" in out
        code, out = job("status", "both")
        assert code == 2 and "both named 'both'" in out and "--kind MPIJob or --kind TrainJob" in out
        assert "MPIJob" in job("status", "both", "--kind", "MPIJob")[1]
        assert "Succeeded" in job("status", "both", "--kind", "TrainJob")[1]
        assert job("delete", "both")[0] == 2  # not guessed: both are still there
        assert job("delete", "tj") == (0, "deleted workloads/tj\n")
        assert job("delete", "both", "--kind", "TrainJob") == (0, "deleted workloads/both\n")
        # foreground: the TrainJob stays until its JobSet is gone (grace_s here), then the MPIJob is alone
        assert wait_until(lambda: (TRAINJOBS, "trainjobs", "workloads", "both") not in api.objects, timeout=5)
        code, out = job("status", "both")  # no --kind needed now
        assert code == 0 and "MPIJob" in out
        assert job("delete", "both") == (0, "deleted workloads/both\n") and job("delete", "tj")[1].endswith("exist\n")
        assert api.denied == []
        assert {(g, r, v) for g, r, v in used_by_kit(api) if r == "trainjobs"} == {
            ("trainer.kubeflow.org", "trainjobs", "get"), ("trainer.kubeflow.org", "trainjobs", "delete")
        }  # fmt: skip


def test_a_trainjob_still_terminating_is_not_reported_deleted(monkeypatch, capsys):
    """`job delete` and `job list --stale --delete` printed "deleted" for a TrainJob the moment its DELETE was
    accepted, while foreground deletion keeps it (deletionTimestamp) until its JobSet and pods are gone (its JobSet is
    owned with blockOwnerDeletion); a submit of the same name then failed. As for an MPIJob, the kit waits
    DELETE_WAIT_S, then says it is still terminating and how to follow it; meanwhile it reads Terminating, never
    Running or past its deadline."""
    from labkit.jobs import kubernetes

    monkeypatch.setattr(kubernetes, "DELETE_WAIT_S", 1.0)
    with fake_cluster(trainer_version="2.2.0", grace_s=30) as (api, backend):
        for obj in (trainjob("slow", 900, active=2), trainjob("overdue", 900, deadline_s=600, active=2)):
            api.objects[(TRAINJOBS, "trainjobs", "workloads", obj["metadata"]["name"])] = obj
        base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
        assert main(["job", "delete", "slow", *base]) == 0
        out = capsys.readouterr().out
        assert "deleted workloads/slow" not in out and "still terminating (pods stuck?)" in out, out
        assert "`labkit job status slow --backend kubernetes -n workloads`" in out
        assert main(["job", "list", "--stale", "--delete", *base]) == 0
        out = capsys.readouterr().out
        assert "TrainJob workloads/overdue (Running): deletion started, still terminating" in out, out
        assert "deleted TrainJob" not in out
        listed = {st.name: st for st in backend.list()}
        assert {n: st.phase for n, st in listed.items()} == {"slow": "Terminating", "overdue": "Terminating"}
        assert not any(st.past_deadline for st in listed.values())


def test_logs_of_a_trainjob_come_from_its_launcher_and_exec_says_it_is_not_an_mpijob(api, backend):
    """A TrainJob's pods carry its JobSet's labels, not the operator's (kubeflow/trainer plugins/jobset; jobset
    jobset_types.go): logs read its launcher; exec, which needs a launcher that waits, names the kind instead of
    'wait_ready() first'."""
    api.objects[(TRAINJOBS, "trainjobs", "workloads", "tj")] = trainjob("tj", 60, active=2)
    labels = {"jobset.sigs.k8s.io/jobset-name": "tj", "jobset.sigs.k8s.io/replicatedjob-name": "launcher"}
    meta = {"name": "tj-launcher-0-0-abcde", "namespace": "workloads", "labels": labels}
    api.pods[("workloads", meta["name"])] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "node"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip
    api.pod_logs[meta["name"]] = "step 10 loss 1.23\n"
    assert backend.logs("tj") == "step 10 loss 1.23\n"
    with pytest.raises(JobNotReady, match="is a TrainJob: Trainer runs its command once"):
        backend.exec("tj", ["ls"])
    with pytest.raises(JobNotFound, match="no launcher pod of an MPIJob or TrainJob named 'gone'"):
        backend.logs("gone")
    assert api.denied == []


@pytest.mark.parametrize(
    ("reason", "message", "final"),
    [
        ("MPIJobFailed", 'worker pod created failed: pods "j-worker-0" is forbidden: exceeded quota: q', True),
        ("MPIJobFailed", 'launcher pod created failed: admission webhook "w" denied the request: no', True),
        ("MPIJobFailed", 'worker pod created failed: Pod "j-worker-0" is invalid: spec.containers: Required', True),
        # transient: the operator retries with backoff, and the next try may succeed
        ("MPIJobFailed", "worker pod created failed: etcdserver: request timed out", False),
        ("MPIJobFailed", 'worker pod created failed: Post "https://10.0.0.1/api": dial tcp: connection refused', False),
        ("MPIJobFailed", "MPIJob workloads/j has failed", False),  # the Failed condition's reason: the phase says it
        ("ErrResourceExists", 'Resource "j-config" of Kind "" already exists and is not managed by MPIJob', True),
        ("ValidationError", "Found validation errors: spec.mpiReplicaSpecs[Launcher].replicas: must be 1", True),
        ("FailedCreate", 'Error creating: pods "j-launcher-x" is forbidden: violates PodSecurity', True),
        ("FailedScheduling", "0/1 nodes are available", False),
    ],
)
def test_which_operator_events_are_final(reason, message, final):
    # Reasons and texts of kubeflow/mpi-operator v0.8.2 pkg/controller/mpi_job_controller.go (getOrCreateWorker,
    # getOrCreateService/ConfigMap/SSHAuthSecret, syncHandler) and the API server's refusals.
    assert fatal_event(reason, message) is final


# A namespace admin who is not cluster-admin (a workshop instructor on a shared cluster): the rules of Kubernetes' own
# `admin` ClusterRole that matter here (it may create Roles and RoleBindings, without `bind` or `escalate`), plus the
# MPI Operator's kubeflow-mpijobs-admin, but nothing of Kubeflow Trainer (not installed).
INSTRUCTOR = "instructor@example.edu"
NAMESPACE_ADMIN = [
    {"apiGroups": [""], "resources": ["pods", "pods/log", "configmaps", "secrets", "serviceaccounts",
                                      "persistentvolumeclaims", "services"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["*"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
     "verbs": ["create", "delete", "get", "list", "update"]},
    {"apiGroups": ["kubeflow.org"], "resources": ["mpijobs"], "verbs": ["*"]},
]  # fmt: skip
TRAINER_ADMIN = {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["*"]}
RBAC_PATH = "/apis/rbac.authorization.k8s.io/v1/namespaces/workloads"


def instructor_cluster(*extra_rules: dict):
    api = FakeApiServer(ready_delay=0.2, grace_s=0.2, identity=INSTRUCTOR)
    api.grants[INSTRUCTOR] = [("workloads", NAMESPACE_ADMIN + list(extra_rules))]
    return api


def test_a_namespace_admin_who_lacks_what_the_kits_role_grants_still_submits_the_job(capsys):
    """The API server refuses such a caller the lab identity's Role (an escalation), also when it exists, and its
    RoleBinding; the job needs neither (its pods get no API token), so the job goes on without them."""
    with instructor_cluster() as api:
        backend = get_backend("kubernetes", kubeconfig=api.kubeconfig)
        job = backend.submit(JobSpec(name="taught", workers=1))
        assert job.wait_ready(timeout=30).ready
        stored = {(plural, name) for _base, plural, _ns, name in api.objects}
        assert ("mpijobs", "taught") in stored and ("serviceaccounts", "labkit") in stored
        assert not stored & {("roles", "labkit"), ("rolebindings", "labkit")}
        assert len(job.notes) == 1 and "Role/labkit and RoleBinding/labkit" in job.notes[0]
        assert "not created in workloads" in job.notes[0] and "manifests/base" in job.notes[0]
        job.delete()
    with instructor_cluster() as api:  # the Role an admin applied earlier: still 403, before any 409
        role = next(o for o in render_all(JobSpec(name="x").resolved()) if o["kind"] == "Role")
        api.objects[("/apis/rbac.authorization.k8s.io/v1", "roles", "workloads", "labkit")] = role
        cluster = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
        assert main(["job", "submit", "--name", "again", *cluster]) == 0
        assert ("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "again") in api.objects
        assert "note: Role/labkit and RoleBinding/labkit" in capsys.readouterr().out  # the CLI says so too
        # By name alone the kit would also look for a TrainJob, which this identity may not read (403, also where
        # Trainer is not installed): it looks only where it may.
        assert main(["job", "list", *cluster]) == 0 and "again" in capsys.readouterr().out
        assert main(["job", "status", "again", *cluster]) == 0 and "MPIJob" in capsys.readouterr().out
        assert main(["job", "delete", "again", *cluster]) == 0
        assert not [path for path in api.objects if "mpijobs" in path] and not api.denied


def test_a_namespace_admin_who_holds_what_the_role_grants_creates_role_and_binding():
    """The binding's dry run cannot see the Role (a dry run stores nothing): 404, so it is checked when created."""
    with instructor_cluster(TRAINER_ADMIN) as api:
        job = get_backend("kubernetes", kubeconfig=api.kubeconfig).submit(JobSpec(name="taught", workers=1))
        stored = {(plural, name) for _base, plural, _ns, name in api.objects}
        assert {("roles", "labkit"), ("rolebindings", "labkit"), ("mpijobs", "taught")} <= stored
        # asked of RBAC as `networkpolicies` (the resource the create goes to): "networkpolicys" was never granted,
        # and the job went on without its default-deny policy, silently
        policies = {name for plural, name in stored if plural == "networkpolicies"}
        assert policies == {o["metadata"]["name"] for o in render_all(JobSpec(name="x").resolved())
                            if o["kind"] == "NetworkPolicy"} and "labkit-default-deny-ingress" in policies  # fmt: skip
        assert job.notes == []  # nothing left out
        job.delete()


def test_the_fake_refuses_an_escalating_role_or_binding_as_the_api_server_does():
    objs = {o["kind"]: o for o in render_all(JobSpec(name="x").resolved())}
    role, binding = objs["Role"], objs["RoleBinding"]
    with instructor_cluster() as api:
        status, body = raw(api, "POST", f"{RBAC_PATH}/roles", role)
        who = f'user "{INSTRUCTOR}" (groups=["system:authenticated"])'
        head, *missing = body["message"].splitlines()
        assert status == 403 and body["reason"] == "Forbidden"
        assert head == f'roles.rbac.authorization.k8s.io "labkit" is forbidden: {who} {ESCALATION}:'
        assert missing == ['{APIGroups:["trainer.kubeflow.org"], Resources:["trainjobs"], Verbs:["create" "get" "list" '
                           '"delete"]}']  # fmt: skip
        status, body = raw(api, "POST", f"{RBAC_PATH}/rolebindings", binding)  # its Role is not there to compare
        assert (status, body["message"]) == (404, 'roles.rbac.authorization.k8s.io "labkit" not found')
        rbac_verbs = {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate", "bind"]}
        api.grants[INSTRUCTOR].append(("workloads", [rbac_verbs]))
        assert raw(api, "POST", f"{RBAC_PATH}/roles", role)[0] == 201  # `escalate`: may grant what it lacks
        assert raw(api, "POST", f"{RBAC_PATH}/rolebindings", binding)[0] == 201  # `bind`: the Role is not compared
        assert raw(api, "POST", f"{RBAC_PATH}/roles", role)[0] == 409
    with FakeApiServer(identity=ADMIN) as api:  # system:masters: no escalation check, no look at the Role
        assert raw(api, "POST", f"{RBAC_PATH}/rolebindings", binding)[0] == 201


def test_the_lab_identity_may_submit_gaudi_jobs_under_the_gaudi_overlays_binding():
    """The lab runs as workloads:labkit (manifests/lab). The gaudi overlay moves base's Role and binding to
    workloads-gaudi, where kustomize rewrites the ServiceAccount subject to workloads-gaudi:labkit, an identity no pod
    has: the overlay binds the lab's own user name too, or the lab could never submit a Gaudi job."""
    rbac = [o for o in render_all(JobSpec(accelerator="gaudi")) if o["kind"] in ("Role", "RoleBinding")]
    spec = JobSpec(name="hpu", accelerator="gaudi", workers=1, slots_per_worker=8)
    with fake_cluster(ready_delay=0.2, namespaces=("default", "workloads", "workloads-gaudi")) as (api, backend):
        api.namespace_labels["workloads-gaudi"] = {"pod-security.kubernetes.io/enforce": "privileged"}
        assert api.identity == SERVICE_ACCOUNT == "system:serviceaccount:workloads:labkit"
        (binding,) = [o for o in rbac if o["kind"] == "RoleBinding"]
        without_user = [s for s in binding["subjects"] if s["kind"] == "ServiceAccount"]
        api.grants = load_bindings(docs=[*rbac[:-1], {**binding, "subjects": without_user}])  # the overlay before
        with pytest.raises(ConfigError, match="gaudi --namespace workloads-gaudi --lab-namespace workloads --no-job"):
            backend.submit(spec)
        api.grants = load_bindings(docs=rbac)
        get_backend("kubernetes", kubeconfig=api.kubeconfig).submit(spec)  # a new backend: no cached answers
        created = [o["metadata"]["namespace"] for o in api.objects.values() if o.get("kind") == "MPIJob"]
        assert api.denied == [] and created == ["workloads-gaudi"]


def pod_lists(api) -> int:
    return sum(1 for method, path, q in api.requests if path.endswith("/pods") and "watch" not in q and method == "GET")


def test_a_watch_whose_resource_version_fell_out_of_the_watch_cache_lists_again_and_gets_ready():
    """A busy cluster moves the watch cache's window past the version the kit listed at: its watch is answered with
    an ERROR event, Status 410 Expired (fake_apiserver._watch_pods cites cacher.go), which the client turns into
    ApiException(410) when timeout_seconds is set. The kit lists again, so the job still gets ready."""
    with fake_cluster(ready_delay=1.5, grace_s=0.2) as (api, backend):  # ready after the kit's first list
        api.watch_cache_capacity, api.busy_after_list = 2, 3
        job = backend.submit(JobSpec(name="demo", workers=1))
        assert job.wait_ready(timeout=20).ready
        assert api.expired_watches >= 1  # it did meet the 410


def test_watches_that_keep_expiring_do_not_spin_and_the_wait_still_ends_at_its_deadline():
    with fake_cluster(scenario="unschedulable", ready_delay=0.2, grace_s=0.2) as (api, backend):
        api.watch_cache_capacity, api.busy_after_list = 2, 3
        job = backend.submit(JobSpec(name="big", accelerator="nvidia", slots_per_worker=8))
        start = time.monotonic()
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=3)
        assert time.monotonic() - start < 8
        assert "FailedScheduling" in str(err.value) and "was deleted, so it holds no accelerators" in str(err.value)
        assert api.expired_watches >= 2
        # every 410 costs a list, spaced out (half a second): not a busy loop (15 lists in these 3 s without the pause)
        assert pod_lists(api) <= 8


def launcher_policy_job(api, restart_policy: str, backoff_limit: int) -> None:
    """An MPIJob made outside the kit (kubectl apply) whose launcher restartPolicy and backoffLimit are its own."""
    body = render_job(JobSpec(name="demo", workers=1))
    body["spec"]["mpiReplicaSpecs"]["Launcher"]["restartPolicy"] = restart_policy
    body["spec"]["runPolicy"]["backoffLimit"] = backoff_limit
    assert raw(api, "POST", MPIJOB_PATH, body)[0] == 201


def test_wait_and_exec_use_the_launcher_pod_the_job_controller_put_in_place_of_a_failed_one(api, backend):
    """Launcher restartPolicy Never, backoffLimit 2: a launcher container that fails leaves its pod Failed (and
    listed), and the launcher Job makes a new pod of a new name (fake_apiserver._launcher_job_sync cites
    job_controller.go). Waiting is not hopeless; the exec goes to the replacement, never into the Failed pod."""
    api.launcher_crashes = 1
    launcher_policy_job(api, "Never", 2)
    assert backend.wait_ready("demo", timeout=20).ready
    failed, running = ([n for (_, n), p in api.pods.items() if "launcher" in n and p["status"]["phase"] == phase]
                       for phase in ("Failed", "Running"))  # fmt: skip
    assert len(failed) == 1 and len(running) == 1
    assert backend.exec("demo", ["true"], on_output=None) == 0
    execs = [path for _, path, _ in api.requests if path.endswith("/exec")]
    assert execs and all(f"/pods/{running[0]}/" in path for path in execs)


def test_a_launcher_past_its_backoff_limit_fails_the_job_and_status_and_exec_say_why_in_one_line(api, backend):
    """The kit's own launcher (OnFailure, backoffLimit 0): one restart and the launcher Job fails, BackoffLimitExceeded;
    the operator mirrors it as the MPIJob's Failed condition (reason BackoffLimitExceeded/<pod reason>)."""
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)
    api.launcher_exits("workloads", "demo", 1)
    assert wait_until(lambda: job.status().phase == "Failed", timeout=10)
    st = job.status()
    assert st.message == "BackoffLimitExceeded: Job has reached the specified backoff limit" and not st.ready
    with pytest.raises(JobNotReady) as err:
        job.run(["true"])
    text = str(err.value)
    assert "\n" not in text and "is Failed: BackoffLimitExceeded" in text and "submit --wait" not in text
    assert "labkit job delete demo --backend kubernetes -n workloads" in text


def test_a_launcher_failing_with_no_retry_left_ends_the_wait_naming_the_reason_and_the_exit(api, backend):
    """restartPolicy Never, backoffLimit 0 (the kit's batch manifest): the one launcher pod fails as it starts."""
    api.launcher_crashes = 1
    launcher_policy_job(api, "Never", 0)
    with pytest.raises(JobNotReady) as err:
        backend.wait_ready("demo", timeout=20)
    first, *rest = str(err.value).splitlines()
    assert first == "MPIJob workloads/demo is Failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
    assert any("container launcher exited 1: Error" in line for line in rest)


@pytest.mark.parametrize(
    ("policy", "limit", "happened"),
    [
        ("Never", 2, " is Failed: its container launcher exited 137 (OOMKilled)"),
        ("Never", 0, " is Failed: its container launcher exited 137 (OOMKilled)"),
        ("OnFailure", 2, "'s container launcher exited 137 (OOMKilled) and was restarted (restart 1)"),
        ("OnFailure", 0, "'s container launcher exited 137 (OOMKilled) and was restarted (restart 1)"),
    ],
)
def test_an_exec_whose_launcher_container_dies_says_how_the_pod_ended(policy, limit, happened):
    """An exec running when the launcher's container itself dies (the kernel's OOM killer ends its PID 1): the runtime
    kills what was exec'd into it, the stream ends with exit 137, and the pod's status says what happened (kubelet:
    containerStatuses[].state.terminated {exitCode, reason} and phase Failed under restartPolicy Never; restartCount
    + 1 and lastState.terminated under OnFailure, where the kit's backoffLimit 0 then has the launcher Job delete the
    pod). The exec said "launcher pod ... was deleted or evicted while it ran" (or nothing at all) though nobody
    deleted anything. A real pod's grace period is 30 s (`sleep infinity` ignores SIGTERM): the fake's is 5 here."""
    with FakeApiServer(ready_delay=0.3, grace_s=5.0) as api:
        backend = get_backend("kubernetes", kubeconfig=api.kubeconfig)
        launcher_policy_job(api, policy, limit)
        job = backend.wait_ready("demo", timeout=20) and Job(backend, "demo", "workloads")
        (launcher,) = [n for (_, n), p in api.pods.items() if "launcher" in n and p["status"]["phase"] == "Running"]
        timer = threading.Timer(1.0, lambda: api.launcher_exits("workloads", "demo", 137, "OOMKilled"))
        timer.start()
        try:
            result = job.run(["sh", "-c", "echo started; sleep 60"], timeout=30)
        finally:
            timer.join()
        assert result.returncode == 137 and result.output.startswith("started")
        assert result.failure == f"launcher pod {launcher}{happened} while the command ran", result.failure

"""KubernetesBackend against tests/fake_apiserver.py: the real `kubernetes` client over a socket on 127.0.0.1
(discovery, dry run, chunked watch, exec over WebSocket with the v4 channel protocol, logs, delete)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from fake_apiserver import FakeApiServer, now_iso
from fake_rbac import ADMIN, load_bindings
from kit_testing import fake_cluster, wait_until

from labkit.chapters.interactive import plan_interactive_job, training_command
from labkit.errors import ConfigError, LabkitError
from labkit.jobs import JobNotReady, KubernetesBackend, get_backend
from labkit.manifests import JobSpec

CLI = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())"]

# what the kit tells a reader to type next, for a Kubernetes job (the CLI's default backend is local)
DELETE_DEMO = "`labkit job delete demo --backend kubernetes -n workloads`"
STATUS_SLOW, SUBMIT_WAIT = (
    "`labkit job status slow --backend kubernetes -n workloads`",
    "`labkit job submit --backend kubernetes --wait`",
)


@pytest.fixture
def api():
    with FakeApiServer(ready_delay=0.3) as server:
        yield server
        # Every command the backend exec'd in the "pod" has ended (stop() kills leftovers either way).
        assert wait_until(lambda: not server.exec_tag_pids(), timeout=10), "exec'd processes left in the pod"


@pytest.fixture
def backend(api) -> KubernetesBackend:
    return get_backend("kubernetes", kubeconfig=api.kubeconfig)


@pytest.fixture
def ready_job(api, backend):
    job = backend.submit(JobSpec(name="demo", workers=2, slots_per_worker=2))
    job.wait_ready(timeout=20)
    yield job
    job.delete()


def posts(api) -> list[tuple[str, bool]]:
    """(path, dry run) of each POST but the access reviews (questions, not creates)."""
    return [
        (path, q.get("dryRun") == "All")
        for method, path, q in api.requests
        if method == "POST" and not path.endswith("selfsubjectaccessreviews")
    ]


def test_submit_dry_runs_every_object_before_creating_any():
    with fake_cluster(identity=ADMIN) as (api, backend):  # an admin: namespace, PVC and RBAC too
        backend.submit(JobSpec(name="demo"))
        _check_dry_runs_first(api)


def _check_dry_runs_first(api):
    sent = posts(api)
    assert sent[:2] == [("/api/v1/namespaces", True), ("/api/v1/namespaces", False)]  # the namespace, if missing
    rest = sent[2:]
    dry = [p for p, is_dry in rest if is_dry]
    real = [p for p, is_dry in rest if not is_dry]
    assert dry == real and dry[-2:] == [
        "/apis/kubeflow.org/v2beta1/namespaces/workloads/mpijobs",
        "/api/v1/namespaces/workloads/secrets",  # the job's checkpoint key, owned by the job (so created after it)
    ]
    assert all(is_dry for _, is_dry in rest[: len(dry)])  # every dry run before the first create
    assert ("GET", "/apis/kubeflow.org") in [(m, p) for m, p, _ in api.requests]  # the operator check
    labels = [p["metadata"]["labels"] for p in api.pods.values()]
    # WaitForWorkersReady: the operator makes the workers first; the launcher Job comes once they are all Ready.
    assert sorted(lbl["training.kubeflow.org/job-role"] for lbl in labels) == ["worker", "worker"]


def test_each_job_gets_its_own_random_checkpoint_key_that_goes_with_it(api, backend):
    """Issue 12.3: `<job>-checkpoint`, owned by the MPIJob (the garbage collector deletes it with the job), a fresh key
    per job; a Secret of that name that exists already (planted to sign the job's checkpoints, or an earlier job's) is
    refused in the dry run, before anything is created."""
    keys = {}
    for name in ("alice", "bob"):
        backend.submit(JobSpec(name=name, workers=1))
        secret = api.objects[("/api/v1", "secrets", "workloads", f"{name}-checkpoint")]
        job = api.objects[("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", name)]
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("MPIJob", name, job["metadata"]["uid"])
        keys[name] = secret["stringData"]["key"]
        assert len(keys[name]) == 64 and int(keys[name], 16)
    assert keys["alice"] != keys["bob"]
    backend.delete("alice")
    assert ("/api/v1", "secrets", "workloads", "alice-checkpoint") not in api.objects
    planted = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "carol-checkpoint", "namespace": "workloads"}}
    api.objects[("/api/v1", "secrets", "workloads", "carol-checkpoint")] = planted
    before = len(posts(api))
    with pytest.raises(ConfigError) as exc:
        backend.submit(JobSpec(name="carol", workers=1))
    assert exc.value.field == "name" and "Secret named 'carol-checkpoint' already exists" in exc.value.problem
    assert all(dry for _, dry in posts(api)[before:])  # nothing created
    assert ("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "carol") not in api.objects


def test_wait_ready_watches_pods_until_launcher_and_workers_are_ready(api, backend):
    api.ready_delay = None  # pods stay Pending until the test advances them
    job = backend.submit(JobSpec(name="demo", workers=3))

    def watches():
        return [
            q
            for m, p, q in api.requests
            if p == "/api/v1/namespaces/workloads/pods" and q.get("watch") in ("true", "True")
        ]

    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("status", job.wait_ready(timeout=30)))
    waiter.start()
    assert wait_until(lambda: watches(), timeout=15), "wait_ready never opened a watch"
    start = time.monotonic()
    api.advance("workloads", "demo")
    waiter.join(timeout=20)
    st = result["status"]
    assert st.ready and st.phase == "Running" and st.workers == 3
    assert time.monotonic() - start < 5  # woken by the watch event, not by polling at the end of a timeout
    assert watches()[0]["labelSelector"] == "training.kubeflow.org/job-name=demo"
    assert "resourceVersion" in watches()[0]  # watched from the listing's version: no event lost in between
    job.delete()


def test_exec_streams_both_channels_and_returns_the_exit_code(ready_job):
    res = ready_job.run(["sh", "-c", "echo out; echo 'err: bad thing' >&2; exit 3"])
    assert res.returncode == 3 and "out" in res.output and "err: bad thing" in res.output
    assert ready_job.exec(["true"], on_output=None) == 0
    hostfile = ready_job.run(["cat", "/etc/mpi/hostfile"]).output.splitlines()
    assert hostfile == ["demo-worker-0.demo.workloads.svc slots=2", "demo-worker-1.demo.workloads.svc slots=2"]


def test_exec_output_arrives_while_the_command_runs(ready_job):
    arrivals: list[tuple[float, str]] = []
    start = time.monotonic()
    code = ready_job.exec(
        ["sh", "-c", "echo first; sleep 1.5; echo second"],
        on_output=lambda t: arrivals.append((time.monotonic() - start, t)),
    )
    assert code == 0
    first = next(t for t, text in arrivals if "first" in text)
    second = next(t for t, text in arrivals if "second" in text)
    assert second - first > 1.0


def test_missing_executable_returns_127_with_the_reason(ready_job):
    res = ready_job.run(["no-such-binary-xyz"])
    assert res.returncode == 127 and "no-such-binary-xyz" in res.output


def test_exec_timeout_stops_the_remote_process_group(api, ready_job):
    with pytest.raises(TimeoutError):
        ready_job.exec(["sh", "-c", "sleep 100 & sleep 100 & wait"], timeout=1, on_output=None)
    # Closing the stream alone would leave both sleeps running in the "pod": the backend killed their group.
    assert wait_until(lambda: not api.exec_tag_pids(), timeout=15), api.exec_tag_pids()


SERVE = """import signal, sys, time
sys.path.insert(0, sys.argv[1])
from fake_apiserver import FakeApiServer
api = FakeApiServer(ready_delay=0.3).start()
signal.signal(signal.SIGTERM, lambda *_: (api.stop(), sys.exit(0)))
print(api.kubeconfig, flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def api_process():
    """The fake in a process of its own, which a test may hang (SIGSTOP: it accepts connections, never answers) or
    kill; (that process, a backend on it with a job ready to exec in)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True
    )
    kubeconfig = proc.stdout.readline().strip()
    pidfiles = set(Path("/tmp").glob("labkit-exec-*.pid"))
    try:
        backend = get_backend("kubernetes", kubeconfig=kubeconfig)
        backend.submit(JobSpec(name="demo", workers=1)).wait_ready(timeout=20)
        yield proc, backend
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=30)
        tag = f"LABKIT_FAKE_APISERVER={Path(kubeconfig).parent.name}".encode()
        for pid in FakeApiServer.tagged_pids(tag):  # what a killed fake's execs left (a live one stops its own)
            os.kill(pid, signal.SIGKILL)
        for path in set(Path("/tmp").glob("labkit-exec-*.pid")) - pidfiles:  # in the pod's /tmp: gone with the pod
            path.unlink(missing_ok=True)
        shutil.rmtree(Path(kubeconfig).parent, ignore_errors=True)  # a killed fake could not remove its own folder


def exec_in_thread(backend, argv, timeout, on_output):
    """backend.exec in a thread given 60 s (an exec that hangs fails the test, not the run): its error, or None."""
    got = {}

    def run():
        try:
            backend.exec("demo", argv, timeout=timeout, on_output=on_output)
        except BaseException as exc:
            got["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "exec hung"
    return got.get("error")


def test_exec_with_a_timeout_ends_when_the_api_server_hangs_and_says_the_stop_is_unconfirmed(api_process):
    proc, backend = api_process

    def hang_the_api_server(text: str) -> None:
        if "started" in text:
            os.kill(proc.pid, signal.SIGSTOP)

    try:
        error = exec_in_thread(backend, ["sh", "-c", "echo started; sleep 100"], 3, hang_the_api_server)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert isinstance(error, TimeoutError), error
    assert "could not be confirmed" in str(error) and "demo-launcher" in str(error), error
    assert DELETE_DEMO in str(error) and "were stopped" not in str(error)


def test_exec_losing_the_api_server_names_the_job_the_pod_and_the_fix(api_process):
    proc, backend = api_process

    def kill_the_api_server(text: str) -> None:
        if "started" in text:
            os.kill(proc.pid, signal.SIGKILL)

    error = exec_in_thread(backend, ["sh", "-c", "echo started; sleep 100"], None, kill_the_api_server)
    assert type(error) is LabkitError, repr(error)
    for words in ("workloads/demo", "demo-launcher", "may still run", DELETE_DEMO):
        assert words in str(error), error


def test_exec_timeout_whose_kill_exec_fails_does_not_claim_the_command_stopped(api, backend):
    job = backend.submit(JobSpec(name="demo", workers=1))
    job.wait_ready(timeout=20)

    def refuse_new_connections(text: str) -> None:  # the open exec stream goes on; the kill exec cannot connect
        if "started" in text and api._httpd is not None:
            api._httpd.shutdown()
            api._httpd.server_close()
            api._httpd = None

    with pytest.raises(TimeoutError) as err:
        job.exec(["sh", "-c", "echo started; sleep 100"], timeout=2, on_output=refuse_new_connections)
    assert "were stopped" not in str(err.value) and "could not be confirmed" in str(err.value)
    assert DELETE_DEMO in str(err.value)
    api.kill_exec_processes()  # the kill could not run: stop the command here, as `labkit job delete` would


def test_exec_without_a_launcher_pod_says_why_in_the_job_s_words(api, backend):
    gone = subprocess.run(
        [*CLI, "job", "exec", "nosuch", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig, "--", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode != 0 and "no MPIJob named 'nosuch' in namespace workloads" in gone.stderr, gone.stderr
    assert "wait_ready" not in gone.stderr and "Traceback" not in gone.stderr
    api.ready_delay = None  # its pods never become ready
    backend.submit(JobSpec(name="slow", workers=1))
    with pytest.raises(JobNotReady) as err:
        backend.exec("slow", ["true"])
    message = str(err.value)
    assert f"({backend.status('slow').phase}" in message and "wait_ready" not in message
    assert STATUS_SLOW in message and SUBMIT_WAIT in message


def test_exec_output_is_not_kept_by_the_websocket_client():
    """kubernetes' WSClient keeps every frame in `_all` until read_all(): a day-long exec held its whole output."""
    import io

    from labkit.jobs.k8s_objects import drain_exec

    class Client:  # WSClient's reading side: read_channel(channel, timeout) and the `_all` copy of every frame
        def __init__(self):
            self._all, self.frames = io.StringIO(), {1: "a" * 1000, 2: "warning\n"}

        def read_channel(self, channel, timeout=0):
            text = self.frames.pop(channel, "")
            self._all.write(text)
            return text

    ws, seen = Client(), []
    drain_exec(ws, seen.append)
    assert seen == ["a" * 1000, "warning\n"] and ws._all.getvalue() == ""


def test_keyboard_interrupt_stops_the_remote_command(api, ready_job):
    def press_stop(text: str) -> None:
        if "started" in text:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        ready_job.exec(["sh", "-c", "sleep 100 & echo started; wait"], on_output=press_stop)
    assert wait_until(lambda: not api.exec_tag_pids(), timeout=15), api.exec_tag_pids()


def test_image_pull_error_fails_fast_with_the_pods_events():
    with fake_cluster(scenario="image_pull", ready_delay=0.2) as (api, backend):
        job = backend.submit(JobSpec(name="typo", image="ghcr.io/labkit/deepspeed-cpu:no-such-tag"))
        start = time.monotonic()
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=60)
        assert time.monotonic() - start < 15  # does not sit out the whole timeout
        text = str(err.value)
        assert "ErrImagePull" in text and 'Failed to pull image "ghcr.io/labkit/deepspeed-cpu:no-such-tag"' in text
        job.delete()


def test_a_finished_init_container_is_not_taken_for_a_dead_pod():
    """Pending with its init container terminated (exit 0, Completed) is a pod pulling its image: the kit deleted such
    jobs as hopeless ("container istio-init exited 0: Completed") within a second."""
    with fake_cluster(scenario="init_done", ready_delay=0.2) as (api, backend):
        job = backend.submit(JobSpec(name="meshed"))
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=3)
        assert "not ready after 3 s" in str(err.value) and "exited 0" not in str(err.value)
        assert backend.status("meshed").phase != "Failed"  # still there, waiting; not deleted as hopeless
        job.delete()


def test_a_submit_that_fails_after_its_mpijob_exists_takes_the_mpijob_back(monkeypatch):
    """The job's own checkpoint-key Secret comes after the MPIJob (it is owned by it): when that create fails (a 500
    after the dry run passed), the MPIJob's pods started anyway and held their devices until the deadline."""
    from kubernetes.client.exceptions import ApiException

    real = KubernetesBackend._rest

    def etcd_timeout_on_the_secret(self, method, path, *, query=(), **kwargs):
        if method == "POST" and path.endswith("/secrets") and ("dryRun", "All") not in list(query):
            err = ApiException(status=500, reason="Internal Server Error")
            err.body = '{"message": "etcdserver: request timed out"}'
            raise err
        return real(self, method, path, query=query, **kwargs)

    monkeypatch.setattr(KubernetesBackend, "_rest", etcd_timeout_on_the_secret)
    with fake_cluster(ready_delay=0.2) as (api, backend):
        with pytest.raises(LabkitError) as err:
            backend.submit(JobSpec(name="half", workers=1))
        assert "etcdserver: request timed out" in str(err.value) and "MPIJob workloads/half was deleted" in str(
            err.value
        )
        assert not [key for key in api.objects if key[1] == "mpijobs"] and not api.pods


def test_unschedulable_job_times_out_naming_the_scheduler_reason():
    with fake_cluster(scenario="unschedulable", ready_delay=0.2) as (api, backend):
        job = backend.submit(JobSpec(name="big", accelerator="nvidia", slots_per_worker=8))
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=2)
        text = str(err.value)
        assert "not ready after 2 s" in text and "Unschedulable" in text
        assert "FailedScheduling" in text and "Insufficient nvidia.com/gpu" in text
        job.delete()


@pytest.mark.parametrize(
    "served, expected",
    [
        ((), "MPIJob CRD is not installed"),
        (("v1",), "training-operator"),
    ],
)
def test_missing_operator_or_v1_clash_is_named_before_anything_is_created(served, expected):
    with fake_cluster(served_versions=served) as (api, backend):
        with pytest.raises(LabkitError, match=expected) as err:
            backend.submit(JobSpec(name="demo"))
        assert "Fix:" in str(err.value)
        assert posts(api) == []


@pytest.mark.parametrize("code", [400, 403])  # a webhook's denial: 400 unless the webhook sets its own code
def test_rejected_dry_run_creates_nothing(code):
    message = 'admission webhook "quota.labkit" denied the request: exceeded quota: nvidia.com/gpu'
    with fake_cluster(reject_dry_run=message, reject_code=code) as (api, backend):
        with pytest.raises(LabkitError, match="denied the request: exceeded quota") as err:
            backend.submit(JobSpec(name="demo"))
        if code == 400:  # the manifest is named, with where to read it
            assert isinstance(err.value, ConfigError) and err.value.field == "manifest MPIJob/demo"
        created = [path for path, is_dry in posts(api) if not is_dry]
        assert created == [] and not api.pods and not api.objects


def test_existing_job_name_is_a_config_error(backend, ready_job):
    with pytest.raises(ConfigError) as err:
        backend.submit(JobSpec(name="demo"))
    assert err.value.field == "name" and "already exists" in str(err.value)


def test_a_new_namespace_is_created_before_the_dry_runs_that_need_it():
    with fake_cluster(identity=ADMIN) as (api, backend):
        backend.submit(JobSpec(name="demo", namespace="team-c"))
        sent = posts(api)
        assert sent[:2] == [("/api/v1/namespaces", True), ("/api/v1/namespaces", False)]
        assert "team-c" in api.namespaces and any(ns == "team-c" for ns, _ in api.pods)


def test_a_namespace_outside_the_role_is_a_config_error_before_any_create(api, backend):
    with pytest.raises(ConfigError) as err:
        backend.submit(JobSpec(name="demo", namespace="team-b"))
    assert err.value.field == "namespace" and "may not create MPIJobs in namespace team-b" in str(err.value)
    # the admin's set-up for that namespace, with no job in it (the kit's own submit is what failed)
    # team-b's Role binds a lab in team-b, never this one (workloads'): no set-up of team-b would let it submit there
    assert "submit in your lab's, workloads (leave -n out), or use a lab of team-b's own" in str(err.value)
    assert not api.pods and posts(api) == [] and api.denied == []  # asked, never tried


def test_logs_status_list_and_delete(api, backend, ready_job):
    launcher = next(name for (_, name) in api.pods if "-launcher-" in name)
    api.pod_logs[launcher] = "launcher up\n"
    assert ready_job.logs() == "launcher up\n"
    st = ready_job.status()
    assert st.ready and st.phase == "Running" and (st.workers, st.slots_per_worker) == (2, 2)
    launcher_job = api.objects[("/apis/batch/v1", "jobs", "workloads", "demo-launcher")]
    started = datetime.fromisoformat(launcher_job["status"]["startTime"].replace("Z", "+00:00")).timestamp()
    assert st.deadline == started + 4 * 3600  # from the launcher Job's start, where the operator puts the deadline
    assert [s.name for s in backend.list()] == ["demo"]
    assert ready_job.delete() is True
    assert api.delete_bodies[-1]["propagationPolicy"] == "Foreground"
    assert not api.pods and backend.list() == []
    assert ready_job.delete() is False


def test_list_flags_jobs_past_their_deadline(api, backend, tmp_path):
    old = time.time() - 7200
    api.objects[("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "forgotten")] = {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {"name": "forgotten", "namespace": "workloads", "creationTimestamp": now_iso(old)},
        "spec": {"runPolicy": {"activeDeadlineSeconds": 3600}, "mpiReplicaSpecs": {"Worker": {"replicas": 1}}},
        "status": {"conditions": [{"type": "Running", "status": "True", "lastTransitionTime": now_iso(old)}]},
    }
    api.objects[("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "expired")] = {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {"name": "expired", "namespace": "workloads", "creationTimestamp": now_iso(old)},
        "spec": {"runPolicy": {"activeDeadlineSeconds": 3600}, "mpiReplicaSpecs": {"Worker": {"replicas": 1}}},
        "status": {
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": now_iso()}
            ]
        },
    }
    # The deadline counts from the operator's launcher Job (it carries activeDeadlineSeconds), not the MPIJob.
    api.objects[("/apis/batch/v1", "jobs", "workloads", "forgotten-launcher")] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "forgotten-launcher", "namespace": "workloads"},
        "spec": {"activeDeadlineSeconds": 3600},
        "status": {"startTime": now_iso(old + 600), "active": 1},
    }
    jobs = {s.name: s for s in backend.list()}
    assert jobs["forgotten"].deadline == pytest.approx(old + 600 + 3600, abs=1)
    assert jobs["forgotten"].phase == "Running" and jobs["forgotten"].past_deadline
    assert jobs["expired"].phase == "DeadlineExceeded" and jobs["expired"].past_deadline
    with pytest.raises(LabkitError, match="cannot list resource .mpijobs. .* at the cluster scope"):
        backend.list(namespace="*")  # a namespaced Role: every namespace at once is an admin's view
    admin = KubernetesBackend(kubeconfig=api.write_kubeconfig(str(tmp_path / "admin"), user=ADMIN))
    assert {s.name for s in admin.list(namespace="*")} == {"forgotten", "expired"}


def test_no_kubeconfig_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(LabkitError, match="no cluster configured"):
        KubernetesBackend().list()
    with pytest.raises(ConfigError, match="^kubeconfig:"):
        KubernetesBackend(kubeconfig=str(tmp_path / "missing")).list()


def test_wrong_token_is_refused_and_never_echoed(api, tmp_path):
    bad = tmp_path / "kubeconfig"
    api.write_kubeconfig(str(bad))
    secret = "sha256~wrong-token-value-1234567890"
    bad.write_text(bad.read_text().replace(api.token, secret))
    with pytest.raises(LabkitError) as err:
        KubernetesBackend(kubeconfig=str(bad)).list()
    assert "refused" in str(err.value) and secret not in str(err.value) and api.token not in str(err.value)


def test_cli_drives_the_kubernetes_backend(api):
    base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
    sub = subprocess.run(
        [*CLI, "job", "submit", "--name", "cli", "--wait", "30", *base], capture_output=True, text=True, timeout=120
    )
    assert sub.returncode == 0, sub.stderr
    listing = subprocess.run([*CLI, "job", "list", *base], capture_output=True, text=True, timeout=60)
    assert "cli" in listing.stdout and "Running" in listing.stdout
    run = subprocess.run(
        [*CLI, "job", "exec", "cli", *base, "--", "sh", "-c", "cat /etc/mpi/hostfile; exit 4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 4 and "cli-worker-1.cli.workloads.svc slots=1" in run.stdout
    gone = subprocess.run([*CLI, "job", "delete", "cli", *base], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0 and not api.pods
    assert api.token not in sub.stdout + sub.stderr + listing.stdout + run.stdout + run.stderr


def test_notebook_plan_on_the_kubernetes_backend_uses_the_cluster_command(api, tmp_path):
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="auto", steps=12)
    # The fake lists no nodes: auto falls back to cpu and says why.
    assert plan.spec.accelerator == "cpu" and "no GPU or Gaudi node among 0 node(s)" in plan.device_reason
    assert plan.train_argv == training_command(plan.backend, steps=12)
    assert plan.train_argv[:3] == ["deepspeed", "--hostfile", "/etc/mpi/hostfile"]
    assert "--module" in plan.train_argv and "--force_multi" in plan.train_argv
    assert posts(api) == []  # planning submits nothing
    gpu = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cuda", slots=4)
    assert gpu.spec.accelerator == "nvidia" and "nvidia.com/gpu: 4" in gpu.manifest_yaml()


@pytest.fixture
def hang_api(monkeypatch):
    """Makes every non-watch request the fake answers wait until released (a hung API server), once turned on."""
    import fake_apiserver

    release, real = threading.Event(), fake_apiserver._Handler._route

    def hung(handler, method):
        if "watch=" not in handler.path:
            release.wait(120)
        return real(handler, method)

    yield lambda: monkeypatch.setattr(fake_apiserver._Handler, "_route", hung)
    release.set()


def test_wait_ready_on_a_hung_api_server_ends_at_its_deadline(hang_api):
    """Each request got the full request timeout (30 s) and urllib3's 3 retries: `job submit --wait 15` took minutes,
    then said only that the server was unreachable."""
    with fake_cluster(scenario="unschedulable", ready_delay=0.2) as (api, backend):
        job = backend.submit(JobSpec(name="slow", workers=1))
        hang_api()
        start = time.monotonic()
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=3)
        assert time.monotonic() - start < 3 + 10  # a hang check: the deadline bounds every request
        assert "not ready after 3 s" in str(err.value)


def test_an_interrupted_wait_deletes_the_job_it_waited_for():
    """Ctrl-C while waiting left a job that never gets a launcher (so no deadline) holding its workers; running the
    cell again then failed "already exists"."""
    with fake_cluster(scenario="unschedulable", ready_delay=0.2) as (api, backend):
        job = backend.submit(JobSpec(name="stopped", workers=1))
        threading.Timer(1, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            job.wait_ready(timeout=60)
        assert wait_until(lambda: not [key for key in api.objects if key[1] == "mpijobs"], timeout=10)


def test_a_job_deleted_while_waited_for_is_reported_at_once():
    with FakeApiServer(ready_delay=0.2, scenario="unschedulable", grace_s=30) as api:
        backend = get_backend("kubernetes", kubeconfig=api.kubeconfig)
        job = backend.submit(JobSpec(name="gone", workers=1))
        other = get_backend("kubernetes", kubeconfig=api.kubeconfig)  # someone else deletes it
        body = {"propagationPolicy": "Foreground"}
        threading.Timer(1, lambda: other._kubeflow_job("DELETE", "workloads", "gone", body=body)).start()
        start = time.monotonic()
        with pytest.raises(JobNotReady) as err:
            job.wait_ready(timeout=60)
        assert time.monotonic() - start < 20  # not after its pods' 30 s grace period
        assert "MPIJob workloads/gone was deleted while waiting" in str(err.value)


def test_a_delete_whose_pods_do_not_go_says_it_is_still_terminating(monkeypatch, capsys):
    """`job delete` printed "deleted" while the job was still terminating; submitting again then said "delete it"."""
    from labkit.cli import main
    from labkit.jobs import kubernetes

    monkeypatch.setattr(kubernetes, "DELETE_WAIT_S", 1.0)
    with FakeApiServer(ready_delay=0.2, grace_s=30) as api:
        backend = get_backend("kubernetes", kubeconfig=api.kubeconfig)
        backend.submit(JobSpec(name="stuck", workers=1)).wait_ready(timeout=20)
        assert main(["job", "delete", "stuck", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig]) == 0
        out = capsys.readouterr().out
        assert "still terminating (pods stuck?)" in out
        assert "`labkit job status stuck --backend kubernetes -n " in out  # the line a reader pastes
        with pytest.raises(ConfigError) as err:
            backend.submit(JobSpec(name="stuck", workers=1))
        assert "being deleted" in str(err.value) and "labkit job status stuck" in str(err.value)


def test_a_sink_that_fails_stops_the_remote_command_and_raises_its_own_error(api, ready_job):
    """`labkit job exec demo -- CMD | head -2`: stdout closed, on_output raised BrokenPipeError (an OSError), and exec
    reported "lost its connection to the API server ... may still run" and left the command running in the pod."""

    def closed(text: str) -> None:
        if "started" in text:
            raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        ready_job.exec(["sh", "-c", "sleep 100 & echo started; wait"], on_output=closed)
    assert wait_until(lambda: not api.exec_tag_pids(), timeout=15), api.exec_tag_pids()


def test_a_second_delete_of_a_job_still_terminating_says_so_not_deleted(monkeypatch, capsys):
    """DELETE of a job being deleted answers 200 and the object again (store.go, see fake_apiserver), so delete()
    returns True: the second `job delete` must still say the job is terminating while its pods hold on."""
    from labkit.cli import main
    from labkit.jobs import kubernetes

    monkeypatch.setattr(kubernetes, "DELETE_WAIT_S", 1.0)
    with FakeApiServer(ready_delay=0.2, grace_s=30) as api:
        backend = get_backend("kubernetes", kubeconfig=api.kubeconfig)
        backend.submit(JobSpec(name="stuck", workers=1)).wait_ready(timeout=20)
        assert backend.delete("stuck") and backend.status("stuck").phase == "Terminating"
        assert main(["job", "delete", "stuck", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig]) == 0
        out = capsys.readouterr().out
        assert "still terminating (pods stuck?)" in out and "deleted workloads/stuck" not in out


def test_list_stale_delete_says_which_jobs_are_still_terminating(monkeypatch, capsys):
    """`job list --stale --delete` printed "deleted MPIJob ..." for a job whose pods had not gone (it stays listed)."""
    from labkit.cli import main
    from labkit.jobs import kubernetes

    monkeypatch.setattr(kubernetes, "DELETE_WAIT_S", 1.0)
    with FakeApiServer(ready_delay=0.2, grace_s=30) as api:
        backend = get_backend("kubernetes", kubeconfig=api.kubeconfig)
        backend.submit(JobSpec(name="stuck", workers=1)).wait_ready(timeout=20)
        api.expire_deadline("workloads", "stuck")  # finished; its workers stop over their 30 s grace period
        args = ["job", "list", "--stale", "--delete", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert backend.status("stuck").phase == "Terminating"
        assert "deleted MPIJob workloads/stuck" not in out and "still terminating" in out


@pytest.fixture
def alices_lab(monkeypatch):
    """docs/security.md's per-learner recipe: the API server as alice's lab sees it (her lab's identity, bound in alice
    and alice-gaudi only, refused in workloads), and LABKIT_NAMESPACE as manifests/lab sets it in her lab pod."""
    from labkit import manifests

    lab = manifests.render_all(JobSpec(namespace="alice"), manifests.LAB_KIND)
    gaudi = manifests.render_all(JobSpec(accelerator="gaudi", namespace="alice-gaudi", lab_namespace="alice"))
    rbac = [o for o in lab + gaudi if "Role" in o["kind"]]
    with FakeApiServer(
        identity="system:serviceaccount:alice:labkit", namespaces=("default", "alice", "alice-gaudi")
    ) as api:
        api.grants = load_bindings(docs=rbac)
        monkeypatch.setenv("LABKIT_NAMESPACE", "alice")
        yield api


def test_in_a_learners_lab_chapter_03_and_job_submit_go_to_her_namespace_by_default(alices_lab, capsys):
    """Chapter 03 at its defaults and `labkit job submit` without -n submit where her identity may (alice; Gaudi:
    alice-gaudi), not to the shared lab's workloads, where she is refused."""
    from labkit.cli import main

    api = alices_lab
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cpu", workers=1)
    assert (plan.spec.namespace, plan.backend.namespace) == ("alice", "alice")
    with plan.backend.submit(plan.spec) as job:
        job.wait_ready(20)
        assert job.run(["cat", "/etc/mpi/hostfile"]).output.count(".alice.svc") == 1
    gaudi = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="hpu", workers=1)
    assert gaudi.spec.namespace == "alice-gaudi"
    base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig, "--workers", "1"]
    assert main(["job", "submit", "--name", "cli", *base]) == 0
    assert main(["job", "submit", "--name", "hpu", "--accelerator", "gaudi", *base]) == 0
    out = capsys.readouterr().out
    assert "submitted kubernetes job alice/cli" in out and "submitted kubernetes job alice-gaudi/hpu" in out
    assert ("/apis/kubeflow.org/v2beta1", "mpijobs", "alice", "cli") in api.objects
    assert ("/apis/kubeflow.org/v2beta1", "mpijobs", "alice-gaudi", "hpu") in api.objects
    assert main(["job", "delete", "cli", *base[:4]]) == 0  # status, exec, delete: her namespace too
    assert api.denied == []


def test_in_a_learners_lab_the_librarys_job_spec_takes_her_namespace_as_the_cli_does(alices_lab):
    """labkit.jobs' own example, `get_backend("kubernetes").submit(JobSpec(name=...))`, in alice's lab goes to alice
    (Gaudi: alice-gaudi) as the CLI and chapter 03 do; it took the shared lab's workloads, where she is refused."""
    assert (JobSpec().namespace, JobSpec(accelerator="gaudi").namespace) == ("alice", "alice-gaudi")
    backend = get_backend("kubernetes", kubeconfig=alices_lab.kubeconfig)
    with backend.submit(JobSpec(name="lib", workers=1)) as job:
        assert job.namespace == "alice"
        job.wait_ready(20)
    assert ("/apis/kubeflow.org/v2beta1", "mpijobs", "alice", "lib") not in alices_lab.objects  # deleted on exit
    assert alices_lab.denied == []


def test_in_a_learners_lab_a_gaudi_job_binds_her_lab_and_never_runs_in_her_labs_namespace(alices_lab, capsys):
    """`labkit job render` in alice's lab binds her lab's identity in alice-gaudi (not the shared lab's); a Gaudi job
    asked into her lab's own (restricted) namespace is refused; a refused Gaudi namespace's set-up names her lab."""
    from labkit.cli import main

    assert main(["job", "render", "--accelerator", "gaudi"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    users = [s["name"] for d in docs if d and d["kind"] == "RoleBinding" for s in d["subjects"] if s["kind"] == "User"]
    assert users == ["system:serviceaccount:alice:labkit"]
    assert main(["job", "render", "--accelerator", "gaudi", "-n", "alice"]) == 2
    err = capsys.readouterr().err
    assert "namespace: alice is the lab's" in err and "leave it unset (alice-gaudi)" in err
    backend = get_backend("kubernetes", kubeconfig=alices_lab.kubeconfig, namespace="team-g")
    with pytest.raises(ConfigError) as refused:
        backend.submit(JobSpec(name="demo", accelerator="gaudi", namespace="team-g"))
    assert "--namespace team-g --lab-namespace alice --no-job" in str(refused.value)


def test_in_a_lab_the_admins_render_binds_the_shared_lab_and_no_cpu_job_takes_the_labs_gaudi_namespace(
    alices_lab, capsys
):
    """`labkit manifests render` is the admin's: run in alice's lab it still binds the shared lab in workloads-gaudi
    (binding hers there would lock the shared lab out); a cpu job in alice-gaudi would relabel it restricted."""
    from labkit.cli import main

    assert main(["manifests", "render", "--accelerator", "gaudi", "--no-job"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "RoleBinding"]
    assert [s["name"] for d in docs for s in d["subjects"] if s["kind"] == "User"] == [
        "system:serviceaccount:workloads:labkit"
    ]
    assert main(["job", "render", "--accelerator", "cpu", "-n", "alice-gaudi"]) == 2
    assert "namespace: alice-gaudi is the Gaudi jobs' privileged namespace" in capsys.readouterr().err


def test_a_labs_own_namespace_never_set_up_is_refused_with_the_set_up_to_run(alices_lab, monkeypatch):
    monkeypatch.setenv("LABKIT_NAMESPACE", "bob")  # bob's lab, whose namespace no admin set up (alice's grants only)
    backend = get_backend("kubernetes", kubeconfig=alices_lab.kubeconfig)
    with pytest.raises(ConfigError) as refused:
        backend.submit(JobSpec(name="demo", namespace="bob"))
    assert "`labkit manifests render --accelerator cpu --namespace bob --no-job | kubectl apply -f -`" in str(
        refused.value
    )


def test_an_explicit_namespace_wins_over_the_labs(alices_lab, capsys):
    from labkit.cli import main

    api = alices_lab
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cpu", namespace="team-b")
    assert (plan.spec.namespace, plan.backend.namespace) == ("team-b", "team-b")
    base = ["--backend", "kubernetes", "--kubeconfig", api.kubeconfig]
    assert main(["job", "submit", "--name", "cli", "-n", "workloads", *base]) == 2  # asked where she may not: refused
    assert "may not create MPIJobs in namespace workloads" in capsys.readouterr().err
    assert main(["job", "render", "-n", "team-b"]) == 0 and "namespace: team-b" in capsys.readouterr().out


def test_without_a_lab_namespace_jobs_go_to_workloads_as_before(api):
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="hpu")
    assert plan.spec.namespace == "workloads-gaudi"
    assert get_backend("kubernetes", kubeconfig=api.kubeconfig).namespace == "workloads"


@pytest.mark.parametrize("value", ["Alice", "alice_lab", "-alice", "a" * 64])
def test_a_bad_lab_namespace_is_one_config_error_before_any_request(api, monkeypatch, capsys, value):
    from labkit.cli import main

    monkeypatch.setenv("LABKIT_NAMESPACE", value)
    with pytest.raises(ConfigError) as err:
        plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cpu")
    assert err.value.field == "LABKIT_NAMESPACE" and "pass -n / namespace= explicitly" in err.value.fix
    assert main(["job", "submit", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("labkit: error: LABKIT_NAMESPACE: ") and "DNS-1123 label" in line
    assert api.requests == [] and posts(api) == []
    plan = plan_interactive_job(backend="kubernetes", kubeconfig=api.kubeconfig, device="cpu", namespace="workloads")
    assert plan.spec.namespace == "workloads"  # an explicit namespace never reads it

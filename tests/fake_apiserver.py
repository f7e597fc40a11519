"""A small Kubernetes API server on 127.0.0.1 for KubernetesBackend tests: the REAL `kubernetes` client talks to it
over a socket, so request paths, query parameters, chunked watches and the exec WebSocket protocol are exercised
exactly as against a cluster.

Implemented (only what the kit's job backend uses):
  * discovery: GET /apis, /apis/kubeflow.org, /apis/kubeflow.org/<version>, /api/v1/namespaces/<ns>; nodes list
  * objects of any kind: POST (with ?dryRun=All), GET, list (namespaced and cluster-wide), DELETE; a custom
    resource's body pruned to its CRD's schema and defaulted from it, a built-in kind's to its fields in one
    Kubernetes release (1.32 unless told), `fieldValidation` Warn/Strict (fake_crd.py)
  * an MPI Operator stand-in: creating an MPIJob creates its launcher and worker pods (the operator's labels and
    hostfile), which become Running/Ready, or fail to pull their image, or stay unschedulable (`scenario`)
  * pods: list, watch (chunked JSON lines from a resourceVersion, timeoutSeconds), logs; events list (fieldSelector)
  * exec: WebSocket upgrade (RFC 6455 framing, written here with the standard library), subprotocol
    v5.channel.k8s.io when offered (else v4), stdout/stderr on channels 1/2, the exit status as a Status JSON on
    channel 3. The command really runs on this machine (the "container" is this host; /etc/mpi/hostfile maps to the
    job's operator-format hostfile, a PVC's mountPath such as /shared/runs/<job> to one directory per claim, or its
    subPath folder in it; the kit's pidfiles in /tmp go with the pod). As in a real cluster, closing the stream does
    NOT stop the command.
  * bearer-token authentication (401 without it): the kubeconfig's token is the kit's ServiceAccount
    (system:serviceaccount:workloads:labkit) unless `identity=ADMIN`; RBAC from manifests/base (rbac.yaml,
    node-reader/) is enforced on EVERY request before anything else (tests/fake_rbac.py), and
    SelfSubjectAccessReviews answer from it
  * a request log tests can assert on, and `denied`: every request RBAC refused.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fake_crd import KUBERNETES_RELEASE, builtin_schema, crd_schema, decode
from fake_rbac import (
    ADMIN,
    SERVICE_ACCOUNT,
    Attributes,
    allowed,
    escalation_refusal,
    exec_verbs,
    load_bindings,
    request_attributes,
)

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
CLUSTER_HOSTFILE = "/etc/mpi/hostfile"


def now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


MPIJOBS, BATCH = "/apis/kubeflow.org/v2beta1", "/apis/batch/v1"
TRAINJOBS, JOBSETS = "/apis/trainer.kubeflow.org/v1alpha1", "/apis/jobset.x-k8s.io/v1alpha2"
# Pod Security "baseline" allows these added capabilities only (pod-security-admission check_capabilities_baseline.go).
BASELINE_CAPABILITIES = frozenset(
    "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID "
    "SYS_CHROOT".split()
)


POD_READY_CONDITIONS = ("PodScheduled", "Initialized", "ContainersReady", "Ready")


def _condition(type_: str, reason: str, message: str = "") -> dict:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now_iso()}


def _token() -> str:
    return "fake-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=24))


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
        **({"details": details} if details else {}),
    }


def ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    """A server-to-client frame (FIN set, unmasked)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return header + payload


def read_ws_frame(rfile) -> tuple[int, bytes] | None:
    """(opcode, payload) of one client frame (clients mask theirs); None at EOF."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, masked, n = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(rfile.read(2), "big")
    elif n == 127:
        n = int.from_bytes(rfile.read(8), "big")
    mask = rfile.read(4) if masked else b"\0\0\0\0"
    data = bytearray(rfile.read(n))
    for i in range(len(data)):
        data[i] ^= mask[i % 4]
    return opcode, bytes(data)


def matches_selector(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


POD_TMP_FILE = re.compile(r"/tmp/labkit-exec-[0-9a-f]+\.pid")  # jobs/kubernetes.py exec's pidfile


def map_paths(arg: str, mounts: dict[str, str]) -> str:
    """One exec argument with the pod's paths (/etc/mpi/hostfile, a volume's mountPath) pointed at the fake's
    directories for them, in paths and in short scripts (`cat /etc/mpi/hostfile`). An argument of several lines is
    data (a file's content written through exec) and reaches the command unchanged, as in a real pod."""
    if "\n" in arg:
        return arg
    for path, target in mounts.items():
        arg = re.sub(rf"(?<![\w./-]){re.escape(path)}(?![\w.-])", lambda _m, t=target: t, arg)
    return arg


class FakeApiServer:
    """`with FakeApiServer() as api: backend = KubernetesBackend(kubeconfig=api.kubeconfig)`."""

    def __init__(
        self,
        *,
        served_versions: tuple[str, ...] = ("v2beta1",),
        scenario: str = "ready",
        ready_delay: float | None = 0.3,
        token: str | None = None,
        namespaces: tuple[str, ...] = ("default", "workloads"),
        reject_dry_run: str | None = None,
        reject_code: int = 400,
        identity: str = SERVICE_ACCOUNT,
        grace_s: float = 0.5,
        trainer_version: str | None = None,
        operator_release: str = "v0.8.2",
        kubernetes_release: str = KUBERNETES_RELEASE,
    ):
        self.served_versions = tuple(served_versions)  # kubeflow.org versions (() = operator missing; ("v1",) = clash)
        self.scenario = scenario  # ready | image_pull | unschedulable | no_operator
        self.ready_delay = ready_delay
        self.token = token or _token()  # the kubeconfig's: `identity`'s token
        self.identity = identity
        self.trainer_version = trainer_version  # Kubeflow Trainer served (None: not installed), e.g. "2.1.0"
        self.operator_release = operator_release  # the MPI Operator's: "v0.8.0" and older re-set Running at the end
        self.kubernetes_release = kubernetes_release  # whose built-in kinds' fields it decodes ("1.30" ... "1.37")
        self.kueue = False  # True: Kueue's MPIJob and TrainJob webhooks run (they suspend a job labelled with a queue)
        self.grace_s = grace_s  # a deleted pod's termination grace period (30 s on a cluster)
        self.namespace_labels: dict[str, dict] = {}  # e.g. {"workloads": {"pod-security.kubernetes.io/enforce": ...}}
        self.users = {self.token: identity, _token(): ADMIN}  # token -> user
        self.grants = load_bindings()  # RBAC: the kit's own Role, ClusterRole and their bindings
        self.nodes: list[dict] = []  # what GET /api/v1/nodes lists (e.g. tests/data/nodes.json's items)
        self.denied: list[tuple[str, Attributes]] = []  # (user, what RBAC refused)
        self.namespaces = set(namespaces)
        # An admission webhook's denial of MPIJob dry runs: "admission webhook ... denied the request: ..." with the
        # webhook's own code, 400 when it sets none below 400 (kubernetes staging/src/k8s.io/apiserver/pkg/admission/
        # plugin/webhook/errors/statuserror.go, ToStatusErr).
        self.reject_dry_run, self.reject_code = reject_dry_run, reject_code
        self.objects: dict[tuple[str, str, str, str], dict] = {}  # (group/version path, plural, ns, name) -> object
        self.pods: dict[tuple[str, str], dict] = {}
        self.events: list[dict] = []
        self.pod_logs: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query)
        self.delete_bodies: list[dict] = []
        # (group, plural, version) -> the structural schema served, where it is not labkit/schemas' (an older CRD)
        self.crd_schemas: dict[tuple[str, str, str], dict] = {}
        self.warnings: list[str] = []  # every Warning header sent (unknown fields dropped under fieldValidation=Warn)
        self.rv = 1
        self.history: list[tuple[int, str, dict]] = []  # (resourceVersion, type, pod) for watches
        # The watch cache keeps a window of the newest pod events (staging/src/k8s.io/apiserver/pkg/storage/cacher/
        # watch_cache.go; None: every one). On a busy cluster other pods' changes move that window on between a
        # client's list and its watch: busy_after_list such changes land right after each pod list is read.
        self.watch_cache_capacity: int | None = None
        self.busy_after_list = 0
        self.expired_watches = 0  # watches answered 410 Expired
        self.launcher_crashes = 0  # the next launcher pods whose container exits 1 as it starts
        self.cond = threading.Condition()
        self.exec_procs: list[subprocess.Popen] = []
        self.pod_files: dict[tuple[str, str], set[str]] = {}  # (ns, pod) -> files in the container's /tmp
        self.exec_protocols: list[str] = []  # the subprotocol each exec negotiated
        self.root = Path(tempfile.mkdtemp(prefix="labkit-fake-apiserver-"))
        self.kubeconfig = str(self.root / "kubeconfig")
        self._httpd: ThreadingHTTPServer | None = None
        self._timers: list[threading.Timer] = []

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> FakeApiServer:
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.write_kubeconfig(self.kubeconfig)
        return self

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def token_of(self, user: str) -> str:
        return next(t for t, u in self.users.items() if u == user)

    def write_kubeconfig(self, path: str, namespace: str = "workloads", user: str | None = None) -> str:
        import yaml

        Path(path).write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "student", "user": {"token": self.token_of(user or self.identity)}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "student", "namespace": namespace}}
                    ],
                }
            )
        )
        return path

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        self.kill_exec_processes()
        for ns, pod in list(self.pod_files):  # the fake's pods are gone with it
            self.remove_pod_files(ns, pod)
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_exec_processes(self) -> None:
        """Stop what exec'd commands left (they run in their own sessions: kill by the fake's env tag)."""
        tag = f"LABKIT_FAKE_APISERVER={self.root.name}".encode()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.tagged_pids(tag):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            time.sleep(0.3)
        for p in self.exec_procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def tagged_pids(tag: bytes) -> list[int]:
        out = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    with open(f"/proc/{entry.name}/environ", "rb") as f:
                        if tag in f.read().split(b"\0"):
                            with open(f"/proc/{entry.name}/stat") as s:
                                if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                                    out.append(int(entry.name))
                except OSError:
                    pass
        return out

    def exec_tag_pids(self) -> list[int]:
        return self.tagged_pids(f"LABKIT_FAKE_APISERVER={self.root.name}".encode())

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state changes ----------------------------------------------------------------------------------------------
    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _pod_event(self, kind: str, pod: dict) -> None:
        with self.cond:
            pod["metadata"]["resourceVersion"] = self._bump()
            self.history.append((self.rv, kind, copy.deepcopy(pod)))
            if self.watch_cache_capacity is not None:
                del self.history[: -self.watch_cache_capacity]
            self.cond.notify_all()

    def busy_cluster(self, changes: int) -> None:
        """Changes of a pod in another namespace: nothing the kit's watch sends, but each moves the watch cache's
        window (it holds one resource's events, every namespace's)."""
        for _ in range(changes):
            self._pod_event("MODIFIED", {"metadata": {"name": "busy", "namespace": "elsewhere", "labels": {}}})

    def oldest_watchable(self) -> int:
        """The oldest resourceVersion a watch may start from (watch_cache.go, getAllEventsSinceLocked: below
        `oldest-1`, NewResourceExpired "too old resource version: RV (oldest-1)")."""
        return (self.history[0][0] if self.history else self.rv + 1) - 1

    def add_event(self, ns: str, name: str, type_: str, reason: str, message: str, kind: str = "Pod") -> None:
        self.events.append(
            {
                "metadata": {"name": f"{name}.{len(self.events)}", "namespace": ns},
                "involvedObject": {"kind": kind, "name": name, "namespace": ns},
                "type": type_,
                "reason": reason,
                "message": message,
                "lastTimestamp": now_iso(),
                "count": 1,
            }
        )

    # -- the MPI Operator (kubeflow/mpi-operator v0.8.2, pkg/controller/mpi_job_controller.go) ----------------------
    def _job(self, ns: str, name: str) -> dict | None:
        return self.objects.get((MPIJOBS, "mpijobs", ns, name))

    def claim_dir(self, ns: str, claim: str) -> Path:
        """The fake's storage behind PersistentVolumeClaim ns/claim: the same directory for every pod mounting it."""
        path = self.root / ns / "pvc" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def claim_mounts(self, ns: str, job_name: str, role: str) -> dict[str, str]:
        """mountPath -> the claim_dir folder (its subPath, if any) for each PVC mount of the job's `role` pod template
        (its first container: the one exec runs in), so a file one exec writes under /shared the next one reads, as
        on the volume. A missing subPath folder is made as kubelet makes it, with the mode of the volume's root
        (pkg/kubelet/kubelet_pods.go makeMounts -> pkg/volume/util/subpath/subpath_linux.go doSafeMakeDir).
        readOnly is not enforced: the command runs as this host's user."""
        job = self._job(ns, job_name) or {}
        replicas = (job.get("spec") or {}).get("mpiReplicaSpecs") or {}
        pod = ((replicas.get(role.capitalize()) or {}).get("template") or {}).get("spec") or {}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or []
                  if "persistentVolumeClaim" in v}  # fmt: skip
        found = {}
        for mount in (pod.get("containers") or [{}])[0].get("volumeMounts") or []:
            if mount["name"] in claims:
                root = self.claim_dir(ns, claims[mount["name"]])
                parts = Path(mount.get("subPath", "")).parts
                for folder in (root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)):
                    if not folder.is_dir():
                        folder.mkdir()
                        folder.chmod(root.stat().st_mode & 0o7777)
                found[mount["mountPath"]] = str(root.joinpath(*parts))
        return found

    def _operator_sync(self, job: dict) -> None:
        """syncHandler: validate (ValidationError event, nothing created: the operator has no admission webhook),
        then the worker pods; the launcher Job only later (_create_launcher)."""
        meta, spec = job["metadata"], job["spec"]
        name, ns = meta["name"], meta["namespace"]
        problem = self._operator_invalid(spec)
        if problem:  # syncHandler: `c.recorder.Event(mpiJob, corev1.EventTypeWarning, ValidationError, msg)`
            self.add_event(ns, name, "Warning", "ValidationError", problem, kind="MPIJob")
            return
        job.setdefault("status", {})["conditions"] = [_condition("Created", "MPIJobCreated")]  # before any object
        # getOrCreateService / getOrCreateConfigMap / getOrCreateSSHAuthSecret: an object of the job's names that the
        # job does not control stops the sync (ErrResourceExists, retried: no pods ever). %q of svc.Kind is "": objects
        # from client-go listers carry no TypeMeta.
        for plural, own in (("services", name), ("configmaps", f"{name}-config"), ("secrets", f"{name}-ssh")):
            if ("/api/v1", plural, ns, own) in self.objects:
                message = f'Resource "{own}" of Kind "" already exists and is not managed by MPIJob'
                self.add_event(ns, name, "Warning", "ErrResourceExists", message, kind="MPIJob")
                return
        if (spec.get("runPolicy") or {}).get("suspend"):
            # isMPIJobSuspended (mpi_job_controller.go at caa3c47: syncHandler, updateMPIJobStatus): no worker pods, a
            # launcher Job created suspended (no pod; not stored here), Suspended=True "MPIJob suspended" with a Normal
            # MPIJobSuspended event, and Running=False "MPIJob NS/NAME is suspended.". Kueue's webhook sets suspend.
            running = {
                **_condition("Running", "MPIJobSuspended", f"MPIJob {ns}/{name} is suspended."),
                "status": "False",
            }
            job["status"]["conditions"] += [_condition("Suspended", "MPIJobSuspended", "MPIJob suspended"), running]
            self.add_event(ns, name, "Normal", "MPIJobSuspended", "MPIJob suspended", kind="MPIJob")
            return
        workers = spec["mpiReplicaSpecs"].get("Worker", {}).get("replicas", 1)
        slots = spec.get("slotsPerWorker", 1)
        etc = self.root / ns / name / "etc-mpi"
        etc.mkdir(parents=True, exist_ok=True)
        # newConfigMap: "HOST slots=N" for OpenMPI, "HOST:N" for Intel and MPICH (which DeepSpeed's --hostfile refuses)
        line = " slots={}" if spec.get("mpiImplementation", "OpenMPI") == "OpenMPI" else ":{}"
        (etc / "hostfile").write_text(
            "".join(f"{name}-worker-{i}.{name}.{ns}.svc{line.format(slots)}\n" for i in range(workers))
        )
        for i in range(workers):  # getOrCreateWorker / newWorker: pods `<name>-worker-<i>` with a replica-index
            labels = {"training.kubeflow.org/replica-index": str(i)}
            if self._operator_pod(job, "Worker", f"{name}-worker-{i}", labels) is None:
                return  # the sync returns the error: no more workers, no launcher (retried with backoff)
        if spec.get("launcherCreationPolicy", "AtStartup") == "AtStartup":
            self._create_launcher(job)
        if self.ready_delay is None:  # the test calls advance() itself
            return
        self._later(self.ready_delay, self.advance, ns, name)

    # Kubeflow Trainer v2.3.0's TrainJob controller, as far as the kit reads it: the JobSet it applies, the Suspended
    # condition, and the terminal condition it copies from the JobSet. Its pods (the JobSet's Jobs) are not simulated.
    def _trainer_sync(self, job: dict) -> None:
        """Reconcile -> reconcileObjects: a JobSet of the TrainJob's name (pkg/runtime/framework/plugins/jobset/
        jobset.go, Build: controller owner reference with blockOwnerDeletion, spec.suspend copied) and the
        `<name>-runtime-snapshot` ConfigMap (pkg/runtime/core/snapshot.go); then setSuspendedCondition
        (trainjob_controller.go): Suspended=True "Suspended" / "TrainJob is suspended" (pkg/constants/constants.go)
        while spec.suspend is true, no Suspended condition otherwise. status.jobsStatus copies the JobSet's
        replicatedJobsStatus, empty until its Jobs exist. There is no Created or Running condition."""
        meta, spec = job["metadata"], job["spec"]
        name, ns = meta["name"], meta["namespace"]
        owner = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": name,
                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        self.objects[(JOBSETS, "jobsets", ns, name)] = {
            "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-jobset-{name}", "ownerReferences": [owner]},
            "spec": {"suspend": bool(spec.get("suspend"))},
        }  # fmt: skip
        self.objects[("/api/v1", "configmaps", ns, f"{name}-runtime-snapshot")] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-runtime-snapshot", "namespace": ns, "ownerReferences": [owner]},
        }  # fmt: skip
        job["status"] = {"jobsStatus": []}
        if spec.get("suspend"):
            job["status"]["conditions"] = [_condition("Suspended", "Suspended", "TrainJob is suspended")]

    def trainer_resume(self, ns: str, name: str) -> None:
        """What `kubectl patch trainjob NAME -p '{"spec":{"suspend":false}}'` (or Kueue admitting it) leads to:
        setSuspendedCondition turns Suspended False with reason "Resumed", "TrainJob is resumed"; the JobSet resumes."""
        job = self._trainjob(ns, name)
        job["spec"]["suspend"] = False
        self.objects[(JOBSETS, "jobsets", ns, name)]["spec"]["suspend"] = False
        for condition in job["status"].get("conditions") or []:
            if condition["type"] == "Suspended" and condition["status"] == "True":
                condition.update(status="False", reason="Resumed", message="TrainJob is resumed",
                                 lastTransitionTime=now_iso())  # fmt: skip

    def trainjob_deadline(self, ns: str, name: str) -> None:
        """spec.activeDeadlineSeconds passed (trainjob_controller.go, reconcileDeadline): Failed=True with reason
        "DeadlineExceeded", "TrainJob exceeded its active deadline" (pkg/constants/constants.go), and the JobSet is
        deleted (its Jobs and pods with it)."""
        self._trainjob_ends(ns, name, "Failed", "DeadlineExceeded", "TrainJob exceeded its active deadline")
        self.objects.pop((JOBSETS, "jobsets", ns, name), None)

    def trainjob_finished(self, ns: str, name: str, failed_job: str | None = None) -> None:
        """The JobSet's terminal condition, which (*JobSet).Status copies verbatim but for its type (Completed ->
        Complete, Failed -> Failed): jobset v0.12.0's success policy (All, the webhook default) "AllJobsCompleted",
        "jobset completed successfully"; with no failure policy a failed Job ends it, "FailedJobs", "jobset failed due
        to one or more job failures" plus " (first failed job: NAME)" (pkg/controllers/failure_policy.go,
        messageWithFirstFailedJob)."""
        if failed_job is None:
            self._trainjob_ends(ns, name, "Complete", "AllJobsCompleted", "jobset completed successfully")
        else:
            message = f"jobset failed due to one or more job failures (first failed job: {failed_job})"
            self._trainjob_ends(ns, name, "Failed", "FailedJobs", message)

    def _trainjob(self, ns: str, name: str) -> dict:
        return self.objects[(TRAINJOBS, "trainjobs", ns, name)]

    def _trainjob_ends(self, ns: str, name: str, type_: str, reason: str, message: str) -> None:
        self._trainjob(ns, name)["status"].setdefault("conditions", []).append(_condition(type_, reason, message))

    @staticmethod
    def _operator_invalid(spec: dict) -> str | None:
        """pkg/apis/kubeflow/validation/validation.go (ValidateMPIJob), run by the controller, not the API server; the
        event says `Found validation errors: <field.Error>` (mpi_job_controller.go, syncHandler)."""
        replicas, head = spec["mpiReplicaSpecs"], "Found validation errors: spec.mpiReplicaSpecs"
        if (launchers := (replicas.get("Launcher") or {}).get("replicas", 1)) != 1:
            return f"{head}[Launcher].replicas: Invalid value: {launchers}: must be 1"
        if (workers := (replicas.get("Worker") or {}).get("replicas", 1)) < 1:
            return f"{head}[Worker].replicas: Invalid value: {workers}: must be greater than or equal to 1"
        return None  # (mpiImplementation's values are the CRD's enum: the API server refuses others, see _invalid)

    def _operator_pod(self, job: dict, replica: str, pod_name: str, labels: dict) -> dict | None:
        """A pod the operator (a worker) or the launcher Job's controller asks for: the namespace's Pod Security
        admission may refuse it (kubernetes staging/src/k8s.io/pod-security-admission/policy/check_hostNamespaces.go,
        check_capabilities_baseline.go), which is seen only as an event: MPIJobFailed "worker pod created failed: ..."
        on the MPIJob (mpi-operator pkg/controller/mpi_job_controller.go, getOrCreateWorker), FailedCreate
        "Error creating: ..." on the launcher Job (kubernetes pkg/controller/controller_utils.go, CreatePods)."""
        meta = job["metadata"]
        name, ns = meta["name"], meta["namespace"]
        template = job["spec"]["mpiReplicaSpecs"][replica]["template"]
        violation = self._pod_security_violation(ns, template["spec"])
        if violation:
            message = f'pods "{pod_name}" is forbidden: violates PodSecurity "{violation[0]}:latest": {violation[1]}'
            if replica == "Launcher":
                self.add_event(ns, f"{name}-launcher", "Warning", "FailedCreate", f"Error creating: {message}", "Job")
            else:
                self.add_event(ns, name, "Warning", "MPIJobFailed", f"worker pod created failed: {message}", "MPIJob")
            return None
        containers = [{"name": c["name"], "image": c.get("image", "busybox")} for c in template["spec"]["containers"]]
        role = replica.lower()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": ns,
                "uid": f"uid-{pod_name}",
                "creationTimestamp": now_iso(),
                "labels": {"training.kubeflow.org/job-name": name, "training.kubeflow.org/job-role": role, **labels},
            },
            "spec": {"containers": containers, "nodeName": None, "hostIPC": template["spec"].get("hostIPC", False)},
            "status": {"phase": "Pending", "conditions": []},
        }
        self.pods[(ns, pod_name)] = pod
        self._pod_event("ADDED", pod)
        return pod

    def _pod_security_violation(self, ns: str, pod_spec: dict) -> tuple[str, str] | None:
        """The namespace's enforced level applied as admission does, with its reason texts (kubernetes
        staging/src/k8s.io/pod-security-admission/policy/: check_hostNamespaces.go, check_privileged.go,
        check_capabilities_baseline.go, check_hostPathVolumes.go; restricted adds check_allowPrivilegeEscalation.go,
        check_capabilities_restricted.go, check_runAsNonRoot.go, check_seccompProfile_restricted.go,
        check_restrictedVolumes.go). The kit's own pre-flight check is written separately (labkit/manifests)."""
        level = self.namespace_labels.get(ns, {}).get("pod-security.kubernetes.io/enforce", "privileged")
        if level == "privileged":
            return None
        pod_ctx = pod_spec.get("securityContext") or {}
        found = [f"host namespaces ({f}=true)" for f in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(f)]
        hostpath = [v["name"] for v in pod_spec.get("volumes") or [] if "hostPath" in v]
        if hostpath:
            found.append(f"hostPath volumes (volumes {', '.join(map(repr, hostpath))})")
        for c in pod_spec.get("containers", []):
            ctx = c.get("securityContext") or {}
            if ctx.get("privileged"):
                found.append(f'privileged (container "{c["name"]}" must not set securityContext.privileged=true)')
            added = (ctx.get("capabilities") or {}).get("add") or []
            extra = [cap for cap in added if cap not in BASELINE_CAPABILITIES]
            if extra and level == "baseline":  # restricted's capability check overrides this one (OverrideCheckIDs)
                caps = ", ".join(f'"{cap}"' for cap in extra)
                found.append(f'non-default capabilities (container "{c["name"]}" must not include {caps} in '
                             "securityContext.capabilities.add)")  # fmt: skip
        if level == "restricted":
            allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                       "secret"}  # fmt: skip
            if any(set(v) - {"name"} - allowed for v in pod_spec.get("volumes") or []):
                found.append("restricted volume types")
            pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
            if pod_ctx.get("runAsUser") == 0:  # check_runAsUser.go
                found.append("runAsUser=0 (pod must not set runAsUser=0)")
            for c in pod_spec.get("containers", []):
                ctx, name = c.get("securityContext") or {}, c["name"]
                if ctx.get("allowPrivilegeEscalation") is not False:
                    found.append(f'allowPrivilegeEscalation != false (container "{name}" must set '
                                 "securityContext.allowPrivilegeEscalation=false)")  # fmt: skip
                # check_capabilities_restricted.go: drop ALL, add nothing but NET_BIND_SERVICE; one reason, details
                # joined by "; "
                caps, details = ctx.get("capabilities") or {}, []
                if "ALL" not in (caps.get("drop") or []):
                    details.append(f'container "{name}" must set securityContext.capabilities.drop=["ALL"]')
                added = sorted({cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"})
                if added:
                    listed = ", ".join(f'"{cap}"' for cap in added)
                    details.append(f'container "{name}" must not include {listed} in securityContext.capabilities.add')
                if details:
                    found.append(f"unrestricted capabilities ({'; '.join(details)})")
                if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
                    found.append(f'runAsNonRoot != true (pod or container "{name}" must set '
                                 "securityContext.runAsNonRoot=true)")  # fmt: skip
                if ctx.get("runAsUser") == 0:  # check_runAsUser.go
                    found.append(f'runAsUser=0 (container "{name}" must not set runAsUser=0)')
                if not (
                    pod_seccomp or (ctx.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
                ):
                    found.append(f'seccompProfile (pod or container "{name}" must set securityContext.seccompProfile'
                                 '.type to "RuntimeDefault" or "Localhost")')  # fmt: skip
        return (level, ", ".join(found)) if found else None

    def _create_launcher(self, job: dict) -> None:
        """newLauncherJob: a batch/v1 Job `<name>-launcher` carrying runPolicy's activeDeadlineSeconds,
        ttlSecondsAfterFinished and backoffLimit (so the deadline starts now, not at the MPIJob's creation; an unset
        backoffLimit is the Job API's default, 6: kubernetes pkg/apis/batch/v1/defaults.go) and the launcher's
        restartPolicy (setRestartPolicy), and its pod: labels job-name and job-role=launcher, no replica-index
        (runLauncherAsWorker off), a random name suffix."""
        meta, spec = job["metadata"], job["spec"]
        name, ns = meta["name"], meta["namespace"]
        if (BATCH, "jobs", ns, f"{name}-launcher") in self.objects:
            return
        run_policy = spec.get("runPolicy") or {}
        job_spec = {k: run_policy[k] for k in ("activeDeadlineSeconds", "ttlSecondsAfterFinished") if k in run_policy}
        restart = spec["mpiReplicaSpecs"]["Launcher"].get("restartPolicy") or "Never"
        job_spec.update(
            backoffLimit=run_policy.get("backoffLimit", 6),
            template={"spec": {"restartPolicy": "Never" if restart == "ExitCode" else restart}},
        )
        self.objects[(BATCH, "jobs", ns, f"{name}-launcher")] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{name}-launcher", "namespace": ns, "creationTimestamp": now_iso()},
            "spec": job_spec,
            "status": {"startTime": now_iso(), "active": 1},
        }
        if self._launcher_pod(job) is not None:
            job["status"]["conditions"] = [
                _condition("Created", "MPIJobCreated"),
                _condition("Running", "MPIJobRunning"),
            ]

    def _launcher_pod(self, job: dict) -> dict | None:
        """The launcher Job's controller creates its pod (a new random name each time: manageJob); the kubelet starts
        it, and a container that exits at once (launcher_crashes) ends before it was ever Ready."""
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        if (BATCH, "jobs", ns, f"{name}-launcher") not in self.objects:  # deleted meanwhile (with the MPIJob)
            return None
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        pod = self._operator_pod(job, "Launcher", f"{name}-launcher-{suffix}", {})
        if pod is None:
            return None
        self._kubelet(pod, ns)
        if self.launcher_crashes:
            self.launcher_crashes -= 1
            self._container_exits(pod, 1)
        self._pod_event("MODIFIED", pod)
        if pod["status"]["phase"] == "Failed":
            self._launcher_job_sync(ns, name)
        return pod

    def _container_exits(self, pod: dict, code: int, reason: str | None = None) -> None:
        """The launcher's only container ends with `code` (kubelet, pkg/kubelet/kubelet_pods.go, getPhase): with
        restartPolicy Never, or exit 0 under OnFailure, the pod ends Failed / Succeeded and stays listed; under
        OnFailure a failure is restarted in place (restartCount + 1, lastState terminated, the pod stays Running).
        What was exec'd into it dies with its PID 1: the runtime kills every process of the container's PID namespace
        (SIGKILL), so an exec stream ends with exit 137 (kubelet pkg/kubelet/cri/streaming/remotecommand, ServeExec:
        NonZeroExitCode). `reason` is the runtime's (kubelet kuberuntime_container.go, toKubeContainerStatus:
        OOMKilled where the kernel killed it; Error for another failure, Completed for exit 0)."""
        ns, pod_name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        job = self.objects[
            (BATCH, "jobs", ns, pod["metadata"]["labels"]["training.kubeflow.org/job-name"] + "-launcher")
        ]
        self.kill_pod_processes(ns, pod_name)
        status, (container,) = pod["status"], pod["status"]["containerStatuses"]
        ended = {"exitCode": code, "reason": reason or ("Error" if code else "Completed"), "finishedAt": now_iso()}
        if code and job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure":
            container.update(restartCount=container["restartCount"] + 1, lastState={"terminated": ended})
            container["state"] = {"running": {"startedAt": now_iso()}}
            return
        status["phase"] = "Failed" if code else "Succeeded"
        container.update(ready=False, started=False, state={"terminated": ended})
        for condition in status["conditions"]:
            if condition["type"] in ("Ready", "ContainersReady"):
                condition.update(status="False", reason="PodCompleted")

    def launcher_exits(self, ns: str, name: str, code: int, reason: str | None = None) -> None:
        """The running launcher's container ends with `code` and `reason` (_container_exits), exec'd commands with it;
        then the Job controller acts."""
        (pod,) = [
            p
            for p in self._job_pods(ns, name)
            if p["metadata"]["labels"]["training.kubeflow.org/job-role"] == "launcher"
            and p["status"]["phase"] == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]
        self._container_exits(pod, code, reason)
        self._pod_event("MODIFIED", pod)
        self._launcher_job_sync(ns, name)

    def _launcher_job_sync(self, ns: str, name: str) -> None:
        """The Job controller on the launcher Job (kubernetes pkg/controller/job/job_controller.go, syncJob): a pod
        Succeeded completes it; failed pods count in status.failed, and past backoffLimit (exceedsBackoffLimit: failed
        > backoffLimit; under OnFailure pastBackoffLimitOnFailure: restarts > 0 when the limit is 0, else >= it) the
        Job fails, BackoffLimitExceeded, its active pod deleted (FailureTarget first, Failed once it is gone:
        delayTerminalCondition, 1.31+). Below the limit a replacement pod of a new name (manageJob; newLauncherJob's
        podReplacementPolicy Failed waits for the old one to be terminal, as it is here), after a backoff (10 s on a
        cluster: DefaultJobPodFailureBackOff; ready_delay here). The operator mirrors Complete / Failed on the MPIJob
        (mpi-operator mpi_job_controller.go, updateMPIJobStatus and updateMPIJobFailedStatus)."""
        launcher, job = self.objects[(BATCH, "jobs", ns, f"{name}-launcher")], self._job(ns, name)
        pods = [p for p in self._job_pods(ns, name) if p["metadata"]["labels"]["training.kubeflow.org/job-role"]
                == "launcher"]  # fmt: skip
        limit, status = launcher["spec"]["backoffLimit"], launcher["status"]
        if any(p["status"]["phase"] == "Succeeded" for p in pods):
            status.update(active=0, succeeded=1, completionTime=now_iso())
            status["conditions"] = [{"type": "Complete", "status": "True"}]
            self._mpijob_finished(job, "Succeeded", "MPIJobSucceeded", f"MPIJob {ns}/{name} successfully completed.")
            return
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        restarts = sum(c["restartCount"] for p in pods if p["status"]["phase"] in ("Pending", "Running")
                       for c in p["status"].get("containerStatuses") or [])  # fmt: skip
        status["failed"] = len(failed)
        on_failure = launcher["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
        if len(failed) > limit or (on_failure and (restarts > 0 if limit == 0 else restarts >= limit)):
            message = "Job has reached the specified backoff limit"
            status["conditions"] = [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": message}]  # fmt: skip
            active = [p["metadata"]["name"] for p in pods if p["status"]["phase"] not in ("Failed", "Succeeded")]
            for (
                pod_name
            ) in active:  # the active one goes (deleteActivePods); failed ones stay listed until the Job goes
                self.delete_pod(ns, pod_name)

            def settle() -> None:  # Failed once the deleted pod is gone (its grace period ends now, at the latest)
                for pod_name in active:
                    self.pod_gone(ns, pod_name)
                status["conditions"].append({**status["conditions"][0], "type": "Failed"})
                status.update(active=0, completionTime=now_iso())
                # updateMPIJobFailedStatus: BackoffLimitExceeded gets the last failed pod's reason and message
                last = max(failed, key=lambda p: p["metadata"]["creationTimestamp"], default=None)
                reason, text = "BackoffLimitExceeded", message
                if last is not None:
                    reason, text = (
                        f"{reason}/{last['status'].get('reason', '')}",
                        f"{text}: {last['status'].get('message', '')}",
                    )
                self._mpijob_finished(job, "Failed", reason, text)

            self._later(self.grace_s, settle)
        elif failed and len(pods) == len(failed):
            self._later(self.ready_delay or 0.1, self._launcher_pod, job)

    @staticmethod
    def _mpijob_finished(job: dict, kind: str, reason: str, message: str) -> None:
        """updateMPIJobConditions: the terminal condition; setCondition -> filterOutCondition sets Running False."""
        for condition in job["status"]["conditions"]:
            if condition["type"] == "Running":
                condition["status"] = "False"
        job["status"]["conditions"].append(_condition(kind, reason, message))

    def advance(self, ns: str, name: str) -> None:
        """The kubelet/scheduler step for the workers (per scenario); with WaitForWorkersReady the operator creates
        the launcher once every worker is Ready (syncHandler: countReadyWorkerPods(worker) == len(worker))."""
        job = self._job(ns, name)
        if job is None:
            return
        workers = [
            p for p in self._job_pods(ns, name) if p["metadata"]["labels"]["training.kubeflow.org/job-role"] == "worker"
        ]
        for pod in workers:
            self._kubelet(pod, ns)
            self._pod_event("MODIFIED", pod)
        if workers and self.scenario == "ready":
            self._create_launcher(job)

    def _kubelet(self, pod: dict, ns: str) -> None:
        st, pname = pod["status"], pod["metadata"]["name"]
        image, cname = pod["spec"]["containers"][0]["image"], pod["spec"]["containers"][0]["name"]
        if self.scenario == "ready":
            st.update(
                phase="Running",
                startTime=now_iso(),
                conditions=[{"type": t, "status": "True"} for t in POD_READY_CONDITIONS],
                containerStatuses=[
                    {"name": cname, "image": image, "imageID": f"{image}@sha256:0", "ready": True, "restartCount": 0,
                     "started": True, "state": {"running": {"startedAt": now_iso()}}}
                ],
            )  # fmt: skip
        elif self.scenario == "image_pull":
            msg = f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": {image}: not found'
            st.update(
                conditions=[{"type": "PodScheduled", "status": "True"}],
                containerStatuses=[
                    {"name": cname, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                     "state": {"waiting": {"reason": "ErrImagePull", "message": msg}}}
                ],
            )  # fmt: skip
            self.add_event(ns, pname, "Warning", "Failed", f'Failed to pull image "{image}": {msg}')
        elif self.scenario == "init_done":
            # An injected init container (istio-init, a Vault agent) has finished, the main image is still being pulled:
            # kubelet keeps the pod Pending (pkg/kubelet/kubelet_pods.go, getPhase: initialized, main containers
            # waiting) and the init container's state stays terminated, exit 0, Completed.
            done = {"exitCode": 0, "reason": "Completed", "startedAt": now_iso(), "finishedAt": now_iso()}
            st.update(
                conditions=[{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"}],
                initContainerStatuses=[{"name": "istio-init", "image": "istio/proxyv2", "imageID": "", "ready": True,
                                        "restartCount": 0, "state": {"terminated": done}}],
                containerStatuses=[{"name": cname, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                                    "state": {"waiting": {"reason": "ContainerCreating"}}}],
            )  # fmt: skip
        elif self.scenario == "unschedulable":
            msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available."
            st.update(
                conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}]
            )
            self.add_event(ns, pname, "Warning", "FailedScheduling", msg)

    def expire_deadline(self, ns: str, name: str, *, settle: bool = True) -> None:
        """The Job controller ends the launcher at its activeDeadlineSeconds in two steps where JobPodReplacementPolicy
        or JobManagedBy is on (both on by default) from Kubernetes 1.31 (kubernetes#125510: pkg/controller/job/
        job_controller.go, newFailureCondition and delayTerminalCondition; 1.30 and older set Failed at once):
        condition FailureTarget/DeadlineExceeded and the active pod deleted at once (gracefully, delete_pod: exec'd
        commands die when its grace period ends), Failed only once that pod is gone. The operator mirrors only Failed
        (mpi-operator pkg/controller/mpi_job_controller.go, isJobFailed), so until then the MPIJob still says Running.
        settle=False stops between the two steps."""
        launcher = self.objects[(BATCH, "jobs", ns, f"{name}-launcher")]
        message = "Job was active longer than specified deadline"
        launcher["status"]["conditions"] = [
            {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded", "message": message}
        ]
        self.delete_job_pods(ns, name, ("launcher",))
        if settle:
            self.settle_deadline(ns, name)

    def settle_deadline(self, ns: str, name: str) -> None:
        """The second step: the launcher Job Failed, and the MPIJob Failed/DeadlineExceeded
        (mpi_job_controller_status.go / updateMPIJobFailedStatus). The workers go only under cleanPodPolicy Running
        or All (mpi_job_controller.go, isCleanUpPods); the CRD's default, None, leaves them holding their devices."""
        launcher = self.objects[(BATCH, "jobs", ns, f"{name}-launcher")]
        for pod in self._job_pods(ns, name):  # Failed is set once the deleted launcher pod is gone (see above)
            if pod["metadata"]["labels"].get("training.kubeflow.org/job-role") == "launcher":
                self.pod_gone(ns, pod["metadata"]["name"])
        conditions = launcher["status"]["conditions"]
        conditions.append({**conditions[0], "type": "Failed"})
        launcher["status"].update(active=0, failed=1, completionTime=now_iso())
        policy = (self._job(ns, name)["spec"].get("runPolicy") or {}).get("cleanPodPolicy", "None")
        self.delete_job_pods(ns, name, ("launcher", "worker") if policy in ("Running", "All") else ("launcher",))
        mpijob_conditions = self._job(ns, name)["status"]["conditions"]
        for condition in mpijob_conditions:  # setCondition -> filterOutCondition: Failed sets Running False
            if condition["type"] == "Running":
                condition["status"] = "False"
        mpijob_conditions.append(
            _condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        )
        if self.operator_release in ("v0.5.0", "v0.6.0", "v0.7.0", "v0.7.1", "v0.8.0", "v0.8.1"):
            # Before v0.8.2 updateMPIJobStatus goes on, in the same sync, to set Running=True again (the launcher pod
            # still terminating counts as running; Kubernetes <= 1.30 sets Failed at once): both stay true, Running
            # last (mpi_job_controller.go at v0.8.0; release-0.8 got the fix of kubeflow/mpi-operator#787 for v0.8.2).
            mpijob_conditions[:] = [c for c in mpijob_conditions if c["type"] != "Running"]
            mpijob_conditions.append(_condition("Running", "MPIJobRunning", f"MPIJob {ns}/{name} is running."))

    def expire_ttl(self, ns: str, name: str) -> None:
        """ttlSecondsAfterFinished lives on the launcher Job: the TTL controller deletes that Job, never the MPIJob
        (pkg/controller/ttlafterfinished/ttlafterfinished_controller.go), so finished MPIJobs stay."""
        del self.objects[(BATCH, "jobs", ns, f"{name}-launcher")]

    def _job_pods(self, ns: str, name: str) -> list[dict]:
        return [p for (pns, _), p in self.pods.items()
                if pns == ns and p["metadata"]["labels"].get("training.kubeflow.org/job-name") == name]  # fmt: skip

    def delete_job_pods(self, ns: str, name: str, roles: tuple[str, ...] = ("launcher", "worker")) -> None:
        """A controller's (or an eviction's) DELETE of the job's pods of those roles: graceful (delete_pod)."""
        for pod in self._job_pods(ns, name):
            if pod["metadata"]["labels"].get("training.kubeflow.org/job-role") in roles:
                self.delete_pod(ns, pod["metadata"]["name"])

    def delete_pod(self, ns: str, pod_name: str) -> None:
        """Graceful deletion: the pod stays, phase Running (and Ready: no probe fails), with deletionTimestamp = now +
        its grace period and deletionGracePeriodSeconds (apiserver pkg/registry/rest/delete.go, BeforeDelete; pods
        are graceful by kubernetes pkg/registry/core/pod/strategy.go, CheckGracefulDelete:
        terminationGracePeriodSeconds, 30 by default); watches see it MODIFIED. The kubelet sends SIGTERM to PID 1
        only, which `sleep infinity` ignores, so what was exec'd into the pod runs on until the grace period ends
        (pod_gone). A pod already terminating keeps its deadline (BeforeDelete: "graceful deletion is pending")."""
        pod = self.pods.get((ns, pod_name))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        period = max(1, round(self.grace_s))  # whole seconds in the API; the fake waits grace_s
        pod["metadata"].update(deletionTimestamp=now_iso(time.time() + self.grace_s), deletionGracePeriodSeconds=period)
        self._pod_event("MODIFIED", pod)
        self._later(self.grace_s, self.pod_gone, ns, pod_name)

    def pod_gone(self, ns: str, pod_name: str) -> None:
        """The grace period is over: the runtime SIGKILLs the container (kubernetes pkg/kubelet/kuberuntime/
        kuberuntime_container.go, killContainer: StopContainer with the grace period as timeout), and with PID 1 every
        process of its PID namespace, exec'd ones too; their exec streams end with exit 137. Then the kubelet confirms
        and the object goes (pkg/kubelet/status/status_manager.go, syncPod -> canBeDeleted: a DELETE with grace 0),
        which watches see as DELETED."""
        if (ns, pod_name) not in self.pods:
            return
        self.kill_pod_processes(ns, pod_name)
        self.remove_pod_files(ns, pod_name)
        pod = self.pods.pop((ns, pod_name), None)
        if pod is not None:
            self._pod_event("DELETED", pod)

    def _later(self, seconds: float, fn, *args) -> None:
        t = threading.Timer(seconds, fn, args=args)
        t.daemon = True
        self._timers.append(t)
        t.start()

    def pod_tag(self, ns: str, pod: str) -> str:
        """The env entry every process exec'd into that pod carries (in its env, so its children inherit it)."""
        return f"LABKIT_FAKE_POD={self.root.name}/{ns}/{pod}"

    def kill_pod_processes(self, ns: str, pod: str) -> None:
        """The kubelet kills the container's processes when the pod is deleted: every one, whatever its process group
        or session (EXEC_SCRIPT's `setsid` too), so kill by the pod's tag, not the exec's group."""
        tag = self.pod_tag(ns, pod).encode()
        for _ in range(3):  # one that forked while we looked is caught next round
            for pid in self.tagged_pids(tag):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def remove_pod_files(self, ns: str, pod: str) -> None:
        for path in self.pod_files.pop((ns, pod), ()):
            Path(path).unlink(missing_ok=True)

    def collect_dependents(self, owner: dict) -> None:
        """The garbage collector: an object whose owners are all gone (here: its one owner) is deleted
        (pkg/controller/garbagecollector/garbagecollector.go, attemptToDeleteItem: "All owners are dangling")."""
        uid = owner["metadata"].get("uid")
        for key, obj in list(self.objects.items()):
            if any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or []):
                del self.objects[key]

    def foreground_delete(self, key: tuple) -> None:
        """propagationPolicy Foreground: the MPIJob or TrainJob stays, with a deletionTimestamp and the
        foregroundDeletion finalizer, until its dependents are gone (staging/src/k8s.io/apiserver/pkg/registry/generic/
        registry/store.go, pkg/controller/garbagecollector); the pods take their grace period (`sleep infinity` as
        PID 1 ignores SIGTERM, so the launcher takes all of it). A TrainJob's JobSet is owned with blockOwnerDeletion
        (kubeflow/trainer pkg/runtime/framework/plugins/jobset/jobset.go), so it blocks the same way."""
        obj = self.objects[key]
        obj["metadata"].update(deletionTimestamp=now_iso(), finalizers=["foregroundDeletion"])
        _, _, ns, name = key

        if obj["kind"] == "MPIJob":  # (a TrainJob's pods are not simulated; its JobSet goes with it below)
            self.delete_job_pods(ns, name)  # the garbage collector deletes the dependents at once, gracefully

        def collect() -> None:  # the pods' grace period is over: they go, then the owner
            for pod in self._job_pods(ns, name) if obj["kind"] == "MPIJob" else ():
                self.pod_gone(ns, pod["metadata"]["name"])
            self.objects.pop((BATCH, "jobs", ns, f"{name}-launcher"), None)
            self.objects.pop(key, None)
            self.collect_dependents(obj)

        self._later(self.grace_s, collect)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: FakeApiServer

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _send_json(self, code: int, body: dict, warnings: tuple[str, ...] | list[str] = ()) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for text in warnings:  # apiserver pkg/warning: `299 - "<text>"`, the text's quotes escaped
            self.send_header("Warning", "299 - " + json.dumps(text))
            self.server_state.warnings.append(text)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, reason: str, message: str) -> None:
        self._send_json(code, status_body(code, reason, message))

    def _body(self) -> dict:
        return json.loads(self._raw_body or b"{}")

    def _authorized(self, method: str, path: str, q: dict) -> bool:
        """Authentication, then RBAC, before any handler: a forbidden request is 403 even for an object (or a
        namespace) that does not exist (apiserver pkg/endpoints/filters/authorization.go)."""
        fake = self.server_state
        auth = self.headers.get("Authorization", "")
        self.user = fake.users.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if self.user is None:
            self._error(401, "Unauthorized", "Unauthorized")
            return False
        attrs = request_attributes(method, path, q)
        if attrs is None or all(allowed(self.user, attrs, fake.grants, verb) for verb in exec_verbs(attrs)):
            return True
        fake.denied.append((self.user, attrs))
        self._error(403, "Forbidden", attrs.denial(self.user))
        return False

    def _route(self, method: str) -> None:
        fake = self.server_state
        # Read the whole body first, whatever the answer: an unread body would corrupt the next keep-alive request.
        n = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(n) if n else b""
        parts = urlsplit(self.path)
        path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query)
        fake.requests.append((method, path, {k: v if len(v) > 1 else v[0] for k, v in query.items()}))
        q = {k: v[-1] for k, v in query.items()}
        if not self._authorized(method, path, q):
            return
        try:
            self._dispatch(method, path, q, query)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    # -- routes -----------------------------------------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, q: dict, query_lists: dict) -> None:
        fake = self.server_state
        if method == "POST" and path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            return self._access_review()
        if method == "GET" and path == "/openapi/v3/apis/trainer.kubeflow.org/v1alpha1" and fake.trainer_version:
            # OpenAPI v3 discovery of the served CRD (kube-openapi; names are the reversed group + kind). Trainer's
            # TrainJob has spec.activeDeadlineSeconds from v2.2.0 (kubeflow/trainer pkg/apis/trainer/v1alpha1).
            fields = {"runtimeRef": {}, "trainer": {}, "suspend": {}}
            if tuple(map(int, fake.trainer_version.split("."))) >= (2, 2):
                fields |= {"activeDeadlineSeconds": {"type": "integer"}, "runtimePatches": {}}
            trainjob = {"properties": {"spec": {"properties": fields}}}
            return self._send_json(
                200, {"components": {"schemas": {"org.kubeflow.trainer.v1alpha1.TrainJob": trainjob}}}
            )
        if method == "GET" and path == "/apis":
            groups = (
                [
                    {
                        "name": "kubeflow.org",
                        "versions": [{"groupVersion": f"kubeflow.org/{v}", "version": v} for v in fake.served_versions],
                    }
                ]
                if fake.served_versions
                else []
            )
            return self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if method == "GET" and path == "/apis/kubeflow.org":
            if not fake.served_versions:
                return self._error(404, "NotFound", "the server could not find the requested resource")
            versions = [{"groupVersion": f"kubeflow.org/{v}", "version": v} for v in fake.served_versions]
            return self._send_json(
                200,
                {
                    "kind": "APIGroup",
                    "apiVersion": "v1",
                    "name": "kubeflow.org",
                    "versions": versions,
                    "preferredVersion": versions[0],
                },
            )
        m = re.fullmatch(r"/apis/kubeflow\.org/([^/]+)", path)
        if method == "GET" and m:
            if m.group(1) not in fake.served_versions:
                return self._error(404, "NotFound", "the server could not find the requested resource")
            return self._send_json(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"kubeflow.org/{m.group(1)}",
                    "resources": [
                        {
                            "name": "mpijobs",
                            "singularName": "mpijob",
                            "namespaced": True,
                            "kind": "MPIJob",
                            "verbs": ["create", "delete", "get", "list"],
                        }
                    ],
                },
            )
        if method == "GET" and path == "/api/v1/nodes":
            return self._send_json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": fake.nodes})
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)
        if method == "GET" and m:
            if m.group(1) not in fake.namespaces:
                return self._error(404, "NotFound", f'namespaces "{m.group(1)}" not found')
            return self._send_json(200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": m.group(1)}})
        if path == "/api/v1/namespaces" and method == "POST":
            return self._create_namespace(q)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
        if method == "GET" and m:
            if q.get("watch") in ("true", "True", "1"):
                return self._watch_pods(m.group(1), q)
            return self._list_pods(m.group(1), q)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)(/exec|/log)?", path)
        if method == "GET" and m:
            ns, name, sub = m.groups()
            pod = fake.pods.get((ns, name))
            if pod is None:
                return self._error(404, "NotFound", f'pods "{name}" not found')
            if sub == "/log":
                data = fake.pod_logs.get(name, "").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None
            if sub == "/exec":
                return self._exec(ns, name, pod, query_lists)
            return self._send_json(200, pod)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/events", path)
        if method == "GET" and m:
            field = q.get("fieldSelector", "")
            want = field.split("=", 1)[1] if field.startswith("involvedObject.name=") else None
            items = [
                e
                for e in fake.events
                if e["metadata"]["namespace"] == m.group(1) and (want is None or e["involvedObject"]["name"] == want)
            ]
            return self._send_json(
                200,
                {
                    "kind": "EventList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(fake.rv)},
                    "items": items,
                },
            )
        # generic objects: /api/v1/namespaces/<ns>/<plural>[/<name>] and /apis/<g>/<v>/namespaces/<ns>/<plural>[/<name>]
        m = re.fullmatch(r"(/api/v1|/apis/[^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?", path)
        if m:
            return self._objects(method, m.group(1), m.group(2), m.group(3), m.group(4), q)
        m = re.fullmatch(r"(/apis/[^/]+/[^/]+)/([^/]+)", path)
        if m and method == "GET":  # cluster-wide list
            if not self._group_served(m.group(1)):
                return None
            items = [
                o for (base, plural, _ns, _n), o in fake.objects.items() if base == m.group(1) and plural == m.group(2)
            ]
            return self._send_json(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        return self._error(404, "NotFound", "the server could not find the requested resource")

    def _access_review(self) -> None:
        """SelfSubjectAccessReview: may the caller do spec.resourceAttributes? (pkg/registry/authorization/
        selfsubjectaccessreview/rest.go: the same authorizer as real requests.)"""
        body = self._body()
        ra = (body.get("spec") or {}).get("resourceAttributes") or {}
        resource = ra.get("resource", "") + (f"/{ra['subresource']}" if ra.get("subresource") else "")
        attrs = Attributes(
            ra.get("verb", ""), ra.get("group", ""), resource, ra.get("namespace", ""), ra.get("name", "")
        )
        body["status"] = {"allowed": allowed(self.user, attrs, self.server_state.grants)}
        return self._send_json(201, body)

    def _group_served(self, base: str) -> bool:
        """A group/version no CRD serves is 404 (the MPI Operator's per served_versions; Trainer's if installed)."""
        fake = self.server_state
        mpi_missing = base.startswith("/apis/kubeflow.org/") and base.rsplit("/", 1)[1] not in fake.served_versions
        if mpi_missing or (base.startswith("/apis/trainer.kubeflow.org/") and not fake.trainer_version):
            self._error(404, "NotFound", "the server could not find the requested resource")
            return False
        return True

    def _create_namespace(self, q: dict) -> None:
        fake = self.server_state
        schema = builtin_schema("v1", "Namespace", fake.kubernetes_release)
        body, warnings, refused = decode(self._body(), schema, q.get("fieldValidation"), builtin=True)
        if refused:
            return self._error(400, "BadRequest", refused)
        name = body.get("metadata", {}).get("name")
        if name in fake.namespaces:
            return self._error(409, "AlreadyExists", f'namespaces "{name}" already exists')
        if q.get("dryRun") != "All":
            fake.namespaces.add(name)
            fake.namespace_labels[name] = dict(body.get("metadata", {}).get("labels") or {})
        return self._send_json(201, body, warnings)

    def _objects(self, method: str, base: str, ns: str, plural: str, name: str | None, q: dict) -> None:
        fake = self.server_state
        if not self._group_served(base):
            return None
        if ns not in fake.namespaces:
            return self._error(404, "NotFound", f'namespaces "{ns}" not found')
        store = {k: v for k, v in fake.objects.items() if k[:3] == (base, plural, ns)}
        if method == "POST" and name is None:
            body = self._body()
            obj_name = body.get("metadata", {}).get("name", "")
            kind, warnings = body.get("kind", ""), []
            group, _, version = base.removeprefix("/apis/").partition("/")  # core kinds (/api/v1): no CRD schema
            schema = fake.crd_schemas.get((group, plural, version)) or crd_schema(group, plural, version)
            release = fake.kubernetes_release
            builtin = builtin_schema(body.get("apiVersion", ""), kind, release) if schema is None else None
            if (base.startswith("/apis/") and schema is not None) or builtin:  # decoding: before admission, validation
                body, warnings, refused = decode(
                    body, schema or builtin, q.get("fieldValidation"), builtin=bool(builtin)
                )
                if refused:
                    return self._error(400, "BadRequest", refused)
            if kind in ("MPIJob", "TrainJob"):  # both CRDs serve the status subresource: a create cannot set status
                body.pop("status", None)  # (apiextensions-apiserver pkg/registry/customresource/strategy.go,
                body.setdefault("metadata", {})["generation"] = 1  # PrepareForCreate)
            labels = (body.get("metadata") or {}).get("labels") or {}
            if fake.kueue and kind == "MPIJob" and "kueue.x-k8s.io/queue-name" in labels:
                # Kueue's mutating webhook (kueue v0.19.2 pkg/controller/jobs/mpijob/mpijob_webhook.go Default ->
                # jobframework.ApplyDefaultForSuspend): a job with a queue name is suspended until Kueue admits it.
                body["spec"].setdefault("runPolicy", {})["suspend"] = True
            elif fake.kueue and kind == "TrainJob" and (queue := labels.get("kueue.x-k8s.io/queue-name")):
                # Kueue's TrainJob webhook (kueue pkg/controller/jobs/trainjob/trainjob_webhook.go Default): suspend,
                # and the queue label copied into spec.labels (what the TrainJob's JobSet and pods get); Trainer's
                # controller then says "TrainJob is suspended" (_trainer_sync).
                body["spec"]["suspend"] = True
                body["spec"].setdefault("labels", {})["kueue.x-k8s.io/queue-name"] = queue
            # The CRD's structural schema is all the API server checks (the operator has no webhook): only a
            # missing spec.mpiReplicaSpecs (required there) is a 422; the operator's own rules become events.
            problem = self._invalid(body) if kind == "MPIJob" else None
            if problem:
                return self._send_json(
                    422, status_body(422, "Invalid", f'MPIJob.kubeflow.org "{obj_name}" is invalid: {problem}')
                )
            # RBAC's escalation check runs in the Role/RoleBinding storage's Create, before the create itself (and its
            # AlreadyExists): fake_rbac.escalation_refusal says which upstream files.
            role_of = lambda role_name: fake.objects.get((base, "roles", ns, role_name))  # noqa: E731
            if refusal := escalation_refusal(self.user, body, ns, fake.grants, role_of):
                code, message = refusal
                return self._error(code, "Forbidden" if code == 403 else "NotFound", message)
            if existing := fake.objects.get((base, plural, ns, obj_name)):
                # errors.NewAlreadyExists with the qualified resource; "object is being deleted: " while the old one
                # has a deletionTimestamp (apiserver pkg/registry/generic/registry/store.go, Create). A dry run is
                # refused the same way (pkg/registry/generic/registry/dryrun.go, Create).
                resource = f"{plural}.{group}" if group else plural
                going = "object is being deleted: " if existing["metadata"].get("deletionTimestamp") else ""
                message = f'{going}{resource} "{obj_name}" already exists'
                details = {"name": obj_name, "group": group, "kind": plural}
                return self._send_json(409, status_body(409, "AlreadyExists", message, details))
            if q.get("dryRun") == "All":
                if fake.reject_dry_run and kind == "MPIJob":
                    code = fake.reject_code
                    reason = {400: "BadRequest", 403: "Forbidden"}.get(code, "Invalid")
                    return self._send_json(code, status_body(code, reason, fake.reject_dry_run))
                return self._send_json(201, body, warnings)
            body.setdefault("metadata", {}).update(
                namespace=ns, uid=f"uid-{obj_name}", creationTimestamp=now_iso(), resourceVersion=fake._bump()
            )
            fake.objects[(base, plural, ns, obj_name)] = body
            created = copy.deepcopy(body)  # the reply is the object as stored; the operator writes status afterwards
            if kind == "MPIJob" and fake.scenario != "no_operator":
                fake._operator_sync(body)
            elif kind == "TrainJob":
                fake._trainer_sync(body)
            return self._send_json(201, created, warnings)
        if method == "GET" and name is None:
            return self._send_json(
                200,
                {
                    "kind": "List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(fake.rv)},
                    "items": list(store.values()),
                },
            )
        obj = fake.objects.get((base, plural, ns, name)) if name else None
        if obj is None:
            return self._error(404, "NotFound", f'{plural} "{name}" not found')
        if method == "GET":
            return self._send_json(200, obj)
        if method == "DELETE":
            options = self._body()
            fake.delete_bodies.append(options)
            if obj.get("kind") in ("MPIJob", "TrainJob") and options.get("propagationPolicy") == "Foreground":
                if "deletionTimestamp" not in obj["metadata"]:
                    fake.foreground_delete((base, plural, ns, name))
                # foreground: not deleted yet, so the object itself with its deletionTimestamp and 200 (202 only for
                # the deprecated orphanDependents=false): store.go Delete -> updateForGracefulDeletionAndFinalizers,
                # handlers/delete.go DeleteResource; a second DELETE answers the same
                return self._send_json(200, obj)
            del fake.objects[(base, plural, ns, name)]
            if obj.get("kind") == "MPIJob":  # background: the garbage collector removes the dependents afterwards
                fake.delete_job_pods(ns, name)
                fake.objects.pop((BATCH, "jobs", ns, f"{name}-launcher"), None)
            fake.collect_dependents(obj)
            # deleted at once: custom resources (and these kinds) do not set ReturnDeletedObject, so a Status with
            # Kind set to the resource (store.go, finalizeDelete), code 200 (pkg/endpoints/handlers/delete.go)
            group = base.removeprefix("/apis/").partition("/")[0] if base.startswith("/apis/") else ""
            details = {"name": name, "group": group, "kind": plural, "uid": obj["metadata"].get("uid", "")}
            return self._send_json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": details})
        return self._error(405, "MethodNotAllowed", method)

    @staticmethod
    def _invalid(job: dict) -> str | None:
        """The MPIJob CRD's structural schema (kubeflow.org_mpijobs.yaml): spec.mpiReplicaSpecs is required, and
        mpiImplementation is an enum (OpenMPI, Intel, MPICH)."""
        spec = job.get("spec") or {}
        if not isinstance(spec.get("mpiReplicaSpecs"), dict):
            return "spec.mpiReplicaSpecs: Required value"
        impl = spec.get("mpiImplementation", "OpenMPI")
        if impl not in ("OpenMPI", "Intel", "MPICH"):
            return f'spec.mpiImplementation: Unsupported value: "{impl}": supported values: "OpenMPI", "Intel", "MPICH"'
        return None

    def _pods_matching(self, ns: str, selector: str | None) -> list[dict]:
        return [
            p
            for (pns, _), p in self.server_state.pods.items()
            if pns == ns and matches_selector(p["metadata"].get("labels", {}), selector)
        ]

    def _list_pods(self, ns: str, q: dict) -> None:
        fake = self.server_state
        with fake.cond:
            items = copy.deepcopy(self._pods_matching(ns, q.get("labelSelector")))
            rv = str(fake.rv)
        fake.busy_cluster(fake.busy_after_list)  # after the list's resourceVersion was read, before the client's watch
        return self._send_json(
            200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}
        )

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch_pods(self, ns: str, q: dict) -> None:
        """A chunked stream of {"type", "object"} lines, from resourceVersion on, until timeoutSeconds (apiserver
        pkg/endpoints/handlers/get.go, ListResource: the watch ends at timeoutSeconds). No resourceVersion (or "0"):
        the current pods first as ADDED (pkg/storage/cacher/cacher.go, Watch). A resourceVersion older than the watch
        cache's window: 200 and one ERROR event carrying a Status 410 Expired, then the end (cacher.go, Watch:
        getAllEventsSinceLocked's error "must fail with a watch event of type ERROR" through newErrWatcher; etcd3's
        watcher.go answers a compacted revision the same way)."""
        fake = self.server_state
        selector = q.get("labelSelector")
        end = time.monotonic() + float(q.get("timeoutSeconds") or 30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        since = q.get("resourceVersion")
        if not since or since == "0":  # no resourceVersion: current state first, as ADDED
            with fake.cond:
                current = copy.deepcopy(self._pods_matching(ns, selector))
                last = fake.rv
            for pod in current:
                self._chunk(json.dumps({"type": "ADDED", "object": pod}).encode() + b"\n")
        else:
            last = int(since)
            with fake.cond:
                oldest = fake.oldest_watchable()
            if last < oldest:
                fake.expired_watches += 1
                status = status_body(410, "Expired", f"too old resource version: {last} ({oldest})")
                self._chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                end = 0.0
        while time.monotonic() < end:
            with fake.cond:
                fresh = [
                    (rv, t, p)
                    for rv, t, p in fake.history
                    if rv > last
                    and p["metadata"]["namespace"] == ns
                    and matches_selector(p["metadata"].get("labels", {}), selector)
                ]
                if not fresh:
                    fake.cond.wait(timeout=min(0.5, max(0.0, end - time.monotonic())))
                    continue
            for rv, kind, pod in fresh:
                self._chunk(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
                last = rv
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- exec over WebSocket ----------------------------------------------------------------------------------------
    def _exec(self, ns: str, pod_name: str, pod: dict, query: dict) -> None:
        fake = self.server_state
        if self.headers.get("Upgrade", "").lower() != "websocket":
            return self._error(400, "BadRequest", "Upgrade request required")
        if pod["status"].get("phase") != "Running":
            return self._error(400, "BadRequest", f"pod {pod_name} is not running")
        # API servers from 1.30 pick v5.channel.k8s.io when the client offers it (v4 otherwise): the server's
        # preference order in staging/src/k8s.io/apimachinery/pkg/util/remotecommand/constants.go
        # (SupportedStreamingProtocols) as negotiated by staging/src/k8s.io/apiserver/pkg/util/wsstream/conn.go.
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
        if protocol is None:
            return self._error(400, "BadRequest", "v5.channel.k8s.io or v4.channel.k8s.io subprotocol required")
        fake.exec_protocols.append(protocol)
        argv = query.get("command", [])
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

        job_name = pod["metadata"]["labels"].get("training.kubeflow.org/job-name", "")
        mounts = {CLUSTER_HOSTFILE: str(fake.root / ns / job_name / "etc-mpi" / "hostfile")}
        mounts |= fake.claim_mounts(ns, job_name, pod["metadata"]["labels"]["training.kubeflow.org/job-role"])
        # The kit's exec pidfile is in the container's /tmp, which goes with the pod; here it is this host's /tmp
        # (tests exec host paths under /tmp too): the fake removes it when the pod goes, as its processes are killed
        # before they remove it themselves.
        fake.pod_files.setdefault((ns, pod_name), set()).update(m for a in argv for m in POD_TMP_FILE.findall(a))
        cmd = [map_paths(a, mounts) for a in argv]
        env = {**os.environ, "LABKIT_PROCESS": "1", "LABKIT_FAKE_APISERVER": fake.root.name, "HOSTNAME": pod_name}
        env.update([fake.pod_tag(ns, pod_name).split("=", 1)])
        send_lock = threading.Lock()
        client_gone = threading.Event()

        def send(channel: int, data: bytes) -> None:
            if client_gone.is_set():
                return
            try:
                with send_lock:
                    self.wfile.write(ws_frame(bytes([channel]) + data))
                    self.wfile.flush()
            except OSError:
                client_gone.set()

        def read_client() -> None:
            while True:
                try:
                    frame = read_ws_frame(self.rfile)
                except OSError:
                    frame = None
                if frame is None or frame[0] == 8:
                    client_gone.set()
                    return

        threading.Thread(target=read_client, daemon=True).start()
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=fake.root,
                start_new_session=True,
            )
        except OSError as exc:
            send(
                3,
                json.dumps(
                    {
                        "metadata": {},
                        "status": "Failure",
                        "reason": "InternalError",
                        "message": f'failed to exec in container: exec: "{cmd[0]}": {exc.strerror}',
                    }
                ).encode(),
            )
            self._close_ws(send_lock)
            return
        fake.exec_procs.append(proc)

        def pump(stream, channel: int) -> None:
            for chunk in iter(lambda: stream.read1(4096), b""):
                send(channel, chunk)  # after the client left, keep draining so the command is never blocked

        readers = [
            threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True),
        ]
        for r in readers:
            r.start()
        code = proc.wait()
        code = 128 - code if code < 0 else code  # a signal's death as the runtime reports it (SIGKILL: 137)
        for r in readers:
            r.join(timeout=5)
        # channel 3 as the kubelet writes it (kubernetes staging/src/k8s.io/kubelet/pkg/cri/streaming/remotecommand/
        # exec.go, ServeExec): Success, or NonZeroExitCode with an ExitCode cause
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        send(3, json.dumps(status).encode())
        self._close_ws(send_lock)

    def _close_ws(self, lock: threading.Lock) -> None:
        try:
            with lock:
                self.wfile.write(ws_frame(b"\x03\xe8", opcode=8))
                self.wfile.flush()
        except OSError:
            pass

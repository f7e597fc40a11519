"""Reading what the Kubernetes API returns (an MPIJob's phase, a TrainJob's, a pod's readiness and problems, an error's
message), and the shell scripts an exec runs in the launcher."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from datetime import datetime
from typing import Any

from labkit.cluster import MPI_OPERATOR_FIX, TRAINJOB_VERSION
from labkit.errors import ConfigError, LabkitError
from labkit.jobs.base import FINISHED, JobNotFound, JobNotReady, JobStatus
from labkit.manifests.checks import KUBERNETES_VERSION, checkpoint_secret

MPIJOBS = "/apis/kubeflow.org/v2beta1"  # the MPI Operator's API group and version
TRAINJOBS = f"/apis/trainer.kubeflow.org/{TRAINJOB_VERSION}"  # Kubeflow Trainer's (read, deleted)
# The kinds render_all may produce (their resources: k8s_objects.resource_of); only Namespace is cluster-scoped.
KINDS = frozenset(
    "MPIJob PersistentVolumeClaim ConfigMap Secret ServiceAccount Service Namespace TrainJob LimitRange "
    "ResourceQuota Role RoleBinding NetworkPolicy".split()
)
# Runs the command in its own process group and records its pid, so that a second exec can stop the group.
EXEC_SCRIPT = (
    'if command -v setsid >/dev/null 2>&1; then setsid "$@" & else "$@" & fi; p=$!; echo $p > {pidfile}; '
    "wait $p; rc=$?; rm -f {pidfile}; exit $rc"
)
# `kill -s SIG -- -PGID` is the form every POSIX shell accepts (dash rejects `kill -TERM -- -PGID`).
KILL_SCRIPT = (
    "p=$(cat {pidfile} 2>/dev/null) || exit 0; kill -s TERM -- -$p 2>/dev/null || kill -s TERM $p; "
    "for i in 1 2 3 4 5 6 7 8 9 10; do kill -s 0 $p 2>/dev/null || break; sleep 0.5; done; "
    "kill -s KILL -- -$p 2>/dev/null; rm -f {pidfile}"
)
# Waiting reasons that never resolve by waiting longer.
FATAL_WAITING = frozenset(
    "ErrImagePull ImagePullBackOff InvalidImageName ErrImageNeverPull CreateContainerConfigError CreateContainerError "
    "CrashLoopBackOff RunContainerError".split()
)
# Events on an MPIJob or its launcher Job that mean its pods will never exist (kubeflow/mpi-operator v0.8.2,
# pkg/controller/mpi_job_controller.go): the operator's rule violations (ValidationError, syncHandler); a Service,
# ConfigMap, Secret or pod of the job's names that another owner holds (ErrResourceExists, getOrCreate*); a launcher
# pod refused by admission, recorded by the Job controller (FailedCreate).
FATAL_EVENTS = frozenset({"ValidationError", "ErrResourceExists", "FailedCreate"})
# A worker pod (or launcher Job) the API refused is recorded as MPIJobFailed "worker pod created failed: <error>"
# (getOrCreateWorker) and retried: final only when the API said no (403 Pod Security or quota, 422, a webhook's denial),
# not for a timeout or an unreachable etcd.
REFUSED = (" is forbidden: ", " is invalid: ", " denied the request")


def fatal_event(reason: str, message: str) -> bool:
    """Whether an event on an MPIJob or its launcher Job means its pods will never exist (waiting will not help)."""
    if reason == "MPIJobFailed":
        return "created failed: " in message and any(word in message for word in REFUSED)
    return reason in FATAL_EVENTS


LABEL_JOB, LABEL_ROLE = "training.kubeflow.org/job-name", "training.kubeflow.org/job-role"  # the operator's pod labels
# A TrainJob's pods: its JobSet's labels (jobset api/jobset/v1alpha2/jobset_types.go); the kit's runtime names its
# replicated jobs launcher and node.
LABEL_JOBSET, LABEL_REPLICATED_JOB = "jobset.sigs.k8s.io/jobset-name", "jobset.sigs.k8s.io/replicatedjob-name"
# An MPIJob's newest true condition as the job's phase.
PHASE_OF_CONDITION = dict(Created="Pending", Running="Running", Restarting="Running", Suspended="Pending")
# A TrainJob's true conditions as its phase, the first listed wins (DeadlineExceeded: a Failed with that reason).
TRAINJOB_PHASES = {"Complete": "Succeeded", "Failed": "Failed", "Suspended": "Pending"}


def job_command(verb: str, name: str, ns: str) -> str:
    """The CLI line for `verb` on this Kubernetes job, as a reader pastes it (the CLI's default backend is local)."""
    return f"labkit job {verb} {name} --backend kubernetes -n {ns}"


def api_message(exc: Exception) -> str:
    """The API server's own message from an ApiException body (a Status object), else the HTTP reason."""
    with contextlib.suppress(TypeError, ValueError):
        status = json.loads(getattr(exc, "body", None) or "{}")
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    return f"HTTP {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '') or exc}".strip()


def drain_exec(ws, on_output) -> None:
    """Pass on what an exec's stdout and stderr channels (1, 2) hold so far, without waiting. The client also keeps
    every frame in `ws._all` (kubernetes/stream/ws_client.py, WSClient.update; only read_all empties it, and that
    would drop the exit status of channel 3): emptied here, or a day-long run's output stays in memory."""
    for channel in (1, 2):
        text = ws.read_channel(channel, timeout=0)
        if text and on_output:
            on_output(text)
    kept = getattr(ws, "_all", None)
    if kept is not None and hasattr(kept, "truncate"):
        kept.seek(0)
        kept.truncate()


def create_error(
    kind: str, name: str, namespace: str, stage: str, status: int, message: str, terminating: bool = False
) -> LabkitError | None:
    """What the API server's refusal of a create (or its dry run) of the job's objects means, with the fix; None for
    one that costs the job nothing: an object jobs share that exists (the namespace, PVC, RBAC...: reused) or the lab
    identity's RBAC refused to a caller who is not cluster-admin. terminating: the job that exists is being deleted."""
    if status == 409 and terminating:
        status_line = job_command("status", name, namespace)
        fix = f"wait for it (`{status_line}` says not found once it is gone) or pick another name"
        return ConfigError("name", f"the {kind} named {name!r} in {namespace} is being deleted", fix)
    if (status == 409 and kind not in ("MPIJob", "Secret")) or lab_rbac_refused(kind, status, message):
        return None
    if status == 409:  # the job itself, or its checkpoint key Secret: never someone else's
        fix = f"delete it (`{job_command('delete', name, namespace)}`) or pick another name"
        fix = fix if kind == "MPIJob" else "wait a minute (an earlier job of that name is being deleted) or rename"
        return ConfigError("name", f"a {kind} named {name!r} already exists in {namespace}", fix)
    if status == 404 and "namespaces" in message:
        fix = f"create it (`kubectl create namespace {namespace}`) or pass an existing namespace"
        return ConfigError("namespace", message, fix)
    if status == 400 and (older := unknown_fields_error(kind, name, message)):
        return older
    if status in (400, 422):
        fix = "fix the field it names (labkit job render shows the manifest)"
        return ConfigError(f"manifest {kind}/{name}", f"rejected by the API server's {stage}: {message}", fix)
    return LabkitError(f"{stage} of {kind}/{name} failed: {message}")


def lab_rbac_refused(kind: str, status: int, message: str) -> bool:
    """Is this the API server refusing the lab identity's Role or RoleBinding (manifests/base: what the kit's
    ServiceAccount may do) to a caller who is not cluster-admin? A job does not need them (its pods get no API token).
    Kubernetes refuses a Role granting what the caller does not hold, also when it exists (the escalation check comes
    before AlreadyExists), and a RoleBinding to it; a binding's dry run cannot see a Role only dry-run created: 404
    (pkg/registry/rbac/role/policybased/storage.go, rolebinding/policybased/storage.go, validation/rule.go)."""
    escalation = status == 403 and "is attempting to grant RBAC permissions not currently held" in message
    missing_role = kind == "RoleBinding" and status == 404 and "roles.rbac.authorization.k8s.io" in message
    return kind in ("Role", "RoleBinding") and (escalation or missing_role)


def lab_rbac_note(refused: list[str], namespace: str) -> list[str]:
    """What a submit that was refused the lab identity's Role/RoleBinding tells the submitter (none when it was not)."""
    if not refused:
        return []
    return [
        f"{' and '.join(refused)} (what the lab's ServiceAccount may do) not created in {namespace}: you may not grant "
        "rights you do not hold. This job does not need them; for JupyterLab's own identity to submit jobs, a cluster "
        f"admin applies manifests/base for {namespace} (docs/instructor.md)"
    ]


def unknown_fields_error(kind: str, name: str, message: str) -> ConfigError | None:
    """The error for a create refused under fieldValidation=Strict because the cluster's schema lacks fields labkit
    sets (an MPI Operator older than v0.5 has no spec.launcherCreationPolicy). Without Strict the API server would
    drop them with only a warning header, and the job would run otherwise than asked. The message is the API server's
    400: 'KIND in version "V" cannot be handled as a KIND: strict decoding error: unknown field "spec.x", ...'
    (apiserver pkg/endpoints/handlers/rest.go transformDecodeError; apiextensions-apiserver customresource_handler.go
    schemaCoercingDecoder); None for any other message."""
    fields = re.findall(r'unknown field "([^"]+)"', message.partition("strict decoding error: ")[2])
    if not fields:
        return None
    owner, fix = {
        "MPIJob": ("the MPI Operator's MPIJob CRD", MPI_OPERATOR_FIX),
        "TrainJob": ("Kubeflow Trainer's TrainJob CRD", "install a newer Kubeflow Trainer v2 release"),
    }.get(kind, ("this cluster's Kubernetes", f"use a cluster of Kubernetes {KUBERNETES_VERSION} or newer"))
    problem = f"{owner} on this cluster has no {', '.join(fields)}: it is older than the {kind} labkit renders"
    return ConfigError(f"{kind}/{name} {fields[0]}", problem, fix)


def timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def mpijob_phase(obj: dict) -> tuple[str, str]:
    """(phase, message) from an MPIJob's status conditions: the newest true Succeeded or Failed, else the newest true
    condition. Terminal first: MPI Operator releases before v0.8.2 set Running=True again after Failed (a launcher pod
    still terminating counts as running: mpi_job_controller.go updateMPIJobStatus; kubeflow/mpi-operator#787)."""
    conds = [c for c in (obj.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    if not conds:
        return "Pending", "created, waiting for the operator"
    terminal = [c for c in conds if c.get("type") in ("Succeeded", "Failed")]
    last = sorted(terminal or conds, key=lambda c: c.get("lastTransitionTime") or "")[-1]
    kind, reason = last.get("type", ""), last.get("reason", "")
    if kind == "Failed" and "Deadline" in reason:
        return "DeadlineExceeded", last.get("message") or reason
    if kind == "Failed":  # the launcher Job's reason is the why (BackoffLimitExceeded); updateMPIJobFailedStatus
        # appends the last failed launcher pod's reason and message, empty ones too: "BackoffLimitExceeded/", "...: "
        reason, message = reason.rstrip("/"), (last.get("message") or "").rstrip(": ")
        return "Failed", f"{reason}: {message}" if reason and message and reason not in message else message or reason
    return PHASE_OF_CONDITION.get(kind, kind or "Pending"), last.get("message") or reason


def is_suspended(obj: dict) -> bool:
    """An MPIJob's spec.runPolicy.suspend, a TrainJob's spec.suspend: what Kueue's webhook sets on a queued job."""
    spec = obj.get("spec") or {}
    return bool(spec.get("suspend") if obj.get("kind") == "TrainJob" else (spec.get("runPolicy") or {}).get("suspend"))


def is_terminating(obj: dict | None) -> bool:
    """A job being deleted: foreground deletion keeps it (with a deletionTimestamp) until its pods are gone."""
    return bool(((obj or {}).get("metadata") or {}).get("deletionTimestamp"))


def suspended_note(namespace: str, name: str, kind: str = "MPIJob") -> str:
    """Why a suspended job has no pods (mpi_job_controller.go: isMPIJobSuspended skips the workers; Trainer suspends
    the TrainJob's JobSet) and who resumes it: Kueue's webhook suspends every job it manages until it admits it (kueue
    pkg/controller/jobs/mpijob/mpijob_webhook.go and jobs/trainjob/trainjob_webhook.go, Default)."""
    field, patch = ("spec.suspend", '{"spec":{"suspend":false}}') if kind == "TrainJob" else (
        "spec.runPolicy.suspend", '{"spec":{"runPolicy":{"suspend":false}}}')  # fmt: skip
    return (
        f"{kind} {namespace}/{name} is suspended ({field}: true), so it has no pods: a queue (Kueue) "
        f"resumes it when it admits it (kubectl -n {namespace} get workloads), else "
        f"kubectl -n {namespace} patch {kind.lower()} {name} --type merge -p '{patch}'"
    )


def event_lines(events: list, keep=None) -> list[str]:
    """The newest five events (those `keep(reason, message)` keeps, if given), one line each."""
    events = sorted((e for e in events if keep is None or keep(e.reason or "", e.message or "")),
                    key=lambda e: str(e.last_timestamp or e.event_time or ""))  # fmt: skip
    return [f"    event {e.type} {e.reason}: {e.message}" for e in events[-5:]]


def pod_ready(pod) -> bool:
    """Running and Ready, and not deleted: a terminating pod stays Running and Ready through its grace period, and
    whatever runs there dies when that ends."""
    if pod.status is None or pod.status.phase != "Running" or (pod.metadata and pod.metadata.deletion_timestamp):
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def launcher_ended(pod) -> bool:
    """A launcher pod that ended (Failed, Succeeded): its Job's controller replaces it while backoffLimit allows,
    else fails the Job, which the operator mirrors on the MPIJob (kubernetes pkg/controller/job/job_controller.go)."""
    role = (pod.metadata.labels or {}).get(LABEL_ROLE) if pod.metadata else None
    return role == "launcher" and pod.status is not None and pod.status.phase in ("Failed", "Succeeded")


def pod_problem(pod) -> tuple[str | None, bool]:
    """(why the pod is not running, whether waiting cannot help)."""
    st = pod.status
    if st is None:
        return "no status yet", False
    inits = {cs.name for cs in st.init_container_statuses or []}
    for cs in (st.init_container_statuses or []) + (st.container_statuses or []):
        waiting, terminated = (cs.state.waiting, cs.state.terminated) if cs.state else (None, None)
        if waiting and waiting.reason and waiting.reason not in ("ContainerCreating", "PodInitializing"):
            problem = f"container {cs.name}: {waiting.reason}: {waiting.message or ''}".strip()
            return problem, waiting.reason in FATAL_WAITING
        # An init container that finished stays terminated (exit 0, Completed) while the pod stays Pending until its
        # main containers start (kubelet_pods.go, getPhase): done, not dead. One that failed is retried unless the
        # pod is Failed.
        if terminated and cs.name in inits and terminated.exit_code == 0:
            continue
        if terminated and st.phase != "Running":
            hopeless = cs.name not in inits or st.phase == "Failed"
            return f"container {cs.name} exited {terminated.exit_code}: {terminated.reason or ''}".strip(), hopeless
    for cond in st.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return f"not scheduled: {cond.reason}: {cond.message or ''}".strip(), False
    if st.phase in ("Failed", "Succeeded"):
        return f"pod {st.phase}: {st.reason or ''} {st.message or ''}".strip(), True
    return (None if st.phase == "Running" else f"phase {st.phase}"), False


def resource_of(kind: str) -> str:
    """The API resource (plural) of a kind render_all produces: NetworkPolicy -> networkpolicies."""
    return kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + "s"


def object_path(obj: dict, namespace: str) -> str:
    """The collection URL an object is created in."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    if kind == "Namespace":
        return f"{base}/namespaces"
    return f"{base}/namespaces/{(obj.get('metadata') or {}).get('namespace') or namespace}/{resource_of(kind)}"


def exec_exit_code(raw: str | None) -> int:
    """The exit code from an exec's status channel (3): a Status object, its ExitCode cause when non-zero."""
    if not raw:
        raise LabkitError("exec stream closed without an exit status (connection lost?)")
    status = json.loads(raw)
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message"))
    # e.g. the executable does not exist: the runtime reports a message instead of an exit code
    raise LabkitError(f"exec failed: {status.get('message') or status}")


def launcher_deadline_exceeded(launcher: dict | None) -> str | None:
    """The message of the launcher Job's true DeadlineExceeded condition, else None. From Kubernetes 1.31 the Job
    controller first sets FailureTarget (deleting the launcher pod, the exec'd training with it) and Failed only once
    that pod is gone (pkg/controller/job/job_controller.go, delayTerminalCondition); the operator mirrors only
    Failed (isJobFailed), so for that while the MPIJob itself still says Running."""
    for cond in ((launcher or {}).get("status") or {}).get("conditions") or []:
        if cond.get("reason") == "DeadlineExceeded" and cond.get("status") == "True":
            return cond.get("message") or "DeadlineExceeded"
    return None


def mpijob_deadline(job: dict, launcher: dict | None, created: float | None) -> tuple[float | None, str]:
    """(deadline, note for a Pending job) of an MPIJob. The MPI Operator puts runPolicy.activeDeadlineSeconds on the
    launcher Job (kubeflow/mpi-operator pkg/controller/mpi_job_controller.go, newLauncherJob), so the deadline counts
    from the launcher's start; that Job exists only once every worker is Ready. A worker never Ready means no deadline
    at all while the scheduled workers hold accelerators: past what its deadline would have allowed since creation,
    such a job gets that deadline here (so `list --stale` flags it)."""
    if launcher is not None:
        deadline_s = (launcher.get("spec") or {}).get("activeDeadlineSeconds")
        started = timestamp((launcher.get("status") or {}).get("startTime"))
        return (started + float(deadline_s) if started and deadline_s else None), ""
    own = ((job.get("spec") or {}).get("runPolicy") or {}).get("activeDeadlineSeconds")
    if own and created and time.time() > created + float(own):
        return created + float(own), "; never started within its deadline (no launcher Job, so nothing will stop it)"
    return None, "; no deadline yet: it starts with the launcher, once every worker is Ready"


def mpijob_status(obj: dict, backend: str, namespace: str, pods: list | None = None, launcher=None) -> JobStatus:
    """An MPIJob in JobStatus words; ready when the launcher pod and every worker pod are Ready. launcher: the launcher
    Job, whose start the deadline counts from (the operator puts runPolicy's activeDeadlineSeconds on it); without it
    the job has no deadline running yet."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    phase, message = mpijob_phase(obj)
    ended = launcher_deadline_exceeded(launcher)
    if ended and phase in ("Pending", "Running"):  # the Job controller's FailureTarget: the operator lags behind
        phase, message = "DeadlineExceeded", ended
    if is_terminating(obj):
        phase, message = "Terminating", "deleted; its pods are stopping"
    st = JobStatus(meta.get("name", "?"), meta.get("namespace", namespace), backend, phase, message=message)
    st.created = timestamp(meta.get("creationTimestamp"))
    if launcher is not None or phase == "Pending":
        st.deadline, note = mpijob_deadline(obj, launcher, st.created)
        st.message += note
    st.workers = ((spec.get("mpiReplicaSpecs") or {}).get("Worker") or {}).get("replicas")
    st.slots_per_worker = spec.get("slotsPerWorker")
    if pods is not None:
        roles = [(p.metadata.labels or {}).get(LABEL_ROLE) for p in pods if pod_ready(p)]
        enough = "launcher" in roles and roles.count("worker") >= (st.workers or 0)
        st.ready = phase in ("Running", "Pending") and enough
        if st.ready:
            st.phase, st.message = "Running", f"launcher and {st.workers or 0} worker(s) ready"
    return st


def trainjob_status(obj: dict, backend: str) -> JobStatus:
    """A Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1) in JobStatus words, as Trainer itself reads it
    (kubeflow/trainer): finished = condition Complete or Failed true (pkg/util/trainjob/trainjob.go,
    IsTrainJobFinished); the deadline's Failed has reason DeadlineExceeded (pkg/apis/trainer/v1alpha1/
    trainjob_types.go); spec.activeDeadlineSeconds (Trainer >= 2.2) counts from creation, or from the last resume
    (condition Suspended false), and not while suspended (pkg/controller/trainjob_controller.go, reconcileDeadline).
    A TrainJob past that time and still unfinished is flagged (Trainer's controller did not act on it)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or [] if str(c.get("status")) == "True"}
    resumed = next((c for c in status.get("conditions") or [] if c.get("type") == "Suspended"), None)
    # JobSet counts a child Job active while any pod of it is pending or running, ready once all are Ready
    # (jobset pkg/controllers/jobset_controller.go, calculateReplicatedJobStatuses): running when every active one is.
    active, ready = (sum(int(j.get(k) or 0) for j in status.get("jobsStatus") or []) for k in ("active", "ready"))
    cond_type = next((t for t in TRAINJOB_PHASES if t in conds), None)
    phase = TRAINJOB_PHASES.get(cond_type) or ("Running" if active and ready >= active else "Pending")
    cond = conds[cond_type] if cond_type else {"message": f"{ready} of {active} active child Job(s) ready"}
    if cond_type == "Failed" and cond.get("reason") == "DeadlineExceeded":
        phase = "DeadlineExceeded"
    message = cond.get("message") or cond.get("reason") or ""
    if is_terminating(obj):  # foreground: its JobSet (owner reference blockOwnerDeletion) goes first
        phase, message = "Terminating", "deleted; its JobSet, Jobs and pods are stopping"
    elif is_suspended(obj) and phase not in FINISHED:  # Trainer's condition says only "TrainJob is suspended"
        message = suspended_note(meta.get("namespace", ""), meta.get("name", "?"), "TrainJob")
    st = JobStatus(meta.get("name", "?"), meta.get("namespace", ""), backend, phase, kind="TrainJob")
    st.message = message
    st.created = timestamp(meta.get("creationTimestamp"))
    deadline_s = spec.get("activeDeadlineSeconds")
    resumed_at = timestamp(resumed.get("lastTransitionTime")) if resumed and resumed.get("status") == "False" else None
    start = resumed_at or st.created
    if deadline_s and start and "Suspended" not in conds:
        st.deadline = start + float(deadline_s)
    trainer = spec.get("trainer") or {}
    st.workers, st.slots_per_worker = trainer.get("numNodes"), trainer.get("numProcPerNode")
    return st


def checkpoint_key_secret(job: str, owner: dict | None) -> dict:
    """The job's `<job>-checkpoint` Secret (labkit.checkpoint's key, mounted in its pods): a fresh random key, owned by
    the created MPIJob `owner` (None: for the dry run), so it goes with the job, as the operator's `<job>-ssh` does."""
    meta: dict[str, Any] = {"name": checkpoint_secret(job), "labels": {"app.kubernetes.io/part-of": "labkit"}}
    if owner:  # no blockOwnerDeletion: that would need update on mpijobs/finalizers
        ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": job, "uid": owner["metadata"]["uid"]}
        meta["ownerReferences"] = [ref]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "stringData": {"key": secrets.token_hex(32)}}  # fmt: skip


def diagnosis(name: str, namespace: str, pods: list, events_of, suspended: bool = False) -> str:
    """The pods' states and events, after the operator's own events (ValidationError, MPIJobFailed: e.g. a pod
    the namespace's Pod Security level refused, which the operator and the Job controller only record there).
    events_of(object name): the event lines about that object."""
    events = [*events_of(name), *events_of(f"{name}-launcher")]
    lines = [f"MPIJob {name}:", *events] if events else []
    if suspended:
        lines.append(suspended_note(namespace, name))
    elif not pods:
        lines.append(
            f"no pods for MPIJob {namespace}/{name} yet: is the MPI Operator running? "
            f"(kubectl -n mpi-operator get pods; kubectl -n {namespace} describe mpijob {name})"
        )
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        if pod_ready(pod):
            lines.append(f"pod {pod.metadata.name}: ready")
            continue
        lines.append(f"pod {pod.metadata.name}: {pod_problem(pod)[0] or 'not ready'}")
        lines += events_of(pod.metadata.name)
    return "\n".join(lines)


def hopeless_error(name: str, ns: str, st: JobStatus, pods: list, events_of, job_events: bool) -> JobNotReady | None:
    """Why waiting for this job cannot help (finished, deleted, a pod that cannot start, pods the operator was refused:
    `job_events` reads the job's events), as JobNotReady with the diagnosis; None while it may still become ready."""
    why = f"is {st.phase}: {st.message}" if st.phase in FINISHED else None
    why = "was deleted while waiting" if st.phase == "Terminating" else why
    for pod in pods:
        problem, fatal = pod_problem(pod)
        if fatal and why is None and not launcher_ended(pod):  # the job's phase says whether that one is final
            why = f"cannot start: pod {pod.metadata.name}: {problem}"
    if why is None and job_events:  # pods the operator could not create: waiting will not help
        refused = events_of(name, fatal_event) + events_of(f"{name}-launcher", fatal_event)
        why = f"cannot start:\n{refused[-1].strip()}" if refused and "not readable" not in refused[-1] else None
    return JobNotReady(f"MPIJob {ns}/{name} {why}\n" + diagnosis(name, ns, pods, events_of)) if why else None


def release_job(request, name: str, ns: str) -> str:
    """Delete a job a wait gave up on, unless suspended (queued: it holds nothing, keeps its place); what was done.
    request: KubernetesBackend._kubeflow_job."""
    again, note = f"`{job_command('delete', name, ns)}`", f"MPIJob {ns}/{name} "
    try:
        if is_suspended(obj := request("GET", ns, name)):
            return note + f"stays queued: wait again, or {again}"
        if not is_terminating(obj):
            request("DELETE", ns, name, body={"propagationPolicy": "Foreground"})
        return note + "was deleted, so it holds no accelerators: fix the cause and submit again"
    except LabkitError as err:
        return f"deleting it failed too ({err}): {again}"


def wait_gone(request, name: str, ns: str, seconds: float) -> bool:
    """Whether the job is gone within `seconds` (request: KubernetesBackend._kubeflow_job of its kind; 404:
    JobNotFound)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            request("GET", ns, name)
        except JobNotFound:
            return True
        time.sleep(0.5)
    return False

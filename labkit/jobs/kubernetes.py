"""KubernetesBackend: interactive MPIJobs (kubeflow.org/v2beta1, MPI Operator) through the official client.

submit:  render (validates the spec) -> API serves mpijobs.kubeflow.org/v2beta1? -> dry run of each object -> create
ready:   watch the job's pods (labels training.kubeflow.org/job-name, .../job-role) until the launcher and every
         worker are Running and Ready; fail fast on image pull errors; on timeout report each pod's reason and events
         and delete the job (it holds accelerators), unless it is suspended: queued (Kueue), it holds nothing.
exec:    kubernetes.stream; exit code from channel 3; under `setsid` and a pid file: an interrupt kills mpirun's group.
delete:  foreground propagation: the operator's Job, pods, Service, ConfigMap and Secret go with the MPIJob.
status, delete by name: the MPIJob or the TrainJob of that name, whichever exists (both: the caller says which).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

from labkit import cluster, kube, manifests, shared_volume
from labkit.devices import ACCELERATOR_OF, DEVICE_CHOICES
from labkit.errors import ConfigError, LabkitError, check_choice
from labkit.jobs import base, k8s_exec
from labkit.jobs.base import JOB_KINDS, Job, JobBackend, JobNotFound, JobNotReady, JobStatus, check_job_name, check_kind
from labkit.jobs.k8s_objects import (
    KINDS,
    LABEL_JOB,
    LABEL_JOBSET,
    LABEL_REPLICATED_JOB,
    LABEL_ROLE,
    MPIJOBS,
    TRAINJOBS,
    api_message,
    checkpoint_key_secret,
    create_error,
    diagnosis,
    event_lines,
    hopeless_error,
    is_suspended,
    is_terminating,
    lab_rbac_note,
    lab_rbac_refused,
    launcher_ended,
    mpijob_status,
    object_path,
    release_job,
    resource_of,
    trainjob_status,
    wait_gone,
)
from labkit.procs import interrupts_deferred

AUTO_WORKERS = 2  # worker pods when workers=0
DELETE_WAIT_S = 60.0  # foreground deletion: how long to wait for the pods to go


class KubernetesBackend(JobBackend):
    """MPIJobs on the cluster of your kubeconfig (kind, minikube, or a real GPU/Gaudi cluster with the MPI Operator)."""

    name = "kubernetes"
    one_host = False

    def __init__(self, kubeconfig=None, context=None, namespace=None, api_client=None, request_timeout=30.0):
        self.kubeconfig, self.context = kubeconfig, context
        self.namespace = namespace or manifests.default_namespace()  # None: the lab's own (kubectl's default too)
        self._api_client, self.request_timeout = api_client, request_timeout
        self._operator_checked = False
        self._access: dict[tuple, bool] = {}  # SelfSubjectAccessReview answers
        self._end: float | None = None  # a wait's deadline: no request may outlast it

    # -- API access ----------------------------------------------------------------------------------------------
    @property
    def api_client(self):
        if self._api_client is None:
            # no retries: 3 made one timeout cost four; a clear LabkitError without a configuration
            self._api_client = kube.load_client(self.kubeconfig, self.context, retries=False)
        return self._api_client

    def _timeout(self) -> float:  # request_timeout; within a wait what is left of it (at least 1 s)
        left = self.request_timeout if self._end is None else self._end - time.monotonic()
        return max(1.0, min(self.request_timeout, left))

    def _core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one API call; turn transport and HTTP errors into one LabkitError that says what failed."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", self._timeout())
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise JobNotFound(f"{what}: {api_message(exc)}") from None
            if exc.status == 401:  # who you are was refused: typically a workshop token that expired
                fix = "get a fresh kubeconfig (an expired token?) and try it with `kubectl get --raw /version`"
                raise LabkitError(f"{what}: the API server refused your credentials (401). Fix: {fix}") from None
            if exc.status == 403:  # what you asked was refused: the message names the verb and resource
                fix = f"ask an admin for that permission; `kubectl auth can-i --list -n {self.namespace}` lists yours"
                raise LabkitError(f"{what}: the API server refused it ({api_message(exc)}). Fix: {fix}") from None
            raise LabkitError(f"{what}: {api_message(exc)}") from None
        except HTTPError as exc:
            raise kube.unreachable(what, exc) from None

    def _rest(self, method: str, path: str, *, query=(), body=None, _request_timeout=None) -> Any:
        """One request to any API path (discovery, objects of any kind) with the client's auth; the JSON reply."""
        timeout = _request_timeout or self._timeout()
        return kube.request_json(self.api_client, method, path, query=query, body=body, timeout=timeout)

    def _kubeflow_job(self, method: str, ns: str, name: str = "", kind: str = "MPIJob", **kwargs) -> Any:
        """One request on MPIJobs (or TrainJobs): in namespace ns ('*': every namespace), or on the one named."""
        group, plural = (MPIJOBS, "mpijobs") if kind == "MPIJob" else (TRAINJOBS, "trainjobs")
        path = f"{group}/{plural}" if ns == "*" else f"{group}/namespaces/{ns}/{plural}" + (name and f"/{name}")
        return self._call(f"{method} {kind} {ns}/{name or '*'}", self._rest, method, path, **kwargs)

    def _pods(self, name: str, namespace: str, role: str | None = None, kind: str = "MPIJob"):
        job, part = (LABEL_JOB, LABEL_ROLE) if kind == "MPIJob" else (LABEL_JOBSET, LABEL_REPLICATED_JOB)
        selector = f"{job}={name}" + (f",{part}={role}" if role else "")
        list_pods = self._core().list_namespaced_pod
        return self._call(f"pods of {namespace}/{name}", list_pods, namespace, label_selector=selector)

    def allowed(self, verb: str, group: str, resource: str, namespace: str = "") -> bool:
        """Whether RBAC lets this identity do it: a SelfSubjectAccessReview, which every authenticated user may create.
        True when the review itself cannot be made (the real call then says what is wrong)."""
        key = (verb, group, resource, namespace)
        if key not in self._access:
            spec = {"resourceAttributes": dict(zip(("verb", "group", "resource", "namespace"), key))}
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec}
            try:
                reply = self._rest("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body)
                self._access[key] = bool((reply.get("status") or {}).get("allowed"))
            except Exception:  # noqa: BLE001 - see the docstring
                return True
        return self._access[key]

    def _readable_kinds(self, verb: str, namespace: str) -> list[str]:
        """The job kinds a lookup by name alone tries: TrainJobs only where this identity may read them. RBAC answers
        403 before 404, also where Kubeflow Trainer is not installed (a namespace admin without Trainer's rights)."""
        trainjobs = self.allowed(verb, TRAINJOBS.split("/")[2], "trainjobs", namespace)
        return list(JOB_KINDS) if trainjobs else [k for k in JOB_KINDS if k != "TrainJob"]

    def _may_create(self, obj: dict, namespace: str) -> bool:
        group = obj["apiVersion"].rpartition("/")[0]
        scope = "" if obj["kind"] == "Namespace" else (obj["metadata"].get("namespace") or namespace)
        return self.allowed("create", group, resource_of(obj["kind"]), scope)  # the resource its create goes to

    # -- what the cluster offers ---------------------------------------------------------------------------------
    def accelerator_for(self, device: str, workers: int, slots: int) -> tuple[str, int, str]:
        """auto: the accelerator most of the cluster's ready nodes offer (cpu when none or unreadable); workers 0:
        AUTO_WORKERS. The scheduler, not this check, judges whether the ranks fit."""
        value = check_choice("device", device.strip().lower() if isinstance(device, str) else device, DEVICE_CHOICES)
        auto = "" if workers else f"; workers 0 = automatic: {AUTO_WORKERS} worker pods"
        if value != "auto":
            return ACCELERATOR_OF[value], workers or AUTO_WORKERS, "requested" + auto
        kind, why = cluster.cluster_accelerator(self.api_client, may_list=self.allowed("list", "", "nodes"))
        return kind, workers or AUTO_WORKERS, why + auto

    def check_operator(self) -> None:
        """The API must serve mpijobs.kubeflow.org at v2beta1 (MPI Operator); cluster.py's verdict otherwise. Uses API
        discovery, which every authenticated user may read (reading the CRD itself needs cluster RBAC)."""
        if self._operator_checked:
            return
        served = [v for v in self._discover() if "mpijobs" in self._discover(v)]
        verdict = cluster.mpijob_problem(served or None)  # None: no MPIJob API at all
        if verdict:
            raise LabkitError(f"{verdict[0]}. Fix: {verdict[1]}")
        self._operator_checked = True

    def _discover(self, version: str = "") -> list[str]:
        """The kubeflow.org group's versions, or with a version the resources it serves; [] when not served."""
        path = "/apis/kubeflow.org" + (version and f"/{version}")
        try:
            found = self._call(f"discover {path}", self._rest, "GET", path) or {}
        except JobNotFound:
            return []
        key, field = ("resources", "name") if version else ("versions", "version")
        return [entry.get(field) for entry in found.get(key, [])]

    # -- submit ----------------------------------------------------------------------------------------------------
    def submit(self, spec: manifests.JobSpec) -> Job:
        objs = manifests.render_all(spec)
        unknown = [obj.get("kind") for obj in objs if obj.get("kind") not in KINDS]  # render_all validated the rest
        if unknown:
            fix = f"render only {', '.join(sorted(KINDS))}"
            raise ConfigError("manifest", f"kind {unknown[0]!r} is not one this backend creates", fix)
        self.check_operator()
        ns = spec.namespace
        if not self.allowed("create", "kubeflow.org", "mpijobs", ns):
            lab, render = spec.lab(), f"labkit manifests render --accelerator {spec.accelerator} --namespace {ns}"
            if spec.accelerator == "gaudi":  # its RoleBinding names the lab that submits there
                fix = f"ask an admin to run `{render} --lab-namespace {lab} --no-job | kubectl apply -f -`"
            elif ns == lab:  # the lab's own namespace, never set up: its RoleBinding names the lab's ServiceAccount
                fix = f"ask an admin to run `{render} --no-job | kubectl apply -f -`"
            else:  # a cpu/nvidia namespace's Role is bound to the lab in it, never to another lab
                fix = f"submit in your lab's, {lab} (leave -n out), or use a lab of {ns}'s own (docs/security.md)"
            fix = f"use the namespace your Role is bound in: {fix}"
            raise ConfigError("namespace", f"you may not create MPIJobs in namespace {ns}", fix)
        # Shared objects (namespace, PVC, RBAC) are created only by who may; for a namespaced identity an admin applied
        # them once (manifests/base). Asking first keeps every call inside the kit's Role (RBAC answers 403 first).
        objs = [o for o in objs if o["kind"] == "MPIJob" or self._may_create(o, ns)]
        # The namespace first, for real (a dry run inside a missing namespace fails); then everything else through a
        # server-side dry run (admission, quotas, the live CRD schema), so a rejected job leaves nothing half-created.
        # The job last: what it needs (PVC, ConfigMap, policies, in the lab its folder) exists before its pods are asked
        # for; then its own checkpoint key, owned by it (collected with it). One that exists (planted?) is refused.
        shared_volume.make_job_folder(spec.name, ns, spec.pvc_name)
        namespaced = sorted((o for o in objs if o["kind"] != "Namespace"), key=lambda o: o["kind"] == "MPIJob")
        steps = [(o, dry) for o in objs if o["kind"] == "Namespace" for dry in (True, False)]
        refused: list[str] = []
        for obj, dry_run in steps + [(o, True) for o in namespaced] + [(o, False) for o in namespaced]:
            created = self._create(obj, ns, dry_run=dry_run, refused=refused)
            if obj["kind"] == "MPIJob":
                key = checkpoint_key_secret(obj["metadata"]["name"], None if dry_run else created)
                try:
                    self._create(key, ns, dry_run=dry_run)
                except BaseException as exc:  # the job exists by now: its pods would start (and hold devices)
                    if not dry_run:
                        self.delete(spec.name, namespace=ns, kind="MPIJob")  # its pods too, waited for
                    if dry_run or not isinstance(exc, LabkitError):
                        raise
                    raise LabkitError(f"{exc}; so MPIJob {ns}/{spec.name} was deleted again: submit it again") from exc
        return Job(self, spec.name, spec.namespace, notes=lab_rbac_note(refused, ns))

    def _create(self, obj: dict, namespace: str, *, dry_run: bool, refused: list[str] | None = None) -> dict | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kind, name = obj["kind"], obj["metadata"]["name"]
        # Strict: a field the cluster's schema lacks is refused, not dropped with a warning header (the default).
        stage, query = ("server-side dry run", [("dryRun", "All")]) if dry_run else ("create", [])
        query = [*query, ("fieldValidation", "Strict")]
        try:
            return self._rest("POST", object_path(obj, namespace), query=query, body=obj)
        except HTTPError as exc:
            raise kube.unreachable(f"{stage} of {kind}/{name}", exc) from None
        except ApiException as exc:
            status, msg = exc.status, api_message(exc)
        if status == 409 and kind == "ConfigMap":  # the proxy settings: reused only when they are the same
            current = self._rest("GET", f"{object_path(obj, namespace)}/{name}") or {}
            if current.get("data") != obj.get("data"):
                fix = f"pass the same proxy settings, or first `kubectl -n {namespace} delete configmap {name}`"
                raise ConfigError("http_proxy", f"ConfigMap {namespace}/{name} holds other proxy settings", fix)
        going = False  # a job of that name being deleted (foreground: until its pods are gone) is waited for
        with contextlib.suppress(LabkitError):
            going = status == 409 and kind == "MPIJob" and is_terminating(self._kubeflow_job("GET", namespace, name))
        if error := create_error(kind, name, namespace, stage, status, msg, going):
            raise error
        if refused is not None and not dry_run and lab_rbac_refused(kind, status, msg):
            refused.append(f"{kind}/{name}")
        return None  # an object jobs share that exists (reused), or the lab's RBAC refused to a namespace admin

    # -- status ----------------------------------------------------------------------------------------------------
    def _launcher_job(self, name: str, ns: str) -> dict | None:
        """The operator's batch/v1 Job `<name>-launcher`: None before every worker is Ready (WaitForWorkersReady)
        and after its ttlSecondsAfterFinished."""
        path = f"/apis/batch/v1/namespaces/{ns}/jobs/{name}-launcher"
        with contextlib.suppress(JobNotFound):
            return self._call(f"launcher Job of {ns}/{name}", self._rest, "GET", path)
        return None

    def _find(self, name: str, ns: str, kind: str | None = None) -> tuple[str, dict]:
        """(kind, object) of the job of that name and kind; with None the MPIJob or the TrainJob, never a guess."""
        kinds, found = ([kind] if check_kind(kind) else self._readable_kinds("get", ns)), {}
        for each in kinds:
            with contextlib.suppress(JobNotFound):  # also where that kind's API is not installed (404)
                found[each] = self._kubeflow_job("GET", ns, name, kind=each)
        if not found:
            raise JobNotFound(f"no {' or '.join(kinds)} named {name!r} in namespace {ns}")
        if len(found) > 1:
            problem = f"an MPIJob and a TrainJob are both named {name!r} in namespace {ns}"
            raise ConfigError("kind", problem, "say which: --kind MPIJob or --kind TrainJob (Python: kind=)")
        return next(iter(found.items()))

    def status(self, name: str, *, namespace: str | None = None, kind: str | None = None) -> JobStatus:
        ns = namespace or self.namespace
        kind, obj = self._find(check_job_name(name), ns, kind)
        if kind == "TrainJob":
            return trainjob_status(obj, self.name)
        return mpijob_status(obj, self.name, self.namespace, self._pods(name, ns).items, self._launcher_job(name, ns))

    def list(self, *, namespace: str | None = None) -> list[JobStatus]:
        """MPIJobs, then TrainJobs (none where Kubeflow Trainer is not installed, its API answering 404, or where this
        identity may not read them)."""
        ns = namespace or self.namespace
        found = [(o, o["metadata"]) for o in self._kubeflow_job("GET", ns).get("items", [])]
        jobs = [
            mpijob_status(o, self.name, self.namespace, None, self._launcher_job(m["name"], m["namespace"]))
            for o, m in found
        ]
        trainjobs = []
        with contextlib.suppress(JobNotFound):
            if "TrainJob" in self._readable_kinds("list", "" if ns == "*" else ns):
                trainjobs = self._kubeflow_job("GET", ns, kind="TrainJob").get("items", [])
        return jobs + [trainjob_status(o, self.name) for o in trainjobs]

    # -- readiness -------------------------------------------------------------------------------------------------
    def _events(self, namespace: str, involved: str, keep=None) -> list[str]:
        """The newest events about one object (`keep(reason, message)` filters) as lines (one if none are readable)."""
        selector, list_events = f"involvedObject.name={involved}", self._core().list_namespaced_event
        try:
            events = self._call("events", list_events, namespace, field_selector=selector).items
        except LabkitError as exc:
            return [f"    (events not readable: {exc})"]
        return event_lines(events, keep)

    def _raise_if_hopeless(self, name: str, ns: str, st: JobStatus, pods: list, job_events: bool = False) -> None:
        if error := hopeless_error(name, ns, st, pods, functools.partial(self._events, ns), job_events):
            raise error

    def wait_ready(self, name: str, *, timeout: float = 300.0, namespace: str | None = None) -> JobStatus:
        """Watch the job's pods until launcher and workers are Ready; JobNotReady says why otherwise, within
        timeout, and the job is then deleted (also on an interrupt): a worker that never becomes Ready means no
        launcher Job, hence no deadline, while the scheduled workers hold their accelerators."""
        ns, name = namespace or self.namespace, check_job_name(name)
        self._end = time.monotonic() + timeout
        try:
            return self._wait_ready(name, timeout, ns)
        except JobNotFound:
            raise JobNotReady(f"MPIJob {ns}/{name} was deleted while waiting") from None
        except BaseException as exc:
            if type(exc) is LabkitError and time.monotonic() >= self._end:  # a request the deadline cut short
                exc = JobNotReady(f"MPIJob {ns}/{name} not ready after {timeout:.0f} s: {exc}")
            self._end = time.monotonic() + 5  # a hung server: seconds, not request_timeout, for the cleanup
            with interrupts_deferred():
                note = release_job(self._kubeflow_job, name, ns)
            if isinstance(exc, JobNotReady):
                raise JobNotReady(f"{exc}\n{note}") from None
            raise
        finally:
            self._end = None

    def _wait_ready(self, name: str, timeout: float, ns: str) -> JobStatus:
        from kubernetes import watch

        end = time.monotonic() + timeout
        while True:
            obj = self._kubeflow_job("GET", ns, name)
            listing = self._pods(name, ns)
            pods = {p.metadata.name: p for p in listing.items}
            st = mpijob_status(obj, self.name, self.namespace, list(pods.values()))
            if st.ready:
                return self.status(name, namespace=ns, kind="MPIJob")
            # the operator refused pods? its events (in time); a launcher that ended: replaced, or the job failed
            some_missing = sum(not launcher_ended(p) for p in pods.values()) < (st.workers or 1) + 1
            self._raise_if_hopeless(name, ns, st, list(pods.values()), some_missing and time.monotonic() < end)
            remaining = end - time.monotonic()
            if remaining <= 0:
                why = diagnosis(name, ns, list(pods.values()), functools.partial(self._events, ns), is_suspended(obj))
                raise JobNotReady(f"MPIJob {ns}/{name} not ready after {timeout:.0f} s:\n{why}")
            # Watch from the listing's resourceVersion: no change is missed between list and watch.
            w = watch.Watch()
            window = min(remaining, 3 if some_missing else 30)
            try:
                for event in w.stream(
                    self._core().list_namespaced_pod, ns, label_selector=f"{LABEL_JOB}={name}",
                    resource_version=listing.metadata.resource_version, timeout_seconds=max(1, int(window)),
                    _request_timeout=window + 1,
                ):  # fmt: skip
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    pod = event["object"]
                    if pod.metadata.deletion_timestamp:
                        break  # pods going: list again, which reads the job (deleted?)
                    pods[pod.metadata.name] = pod
                    if event["type"] == "DELETED":
                        del pods[pod.metadata.name]
                    elif launcher_ended(pod):
                        break  # list again, which reads the job (failed?) and then watches in short windows
                    st = mpijob_status(obj, self.name, self.namespace, list(pods.values()))
                    if st.ready:
                        return self.status(name, namespace=ns, kind="MPIJob")
                    self._raise_if_hopeless(name, ns, st, list(pods.values()))
                    if time.monotonic() > end:
                        break
            except LabkitError:
                raise
            except Exception:  # a dropped watch, or 410 Expired (the client raises it: timeout_seconds turns off its
                time.sleep(0.5)  # own retry, kubernetes/watch/watch.py): list again, the deadline still bounds us
            finally:
                w.stop()

    # -- exec (labkit/jobs/k8s_exec.py) ------------------------------------------------------------------------------
    def exec(self, name: str, argv: list[str], *, on_output=base.print_output, timeout=None, namespace=None) -> int:
        base.check_exec_args(argv, timeout)
        return k8s_exec.run(self, name, namespace or self.namespace, argv, on_output, timeout)

    # -- logs, delete ----------------------------------------------------------------------------------------------
    def logs(self, name: str, *, namespace: str | None = None) -> str:
        ns = namespace or self.namespace  # an MPIJob's launcher, else a TrainJob's (Trainer's JobSet labels)
        pods = self._pods(name, ns, "launcher").items or self._pods(name, ns, "launcher", "TrainJob").items
        if not pods:
            raise JobNotFound(f"no launcher pod of an MPIJob or TrainJob named {name!r} in namespace {ns}")
        pod, read = pods[0], self._core().read_namespaced_pod_log
        container = pod.spec.containers[0].name
        return self._call(f"logs of {pod.metadata.name}", read, pod.metadata.name, ns, container=container)

    def delete(self, name: str, *, namespace: str | None = None, kind: str | None = None) -> bool:
        """Foreground: an MPIJob's pods go first, a TrainJob's JobSet, Jobs and pods; the job is waited for
        (DELETE_WAIT_S: status then says whether it is still Terminating)."""
        ns, name = namespace or self.namespace, check_job_name(name)
        try:
            kind = check_kind(kind) or self._find(name, ns)[0]
            self._kubeflow_job("DELETE", ns, name, kind=kind, body={"propagationPolicy": "Foreground"})
        except JobNotFound:
            return False
        wait_gone(functools.partial(self._kubeflow_job, kind=kind), name, ns, DELETE_WAIT_S)  # once its pods went
        return True

"""Exec in an MPIJob's launcher pod over the API server's websocket: stream the output, stop the command when the
caller stops (closing the stream leaves it running: a second exec kills its process group), say how it ended.

Functions of a KubernetesBackend (its API access); kubernetes.py delegates its exec here."""

from __future__ import annotations

import contextlib
import time
import uuid

from labkit import launch
from labkit.errors import LabkitError
from labkit.jobs import base
from labkit.jobs.base import JobNotFound, JobNotReady
from labkit.jobs.k8s_objects import (
    EXEC_SCRIPT,
    KILL_SCRIPT,
    LABEL_JOB,
    drain_exec,
    exec_exit_code,
    launcher_deadline_exceeded,
    pod_ready,
)
from labkit.procs import interrupts_deferred


def launcher_pod(backend, name: str, ns: str):
    pods = [p for p in backend._pods(name, ns, "launcher").items if pod_ready(p)]
    if not pods and backend._pods(name, ns, kind="TrainJob").items:
        raise JobNotReady(f"{ns}/{name} is a TrainJob: Trainer runs its command once, there is no launcher to "
                          f"exec in (exec is for MPIJobs); `labkit job logs {name}` shows its output")  # fmt: skip
    if not pods:
        see = f"kubectl -n {ns} get pods -l {LABEL_JOB}={name}"
        raise JobNotReady(f"MPIJob {ns}/{name} has no ready launcher pod: wait_ready() first ({see})")
    return pods[0]


def open_stream(backend, pod, ns: str, argv: list[str], *, preload: bool):
    from kubernetes.stream import stream

    options = dict(stdout=True, stderr=True, stdin=False, tty=False, _preload_content=preload)
    return stream(
        backend._core().connect_get_namespaced_pod_exec, pod.metadata.name, ns, command=argv,
        container=pod.spec.containers[0].name, _request_timeout=(backend.request_timeout if preload else None),
        **options,
    )  # fmt: skip


def run(backend, name: str, ns: str, argv: list[str], on_output, timeout) -> int:
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream.ws_client import ERROR_CHANNEL

    pod = launcher_pod(backend, name, ns)
    pidfile = f"/tmp/labkit-exec-{uuid.uuid4().hex[:12]}.pid"
    try:
        script = EXEC_SCRIPT.format(pidfile=pidfile)
        ws = open_stream(backend, pod, ns, ["sh", "-c", script, "labkit-exec", *argv], preload=False)
    except ApiException as exc:
        raise LabkitError(f"exec in {pod.metadata.name} failed to start: {exc.reason}") from None
    end = None if timeout is None else time.monotonic() + timeout
    tail = base.OutputTail(on_output)
    try:
        while ws.is_open():
            ws.update(timeout=0.5)
            drain_exec(ws, tail)
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"exec in {name} timed out after {timeout} s: {argv[0]} and its ranks were stopped")
        drain_exec(ws, tail)
        raw = ws.read_channel(ERROR_CHANNEL)
    except BaseException:
        # Interrupt/timeout: closing the stream leaves the process running in the pod: stop its group explicitly.
        with interrupts_deferred():
            try:
                ws.close()
            finally:
                with contextlib.suppress(Exception):  # best effort; the job's deadline still bounds it
                    open_stream(backend, pod, ns, ["sh", "-c", KILL_SCRIPT.format(pidfile=pidfile)], preload=True)
        raise
    return exec_end(backend, name, ns, pod.metadata.name, argv, tail.text(), raw, on_output or (lambda _: None))


def exec_end(backend, name: str, ns: str, pod: str, argv: list[str], output: str, raw: str | None, say) -> int:
    """The exit code; a failure also gets its one line on why (said, EXEC_TAG first): the deadline or a deletion
    (the launcher pod went, the exec with it: 137, or no status at all), else the first failed rank, its error."""
    try:
        code, lost = exec_exit_code(raw), None
    except LabkitError as exc:  # no exit status: the connection or the pod is gone
        code, lost = 137, exc
    if not code:
        return 0
    # SIGKILL, SIGTERM or no status: perhaps the pod going (deadline, deletion); not if it stays (the OOM killer)
    killed = (lost is not None or code in (137, 143)) and not pod_stays(backend, name, ns, pod)
    launcher = ended = None
    for attempt in range(6 if killed else 1):  # the Job controller records it as it deletes the pod: allow 3 s
        if attempt:
            time.sleep(0.5)
        with contextlib.suppress(LabkitError):
            launcher = backend._launcher_job(name, ns)
        if ended := launcher_deadline_exceeded(launcher):
            break
    if ended:
        seconds = (launcher.get("spec") or {}).get("activeDeadlineSeconds")
        why = launch.deadline_text(float(seconds)) if seconds else f"stopped by its deadline: {ended}"
    elif killed and deleted(backend, name, ns):
        why = f"stopped: MPIJob {ns}/{name} was deleted while it ran"
    elif lost is not None:
        raise lost
    else:
        why = launch.describe_failure(output, code) if launch.starts_ranks(argv) else ""
    if why:
        say(f"{base.EXEC_TAG}{why}\n")
    return code


def pod_stays(backend, name: str, ns: str, pod: str) -> bool:
    with contextlib.suppress(LabkitError):  # terminating pods have a deletionTimestamp; deleted ones are not listed
        launchers = backend._pods(name, ns, "launcher").items
        return any(p.metadata.name == pod and not p.metadata.deletion_timestamp for p in launchers)
    return False


def deleted(backend, name: str, ns: str) -> bool:
    with contextlib.suppress(JobNotFound):  # gone, or going (foreground deletion: its pods first)
        return bool(backend._kubeflow_job("GET", ns, name)["metadata"].get("deletionTimestamp"))
    return True

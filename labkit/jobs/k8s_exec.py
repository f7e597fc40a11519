"""Exec in an MPIJob's launcher pod over the API server's websocket: stream the output, stop the command when the
caller stops (closing the stream leaves it running: a second exec kills its process group), say how it ended.

Functions of a KubernetesBackend (its API access); kubernetes.py delegates its exec here."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

from labkit import launch
from labkit.errors import LabkitError
from labkit.jobs import base
from labkit.jobs.base import FINISHED, JobNotFound, JobNotReady
from labkit.jobs.k8s_objects import (
    EXEC_SCRIPT,
    KILL_SCRIPT,
    LABEL_JOB,
    drain_exec,
    exec_exit_code,
    is_terminating,
    job_command,
    launcher_deadline_exceeded,
    pod_ready,
)
from labkit.procs import interrupts_deferred

KILL_LIMIT_S = 10.0  # the kill exec's whole run (KILL_SCRIPT waits up to 5 s for SIGTERM to work)


def bounded(fn, limit: float, what: str):
    """fn() in a daemon thread, given up on after `limit` s: a websocket handshake has no timeout of its own (the
    client's connect takes none), so a hung API server would block it, and every signal with it, forever."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"labkit {what}")
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise LabkitError(f"{what}: the API server did not answer within {limit:.0f} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def launcher_pod(backend, name: str, ns: str):
    """The ready launcher pod; else why there is none, in the job's words (it does not exist, its phase)."""
    launchers = backend._pods(name, ns, "launcher").items
    if pods := [p for p in launchers if pod_ready(p)]:
        return pods[0]
    if going := [p.metadata.name for p in launchers if p.metadata.deletion_timestamp]:
        raise JobNotReady(f"launcher pod {going[0]} is terminating (deleted or evicted): an exec there would end with "
                          f"it; `{job_command('status', name, ns)}` says whether the job goes too")  # fmt: skip
    if backend._pods(name, ns, kind="TrainJob").items:
        logs = job_command("logs", name, ns)
        raise JobNotReady(f"{ns}/{name} is a TrainJob: Trainer runs its command once, there is no launcher to "
                          f"exec in (exec is for MPIJobs); `{logs}` shows its output")  # fmt: skip
    st = backend.status(name, namespace=ns, kind="MPIJob")  # JobNotFound where there is no such MPIJob
    why = st.phase + (f": {st.message}" if st.message else "")
    if st.phase in FINISHED:  # its launcher Job ended: no pod of it will be ready again
        delete = job_command("delete", name, ns)
        raise JobNotReady(f"MPIJob {ns}/{name} is {why}: it runs nothing any more; `{delete}`, then submit it again")
    raise JobNotReady(
        f"MPIJob {ns}/{name} has no ready launcher pod ({why}): `{job_command('status', name, ns)}` says more; "
        f"`labkit job submit --backend kubernetes --wait` waits for its pods "
        f"(kubectl -n {ns} get pods -l {LABEL_JOB}={name})"
    )


def open_stream(backend, pod, ns: str, argv: list[str]):
    from kubernetes.stream import stream

    return stream(
        backend._core().connect_get_namespaced_pod_exec, pod.metadata.name, ns, command=argv,
        container=pod.spec.containers[0].name, stdout=True, stderr=True, stdin=False, tty=False,
        _preload_content=False,
    )  # fmt: skip


def run(backend, name: str, ns: str, argv: list[str], on_output, timeout) -> int:
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream.ws_client import ERROR_CHANNEL
    from websocket import WebSocketException

    pod = launcher_pod(backend, name, ns)
    where = pod.metadata.name
    pidfile = f"/tmp/labkit-exec-{uuid.uuid4().hex[:12]}.pid"
    command = ["sh", "-c", EXEC_SCRIPT.format(pidfile=pidfile), "labkit-exec", *argv]
    try:
        ws = bounded(lambda: open_stream(backend, pod, ns, command), backend.request_timeout, f"exec in {where}")
    except ApiException as exc:
        raise LabkitError(f"exec in {where} failed to start: {exc.reason}") from None
    end = None if timeout is None else time.monotonic() + timeout
    sink_failed: list[BaseException] = []  # on_output's own error (`| head`: BrokenPipeError), not the network's

    def say(text: str) -> None:
        try:
            on_output(text)
        except BaseException as exc:
            sink_failed.append(exc)
            raise

    tail = base.OutputTail(say if on_output else None)
    timed_out = False
    try:
        while ws.is_open() and not timed_out:
            ws.update(timeout=0.5)
            drain_exec(ws, tail)
            timed_out = end is not None and time.monotonic() > end
        drain_exec(ws, tail)
        raw = ws.read_channel(ERROR_CHANNEL)
    except BaseException as exc:
        if isinstance(exc, (WebSocketException, OSError)) and not sink_failed:  # the API server or the network went
            raise LabkitError(
                f"exec in {ns}/{name} lost its connection to the API server ({exc or type(exc).__name__}): {argv[0]} "
                f"may still run in launcher pod {where}; `{job_command('delete', name, ns)}` stops it"
            ) from None
        stop(backend, ws, pod, ns, pidfile)  # an interrupt, or a sink that failed: nobody reads the output any more
        raise
    if timed_out:
        if not (failed := stop(backend, ws, pod, ns, pidfile)):
            raise TimeoutError(f"exec in {name} timed out after {timeout} s: {argv[0]} and its ranks were stopped")
        raise TimeoutError(
            f"exec in {name} timed out after {timeout} s; stopping {argv[0]} could not be confirmed ({failed}): it may "
            f"still run in launcher pod {where}; `{job_command('delete', name, ns)}` stops it"
        )
    said = on_output or (lambda _: None)
    return exec_end(backend, name, ns, where, argv, tail.text(), raw, said, restarts=restart_count(pod))


def stop(backend, ws, pod, ns: str, pidfile: str) -> str:
    """Close the stream and kill the command's group by a second exec: "" when that exec says it did, else why not.
    In a thread joined for KILL_LIMIT_S: interrupts are deferred meanwhile (a second Ctrl-C must not abandon
    half-killed ranks), so nothing here may wait on the network unbounded."""
    from kubernetes.stream.ws_client import ERROR_CHANNEL

    def kill() -> None:
        with contextlib.suppress(Exception):
            ws.close()
        killer = open_stream(backend, pod, ns, ["sh", "-c", KILL_SCRIPT.format(pidfile=pidfile)])
        while killer.is_open():
            killer.update(timeout=0.5)
        exec_exit_code(killer.read_channel(ERROR_CHANNEL))  # raises unless it ended with a status

    with interrupts_deferred():
        try:
            bounded(kill, KILL_LIMIT_S, "the kill exec")
        except Exception as exc:  # the job's deadline or `labkit job delete` still ends it: the caller says so
            return str(exc) or type(exc).__name__
    return ""


def exec_end(
    backend, name: str, ns: str, pod: str, argv: list[str], output: str, raw: str | None, say, restarts: int = 0
) -> int:
    """The exit code; a failure also gets its one line on why (said, EXEC_TAG first): the deadline, the launcher's
    container dying (`restarts`: its restartCount as the exec began) or a deletion (the launcher pod went, the exec
    with it: 137, or no status at all), else the first failed rank, its error."""
    try:
        code, lost = exec_exit_code(raw), None
    except LabkitError as exc:  # no exit status: the connection or the pod is gone
        code, lost = 137, exc
    if not code:
        return 0
    # SIGKILL, SIGTERM or no status: perhaps the pod going (deadline, deletion) or its container dying; not if both
    # stay (the OOM killer took a rank)
    suspect = lost is not None or code in (137, 143)
    listed = listed_pod(backend, name, ns, pod) if suspect else None
    killed = suspect and (listed is None or bool(listed.metadata.deletion_timestamp))  # terminating or gone
    launcher = ended = died = None
    # The Job controller records a deadline as it deletes the pod: allow 3 s. A pod that stays is read once (a rank
    # the OOM killer took must not wait), so a container's end the kubelet has not yet reported (PLEG relists every
    # second) reads as a rank's death.
    for attempt in range(6 if killed else 1):
        if attempt:
            time.sleep(0.5)
        with contextlib.suppress(LabkitError):
            launcher = backend._launcher_job(name, ns)
        if (ended := launcher_deadline_exceeded(launcher)) or (  # the pod read again: the kubelet reports late
            suspect and (died := container_end(listed_pod(backend, name, ns, pod), restarts))
        ):
            break
    if ended:
        seconds = (launcher.get("spec") or {}).get("activeDeadlineSeconds")
        why = launch.deadline_text(float(seconds)) if seconds else f"stopped by its deadline: {ended}"
    elif died:
        why = f"{died} while the command ran"
    elif killed and deleted(backend, name, ns):
        why = f"stopped: MPIJob {ns}/{name} was deleted while it ran"
    elif killed:  # the MPIJob stays: its launcher pod alone went (eviction, preemption, a kubectl delete)
        why = f"launcher pod {pod} was deleted or evicted while it ran (kubectl get events -n {ns})"
    elif lost is not None:
        raise lost
    else:
        why = launch.describe_failure(output, code) if launch.starts_ranks(argv) else ""
    if why:
        say(f"{base.EXEC_TAG}{why}\n")
    return code


def restart_count(pod) -> int:
    """The restartCount of the pod's first container (the one exec runs in)."""
    status = exec_container_status(pod)
    return (status.restart_count or 0) if status else 0


def exec_container_status(pod):
    """The status of the pod's first container (the one exec runs in), None before the kubelet reports one."""
    container = pod.spec.containers[0].name
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((cs for cs in statuses if cs.name == container), None)


def listed_pod(backend, name: str, ns: str, pod: str):
    """The launcher pod `pod` as listed now; None once deleted (or the API server does not answer)."""
    with contextlib.suppress(LabkitError):
        return next((p for p in backend._pods(name, ns, "launcher").items if p.metadata.name == pod), None)
    return None


def container_end(pod, restarts: int) -> str | None:
    """How the launcher's container ended while an exec ran, as its pod's status says (the kubelet: restartCount + 1
    and lastState.terminated where restartPolicy OnFailure restarted it in place, state.terminated and phase Failed
    under Never), else None. A terminated container in a pod being deleted is the deletion's doing (pod_gone)."""
    if pod is None or not (cs := exec_container_status(pod)):
        return None
    name = pod.metadata.name
    if (cs.restart_count or 0) > restarts:
        last = cs.last_state.terminated if cs.last_state else None
        exited = f"exited {last.exit_code} ({last.reason}) and " if last else ""
        return f"launcher pod {name}'s container {cs.name} {exited}was restarted (restart {cs.restart_count})"
    ended = cs.state.terminated if cs.state else None
    if ended and not pod.metadata.deletion_timestamp:
        phase = pod.status.phase
        return f"launcher pod {name} is {phase}: its container {cs.name} exited {ended.exit_code} ({ended.reason})"
    return None


def deleted(backend, name: str, ns: str) -> bool:
    with contextlib.suppress(JobNotFound):  # gone, or going (foreground deletion: its pods first)
        return is_terminating(backend._kubeflow_job("GET", ns, name))
    return True

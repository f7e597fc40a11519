"""The job interface both backends implement (local processes, Kubernetes MPIJobs); code above it knows neither.

The interactive pattern: the launcher is a long-lived placeholder (`sleep infinity`) holding the job's resources; the
user execs `deepspeed --hostfile /etc/mpi/hostfile ...` into it; a deadline ends a forgotten job.
"""

from __future__ import annotations

import abc
import collections
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from labkit.errors import ConfigError, LabkitError, check_choice, check_number

if TYPE_CHECKING:  # pragma: no cover - typing only
    from labkit.manifests import JobSpec

# Where the MPI Operator mounts the hostfile in the launcher; the local backend maps this path onto its job dir.
CLUSTER_HOSTFILE = "/etc/mpi/hostfile"
# Where every pod of a job mounts the kit's PVC (manifests/jobs/*); the local backend maps it onto a folder too.
CLUSTER_SHARED = "/shared"
# A job's kind on a cluster: the kit's MPIJobs, and Kubeflow Trainer's TrainJobs (created with kubectl from the lab).
JOB_KINDS = ("MPIJob", "TrainJob")
EXEC_TAG = "labkit exec: "  # starts the one line an exec adds to its output when it fails (why, in words)
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
OutputCallback = Callable[[str], None]


class JobNotFound(LabkitError):
    """The named job does not exist (already deleted, expired, or never submitted)."""


class JobNotReady(LabkitError):
    """The launcher did not become ready in time, or can never become ready (image pull error, unschedulable...)."""


# The phases of a job that ended (`job list --stale` selects them); OwnerExited: a local job tied to a process that
# exited (LocalBackend.end_with), e.g. a notebook kernel killed outright
FINISHED = ("Succeeded", "Failed", "DeadlineExceeded", "OwnerExited")


@dataclass
class JobStatus:
    """What a backend knows about one job, in the same words for both backends (times: epoch seconds)."""

    name: str
    namespace: str
    backend: str
    phase: str  # Pending | Running | Terminating | one of FINISHED
    ready: bool = False  # the launcher accepts exec
    created: float | None = None
    deadline: float | None = None
    message: str = ""
    workers: int | None = None
    slots_per_worker: int | None = None
    kind: str = "MPIJob"  # kubernetes: MPIJob, or a Kubeflow Trainer TrainJob (read, deleted; never submitted here)

    @property
    def past_deadline(self) -> bool:
        """The `list()` flag for forgotten jobs: outlived its deadline, or was ended by it."""
        late = self.deadline is not None and time.time() > self.deadline and self.phase in ("Pending", "Running")
        return self.phase == "DeadlineExceeded" or late

    @property
    def remaining_s(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    def as_dict(self) -> dict:
        return {**asdict(self), "past_deadline": self.past_deadline}


@dataclass
class ExecResult:
    """An exec's exit code and its combined output (stdout and stderr in arrival order)."""

    returncode: int
    output: str
    duration_s: float
    argv: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def failure(self) -> str:
        """The backend's one line on why the exec failed (a dead rank, the deadline), else ''."""
        lines = [line for line in self.output.splitlines() if line.startswith(EXEC_TAG)]
        return lines[-1][len(EXEC_TAG) :] if lines else ""


def collecting(on_output: OutputCallback | None) -> tuple[list[str], OutputCallback]:
    """(the chunks seen so far, a sink that keeps each chunk and passes it on to on_output, if any)."""
    chunks: list[str] = []

    def collect(text: str) -> None:
        chunks.append(text)
        if on_output:
            on_output(text)

    return chunks, collect


class OutputTail:
    """An output sink that passes each chunk on and keeps only the last `most` characters: what an exec's failure
    diagnosis reads (the dead rank reports near the end), without holding a day-long run's output."""

    MOST = 4 << 20

    def __init__(self, on_output: OutputCallback | None, most: int | None = None):
        self.on_output, self.most = on_output, most or self.MOST
        self._chunks: collections.deque[str] = collections.deque()
        self._size = 0

    def __call__(self, text: str) -> None:
        self._chunks.append(text)
        self._size += len(text)
        while self._size > self.most and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())
        if self.on_output:
            self.on_output(text)

    def text(self) -> str:
        return "".join(self._chunks)


def print_output(text: str) -> None:
    """The default exec output sink: stdout, flushed, so a notebook shows it live."""
    sys.stdout.write(text)
    sys.stdout.flush()


class JobBackend(abc.ABC):
    """Submit, reach and remove interactive MPI jobs. Implementations: LocalBackend, KubernetesBackend.

    `namespace=None` means the backend's own; `kind=None` (status, delete) whichever of JOB_KINDS has the name (a
    ConfigError asks which when both do); `exec` streams to `on_output` and returns the exit code, and on timeout
    (TimeoutError) or KeyboardInterrupt stops the command and every rank it started first."""

    name: str
    namespace: str
    one_host: bool  # every rank runs on this machine (no ssh between ranks, rendezvous on loopback)

    @abc.abstractmethod
    def accelerator_for(self, device: str, workers: int, slots: int) -> tuple[str, int, str]:
        """(accelerator, workers, why) for a `device` (auto | cpu | cuda | hpu) and `workers` (0: automatic) of
        `slots` ranks each; ConfigError when this backend cannot give it."""

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> Job:
        """Create the job (after validating the spec) and return its handle without waiting."""

    @abc.abstractmethod
    def wait_ready(self, name: str, *, timeout: float = 300.0, namespace: str | None = None) -> JobStatus:
        """Block until the launcher accepts exec; raise JobNotReady with the reason otherwise."""

    @abc.abstractmethod
    def exec(self, name: str, argv: list[str], *, on_output=print_output, timeout=None, namespace=None) -> int: ...

    @abc.abstractmethod
    def logs(self, name: str, *, namespace: str | None = None) -> str:
        """The launcher's own log (not the exec'd commands' output)."""

    @abc.abstractmethod
    def status(self, name: str, *, namespace: str | None = None, kind: str | None = None) -> JobStatus:
        """The job's phase; raises JobNotFound if it does not exist."""

    @abc.abstractmethod
    def delete(self, name: str, *, namespace: str | None = None, kind: str | None = None) -> bool:
        """Stop the job and everything it started; True if it existed."""

    @abc.abstractmethod
    def list(self, *, namespace: str | None = None) -> list[JobStatus]:
        """Every job in namespace ('*': all namespaces)."""


class Job:
    """A handle on one job; `with backend.submit(spec) as job:` deletes it on exit, error or interrupt."""

    hostfile_path = CLUSTER_HOSTFILE  # the same path on both backends
    kind = "MPIJob"  # what the kit submits and execs into (a TrainJob of the same name is never this handle's)

    def __init__(self, backend: JobBackend, name: str, namespace: str | None = None, notes: Sequence[str] = ()):
        self.backend, self.name, self.namespace = backend, name, namespace or backend.namespace
        self.notes = list(notes)  # what submit left out that the submitter should know (the job runs without it)

    def __repr__(self) -> str:
        return f"Job(backend={self.backend.name!r}, namespace={self.namespace!r}, name={self.name!r})"

    def wait_ready(self, timeout: float = 300.0) -> JobStatus:
        return self.backend.wait_ready(self.name, timeout=timeout, namespace=self.namespace)

    def logs(self) -> str:
        return self.backend.logs(self.name, namespace=self.namespace)

    def status(self) -> JobStatus:
        return self.backend.status(self.name, namespace=self.namespace, kind=self.kind)

    def delete(self) -> bool:
        return self.backend.delete(self.name, namespace=self.namespace, kind=self.kind)

    def exec(self, argv: list[str], on_output: OutputCallback | None = print_output, timeout=None) -> int:
        return self.backend.exec(self.name, argv, on_output=on_output, timeout=timeout, namespace=self.namespace)

    def run(self, argv: list[str], on_output: OutputCallback | None = None, timeout: float | None = None) -> ExecResult:
        """exec() that also returns the combined output."""
        chunks, collect = collecting(on_output)
        start = time.monotonic()
        code = self.exec(argv, on_output=collect, timeout=timeout)
        return ExecResult(code, "".join(chunks), time.monotonic() - start, list(argv))

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


def _check_dns_label(field: str, value: str, what: str, most: int, example: str) -> str:
    """RFC 1123 labels: Kubernetes names, and the local backend's directory names (so `../elsewhere` never passes)."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > most:
        fix = f"use lowercase letters, digits and '-', starting and ending with a letter or digit, at most {most} "
        raise ConfigError(field, f"{value!r} is not a valid {what}", f"{fix}characters (e.g. {example!r})")
    return value


def check_job_name(name: str) -> str:
    return _check_dns_label("name", name, "job name", 50, "deepspeed-interactive")


def check_namespace(namespace: str) -> str:
    return _check_dns_label("namespace", namespace, "namespace", 63, "workloads")


def check_kind(kind: str | None, kinds: tuple[str, ...] = JOB_KINDS, fix: str | None = None) -> str | None:
    """kind as given: None (whichever kind of job has the name) or one of kinds."""
    return None if kind is None else check_choice("kind", kind, kinds, fix)


def check_exec_args(argv: list[str], timeout: float | None) -> None:
    """What both backends refuse before touching a job: an empty or non-string command, a non-positive timeout."""
    if not argv or not all(isinstance(a, str) for a in argv):
        fix = "pass the command as a list, e.g. ['cat', '/etc/mpi/hostfile']"
        raise ConfigError("argv", f"must be a non-empty list of strings, got {argv!r}", fix)
    if timeout is not None:
        check_number("timeout", timeout, 0.0, "pass seconds > 0 or None", strict=True)

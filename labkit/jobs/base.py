"""The job interface both backends implement (local processes, Kubernetes MPIJobs); code above it knows neither.

A `JobBackend` submits a job spec and returns a `Job` handle; the handle deletes the job when used as a context
manager, so a notebook cell or a test cannot forget it. The interactive pattern: the launcher is a long-lived
placeholder (`sleep infinity`) holding the job's resources; the user execs `deepspeed --hostfile /etc/mpi/hostfile ...`
into it; a deadline ends a forgotten job.
"""

from __future__ import annotations

import abc
import contextlib
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from labkit.errors import ConfigError, LabkitError, check_number

if TYPE_CHECKING:  # pragma: no cover - typing only
    from labkit.manifests import JobSpec

# Where the MPI Operator mounts the hostfile in the launcher; the local backend maps this path onto its job dir.
CLUSTER_HOSTFILE = "/etc/mpi/hostfile"
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
OutputCallback = Callable[[str], None]


class JobNotFound(LabkitError):
    """The named job does not exist (already deleted, expired, or never submitted)."""


class JobNotReady(LabkitError):
    """The launcher did not become ready in time, or can never become ready (image pull error, unschedulable...)."""


@dataclass
class JobStatus:
    """What a backend knows about one job, in the same words for both backends."""

    name: str
    namespace: str
    backend: str
    phase: str  # Pending | Running | Succeeded | Failed | DeadlineExceeded
    ready: bool = False  # the launcher accepts exec
    created: float | None = None  # epoch seconds
    deadline: float | None = None  # epoch seconds after which the job is stopped
    message: str = ""
    workers: int | None = None
    slots_per_worker: int | None = None

    @property
    def past_deadline(self) -> bool:
        """The `list()` flag for forgotten jobs: outlived its deadline, or was ended by it."""
        if self.phase == "DeadlineExceeded":
            return True
        return self.deadline is not None and time.time() > self.deadline and self.phase in ("Pending", "Running")

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


def print_output(text: str) -> None:
    """The default exec output sink: stdout, flushed, so a notebook shows it live."""
    sys.stdout.write(text)
    sys.stdout.flush()


class JobBackend(abc.ABC):
    """Submit, reach and remove interactive MPI jobs. Implementations: LocalBackend, KubernetesBackend."""

    name: str
    namespace: str

    @property
    @abc.abstractmethod
    def one_host(self) -> bool:
        """True when every rank runs on this machine (no ssh between ranks, rendezvous on loopback)."""

    @abc.abstractmethod
    def accelerator_for(self, device: str, ranks: int) -> tuple[str, str]:
        """(accelerator, why) for a `device` parameter (auto | cpu | cuda | hpu) and a job of `ranks` ranks;
        ConfigError when this backend cannot give it."""

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> Job:
        """Create the job (after validating the spec) and return its handle without waiting."""

    @abc.abstractmethod
    def wait_ready(self, name: str, *, timeout: float = 300.0, namespace: str | None = None) -> JobStatus:
        """Block until the launcher accepts exec; raise JobNotReady with the reason otherwise."""

    @abc.abstractmethod
    def exec(self, name: str, argv: list[str], *, on_output=print_output, timeout=None, namespace=None) -> int:
        """Run argv in the launcher, stream its output to on_output (an OutputCallback, or None), return its exit code.

        On timeout (TimeoutError) or KeyboardInterrupt the command and every rank it started are stopped first."""

    @abc.abstractmethod
    def logs(self, name: str, *, namespace: str | None = None) -> str:
        """The launcher's own log (not the exec'd commands' output)."""

    @abc.abstractmethod
    def status(self, name: str, *, namespace: str | None = None) -> JobStatus:
        """The job's phase; raises JobNotFound if it does not exist."""

    @abc.abstractmethod
    def delete(self, name: str, *, namespace: str | None = None) -> bool:
        """Stop the job and everything it started; True if it existed."""

    @abc.abstractmethod
    def list(self, *, namespace: str | None = None) -> list[JobStatus]:
        """Every job in namespace (default: the backend's; '*': all namespaces)."""


class Job:
    """A handle on one job; `with backend.submit(spec) as job:` deletes it on exit, error or interrupt."""

    hostfile_path = CLUSTER_HOSTFILE  # the same path on both backends

    def __init__(self, backend: JobBackend, name: str, namespace: str | None = None):
        self.backend, self.name, self.namespace = backend, name, namespace or backend.namespace

    def __repr__(self) -> str:
        return f"Job(backend={self.backend.name!r}, namespace={self.namespace!r}, name={self.name!r})"

    def wait_ready(self, timeout: float = 300.0) -> JobStatus:
        return self.backend.wait_ready(self.name, timeout=timeout, namespace=self.namespace)

    def exec(
        self, argv: list[str], on_output: OutputCallback | None = print_output, timeout: float | None = None
    ) -> int:
        return self.backend.exec(self.name, argv, on_output=on_output, timeout=timeout, namespace=self.namespace)

    def run(self, argv: list[str], on_output: OutputCallback | None = None, timeout: float | None = None) -> ExecResult:
        """exec() that also returns the combined output."""
        chunks: list[str] = []

        def collect(text: str) -> None:
            chunks.append(text)
            if on_output:
                on_output(text)

        start = time.monotonic()
        code = self.exec(argv, on_output=collect, timeout=timeout)
        return ExecResult(code, "".join(chunks), time.monotonic() - start, list(argv))

    def logs(self) -> str:
        return self.backend.logs(self.name, namespace=self.namespace)

    def status(self) -> JobStatus:
        return self.backend.status(self.name, namespace=self.namespace)

    def delete(self) -> bool:
        return self.backend.delete(self.name, namespace=self.namespace)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


# What both backends share around exec: the argument checks, and the guard that makes a stop uninterruptible.


def check_job_name(name: str) -> str:
    """Kubernetes object names (RFC 1123 labels): also what the local backend uses as a directory name."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 50:
        raise ConfigError(
            "name",
            f"{name!r} is not a valid job name",
            "use lowercase letters, digits and '-', starting and ending with a letter or digit, "
            "at most 50 characters (e.g. 'deepspeed-interactive')",
        )
    return name


def check_exec_args(argv: list[str], timeout: float | None) -> None:
    """What both backends refuse before touching a job: an empty or non-string command, a non-positive timeout."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError(
            "argv",
            f"must be a non-empty list of strings, got {argv!r}",
            "pass the command as a list, e.g. ['cat', '/etc/mpi/hostfile']",
        )
    if timeout is not None:
        check_number("timeout", timeout, 0.0, "pass seconds > 0 or None", strict=True)


@contextlib.contextmanager
def interrupts_deferred():
    """Ignore SIGINT while stopping a command: a second Ctrl-C must not abandon half-killed ranks (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

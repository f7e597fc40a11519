"""One job interface, two backends (local processes, Kubernetes MPIJobs).

A `JobBackend` submits an `MpiJobSpec` and returns a `Job` handle; the handle forwards to its backend and deletes the
job when used as a context manager, so a notebook cell or a test cannot forget it. Code above this layer (notebooks,
the CLI) knows nothing of either backend: it calls `get_backend(name)` and this interface.

The interactive pattern both backends implement: the launcher is a long-lived placeholder (`sleep infinity`) that
holds the job's resources; the user execs into it and runs `deepspeed --hostfile /etc/mpi/hostfile ...`; a deadline
ends a forgotten job.
"""
from __future__ import annotations

import abc
import contextlib
import json
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from labkit.errors import ConfigError, LabkitError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from labkit.manifests import MpiJobSpec

BACKENDS = ("local", "kubernetes")
# Where the MPI Operator mounts the hostfile in the launcher; the local backend maps this path onto its job dir.
CLUSTER_HOSTFILE = "/etc/mpi/hostfile"
METRIC_TAG = "LABKIT_METRIC"
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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
    phase: str                      # Pending | Running | Succeeded | Failed | DeadlineExceeded
    ready: bool = False             # the launcher accepts exec
    created: float | None = None    # epoch seconds
    deadline: float | None = None   # epoch seconds after which the job is stopped
    message: str = ""
    workers: int | None = None
    slots_per_worker: int | None = None

    @property
    def past_deadline(self) -> bool:
        """True if the job outlived its deadline (or was ended by it): the `list()` flag for forgotten jobs."""
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


OutputCallback = Callable[[str], None]


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


def print_output(text: str) -> None:
    """Default exec output sink: straight to stdout, flushed, so a notebook shows it live."""
    sys.stdout.write(text)
    sys.stdout.flush()


class JobBackend(abc.ABC):
    """Submit, reach and remove interactive MPI jobs. Implementations: LocalBackend, KubernetesBackend."""

    name: str = "abstract"
    namespace: str = "workloads"

    @property
    @abc.abstractmethod
    def hostfile_path(self) -> str:
        """Where the hostfile is, as seen by a command exec'd in the launcher."""

    def render(self, spec: "MpiJobSpec") -> list[dict]:
        """The objects `submit` would create (validated first)."""
        from labkit import manifests

        spec.validate()
        return manifests.render_all(spec)

    @abc.abstractmethod
    def submit(self, spec: "MpiJobSpec") -> "Job":
        """Create the job (after validating the spec) and return its handle without waiting."""

    @abc.abstractmethod
    def wait_ready(self, name: str, *, timeout: float = 300.0, namespace: str | None = None) -> JobStatus:
        """Block until the launcher accepts exec; raise JobNotReady with the reason otherwise."""

    @abc.abstractmethod
    def exec(self, name: str, argv: list[str], *, on_output: OutputCallback | None = print_output,
             timeout: float | None = None, namespace: str | None = None) -> int:
        """Run argv in the launcher, stream its output to on_output, return its exit code.

        On timeout or KeyboardInterrupt the command and every rank it started are stopped before this returns/raises.
        """

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
        """Every job (in namespace; all namespaces when the backend allows and namespace is '*')."""

    def job(self, name: str, namespace: str | None = None) -> "Job":
        """A handle on an existing job (e.g. one submitted by another process)."""
        return Job(self, name, namespace or self.namespace)

    def run(self, name: str, argv: list[str], *, on_output: OutputCallback | None = None, timeout: float | None = None,
            namespace: str | None = None) -> ExecResult:
        """exec() that also returns the combined output."""
        chunks: list[str] = []

        def collect(text: str) -> None:
            chunks.append(text)
            if on_output:
                on_output(text)

        start = time.monotonic()
        code = self.exec(name, argv, on_output=collect, timeout=timeout, namespace=namespace)
        return ExecResult(code, "".join(chunks), time.monotonic() - start, list(argv))

    def training_command(self, spec: "MpiJobSpec", *, steps: int = 20, extra_args: list[str] | None = None) -> list[str]:
        """The default `deepspeed --hostfile ... --launcher openmpi` line that runs labkit's small DeepSpeed script."""
        return cluster_training_command(steps=steps, extra_args=extra_args)


class Job:
    """A handle on one submitted job; `with backend.submit(spec) as job:` deletes it on exit, error or interrupt."""

    def __init__(self, backend: JobBackend, name: str, namespace: str):
        self.backend, self.name, self.namespace = backend, name, namespace

    def __repr__(self) -> str:
        return f"Job(backend={self.backend.name!r}, namespace={self.namespace!r}, name={self.name!r})"

    @property
    def hostfile_path(self) -> str:
        return self.backend.hostfile_path

    def wait_ready(self, timeout: float = 300.0) -> JobStatus:
        return self.backend.wait_ready(self.name, timeout=timeout, namespace=self.namespace)

    def exec(self, argv: list[str], on_output: OutputCallback | None = print_output, timeout: float | None = None) -> int:
        return self.backend.exec(self.name, argv, on_output=on_output, timeout=timeout, namespace=self.namespace)

    def run(self, argv: list[str], on_output: OutputCallback | None = None, timeout: float | None = None) -> ExecResult:
        return self.backend.run(self.name, argv, on_output=on_output, timeout=timeout, namespace=self.namespace)

    def logs(self) -> str:
        return self.backend.logs(self.name, namespace=self.namespace)

    def status(self) -> JobStatus:
        return self.backend.status(self.name, namespace=self.namespace)

    def delete(self) -> bool:
        return self.backend.delete(self.name, namespace=self.namespace)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


# ---------------------------------------------------------------------------------------------------------------------
# The training command both backends run by default


def hello_script_module() -> str:
    return "labkit.jobs.hello_deepspeed"


def cluster_training_command(*, hostfile: str = CLUSTER_HOSTFILE, steps: int = 20,
                             extra_args: list[str] | None = None) -> list[str]:
    """What a user types in an MPIJob launcher: DeepSpeed's openmpi launcher over the operator's hostfile.

    `--force_multi`: with one worker the hostfile has one host, and DeepSpeed would otherwise start the ranks on the
    launcher itself (which has no accelerators). `--module`: the script ships inside the labkit package of the image.
    """
    from labkit.manifests import SSH_PORT

    # The kit's images run sshd on an unprivileged port: DeepSpeed's address probe and mpirun's ssh both need it.
    return ["deepspeed", "--hostfile", hostfile, "--force_multi", "--launcher", "openmpi", "--ssh_port", str(SSH_PORT),
            "--launcher_args", f"--mca plm_rsh_args '-p {SSH_PORT}'", "--module", hello_script_module(),
            "--steps", str(steps), *(extra_args or [])]


def parse_train_command(text: str) -> list[str]:
    """A notebook's `train_command` string as argv (shell-style quoting)."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ConfigError("train_command", f"cannot be split into arguments ({exc})",
                          "balance the quotes, or leave it empty for the default DeepSpeed command") from None
    if not argv:
        raise ConfigError("train_command", "is empty", "leave it empty for the default or give a command")
    return argv


def parse_metrics(output: str) -> list[dict]:
    """The `LABKIT_METRIC {json}` records a rank script printed, in order.

    Tolerates mpirun's `[1,r]<stdout>:` prefixes and two ranks' records glued onto one line (Open MPI's
    --tag-output forwards whatever chunk a rank wrote, so a line can end in the middle of another rank's output).
    """
    decoder = json.JSONDecoder()
    marker = METRIC_TAG + " "
    metrics = []
    for line in output.splitlines():
        start = line.find(marker)
        while start >= 0:
            try:
                value, end = decoder.raw_decode(line, start + len(marker))
            except json.JSONDecodeError:
                end = start + len(marker)
            else:
                if isinstance(value, dict):
                    metrics.append(value)
            start = line.find(marker, end)
    return metrics


def validate_exec_args(argv: list[str], timeout: float | None) -> None:
    """What both backends refuse before touching a job: an empty or non-string command, a non-positive timeout."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError("argv", f"must be a non-empty list of strings, got {argv!r}",
                          "pass the command as a list, e.g. ['cat', '/etc/mpi/hostfile']")
    if timeout is not None and timeout <= 0:
        raise ConfigError("timeout", f"must be positive, got {timeout}", "pass seconds > 0 or None")


def validate_job_name(name: str, field_name: str = "name") -> None:
    """Kubernetes object names (RFC 1123 labels): also what the local backend uses as a directory name."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 50:
        raise ConfigError(field_name, f"{name!r} is not a valid job name",
                          "use lowercase letters, digits and '-', starting and ending with a letter or digit, "
                          "at most 50 characters (e.g. 'deepspeed-interactive')")


def validate_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError("backend", f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")

"""Build and run `deepspeed ...` / `mpirun ...` for local ranks, and read a failed run's output (inside a rank:
`labkit.ranks.runtime`).

`run` starts the launcher in its own session, streams its output, ends the launch soon after a rank's error line (its
peers may wait in a rendezvous for ever) and on every exit path stops the whole process tree (SIGTERM to DeepSpeed's
launcher alone leaves its ranks running). Every process carries LABKIT_PROCESS=1 (leak check). Light: ranks import it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit.devices import DEVICE_KINDS
from labkit.errors import (
    ConfigError,
    DeadlineError,
    LaunchError,
    check_choice,
    check_int,
    check_number,
    scrub,
    secret_values,
)
from labkit.procs import RankExits, interrupts_deferred, own_tmpdir, stop_tree

LAUNCHERS = ("deepspeed", "openmpi", "mpirun")
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # a MASTER_ADDR that says every rank runs on this machine
MPI_LAUNCHERS = ("openmpi", "mpirun")
# Programs that start ranks when a job exec runs them (a local exec checks their count against the devices here; a
# failed one gets the one-line rank diagnosis on either backend).
RANK_STARTERS = ("deepspeed", "mpirun", "mpiexec", "accelerate")
MARKER_ENV = "LABKIT_PROCESS"
RANK_ERROR_TAG = "LABKIT_RANK_ERROR"
# A rank's progress line, "<tag> [config=NAME] step=N": rank scripts print it, the runs that show a bar read it.
PROGRESS_TAG = "LABKIT_PROGRESS"
_INTERNAL_RE = re.compile(r"\bLABKIT_[A-Z_]+\b")  # every tag the kit's ranks print for the kit to read
BACKEND_OF = {"cpu": "gloo", "cuda": "nccl", "hpu": "hccl"}
# After the first sign of a dead rank (`reports_dead_rank`) the launcher (`run`, a local exec) gets this long to stop
# by itself, naming the rank that went first; then its tree is stopped: peers blocked in a collective never return.
DEAD_RANK_GRACE_S = 15.0
# torch.distributed's timeout for one collective or the rendezvous in every kit rank (DeepSpeed's default: minutes).
COLLECTIVE_TIMEOUT_S = 120.0
_RANK_ERROR_RE = re.compile(rf"{RANK_ERROR_TAG} rank=(\d+) (.*)")
_TAGGED_RANK_RE = re.compile(r"\[1,(\d+)\]<std(?:out|err)>:")  # mpirun --tag-output prefix
_DS_EXIT = re.compile(r"exits with return code = (-?\d+)")
_MPI_EXIT = re.compile(
    r"process rank (\d+) with PID \d+ on node \S+ (exited on signal (\d+)[^\n]*|exited with status (\d+))"
)
MORE_RANKS_THAN_DEVICES = r"invalid device ordinal|device_id cuda:\d+ is out of range|CUDA error: invalid device"
# What a rank reports when a peer is gone (gloo, the rendezvous store, NCCL, labkit's step watchdog): never the cause
_PEER_LOST = re.compile(r"(reset|closed) by peer|Broken pipe|remote process exited|a peer rank stalled or died", re.I)
CAUSES = (  # (a pattern in a failed run's output, the likely cause)
    (MORE_RANKS_THAN_DEVICES, "more ranks than devices on this machine (pass fewer ranks, or 0 for automatic)"),
    (r"EADDRINUSE|[Aa]ddress already in use", "a port in use (another run holds the master port)"),
    (r"Error building extension|ninja: build stopped|failed to build", "a DeepSpeed op failed to build"),
    (  # torch.OutOfMemoryError on CUDA, the CPU allocator's RuntimeError
        r"OutOfMemoryError|[Oo]ut of memory|can't allocate memory",
        "the device ran out of memory (a smaller micro-batch, a higher ZeRO stage or offload; notebook 05 shows where "
        "the memory goes)",
    ),
)


@dataclass
class LaunchSpec:
    """What every rank runs (a labkit.ranks module or a script), on how many local ranks, through which launcher."""

    module: str = ""
    args: list[str] = field(default_factory=list)
    world_size: int = 1
    launcher: str = "deepspeed"
    hostfile: Path | None = None
    device: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    master_port: int | None = None
    python: str = sys.executable
    script: str | Path = ""

    def validate(self) -> None:
        check_choice("launcher", self.launcher, LAUNCHERS)
        check_choice("device", self.device, DEVICE_KINDS)
        check_int("world_size", self.world_size, fix="pass 1 or more ranks")
        if bool(self.module) == bool(self.script):
            raise ConfigError("module", "give exactly one of module and script", "pass module='labkit.ranks.NAME'")
        if self.module and importlib.util.find_spec(self.module) is None:
            raise ConfigError("module", f"no module {self.module!r}", "pass an importable one: labkit.ranks.hello")
        if self.script and not Path(self.script).is_file():
            raise ConfigError("script", f"{self.script} does not exist", "pass the Python file each rank runs")
        require_mpi("launcher", self.launcher)
        if self.hostfile is not None and not Path(self.hostfile).is_file():
            raise ConfigError("hostfile", f"{self.hostfile} does not exist", "write 'localhost slots=N' lines")

    def entry(self) -> list[str]:
        return [*([self.module] if self.module else [str(self.script)]), *map(str, self.args)]


@dataclass
class LaunchResult:
    returncode: int
    output: str
    command: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def require_mpi(field: str, launcher: str, instead: str = "use launcher='deepspeed'") -> None:
    """ConfigError now, not after DeepSpeed's start-up, when an MPI launcher lacks mpirun or mpi4py (through which
    DeepSpeed reads the Open MPI ranks)."""
    if launcher not in MPI_LAUNCHERS:
        return
    if shutil.which("mpirun") is None:
        install = "install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev; `make install` does it)"
        problem = f"{launcher!r} needs Open MPI's mpirun, which is not on PATH"
        raise ConfigError(field, problem, f"{install}, or {instead}")
    if importlib.util.find_spec("mpi4py") is None:
        problem = f"{launcher!r} needs mpi4py (DeepSpeed reads the Open MPI ranks through it)"
        raise ConfigError(field, problem, f"pip install 'labkit[mpi]' (needs Open MPI's mpicc), or {instead}")


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (29500 may be taken by another job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_rank(world_size: int) -> int:
    # 2 ranks x 2 threads on 2 cores ran ~9x slower: never oversubscribe the cores.
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


def local_threads() -> int:
    """threads_per_rank for the ranks on this host, as the launcher's environment counts them (any launcher)."""
    sizes = ("OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE")
    return threads_per_rank(int(next(filter(None, map(os.environ.get, sizes)), 1)))


# What a launcher gives each rank. Never inherited by the ranks the kit starts: a kernel in a pod whose RANK=0 (a
# PyTorchJob's) made every mpirun rank read RANK before OMPI_COMM_WORLD_RANK, all call themselves rank 0, and fail.
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "OMPI_COMM_WORLD_RANK")  # fmt: skip


def kit_env(extra: dict[str, str] | None = None, *, world_size: int = 1, device: str = "cpu") -> dict[str, str]:
    """The environment for kit processes: marked for the leak check, labkit importable, no rank variables of its own
    (RANK_ENV: the launcher sets them), thread counts sized to the ranks, DeepSpeed's accelerator named (no
    auto-detection warning), torch's FutureWarnings off in rank output."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.update({MARKER_ENV: "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": device})
    root = str(Path(__file__).resolve().parent.parent)  # every process the kit starts imports labkit from here
    if root not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    if device == "cuda":  # NCCL's bootstrap would listen on the host's network interface; these ranks are all local
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    if device == "cpu":  # CPU ranks on a GPU host: hidden GPUs, else accelerate puts rank N on cuda:N
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(world_size)))
        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    if os.geteuid() == 0:  # Open MPI refuses root unless told twice
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return {**env, **(extra or {})}


def deepspeed_executable(python: str = sys.executable) -> list[str]:
    """The `deepspeed` launcher installed beside `python` (falls back to `python -m deepspeed.launcher.runner`)."""
    candidate = Path(python).parent / "deepspeed"
    return [str(candidate)] if candidate.is_file() else [python, "-m", "deepspeed.launcher.runner"]


def job_deepspeed() -> list[str]:
    """`deepspeed` in a job's launcher: by name where the script is installed (the job's PATH finds that one first)."""
    runner = deepspeed_executable()
    return ["deepspeed"] if len(runner) == 1 else runner


def cluster_deepspeed(hostfile: str, ssh_port: int) -> list[str]:
    """DeepSpeed's openmpi launcher over an MPIJob's hostfile, ssh on the images' unprivileged sshd port (DeepSpeed's
    probe, mpirun's ssh). `--force_multi`: with one worker the hostfile has one host, and DeepSpeed would otherwise
    start the ranks on the launcher itself (which has no accelerators)."""
    ssh = ["--ssh_port", str(ssh_port), "--launcher_args", f"--mca plm_rsh_args '-p {ssh_port}'"]
    return ["deepspeed", "--hostfile", hostfile, "--force_multi", "--launcher", "openmpi", *ssh]


def shown_command(argv: list[str]) -> list[str]:
    """argv as a user types it: the launcher by name (`deepspeed`, `mpirun`), not by this machine's path."""
    runner = deepspeed_executable()
    if argv[: len(runner)] == runner:
        return ["deepspeed", *argv[len(runner) :]]
    if argv[1:3] == ["-m", "deepspeed.launcher.runner"]:  # any python's runner (a machine without the script)
        return ["deepspeed", *argv[3:]]
    return [Path(argv[0]).name, *argv[1:]]


def local_mpi_args() -> list[str]:
    """mpirun options for ranks on this machine: allow root, oversubscribe small machines, keep TCP on loopback."""
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [*root, "--oversubscribe", "--mca", "btl_tcp_if_include", "lo", "--tag-output"]


def write_hostfile(path: Path, hosts: dict[str, int]) -> Path:
    """A hostfile in the MPI Operator's format: one `host slots=N` line per host."""
    path.write_text("".join(f"{host} slots={slots}\n" for host, slots in hosts.items()))
    return path


def build_command(spec: LaunchSpec, *, hostfile: Path | None = None, master_port: int | None = None) -> list[str]:
    """The exact launcher argv for `spec` (what a user would type; shown in notebooks). With no port (neither here nor
    in `spec`) the line names none: `run` picks a free one at launch (DeepSpeed's 29500 may be held), so a port shown
    before then would not be the one that ran."""
    hostfile = hostfile or spec.hostfile or Path("/etc/mpi/hostfile")
    port = master_port or spec.master_port
    deepspeed = [*deepspeed_executable(spec.python), *(["--module"] if spec.module else [])]
    ds_port = ["--master_port", str(port)] if port else []
    if spec.launcher == "deepspeed":  # errors only: its INFO lines and "Unable to find hostfile" are noise locally
        quiet = ["--log_level", "error"]
        return [*deepspeed, "--num_gpus", str(spec.world_size), *ds_port, *quiet, *spec.entry()]
    if spec.launcher == "openmpi":
        # The cluster line (`deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi`), plus what one host needs.
        mpi = ["--launcher", "openmpi", "--launcher_args", shlex.join(local_mpi_args())]
        single_host = ["--force_multi", "--no_ssh_check", *mpi, "--master_addr", "127.0.0.1", *ds_port]
        return [*deepspeed, "--hostfile", str(hostfile), *single_host, *spec.entry()]
    # plain mpirun: ranks read their rank from Open MPI's environment in deepspeed.init_distributed()
    env = ["-x", "MASTER_ADDR=127.0.0.1", *(["-x", f"MASTER_PORT={port}"] if port else [])]
    head = ["mpirun", "-n", str(spec.world_size), "--hostfile", str(hostfile), *local_mpi_args(), *env]
    return [*head, spec.python, "-u", *(["-m"] if spec.module else []), *spec.entry()]


def _exit_of(line: str) -> tuple[int | None, str] | None:
    """(rank, how) when `line` is a launcher's report of a rank's failed exit. DeepSpeed's launcher gives no rank: its
    line shows the last rank's command whichever rank failed (deepspeed/launcher/launch.py, sigkill_handler)."""
    m = _DS_EXIT.search(line)
    if m and int(m.group(1)) != 0:
        code = int(m.group(1))
        return None, f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    m = _MPI_EXIT.search(line)
    if m:
        return int(m.group(1)), f"killed by signal {m.group(3)}" if m.group(3) else f"exit code {m.group(4)}"
    return None


def reports_dead_rank(line: str) -> bool:
    """True for the first sign of a dead rank: its own tagged error (`rank_guard`) or the launcher's exit report."""
    return bool(_RANK_ERROR_RE.search(line) or _exit_of(line))


def launcher_report(output: str) -> tuple[int | None, str] | None:
    """The launcher's first report of a failed rank: (rank, how); rank None where the launcher does not say which
    (DeepSpeed's). Open MPI's line names the rank whose exit it saw first."""
    return next(filter(None, map(_exit_of, output.splitlines())), None)


def failure_summary(output: str, first_failure: tuple[int, str | None] | None = None) -> tuple[int | None, str]:
    """The failing rank and the most telling text about it. The rank: the first to fail as watched (`first_failure`,
    from procs.RankExits), else as Open MPI reports it. The text: that rank's tagged error (`rank_guard`), unless it
    only says a peer is gone and another rank's says why; for a rank that died without a word, how it ended ("killed
    by signal 9"); without any of these, the last error line of the output."""
    tagged: dict[int, str] = {}
    for m in map(_RANK_ERROR_RE.search, output.splitlines()):
        if m:
            tagged.setdefault(int(m.group(1)), _TAGGED_RANK_RE.sub("", m.group(2)).strip())
    report = launcher_report(output)
    rank, how = first_failure or report or (None, None)
    unsure = how is None  # watched, but reaped before its status was read: the launcher's report may say how
    if unsure and report and report[0] in (None, rank):
        how = report[1]
    causes = [r for r, text in tagged.items() if not _PEER_LOST.search(text)]
    # A rank that only lost its peer can fail first when the rank that failed is slower to exit: name the cause
    if causes and (rank is None or _PEER_LOST.search(tagged.get(rank, "")) or (unsure and rank not in tagged)):
        rank = causes[0]
    if rank is not None:  # a flag its script refused comes before rank_guard: argparse's own line says why
        usage = (_TAGGED_RANK_RE.sub("", ln).strip() for ln in output.splitlines())
        usage = next((ln for ln in usage if re.match(r"^[\w.-]+(\.py)?: error: ", ln)), None)
        return rank, tagged.get(rank) or usage or how or ""
    if how or tagged:  # a silent rank died and its peers only lost it: which one is not known
        return None, how or next(iter(tagged.values()))
    lines = output.splitlines()
    for line in reversed(lines):
        text = _TAGGED_RANK_RE.sub("", line).strip()
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*", text):
            m = _TAGGED_RANK_RE.match(line)
            return (int(m.group(1)) if m else None), text
    # the last line a person wrote: not the kit's own records (LABKIT_PROGRESS, LABKIT_METRIC ...)
    tail = [line for line in lines if line.strip() and not _INTERNAL_RE.search(line)][-1:]
    return None, tail[0].strip() if tail else "no output"


def likely_cause(output: str) -> str | None:
    return next((cause for pattern, cause in CAUSES if re.search(pattern, output)), None)


def starts_ranks(argv: list[str]) -> bool:
    """Whether `argv` is a launcher starting ranks, also in its `python -m` form (a machine without the scripts)."""
    modules = ("deepspeed.launcher.runner", "accelerate.commands.accelerate_cli")
    return Path(argv[0]).name in RANK_STARTERS or any(module in argv for module in modules)


def deadline_text(seconds: float) -> str:
    return "stopped by its deadline after " + (f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s")


class Deadline:
    """A deadline the run checks itself, between steps: one rank trained in this process has no launcher to stop it."""

    def __init__(self, seconds: float | None):
        if seconds is not None:  # nan would mean no deadline at all, never what a user asked for
            check_number("timeout", seconds, 0.0, "pass seconds > 0, or None for no deadline", strict=True)
        self.seconds, self.end = seconds, None if seconds is None else time.monotonic() + seconds

    def check(self, where: str) -> None:
        """DeadlineError once the deadline has passed; `where`: how far the run got ("at step 7 of 40")."""
        if self.end is not None and time.monotonic() >= self.end:
            raise DeadlineError(f"{deadline_text(self.seconds)} {where}", returncode=-1)


def describe_failure(
    output: str,
    returncode: int | None = None,
    deadline_s: float | None = None,
    first_failure: tuple[int, str | None] | None = None,
) -> str:
    """ONE line for a failed run: the rank and its error, the likely cause when known, or the deadline that ended it.
    `first_failure`: the rank seen to fail first (procs.RankExits), when the run was watched."""
    return _failure_line(output, returncode, deadline_s, *failure_summary(output, first_failure))


def _failure_line(output: str, returncode: int | None, deadline_s: float | None, rank: int | None, text: str) -> str:
    cause = likely_cause(output)
    who = f"rank {rank}" if rank is not None else "a rank"
    if deadline_s is not None:
        return f"{deadline_text(deadline_s)} (all ranks stopped); last output: {text}"
    if not text or text.startswith(("killed by signal", "exit code")):  # a rank that died without a word
        line = f"{who} died{f' ({text})' if text else ''}; the other ranks were stopped"
    else:
        line = f"{who} failed (exit code {returncode}): {text}"
    return line + (f"; likely cause: {cause}" if cause else "")


def local_env(spec: LaunchSpec, port: int) -> dict[str, str]:
    """kit_env for `spec`'s ranks on this machine, meeting at 127.0.0.1:`port`."""
    # DeepSpeed's MPI discovery ignores --master_port for `distributed_port` (29500, maybe held): ranks pass MASTER_PORT
    extra = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **spec.env}
    return kit_env(extra, world_size=spec.world_size, device=spec.device)


def start_session(cmd: list[str], env: dict[str, str], cwd: str | Path | None = None) -> subprocess.Popen:
    """`cmd` in a session of its own (stop_tree ends all of it), stdout and stderr as one stream of text lines."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL}
    # A byte that is not UTF-8 (a Latin-1 file name, a native library's message) must not end the reading thread:
    # the pipe would fill and the ranks block on it until the deadline.
    text = {"text": True, "encoding": "utf-8", "errors": "backslashreplace"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, bufsize=1, **text, **pipes)


class OutputReader:
    """Reads a command's output (`start_session`'s text lines) on a thread of its own: the one reader of run_command and
    a local exec. Each line has the values of `env`'s credential variables redacted before anything sees it (DeepSpeed's
    openmpi runner prints MLFLOW_* with their values); the first sign of a dead rank is timed in `first_death` (for
    wait_launcher) when `watch_ranks`; then `sink` gets it. A sink that raises stops the command's tree (nobody would
    read its pipe any more: the ranks would block on it), the rest is drained unseen, and `raise_sink_error()` re-raises
    it in the caller's thread."""

    def __init__(self, proc: subprocess.Popen, env: dict[str, str], sink: Callable[[str], None], watch_ranks=True):
        self.proc, self.sink, self.watch_ranks = proc, sink, watch_ranks
        self.secrets = secret_values(env)
        self.first_death: list[float] = []
        self.sink_error: Exception | None = None
        self.thread = threading.Thread(target=self._pump, daemon=True, name="labkit-output")

    def start(self) -> OutputReader:
        self.thread.start()
        return self

    def _pump(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe was closed under us after a forced stop
            for line in self.proc.stdout:
                line = scrub(line, self.secrets) if self.secrets else line
                if self.watch_ranks and not self.first_death and reports_dead_rank(line):
                    self.first_death.append(time.monotonic())
                if self.sink_error is not None:
                    continue
                try:
                    self.sink(line)
                except Exception as exc:  # noqa: BLE001 - re-raised by the caller's thread (raise_sink_error)
                    self.sink_error = exc
                    stop_tree(self.proc, 1.0)

    def raise_sink_error(self) -> None:
        if self.sink_error is not None:
            raise self.sink_error


def run(spec: LaunchSpec, **options) -> LaunchResult:
    """Run `spec` to completion; `options` (timeout, on_output, cwd, log_path, check) are run_command's. Raises
    LaunchError (one line naming the failing rank) if check and it fails."""
    spec.validate()
    tmpdir = Path(tempfile.mkdtemp(prefix="labkit-launch-"))
    hostfile = spec.hostfile
    if hostfile is None and spec.launcher in MPI_LAUNCHERS:
        hostfile = write_hostfile(tmpdir / "hostfile", {"localhost": spec.world_size})
    port = spec.master_port or free_port()
    cmd = build_command(spec, hostfile=hostfile, master_port=port)
    try:
        return run_command(cmd, local_env(spec, port), **options)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def wait_launcher(proc: subprocess.Popen, first_death: list[float], timeout: float | None) -> str:
    """Wait for a launcher (`run_command`, a local exec) to exit: "exited"; "timeout" after `timeout` s; "dead rank"
    DEAD_RANK_GRACE_S after the first sign of a dead rank (its time in first_death) if the launcher is still running."""
    end = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if end is not None and time.monotonic() >= end:
            return "timeout"
        if first_death and time.monotonic() - first_death[0] > DEAD_RANK_GRACE_S:
            return "dead rank"
        time.sleep(0.1)
    return "exited"


def run_command(
    cmd: list[str],
    env: dict[str, str],
    *,
    timeout: float | None = None,
    on_output: Callable[[str], None] | None = None,
    cwd: str | Path | None = None,
    log_path: str | Path | None = None,
    check: bool = True,
) -> LaunchResult:
    """Supervise one launcher command (`deepspeed ...`, `accelerate launch ...`) in its own session: stream its output,
    end it soon after a rank's error line, stop its whole tree on every exit path. `env`: kit_env(...)."""
    if timeout is not None:  # nan would mean no deadline at all, never what a user asked for
        check_number("timeout", timeout, 0.0, "pass seconds > 0, or None for no deadline", strict=True)
    chunks: list[str] = []
    with own_tmpdir(env) as run_env:  # torchrun and mpirun write there: removed with what they leave
        log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed in the finally below

        def keep(line: str) -> None:
            chunks.append(line)
            if log:
                log.write(line)
                log.flush()
            if on_output:
                on_output(line)

        proc = start_session(cmd, run_env, cwd)
        reader = OutputReader(proc, env, keep)
        try:
            reader.start()  # inside the try: output (and an interrupt it triggers) can arrive at once
            with RankExits(proc.pid) as exits:  # which rank failed first: a killed one says nothing itself
                ended = wait_launcher(proc, reader.first_death, timeout)
        finally:
            # Always: ranks may outlive a launcher that exited, and an interrupt (a second ^C too) must not leave
            # them running.
            with interrupts_deferred():
                stop_tree(proc)  # the launcher, its group and every descendant (mpirun: each rank a group of its own)
                reader.thread.join(timeout=5)
                if log:
                    log.close()
    reader.raise_sink_error()
    output = "".join(chunks)
    code = {"timeout": -1, "dead rank": 1}.get(ended, proc.returncode)
    if check and code != 0:
        rank, text = failure_summary(output, exits.first_failure)
        msg = _failure_line(output, code, timeout if ended == "timeout" else None, rank, text)
        error = DeadlineError if ended == "timeout" else LaunchError
        raise error(msg, returncode=code, output=output[-8000:], failed_rank=rank)
    return LaunchResult(code, output, cmd)

"""One place that builds and runs `deepspeed ...` / `mpirun ...` command lines for local ranks, and `rank_guard`, the
one error report of the scripts that run inside ranks (labkit.ranks).

Everything that starts ranks goes through `run`: it starts the launcher in its own session, streams its output, and on
any exit path (success, failure, timeout, KeyboardInterrupt) stops the whole process tree, because SIGTERM to the
DeepSpeed launcher alone leaves its ranks running. Every process carries LABKIT_PROCESS=1 so a teardown check can find
anything left behind. Imports only the standard library and light labkit modules: ranks import it.
"""

from __future__ import annotations

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
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labkit.devices import DEVICE_KINDS
from labkit.errors import ConfigError, LaunchError, check_choice, check_int
from labkit.procs import stop_tree

LAUNCHERS = ("deepspeed", "openmpi", "mpirun")
MPI_LAUNCHERS = ("openmpi", "mpirun")
MARKER_ENV = "LABKIT_PROCESS"
RANK_ERROR_TAG = "LABKIT_RANK_ERROR"
_RANK_ERROR_RE = re.compile(rf"{RANK_ERROR_TAG} rank=(\d+) (.*)")
_TAGGED_RANK_RE = re.compile(r"^\[1,(\d+)\]<std(?:out|err)>:")  # mpirun --tag-output prefix


@dataclass
class LaunchSpec:
    """What every rank runs (a module of labkit.ranks, or a script path), on how many local ranks, through which
    launcher."""

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
            raise ConfigError(
                "module", f"no module {self.module!r}", "pass an importable module, e.g. labkit.ranks.hello"
            )
        if self.script and not Path(self.script).is_file():
            raise ConfigError("script", f"{self.script} does not exist", "pass the Python file each rank runs")
        require_mpi("launcher", self.launcher)
        if self.hostfile is not None and not Path(self.hostfile).is_file():
            raise ConfigError("hostfile", f"{self.hostfile} does not exist", "write 'localhost slots=N' lines")

    def entry(self) -> list[str]:
        """The rank program and its arguments as the launcher takes them (`-m` / `--module` for a module)."""
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
    """ConfigError now, not a failure after DeepSpeed's start-up, when an MPI launcher lacks mpirun or mpi4py (through
    which DeepSpeed reads the Open MPI ranks)."""
    if launcher not in MPI_LAUNCHERS:
        return
    if shutil.which("mpirun") is None:
        raise ConfigError(
            field,
            f"{launcher!r} needs Open MPI's mpirun, which is not on PATH",
            "install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev; `make install` does "
            f"it), or {instead}",
        )
    if importlib.util.find_spec("mpi4py") is None:
        raise ConfigError(
            field,
            f"{launcher!r} needs mpi4py (DeepSpeed reads the Open MPI ranks through it)",
            f"pip install 'labkit[mpi]' (needs Open MPI's mpicc), or {instead}",
        )


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (29500 may be taken by another job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_rank(world_size: int) -> int:
    # 2 ranks x 2 threads on 2 cores ran ~9x slower: never oversubscribe the cores.
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


def kit_env(extra: dict[str, str] | None = None, *, world_size: int = 1, device: str = "cpu") -> dict[str, str]:
    """The environment for kit processes: marked for the leak check, thread counts sized to the ranks."""
    env = dict(os.environ)
    env[MARKER_ENV] = "1"
    # Every process the kit starts (ranks, the local launcher) imports labkit from where this one did: one bootstrap.
    root = str(Path(__file__).resolve().parent.parent)
    if root not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["DS_ACCELERATOR"] = device
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(world_size)))
        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    if os.geteuid() == 0:  # Open MPI refuses root unless told twice
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra or {})
    return env


def deepspeed_executable(python: str = sys.executable) -> list[str]:
    """The `deepspeed` launcher installed beside `python` (falls back to `python -m deepspeed.launcher.runner`)."""
    candidate = Path(python).parent / "deepspeed"
    return [str(candidate)] if candidate.is_file() else [python, "-m", "deepspeed.launcher.runner"]


def local_mpi_args() -> list[str]:
    """mpirun options for ranks on this machine: allow root, oversubscribe small machines, keep TCP on loopback."""
    args = ["--oversubscribe", "--mca", "btl_tcp_if_include", "lo", "--tag-output"]
    if os.geteuid() == 0:
        args.insert(0, "--allow-run-as-root")
    return args


def write_hostfile(path: Path, hosts: dict[str, int]) -> Path:
    """A hostfile in the MPI Operator's format: one `host slots=N` line per host."""
    path.write_text("".join(f"{host} slots={slots}\n" for host, slots in hosts.items()))
    return path


def build_command(spec: LaunchSpec, *, hostfile: Path | None = None, master_port: int | None = None) -> list[str]:
    """The exact launcher argv for `spec` (what a user would type; shown in notebooks)."""
    hostfile = hostfile or spec.hostfile or Path("/etc/mpi/hostfile")
    port = str(master_port or spec.master_port or 29500)
    module = ["-m"] if spec.module else []
    deepspeed = [*deepspeed_executable(spec.python), *(["--module"] if spec.module else [])]
    if spec.launcher == "deepspeed":
        return [*deepspeed, "--num_gpus", str(spec.world_size), "--master_port", port, *spec.entry()]
    if spec.launcher == "openmpi":
        # The cluster line (`deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi`), plus what one host needs.
        mpi = ["--launcher", "openmpi", "--launcher_args", shlex.join(local_mpi_args())]
        single_host = ["--force_multi", "--no_ssh_check", *mpi, "--master_addr", "127.0.0.1", "--master_port", port]
        return [*deepspeed, "--hostfile", str(hostfile), *single_host, *spec.entry()]
    # plain mpirun: ranks read their rank from Open MPI's environment in deepspeed.init_distributed()
    env = ["-x", "MASTER_ADDR=127.0.0.1", "-x", f"MASTER_PORT={port}"]
    head = ["mpirun", "-n", str(spec.world_size), "--hostfile", str(hostfile), *local_mpi_args(), *env]
    return [*head, spec.python, "-u", *module, *spec.entry()]


_DS_EXIT = re.compile(r"--local_rank=(\d+).*exits with return code = (-?\d+)")
_MPI_EXIT = re.compile(
    r"process rank (\d+) with PID \d+ on node \S+ (exited on signal (\d+)[^\n]*|"
    r"exited with status (\d+))"
)


def first_dead_rank(output: str) -> tuple[int, str] | None:
    """The rank whose exit brought the run down, as the launcher reported it: (rank, how).

    When one rank dies, the others fail too (a collective loses its peer) and print the louder traceback; the
    launcher's own line names the rank that went first.
    """
    for line in output.splitlines():
        m = _DS_EXIT.search(line)
        if m:
            code = int(m.group(2))
            return int(m.group(1)), f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        m = _MPI_EXIT.search(line)
        if m:
            return int(m.group(1)), (f"killed by signal {m.group(3)}" if m.group(3) else f"exit code {m.group(4)}")
    return None


def failure_summary(output: str) -> tuple[int | None, str]:
    """The failing rank and the most telling error line of a failed run.

    The launcher's own exit line names the rank that went first (its peers fail after it, often more loudly); the
    rank's own tagged error (`rank_guard`) gives the text. Without either, the last error line of the output.
    """
    tagged: dict[int, str] = {}
    for line in output.splitlines():
        m = _RANK_ERROR_RE.search(line)
        if m:
            tagged.setdefault(int(m.group(1)), m.group(2).strip())
    dead = first_dead_rank(output)
    if dead:
        return dead[0], tagged.get(dead[0], dead[1])
    if tagged:
        rank = next(iter(tagged))
        return rank, tagged[rank]
    lines = output.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        text = _TAGGED_RANK_RE.sub("", line).strip()
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*", text):
            m = _TAGGED_RANK_RE.match(line)
            return (int(m.group(1)) if m else None), text
    tail = [line for line in lines if line.strip()][-1:]
    return None, tail[0].strip() if tail else "no output"


def run(
    spec: LaunchSpec,
    *,
    timeout: float | None = None,
    on_output: Callable[[str], None] | None = None,
    cwd: str | Path | None = None,
    log_path: str | Path | None = None,
    check: bool = True,
) -> LaunchResult:
    """Run `spec` to completion. Raises LaunchError (with the failing rank's own text) if check and it fails."""
    spec.validate()
    if timeout is not None and timeout <= 0:
        raise ConfigError("timeout", f"must be positive, got {timeout}", "pass seconds > 0 or None")
    tmpdir = Path(tempfile.mkdtemp(prefix="labkit-launch-"))
    hostfile = spec.hostfile
    if hostfile is None and spec.launcher in MPI_LAUNCHERS:
        hostfile = write_hostfile(tmpdir / "hostfile", {"localhost": spec.world_size})
    port = spec.master_port or free_port()
    cmd = build_command(spec, hostfile=hostfile, master_port=port)
    # DeepSpeed's MPI discovery ignores --master_port and uses its `distributed_port` argument (default 29500, which a
    # neighbouring job may hold): rank scripts pass int(os.environ["MASTER_PORT"]), exported here.
    env = kit_env(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **spec.env},
        world_size=spec.world_size,
        device=spec.device,
    )
    chunks: list[str] = []
    log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
        bufsize=1,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            if log:
                log.write(line)
                log.flush()
            if on_output:
                on_output(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        # Always: ranks may outlive a launcher that exited, and an interrupt must not leave them running.
        stop_tree(proc)  # the launcher, its group and every descendant (mpirun gives each rank a group of its own)
        reader.join(timeout=5)
        if log:
            log.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    output = "".join(chunks)
    result = LaunchResult(proc.returncode if not timed_out else -1, output, cmd)
    if check and (timed_out or proc.returncode != 0):
        rank, text = failure_summary(output)
        where = f"rank {rank}" if rank is not None else "a rank"
        if timed_out:
            msg = f"run timed out after {timeout:.0f} s and was stopped (all ranks killed); last output: {text}"
        elif rank is not None and text.startswith(("killed by signal", "exit code")):
            msg = f"rank {rank} died ({text}); the other ranks were stopped"
        else:
            msg = f"{where} failed (exit code {proc.returncode}): {text}"
        raise LaunchError(msg, returncode=result.returncode, output=output[-8000:], failed_rank=rank)
    return result


def rank_and_world() -> tuple[int, int]:
    """This rank's number and the world size, from the launcher's environment (DeepSpeed/torchrun or Open MPI)."""
    env = os.environ
    return int(env.get("RANK", env.get("OMPI_COMM_WORLD_RANK", 0))), int(
        env.get("WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE", 1))
    )


@contextmanager
def rank_guard() -> Iterator[None]:
    """The one error report and teardown of a rank script. An uncaught error becomes one tagged line that `run` reports
    (`LABKIT_RANK_ERROR rank=N Type: text`) plus its traceback; under mpirun the failed rank then aborts the whole
    job (a normal exit would wait in MPI_Finalize for peers that may be waiting for it). On every other exit the
    process group is destroyed before the interpreter shuts down (a live gloo group aborts the process there)."""
    rank, world = rank_and_world()
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            print(f"{RANK_ERROR_TAG} rank={rank} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            if world > 1 and "OMPI_COMM_WORLD_SIZE" in os.environ and "mpi4py" in sys.modules:
                from mpi4py import MPI

                MPI.COMM_WORLD.Abort(1)
        raise
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

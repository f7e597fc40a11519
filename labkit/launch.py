"""One place that builds and runs `deepspeed ...` / `mpirun ...` command lines for local ranks.

Everything that starts ranks goes through `run`: it starts the launcher in its own session, streams its output, and on
any exit path (success, failure, timeout, KeyboardInterrupt) signals the whole process group, because SIGTERM to the
DeepSpeed launcher alone leaves its ranks running. Every process carries LABKIT_PROCESS=1 so a teardown check can find
anything left behind.

This module imports only the standard library: scripts that run inside ranks may use `rank_guard`.
"""
from __future__ import annotations

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
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from labkit.errors import ConfigError, LaunchError

LAUNCHERS = ("deepspeed", "openmpi", "mpirun")
ACCELERATORS = ("cpu", "cuda", "hpu")
MARKER_ENV = "LABKIT_PROCESS"
RANK_ERROR_TAG = "LABKIT_RANK_ERROR"
_RANK_ERROR_RE = re.compile(rf"{RANK_ERROR_TAG} rank=(\d+) (.*)")
_TAGGED_RANK_RE = re.compile(r"^\[1,(\d+)\]<std(?:out|err)>:")  # mpirun --tag-output prefix


@dataclass
class LaunchSpec:
    """What to run on how many local ranks, and through which launcher."""

    script: str | Path
    args: list[str] = field(default_factory=list)
    world_size: int = 1
    launcher: str = "deepspeed"
    hostfile: Path | None = None
    accelerator: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    master_port: int | None = None
    python: str = sys.executable

    def validate(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError("launcher", f"unknown launcher {self.launcher!r}", f"use one of {', '.join(LAUNCHERS)}")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError("accelerator", f"unknown accelerator {self.accelerator!r}",
                              f"use one of {', '.join(ACCELERATORS)}")
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ConfigError("world_size", f"must be a whole number >= 1, got {self.world_size!r}", "pass 1 or more ranks")
        if not Path(self.script).is_file():
            raise ConfigError("script", f"{self.script} does not exist", "pass the path of the Python file each rank runs")
        if self.launcher in ("openmpi", "mpirun") and shutil.which("mpirun") is None:
            raise ConfigError("launcher", f"{self.launcher!r} needs Open MPI's mpirun, which is not on PATH",
                              "install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev; `make run` does it) "
                              "or use launcher='deepspeed'")
        if self.hostfile is not None and not Path(self.hostfile).is_file():
            raise ConfigError("hostfile", f"{self.hostfile} does not exist", "write 'localhost slots=N' lines or pass None")


@dataclass
class LaunchResult:
    returncode: int
    output: str
    duration_s: float
    command: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (29500 may be taken by another job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_rank(world_size: int) -> int:
    # 2 ranks x 2 threads on 2 cores ran ~9x slower: never oversubscribe the cores.
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


def kit_env(extra: dict[str, str] | None = None, *, world_size: int = 1, accelerator: str = "cpu") -> dict[str, str]:
    """The environment for kit processes: marked for the leak check, thread counts sized to the ranks."""
    env = dict(os.environ)
    env[MARKER_ENV] = "1"
    # Every process the kit starts (ranks, the local launcher) imports labkit from where this one did: the one bootstrap.
    root = str(Path(__file__).resolve().parent.parent)
    if root not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(world_size)))
        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    elif accelerator == "cuda":
        env["DS_ACCELERATOR"] = "cuda"
    elif accelerator == "hpu":
        env["DS_ACCELERATOR"] = "hpu"
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
    script = [str(spec.script), *map(str, spec.args)]
    if spec.launcher == "deepspeed":
        return [*deepspeed_executable(spec.python), "--num_gpus", str(spec.world_size), "--master_port", port, *script]
    if spec.launcher == "openmpi":
        # The cluster line (`deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi`), plus what one host needs.
        return [*deepspeed_executable(spec.python), "--hostfile", str(hostfile), "--force_multi", "--no_ssh_check",
                "--launcher", "openmpi", "--launcher_args", shlex.join(local_mpi_args()),
                "--master_addr", "127.0.0.1", "--master_port", port, *script]
    # plain mpirun: ranks read their rank from Open MPI's environment in deepspeed.init_distributed()
    return ["mpirun", "-n", str(spec.world_size), "--hostfile", str(hostfile), *local_mpi_args(),
            "-x", "MASTER_ADDR=127.0.0.1", "-x", f"MASTER_PORT={port}", spec.python, "-u", *script]


_DS_EXIT = re.compile(r"--local_rank=(\d+).*exits with return code = (-?\d+)")
_MPI_EXIT = re.compile(r"process rank (\d+) with PID \d+ on node \S+ (exited on signal (\d+)[^\n]*|"
                       r"exited with status (\d+))")


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


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop the launcher, its process group and every descendant (mpirun gives each rank a group of its own)."""
    from labkit.procs import stop_tree

    stop_tree(proc, grace_s)


def run(spec: LaunchSpec, *, timeout: float | None = None, on_output: Callable[[str], None] | None = None,
        cwd: str | Path | None = None, log_path: str | Path | None = None, check: bool = True) -> LaunchResult:
    """Run `spec` to completion. Raises LaunchError (with the failing rank's own text) if check and it fails."""
    spec.validate()
    if timeout is not None and timeout <= 0:
        raise ConfigError("timeout", f"must be positive, got {timeout}", "pass seconds > 0 or None")
    tmpdir = Path(tempfile.mkdtemp(prefix="labkit-launch-"))
    hostfile = spec.hostfile
    if hostfile is None and spec.launcher in ("openmpi", "mpirun"):
        hostfile = write_hostfile(tmpdir / "hostfile", {"localhost": spec.world_size})
    port = spec.master_port or free_port()
    cmd = build_command(spec, hostfile=hostfile, master_port=port)
    # DeepSpeed's MPI discovery ignores --master_port and uses its `distributed_port` argument (default 29500, which a
    # neighbouring job may hold): rank scripts pass int(os.environ["MASTER_PORT"]), exported here.
    env = kit_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **spec.env},
                  world_size=spec.world_size, accelerator=spec.accelerator)
    chunks: list[str] = []
    log = open(log_path, "a") if log_path else None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1)

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
        _kill_group(proc)
        reader.join(timeout=5)
        if log:
            log.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    output = "".join(chunks)
    result = LaunchResult(proc.returncode if not timed_out else -1, output, time.monotonic() - start, cmd)
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


@contextmanager
def rank_guard(rank: int | None = None) -> Iterator[None]:
    """Inside a rank script: print a tagged one-line error that `run` reports, then re-raise."""
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0))) if rank is None else rank
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - re-raised
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            print(f"{RANK_ERROR_TAG} rank={rank} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
        raise

"""Process control (Linux /proc, standard library only): liveness, stopping a process tree, which rank died first,
silencing file descriptors, a step watchdog.

Signalling a launcher's process group is not enough: Open MPI's mpirun puts every rank in a process group of its own,
so stopping a run means stopping the group and every descendant, found through /proc. Standard library only, because
the local backend's launcher process (jobs/launcher.py) imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

TMP_PREFIX = "labkit-run-"
TMP_OWNER = ".labkit-owner"  # in each own_tmpdir folder: the process_token of the process that made it


@contextlib.contextmanager
def own_tmpdir(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` with TMPDIR a fresh 0700 folder of this run's own, removed after it with whatever its processes left there
    (torchrun's torchelastic_* logs, the session folders of an mpirun that was stopped), as a pod's /tmp goes with it.
    torch's compile cache stays where torch puts it by default (torch/_inductor/runtime/cache_dir_utils.py)."""
    try:
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    except (KeyError, OSError):  # no passwd entry and no USER: torch falls back the same way
        user = str(os.getuid())
    cache = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
    with open(os.path.join(tmp, TMP_OWNER), "w") as f:
        f.write(process_token())
    remove_orphaned_tmpdirs(os.path.dirname(tmp))
    try:
        yield {"TORCHINDUCTOR_CACHE_DIR": cache, **env, "TMPDIR": tmp}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_orphaned_tmpdirs(parent: str) -> None:
    """Remove own_tmpdir folders in `parent` whose maker has exited without removing them: a process killed outright
    (SIGKILL, the OOM killer) runs no `finally`, so the next run clears up after it. Another user's folder, or one
    whose maker cannot be told, is left alone."""
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            if not entry.name.startswith(TMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                with open(os.path.join(entry.path, TMP_OWNER)) as f:
                    token = f.read()
            except OSError:  # being made right now (no owner file yet), or gone already
                continue
            if token_gone(token):
                shutil.rmtree(entry.path, ignore_errors=True)


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    except OSError:
        return None


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a zombie is dead for our purposes)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def start_ticks(pid: int) -> int | None:
    """When pid started (clock ticks after boot, /proc/PID/stat field 22); None when it is gone. A pid is reused, a
    (pid, start) pair is not: the kit records both and signals a recorded pid only while they still match."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def same_process(pid: int, ticks: int | None) -> bool:
    """True if pid is alive and is the process that was recorded with start `ticks`."""
    return alive(pid) and ticks is not None and start_ticks(pid) == ticks


def process_token(pid: int | None = None) -> str:
    """`host:pid:start`, naming one process (this one by default) for its whole life: pids are reused, triples not.
    A process already gone gets start `gone`."""
    pid = os.getpid() if pid is None else pid
    ticks = start_ticks(pid)
    return f"{socket.gethostname()}:{pid}:{'gone' if ticks is None else ticks}"


def token_gone(token: str) -> bool:
    """True once the process `process_token` named has exited (or had when it was named). False for a process of
    another host (it cannot be seen from here) and for a token that names none (an empty or hand-made value must not
    stop anything)."""
    parts = token.split(":")  # a host name holds no colon
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    if parts[2] == "gone":
        return True
    return parts[2].isdigit() and not same_process(int(parts[1]), int(parts[2]))


def _live() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process."""
    rows = ((e.name, _stat_fields(e.name)) for e in os.scandir("/proc") if e.name.isdigit())
    return [(int(pid), int(f[1]), int(f[2])) for pid, f in rows if f and f[0] != "Z"]


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children, grandchildren...)."""
    children: dict[int, list[int]] = {}
    for child, parent, _ in _live():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        found = children.get(todo.pop(), [])
        out += found
        todo += found
    return out


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # how launchers stop the ranks left after a failure


def exit_status(pid: int) -> int | None:
    """A dead process's wait status (waitpid's form; /proc/PID/stat field 52, Linux 3.5+) while it is a zombie, before
    its parent reaps it; None while it runs or once it is gone."""
    fields = _stat_fields(pid)
    return int(fields[49]) if fields and fields[0] == "Z" and len(fields) > 49 else None


def how_it_ended(status: int) -> str:
    """A failed wait status in words: "killed by signal 9", "exit code 1"."""
    return f"killed by signal {status & 0x7F}" if status & 0x7F else f"exit code {status >> 8 & 0xFF}"


def initial_env(pid: int) -> list[bytes]:
    """The environment pid was started (exec'd) with, as NAME=value entries; empty if it is gone or not ours."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _rank_env(pid: int) -> bytes | None:
    """The rank a process was started as (RANK, or Open MPI's OMPI_COMM_WORLD_RANK, in its initial environment)."""
    env = initial_env(pid)
    return next((v.split(b"=", 1)[1] for v in env if v.startswith((b"RANK=", b"OMPI_COMM_WORLD_RANK="))), None)


def rank_processes(root: int, rank_env=_rank_env, live: list[tuple[int, int, int]] | None = None) -> dict[int, int]:
    """{pid: rank} of the ranks below `root`: live processes whose RANK (`rank_env(pid)`) differs from their parent's
    (a rank's DataLoader workers and compiler probes inherit its RANK; a launcher has none or the job's)."""
    children: dict[int, list[int]] = {}
    for pid, parent, _ in _live() if live is None else live:
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [(root, rank_env(root))]
    while todo:
        parent, parent_rank = todo.pop()
        for pid in children.get(parent, []):
            rank = rank_env(pid)
            if rank is not None and rank != parent_rank and rank.isdigit():
                found[pid] = int(rank)
            todo.append((pid, rank))
    return found


class RankExits:
    """Which rank below a launcher failed first, and how, read from the rank's zombie before the launcher reaps it.

    A killed rank (SIGKILL, the OOM killer, a segfault) prints nothing, and DeepSpeed's launcher reports it wrongly: its
    one error line shows the spawn loop's last command (always the last local rank's) with the code of whichever failed
    process its poll of a set meets first (deepspeed/launcher/launch.py, main() and sigkill_handler). A rank is a
    process below `root` whose RANK differs from its parent's (DataLoader workers inherit theirs), found by a scan of
    /proc every 0.1 s until the first ranks appear (a rank may die within seconds of its start), then backing off to
    every 2 s while nothing new appears (about 0.1 % of a core: docs/benchmarks.md);
    each is watched through a pidfd (wakes the moment it exits; polled every `poll_s` s where pidfds are missing).
    `with RankExits(proc.pid) as exits: ...`, then `exits.first_failure`: (rank, how) or None; how is None when the
    launcher reaped the rank before its status could be read (mpirun reaps at once). Not failures: a clean exit and
    the signals launchers stop the other ranks with."""

    SCAN_S = (0.1, 2.0)  # the first and the longest gap between scans for new ranks
    PATIENCE_S = 60.0  # scans stay frequent this long for a launcher that has started no rank yet

    def __init__(self, root: int, poll_s: float = 0.05):
        self.root, self.poll_s = root, poll_s
        self.first_failure: tuple[int, str | None] | None = None
        self._watched: dict[int, tuple[int, int | None, int | None]] = {}  # pid -> (rank, pidfd, start ticks)
        self._rank_env: dict[int, bytes] = {}  # each process's RANK, read once it has one
        self._exited = 0  # ranks seen to exit
        self._stop = threading.Event()
        self._wake = os.pipe()  # stop() writes to it: select returns at once
        self._thread = threading.Thread(target=self._watch, daemon=True, name="labkit-rank-exits")

    def start(self) -> RankExits:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (again: nothing); first_failure keeps what was seen."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake[1], b"x")
        if self._thread.is_alive():
            self._thread.join()
        for fd in [*self._wake, *(fd for _, fd, _ in self._watched.values() if fd is not None)]:
            os.close(fd)
        self._watched.clear()

    def __enter__(self) -> RankExits:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _scan(self) -> bool:
        """Watch the ranks started since the last scan; True if there were any."""
        live = _live()
        running = {pid for pid, _, _ in live}
        self._rank_env = {pid: env for pid, env in self._rank_env.items() if pid in running}  # a pid can be reused
        seen = set(self._rank_env)  # a process with a RANK is judged once, when it is first seen
        found = False
        for pid, rank in rank_processes(self.root, self._env, live).items():
            if pid in seen or pid in self._watched:
                continue
            try:
                fd = os.pidfd_open(pid)
            except (AttributeError, OSError):  # before Linux 5.3 or Python 3.9, or already gone: polled
                fd = None
            self._watched[pid], found = (rank, fd, start_ticks(pid)), True
        return found

    def _env(self, pid: int) -> bytes | None:
        # Only a RANK is kept: a child met between fork and exec shows its launcher's environment (none) until it execs
        if pid in self._rank_env:
            return self._rank_env[pid]
        env = _rank_env(pid)
        if env is not None:
            self._rank_env[pid] = env
        return env

    def _watch(self) -> None:
        next_scan, gap, started = 0.0, self.SCAN_S[0], time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_scan:
                found = self._scan()  # ranks found so far: those exited and those watched
                waiting = not (self._exited or self._watched) and time.monotonic() - started < self.PATIENCE_S
                gap = self.SCAN_S[0] if found or waiting else min(2 * gap, self.SCAN_S[1])
                next_scan = time.monotonic() + gap
            fds = [fd for _, fd, _ in self._watched.values() if fd is not None]
            wait = max(0.0, next_scan - time.monotonic())
            poll = select.poll()  # not select.select: a kernel's fds may number past its 1024 limit
            for fd in (self._wake[0], *fds):
                poll.register(fd, select.POLLIN)
            poll.poll(1000 * (wait if len(fds) == len(self._watched) else min(wait, self.poll_s)))
            for pid, (rank, fd, ticks) in list(self._watched.items()):
                if same_process(pid, ticks):  # not a pid the system gave to a new process after the launcher reaped
                    continue
                status = exit_status(pid) if start_ticks(pid) == ticks else None
                del self._watched[pid]
                if fd is not None:
                    os.close(fd)
                # Unknown status counts only for the first rank to go: after it, launchers stop and reap the others
                failed = status is None and not self._exited or status and status & 0x7F not in STOP_SIGNALS
                if self.first_failure is None and failed:
                    self.first_failure = (rank, None if status is None else how_it_ended(status))
                self._exited += 1


def group_alive(pgid: int) -> bool:
    """True if any live process is in process group pgid."""
    return any(group == pgid for _, _, group in _live())


def send(kill, target: int, sig: int) -> None:
    """kill(target, sig) (os.kill or os.killpg) for a process that may be gone or no longer ours by now."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        kill(target, sig)


def stop_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM proc's process group and every descendant, then SIGKILL whatever is left after grace_s."""
    victims: set[int] = set()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        victims |= set(descendants(proc.pid))
        for kill, target in [(os.killpg, proc.pid), *((os.kill, pid) for pid in victims)]:
            send(kill, target, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            if not group_alive(proc.pid) and not any(alive(p) for p in victims):
                return
            time.sleep(0.05)
    proc.poll()


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C, SIGTERM and SIGHUP while stopping a command: one must not abandon half-killed ranks. One that came
    meanwhile is delivered as the block ends (ignored, CI's `timeout` had the command go on until its SIGKILL, which
    leaves ranks running). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):  # each once, first come first: its own handler (or the default) acts now
            signal.raise_signal(sig)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (CI's `timeout`, `kill`, a closed terminal). Raised where the main thread is, like
    KeyboardInterrupt, so every `finally` runs: rank trees stopped, temp folders removed, a notebook's jobs deleted."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def terminations_raised():
    """SIGTERM and SIGHUP raise Terminated inside the block (main thread only; the default would end the process
    without one `finally`, leaving ranks running and temp folders behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, _frame):
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def silenced_fds() -> Iterator[None]:
    """stdout and stderr of this process and its children to /dev/null, at the file-descriptor level (compiler
    probes run as subprocesses: redirecting sys.stdout alone does not reach them)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(null, fd)
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


class StepWatchdog:
    """Exits this process (os._exit(3)) when no step finishes for `timeout` s (0: off). A rank blocked in a collective
    whose peer died cannot exit normally; this bounds the hang even without a launcher watching. `beat()` per step."""

    def __init__(self, timeout: float, rank: int, tag: str = ""):
        self.timeout, self.rank, self.stopped = timeout, rank, threading.Event()
        self.tag = tag  # the rank scripts' error tag (launch.RANK_ERROR_TAG): the run's one line then says why
        self.thread = threading.Thread(target=self._watch, daemon=True, name="labkit-watchdog")
        self.beat()

    def __enter__(self) -> StepWatchdog:
        if self.timeout > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()  # stopped before the process group goes: no thread outlives the rank's teardown

    def beat(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Work that is no step (an evaluation, a checkpoint save): bounded by the collective timeout, not by this."""
        self.last = math.inf
        try:
            yield
        finally:
            self.beat()

    def _watch(self) -> None:
        while not self.stopped.wait(1.0):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                who = f"{self.tag} rank={self.rank} StepTimeout:" if self.tag else f"rank {self.rank}:"
                why = f"no step finished for {idle:.0f} s (step_timeout {self.timeout:.0f} s)"
                print(f"{who} {why}: a peer rank stalled or died", file=sys.stderr, flush=True)
                os._exit(3)

"""Process control (Linux /proc, standard library only): liveness, stopping a process tree, stale build locks.

Signalling a launcher's process group is not enough: Open MPI's mpirun puts every rank in a process group of its own,
so stopping a run means stopping the group and every descendant, found through /proc. Standard library only, because
the local backend's launcher process (jobs/launcher.py) imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# Rebuilding DeepSpeed's CPU comm op takes about a minute on 2 cores; a lock older than this with no compiler running
# anywhere was left by a rank killed while it held it.
BUILD_LOCK_STALE_S = 300.0
COMPILERS = ("ninja", "cc1plus", "c++", "g++", "gcc", "ld", "ld.bfd")


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
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def group_alive(pgid: int) -> bool:
    """True if any live process is in process group pgid."""
    return any(group == pgid for _, _, group in _live())


def stop_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM proc's process group and every descendant, then SIGKILL whatever is left after grace_s."""
    victims: set[int] = set()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        victims |= set(descendants(proc.pid))
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in victims:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            if not group_alive(proc.pid) and not any(alive(p) for p in victims):
                return
            time.sleep(0.05)
    proc.poll()


def _compiler_running() -> bool:
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() in COMPILERS:
                    return True
        except OSError:
            continue
    return False


def clear_stale_build_locks(stale_after_s: float = BUILD_LOCK_STALE_S, *, say=None) -> list[Path]:
    """Remove torch-extension build locks abandoned by killed ranks: the kit's one stale-lock policy.

    Every DeepSpeed CPU rank JIT-loads the shared-memory comm op under torch's file lock
    (`TORCH_EXTENSIONS_DIR/<py>/<op>/lock`, no owner recorded). A rank killed while holding it leaves the file behind
    and every later DeepSpeed process waits for it for ever, silently. A lock older than stale_after_s while no
    compiler runs anywhere is such a leftover."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    now = time.time()
    try:
        locks = [p for p in [*root.glob("*/*/lock"), *root.glob("*/lock")] if now - p.stat().st_mtime > stale_after_s]
    except OSError:
        return []
    if not locks or _compiler_running():
        return []
    removed = []
    for lock in locks:
        try:
            lock.unlink()
        except OSError:
            continue
        removed.append(lock)
        (say or _stderr)(f"labkit: removed {lock.parent.name}'s build lock, left by a process killed while building it")
    return removed


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class StaleLockSweeper:
    """While DeepSpeed initialises, re-apply the policy every few seconds (a lock may go stale while we wait on it)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.stop = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="labkit-lock-sweeper")

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            clear_stale_build_locks()

    def __enter__(self) -> StaleLockSweeper:
        clear_stale_build_locks()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()  # no thread of ours outlives the rank's teardown


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

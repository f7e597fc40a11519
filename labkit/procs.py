"""Process-tree helpers (Linux /proc, standard library only).

Signalling a launcher's process group is not enough: Open MPI's mpirun puts every rank in a process group of its own,
so stopping a run means stopping the group and every descendant, found through /proc.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    except OSError:
        return None


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children, grandchildren...)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def group_alive(pgid: int) -> bool:
    """True if any live process is in process group pgid."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


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

"""A local job's directory and processes: what the local backend and its launcher process both read and write.

Each job is a directory `<root>/<namespace>/<name>/` (root: $LABKIT_JOBS_DIR, default ~/.local/state/labkit/jobs):

    job.json       the spec, uid, creation time and deadline        manifest.yaml  what a cluster would be given
    hostfile       `localhost slots=W*S` (see local.py)             launcher.log   the launcher's own log
    launcher.json  launcher pid (written by the launcher)           ready          exists once the launcher runs
    execs/<pgid>   one file per running exec: its process group     state.json     how the job ended
    workdir/       the exec'd commands' working directory
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from labkit.jobs.base import CLUSTER_HOSTFILE
from labkit.procs import alive

JOBS_DIR_ENV = "LABKIT_JOBS_DIR"
JOB_UID_ENV = "LABKIT_JOB_UID"


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def job_pids(uid: str, exclude: set[int]) -> list[int]:
    """Processes whose environment carries this job's uid (survives re-parenting and new process groups)."""
    needle = f"{JOB_UID_ENV}={uid}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def exec_groups(job_dir: Path) -> set[int]:
    """The process groups of the commands exec'd in the job (one file per running exec, named by its pgid)."""
    return {int(f.name) for f in (job_dir / "execs").glob("*") if f.name.isdigit()}


def _signal_all(sig: int, groups: set[int], pids: list[int]) -> None:
    for kill, targets in ((os.killpg, groups), (os.kill, pids)):
        for target in targets:
            try:
                kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop_job_processes(job_dir: Path, uid: str, *, groups: set[int] = frozenset(), grace_s: float = 3.0) -> None:
    """SIGTERM the job's process groups and uid-tagged processes, SIGKILL what is left after grace_s."""
    me = {os.getpid(), os.getppid()}
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        targets = {g for g in groups | exec_groups(job_dir) if g not in me and g > 1}
        _signal_all(sig, targets, job_pids(uid, exclude=me))
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not any(alive(p) for p in job_pids(uid, exclude=me)):
                return
            time.sleep(0.05)


def map_hostfile(argv: list[str], hostfile: Path) -> list[str]:
    """The cluster's /etc/mpi/hostfile path, pointed at this job's own hostfile (same commands on both backends)."""
    return [a.replace(CLUSTER_HOSTFILE, str(hostfile)) for a in argv]


def default_jobs_dir() -> Path:
    if os.environ.get(JOBS_DIR_ENV):
        return Path(os.environ[JOBS_DIR_ENV])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "labkit" / "jobs"


def read_json(path: Path) -> dict | None:
    """The file's JSON object; None when it is missing or half-written by a crashed process."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None

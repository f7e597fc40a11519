"""A local job's directory, and its launcher: a detached process that plays the MPIJob launcher pod.

Each job is a directory `<root>/<namespace>/<name>/` (root: $LABKIT_JOBS_DIR, default ~/.local/state/labkit/jobs):

    job.json       the spec, uid, creation time and deadline        manifest.yaml  what a cluster would be given
    hostfile       `localhost slots=W*S` (see local.py)             launcher.log   the launcher's own log
    launcher.json  launcher pid (written by the launcher)           ready          exists once the launcher runs
    execs/<pgid>   one per running exec: its group leader's start   state.json     how the job ended
    workdir/       the exec'd commands' working directory           bin/ssh        what ssh to a worker means here

`python -m labkit.jobs.launcher JOB_DIR` double-forks, so the launcher belongs to no notebook kernel or CLI process (a
job outlives its submitter, like a pod, and its deadline still holds). It runs the launcher command (`sleep infinity`)
in its own process group, marks the job ready, waits for the deadline, a SIGTERM (delete) or the command's exit, then
stops every process of the job (exec'd process groups under `execs/`, anything whose environment carries the job's
LABKIT_JOB_UID, mpirun ranks included) and writes `state.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from labkit.jobs.base import CLUSTER_HOSTFILE, CLUSTER_SHARED
from labkit.procs import alive, initial_env, same_process, send, start_ticks, token_gone

JOBS_DIR_ENV, JOB_UID_ENV = "LABKIT_JOBS_DIR", "LABKIT_JOB_UID"


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def read_json(path: Path) -> dict | None:
    """The file's JSON object; None when it is missing or half-written by a crashed process."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def owned(path: Path) -> bool:
    """True for a file or directory of this user reached without a symlink: the only kind the local backend reads a
    pid from or deletes (another user's planted job must not make `labkit job list` signal anything)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid()


def exec_record(pid: int, argv: list[str]) -> str:
    """execs/<pgid>: the exec'd command and its leader's start, so a stale record never names a reused pid."""
    return json.dumps({"argv": argv, "start_ticks": start_ticks(pid)}) + "\n"


def _exec_groups(job_dir: Path) -> set[int]:
    """The process groups of the job's running execs whose leader is still the recorded process."""
    records = {int(f.name): read_json(f) for f in (job_dir / "execs").glob("*") if f.name.isdigit() and owned(f)}
    return {pgid for pgid, record in records.items() if record and same_process(pgid, record.get("start_ticks"))}


def default_jobs_dir() -> Path:
    if os.environ.get(JOBS_DIR_ENV):
        return Path(os.environ[JOBS_DIR_ENV])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "labkit" / "jobs"


def shared_dir(namespace_dir: Path) -> Path:
    """The local stand-in for the kit's PVC: one folder per namespace, shared by its jobs and kept after them
    (`_shared`: no job is named so, job names have no '_')."""
    return namespace_dir / "_shared"


def map_paths(argv: list[str], job_dir: Path) -> list[str]:
    """The cluster's paths in a command pointed at this job's stand-ins, so the same commands run on both backends:
    /etc/mpi/hostfile at its own hostfile, the shared volume's /shared at shared_dir. An argument of several lines
    is data (a file's content written through exec) and stays as it is."""
    mounts = {CLUSTER_HOSTFILE: str(job_dir / "hostfile"), CLUSTER_SHARED: str(shared_dir(job_dir.parent))}
    for path, target in mounts.items():
        pattern = re.compile(rf"(?<![\w./-]){re.escape(path)}(?![\w.-])")
        argv = [arg if "\n" in arg else pattern.sub(lambda _m, t=target: t, arg) for arg in argv]
    return argv


def job_pids(uid: str, exclude: set[int]) -> list[int]:
    """Processes whose environment carries this job's uid (survives re-parenting and new process groups)."""
    needle = f"{JOB_UID_ENV}={uid}".encode()
    pids = (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    return [pid for pid in pids if pid not in exclude and needle in initial_env(pid)]


def stop_job_processes(job_dir: Path, uid: str, *, groups: set[int] = frozenset(), grace_s: float = 3.0) -> None:
    """SIGTERM the job's process groups (`execs/`) and uid-tagged processes, SIGKILL what is left after grace_s."""
    me = {os.getpid(), os.getppid()}
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        targets = [(os.killpg, g) for g in groups | _exec_groups(job_dir) if g not in me and g > 1]
        for kill, target in targets + [(os.kill, p) for p in job_pids(uid, exclude=me)]:
            send(kill, target, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not any(alive(p) for p in job_pids(uid, exclude=me)):
                return
            time.sleep(0.05)


OWNER_FILE = "owner.json"  # {"token": procs.process_token}: a process the job ends with (LocalBackend.end_with)


def owner_gone(job_dir: Path) -> bool:
    """True once the process the job was tied to has exited (a notebook kernel killed outright runs no atexit)."""
    return token_gone(str((read_json(job_dir / OWNER_FILE) or {}).get("token", "")))


def record_end(job_dir: Path, **state) -> None:
    write_json(job_dir / "state.json", {**state, "ended": time.time()})


def run_launcher(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    deadline, stop = float(job["deadline"]), {"reason": None}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda _signum, _frame: stop.update(reason="Deleted"))
    log = open(job_dir / "launcher.log", "ab", buffering=0)  # noqa: SIM115 - open for the launcher's whole life
    argv = map_paths(job["launcher_command"], job_dir)
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline))
    log.write(f"[labkit launcher] job {job['namespace']}/{job['name']}: running {argv} until {until}\n".encode())
    try:
        child = subprocess.Popen(
            argv, cwd=job_dir / "workdir", stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        log.write(f"[labkit launcher] cannot start {argv}: {exc}\n".encode())
        record_end(job_dir, phase="Failed", reason="LauncherStartFailed", message=str(exc), returncode=127)
        return 1
    record = {
        "pid": os.getpid(),
        "start_ticks": start_ticks(os.getpid()),
        "child_pid": child.pid,
        "started": time.time(),
    }
    write_json(job_dir / "launcher.json", record)
    (job_dir / "ready").touch()
    returncode = None
    while stop["reason"] is None and (returncode := child.poll()) is None and time.time() < deadline:
        if owner_gone(job_dir):
            stop["reason"] = "OwnerExited"
            break
        time.sleep(0.2)
    reason = "Completed" if returncode is not None else stop["reason"] or "DeadlineExceeded"
    phase = reason if reason != "Completed" else ("Succeeded" if returncode == 0 else "Failed")
    # Say so first: from now on the job accepts no exec and reports its end, even while processes are being stopped.
    record_end(job_dir, phase=phase, reason=reason, returncode=returncode, stopping=True)
    if reason != "Completed":
        log.write(f"[labkit launcher] {reason}: stopping every process of the job\n".encode())
    stop_job_processes(job_dir, job["uid"], groups={child.pid})
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=2)
    record_end(job_dir, phase=phase, reason=reason, returncode=returncode)
    log.write(f"[labkit launcher] job ended: {phase}\n".encode())
    log.close()
    return 0


def main(argv: list[str]) -> int:
    job_dir = Path(argv[1]).resolve()
    pid = os.fork()
    if pid > 0:  # the first child: report the launcher's pid to the caller and exit at once (the caller reaps us)
        os.waitpid(pid, os.WNOHANG)
        print(pid, flush=True)
        return 0
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        return run_launcher(job_dir)
    except BaseException as exc:  # noqa: BLE001 - record why the launcher died, then stop the job
        with contextlib.suppress(OSError):
            record_end(job_dir, phase="Failed", reason="LauncherCrashed", message=repr(exc), returncode=None)
        return 1
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The local backend's launcher: a detached process that plays the MPIJob launcher pod and enforces its deadline.

Run as `python -m labkit.jobs.watchdog JOB_DIR` (standard library and labkit.procs only: it must start fast).
It double-forks so it belongs to no notebook kernel or CLI process: a job outlives the process that submitted it,
exactly like a pod, and its deadline still holds if that process dies. It then

1. starts the launcher command (`sleep infinity` for an interactive job) in its own process group,
2. marks the job ready,
3. waits for the deadline, a SIGTERM (delete), or the launcher command's exit,
4. stops every process of the job: the launcher command, every exec'd command's process group recorded under
   `execs/`, and any straggler whose environment carries this job's LABKIT_JOB_UID (mpirun ranks included),
5. writes `state.json` (phase, reason, exit code) and exits.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from labkit.procs import alive

JOB_UID_ENV = "LABKIT_JOB_UID"
CLUSTER_HOSTFILE = "/etc/mpi/hostfile"


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


def exec_groups(job_dir: Path) -> list[int]:
    groups = []
    for f in (job_dir / "execs").glob("*"):
        try:
            groups.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return groups


def stop_job_processes(job_dir: Path, uid: str, *, groups: list[int] = (), grace_s: float = 3.0) -> int:
    """SIGTERM the job's process groups and tagged processes, SIGKILL what is left after grace_s. Returns #signalled."""
    me = {os.getpid(), os.getppid()}
    signalled: set[int] = set()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        targets = set(groups) | set(exec_groups(job_dir))
        for pgid in targets:
            if pgid in me or pgid <= 1:
                continue
            try:
                os.killpg(pgid, sig)
                signalled.add(pgid)
            except (ProcessLookupError, PermissionError):
                pass
        pids = job_pids(uid, exclude=me)
        for pid in pids:
            try:
                os.kill(pid, sig)
                signalled.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not [p for p in job_pids(uid, exclude=me) if alive(p)]:
                return len(signalled)
            time.sleep(0.05)
    return len(signalled)


def map_hostfile(argv: list[str], hostfile: Path) -> list[str]:
    """The cluster's /etc/mpi/hostfile path, pointed at this job's own hostfile (same commands on both backends)."""
    return [a.replace(CLUSTER_HOSTFILE, str(hostfile)) for a in argv]


def run_launcher(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    uid, deadline = job["uid"], float(job["deadline"])
    stop = {"reason": None}

    def on_signal(signum, _frame):
        stop["reason"] = "Deleted"

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    log = open(job_dir / "launcher.log", "ab", buffering=0)
    argv = map_hostfile(job["launcher_command"], job_dir / "hostfile")
    log.write(f"[labkit launcher] job {job['namespace']}/{job['name']}: running {argv} until "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(deadline))}\n".encode())
    try:
        child = subprocess.Popen(argv, cwd=job_dir / "workdir", stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        log.write(f"[labkit launcher] cannot start {argv}: {exc}\n".encode())
        write_json(job_dir / "state.json", {"phase": "Failed", "reason": "LauncherStartFailed", "message": str(exc),
                                            "returncode": 127, "ended": time.time()})
        return 1
    write_json(job_dir / "launcher.json", {"pid": os.getpid(), "child_pid": child.pid, "started": time.time()})
    (job_dir / "ready").touch()

    returncode = None
    while stop["reason"] is None:
        returncode = child.poll()
        if returncode is not None:
            stop["reason"] = "Completed"
            break
        if time.time() >= deadline:
            stop["reason"] = "DeadlineExceeded"
            break
        time.sleep(0.2)

    reason = stop["reason"]
    if reason == "Completed":
        phase = "Succeeded" if returncode == 0 else "Failed"
    elif reason == "DeadlineExceeded":
        phase = "DeadlineExceeded"
    else:
        phase = "Deleted"
    # Say so first: from now on the job accepts no exec and reports its end, even while processes are being stopped.
    write_json(job_dir / "state.json", {"phase": phase, "reason": reason, "returncode": returncode,
                                        "ended": time.time(), "stopping": True})
    if reason != "Completed":
        log.write(f"[labkit launcher] {reason}: stopping every process of the job\n".encode())
    stop_job_processes(job_dir, uid, groups=[child.pid])
    try:
        child.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    write_json(job_dir / "state.json", {"phase": phase, "reason": reason, "returncode": returncode,
                                        "ended": time.time()})
    log.write(f"[labkit launcher] job ended: {phase}\n".encode())
    log.close()
    return 0


def main(argv: list[str]) -> int:
    job_dir = Path(argv[1]).resolve()
    # Double fork: the launcher belongs to no caller (a notebook kernel may die; the deadline must still hold).
    pid = os.fork()
    if pid > 0:
        # First child: report the launcher's pid to the caller and exit at once (the caller reaps us).
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
        try:
            write_json(job_dir / "state.json", {"phase": "Failed", "reason": "LauncherCrashed", "message": repr(exc),
                                                "returncode": None, "ended": time.time()})
        except OSError:
            pass
        return 1
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

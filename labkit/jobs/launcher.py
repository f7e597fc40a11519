"""The local backend's launcher: a detached process that plays the MPIJob launcher pod and enforces its deadline.

Run as `python -m labkit.jobs.launcher JOB_DIR` (light imports: it must start fast).
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

from labkit.jobs.jobdir import map_hostfile, stop_job_processes, write_json

# How the launcher's stop reason reads as the job's phase (a finished command: by its exit code).
PHASE_OF = {"DeadlineExceeded": "DeadlineExceeded", "Deleted": "Deleted"}


def _wait_for_end(child: subprocess.Popen, deadline: float, stop: dict) -> tuple[str, int | None]:
    """(reason, exit code) once the deadline passes, a signal arrives, or the launcher command exits."""
    while stop["reason"] is None:
        returncode = child.poll()
        if returncode is not None:
            return "Completed", returncode
        if time.time() >= deadline:
            return "DeadlineExceeded", None
        time.sleep(0.2)
    return stop["reason"], None


def run_launcher(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    uid, deadline = job["uid"], float(job["deadline"])
    stop = {"reason": None}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda _signum, _frame: stop.update(reason="Deleted"))

    log = open(job_dir / "launcher.log", "ab", buffering=0)
    argv = map_hostfile(job["launcher_command"], job_dir / "hostfile")
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline))
    log.write(f"[labkit launcher] job {job['namespace']}/{job['name']}: running {argv} until {until}\n".encode())
    try:
        child = subprocess.Popen(
            argv, cwd=job_dir / "workdir", stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        log.write(f"[labkit launcher] cannot start {argv}: {exc}\n".encode())
        state = {"phase": "Failed", "reason": "LauncherStartFailed", "message": str(exc), "returncode": 127}
        write_json(job_dir / "state.json", {**state, "ended": time.time()})
        return 1
    write_json(job_dir / "launcher.json", {"pid": os.getpid(), "child_pid": child.pid, "started": time.time()})
    (job_dir / "ready").touch()

    reason, returncode = _wait_for_end(child, deadline, stop)
    phase = PHASE_OF.get(reason) or ("Succeeded" if returncode == 0 else "Failed")
    state = {"phase": phase, "reason": reason, "returncode": returncode}
    # Say so first: from now on the job accepts no exec and reports its end, even while processes are being stopped.
    write_json(job_dir / "state.json", {**state, "ended": time.time(), "stopping": True})
    if reason != "Completed":
        log.write(f"[labkit launcher] {reason}: stopping every process of the job\n".encode())
    stop_job_processes(job_dir, uid, groups={child.pid})
    try:
        child.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    write_json(job_dir / "state.json", {**state, "ended": time.time()})
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
        state = {"phase": "Failed", "reason": "LauncherCrashed", "message": repr(exc), "returncode": None}
        try:
            write_json(job_dir / "state.json", {**state, "ended": time.time()})
        except OSError:
            pass
        return 1
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

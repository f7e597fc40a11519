"""LocalBackend: an MPIJob played by real processes on this machine.

Each job is a directory (see jobdir.py). The launcher is `launcher.py`: a detached process (its own session, belonging
to no notebook kernel) that runs the launcher command (`sleep infinity`), and at the deadline or on delete stops the
job's every process. Because all state is in the directory, `list()`, `exec()` and `delete()` work from any process
(the CLI, another notebook).

Workers: the cluster hostfile has one line per worker pod (`<name>-worker-<i>.<name>.<ns>.svc slots=S`). Locally all
W workers are this one host, so the hostfile holds one line, `localhost slots=W*S`: Open MPI then starts W*S ranks
here without ssh (aliases such as 127.0.0.2 would make mpirun try ssh). The comment lines above it show the hosts the
cluster would list. Commands may name the cluster path /etc/mpi/hostfile: it is mapped to this job's hostfile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from labkit import launch, manifests, procs
from labkit.devices import ACCELERATOR_OF, DEVICE_OF, check_ranks_fit, pick_device
from labkit.errors import ConfigError, LabkitError, check_number
from labkit.jobs.base import (
    Job,
    JobBackend,
    JobNotFound,
    JobNotReady,
    JobStatus,
    check_exec_args,
    check_job_name,
    interrupts_deferred,
    print_output,
)
from labkit.jobs.jobdir import (
    JOB_UID_ENV,
    default_jobs_dir,
    map_hostfile,
    read_json,
    stop_job_processes,
    write_json,
)

MAX_LOCAL_RANKS = 16  # more ranks than this on one machine only thrash it
_EXEC_GRACE_S = 5.0


def _master_port(argv: list[str]) -> str:
    """The rendezvous port for an exec: the command's own --master_port, else a free one.

    DeepSpeed's openmpi launcher does not pass --master_port to the ranks (its MPI discovery falls back to 29500, so
    concurrent jobs on one host collide); ranks started by a local mpirun inherit this environment instead.
    """
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--master_port" and i + 1 < len(argv) else arg.partition("--master_port=")[2]
        if value.isdigit():
            return value
    return str(launch.free_port())


def local_hostfile_text(name: str, namespace: str, workers: int, slots: int) -> str:
    cluster = "".join(f"#   {name}-worker-{i}.{name}.{namespace}.svc slots={slots}\n" for i in range(workers))
    return (
        f"# labkit local job {namespace}/{name}: {workers} worker(s) x {slots} slot(s), all on this host.\n"
        f"# On a cluster the MPI Operator writes one line per worker pod:\n{cluster}"
        f"localhost slots={workers * slots}\n"
    )


class LocalBackend(JobBackend):
    """Jobs as processes on this machine (the default backend; no cluster needed).

    `deadline_seconds` overrides every job's deadline (manifests require at least 60 s; failure drills and tests use
    a few seconds)."""

    name = "local"
    one_host = True

    def __init__(
        self, root: str | Path | None = None, namespace: str = "workloads", deadline_seconds: float | None = None
    ):
        if deadline_seconds is not None:
            check_number("deadline_seconds", deadline_seconds, 0.0, "pass e.g. 5, or None for the spec's", strict=True)
        self.root = Path(root) if root is not None else default_jobs_dir()
        self.namespace, self.deadline_seconds = namespace, deadline_seconds

    def accelerator_for(self, device: str, ranks: int) -> tuple[str, str]:
        picked = pick_device(device)  # ConfigError for an unknown or unavailable device
        if ranks > MAX_LOCAL_RANKS:
            raise ConfigError(
                "workers",
                f"{ranks} local ranks is more than this kit runs on one machine ({MAX_LOCAL_RANKS})",
                "use fewer workers/slots locally, or backend='kubernetes'",
            )
        check_ranks_fit("workers", ranks, picked)
        auto = device.strip().lower() == "auto"
        return ACCELERATOR_OF[picked], ("picked on this machine" if auto else "requested")

    def job_dir(self, name: str, namespace: str | None = None) -> Path:
        return self.root / (namespace or self.namespace) / name

    def _existing_dir(self, name: str, namespace: str | None) -> Path:
        d = self.job_dir(check_job_name(name), namespace)
        if not (d / "job.json").is_file():
            raise JobNotFound(
                f"local job {namespace or self.namespace}/{name} does not exist "
                f"(in {self.root}); see `labkit job list --backend local`"
            )
        return d

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    def submit(self, spec: manifests.JobSpec) -> Job:
        spec = spec.resolved()  # validates, and fills slots/command/... from the overlay as the cluster would
        check_job_name(spec.name)
        self._collect_garbage()
        d = self.job_dir(spec.name, spec.namespace)
        if (d / "job.json").exists():
            if self._status_from_dir(d).phase in ("Pending", "Running"):
                raise ConfigError(
                    "name",
                    f"a local job {spec.namespace}/{spec.name} is already running",
                    f"delete it first (`labkit job delete {spec.name} --backend local`) or pick another name",
                )
            shutil.rmtree(d, ignore_errors=True)  # a finished job of the same name: replace it, as kubectl would
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            d.mkdir()  # atomic: of two concurrent submits of one name, one wins
        except FileExistsError:
            raise ConfigError(
                "name",
                f"a local job {spec.namespace}/{spec.name} is being created right now",
                "pick another name, or delete that job first",
            ) from None
        (d / "execs").mkdir()
        (d / "workdir").mkdir()
        (d / "manifest.yaml").write_text(manifests.to_yaml(manifests.render_all(spec)))
        (d / "hostfile").write_text(local_hostfile_text(spec.name, spec.namespace, spec.workers, spec.slots_per_worker))
        now = time.time()
        job = {
            "name": spec.name,
            "namespace": spec.namespace,
            "uid": uuid.uuid4().hex,
            "created": now,
            "deadline": now + float(self.deadline_seconds or spec.deadline_seconds),
            "workers": spec.workers,
            "slots_per_worker": spec.slots_per_worker,
            "accelerator": spec.accelerator,
            "launcher_command": list(spec.launcher_command or ["sleep", "infinity"]),
            "ttl_seconds_after_finished": spec.ttl_seconds_after_finished,
        }
        write_json(d / "job.json", job)
        starter = subprocess.run(
            [sys.executable, "-m", "labkit.jobs.launcher", str(d)], env=self._job_env(d, job), cwd=d,
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if starter.returncode != 0 or not starter.stdout.strip().isdigit():
            shutil.rmtree(d, ignore_errors=True)
            raise LabkitError(f"the local launcher for {spec.name} did not start: {starter.stderr.strip()[-500:]}")
        return Job(self, spec.name, spec.namespace)

    def _job_env(self, d: Path, job: dict) -> dict[str, str]:
        extra = {
            JOB_UID_ENV: job["uid"],
            "LABKIT_JOB_DIR": str(d),
            "LABKIT_HOSTFILE": str(d / "hostfile"),
            # What the operator sets in a launcher (Open MPI 4 reads it; commands also pass --hostfile explicitly).
            "OMPI_MCA_orte_default_hostfile": str(d / "hostfile"),
            # `deepspeed`/`mpirun` from this environment first, as the image's PATH would provide them.
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        }
        ranks = job["workers"] * job["slots_per_worker"]
        return launch.kit_env(extra, world_size=ranks, device=DEVICE_OF[job.get("accelerator", "cpu")])

    def _read_job(self, d: Path) -> dict:
        job = read_json(d / "job.json")
        if job is None:
            raise JobNotFound(f"local job at {d} is unreadable")
        return job

    def _launcher_pid(self, d: Path) -> int | None:
        info = read_json(d / "launcher.json") or {}
        return info.get("pid")

    def _status_from_dir(self, d: Path) -> JobStatus:
        job = self._read_job(d)
        st = JobStatus(
            name=job["name"], namespace=job["namespace"], backend=self.name, phase="Pending", created=job["created"],
            deadline=job["deadline"], workers=job.get("workers"), slots_per_worker=job.get("slots_per_worker"),
        )  # fmt: skip
        if (d / "state.json").is_file():
            state = read_json(d / "state.json") or {"phase": "Failed", "reason": "unreadable state"}
            st.phase, st.message = state.get("phase", "Failed"), state.get("reason", "")
            if state.get("returncode") not in (None, 0):
                st.message += f" (exit code {state['returncode']})"
            if state.get("ended"):
                st.message += f", ended {time.strftime('%H:%M:%S', time.localtime(state['ended']))}"
            return st
        pid = self._launcher_pid(d)
        if (d / "ready").exists() and pid is not None:
            if procs.alive(pid):
                st.phase, st.ready, st.message = "Running", True, f"launcher pid {pid}"
            else:
                st.phase, st.message = "Failed", f"launcher pid {pid} died without recording why"
        elif time.time() - job["created"] > 60:
            st.phase, st.message = "Failed", "launcher never started"
        return st

    def status(self, name: str, *, namespace: str | None = None) -> JobStatus:
        return self._status_from_dir(self._existing_dir(name, namespace))

    def wait_ready(self, name: str, *, timeout: float = 300.0, namespace: str | None = None) -> JobStatus:
        end = time.monotonic() + timeout
        while True:
            st = self.status(name, namespace=namespace)
            if st.ready:
                return st
            if st.phase != "Pending":
                raise JobNotReady(f"local job {st.namespace}/{name} cannot become ready: {st.phase} {st.message}")
            if time.monotonic() > end:
                raise JobNotReady(f"local job {st.namespace}/{name} not ready after {timeout:.0f} s")
            time.sleep(0.05)

    def exec(self, name: str, argv: list[str], *, on_output=print_output, timeout=None, namespace=None) -> int:
        check_exec_args(argv, timeout)
        d = self._existing_dir(name, namespace)
        st = self._status_from_dir(d)
        if not st.ready:
            raise JobNotReady(
                f"local job {st.namespace}/{name} is {st.phase} {st.message}: cannot exec; "
                "wait_ready() first or submit it again"
            )
        env = self._job_env(d, self._read_job(d))
        cmd = map_hostfile(list(argv), d / "hostfile")
        env["MASTER_PORT"] = _master_port(cmd)
        procs.clear_stale_build_locks(say=(lambda t: on_output(t + "\n")) if on_output else None)
        try:
            proc = subprocess.Popen(
                cmd, cwd=d / "workdir", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            # What a pod exec reports for a missing binary: a message on stderr and exit code 127/126.
            if on_output:
                on_output(f"labkit exec: cannot run {cmd[0]!r}: {exc.strerror}\n")
            return 127 if isinstance(exc, FileNotFoundError) else 126
        record = d / "execs" / str(proc.pid)
        record.write_text(f"{json.dumps(cmd)}\n")  # pgid == pid (new session): the launcher can stop it

        def pump() -> None:
            try:
                for raw in iter(proc.stdout.readline, b""):
                    if on_output:
                        on_output(raw.decode("utf-8", "replace"))
            except (ValueError, OSError):  # the pipe was closed under us after a forced stop
                pass

        reader = threading.Thread(target=pump, daemon=True)
        grace_s, join_s = _EXEC_GRACE_S, 5
        try:
            reader.start()  # inside the try: output (and an interrupt it triggers) can arrive at once
            returncode = proc.wait(timeout=timeout)
            grace_s, join_s = 1.0, 10  # it exited: only ranks left in its group remain to be stopped
            return returncode
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"exec in {name} timed out after {timeout} s: {cmd[0]} and its ranks were stopped"
            ) from None
        finally:
            # Whatever ended the wait (exit, timeout, the notebook's stop button): no rank outlives the command, even
            # if the user presses stop again while we clean up.
            with interrupts_deferred():
                procs.stop_tree(proc, grace_s)
                if proc.returncode is None:
                    try:
                        proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        pass
                reader.join(timeout=join_s)
            record.unlink(missing_ok=True)
            if proc.stdout and not reader.is_alive():
                proc.stdout.close()

    def logs(self, name: str, *, namespace: str | None = None) -> str:
        log = self._existing_dir(name, namespace) / "launcher.log"
        return log.read_text(errors="replace") if log.is_file() else ""

    def delete(self, name: str, *, namespace: str | None = None) -> bool:
        d = self.job_dir(check_job_name(name), namespace)
        if not (d / "job.json").is_file():
            return False
        with interrupts_deferred():  # half a delete would leave processes without a launcher to end them
            self._stop(d)
            shutil.rmtree(d, ignore_errors=True)
        return True

    def _stop(self, d: Path) -> None:
        """Stop the launcher (it stops the job's processes) and make sure of it from here too."""
        try:
            job = self._read_job(d)
        except JobNotFound:
            return
        pid = self._launcher_pid(d)
        if pid is not None and procs.alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)  # the launcher leads its own session
            except ProcessLookupError:
                pass
            end = time.monotonic() + 8
            while procs.alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
        # Whatever the launcher could not (it may have died): exec groups and processes tagged with the job uid.
        stop_job_processes(d, job["uid"], grace_s=2.0)
        if pid is not None and procs.alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def list(self, *, namespace: str | None = None) -> list[JobStatus]:
        self._collect_garbage()
        ns_dirs = sorted(self.root.glob("*")) if namespace == "*" else [self.root / (namespace or self.namespace)]
        out: list[JobStatus] = []
        for ns_dir in ns_dirs:
            for d in sorted(ns_dir.glob("*/job.json")):
                try:
                    out.append(self._status_from_dir(d.parent))
                except JobNotFound:
                    continue
        return out

    def _collect_garbage(self) -> None:
        """ttlSecondsAfterFinished: remove finished jobs once their TTL has passed (as the cluster does)."""
        now = time.time()
        for state_file in self.root.glob("*/*/state.json"):
            d = state_file.parent
            job, state = read_json(d / "job.json"), read_json(state_file)
            if job is None or state is None:
                continue
            ttl = job.get("ttl_seconds_after_finished")
            if ttl is not None and now - (state.get("ended") or now) > float(ttl):
                self._stop(d)
                shutil.rmtree(d, ignore_errors=True)

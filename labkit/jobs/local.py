"""LocalBackend: an MPIJob played by real processes on this machine.

Each job is a directory (see launcher.py), so `list()`, `exec()` and `delete()` work from any process (the CLI,
another notebook); its launcher process stops the job's every process at the deadline or on delete.

The cluster hostfile has one line per worker pod. Locally all W workers are this one host, so the hostfile holds one
line, `localhost slots=W*S`: Open MPI then starts W*S ranks here without ssh (aliases such as 127.0.0.2 would make
mpirun try ssh); comment lines above it show the hosts the cluster would list. Commands may name the cluster path
/etc/mpi/hostfile: it is mapped to this job's hostfile, and the shared volume's /shared to the namespace's `_shared`
folder (launcher.map_paths). What DeepSpeed asks a worker over ssh (is it reachable, its
address) the job's `bin/ssh` answers for localhost, so the cluster's command line works as typed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path, PurePosixPath

from labkit import launch, manifests, procs
from labkit.devices import ACCELERATOR_OF, DEVICE_OF, auto_ranks, check_ranks_fit, pick_device
from labkit.errors import ConfigError, LabkitError, check_number, make_folder
from labkit.jobs import base, command_line
from labkit.jobs.base import EXEC_TAG, Job, JobBackend, JobNotFound, JobNotReady, JobStatus
from labkit.jobs.launcher import (
    JOB_UID_ENV,
    JOBS_DIR_ENV,
    OWNER_FILE,
    default_jobs_dir,
    exec_record,
    map_paths,
    owned,
    read_json,
    record_end,
    shared_dir,
    stop_job_processes,
    write_json,
)
from labkit.procs import interrupts_deferred

LOCAL_KIND_FIX = "leave it out: local jobs are MPIJobs (TrainJobs run on a cluster: --backend kubernetes)"
# The job's `ssh`: every worker is localhost, so `ssh localhost CMD` runs CMD here and DeepSpeed's master address
# probe (`ssh HOST hostname -I`) answers the loopback address the ranks rendezvous on.
SSH_SHIM = """#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -[bcDEeFIiJLlmOopQRSWw]) shift 2;; -*) shift;; *) break;; esac; done
host=$1; shift
case "$host" in localhost|127.0.0.1|"$(hostname)") ;;
  *) echo "labkit local job: no ssh to $host: every worker of a local job is localhost" >&2; exit 255;; esac
if [ "$*" = "hostname -I" ]; then echo 127.0.0.1; else exec sh -c "$*"; fi
"""


def local_hostfile_text(name: str, namespace: str, workers: int, slots: int) -> str:
    cluster = "".join(f"#   {name}-worker-{i}.{name}.{namespace}.svc slots={slots}\n" for i in range(workers))
    return (
        f"# labkit local job {namespace}/{name}: {workers} worker(s) x {slots} slot(s), all on this host.\n"
        f"# On a cluster the MPI Operator writes one line per worker pod:\n{cluster}"
        f"localhost slots={workers * slots}\n"
    )


class LocalBackend(JobBackend):
    """Jobs as processes on this machine (the default backend; no cluster needed).

    `deadline_seconds` overrides every job's deadline (manifests require at least 60 s; drills and tests use a few)."""

    name = "local"
    one_host = True

    def __init__(self, root=None, namespace: str | None = None, deadline_seconds: float | None = None):
        if deadline_seconds is not None:
            check_number("deadline_seconds", deadline_seconds, 0.0, "pass e.g. 5, or None for the spec's", strict=True)
        self.root = Path(root) if root is not None else default_jobs_dir()
        self.root_field = "jobs_dir" if root is not None else JOBS_DIR_ENV  # named as set (the CLI: --jobs-dir)
        # None: the cluster's default (the lab's own), so a rehearsal here names the job as the cluster run would
        self.namespace = base.check_namespace(namespace or manifests.default_namespace())
        self.deadline_seconds = deadline_seconds

    def accelerator_for(self, device: str, workers: int, slots: int) -> tuple[str, int, str]:
        picked = pick_device(device)  # ConfigError for an unknown or unavailable device
        why = "picked on this machine" if device.strip().lower() == "auto" else "requested"
        field = "workers"
        if not workers:  # then the ranks are too many for the slots the user set, not for workers
            ranks, _, per = auto_ranks(device)
            workers, field = max(1, ranks // slots), "slots"
            why += f"; workers 0 = automatic: {workers} ({per})"
        counted = f"{workers} worker(s) x {slots} slot(s) = {workers * slots}"
        check_ranks_fit(field, workers * slots, picked, elsewhere="backend='kubernetes'", counted=counted)
        return ACCELERATOR_OF[picked], workers, why

    def namespace_dir(self, namespace: str | None = None) -> Path:
        return self.root / base.check_namespace(namespace or self.namespace)

    def job_dir(self, name: str, namespace: str | None = None) -> Path:
        return self.namespace_dir(namespace) / name

    def shared_path(self, path: str, namespace: str | None = None) -> Path:
        """Where a path under the jobs' /shared (the cluster's PVC) lies here, e.g. to read what ranks wrote; any
        other path is no volume's and comes back as it is."""
        inside = PurePosixPath(path)
        if not inside.is_relative_to(base.CLUSTER_SHARED):
            return Path(path)
        return shared_dir(self.namespace_dir(namespace)) / inside.relative_to(base.CLUSTER_SHARED)

    def _checked_root(self, create: bool = False) -> bool:
        """Whether the jobs folder exists (made 0700 when `create`); a ConfigError when another user could have
        planted jobs in it (not ours, a symlink, or writable by others): we read pids from it and signal them."""
        if re.search(r"[^\w./+:@%,=-]", str(self.root)):  # its paths go into shell lines (/etc/mpi/hostfile, ssh)
            problem = f"{str(self.root)!r} holds a space or a character a shell reads"
            fix = "point it at a folder whose path has none (e.g. /tmp/labkit-jobs)"
            raise ConfigError(self.root_field, problem, fix)
        if create:
            make_folder(self.root, self.root_field, mode=0o700)
        if not os.path.lexists(self.root):
            return False
        if os.path.isfile(self.root):  # else `list` would find no jobs in it, and say so
            raise ConfigError(self.root_field, f"{self.root} is a file", "point it at a folder (made if missing)")
        if not owned(self.root) or os.lstat(self.root).st_mode & 0o022:
            problem = f"{self.root} is not a folder of yours that only you can write (owner, mode or symlink)"
            raise ConfigError(self.root_field, problem, "point it at a folder of your own, or leave it unset")
        return True

    def _ours(self, d: Path) -> bool:
        """A job folder (and its job.json) written by this user, not reached through a symlink."""
        return owned(d.parent) and owned(d) and owned(d / "job.json")

    def _existing_dir(self, name: str, namespace: str | None) -> Path:
        d = self.job_dir(base.check_job_name(name), namespace)
        if not self._checked_root() or not self._ours(d):
            where = f"{namespace or self.namespace}/{name} does not exist (in {self.root})"
            raise JobNotFound(f"local job {where}; see `labkit job list --backend local`")
        return d

    def submit(self, spec: manifests.JobSpec) -> Job:
        spec = spec.resolved()  # validates, and fills slots/command/... from the overlay as the cluster would
        base.check_job_name(spec.name)
        self._checked_root(create=True)
        self._collect_garbage()
        d, ref = self.job_dir(spec.name, spec.namespace), f"a local job {spec.namespace}/{spec.name}"
        if os.path.lexists(d) and not self._ours(d):
            raise ConfigError("name", f"{ref}: {d} exists but is not a job of yours", "pick another name")
        if (d / "job.json").exists():
            if self._status_from_dir(d).phase in ("Pending", "Running"):
                fix = f"delete it first (`labkit job delete {spec.name} --backend local`) or pick another name"
                raise ConfigError("name", f"{ref} is already running", fix)
            self._stop(d)  # its launcher may still be stopping it: it must not outlive the folder it would share
            shutil.rmtree(d, ignore_errors=True)  # a finished job of the same name: replace it, as kubectl would
        d.parent.mkdir(mode=0o700, exist_ok=True)
        if not owned(d.parent):
            raise ConfigError("namespace", f"{d.parent} is not a folder of yours", "use another namespace")
        try:
            d.mkdir(mode=0o700)  # atomic: of two concurrent submits of one name, one wins; only we read its commands
        except FileExistsError:
            raise ConfigError("name", f"{ref} is being created right now", "pick another name, or delete it") from None
        for sub in ("execs", "workdir", "bin"):
            (d / sub).mkdir()
        shared_dir(d.parent).mkdir(mode=0o700, exist_ok=True)
        (d / "bin" / "ssh").write_text(SSH_SHIM)
        (d / "bin" / "ssh").chmod(0o755)
        (d / "manifest.yaml").write_text(manifests.to_yaml(manifests.render_all(spec)))
        (d / "hostfile").write_text(local_hostfile_text(spec.name, spec.namespace, spec.workers, spec.slots_per_worker))
        now, launcher = time.time(), list(spec.launcher_command or ["sleep", "infinity"])
        job = dict(
            name=spec.name, namespace=spec.namespace, uid=uuid.uuid4().hex, created=now, workers=spec.workers,
            deadline=now + float(self.deadline_seconds or spec.deadline_seconds), accelerator=spec.accelerator,
            slots_per_worker=spec.slots_per_worker, launcher_command=launcher,
            ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
        )  # fmt: skip
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
            # The job's ssh, then `deepspeed`/`mpirun` from this environment, as the image's PATH would provide them.
            "PATH": os.pathsep.join([str(d / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        ranks = job["workers"] * job["slots_per_worker"]
        return launch.kit_env(extra, world_size=ranks, device=DEVICE_OF[job.get("accelerator", "cpu")])

    def _read_job(self, d: Path) -> dict:
        job = read_json(d / "job.json") if self._ours(d) else None
        if job is None:
            raise JobNotFound(f"local job at {d} is unreadable")
        return job

    def _launcher(self, d: Path) -> tuple[int | None, bool]:
        """(launcher pid, whether that very process still runs): a pid is trusted only from our own launcher.json and
        only while its start time matches the recorded one (pids are reused)."""
        record = (read_json(d / "launcher.json") if owned(d / "launcher.json") else None) or {}
        pid = record.get("pid")
        return pid, isinstance(pid, int) and procs.same_process(pid, record.get("start_ticks"))

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
        pid, running = self._launcher(d)
        started = (d / "ready").exists() and pid is not None
        if started and running:
            st.phase, st.ready, st.message = "Running", True, f"launcher pid {pid}"
        elif not running and (started or time.time() - job["created"] > 60):
            # Nothing else enforces its deadline: stop what it left and record the end (the TTL and --stale count it)
            why = f"launcher pid {pid} died without recording why" if started else "launcher never started"
            if not (d / "state.json").exists():  # (it may have recorded its end as it exited, since the look above)
                stop_job_processes(d, job["uid"], grace_s=2.0)
                record_end(d, phase="Failed", reason=why)
            return self._status_from_dir(d)
        return st

    def status(self, name: str, *, namespace: str | None = None, kind: str | None = None) -> JobStatus:
        base.check_kind(kind, ("MPIJob",), LOCAL_KIND_FIX)
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

    @staticmethod
    def _check_typed_ranks(st: JobStatus, job: dict, flag: str, ranks: int, fits: str) -> None:
        """ConfigError naming `flag` when the `ranks` typed with it cannot start (command_line.typed_ranks' `fits`):
        as many per worker as DeepSpeed's runner starts on each host of the job's hostfile, where a pod has one device
        per slot; more than the job's slots (an mpirun or accelerate count), which its pods' mpirun refuses ("There
        are not enough slots available in the system") and DeepSpeed's runner fills one rank each; more than this
        machine runs."""
        device, per = DEVICE_OF[job["accelerator"]], job["slots_per_worker"]
        if fits == "worker" and device in ("cuda", "hpu") and ranks > per:  # CPU ranks over the slots run on a pod
            problem = (
                f"{ranks} ranks on each worker of job {st.namespace}/{st.name}, whose pods have {per} {device.upper()}"
                f" device(s) each (its hostfile's slots): DeepSpeed's runner starts {ranks} on every host of the"
                f" hostfile, and ranks {per}..{ranks - 1} of each would find no device"
            )
            raise ConfigError(flag, problem, f"pass {flag} {per} or fewer, or submit the job with --slots {ranks}")
        check_ranks_fit(flag, ranks, device)
        slots = job["workers"] * per
        if fits == "slots" and ranks > slots:
            have = f"{job['workers']} worker(s) x {per} slot(s) = {slots}"
            problem = f"{ranks} ranks but job {st.namespace}/{st.name} has {have} slot(s) (its hostfile's)"
            raise ConfigError(flag, problem, f"pass {flag} {slots} or fewer, or submit the job with more workers/slots")

    @staticmethod
    def _refuse_runner_limit(st: JobStatus, job: dict, flag: str, launcher: str, said: str) -> None:
        """ConfigError naming `flag`, which DeepSpeed's runner in the job's launcher pod refuses with its MPI
        `launcher` (command_line.runner_limit_refused), quoting what it `said` there."""
        where = f"job {st.namespace}/{st.name}'s launcher pod, over its hostfile's {job['workers']} worker(s)"
        problem = f"in {where}, DeepSpeed's runner with --launcher {launcher} stops at once: '{said}'"
        if flag in ("--include", "--exclude", "--num_nodes"):
            fix = "drop it: the runner starts ranks on every worker; for fewer submit the job with --workers N"
        else:
            per = job["slots_per_worker"]
            fix = f"drop it: each worker starts a rank per slot ({per} here); for another count submit with --slots N"
        raise ConfigError(flag, problem, fix)

    def exec(self, name: str, argv: list[str], *, on_output=base.print_output, timeout=None, namespace=None) -> int:
        base.check_exec_args(argv, timeout)
        d = self._existing_dir(name, namespace)
        st, job = self._status_from_dir(d), self._read_job(d)
        if not st.ready:
            problem = f"local job {st.namespace}/{name} is {st.phase} {st.message}: cannot exec"
            raise JobNotReady(f"{problem}; wait_ready() first or submit it again")
        cmd = map_paths(list(argv), d)
        starts_ranks = launch.starts_ranks(cmd)
        if starts_ranks:  # refused before launch, like a plan: one rank per local accelerator
            check_ranks_fit("workers", job["workers"] * job["slots_per_worker"], DEVICE_OF[job["accelerator"]])
        refused = command_line.runner_limit_refused(cmd, str(d / "hostfile"), job["workers"])
        if refused:  # the pods' hostfile has a host per worker, this one line: the runner here would take it
            self._refuse_runner_limit(st, job, *refused)
        typed = command_line.typed_ranks(cmd, str(d / "hostfile"))  # /etc/mpi/hostfile is mapped to it
        if typed:  # a count in the command line itself, named as typed there
            self._check_typed_ranks(st, job, *typed)
        # TMPDIR of the exec's own (like a pod's /tmp): torchrun's logs and a stopped mpirun's session files go with it
        with procs.own_tmpdir(self._job_env(d, job)) as env:
            cmd, env["MASTER_PORT"] = command_line.with_master_port(cmd)
            # Every worker is this host: without it DeepSpeed's MPI discovery takes `hostname -I`'s first address and
            # the rendezvous is on the network (and torch, with no DNS, warns it cannot name the client socket).
            env["MASTER_ADDR"] = "127.0.0.1"
            say = on_output or (lambda _text: None)
            try:
                proc = launch.start_session(cmd, env, d / "workdir")
            except OSError as exc:  # what a pod exec reports for a missing binary: a message and exit code 127/126
                say(f"{EXEC_TAG}cannot run {cmd[0]!r}: {exc.strerror}\n")
                return 127 if isinstance(exc, FileNotFoundError) else 126
            record = d / "execs" / str(proc.pid)
            record.write_text(exec_record(proc.pid, cmd))  # pgid == pid (new session): the launcher can stop it
            tail = base.OutputTail(say)
            reader = launch.OutputReader(proc, env, tail, watch_ranks=starts_ranks)
            try:
                reader.start()  # inside the try: output (and an interrupt it triggers) can arrive at once
                # A dead rank's peers may wait for it in a collective or the rendezvous for ever: give them a grace.
                # which rank failed first: a killed one says nothing itself
                watch = procs.RankExits(proc.pid) if starts_ranks else contextlib.nullcontext()
                with watch:
                    ended = launch.wait_launcher(proc, reader.first_death, timeout)
                if ended == "timeout":
                    raise TimeoutError(
                        f"exec in {name} timed out after {timeout} s: {cmd[0]} and its ranks were stopped"
                    )
            finally:
                # Whatever ended the wait (exit, timeout, a dead rank, the notebook's stop button): no rank outlives the
                # command, even if the user presses stop again while we clean up.
                with interrupts_deferred():
                    exited = proc.returncode is not None
                    procs.stop_tree(proc, 1.0 if exited else 5.0)
                    reader.thread.join(timeout=10 if exited else 5)
                    record.unlink(missing_ok=True)  # in the block: a signal held meanwhile is raised as it ends
                    if proc.stdout and not reader.thread.is_alive():
                        proc.stdout.close()
        reader.raise_sink_error()
        returncode = proc.returncode if exited else 1
        first = watch.first_failure if starts_ranks else None
        why = self._why_failed(d, job, tail.text(), returncode, starts_ranks, first) if returncode else ""
        if why:
            say(f"{EXEC_TAG}{why}\n")
        return returncode

    def _why_failed(self, d: Path, job: dict, output: str, code: int, started_ranks: bool, first) -> str:
        """One line: the job's deletion or deadline, or the rank that failed first (`first`: procs.RankExits'
        first_failure), its error and the likely cause; a command that started no ranks gets no rank diagnosis."""
        if (d / "deleting").exists() or not (d / "job.json").exists():  # `labkit job delete` from another shell
            return f"stopped: local job {job['namespace']}/{job['name']} was deleted while it ran"
        if (read_json(d / "state.json") or {}).get("phase") == "DeadlineExceeded":
            return launch.deadline_text(job["deadline"] - job["created"])
        return launch.describe_failure(output, code, first_failure=first) if started_ranks else ""

    def end_with(self, name: str, pid: int, *, namespace: str | None = None) -> None:
        """The job stops (phase OwnerExited) when process `pid` exits, however it exits: its launcher watches it."""
        d = self._existing_dir(name, namespace)
        write_json(d / OWNER_FILE, {"token": procs.process_token(pid)})

    def logs(self, name: str, *, namespace: str | None = None) -> str:
        log = self._existing_dir(name, namespace) / "launcher.log"
        return log.read_text(errors="replace") if log.is_file() else ""

    def delete(self, name: str, *, namespace: str | None = None, kind: str | None = None) -> bool:
        base.check_kind(kind, ("MPIJob",), LOCAL_KIND_FIX)
        d = self.job_dir(base.check_job_name(name), namespace)
        if not self._checked_root() or not self._ours(d):
            return False
        with interrupts_deferred():  # half a delete would leave processes without a launcher to end them
            with contextlib.suppress(OSError):
                (d / "deleting").touch()  # an exec this stops says why (_why_failed)
            self._stop(d)
            with contextlib.suppress(OSError):  # gone at once: rmtree's order could drop `deleting` before job.json,
                d = d.rename(self.root / f".deleted-{uuid.uuid4().hex}")  # and a stopped exec say nothing of why
            shutil.rmtree(d, ignore_errors=True)
        return True

    def _stop(self, d: Path) -> None:
        """Stop the launcher (it stops the job's processes) and make sure of it from here too."""
        try:
            job = self._read_job(d)
        except JobNotFound:
            return
        pid, running = self._launcher(d)
        if running and procs.alive(pid):
            procs.send(os.killpg, pid, signal.SIGTERM)  # the launcher leads its session
            end = time.monotonic() + 8.0
            while procs.alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
        # What the launcher could not (it may have died): exec groups, uid-tagged processes.
        stop_job_processes(d, job["uid"], grace_s=2.0)
        if running and procs.alive(pid):
            procs.send(os.kill, pid, signal.SIGKILL)

    def list(self, *, namespace: str | None = None) -> list[JobStatus]:
        if not self._checked_root():
            return []
        self._collect_garbage()
        ns_dirs = sorted(self.root.glob("*")) if namespace == "*" else [self.namespace_dir(namespace)]
        out: list[JobStatus] = []
        for job_file in (f for ns_dir in ns_dirs for f in sorted(ns_dir.glob("*/job.json"))):
            if self._ours(job_file.parent):  # a job another user planted is not listed, read or signalled
                with contextlib.suppress(JobNotFound):
                    out.append(self._status_from_dir(job_file.parent))
        return out

    def _collect_garbage(self) -> None:
        """ttlSecondsAfterFinished: remove finished jobs once their TTL has passed (as the cluster does)."""
        now = time.time()
        for state_file in self.root.glob("*/*/state.json"):
            if not self._ours(state_file.parent) or not owned(state_file):
                continue
            job, state = read_json(state_file.parent / "job.json"), read_json(state_file)
            ttl = (job or {}).get("ttl_seconds_after_finished")
            if state is not None and ttl is not None and now - (state.get("ended") or now) > float(ttl):
                self._stop(state_file.parent)
                shutil.rmtree(state_file.parent, ignore_errors=True)

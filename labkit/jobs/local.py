"""LocalBackend: an MPIJob played by real processes on this machine.

Each job is a directory `<root>/<namespace>/<name>/` (root: $LABKIT_JOBS_DIR, default ~/.local/state/labkit/jobs):

    job.json       the spec, uid, creation time and deadline        manifest.yaml  what a cluster would be given
    hostfile       `localhost slots=W*S` (see below)                launcher.log   the launcher's own log
    launcher.json  launcher pid (written by the launcher)           ready          exists once the launcher runs
    execs/<pid>    one file per running exec: its process group     state.json     how the job ended
    workdir/       the exec'd commands' working directory

The launcher is `watchdog.py`: a detached process (its own session, belonging to no notebook kernel) that runs the
launcher command (`sleep infinity`), and at the deadline or on delete stops the job's every process. Because all state
is in the directory, `list()`, `exec()` and `delete()` work from any process (the CLI, another notebook).

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
from typing import TYPE_CHECKING

from labkit import procs
from labkit.errors import ConfigError, LabkitError
from labkit.jobs import watchdog
from labkit.jobs.base import (CLUSTER_HOSTFILE, Job, JobBackend, JobNotFound, JobNotReady, JobStatus, OutputCallback,
                              interrupts_deferred, print_output, validate_exec_args, validate_job_name)

if TYPE_CHECKING:  # pragma: no cover
    from labkit.manifests import MpiJobSpec

from labkit.procs import stop_tree

JOBS_DIR_ENV = "LABKIT_JOBS_DIR"
_EXEC_GRACE_S = 5.0


def _master_port(argv: list[str]) -> str:
    """The rendezvous port for an exec: the command's own --master_port, else a free one.

    DeepSpeed's openmpi launcher does not pass --master_port to the ranks (its MPI discovery falls back to 29500, so
    concurrent jobs on one host collide); ranks started by a local mpirun inherit this environment instead.
    """
    from labkit import launch

    for i, arg in enumerate(argv):
        if arg == "--master_port" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return argv[i + 1]
        if arg.startswith("--master_port=") and arg.split("=", 1)[1].isdigit():
            return arg.split("=", 1)[1]
    return str(launch.free_port())


def default_jobs_dir() -> Path:
    env = os.environ.get(JOBS_DIR_ENV)
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "labkit" / "jobs"


def local_hostfile_text(name: str, namespace: str, workers: int, slots: int) -> str:
    cluster = "".join(f"#   {name}-worker-{i}.{name}.{namespace}.svc slots={slots}\n" for i in range(workers))
    return (f"# labkit local job {namespace}/{name}: {workers} worker(s) x {slots} slot(s), all on this host.\n"
            f"# On a cluster the MPI Operator writes one line per worker pod:\n{cluster}"
            f"localhost slots={workers * slots}\n")


class LocalBackend(JobBackend):
    """Jobs as processes on this machine (the default backend; no cluster needed)."""

    name = "local"

    def __init__(self, root: str | Path | None = None, namespace: str = "workloads"):
        self.root = Path(root) if root is not None else default_jobs_dir()
        self.namespace = namespace

    # -- paths ---------------------------------------------------------------------------------------------------------
    @property
    def hostfile_path(self) -> str:
        # Commands may use the cluster path; exec maps it onto the job's own hostfile.
        return CLUSTER_HOSTFILE

    def job_dir(self, name: str, namespace: str | None = None) -> Path:
        return self.root / (namespace or self.namespace) / name

    def _existing_dir(self, name: str, namespace: str | None) -> Path:
        validate_job_name(name)
        d = self.job_dir(name, namespace)
        if not (d / "job.json").is_file():
            raise JobNotFound(f"local job {namespace or self.namespace}/{name} does not exist "
                              f"(in {self.root}); see `labkit job list --backend local`")
        return d

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    def submit(self, spec: "MpiJobSpec", *, deadline_seconds: float | None = None) -> Job:
        """Start the job's launcher. `deadline_seconds` overrides the spec's deadline for this local job only
        (manifests require at least 60 s; failure drills and tests use a few seconds)."""
        from labkit import manifests

        spec = spec.resolved()  # validates, and fills slots/command/... from the overlay as the cluster would
        validate_job_name(spec.name)
        if deadline_seconds is not None and (not isinstance(deadline_seconds, (int, float)) or deadline_seconds <= 0):
            raise ConfigError("deadline_seconds", f"must be a positive number of seconds, got {deadline_seconds!r}",
                              "pass e.g. 5, or None to use the spec's deadline")
        self._collect_garbage()
        d = self.job_dir(spec.name, spec.namespace)
        if (d / "job.json").exists():
            st = self._status_from_dir(d)
            if st.phase in ("Pending", "Running"):
                raise ConfigError("name", f"a local job {spec.namespace}/{spec.name} is already running",
                                  f"delete it first (`labkit job delete {spec.name} --backend local`) or pick another name")
            shutil.rmtree(d, ignore_errors=True)  # a finished job of the same name: replace it, as kubectl would
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            d.mkdir()  # atomic: of two concurrent submits of one name, one wins
        except FileExistsError:
            raise ConfigError("name", f"a local job {spec.namespace}/{spec.name} is being created right now",
                              "pick another name, or delete that job first") from None
        (d / "execs").mkdir()
        (d / "workdir").mkdir()
        (d / "manifest.yaml").write_text(manifests.to_yaml(manifests.render_all(spec)))
        (d / "hostfile").write_text(local_hostfile_text(spec.name, spec.namespace, spec.workers, spec.slots_per_worker))
        now = time.time()
        uid = uuid.uuid4().hex
        launcher_command = list(spec.launcher_command or ["sleep", "infinity"])
        watchdog.write_json(d / "job.json", {
            "name": spec.name, "namespace": spec.namespace, "uid": uid, "created": now,
            "deadline": now + float(deadline_seconds or spec.deadline_seconds), "workers": spec.workers,
            "slots_per_worker": spec.slots_per_worker, "accelerator": spec.accelerator,
            "launcher_command": launcher_command,
            "ttl_seconds_after_finished": spec.ttl_seconds_after_finished,
        })
        env = self._job_env(d, uid, spec.workers * spec.slots_per_worker, spec.accelerator)
        starter = subprocess.run([sys.executable, "-m", "labkit.jobs.watchdog", str(d)], env=env, cwd=d, capture_output=True,
                                 text=True, timeout=30, stdin=subprocess.DEVNULL)
        if starter.returncode != 0 or not starter.stdout.strip().isdigit():
            shutil.rmtree(d, ignore_errors=True)
            raise LabkitError(f"the local launcher for {spec.name} did not start: {starter.stderr.strip()[-500:]}")
        return Job(self, spec.name, spec.namespace)

    def _job_env(self, d: Path, uid: str, ranks: int, accelerator: str) -> dict[str, str]:
        from labkit import launch

        acc = {"nvidia": "cuda", "gaudi": "hpu"}.get(accelerator, "cpu")
        bin_dir = str(Path(sys.executable).parent)
        env = launch.kit_env({
            watchdog.JOB_UID_ENV: uid,
            "LABKIT_JOB_DIR": str(d),
            "LABKIT_HOSTFILE": str(d / "hostfile"),
            # What the operator sets in a launcher (Open MPI 4 reads it; we also pass --hostfile explicitly).
            "OMPI_MCA_orte_default_hostfile": str(d / "hostfile"),
            # `deepspeed`/`mpirun` from this environment first, as the image's PATH would provide them.
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }, world_size=ranks, accelerator=acc)
        return env

    def _read_job(self, d: Path) -> dict:
        try:
            return json.loads((d / "job.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise JobNotFound(f"local job at {d} is unreadable ({exc})") from None

    def _launcher_pid(self, d: Path) -> int | None:
        try:
            return int(json.loads((d / "launcher.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None

    def _status_from_dir(self, d: Path) -> JobStatus:
        job = self._read_job(d)
        st = JobStatus(name=job["name"], namespace=job["namespace"], backend=self.name, phase="Pending",
                       created=job["created"], deadline=job["deadline"], workers=job.get("workers"),
                       slots_per_worker=job.get("slots_per_worker"))
        if (d / "state.json").is_file():
            try:
                state = json.loads((d / "state.json").read_text())
            except (OSError, json.JSONDecodeError):
                state = {"phase": "Failed", "reason": "unreadable state"}
            st.phase = state.get("phase", "Failed")
            ended = state.get("ended")
            st.message = f"{state.get('reason', '')}" + (f" (exit code {state['returncode']})"
                                                          if state.get("returncode") not in (None, 0) else "")
            if ended:
                st.message += f", ended {time.strftime('%H:%M:%S', time.localtime(ended))}"
            return st
        pid = self._launcher_pid(d)
        if (d / "ready").exists() and pid is not None:
            if procs.alive(pid):
                st.phase, st.ready = "Running", True
                st.message = f"launcher pid {pid}"
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
            if st.phase not in ("Pending",):
                raise JobNotReady(f"local job {st.namespace}/{name} cannot become ready: {st.phase} {st.message}")
            if time.monotonic() > end:
                raise JobNotReady(f"local job {st.namespace}/{name} not ready after {timeout:.0f} s")
            time.sleep(0.05)

    def exec(self, name: str, argv: list[str], *, on_output: OutputCallback | None = print_output,
             timeout: float | None = None, namespace: str | None = None) -> int:
        validate_exec_args(argv, timeout)
        d = self._existing_dir(name, namespace)
        st = self._status_from_dir(d)
        if not st.ready:
            raise JobNotReady(f"local job {st.namespace}/{name} is {st.phase} {st.message}: cannot exec; "
                              f"wait_ready() first or submit it again")
        job = self._read_job(d)
        env = self._job_env(d, job["uid"], job["workers"] * job["slots_per_worker"], job.get("accelerator", "cpu"))
        cmd = watchdog.map_hostfile(list(argv), d / "hostfile")
        env["MASTER_PORT"] = _master_port(cmd)
        procs.clear_stale_build_locks(say=(lambda t: on_output(t + "\n")) if on_output else None)
        try:
            proc = subprocess.Popen(cmd, cwd=d / "workdir", env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            # What a pod exec reports for a missing binary: a message on stderr and exit code 127/126.
            if on_output:
                on_output(f"labkit exec: cannot run {cmd[0]!r}: {exc.strerror}\n")
            return 127 if isinstance(exc, FileNotFoundError) else 126
        record = d / "execs" / str(proc.pid)
        record.write_text(f"{proc.pid} {json.dumps(cmd)}\n")  # pgid == pid (new session): the launcher can stop it

        def pump() -> None:
            assert proc.stdout is not None
            try:
                for raw in iter(proc.stdout.readline, b""):
                    if on_output:
                        on_output(raw.decode("utf-8", "replace"))
            except (ValueError, OSError):  # the pipe was closed under us after a forced stop
                pass

        reader = threading.Thread(target=pump, daemon=True)
        try:
            # Started inside the try: output (and an interrupt it triggers) can arrive at once.
            reader.start()
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with interrupts_deferred():
                self._stop_exec(proc, job["uid"], d)
                reader.join(timeout=5)
            raise TimeoutError(f"exec in {name} timed out after {timeout} s: {cmd[0]} and its ranks were stopped")
        except BaseException:
            # KeyboardInterrupt (notebook stop button) or anything else: never leave ranks running, even if the
            # user presses stop again while we clean up.
            with interrupts_deferred():
                self._stop_exec(proc, job["uid"], d)
                reader.join(timeout=5)
            raise
        else:
            # The command exited; ranks it started in its group (mpirun children) must not outlive it.
            with interrupts_deferred():
                self._stop_exec(proc, job["uid"], d, grace_s=1.0)
                reader.join(timeout=10)
            return returncode
        finally:
            record.unlink(missing_ok=True)
            if proc.stdout and not reader.is_alive():
                proc.stdout.close()

    def _stop_exec(self, proc: subprocess.Popen, uid: str, d: Path, grace_s: float = _EXEC_GRACE_S) -> None:
        """Stop an exec'd command and everything under it. mpirun puts each rank in its own process group, so
        signalling the command's group is not enough: every descendant (snapshot before signalling) is signalled too."""
        stop_tree(proc, grace_s)
        if proc.returncode is None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    def logs(self, name: str, *, namespace: str | None = None) -> str:
        d = self._existing_dir(name, namespace)
        try:
            return (d / "launcher.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def delete(self, name: str, *, namespace: str | None = None) -> bool:
        validate_job_name(name)
        d = self.job_dir(name, namespace)
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
        watchdog.stop_job_processes(d, job["uid"], grace_s=2.0)
        if pid is not None and procs.alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def list(self, *, namespace: str | None = None) -> list[JobStatus]:
        self._collect_garbage()
        out: list[JobStatus] = []
        dirs = [self.root / namespace] if namespace not in (None, "*") else sorted(p for p in self.root.glob("*"))
        if namespace is None:
            dirs = [self.root / self.namespace]
        for ns_dir in dirs:
            for d in sorted(ns_dir.glob("*/job.json")):
                try:
                    out.append(self._status_from_dir(d.parent))
                except JobNotFound:
                    continue
        return out

    def _collect_garbage(self) -> None:
        """ttlSecondsAfterFinished: remove finished jobs' directories once their TTL has passed (as the cluster does)."""
        now = time.time()
        for state_file in self.root.glob("*/*/state.json"):
            d = state_file.parent
            try:
                job = json.loads((d / "job.json").read_text())
                ended = json.loads(state_file.read_text()).get("ended") or now
            except (OSError, json.JSONDecodeError):
                continue
            ttl = job.get("ttl_seconds_after_finished")
            if ttl is not None and now - ended > float(ttl):
                self._stop(d)
                shutil.rmtree(d, ignore_errors=True)

    def training_command(self, spec: "MpiJobSpec", *, steps: int = 20, extra_args: list[str] | None = None,
                         master_port: int | None = None) -> list[str]:
        """The cluster's `deepspeed --hostfile ... --launcher openmpi` line, plus what one host needs
        (--no_ssh_check, --launcher_args "--allow-run-as-root --oversubscribe ...", --master_addr 127.0.0.1)."""
        import importlib.util

        from labkit import launch

        # The ranks come from Open MPI: without mpirun (or mpi4py, which DeepSpeed uses to read the MPI ranks) the
        # command would fail only after DeepSpeed's start-up; say so now.
        if shutil.which("mpirun") is None:
            raise ConfigError("train_command", "the default command runs DeepSpeed's openmpi launcher, but mpirun is "
                              "not on PATH", "install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev; "
                              "`make install` does it), or pass your own train_command")
        if importlib.util.find_spec("mpi4py") is None:
            raise ConfigError("train_command", "the default command needs mpi4py in this environment (DeepSpeed reads "
                              "the Open MPI ranks through it)", "pip install 'labkit[mpi]' (needs Open MPI's mpicc), "
                              "or pass your own train_command")
        spec = spec.resolved()
        script = Path(__file__).with_name("hello_deepspeed.py")
        acc = {"nvidia": "cuda", "gaudi": "hpu"}.get(spec.accelerator, "cpu")
        ls = launch.LaunchSpec(script=script, args=["--steps", str(steps), *(extra_args or [])],
                               world_size=spec.workers * spec.slots_per_worker, launcher="openmpi", accelerator=acc)
        return launch.build_command(ls, hostfile=Path(CLUSTER_HOSTFILE), master_port=master_port or launch.free_port())

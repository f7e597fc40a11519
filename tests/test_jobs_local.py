"""LocalBackend: a real launcher process, real exec'd commands, real deadlines, real DeepSpeed ranks through mpirun."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kit_testing import ROOT, wait_until

from labkit import devices
from labkit.chapters.interactive import (
    TrainingProgress,
    parse_metrics,
    plan_interactive_job,
    summarize_training,
    training_command,
)
from labkit.cli import main
from labkit.errors import ConfigError
from labkit.jobs import Job, JobNotFound, JobNotReady, LocalBackend, base, command_line, get_backend
from labkit.jobs.launcher import job_pids, map_paths
from labkit.manifests import JobSpec
from labkit.procs import alive

CLI = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())"]


def job_uid(backend: LocalBackend, name: str) -> str:
    return json.loads((backend.job_dir(name) / "job.json").read_text())["uid"]


@pytest.fixture
def backend(tmp_path):
    b = LocalBackend(root=tmp_path / "jobs")
    yield b
    for st in b.list(namespace="*"):  # nothing a test started may outlive it
        b.delete(st.name, namespace=st.namespace)


def test_submit_exec_shows_operator_style_hostfile_and_job_environment(backend):
    with backend.submit(JobSpec(name="hosts", workers=3, slots_per_worker=2)) as job:
        st = job.wait_ready(timeout=10)
        assert st.ready and st.phase == "Running" and (st.workers, st.slots_per_worker) == (3, 2)
        res = job.run(["cat", "/etc/mpi/hostfile"])  # the cluster path works locally too
        assert res.returncode == 0
        lines = res.output.splitlines()
        # One real line: 3 workers x 2 slots = 6 ranks on this host; the cluster's lines shown as comments.
        assert [ln for ln in lines if not ln.startswith("#")] == ["localhost slots=6"]
        assert "#   hosts-worker-2.hosts.workloads.svc slots=2" in lines
        env = job.run(["sh", "-c", 'echo "$LABKIT_PROCESS $OMPI_MCA_orte_default_hostfile"; pwd']).output.split()
        assert env[0] == "1" and env[1] == str(backend.job_dir("hosts") / "hostfile")
        assert env[2] == str(backend.job_dir("hosts") / "workdir")
        # The manifest a cluster would get is kept beside it.
        assert "kind: MPIJob" in (backend.job_dir("hosts") / "manifest.yaml").read_text()
    assert not backend.job_dir("hosts").exists()
    with pytest.raises(JobNotFound):
        backend.status("hosts")


def test_exec_streams_output_while_the_command_runs(backend):
    arrivals: list[tuple[float, str]] = []
    with backend.submit(JobSpec(name="stream")) as job:
        job.wait_ready(10)
        start = time.monotonic()
        code = job.exec(
            ["sh", "-c", "echo first; sleep 1.5; echo second"],
            on_output=lambda text: arrivals.append((time.monotonic() - start, text)),
        )
    assert code == 0
    first = next(t for t, text in arrivals if "first" in text)
    second = next(t for t, text in arrivals if "second" in text)
    assert second - first > 1.0, "output was buffered until the command ended"


def test_a_long_exec_keeps_only_its_tail_for_the_diagnosis_and_still_names_the_rank(backend, monkeypatch):
    """A day-long run's output is streamed and returned by run(), but the exec itself keeps only the tail it reads
    for the one-line diagnosis."""
    kept: list[int] = []
    text_of = base.OutputTail.text
    monkeypatch.setattr(base.OutputTail, "MOST", 2000)
    monkeypatch.setattr(base.OutputTail, "text", lambda self: kept.append(len(text_of(self))) or text_of(self))
    rank = "seq 1 20000; echo 'LABKIT_RANK_ERROR rank=0 ValueError: boom at step 20000'; exit 1"
    with backend.submit(JobSpec(name="long")) as job:
        job.wait_ready(10)
        res = job.run(["mpirun", "-n", "1", "sh", "-c", rank], timeout=60)
    assert res.returncode != 0 and "\n19999\n" in res.output  # the caller gets every line
    assert res.failure.startswith("rank 0 failed"), res.output[-2000:]
    assert "ValueError: boom at step 20000" in res.failure
    assert kept and max(kept) <= 2000 + 200  # one line past the limit at most


def test_output_tail_keeps_the_last_characters_and_passes_everything_on():
    seen: list[str] = []
    tail = base.OutputTail(seen.append, most=10)
    for chunk in ["aaaa", "bbbb", "cccc", "dd"]:
        tail(chunk)
    assert seen == ["aaaa", "bbbb", "cccc", "dd"] and tail.text() == "bbbbccccdd"
    big = base.OutputTail(None, most=3)
    big("x" * 50)
    assert big.text() == "x" * 50  # a single chunk is never cut


def test_failing_command_returns_its_code_and_stderr(backend):
    with backend.submit(JobSpec(name="fails")) as job:
        job.wait_ready(10)
        res = job.run(["sh", "-c", "echo partial; echo 'boom: disk full' >&2; exit 7"])
        assert res.returncode == 7 and "boom: disk full" in res.output and "partial" in res.output
        missing = job.run(["no-such-binary-xyz"])
        assert missing.returncode == 127 and "no-such-binary-xyz" in missing.output


def test_bad_input_is_one_clear_error_before_any_work(backend, tmp_path):
    with pytest.raises(ConfigError, match="^name:"):
        backend.submit(JobSpec(name="Not_Valid"))
    with pytest.raises(ConfigError, match="^deadline_seconds:"):
        LocalBackend(root=backend.root, deadline_seconds=-1)
    with pytest.raises(ConfigError, match="^backend:"):
        get_backend("slurm")
    assert not (tmp_path / "jobs" / "workloads" / "ok").exists()
    with pytest.raises(JobNotFound, match="does not exist"):
        backend.exec("never-submitted", ["true"])
    for action in (backend.status, backend.delete):  # local jobs are MPIJobs: a TrainJob is a cluster's
        with pytest.raises(ConfigError, match="^kind: .*--backend kubernetes"):
            action("never-submitted", kind="TrainJob")
    assert backend.delete("never-submitted", kind="MPIJob") is False
    with backend.submit(JobSpec(name="twice")) as job:
        job.wait_ready(10)
        with pytest.raises(ConfigError, match="already running"):
            backend.submit(JobSpec(name="twice"))
        with pytest.raises(ConfigError, match="^argv:"):
            job.exec([])


def test_deadline_ends_a_forgotten_launcher_and_its_running_commands(backend):
    job = LocalBackend(root=backend.root, deadline_seconds=3).submit(JobSpec(name="forgotten"))
    job.wait_ready(10)
    uid = job_uid(backend, "forgotten")
    launcher = json.loads((backend.job_dir("forgotten") / "launcher.json").read_text())
    start = time.monotonic()
    # A command still running at the deadline (e.g. a training the student forgot): the deadline stops it too.
    code = job.exec(["sh", "-c", "sleep 60 & sleep 61; echo never"], on_output=None)
    took = time.monotonic() - start
    assert code != 0 and took < 15
    st = job.status()  # the launcher records the deadline before it stops anything
    assert st.phase == "DeadlineExceeded" and st.past_deadline and not st.ready
    assert [s.name for s in backend.list() if s.past_deadline] == ["forgotten"]
    assert wait_until(lambda: not job_pids(uid, exclude={os.getpid()}))
    assert not alive(launcher["pid"]) and not alive(launcher["child_pid"])
    assert "DeadlineExceeded" in job.logs()
    with pytest.raises(JobNotReady, match="DeadlineExceeded"):
        job.exec(["true"])
    job.delete()


def test_launcher_outlives_the_submitting_process_and_the_deadline_still_holds(backend):
    # The submitting process (think: a notebook kernel) exits right after submit, without deleting.
    code = (
        f"from labkit.jobs.local import LocalBackend; from labkit.manifests import JobSpec; import os\n"
        f"b = LocalBackend(root={str(backend.root)!r}, deadline_seconds=4); j = b.submit(JobSpec(name='orphan'))\n"
        f"j.wait_ready(10); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    st = backend.status("orphan")  # another process sees it through the job directory
    assert st.phase == "Running" and st.ready
    assert Job(backend, "orphan").run(["echo", "still here"]).output.strip() == "still here"
    uid = job_uid(backend, "orphan")
    assert wait_until(lambda: backend.status("orphan").phase == "DeadlineExceeded", timeout=15)
    assert wait_until(lambda: not job_pids(uid, exclude={os.getpid()}))


def test_exec_timeout_stops_the_command_and_everything_it_started(backend):
    with backend.submit(JobSpec(name="slow")) as job:
        job.wait_ready(10)
        uid = job_uid(backend, "slow")
        launcher = json.loads((backend.job_dir("slow") / "launcher.json").read_text())
        with pytest.raises(TimeoutError, match="timed out"):
            job.exec(["sh", "-c", "sleep 100 & sleep 100 & wait"], timeout=1, on_output=None)
        # Only the launcher and its `sleep infinity` remain: the exec'd shell and both sleeps are gone.
        assert wait_until(lambda: set(job_pids(uid, exclude={os.getpid()})) <= {launcher["pid"], launcher["child_pid"]})
        assert job.status().ready  # the job itself keeps running
        assert not list((backend.job_dir("slow") / "execs").iterdir())


def test_keyboard_interrupt_during_exec_leaves_nothing_running(backend):
    with backend.submit(JobSpec(name="interrupted")) as job:
        job.wait_ready(10)
        uid = job_uid(backend, "interrupted")

        def press_stop(text: str) -> None:  # the notebook's stop button, once the command is under way
            if "started" in text:
                os.kill(os.getpid(), signal.SIGINT)

        with pytest.raises(KeyboardInterrupt):
            job.exec(["sh", "-c", "sleep 100 & echo started; wait"], on_output=press_stop)

        def launcher_pids() -> set:  # re-read: the watchdog may record its child after the job reads as ready
            info = json.loads((backend.job_dir("interrupted") / "launcher.json").read_text())
            return {info["pid"], info.get("child_pid")}

        assert wait_until(lambda: set(job_pids(uid, exclude={os.getpid()})) <= launcher_pids(), timeout=30), (
            f"left running: {set(job_pids(uid, exclude={os.getpid()})) - launcher_pids()}"
        )


def test_delete_from_another_process_stops_launcher_and_running_exec(backend, tmp_path):
    job = backend.submit(JobSpec(name="shared"))
    job.wait_ready(10)
    uid = job_uid(backend, "shared")
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("run", job.run(["sleep", "100"])))
    t.start()
    assert wait_until(lambda: len(list((backend.job_dir("shared") / "execs").iterdir())) == 1)
    env = {**os.environ, "LABKIT_JOBS_DIR": str(backend.root)}
    listing = subprocess.run([*CLI, "job", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "shared" in listing.stdout and "Running" in listing.stdout
    deleted = subprocess.run([*CLI, "job", "delete", "shared"], env=env, capture_output=True, text=True, timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    t.join(timeout=15)
    assert result["run"].returncode != 0  # the running exec was stopped, not left behind, and says why
    assert result["run"].failure == "stopped: local job workloads/shared was deleted while it ran"
    assert not backend.job_dir("shared").exists()
    assert wait_until(lambda: not job_pids(uid, exclude={os.getpid()}))


def test_cli_exec_returns_the_command_exit_code(backend):
    env = {**os.environ, "LABKIT_JOBS_DIR": str(backend.root)}
    cli = [*CLI, "job"]
    sub = subprocess.run(
        [*cli, "submit", "--name", "cli", "--accelerator", "cpu", "--wait", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sub.returncode == 0, sub.stderr
    run = subprocess.run(
        [*cli, "exec", "cli", "--", "sh", "-c", "cat /etc/mpi/hostfile; exit 5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 5 and "localhost slots=2" in run.stdout
    bad = subprocess.run([*cli, "exec", "cli"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "labkit: error: command: no command given" in bad.stderr
    late = subprocess.run([*cli, "exec", "cli", "--timeout", "1", "--", "sleep", "30"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert late.returncode == 124 and "Traceback" not in late.stderr  # the deadline in one line, as timeout(1) exits
    assert (
        late.stderr.strip() == "labkit: deadline: exec in cli timed out after 1.0 s: sleep and its ranks were stopped"
    )
    render = subprocess.run(
        [*cli, "render", "--name", "cli", "--workers", "3"], env=env, capture_output=True, text=True, timeout=60
    )
    assert render.returncode == 0 and "kind: MPIJob" in render.stdout and "replicas: 3" in render.stdout


def test_cli_exec_options_after_the_name_need_no_double_dash(backend):
    """`labkit job exec NAME --timeout 1 CMD` (the module's documented `exec demo --train --steps 20` form): the options
    before the command are labkit's, not a program to run; the command's own options stay its own."""
    backend.submit(JobSpec(name="opts")).wait_ready(timeout=10)
    env = {**os.environ, "LABKIT_JOBS_DIR": str(backend.root)}

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "job", "exec", "opts", *argv], env=env, capture_output=True, text=True, timeout=60)

    late = cli("--timeout", "1", "sleep", "30")
    assert late.returncode == 124, late.stderr
    assert late.stderr.startswith("labkit: deadline: exec in opts timed out after 1.0 s")
    assert cli("-n", "workloads", "--backend", "local", "sh", "-c", "exit 3").returncode == 3
    echoed = cli("--timeout=20", "echo", "--timeout", "1", "--", "--train")
    assert echoed.returncode == 0 and echoed.stdout == "--timeout 1 -- --train\n"
    unknown = cli("--no-such-option", "true")
    assert unknown.returncode == 2 and "--no-such-option" in unknown.stderr
    # a command ended by a signal (the job's deadline sends SIGTERM): the shell's 128+N, not sys.exit(-15)'s 241
    assert cli("sh", "-c", "kill -TERM $$").returncode == 128 + 15


def test_cli_submit_refuses_a_negative_wait_before_submitting(backend, capsys):
    for wait in ("-5", "nan"):  # the kubernetes backend submitted, then deleted the job; local took -5 silently
        assert main(["job", "submit", "--name", "w", "--wait", wait, "--jobs-dir", str(backend.root)]) == 2
        assert "labkit: error: --wait: must be a" in capsys.readouterr().err
    assert backend.list(namespace="*") == []


def test_a_jobs_dir_that_cannot_be_a_folder_is_named_as_given(tmp_path, capsys, monkeypatch):
    """A file given as the jobs folder (or a folder under one) was a FileExistsError/NotADirectoryError traceback at
    submit, and `job list` said "no jobs"; each is one error naming what the user set."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv in (["submit", "--name", "t9"], ["submit", "--name", "t9", "--jobs-dir", str(afile / "sub")], ["list"]):
        where = argv[-1] if "--jobs-dir" in argv else str(afile)
        assert main(["job", *argv, *([] if "--jobs-dir" in argv else ["--jobs-dir", where])]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("labkit: error: --jobs-dir: ") and where in captured.err
        assert "no jobs" not in captured.out
    with pytest.raises(ConfigError) as err:
        LocalBackend(root=afile).submit(JobSpec(name="t9"))
    assert err.value.field == "jobs_dir"  # notebook 03's parameter
    monkeypatch.setenv("LABKIT_JOBS_DIR", str(afile))
    with pytest.raises(ConfigError) as err:
        LocalBackend().list()
    assert err.value.field == "LABKIT_JOBS_DIR"


def test_ttl_removes_finished_jobs(backend):
    job = LocalBackend(root=backend.root, deadline_seconds=1).submit(JobSpec(name="done", ttl_seconds_after_finished=0))
    job.wait_ready(10)
    assert wait_until(lambda: backend.status("done").phase == "DeadlineExceeded", timeout=10)
    time.sleep(0.1)
    assert [s.name for s in backend.list()] == []  # listing collects it, as the cluster's TTL controller would
    assert not backend.job_dir("done").exists()


@pytest.mark.slow
def test_interrupted_deepspeed_training_leaves_no_rank_running(backend):
    """The real thing: 2 DeepSpeed ranks under mpirun, interrupted mid-training."""
    spec = JobSpec(name="ds-stop", workers=2, slots_per_worker=1)
    with backend.submit(spec) as job:
        job.wait_ready(10)
        uid = job_uid(backend, "ds-stop")
        launcher = json.loads((backend.job_dir("ds-stop") / "launcher.json").read_text())
        argv = training_command(backend, steps=1000, extra_args=["--step-sleep", "0.2"])
        assert "--launcher" in argv and argv[argv.index("--launcher") + 1] == "openmpi"
        assert argv[argv.index("--hostfile") + 1] == "/etc/mpi/hostfile"
        seen: list[str] = []
        pressed: list[float] = []

        def interrupt_when_training(text: str) -> None:
            seen.append(text)
            if not pressed and len(parse_metrics("".join(seen))) >= 4:  # both ranks are stepping: press stop
                pressed.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)

        with pytest.raises(KeyboardInterrupt):
            job.exec(argv, on_output=interrupt_when_training, timeout=300)
        ranks = {m["rank"] for m in parse_metrics("".join(seen))}
        assert ranks == {0, 1}
        assert "mpirun -n 2" in "".join(seen)
        assert wait_until(
            lambda: set(job_pids(uid, exclude={os.getpid()})) <= {launcher["pid"], launcher["child_pid"]}, timeout=15
        ), "DeepSpeed ranks survived the interrupt"


@pytest.mark.slow
def test_notebook_03_runs_the_interactive_round_trip_on_the_local_backend(executed_notebook):
    import nbformat

    from labkit import results
    from labkit.manifests import find_secret_material

    path = executed_notebook("03_interactive_mpijob")
    got = results.read(path)
    training = got["training"]
    assert got["backend"] == "local" and got["accelerator"] == "cpu"
    assert training["returncode"] == 0
    assert training["world_size"] == 2 and training["ranks"] == [0, 1] and training["ranks_finished"] == [0, 1]
    assert training["backend"] == "gloo" and training["allreduce_ok"] is True
    assert training["steps"] == 10 and training["loss_last_mean"] < training["loss_first_mean"]
    assert got["hostfile"] == [{"host": "localhost", "slots": 2}]
    command = got["command"]
    assert command[command.index("--launcher") + 1] == "openmpi" and "/etc/mpi/hostfile" in command
    assert got["job_deleted"] is True
    # No secret value in any output (the manifest only names the Secret).
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(
        str(o.get("text", "")) + json.dumps(o.get("data", {})) for c in nb.cells for o in c.get("outputs", [])
    )
    assert "secretKeyRef" in text and find_secret_material(text) == []


@pytest.mark.parametrize(
    "params, field_name",
    [
        ({"backend": "slurm"}, "backend"),
        ({"name": "Bad_Name"}, "name"),
        ({"workers": -1}, "workers"),
        ({"slots": 2.5}, "slots"),
        ({"workers": 8, "slots": 4}, "workers"),
        ({"deadline_minutes": 0.5}, "deadline_minutes"),
        ({"device": "tpu"}, "device"),
        ({"image": "not an image"}, "image"),
        ({"train_command": "deepspeed 'unbalanced"}, "train_command"),
        ({"ready_timeout_s": 0}, "ready_timeout_s"),
    ],
)
def test_notebook_parameters_fail_with_the_parameter_named(params, field_name, tmp_path):
    with pytest.raises(ConfigError) as err:
        plan_interactive_job(**params, jobs_dir=str(tmp_path))
    assert err.value.field == field_name
    assert not (tmp_path / "workloads").exists()  # nothing was submitted


def test_plan_uses_the_cluster_command_line_and_a_custom_command(tmp_path):
    plan = plan_interactive_job(workers=3, slots=2, device="cpu", jobs_dir=str(tmp_path), steps=7)
    argv = plan.train_argv
    assert plan.default_command and plan.ranks == 6
    assert argv[argv.index("--hostfile") + 1] == "/etc/mpi/hostfile" and "--force_multi" in argv
    assert argv[argv.index("--launcher") + 1] == "openmpi" and argv[-2:] == ["--steps", "7"]
    assert "--allow-run-as-root" in argv[argv.index("--launcher_args") + 1] or os.geteuid() != 0
    assert "kind: MPIJob" in plan.manifest_yaml() and "replicas: 3" in plan.manifest_yaml()
    folded = plan.manifest_details()  # the notebook shows it folded: one line until opened, the YAML escaped inside
    assert folded.startswith("<details><summary>The whole MPIJob: ") and "replicas: 3" in folded and "<br" not in folded
    assert folded.count("\n") == plan.manifest_yaml().count("\n") and "&quot;" not in plan.manifest_yaml()
    custom = plan_interactive_job(train_command="python -c 'print(1)'", device="cpu", jobs_dir=str(tmp_path))
    assert custom.train_argv == ["python", "-c", "print(1)"] and not custom.default_command


def test_training_progress_hides_metric_lines_and_counts_rank0_steps():
    import io

    out = io.StringIO()
    progress = TrainingProgress(total_steps=2, stream=out)
    lines = [
        "[1,0]<stdout>:rank 0/2 on vm",
        '[1,0]<stdout>:LABKIT_METRIC {"event": "step", "rank": 0, "world_size": 2, "step": 1, "loss": 1.0}',
        'LABKIT_METRIC {"event": "step", "rank": 1, "world_size": 2, "step": 1, "loss": 0.9}',
        'LABKIT_METRIC {"event": "step", "rank": 0, "world_size": 2, "step": 2, "loss": 0.5}',
    ]
    text = "\n".join(lines) + "\n"
    for i in range(0, len(text), 7):  # arrives in arbitrary chunks, split mid-line
        progress(text[i : i + 7])
    progress.close()
    assert out.getvalue() == "[1,0]<stdout>:rank 0/2 on vm\n"
    assert progress.bar.n == 2
    summary = summarize_training(parse_metrics(progress.output), 0)
    assert summary["ranks"] == [0, 1] and summary["per_rank"][0] == {"steps": 2, "loss_first": 1.0, "loss_last": 0.5}
    assert summary["allreduce_ok"] is False  # no rank reported the final all-reduce


def test_a_batch_launcher_command_runs_to_completion(backend):
    """Not only `sleep infinity`: a launcher command that ends sets the job's phase from its exit code."""
    ok = backend.submit(JobSpec(name="batch-ok", launcher_command=["sh", "-c", "cat /etc/mpi/hostfile; echo done"]))
    bad = backend.submit(JobSpec(name="batch-bad", launcher_command=["sh", "-c", "exit 9"]))
    assert wait_until(lambda: backend.status("batch-ok").phase == "Succeeded")
    assert wait_until(lambda: backend.status("batch-bad").phase == "Failed")
    assert "exit code 9" in backend.status("batch-bad").message
    assert "localhost slots=2" in ok.logs() and "done" in ok.logs()
    assert not bad.status().past_deadline
    ok.delete()
    bad.delete()


def test_default_command_without_open_mpi_is_a_config_error_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mpirun anywhere
    with pytest.raises(ConfigError) as err:
        plan_interactive_job(device="cpu", jobs_dir=str(tmp_path))
    assert err.value.field == "train_command" and "mpirun" in str(err.value)
    # A command of one's own does not need it.
    assert plan_interactive_job(device="cpu", jobs_dir=str(tmp_path), train_command="echo hi").train_argv == [
        "echo",
        "hi",
    ]


def test_parse_metrics_survives_mpirun_gluing_two_ranks_onto_one_line():
    glued = (
        '[1,0]<stdout>:LABKIT_METRIC {"event": "done", "rank": 0}[1,1]<stdout>:LABKIT_METRIC {"event": "done", '
        '"rank": 1}\n[1,0]<stdout>:\n[1,1]<stdout>:LABKIT_METRIC {"broken\nLABKIT_METRIC {"event": "step", "rank": 1}'
    )
    assert parse_metrics(glued) == [
        {"event": "done", "rank": 0},
        {"event": "done", "rank": 1},
        {"event": "step", "rank": 1},
    ]


def test_each_exec_gets_its_own_rendezvous_port(backend):
    """DeepSpeed's openmpi path ignores --master_port (MPI discovery defaults to 29500): exec exports MASTER_PORT,
    the command's own --master_port when it has one, so two jobs on one host never meet on the same port."""
    with backend.submit(JobSpec(name="ports")) as job:
        job.wait_ready(10)
        ports = {job.run(["sh", "-c", "echo $MASTER_PORT"]).output.strip() for _ in range(3)}
        assert len(ports) == 3 and all(p.isdigit() and p != "29500" for p in ports)
        own = job.run(["sh", "-c", "echo $MASTER_PORT", "--master_port", "40123"]).output.strip()
        assert own == "40123"


@pytest.mark.parametrize(
    "argv,kept",
    [
        (["deepspeed", "--master_port", "40123", "train.py"], "40123"),
        (["deepspeed", "--force_multi", "--master_port=40123", "train.py", "--epochs", "1"], "40123"),
        (
            ["python", "-m", "deepspeed.launcher.runner", "-H", "/etc/mpi/hostfile", "--master_port", "40123", "t.py"],
            "40123",
        ),
        # after the script, --master_port is the script's own argument: the runner still needs a free port of its own
        (
            ["deepspeed", "--hostfile", "/etc/mpi/hostfile", "--launcher", "openmpi", "t.py", "--master_port", "40123"],
            None,
        ),
        (["deepspeed", "--module", "pkg.train", "--master_port", "40123"], None),
        # argparse reads a unique prefix of a long option, and a short option's value attached
        (["deepspeed", "--master_p", "40123", "train.py"], "40123"),
        (["deepspeed", "-H/etc/mpi/hostfile", "--master_port=40123", "train.py"], "40123"),
        (["deepspeed", "--mod", "pkg.train", "--master_port", "40123"], None),
        (["deepspeed", "--bind_cores", "-Hfile", "t.py", "--master_port", "40123"], None),
        (["deepspeed", "--", "t.py", "--master_port", "40123"], None),  # "--": no more runner options
        (["deepspeed", "train.py"], None),
        (["sh", "-c", "echo $MASTER_PORT", "--master_port", "40123"], "40123"),  # not the runner: its flag is meant
    ],
)
def test_the_rendezvous_port_is_the_runners_own_or_a_free_one(argv, kept):
    cmd, port = command_line.with_master_port(argv)
    if kept:
        assert (cmd, port) == (argv, kept)
        return
    assert port.isdigit() and port not in ("29500", "40123")
    at = cmd.index("--master_port")
    assert cmd[at + 1] == port and cmd[:at] + cmd[at + 2 :] == argv  # inserted before the runner's other options
    assert at == (1 if cmd[0] == "deepspeed" else 3)


@pytest.mark.parametrize(
    ("argv", "kept"),
    [
        (["accelerate", "launch", "--config_file", "c.yaml", "-m", "pkg.train"], None),
        (["/venv/bin/accelerate", "launch", "--config_file", "c.yaml", "train.py", "--main_process_port", "1"], None),
        (["python", "-m", "accelerate.commands.accelerate_cli", "launch", "-m", "pkg.train"], None),
        (["accelerate", "launch", "--main_process_port", "40123", "-m", "pkg.train"], "40123"),
        (["accelerate", "launch", "--main_process_port=40123", "train.py"], "40123"),
    ],
)
def test_accelerate_launch_is_given_a_free_main_process_port(argv, kept):
    """accelerate refuses a held --main_process_port (default 29500; another job on this host may hold it) and hands it
    to DeepSpeed's runner: a local exec adds a free one unless the command names its own before the script."""
    cmd, port = command_line.with_master_port(argv)
    if kept:
        assert (cmd, port) == (argv, kept)
        return
    at = cmd.index("launch") + 1
    assert port.isdigit() and port != "29500" and cmd[at : at + 2] == ["--main_process_port", port]
    assert cmd[:at] + cmd[at + 2 :] == argv


def test_the_runners_options_are_deepspeeds_own(monkeypatch):
    """The local exec's table of runner options is the one DeepSpeed's installed runner parses with (a release that
    adds one fails here), and it reads a command line as that parser does."""
    from deepspeed.launcher import runner

    parsers = []
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, *a, **k: parsers.append(self))
    runner.parse_args([])
    actions = [a for a in parsers[0]._actions if a.option_strings and a.dest != "help"]
    options = {o: a.nargs != 0 for a in actions for o in a.option_strings if o.startswith("--")}
    assert command_line._RUNNER_OPTIONS == options
    monkeypatch.undo()
    argv = ["--master_p", "40123", "-Hhosts", "--mod", "--launcher=openmpi", "-q", "pkg.train", "--master_port", "1"]
    parsed, ours = runner.parse_args(argv), dict(command_line.runner_options(argv))
    assert ours == {
        "--master_port": "40123",
        "--hostfile": "hosts",
        "--module": "",
        "--launcher": "openmpi",
        "--quiet": "",
    }
    assert (parsed.master_port, parsed.hostfile, parsed.launcher) == (40123, "hosts", "openmpi")
    assert parsed.module and parsed.quiet
    assert parsed.user_script == "pkg.train" and parsed.user_args == ["--master_port", "1"]


@pytest.mark.slow
def test_two_jobs_train_on_one_host_at_the_same_time(backend):
    """Two students on one machine: without a per-exec MASTER_PORT both jobs' ranks would rendezvous on 29500."""
    specs = [JobSpec(name=f"student-{i}") for i in range(2)]
    jobs = [backend.submit(spec) for spec in specs]
    results: dict[int, object] = {}
    try:
        for job in jobs:
            job.wait_ready(10)
        threads = [
            threading.Thread(
                target=lambda i=i: results.setdefault(i, jobs[i].run(training_command(backend, steps=5), timeout=240))
            )
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        for job in jobs:
            job.delete()
    for i in range(2):
        res = results[i]
        done = [m for m in parse_metrics(res.output) if m["event"] == "done"]
        assert res.returncode == 0 and sorted(m["rank"] for m in done) == [0, 1], res.output[-3000:]
        assert all(m["world_size"] == 2 and m["allreduce_sum"] == 3.0 for m in done)


# A rank that fails before the rendezvous and then never exits (a teardown stuck on a thread, as a live process group's
# can be), while its peer waits in the rendezvous for it: only the exec's own watchdog can end this.
DRILL = """
import threading, time
import deepspeed
from labkit.ranks.runtime import rank_and_world, rank_guard
if rank_and_world()[0] == 1:
    threading.Thread(target=time.sleep, args=(600,)).start()
    with rank_guard():
        raise ValueError("device_id cuda:1 is out of range")
deepspeed.init_distributed()
"""
TYPED = ["deepspeed", "--hostfile", "/etc/mpi/hostfile", "--launcher", "openmpi"]  # as the seed guide types it


@pytest.mark.slow
def test_a_rank_dying_before_the_rendezvous_ends_the_exec_fast_naming_it(backend):
    with backend.submit(JobSpec(name="drill", workers=2, slots_per_worker=1)) as job:
        job.wait_ready(10)
        uid = job_uid(backend, "drill")
        launcher = json.loads((backend.job_dir("drill") / "launcher.json").read_text())
        (backend.job_dir("drill") / "workdir" / "drill.py").write_text(DRILL)
        start = time.monotonic()
        res = job.run([*TYPED, "drill.py"], timeout=120)
        assert time.monotonic() - start < 60 and res.returncode != 0, res.output[-3000:]
        assert res.failure.startswith("rank 1 failed (exit code 1): ValueError: device_id cuda:1 is out of"), res.output
        assert "likely cause: more ranks than devices" in res.failure
        assert wait_until(lambda: set(job_pids(uid, exclude={os.getpid()})) <= {launcher["pid"], launcher["child_pid"]})


@pytest.mark.slow
def test_the_cluster_command_line_works_as_typed_in_a_local_job(backend):
    """No --master_addr, no --no_ssh_check, no --allow-run-as-root: the job answers what DeepSpeed asks over ssh.
    With DeepSpeed's default port 29500 held, as another job on this host may hold it (a pod has its own)."""
    with contextlib.ExitStack() as held, backend.submit(JobSpec(name="typed", workers=2, slots_per_worker=1)) as job:
        with contextlib.suppress(OSError):  # already held by something else: as good
            held.enter_context(socket.create_server(("127.0.0.1", 29500)))
        job.wait_ready(10)
        for extra in ([], ["--force_multi"]):  # DeepSpeed's own launcher on one host, and mpirun
            res = job.run([*TYPED, *extra, "--module", "labkit.ranks.hello", "--steps", "2"], timeout=240)
            done = [m for m in parse_metrics(res.output) if m["event"] == "done"]
            assert res.returncode == 0 and sorted(m["rank"] for m in done) == [0, 1], res.output[-3000:]


ADDRESS = """
import os
import torch.distributed as dist
from labkit.ranks.runtime import init_deepspeed, say
init_deepspeed()
say(f"rendezvous {dist.get_rank()} {os.environ['MASTER_ADDR']}")  # one write: print's pieces interleave across ranks
"""


@pytest.mark.slow
def test_a_local_jobs_ranks_meet_on_loopback_not_on_the_network(backend):
    """Under mpirun DeepSpeed's MPI discovery would take `hostname -I`'s first address (192.0.2.2 on the kit's CI
    machines): a local job's rendezvous stays on 127.0.0.1, where only this machine reaches it."""
    with backend.submit(JobSpec(name="loopback", workers=2, slots_per_worker=1)) as job:
        job.wait_ready(10)
        (backend.job_dir("loopback") / "workdir" / "address.py").write_text(ADDRESS)
        res = job.run([*TYPED, "--force_multi", "address.py"], timeout=120)
    seen = sorted(line.split()[1:] for line in res.output.splitlines() if line.startswith("rendezvous"))
    assert res.returncode == 0 and seen == [["0", "127.0.0.1"], ["1", "127.0.0.1"]], res.output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "victim"), [([], 0), (["--force_multi"], 1)])
def test_a_rank_killed_in_an_exec_is_named_with_its_signal(backend, extra, victim):
    """The interactive chapter's command; a rank SIGKILLed after the rendezvous (as the OOM killer ends one).
    DeepSpeed's launcher on one host prints the last rank's command whichever rank died; mpirun (--force_multi) a line
    of its own."""
    with backend.submit(JobSpec(name="oom", workers=2, slots_per_worker=1)) as job:
        job.wait_ready(10)
        script = (ROOT / "tests" / "rank_scripts" / "allreduce.py").read_text()
        (backend.job_dir("oom") / "workdir" / "oom.py").write_text(script)
        start = time.monotonic()
        res = job.run([*TYPED, *extra, "oom.py", "--kill-rank", str(victim)], timeout=120)
        assert time.monotonic() - start < 60 and res.returncode != 0, res.output[-3000:]
        assert res.failure == f"rank {victim} died (killed by signal 9); the other ranks were stopped", res.output


def test_the_deadline_is_named_not_its_signal(backend):
    job = LocalBackend(root=backend.root, deadline_seconds=2).submit(JobSpec(name="late"))
    job.wait_ready(10)
    res = job.run(["sh", "-c", "sleep 30"])
    assert res.returncode != 0 and res.failure == "stopped by its deadline after 2 s"
    job.delete()


# ------------------------------------------------------------------------------------- trust in the jobs folder (12.4)


def test_a_namespace_is_a_name_never_a_path(tmp_path):
    victim = tmp_path / "victim" / "important"
    victim.mkdir(parents=True)
    (victim / "job.json").write_text("{}")  # looks like a job: delete must still not reach it
    b = LocalBackend(root=tmp_path / "jobs")
    for call in (lambda: b.delete("important", namespace="../victim"), lambda: LocalBackend(namespace="../victim")):
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.field == "namespace"
    assert victim.is_dir() and (victim / "job.json").exists()


def test_cli_exec_train_refuses_steps_below_one_before_looking_for_the_job(tmp_path, capsys):
    # `--steps -3` launched DeepSpeed with -3 steps and exited 0
    assert main(["job", "exec", "t1", "--train", "--steps", "-3", "--jobs-dir", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("labkit: error: --steps: must be a whole number >= 1, got -3")


@pytest.mark.parametrize(("workers", "slots", "named"), [(0, 64, "slots"), (4, 8, "workers")])
def test_too_many_local_ranks_names_what_was_set(workers, slots, named, tmp_path):
    """Notebook 03 with slots=64 said "workers: 64 local ranks is more than 16" though workers was left automatic."""
    with pytest.raises(ConfigError) as err:
        plan_interactive_job(workers=workers, slots=slots, device="cpu", jobs_dir=tmp_path)
    assert err.value.field == named and f"x {slots} slot(s) = " in err.value.problem


@pytest.mark.parametrize(
    ("runner", "flag"),
    [
        (["deepspeed", "--num_gpus", "20"], "--num_gpus"),
        (["deepspeed", "--num_gpus=20"], "--num_gpus"),
        (["deepspeed", "--num_accelerators", "17"], "--num_accelerators"),
        ([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "20"], "--num_gpus"),
    ],
)
def test_exec_refuses_a_rank_count_typed_into_a_deepspeed_line_before_starting_it(runner, flag, backend, capsys):
    """`job exec NAME -- deepspeed --num_gpus 20 ...` started 20 ranks here: the local backend checked the job's
    workers x slots only, not the count typed into the runner's line (every local worker is this host, so --num_gpus
    is the local rank count). Refused like a plan's count, naming the flag, before anything starts."""
    with backend.submit(JobSpec(name="typed", workers=1)) as job:
        job.wait_ready(timeout=10)
        cmd = [*runner, "--no_ssh_check", "train.py"]
        assert main(["job", "exec", "typed", "--jobs-dir", str(backend.root), "--timeout", "120", "--", *cmd]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"labkit: error: {flag}: ") and "more than 16" in captured.err, captured.err
        assert captured.out == "" and not list((backend.job_dir("typed") / "execs").iterdir())
        # the script's own flags are the script's, and a command that is no runner is run as typed
        argv = ["deepspeed", "--num_gpus", "2", "train.py", "--num_gpus", "20"]
        assert command_line.typed_ranks(argv) == ("--num_gpus", 2, "")
        assert job.exec(["echo", "--num_gpus", "20"], on_output=None) == 0


@pytest.mark.parametrize("flag", ["--num_gpus", "--num_accelerators"])
def test_a_runner_count_over_a_workers_slots_is_refused_as_its_pods_would_fail_it(flag, monkeypatch):
    """`job exec JOB -- deepspeed --hostfile /etc/mpi/hostfile --num_gpus 4 train.py` in a GPU job of 2 workers x 2
    slots was checked against this machine's 8 GPUs only and ran, while on its pods DeepSpeed's runner gives every
    host of the hostfile 4 ranks whatever its slots (runner.py apply_num_nodes_and_gpus) and ranks 2 and 3 of each
    pod find no GPU. Refused in one line naming the flag and the fix, before anything starts, as mpirun -np is."""
    monkeypatch.setattr(devices, "device_count", lambda device: 8)  # this machine has GPUs to spare; a pod has 2
    st, hostfile = SimpleNamespace(namespace="workloads", name="ds"), "/jobs/ds/hostfile"  # where exec maps it
    job = {"accelerator": "nvidia", "workers": 2, "slots_per_worker": 2}
    argv = ["deepspeed", "--hostfile", hostfile, flag, "4", "train.py"]  # pdsh, the runner's default launcher
    with pytest.raises(ConfigError) as err:
        LocalBackend._check_typed_ranks(st, job, *command_line.typed_ranks(argv, hostfile))
    assert err.value.field == flag and "pods have 2 CUDA device(s) each" in err.value.problem, err.value
    assert f"pass {flag} 2 or fewer" in err.value.fix and "\n" not in str(err.value), err.value
    # within the slots, CPU ranks (a pod runs them, oversubscribed) and a hostfile of the line's own: as typed
    for ranks, accelerator, own in ((2, "nvidia", hostfile), (4, "cpu", hostfile), (4, "nvidia", "/tmp/mine")):
        typed = command_line.typed_ranks(["deepspeed", "-H", own, flag, str(ranks), "train.py"], hostfile)
        LocalBackend._check_typed_ranks(st, {**job, "accelerator": accelerator}, *typed)


@pytest.mark.parametrize(
    ("cmd", "flag", "problem"),
    [
        (["mpirun", "-np", "3", "hostname"], "-np", "3 ranks but job workloads/slots has 1 worker(s) x 2 slot(s) = 2"),
        (["mpirun", "--mca", "btl", "self", "-n", "20", "hostname"], "-n", "more than 16"),
        (["accelerate", "launch", "--num_processes", "3", "-m", "pkg.train"], "--num_processes", "3 ranks but"),
        ([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--num-processes=20", "t.py"],
         "--num-processes", "more than 16"),
    ],
)  # fmt: skip
def test_exec_refuses_an_mpirun_or_accelerate_count_over_the_jobs_slots_before_starting_it(
    cmd, flag, problem, backend, capsys
):
    """`mpirun -np 3` in a job of 2 slots started mpirun, which printed Open MPI's 30-line "There are not enough slots
    available" (what a pod's mpirun says) and labkit's summary read "a rank failed (exit code 1): ----"; `-np 20` or
    `accelerate launch --num_processes 20` were not checked against the machine as `deepspeed --num_gpus 20` is.
    Refused in one line naming the flag as typed, before anything starts."""
    with backend.submit(JobSpec(name="slots", workers=1, slots_per_worker=2)) as job:
        job.wait_ready(timeout=10)
        assert main(["job", "exec", "slots", "--jobs-dir", str(backend.root), "--timeout", "120", "--", *cmd]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"labkit: error: {flag}: ") and problem in captured.err, captured.err
        assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""
        assert not list((backend.job_dir("slots") / "execs").iterdir())


def test_exec_runs_an_mpirun_count_a_pod_would_run_as_typed(backend):
    """Within the slots, oversubscribed as the line asks, or a count that is the program's own: run as typed."""
    with backend.submit(JobSpec(name="fits", workers=1, slots_per_worker=2)) as job:
        job.wait_ready(timeout=10)
        for cmd in (["mpirun", "-np", "2", "true"], ["mpirun", "--oversubscribe", "-np", "3", "true"],
                    ["mpirun", "-x", "A=1", "echo", "-n", "20"]):  # fmt: skip
            assert job.exec(cmd, on_output=None) == 0, cmd


def test_exec_runs_an_mpirun_count_over_the_slots_where_the_line_itself_makes_room(backend, tmp_path):
    """`mpirun --map-by slot:OVERSUBSCRIBE -np 3`, `--mca rmaps_base_oversubscribe 1` and `--hostfile` of the user's
    own (more slots) run 3 ranks on a pod's 2 slots, and did here too, but the exec refused them ("-np: 3 ranks but
    job ... has 2 slot(s)"): only --oversubscribe and -H counted. The job's own hostfile still holds the count."""
    own = tmp_path / "my-hosts"
    own.write_text("localhost slots=4\n")
    with backend.submit(JobSpec(name="room", workers=1, slots_per_worker=2)) as job:
        job.wait_ready(timeout=10)
        for cmd in (["mpirun", "--map-by", "slot:OVERSUBSCRIBE", "-np", "3", "true"],
                    ["mpirun", "--map-by", ":oversubscribe", "-np", "3", "true"],
                    ["mpirun", "--mca", "rmaps_base_oversubscribe", "1", "-np", "3", "true"],
                    ["mpirun", "-mca", "rmaps_base_oversubscribe", "true", "-np", "3", "true"],
                    ["mpirun", "--hostfile", str(own), "-np", "3", "true"],
                    ["mpirun", "-machinefile", str(own), "-np", "3", "true"]):  # fmt: skip
            assert job.exec(cmd, on_output=None) == 0, cmd
        with pytest.raises(ConfigError) as err:  # the job's hostfile, as typed in a pod: its 2 slots
            job.exec(["mpirun", "-np", "3", "--hostfile", "/etc/mpi/hostfile", "true"], on_output=None)
        assert err.value.field == "-np" and "has 1 worker(s) x 2 slot(s)" in err.value.problem


def test_job_folders_are_private_and_a_shared_writable_root_is_refused(backend, tmp_path):
    with backend.submit(JobSpec(name="private", workers=1)) as job:
        job.wait_ready(timeout=10)
        for path in (backend.root, backend.job_dir("private")):
            assert os.stat(path).st_mode & 0o077 == 0, path  # exec'd command lines are readable by us only
    for mode in (0o777, 0o770):  # shared by a class (/tmp/jobs), or by a group: either could plant a job there
        shared = tmp_path / f"shared-{mode:o}"
        shared.mkdir()
        shared.chmod(mode)
        with pytest.raises(ConfigError) as err:
            LocalBackend(root=shared).list()
        assert err.value.field == "jobs_dir" and "only you can write" in err.value.problem  # named as given


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_an_exec_timeout_that_is_no_deadline_is_refused_before_running(backend, tmp_path, timeout):
    """nan would mean no deadline at all, 0 or -1 a deadline already past: refused by name before the command runs."""
    with backend.submit(JobSpec(name="t", workers=1)) as job:
        job.wait_ready(timeout=10)
        marker = tmp_path / "ran"
        with pytest.raises(ConfigError) as err:
            job.run(["touch", str(marker)], timeout=timeout)
        assert err.value.field == "timeout" and not marker.exists()


def test_a_planted_job_never_makes_the_kit_signal_a_process(tmp_path):
    """A job folder the kit did not write (reached through a symlink, or its pid record not matching the running
    process's start) is neither listed nor signalled: `labkit job list` once killed an unrelated process this way."""
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        b = LocalBackend(root=tmp_path / "jobs")
        ns = tmp_path / "jobs" / "workloads"
        ns.mkdir(parents=True, mode=0o700)
        tmp_path.joinpath("jobs").chmod(0o700)
        planted = {"name": "x", "namespace": "workloads", "uid": "u", "created": 0, "deadline": 1, "workers": 1}
        state = {"phase": "Succeeded", "reason": "Completed", "ended": 0}
        # 1. a pid record without the process's start time (what a forged or stale record looks like)
        forged = ns / "forged"
        (forged / "execs").mkdir(parents=True)
        (forged / "job.json").write_text(json.dumps({**planted, "ttl_seconds_after_finished": 0}))
        (forged / "launcher.json").write_text(json.dumps({"pid": bystander.pid, "start_ticks": 1}))
        (forged / "execs" / str(bystander.pid)).write_text(json.dumps({"argv": ["x"], "start_ticks": 1}))
        (forged / "state.json").write_text(json.dumps(state))
        # 2. a job folder that is a symlink to someone else's files
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "job.json").write_text(json.dumps({**planted, "name": "linked"}))
        (elsewhere / "launcher.json").write_text(json.dumps({"pid": bystander.pid}))
        (ns / "linked").symlink_to(elsewhere)
        listed = [st.name for st in b.list(namespace="*")]  # also collects finished jobs past their TTL
        assert "linked" not in listed
        assert not b.delete("linked")
        b.delete("forged")
        assert alive(bystander.pid) and bystander.poll() is None
        assert (elsewhere / "job.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_recorded_pid_names_one_process_only():
    from labkit import procs

    me = os.getpid()
    assert procs.same_process(me, procs.start_ticks(me))
    assert not procs.same_process(me, procs.start_ticks(me) + 1)  # the same pid, started at another time: reused
    assert not procs.same_process(me, None)


def test_cluster_paths_map_onto_the_jobs_own_files_but_not_inside_data(tmp_path, backend):
    """/etc/mpi/hostfile -> the job's hostfile, /shared (the kit's PVC) -> the namespace's _shared folder, as whole
    path components only; an argument of several lines is a file's content and reaches the command as it is."""
    job, shared = tmp_path / "workloads" / "demo", tmp_path / "workloads" / "_shared"
    args = ["--out=/shared/runs/x", "/shared", "/sharedx", "/data/shared/y", "cat /etc/mpi/hostfile; ls /shared/a",
            "hostfile: /etc/mpi/hostfile\nout: /shared\n"]  # fmt: skip
    assert map_paths(args, job) == [f"--out={shared}/runs/x", str(shared), "/sharedx", "/data/shared/y",
                                    f"cat {job}/hostfile; ls {shared}/a", args[-1]]  # fmt: skip
    assert backend.shared_path("/shared/runs/demo") == backend.root / "workloads" / "_shared" / "runs" / "demo"


def test_shared_path_maps_only_the_shared_volume_and_returns_any_other_path_as_it_is(backend):
    """/shared and what is under it -> the namespace's _shared folder (another namespace: its own); the hostfile, a
    name that only starts like it, a relative path are no volume's and come back unchanged."""
    shared = backend.root / "workloads" / "_shared"
    assert backend.shared_path("/shared") == shared and backend.shared_path("/shared/a/b.json") == shared / "a/b.json"
    assert backend.shared_path("/shared/x", namespace="team") == backend.root / "team" / "_shared" / "x"
    for outside in ("/etc/mpi/hostfile", "/sharedx/y", "/data/shared/y", "shared/y", "/tmp/run"):
        assert backend.shared_path(outside) == Path(outside)
    assert not (backend.root / "workloads" / "x").exists()  # no job folder is made up on the way


@pytest.mark.slow
def test_a_name_reused_while_its_last_job_is_stopping_is_not_stopped_by_it(backend):
    """The old launcher was still stopping a command that ignores SIGTERM when the name was submitted again: it
    killed the new job's exec and marked the new job DeadlineExceeded. A resubmit now stops the old launcher first."""
    old = LocalBackend(root=backend.root, deadline_seconds=2).submit(JobSpec(name="reuse"))
    old.wait_ready(10)
    stubborn = ["sh", "-c", "trap '' TERM; sleep 30"]
    threading.Thread(target=lambda: old.exec(stubborn, on_output=None), daemon=True).start()
    assert wait_until(lambda: (backend.job_dir("reuse") / "state.json").exists(), 30), "the deadline did not come"
    new = backend.submit(JobSpec(name="reuse"))
    assert new.wait_ready(10).ready
    assert new.exec(["sleep", "6"], on_output=None) == 0  # not killed by the old launcher's last pass
    assert backend.status("reuse").phase == "Running"


def test_a_launcher_killed_with_sigkill_leaves_a_failed_job_and_nothing_running(backend):
    """No launcher, no deadline: the next look at the job stops what it left and records the end, so its TTL and
    `list --stale` apply (before, its processes ran until someone deleted the job by hand)."""
    job = LocalBackend(root=backend.root, deadline_seconds=3600).submit(
        JobSpec(name="k9", ttl_seconds_after_finished=0)
    )
    job.wait_ready(10)
    uid = job_uid(backend, "k9")
    pid = json.loads((backend.job_dir("k9") / "launcher.json").read_text())["pid"]
    running = lambda: [p for p in job_pids(uid, exclude={os.getpid()}) if alive(p)]  # noqa: E731
    assert set(running()) - {pid}, "the job started no process beside its launcher"
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: backend.status("k9").phase == "Failed", 10)
    assert "died without recording why" in backend.status("k9").message
    assert wait_until(lambda: not running(), 10), running()
    time.sleep(1.1)  # past its TTL of 0 s: the next list collects it
    assert "k9" not in [st.name for st in backend.list()]


def test_a_sink_that_fails_stops_the_command_instead_of_leaving_it_blocked(backend):
    """`labkit job exec ... | head -2`: stdout closes, on_output raises, and nobody read the pipe any more: the
    command blocked until the job's deadline (4 h). Now it is stopped and the error goes to the caller."""
    with backend.submit(JobSpec(name="sink")) as job:
        job.wait_ready(10)

        def closed(_line: str) -> None:
            raise BrokenPipeError("stdout closed")

        started = time.monotonic()
        with pytest.raises(BrokenPipeError):
            job.exec(["seq", "10000000"], on_output=closed, timeout=120)
        assert time.monotonic() - started < 15
        assert job.run(["true"]).returncode == 0  # the job itself goes on


def test_a_jobs_folder_a_shell_would_split_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        LocalBackend(root=tmp_path / "with space").list()
    assert err.value.field == "jobs_dir" and "holds a space" in err.value.problem


def test_credentials_in_the_environment_never_reach_exec_output(backend, monkeypatch):
    """DeepSpeed's openmpi runner logs `cmd = mpirun ... -x MLFLOW_TRACKING_PASSWORD=<value>` (it forwards every
    MLFLOW*/PYTHON* variable), and a script may print its own token: exec output shows neither value."""
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "CANARYMLFLOW")
    monkeypatch.setenv("HF_TOKEN", "hf_CANARYHF")
    monkeypatch.setenv("PYTHONCANARY", "not-a-secret")  # an ordinary variable is shown as it is
    with backend.submit(JobSpec(name="sec", workers=1)) as job:
        job.wait_ready(timeout=10)
        printed = "echo -x MLFLOW_TRACKING_PASSWORD=$MLFLOW_TRACKING_PASSWORD $HF_TOKEN $PYTHONCANARY"
        res = job.run(["sh", "-c", printed])
    assert res.returncode == 0 and "CANARY" not in res.output.replace("not-a-secret", ""), res.output
    assert res.output.strip() == "-x MLFLOW_TRACKING_PASSWORD=<redacted> <redacted> not-a-secret"


def test_a_job_whose_owner_exited_is_listed_as_stale_and_deleted_with_the_others(backend, capsys):
    """A notebook kernel killed outright: its job ended with phase OwnerExited, and `labkit job list --stale
    [--delete]` (remove finished jobs) never showed it: neither finished nor past its deadline."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    job = LocalBackend(root=backend.root, deadline_seconds=3600).submit(JobSpec(name="orphan"))
    job.wait_ready(10)
    backend.end_with("orphan", owner.pid)
    owner.kill()
    owner.wait()
    assert wait_until(lambda: backend.status("orphan").phase == "OwnerExited", 10), backend.status("orphan")
    where = ["--backend", "local", "--jobs-dir", str(backend.root)]
    assert main(["job", "list", "--stale", *where]) == 0
    assert "orphan" in capsys.readouterr().out
    assert main(["job", "list", "--stale", "--delete", *where]) == 0
    assert backend.list() == []


def test_in_a_learners_lab_local_jobs_take_her_namespace_too(tmp_path, monkeypatch):
    """A rehearsal on the local backend says (and files under) the namespace the cluster run would use, so switching
    chapter 03's backend in alice's lab changes where the job runs, not what it is called."""
    monkeypatch.setenv("LABKIT_NAMESPACE", "alice")
    plan = plan_interactive_job(backend="local", jobs_dir=tmp_path, device="cpu", workers=1)
    assert (plan.spec.namespace, plan.backend.namespace) == ("alice", "alice")
    assert get_backend("local", jobs_dir=tmp_path).namespace_dir() == tmp_path / "alice"
    explicit = plan_interactive_job(backend="local", jobs_dir=tmp_path, device="cpu", workers=1, namespace="mine")
    assert (explicit.spec.namespace, explicit.backend.namespace) == ("mine", "mine")


LIMITING, FILTERING = "does not support limiting num nodes/gpus", "does not support worker include/exclusion"
WORKER = "limits-worker-{}.limits.default.svc"  # the hosts of the pods' hostfile


@pytest.mark.parametrize(
    ("workers", "typed", "flag", "launcher", "said"),
    [
        (2, ["--launcher", "openmpi", "--num_gpus", "1"], "--num_gpus", "openmpi", LIMITING),
        (2, ["--launcher=MPICH", "--num_accelerators=1"], "--num_accelerators", "mpich", LIMITING),
        (3, ["--launcher", "impi", "--num_nodes", "2"], "--num_nodes", "impi", LIMITING),
        (1, ["--force_multi", "--launcher", "mvapich", "--num_gpus", "1"], "--num_gpus", "mvapich", LIMITING),
        # a filter leaving 2+ hosts, or any with --force_multi (the kit's own line): validate_args refuses it too
        (
            3,
            ["--launcher", "openmpi", "--include", f"{WORKER.format(0)}@{WORKER.format(1)}"],
            "--include",
            "openmpi",
            FILTERING,
        ),  # fmt: skip
        (3, ["--launcher", "openmpi", "-e", WORKER.format(2)], "--exclude", "openmpi", FILTERING),
        (2, ["--launcher", "openmpi", f"--exclude={WORKER.format(0)}:1"], "--exclude", "openmpi", FILTERING),  # a slot
        (2, ["--force_multi", "--launcher", "openmpi", "--include=localhost:0"], "--include", "openmpi", FILTERING),
    ],
)
def test_exec_refuses_a_runner_limit_an_mpi_launcher_refuses_on_the_pods(
    workers, typed, flag, launcher, said, backend, capsys
):
    """`job exec JOB -- deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi --num_gpus 1 ...` in a job of 2
    workers ran here (the local hostfile has one host, so DeepSpeed's runner launched its ranks itself), while in the
    job's launcher pod the hostfile has a host per worker and the runner stops at once: "openmpi backend does not
    support limiting num nodes/gpus" (multinode_runner.py validate_args, for openmpi, mpich, impi and mvapich alike,
    whenever the launch is multi-node: more than one host or --force_multi). Refused the same way, in one line naming
    the flag and the fix, before anything starts."""
    with backend.submit(JobSpec(name="limits", workers=workers, slots_per_worker=1)) as job:
        job.wait_ready(timeout=10)
        cmd = [
            "deepspeed",
            "--hostfile",
            "/etc/mpi/hostfile",
            *typed,
            "--no_ssh_check",
            "--module",
            "labkit.ranks.hello",
        ]
        assert main(["job", "exec", "limits", "--jobs-dir", str(backend.root), "--timeout", "120", "--", *cmd]) == 2
        captured = capsys.readouterr()
        said = f"{launcher} backend {said}"
        assert captured.err.startswith(f"labkit: error: {flag}: ") and said in captured.err, captured.err
        assert "Fix: drop it: " in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
        assert captured.out == "" and not list((backend.job_dir("limits") / "execs").iterdir())


@pytest.mark.parametrize(
    ("workers", "typed"),
    [
        (2, ["--num_gpus", "1"]),  # pdsh, the runner's default launcher, takes it
        (2, ["--launcher", "openmpi"]),  # no limit: the hostfile's slots decide
        (1, ["--launcher", "openmpi", "--num_gpus", "1"]),  # one host: the runner launches its ranks itself
        (2, ["--launcher", "openmpi", "--num_nodes", "1"]),  # trimmed to one host first (apply_num_nodes_and_gpus)
        (2, ["--launcher", "openmpi", "--no_ssh", "--node_rank", "0", "--num_gpus", "1"]),  # no multi-node launch
        (2, ["--launcher", "openmpi", "--include", "w-0:0"]),  # one host left: the runner launches it itself
        (3, ["--launcher", "openmpi", "--exclude", "w-0@w-1"]),  # the same
        (2, ["--launcher", "pdsh", "--include", "w-0@w-1"]),  # pdsh takes a filter
        (2, ["--launcher", "openmpi", "--include", "w-0@w-1", "--num_gpus", "1"]),  # refused here as there (runner)
        (2, ["--launcher", "openmpi", "--include", "w-0@w-1", "--exclude", "w-1"]),  # the same
    ],
)
def test_a_runner_limit_the_pods_runner_takes_is_not_refused(workers, typed):
    hostfile = "/jobs/limits/hostfile"  # where exec maps /etc/mpi/hostfile
    argv = ["deepspeed", "--hostfile", hostfile, *typed, "train.py", "--launcher", "openmpi", "--num_gpus", "1"]
    assert command_line.runner_limit_refused(argv, hostfile, workers) is None
    # a hostfile of the line's own is not the job's: its hosts are not known here
    own = ["deepspeed", "--hostfile", "/tmp/mine", "--launcher", "openmpi", "--num_gpus", "1", "train.py"]
    assert command_line.runner_limit_refused(own, hostfile, 2) is None

"""labkit.launch runs real ranks through the real launchers and never leaves one behind."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kit_testing import kit_processes, launched_line, without_port

from labkit import devices, launch, procs
from labkit.errors import ConfigError, LaunchError
from labkit.ranks import runtime

SCRIPT = Path(__file__).parent / "rank_scripts" / "allreduce.py"
LAUNCHERS = ["deepspeed", "openmpi", "mpirun"]


def test_commands_match_what_a_user_types(tmp_path):
    spec = launch.LaunchSpec(script=SCRIPT, args=["--x", "1"], world_size=2, launcher="openmpi")
    cmd = launch.build_command(spec, hostfile=tmp_path / "hf", master_port=1234)
    runner = launch.deepspeed_executable()  # `deepspeed`, or `python -m deepspeed.launcher.runner` without the script
    assert cmd[: len(runner)] == runner
    joined = " ".join(cmd)
    assert f"--hostfile {tmp_path / 'hf'} --force_multi --no_ssh_check --launcher openmpi" in joined
    assert "--master_port 1234" in joined and joined.endswith(f"{SCRIPT} --x 1")
    # with no hostfile given, the cluster's default path is shown
    assert "--hostfile /etc/mpi/hostfile" in " ".join(launch.build_command(spec))
    mpirun = launch.build_command(
        launch.LaunchSpec(script=SCRIPT, world_size=3, launcher="mpirun"), hostfile=tmp_path / "hf"
    )
    assert mpirun[:3] == ["mpirun", "-n", "3"]


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("launcher", {"launcher": "torchrun"}),
        ("world_size", {"world_size": 0}),
        ("device", {"device": "tpu"}),
        ("module", {"module": "labkit.ranks.nonexistent", "script": ""}),
        ("script", {"script": "/nonexistent.py"}),
    ],
)
def test_bad_spec_is_refused_before_starting(field, kwargs):
    spec = launch.LaunchSpec(**{"script": SCRIPT, **kwargs})
    with pytest.raises(ConfigError) as err:
        launch.run(spec)
    assert err.value.field == field and "Fix:" in str(err.value)


def test_kit_env_marks_processes_and_sizes_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = launch.kit_env({"A": "b"}, world_size=2, device="cpu")
    assert env[launch.MARKER_ENV] == "1" and env["A"] == "b" and env["DS_ACCELERATOR"] == "cpu"
    assert int(env["OMP_NUM_THREADS"]) == int(env["MKL_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2)
    # a thread count the user set wins (the GPU machine's split runs set 4 per test group)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.kit_env({}, world_size=2, device="cpu")["OMP_NUM_THREADS"] == "3"
    # rank variables come from the launcher, never from the environment the kit was started in
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    env = launch.kit_env({"MASTER_PORT": "1234"})
    assert "RANK" not in env and env["MASTER_PORT"] == "1234"


def test_hostfile_has_operator_format(tmp_path):
    path = launch.write_hostfile(tmp_path / "hostfile", {"w-0.job.ns.svc": 2, "w-1.job.ns.svc": 2})
    assert path.read_text() == "w-0.job.ns.svc slots=2\nw-1.job.ns.svc slots=2\n"


def test_failure_summary_finds_the_rank():
    out = "noise\nLABKIT_RANK_ERROR rank=1 RuntimeError: boom\nTraceback...\n"
    assert launch.failure_summary(out) == (1, "RuntimeError: boom")
    tagged = "[1,0]<stdout>:ok\n[1,1]<stderr>:ValueError: bad shape\n"
    assert launch.failure_summary(tagged) == (1, "ValueError: bad shape")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_ranks_all_reduce_through_each_launcher(launcher, monkeypatch):
    if launcher != "deepspeed" and shutil.which("mpirun") is None:
        pytest.fail("Open MPI is part of the kit's set-up (make install); mpirun is missing")
    # A kernel in a pod that is itself a rank (a PyTorchJob's RANK=0): mpirun's ranks inherited it, read it before
    # OMPI_COMM_WORLD_RANK, and both called themselves rank 0 ("127.0.0.1:PORT cannot listen (EADDRINUSE)")
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "job-master-0"}.items():
        monkeypatch.setenv(name, value)
    lines: list[str] = []
    spec = launch.LaunchSpec(script=SCRIPT, args=["--listeners"], world_size=2, launcher=launcher)
    result = launch.run(spec, timeout=180, on_output=lines.append)
    assert result.ok
    assert "rank 0/2 sum=3" in result.output and "rank 1/2 sum=3" in result.output
    assert lines, "output is streamed line by line"
    # Issue 12.6: rank 0 holds the rendezvous store (MASTER_PORT); nothing any rank listens on is reachable from
    # another machine (torch's own TCPStore would listen on every interface).
    found = re.findall(r"rank (\d) store port (\d+) listens on (\[.*?\])", result.output)
    listened = {int(rank): (port, ast.literal_eval(where)) for rank, port, where in found}
    assert sorted(listened) == [0, 1] and f"127.0.0.1:{listened[0][0]}" in listened[0][1], listened
    assert all(a.startswith("127.0.0.1:") for _, where in listened.values() for a in where), listened


@pytest.mark.slow
def test_ranks_on_the_device_here_listen_on_loopback_only():
    # On a GPU machine: NCCL's path (the store, and NCCL's own bootstrap sockets once a collective has run).
    device = "cuda" if devices.pick_device("auto") == "cuda" else "cpu"
    world = devices.device_count("cuda") if device == "cuda" else 2
    spec = launch.LaunchSpec(script=SCRIPT, args=["--listeners", "--device", device], world_size=world, device=device)
    result = launch.run(spec, timeout=180)
    found = re.findall(r"rank (\d) store port (\d+) listens on (\[.*?\])", result.output)
    assert len(found) == world, result.output[-2000:]
    where = [a for _, _, listed in found for a in ast.literal_eval(listed)]
    assert (where or world == 1) and all(a.startswith("127.0.0.1:") for a in where), (device, where)


@pytest.mark.slow
def test_a_world_of_one_has_no_store_listening():
    # A kernel's in-process rank (notebook 04) is a world of one: an in-memory store, no store socket in the kernel
    # process. gloo's own pair socket stays, on loopback.
    spec = launch.LaunchSpec(script=SCRIPT, args=["--listeners"], world_size=1)
    result = launch.run(spec, timeout=180)
    port, listed = re.search(r"rank 0 store port (\d+) listens on (\[.*?\])", result.output).groups()
    where = ast.literal_eval(listed)
    assert f"127.0.0.1:{port}" not in where and all(a.startswith("127.0.0.1:") for a in where), where


@pytest.mark.slow
def test_failing_rank_surfaces_its_error_and_nothing_is_left(tmp_path):
    with pytest.raises(LaunchError) as err:
        launch.run(
            launch.LaunchSpec(script=SCRIPT, args=["--fail-rank", "1"], world_size=2),
            timeout=180,
            log_path=tmp_path / "log",
        )
    assert err.value.failed_rank == 1
    assert "rank 1" in str(err.value) and "deliberate failure on rank 1" in str(err.value)
    assert "deliberate failure" in (tmp_path / "log").read_text()
    assert not kit_processes()


def test_a_run_has_a_temp_folder_of_its_own_removed_after_it_also_at_its_deadline():
    # torchrun leaves a torchelastic_* folder per launch, a stopped mpirun its session folder: in the run's own TMPDIR
    leave = "import tempfile, time; d = tempfile.mkdtemp(prefix='torchelastic_'); print(d, flush=True)"
    result = launch.run_command([sys.executable, "-c", leave], launch.kit_env())
    left = Path(result.output.split()[-1])
    assert left.parent.name.startswith("labkit-run-") and not left.parent.exists()
    with pytest.raises(LaunchError, match="deadline") as err:
        launch.run_command([sys.executable, "-c", leave + "; time.sleep(60)"], launch.kit_env(), timeout=3)
    stopped = Path(err.value.output.split()[-1])
    assert stopped.parent.name.startswith("labkit-run-") and not stopped.parent.exists()


def test_a_deadline_is_a_timeout_error_and_still_a_launch_error():
    """The CLI exits 124 with `labkit: deadline:` for a TimeoutError (README's exit codes); callers catching
    LaunchError still see it. nan is no deadline a user can mean: refused, not run without one."""
    with pytest.raises(TimeoutError, match="^stopped by its deadline after 1 s") as err:
        launch.run_command([sys.executable, "-c", "import time; time.sleep(60)"], launch.kit_env(), timeout=1)
    assert isinstance(err.value, LaunchError) and err.value.returncode == -1
    for bad in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="^timeout: must be a"):
            launch.run_command([sys.executable, "-c", "pass"], launch.kit_env(), timeout=bad)


@pytest.mark.slow
def test_timeout_kills_every_rank():
    start = time.monotonic()
    with pytest.raises(LaunchError, match="stopped by its deadline after 25 s"):
        launch.run(launch.LaunchSpec(script=SCRIPT, args=["--hang", "600"], world_size=2), timeout=25)
    assert time.monotonic() - start < 60
    assert not kit_processes(), "ranks survived the timeout"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_rank_dead_before_the_rendezvous_ends_the_launch_fast_naming_it(launcher):
    """Rank 1 dies before init_process_group; rank 0 would wait there for its peer (30 min by default)."""
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launch.run(launch.LaunchSpec(script=SCRIPT, args=["--fail-before-init", "1"], world_size=2, launcher=launcher))
    message = str(err.value)
    assert time.monotonic() - start < 60 and "\n" not in message, message
    assert err.value.failed_rank == 1 and message.startswith("rank 1 ") and err.value.returncode != 0, message
    assert "likely cause: more ranks than devices" in message
    assert "-15" not in message and not kit_processes()


LINGERING = """
import threading, time
import deepspeed
from labkit.ranks.runtime import rank_and_world, rank_guard
if rank_and_world()[0] == 1:
    threading.Thread(target=time.sleep, args=(600,)).start()  # a live thread: the process stays after the error
    with rank_guard():
        raise ValueError("device_id cuda:1 is out of range")
deepspeed.init_distributed()
"""


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["deepspeed", "mpirun"])
def test_a_rank_that_reports_its_error_but_lingers_still_ends_the_launch_fast(launcher, tmp_path):
    """The rank's tagged error line, not its exit, must end the launch: here the failed rank's process stays (a
    non-daemon thread) and rank 0 waits in the rendezvous, so neither launcher would stop before the deadline."""
    script = tmp_path / "lingering.py"
    script.write_text(LINGERING)
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launch.run(launch.LaunchSpec(script=script, world_size=2, launcher=launcher), timeout=150)
    message = str(err.value)
    assert time.monotonic() - start < 60 and "deadline" not in message, message
    assert message.startswith("rank 1 failed (exit code 1): ValueError: device_id cuda:1 is out of range"), message
    assert not kit_processes()


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "victim", "sig"), [("deepspeed", 0, 9), ("deepspeed", 1, 11), ("mpirun", 0, 9)])
def test_a_rank_killed_without_a_word_is_named_with_its_signal(launcher, victim, sig):
    """A rank ends by a signal (the OOM killer's SIGKILL, a segfault) after the rendezvous; its peer waits in a barrier.
    DeepSpeed's launcher line always shows the last rank's command: the rank must come from the ranks themselves."""
    start = time.monotonic()
    args = ["--kill-rank", str(victim), "--kill-signal", str(sig)]
    with pytest.raises(LaunchError) as err:
        launch.run(launch.LaunchSpec(script=SCRIPT, args=args, world_size=2, launcher=launcher), timeout=180)
    message = str(err.value)
    assert time.monotonic() - start < 60, message
    assert message == f"rank {victim} died (killed by signal {sig}); the other ranks were stopped", message
    assert err.value.failed_rank == victim and not kit_processes()


@pytest.mark.slow
def test_a_rank_out_of_device_memory_is_named_with_the_allocators_error_and_the_cause():
    """A real out-of-memory error (CUDA's caching allocator on a GPU machine, the CPU allocator here), not a drill
    string: the rank, the allocator's words and what to change, within the dead-rank grace."""
    device = "cuda" if devices.pick_device("auto") == "cuda" else "cpu"
    world = devices.device_count("cuda") if device == "cuda" else 2
    victim = world - 1
    start = time.monotonic()
    spec = launch.LaunchSpec(script=SCRIPT, args=["--oom-rank", str(victim), "--device", device], world_size=world,
                             device=device)  # fmt: skip
    with pytest.raises(LaunchError) as err:
        launch.run(spec, timeout=180)
    message = str(err.value)
    assert time.monotonic() - start < 60, message
    words = "OutOfMemoryError: CUDA out of memory" if device == "cuda" else "can't allocate memory"
    assert message.startswith(f"rank {victim} failed (exit code 1): ") and words in message, message
    assert message.endswith("likely cause: the device ran out of memory (a smaller micro-batch, a higher ZeRO stage "
                            "or offload; notebook 05 shows where the memory goes)"), message  # fmt: skip
    assert err.value.failed_rank == victim and not kit_processes()


def test_one_line_names_the_rank_the_cause_and_the_deadline():
    out = "LABKIT_RANK_ERROR rank=1 RuntimeError: bind: EADDRINUSE\n"
    assert launch.describe_failure(out, 1) == (
        "rank 1 failed (exit code 1): RuntimeError: bind: EADDRINUSE; likely cause: a port in use (another run holds "
        "the master port)"
    )
    assert launch.describe_failure("x\n", -15, deadline_s=1800).startswith("stopped by its deadline after 30 min")
    assert launch.deadline_text(90) == "stopped by its deadline after 90 s"
    # the last line a person wrote, not the kit's own records ("last output: LABKIT_PROGRESS config=0 step=9")
    out = 'ZeRO-1: warm-up done\n[1,0]<stdout>:LABKIT_PROGRESS config=0 step=9\nLABKIT_METRIC {"step": 9}\n'
    assert launch.describe_failure(out, -15, deadline_s=25).endswith("last output: ZeRO-1: warm-up done")


DS_KILLED = (  # DeepSpeed 0.19.8's report of a rank killed by SIGKILL: its line shows the LAST rank's command
    "[INFO] [launch.py:350:sigkill_handler] Killing subprocess 4242\n"
    "[ERROR] [launch.py:325:sigkill_handler] ['python', '-u', 's.py', '--local_rank=1'] exits with return code = -9\n"
)


def test_deepspeeds_exit_line_gives_how_a_rank_ended_but_not_which():
    assert launch.launcher_report("noise\n" + DS_KILLED) == (None, "killed by signal 9")
    mpi = "mpirun noticed that process rank 3 with PID 4242 on node worker-0 exited on signal 9 (Killed)."
    assert launch.launcher_report(mpi) == (3, "killed by signal 9")
    assert launch.launcher_report("all fine") is None
    # rank 0 was killed (as watched); rank 1, the survivor, lost its peer: the line's --local_rank=1 is not the rank
    out = DS_KILLED + "LABKIT_RANK_ERROR rank=1 RuntimeError: Connection closed by peer\n"
    assert launch.failure_summary(out, (0, "killed by signal 9")) == (0, "killed by signal 9")
    assert launch.describe_failure(out, 247, first_failure=(0, "killed by signal 9")) == (
        "rank 0 died (killed by signal 9); the other ranks were stopped"
    )
    # unwatched (a log read later): the silent rank is not known, and no survivor is blamed
    assert launch.describe_failure(out, 247) == "a rank died (killed by signal 9); the other ranks were stopped"
    # watched, but reaped before its status was read (mpirun reaps at once): the launcher's report says how
    mpi = "mpirun noticed that process rank 0 with PID 0 on node vm exited on signal 9 (Killed).\n"
    assert launch.failure_summary(mpi + out, (0, None)) == (0, "killed by signal 9")
    # and such a rank, silent and of unknown status, yields to one that says why it failed
    assert launch.failure_summary("LABKIT_RANK_ERROR rank=1 ValueError: bad\n", (0, None)) == (1, "ValueError: bad")


def test_failure_summary_prefers_a_rank_that_says_why_over_one_that_lost_its_peer():
    # rank 1 raised; rank 0 failed in a collective first: rank 1's own error is the cause
    out = DS_KILLED.replace("-9", "1") + "LABKIT_RANK_ERROR rank=0 RuntimeError: Connection closed by peer\n"
    both = out + "LABKIT_RANK_ERROR rank=1 ValueError: bad batch\n"
    assert launch.failure_summary(both, (0, "exit code 1")) == (1, "ValueError: bad batch")
    assert launch.failure_summary(both) == (1, "ValueError: bad batch")


def test_failure_summary_names_the_cause_not_the_rank_that_lost_its_peer():
    # recorded with torch 2.4.1 before its store fallback: rank 0 could not start the store, rank 1 lost it and exited
    # first
    out = (
        "LABKIT_RANK_ERROR rank=0 NotImplementedError: The libuv TCPStore backend does not support initialization "
        "with an listen fd.\n"
        "LABKIT_RANK_ERROR rank=1 DistNetworkError: Connection reset by peer\n"
        "[ERROR] [launch.py:259:sigkill_handler] ['python', '-u', '-m', 'labkit.ranks.zero_probe', '--local_rank=1'] "
        "exits with return code = 1\n"
    )
    rank, text = launch.failure_summary(out, (1, "exit code 1"))
    assert (rank, text.split(":")[0]) == (0, "NotImplementedError")
    # when every tagged error only says a peer is gone, the rank seen to fail first is named
    peers_only = out.replace("NotImplementedError: The libuv TCPStore", "RuntimeError: Connection closed by peer")
    assert launch.failure_summary(peers_only, (1, "exit code 1")) == (1, "DistNetworkError: Connection reset by peer")
    assert launch.failure_summary(peers_only)[0] is None  # and no rank is guessed without that


def test_a_rank_module_is_started_as_a_module():
    spec = launch.LaunchSpec("labkit.ranks.hello", ["--steps", "2"], world_size=2)
    ds = launch.build_command(spec, master_port=1234)[len(launch.deepspeed_executable()) :]
    assert "--module" in ds and ds[-3:] == ["labkit.ranks.hello", "--steps", "2"]
    mpirun = launch.build_command(dataclasses.replace(spec, launcher="mpirun"), hostfile=Path("hf"))
    assert mpirun[-6:] == [spec.python, "-u", "-m", "labkit.ranks.hello", "--steps", "2"]


def test_mpi_launchers_need_mpirun_and_mpi4py(monkeypatch):
    launch.require_mpi("launcher", "deepspeed")  # needs neither
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as err:
        launch.require_mpi("train_command", "openmpi")
    assert err.value.field == "train_command" and "mpirun" in err.value.problem


@pytest.mark.slow
def test_rank_scripts_report_metrics_and_shut_down_cleanly():
    """labkit.ranks.hello on 2 ranks: its metrics come back and no rank aborts at interpreter shutdown (a process
    group left alive makes gloo print "terminate called without an active exception")."""
    result = launch.run(launch.LaunchSpec("labkit.ranks.hello", ["--steps", "3"], world_size=2), timeout=180)
    done = [line for line in result.output.splitlines() if '"event": "done"' in line]
    assert len(done) == 2 and '"allreduce_sum": 3.0' in done[0]
    assert "terminate called" not in result.output and not kit_processes()


@pytest.mark.slow
def test_ranks_compile_nothing_so_an_abandoned_build_lock_cannot_hang_them(tmp_path):
    """A rank killed while DeepSpeed JIT-built its CPU comm op left torch's owner-less build lock, and every later
    DeepSpeed process waited for it for ever (a CI set-up hung 90 min). The op also left two /dev/shm buffers per run
    that nothing removed (23 GB of RAM on this machine after a few test runs). The kit's ranks build no op: with such a
    lock in place 2 ranks finish, the extensions folder is as it was, and /dev/shm gained no DeepSpeed buffer."""
    shm_before = set(os.listdir("/dev/shm"))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    spec = launch.LaunchSpec(
        "labkit.ranks.hello", ["--steps", "2"], world_size=2, env={"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    )
    result = launch.run(spec, timeout=120)
    assert result.returncode == 0 and '"allreduce_sum": 3.0' in result.output, result.output[-2000:]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "deepspeed_shm_comm",
        "deepspeed_shm_comm/lock",
    ]
    assert not [f for f in set(os.listdir("/dev/shm")) - shm_before if f.startswith("deepspeed")]
    assert not kit_processes()


@pytest.mark.slow
def test_rank_scripts_exit_cleanly_every_time_under_cpu_load():
    """5 runs of the 2-rank hello while a busy process competes for the cores: every run exits 0, none aborts at
    shutdown (issue 10: 2 of 13 runs under load died with SIGABRT in ProcessGroupGloo::runLoop)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        for attempt in range(5):
            result = launch.run(launch.LaunchSpec("labkit.ranks.hello", ["--steps", "2"], world_size=2), timeout=120)
            assert result.returncode == 0, f"run {attempt}: {result.output[-2000:]}"
            assert not re.search(r"terminate called|SIGABRT|Aborted|core dumped", result.output), result.output
    finally:
        procs.stop_tree(burner, grace_s=1.0)
    assert not kit_processes()  # each run's own 120 s limit bounds the time; a loaded machine may take longer


def test_rank_and_world_read_either_launchers_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert runtime.rank_and_world() == (1, 2)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runtime.rank_and_world() == (3, 4)


def test_local_size_is_set_from_torchruns_or_open_mpis_count_unless_given(monkeypatch):
    for name in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert runtime.set_local_size() is None and "LOCAL_SIZE" not in os.environ  # no launcher said: left unset
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "3")  # mpirun
    assert runtime.set_local_size() == "3" == os.environ["LOCAL_SIZE"]
    monkeypatch.delenv("LOCAL_SIZE")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun (accelerate launch) wins over Open MPI's
    assert runtime.set_local_size() == "2"
    monkeypatch.setenv("LOCAL_SIZE", "4")  # DeepSpeed's own launcher set it: kept
    assert runtime.set_local_size() == "4" == os.environ["LOCAL_SIZE"]


def test_commands_are_shown_with_the_launcher_by_name(monkeypatch):
    monkeypatch.setattr(launch, "deepspeed_executable", lambda: ["/opt/py", "-m", "deepspeed.launcher.runner"])
    assert launch.shown_command(["/opt/py", "-m", "deepspeed.launcher.runner", "--module", "x"]) == [
        "deepspeed",
        "--module",
        "x",
    ]
    assert launch.shown_command(["/usr/bin/mpirun", "-n", "2"]) == ["mpirun", "-n", "2"]


def test_the_interactive_chapter_shows_deepspeed_by_name_on_a_machine_without_its_script(monkeypatch, tmp_path):
    """The GPU machine has no `deepspeed` script beside python: 03 printed `/opt/torch/.venv/bin/python3 -m
    deepspeed.launcher.runner ...` (an internal path). The learner's line is `deepspeed ...` there too."""
    from labkit.chapters import interactive

    monkeypatch.setattr(
        launch, "deepspeed_executable", lambda python=sys.executable: [python, "-m", "deepspeed.launcher.runner"]
    )
    plan = interactive.plan_interactive_job(device="cpu", workers=2, jobs_dir=str(tmp_path))
    assert plan.train_argv[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]  # what runs
    assert plan.command_line.startswith("deepspeed --hostfile /etc/mpi/hostfile")  # what the learner reads
    assert sys.prefix not in plan.describe() + plan.equivalents("shell")
    assert interactive.shown_line(["/usr/bin/python3", "-m", "deepspeed.launcher.runner", "-h"]) == "deepspeed -h"


def test_the_store_serves_on_the_socket_it_is_handed_with_the_backend_picked_for_this_torch(monkeypatch):
    import socket
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    server = socket.create_server(("127.0.0.1", 0))
    port, fd = server.getsockname()[1], server.detach()
    libuv = runtime._libuv_takes_fd()
    store = dist.TCPStore("127.0.0.1", port, 1, True, timedelta(seconds=10), master_listen_fd=fd, use_libuv=libuv)
    store.set("k", "v")
    assert store.get("k") == b"v" and store.port == port
    # before 2.8 the libuv store raises NotImplementedError on a handed socket (seen: 2.4.1, 2.6.0): legacy store there
    for version, libuv in (("2.4.1+cu121", False), ("2.7.1", False), ("2.8.0", True), ("2.13.0+cpu", True)):
        monkeypatch.setattr(torch, "__version__", version)
        assert runtime._libuv_takes_fd() is libuv, version


def test_a_rank_error_is_one_tagged_line_of_text_even_when_its_message_starts_with_a_newline(monkeypatch, capsys):
    # transformers' ImportError ("\nmodeling_gpt2 requires PyTorch >= 2.6, ...") left "ImportError: " and nothing else
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = "\nmodeling_gpt2 requires PyTorch >= 2.6, but PyTorch was not found.\nPlease install or upgrade PyTorch."
    with pytest.raises(ImportError), runtime.rank_guard():
        raise ImportError(message)
    tagged = [line for line in capsys.readouterr().err.splitlines() if line.startswith(launch.RANK_ERROR_TAG)]
    assert tagged == [
        f"{launch.RANK_ERROR_TAG} rank=1 ImportError: modeling_gpt2 requires PyTorch >= 2.6, but PyTorch was not found."
    ]
    rank, text = launch.failure_summary("\n".join(tagged))
    assert rank == 1 and "requires PyTorch >= 2.6" in text


def test_a_sink_that_fails_stops_the_run_and_its_error_reaches_the_caller():
    """on_output raising (a progress parser meeting a record it did not expect) ended the reader: the pipe filled and
    run_command waited for its timeout. Now the run is stopped and the sink's error raised."""

    def parser(_line: str) -> None:
        raise KeyError("loss")

    started = time.monotonic()
    with pytest.raises(KeyError, match="loss"):
        launch.run_command(["seq", "10000000"], launch.kit_env(), on_output=parser, timeout=120)
    assert time.monotonic() - started < 15 and not [p for p in kit_processes() if "seq" in p[1]]


def test_a_second_ctrl_c_during_the_stop_still_stops_every_process():
    """stop_tree waits for a command that ignores SIGTERM; a second ^C in that wait left it running."""
    import signal
    import threading

    def interrupt_twice() -> None:
        for at in (1.5, 1.0):
            time.sleep(at)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_twice, daemon=True).start()
    stubborn = ["sh", "-c", "trap '' TERM; echo started; sleep 60"]
    with pytest.raises(KeyboardInterrupt):
        launch.run_command(stubborn, launch.kit_env(), timeout=120)
    time.sleep(0.5)
    assert not [p for p in kit_processes() if "sleep 60" in p[1]]


def test_a_byte_that_is_not_utf8_does_not_stop_the_reading():
    """A rank printing a Latin-1 file name killed the reader thread: the pipe filled, the ranks blocked on it and
    the run waited for its deadline (for ever without one)."""
    script = (
        "printf 'file caf\\351.txt\\n'; i=0; while [ $i -lt 3000 ]; do echo line $i of a long output; i=$((i+1)); done"
    )
    started = time.monotonic()
    result = launch.run_command(["sh", "-c", script], launch.kit_env(), timeout=60)
    assert result.returncode == 0 and "file caf\\xe9.txt" in result.output and "line 2999 of" in result.output
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_flag_a_rank_script_refuses_is_the_error_named():
    """argparse stops a rank before rank_guard can tag its error: the line said only "rank 0 died (exit code 2)"."""
    with pytest.raises(LaunchError) as err:
        launch.run(
            launch.LaunchSpec(module="labkit.ranks.hello", world_size=2, args=["--zero-stage", "5"]), timeout=120
        )
    assert "failed (exit code 2): hello.py: error: --zero-stage: 5 is not one of 0, 1, 2, 3" in str(err.value)


def test_a_launchers_output_never_holds_a_credential_of_its_environment(tmp_path):
    """run_command's output (shown, logged, returned in errors) with every credential variable's value redacted."""
    env = launch.kit_env({"MLFLOW_TRACKING_TOKEN": "CANARYTOKEN1", "WANDB_API_KEY": "CANARYWANDB"}, world_size=1)
    log = tmp_path / "run.log"
    shown: list[str] = []
    cmd = ["sh", "-c", "echo $MLFLOW_TRACKING_TOKEN $WANDB_API_KEY; exit 3"]
    with pytest.raises(LaunchError) as err:
        launch.run_command(cmd, env, on_output=shown.append, log_path=log, timeout=30)
    for text in ("".join(shown), log.read_text(), err.value.output, str(err.value)):
        assert "CANARY" not in text and ("<redacted> <redacted>" in text or text == str(err.value)), text


@pytest.mark.parametrize("watch_ranks", [True, False])
def test_the_one_output_reader_redacts_times_a_dead_rank_and_stops_at_a_failing_sink(watch_ranks):
    """run_command and a local exec each had their own copy of this loop: one reader now, for both. Every line
    reaches the sink with credential values redacted; a rank's error line is timed (for the dead-rank grace) only for a
    command that starts ranks; a sink that raises stops the command (nobody would read its pipe) and its error is
    re-raised by the caller."""
    env = launch.kit_env({"MLFLOW_TRACKING_PASSWORD": "CANARYPASS1"})
    script = f"echo shown $MLFLOW_TRACKING_PASSWORD; echo '{launch.RANK_ERROR_TAG} rank=1 boom'; exec sleep 60"
    proc = launch.start_session(["sh", "-c", script], env)
    seen: list[str] = []

    def parser(line: str) -> None:
        seen.append(line)
        if "boom" in line:
            raise KeyError("loss")

    reader = launch.OutputReader(proc, env, parser, watch_ranks=watch_ranks).start()
    reader.thread.join(timeout=60)
    assert proc.poll() is not None and not [p for p in kit_processes() if "sleep 60" in p[1]]
    assert seen == ["shown <redacted>\n", f"{launch.RANK_ERROR_TAG} rank=1 boom\n"]
    assert bool(reader.first_death) is watch_ranks
    with pytest.raises(KeyError, match="loss"):
        reader.raise_sink_error()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_shown_line_is_the_one_that_runs_less_the_port_picked_at_launch(monkeypatch, tmp_path, launcher):
    # Notebooks showed `--master_port 29500` while the run used a free port: the shown line was not what ran.
    hostfile = launch.write_hostfile(tmp_path / "hf", {"localhost": 2})
    spec = launch.LaunchSpec("labkit.ranks.hello", ["--steps", "2"], 2, launcher, hostfile=hostfile)
    ran, port = launched_line(monkeypatch, spec)
    shown = launch.shown_command(launch.build_command(spec))
    assert port in " ".join(ran) and port not in " ".join(shown) and "29500" not in " ".join(shown)
    assert shown == without_port(ran, port)


def test_a_launcher_in_its_python_m_form_is_known_to_start_ranks():
    """`python -m accelerate.commands.accelerate_cli launch ...` (what a machine without the `accelerate` script
    types) got neither the job's slots check nor the dead-rank watch that `accelerate launch` gets."""
    python = sys.executable
    assert launch.starts_ranks([python, "-m", "accelerate.commands.accelerate_cli", "launch", "train.py"])
    assert launch.starts_ranks([python, "-m", "deepspeed.launcher.runner", "train.py"])
    assert launch.starts_ranks(["/opt/venv/bin/accelerate", "launch", "train.py"])
    assert not launch.starts_ranks([python, "train.py"]) and not launch.starts_ranks(["hostname"])

"""labkit.procs: stopping a process tree, naming the rank that died first."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from labkit import launch, procs


def test_stop_tree_stops_a_child_in_its_own_process_group():
    # The shape mpirun has: the started process puts a child in a new session (its own process group).
    code = "import subprocess, time; subprocess.Popen(['sleep', '300'], start_new_session=True); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 10
    while not procs.descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = procs.descendants(proc.pid)
    assert children, "the child never started"
    procs.stop_tree(proc, grace_s=1.0)
    assert proc.poll() is not None
    assert not any(procs.alive(pid) for pid in children)


# A launcher shaped like DeepSpeed's (deepspeed/launcher/launch.py, main): it starts ranks with RANK set, polls them
# once a second and, at the first failed one, SIGTERMs the rest. Each rank has a worker child with its RANK (as a
# DataLoader worker inherits it). It prints the ranks' pids, then the workers'.
FAKE_LAUNCHER = r"""
import os, subprocess, sys, time
worker = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
worker += "time.sleep(60)"
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)  # a launcher's own start-up
ranks = [subprocess.Popen([sys.executable, "-c", worker], env={**os.environ, "RANK": str(r)}) for r in range(3)]
print(*(p.pid for p in ranks), flush=True)
while all(p.poll() in (None, 0) for p in ranks):
    time.sleep(1)
for p in ranks:
    p.terminate()
for p in ranks:
    p.wait()
"""


def _children(pid: int, want: int) -> list[int]:
    deadline = time.monotonic() + 20
    while len(found := procs.descendants(pid)) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_rank_exits_find_the_ranks_and_name_the_one_that_died_first_and_how():
    proc = subprocess.Popen([sys.executable, "-c", FAKE_LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        ranks = list(map(int, proc.stdout.readline().split()))
        workers = [p for p in _children(proc.pid, 6) if p not in ranks]
        assert len(workers) == 3, "the workers never started"
        assert procs.rank_processes(proc.pid) == {pid: r for r, pid in enumerate(ranks)}  # the ranks, no worker
        fds = len(os.listdir("/proc/self/fd"))
        with procs.RankExits(proc.pid) as exits:
            time.sleep(3.0)  # found by its first scan, and scanned again while its gap grows: one pidfd per rank
            assert len(os.listdir("/proc/self/fd")) == fds + 2 + 3  # its wake-up pipe, the ranks' pidfds
            os.kill(workers[0], signal.SIGKILL)  # a worker is not a rank
            time.sleep(0.3)
            os.kill(ranks[1], signal.SIGSEGV)
            proc.wait(timeout=30)  # the launcher's poll finds it and SIGTERMs ranks 0 and 2: stopped, not failed
        assert exits.first_failure == (1, "killed by signal 11")
        assert len(os.listdir("/proc/self/fd")) == fds  # every one closed
    finally:
        procs.stop_tree(proc, grace_s=1.0)


def test_rank_exits_do_not_count_the_signal_launchers_stop_ranks_with():
    proc = subprocess.Popen([sys.executable, "-c", FAKE_LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        ranks = list(map(int, proc.stdout.readline().split()))
        with procs.RankExits(proc.pid) as exits:
            time.sleep(0.5)
            os.kill(ranks[2], signal.SIGTERM)
            proc.wait(timeout=30)
        assert exits.first_failure is None
    finally:
        procs.stop_tree(proc, grace_s=1.0)
    assert procs.how_it_ended(1 << 8) == "exit code 1" and procs.how_it_ended(9) == "killed by signal 9"


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfds", "polled"])
def test_rank_exits_catch_a_rank_that_dies_soon_after_a_slow_launcher_starts_it(monkeypatch, pidfds):
    # accelerate launch and deepspeed take seconds to start their ranks; a rank can die a fraction of a second later
    if not pidfds:  # as before Linux 5.3: each rank's liveness is polled
        monkeypatch.delattr(os, "pidfd_open")
    proc = subprocess.Popen([sys.executable, "-c", FAKE_LAUNCHER, "3.3"], stdout=subprocess.PIPE, text=True)
    try:
        with procs.RankExits(proc.pid) as exits:
            ranks = list(map(int, proc.stdout.readline().split()))
            time.sleep(0.3)
            os.kill(ranks[1], signal.SIGKILL)
            proc.wait(timeout=30)
        assert exits.first_failure == (1, "killed by signal 9")
    finally:
        procs.stop_tree(proc, grace_s=1.0)


# A launcher's child between fork and exec still shows the launcher's environment (no RANK); it becomes a rank at exec.
FORKING_LAUNCHER = r"""
import os, sys, time
pid = os.fork()
if pid == 0:
    time.sleep(1.0)  # scans meet it here, with its parent's environment
    os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"], {**os.environ, "RANK": "1"})
print(pid, flush=True)
while os.waitpid(pid, os.WNOHANG) == (0, 0):  # polled, as DeepSpeed's launcher does: its zombie shows how it ended
    time.sleep(1)
"""


def test_rank_exits_find_a_rank_first_seen_before_its_exec():
    proc = subprocess.Popen([sys.executable, "-c", FORKING_LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        with procs.RankExits(proc.pid) as exits:
            child = int(proc.stdout.readline())
            deadline = time.monotonic() + 20
            while procs.rank_processes(proc.pid) != {child: 1} and time.monotonic() < deadline:
                time.sleep(0.05)  # until it has exec'd with its RANK
            time.sleep(0.5)  # a scan or two after the exec
            os.kill(child, signal.SIGKILL)
            proc.wait(timeout=30)
        assert exits.first_failure == (1, "killed by signal 9")
    finally:
        procs.stop_tree(proc, grace_s=1.0)


@pytest.mark.parametrize("paused", [True, False])
def test_the_step_watchdog_leaves_work_that_is_no_step_alone(paused):
    """An evaluation or a checkpoint save longer than step_timeout killed a healthy rank ("a peer rank probably
    died"): they run paused, bounded by the collective timeout instead."""
    code = (
        "import time\nfrom labkit.procs import StepWatchdog\n"
        "with StepWatchdog(1.0, 3, tag='LABKIT_RANK_ERROR') as w:\n"
        f"    with (w.paused() if {paused} else __import__('contextlib').nullcontext()):\n"
        "        time.sleep(2.6)\n"
        "print('finished', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if paused:
        assert done.returncode == 0 and "finished" in done.stdout, done.stderr
    else:
        assert done.returncode == 3 and "no step finished" in done.stderr
        # the run's one line: what rank 3 saw, not "rank 3 died (exit code 3)" as if it were the cause
        line = launch.describe_failure(done.stderr, 3, first_failure=(3, "exit code 3"))
        assert re.fullmatch(
            r"rank 3 failed \(exit code 3\): StepTimeout: no step finished for \d+ s \(step_timeout 1 s\): "
            r"a peer rank stalled or died",
            line,
        ), line


def test_sigterm_and_sighup_raise_terminated_inside_the_block_only():
    """So `labkit` unwinds on SIGTERM as on Ctrl-C; outside the block the handlers are what they were."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in before:
        with pytest.raises(procs.Terminated) as caught, procs.terminations_raised():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the signal arrives first
        assert caught.value.signum == sig and str(caught.value) == sig.name
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_signal_that_arrives_while_a_command_is_stopped_is_delivered_after_the_stop():
    """CI's `timeout` sent SIGTERM while the kit stopped a run's ranks: interrupts_deferred ignored it, and the command
    went on (to its next run) until SIGKILL, which leaves ranks running. The stop still finishes uninterrupted, and
    the signal then ends the command; the handlers are what they were."""
    before = {sig: signal.getsignal(sig) for sig in procs.STOP_SIGNALS}
    for sig, raised in (
        (signal.SIGTERM, procs.Terminated),
        (signal.SIGHUP, procs.Terminated),
        (signal.SIGINT, KeyboardInterrupt),
    ):
        stopped = []
        with pytest.raises(raised), procs.terminations_raised():
            with procs.interrupts_deferred():
                os.kill(os.getpid(), sig)
                os.kill(os.getpid(), sig)  # a second one: still delivered once
                time.sleep(0.2)  # the signals arrive here, and nothing is raised inside
                stopped.append(True)
            time.sleep(5)  # not reached: the signal is raised as the block ends
        assert stopped, f"{sig.name} cut the stop short"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_process_token_names_one_process_until_it_exits_and_nothing_else():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        token = procs.process_token(child.pid)
        assert not procs.token_gone(token) and not procs.token_gone(procs.process_token())
        host, pid, ticks = token.split(":")
        assert procs.token_gone(f"{host}:{pid}:{int(ticks) + 1}")  # that pid, started at another time: another one
    finally:
        child.kill()
        child.wait()
    assert procs.token_gone(token)
    assert procs.token_gone(procs.process_token(child.pid)) and procs.process_token(child.pid).endswith(":gone")
    # No process of this machine, or no token at all: nothing to watch, so nothing is stopped on its account.
    assert not any(procs.token_gone(t) for t in (f"another-host:{pid}:{ticks}", "", "garbage", f"{host}:x:{ticks}"))


def test_a_temp_folder_whose_maker_was_killed_outright_goes_with_the_next_run(tmp_path, monkeypatch):
    """SIGKILL runs no `finally`: own_tmpdir's folder outlives its maker, until the next own_tmpdir removes it. A folder
    whose maker still runs, or that names no maker, stays."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    code = "import time; from labkit import procs\nwith procs.own_tmpdir({}) as env:\n print(env['TMPDIR'], flush=True)"
    code += "; time.sleep(60)"
    makers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        killed, running = (Path(m.stdout.readline().strip()) for m in makers)
        (killed / "left.log").write_text("what a rank wrote")
        makers[0].kill()
        makers[0].wait()
        nameless = tmp_path / f"{procs.TMP_PREFIX}by-hand"
        nameless.mkdir()
        assert killed.is_dir() and running.is_dir()
        with procs.own_tmpdir({}) as env:
            assert Path(env["TMPDIR"]).parent == tmp_path
            assert not killed.exists() and running.is_dir() and nameless.is_dir()
        assert not Path(env["TMPDIR"]).exists()
    finally:
        for maker in makers:
            maker.kill()
            maker.wait()

"""labkit.procs: the one stale build-lock policy and stopping a process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from labkit import procs


def _lock(root, op, age_s):
    lock = root / "py311_cpu" / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(procs, "_compiler_running", lambda: False)
    stale = _lock(tmp_path, "deepspeed_shm_comm", 3600)  # a rank killed an hour ago while loading the op
    fresh = _lock(tmp_path, "cpu_adam", 10)  # a build may be holding this one right now
    said = []
    assert procs.clear_stale_build_locks(say=said.append) == [stale]
    assert not stale.exists() and fresh.exists()
    assert said and "deepspeed_shm_comm" in said[0]


def test_no_lock_is_removed_while_a_compiler_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(procs, "_compiler_running", lambda: True)  # a long build legitimately holds its lock
    stale = _lock(tmp_path, "deepspeed_shm_comm", 3600)
    assert procs.clear_stale_build_locks() == [] and stale.exists()


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

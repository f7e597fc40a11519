"""labkit.procs: stopping a process tree."""

from __future__ import annotations

import subprocess
import sys
import time

from labkit import procs


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

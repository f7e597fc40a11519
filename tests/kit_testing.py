"""Helpers shared by the tests: the leak scan for kit processes and notebooks executed once per session.

A module of its own (not conftest) so that test files can import it whatever other conftest.py files exist."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from labkit import notebooks

MARKER = b"LABKIT_PROCESS=1"
# Children inherit this, so the leak check sees only what this test session started (not a neighbour's runs).
SESSION = os.environ.setdefault("LABKIT_TEST_SESSION", uuid.uuid4().hex)
SESSION_MARKER = f"LABKIT_TEST_SESSION={SESSION}".encode()


def kit_processes() -> list[tuple[int, str]]:
    """Processes (other than this one) that carry the kit's marker: what a run must not leave behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if MARKER not in environ or SESSION_MARKER not in environ:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            status = (entry / "status").read_text()
        except (OSError, PermissionError):
            continue
        if "\nState:\tZ" in status:  # a zombie holds no resources; its parent reaps it
            continue
        found.append((int(entry.name), cmdline))
    return found


def wait_for_no_kit_processes(timeout: float = 15.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    left = kit_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = kit_processes()
    return left


_executed: dict[str, notebooks.NotebookRun] = {}


def execute_once(stem: str, run_dir: Path) -> notebooks.NotebookRun:
    """Run notebooks/<stem>.ipynb with its test parameters, once per session, through the `labkit run` code path."""
    if stem not in _executed:
        (path,) = notebooks.resolve([stem])
        params = notebooks.plan([path], {}, use_test_parameters=True)[path]
        _executed[stem] = notebooks.run_notebook(path, run_dir, params, timeout=600)
    return _executed[stem]

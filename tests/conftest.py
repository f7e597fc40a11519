"""Shared fixtures: notebooks executed once per session through the `labkit run` path, and a leak check."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    """After the whole suite, nothing started by the kit may still run."""
    before = {pid for pid, _ in kit_processes()}
    yield
    left = [(pid, cmd) for pid, cmd in wait_for_no_kit_processes() if pid not in before]
    assert not left, "kit processes left running after the test suite:\n" + "\n".join(f"{p}: {c}" for p, c in left)


@pytest.fixture(scope="session")
def notebook_run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-runs")


_executed: dict[str, notebooks.NotebookRun] = {}


def execute_once(stem: str, run_dir: Path) -> notebooks.NotebookRun:
    """Run notebooks/<stem>.ipynb with its test parameters, once per session, through the `labkit run` code path."""
    if stem not in _executed:
        (path,) = notebooks.resolve([stem])
        params = notebooks.plan([path], {}, use_test_parameters=True)[path]
        _executed[stem] = notebooks.run_notebook(path, run_dir, params, timeout=600)
    return _executed[stem]


@pytest.fixture(scope="session")
def executed_notebook(notebook_run_dir):
    """executed_notebook(stem) -> Path of the executed notebook (fails the test if the notebook failed)."""

    def get(stem: str) -> Path:
        run = execute_once(stem, notebook_run_dir)
        assert run.passed, f"{run.source}: {run.error}"
        return Path(run.output)

    return get

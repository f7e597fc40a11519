"""Shared fixtures: notebooks executed once per session through the `labkit run` path, and leak checks."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from kit_testing import execute_once, kit_processes, wait_for_no_kit_processes


def _kept(name: str) -> bool:
    # torch's compile cache (torchinductor_<user>) is meant to outlive a run: procs.own_tmpdir keeps it where torch does
    return name.startswith("torchinductor_")


def describe_leftover(path: Path) -> str:
    """What a leftover is, so a leak names its maker: a folder's first entries (a compile probe's test.c, a kernel's
    connection file), a file's size."""
    try:
        if path.is_dir():
            entries = sorted(p.name for p in path.iterdir())
            shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
            return f"{path.name}/ (holds: {shown or 'nothing'})"
        return f"{path.name} ({path.stat().st_size} bytes)"
    except OSError as exc:  # gone meanwhile, or not readable
        return f"{path.name} ({exc.strerror})"


@pytest.fixture(scope="session", autouse=True)
def no_leaked_temp_files(tmp_path_factory):
    """After the whole suite (and its processes: checked after no_leaked_processes), nothing the kit or a test put in
    the temp folder is left. The session's temp folder is one of its own (TMPDIR, which every process it starts
    inherits), so another run on the machine is never taken for a leak; pytest's tmp_path folders keep their place.
    Each leftover is reported with the test after which it was first seen (temp_files_seen_after) and what it holds."""
    tmp_path_factory.getbasetemp()  # before TMPDIR changes: pytest's own folders and their retention stay as they are
    own = Path(tempfile.mkdtemp(prefix="lk-"))  # short: Open MPI puts its session folders and sockets under TMPDIR
    first_seen: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(own))
        mp.setattr(tempfile, "tempdir", str(own))
        yield own, first_seen
    left = [own / name for name in sorted(os.listdir(own)) if not _kept(name)]
    report = [f"{describe_leftover(p)}, first seen after {first_seen.get(p.name, 'the last test')}" for p in left]
    shutil.rmtree(own, ignore_errors=True)
    assert not report, "left in the temp folder ($TMPDIR) after the test suite:\n" + "\n".join(report)


@pytest.fixture(autouse=True)
def temp_files_seen_after(request, no_leaked_temp_files):
    """Notes the test after which each new entry of the session's temp folder appeared: a leak found at the end of a
    36-minute suite otherwise names no test (the folder is shared by all of them)."""
    yield
    own, first_seen = no_leaked_temp_files
    for name in os.listdir(own):
        first_seen.setdefault(name, request.node.nodeid)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    """After the whole suite, nothing started by the kit may still run."""
    before = {pid for pid, _ in kit_processes()}
    yield
    left = [(pid, cmd) for pid, cmd in wait_for_no_kit_processes() if pid not in before]
    assert not left, "kit processes left running after the test suite:\n" + "\n".join(f"{p}: {c}" for p, c in left)


@pytest.fixture(scope="session", autouse=True)
def own_local_jobs_dir(tmp_path_factory):
    """Local jobs of this session (notebooks, CLI subprocesses: they inherit it) in a folder of its own, not the
    user's ~/.local/state/labkit/jobs, where another run on the machine may hold the same job name (notebook 03's
    nb03-test) or a learner keeps their own jobs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_JOBS_DIR", str(tmp_path_factory.mktemp("local-jobs")))
        yield


@pytest.fixture(scope="session", autouse=True)
def no_lab_namespace():
    """Jobs' default namespace (workloads, as the tests expect) whoever runs the suite: in a learner's lab pod
    LABKIT_NAMESPACE names her namespace, and the default follows it (tests that need it set it themselves)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LABKIT_NAMESPACE", raising=False)
        yield


@pytest.fixture(scope="session", autouse=True)
def interrupts_raise():
    """^C raises KeyboardInterrupt in this session even when it was started with SIGINT ignored (a shell starts a
    background job so: `make test &`, a CI step run through `( ... & )`), where the interrupt tests' SIGINT did
    nothing and their exec ran to its end."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def notebook_run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.fixture(scope="session")
def executed_notebook(notebook_run_dir):
    """executed_notebook(stem) -> Path of the executed notebook (fails the test if the notebook failed)."""

    def get(stem: str) -> Path:
        run = execute_once(stem, notebook_run_dir)
        assert run.passed, f"{run.source}: {run.error}"
        return Path(run.output)

    return get

"""Helpers shared by the tests: polling, the leak scan for kit processes, a fake cluster, notebooks executed once.

A module of its own (not conftest) so that test files can import it whatever other conftest.py files exist."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from fake_apiserver import FakeApiServer

try:
    import tomllib  # novermin: 3.10 takes tomli below
except ModuleNotFoundError:  # Python 3.10 (the Gaudi image's): tomli is the same parser (pyproject's dev extra)
    import tomli as tomllib

from labkit import notebooks
from labkit.jobs import KubernetesBackend

ROOT = Path(__file__).resolve().parent.parent
MARKER = b"LABKIT_PROCESS=1"
# Children inherit this, so the leak check sees only what this test session started (not a neighbour's runs).
SESSION = os.environ.setdefault("LABKIT_TEST_SESSION", uuid.uuid4().hex)
SESSION_MARKER = f"LABKIT_TEST_SESSION={SESSION}".encode()


def kubectl_kustomize(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`'s objects: the reference labkit's kustomize subset must equal. Without kubectl the
    parity cannot be checked, and a test that needs it fails saying so (a skip would hide an unchecked renderer)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to compare labkit's kustomize subset with kubectl's (install kubectl >= 1.27)")
    argv = [kubectl, "kustomize", str(directory)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


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


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll predicate until it holds or timeout passes; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for_no_kit_processes(timeout: float = 15.0) -> list[tuple[int, str]]:
    wait_until(lambda: not kit_processes(), timeout, interval=0.25)
    return kit_processes()


def raw(api, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    """One request to the fake API server outside the kit, with the ServiceAccount's token unless another is given:
    what a Role allows, not what labkit does."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(api.url + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token or api.token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@contextlib.contextmanager
def fake_cluster(**options):
    """(the fake API server started with options, a KubernetesBackend on it); the server stops on exit."""
    with FakeApiServer(**options) as api:
        yield api, KubernetesBackend(kubeconfig=api.kubeconfig)


_executed: dict[str, notebooks.NotebookRun] = {}


def execute_once(stem: str, run_dir: Path) -> notebooks.NotebookRun:
    """Run notebooks/<stem>.ipynb with its test parameters, once per session, through the `labkit run` code path."""
    if stem not in _executed:
        (path,) = notebooks.select([stem])
        params = notebooks.parameters_per_notebook([path], {}, use_test_parameters=True)[path]
        # A cell's limit under pytest's 600 s per test: a hung cell then fails naming itself (runner's failed_cell)
        # instead of pytest stopping the whole run with no trace of which cell (05 did so in two full CI runs).
        _executed[stem] = notebooks.run_notebook(path, run_dir, params, timeout=420)
    return _executed[stem]


def launched_line(monkeypatch, spec) -> tuple[list[str], str]:
    """(the argv `launch.run(spec)` starts, shown as a user types it; the MASTER_PORT its ranks get), nothing run."""
    from labkit import launch

    ran = []

    def record(cmd, env, **_):
        ran.append((cmd, env))
        return launch.LaunchResult(0, "", cmd)

    monkeypatch.setattr(launch, "run_command", record)
    launch.run(spec)
    ((cmd, env),) = ran
    return launch.shown_command(cmd), env["MASTER_PORT"]


def without_port(argv: list[str], port: str) -> list[str]:
    """argv less the options that hand the launcher `port` (--master_port P, mpirun's -x MASTER_PORT=P)."""
    out = list(argv)
    for flag, value in (("--master_port", port), ("-x", f"MASTER_PORT={port}")):
        at = next((i for i in range(len(out) - 1) if out[i : i + 2] == [flag, value]), None)
        if at is not None:
            del out[at : at + 2]
    return out

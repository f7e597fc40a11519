"""`make lab`: JupyterLab starts from the kit's environment, serves the notebooks and offers the kit's kernel."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from kit_testing import ROOT

from labkit import kernels, launch, procs


def get(url: str, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(url, data=data, timeout=30) as resp:
        return json.loads(resp.read())


async def printed(base: str, token: str, kernel: str, code: str) -> str:
    """What `code` prints in the server's kernel `kernel`, asked as JupyterLab asks: over the kernel's websocket."""
    from tornado.websocket import websocket_connect

    channels = f"/api/kernels/{kernel}/channels?token={token}&session_id={uuid.uuid4().hex}"
    ws = await websocket_connect(f"ws{base.removeprefix('http')}{channels}")
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
              "version": "5.3", "date": ""}  # fmt: skip
    content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False}
    request = {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}
    await ws.write_message(json.dumps({**request, "buffers": []}))
    try:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.read_message(), 120))
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                return msg["content"]["text"]
    finally:
        ws.close()


@pytest.mark.slow
def test_jupyterlab_serves_notebooks_with_the_kit_kernel(tmp_path):
    port, token = launch.free_port(), secrets.token_hex(16)
    cmd = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}",
    ]
    env = launch.kit_env(
        {"JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get(f"{base}/api/status?token={token}")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "JupyterLab did not start within 120 s"
                time.sleep(1)
        specs = get(f"{base}/api/kernelspecs?token={token}")["kernelspecs"]
        assert "labkit" in specs, f"the kit's kernel is not registered: {sorted(specs)}"
        contents = get(f"{base}/api/contents?token={token}")["content"]
        names = {c["name"] for c in contents}
        assert {p.name for p in (ROOT / "notebooks").glob("*.ipynb")} <= names
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10) as resp:
            assert resp.status == 200 and b"JupyterLab" in resp.read()
        # the workshop settings make install put in place: no news or update pop-ups (issue 14)
        notification = get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}")
        # overrides.json changes the schema defaults (user settings stay empty)
        defaults = {
            k: v.get("default") for k, v in notification["schema"]["properties"].items()
        }  # overrides apply here
        assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False
    finally:
        procs.stop_tree(proc)


@pytest.mark.slow
def test_make_lab_prints_its_url_with_the_token_once_and_serves_it(tmp_path):
    """Issue 14: `make lab` (scripts/lab.sh) prints one access URL; Jupyter's banner, which repeats the token, is
    below its log level."""
    port = launch.free_port()
    env = launch.kit_env({"LAB_PORT": str(port), "VENV": str(Path(sys.executable).parent.parent),
                          "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")})  # fmt: skip
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "lab.sh")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith(f"JupyterLab: http://127.0.0.1:{port}/lab?token="), first
        token = first.rsplit("=", 1)[1]
        deadline = time.monotonic() + 120
        while True:
            try:
                get(f"http://127.0.0.1:{port}/api/status?token={token}")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(1)
        # the kit's kernel runs code for the page; ipykernel warned on every start that it was "running over TCP
        # without encryption" (labkit run had asked for CurveZMQ keys since; make lab had not)
        kernel = get(f"http://127.0.0.1:{port}/api/kernels?token={token}", data=b'{"name": "labkit"}')["id"]
        assert asyncio.run(printed(f"http://127.0.0.1:{port}", token, kernel, "print(6 * 7)")) == "42\n"
    finally:
        procs.stop_tree(proc)
    rest = proc.stdout.read()
    assert token not in rest, rest[-2000:]  # printed once
    assert "without encryption" not in rest, rest[-2000:]
    # tornado's ping notice on every websocket connect (jupyter_server#1612): nothing a learner can act on
    assert "websocket_ping_timeout" not in rest, rest[-2000:]


def test_the_lab_log_filter_drops_only_tornados_ping_notice():
    def record(message: str, *args) -> logging.LogRecord:
        return logging.LogRecord("tornado.general", logging.WARNING, "websocket.py", 1, message, args, None)

    notice = record("The websocket_ping_timeout (%s) cannot be longer than the websocket_ping_interval (%s).", 9, 3)
    keep = kernels.PingNoticeFilter()
    assert not keep.filter(notice)
    assert keep.filter(record("WebSocket ping timeout after %i ms.", 90001))  # jupyter_server's own: a real problem
    config = json.loads((ROOT / "scripts" / "jupyter-config" / "jupyter_server_config.json").read_text())
    logging_config = config["ServerApp"]["logging_config"]
    assert logging_config["filters"]["ping_notice"]["()"] == "labkit.kernels.PingNoticeFilter"


def test_where_pyzmq_has_no_curve_the_kernels_start_unencrypted_rather_than_refused(monkeypatch):
    import zmq
    from jupyter_client import KernelManager
    from traitlets import TraitError

    monkeypatch.setattr(zmq, "has", lambda feature: feature != "curve")
    assert kernels.jupyter_options() == ["--KernelManager.transport_encryption=disabled"]
    KernelManager(transport_encryption="disabled")
    with pytest.raises(TraitError, match="requires CurveZMQ"):  # what "auto" would have met at every kernel start
        KernelManager(transport_encryption="auto")

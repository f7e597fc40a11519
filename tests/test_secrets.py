"""No credential of a kubeconfig reaches anything the kit shows or writes (issue 12): every command that reads a
kubeconfig, and notebook 00 with its report, run on kubeconfigs full of canary secrets, and no canary comes out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import kube

CANARY = "CANARY"  # every secret below contains it; no output may
VALUES = """apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://admin:CANARYPASSURL@127.0.0.1:1/api?access_token=CANARYQUERY
contexts:
- name: lab
  context: {cluster: lab, user: student}
current-context: lab
users:
- name: student
  user:
    token: CANARYTOKEN
    password: CANARYPASSWORD
    client-key-data: CANARYKEYDATA
"""
# the YAML error sits on the token's line: parsers quote that line in their message
MALFORMED = (
    "apiVersion: v1\nkind: Config\ncurrent-context: lab\nusers:\n- name: s\n  user:\n    token: CANARYTOKEN: x [\n"
)
EXEC = """apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://127.0.0.1:1"}
contexts:
- name: lab
  context: {cluster: lab, user: student}
current-context: lab
users:
- name: student
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: python3
      args: ["-c", "import sys; sys.stderr.write('CANARYEXECSTDERR'); sys.exit(1)"]
      env: [{name: SECRET, value: CANARYENV}]
      interactiveMode: Never
"""
# loadable (no bad key data): requests are made, and fail, so urllib3 quotes the URL with its query in its error. The
# same server and context as VALUES; only its user differs (VALUES' client-key-data fails on base64 before any request)
QUERY = VALUES[: VALUES.index("users:\n")] + "users:\n- name: student\n  user: {token: CANARYTOKENQ}\n"
KUBECONFIGS = {"values": VALUES, "malformed": MALFORMED, "exec": EXEC, "query": QUERY}


def labkit(*args: str, kubeconfig: Path, cwd: Path) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(cwd)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    code = "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"  # what the `labkit` script runs
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("name", KUBECONFIGS)
def test_no_command_shows_a_kubeconfig_secret(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(KUBECONFIGS[name])
    outputs = {
        "check --json": labkit("check", "--json", "--kubeconfig", str(path), kubeconfig=path, cwd=tmp_path),
        "discover --cluster": labkit("discover", "--cluster", "--timeout", "3", kubeconfig=path, cwd=tmp_path),
        "job list": labkit("job", "list", "--backend", "kubernetes", kubeconfig=path, cwd=tmp_path),
    }
    if name == "query":  # every path that reaches the network and fails there
        kube_args = ("--backend", "kubernetes")
        outputs["job status"] = labkit("job", "status", "j9", *kube_args, kubeconfig=path, cwd=tmp_path)
        outputs["job submit"] = labkit("job", "submit", "--name", "j9", *kube_args, kubeconfig=path, cwd=tmp_path)
        render = ("manifests", "render", "--kind", "trainjob", "--trainjob-deadline", "auto", "--kubeconfig", str(path))
        outputs["render auto"] = labkit(*render, kubeconfig=path, cwd=tmp_path)
        failed = [out for cmd, out in outputs.items() if cmd not in ("check --json", "discover --cluster")]
        # one wording on every path (urllib3 says MaxRetryError or NewConnectionError as its retries are set)
        assert all("cannot reach the API server (Connection refused)" in out for out in failed), failed
    leaks = {cmd: out for cmd, out in outputs.items() if CANARY in out}
    assert not leaks, leaks
    assert all("Traceback" not in out for out in outputs.values()), outputs
    # the errors still say what is wrong
    if name == "malformed":
        assert "line 7, column" in outputs["job list"]
    if name == "exec":
        assert "exec plugin 'python3' failed (process returned 1" in outputs["job list"]
        assert "credentials from the exec plugin 'python3'" in outputs["check --json"]


@pytest.mark.slow
def test_notebook_00_and_its_report_show_no_kubeconfig_secret(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(VALUES)
    out = tmp_path / "run"
    shown = labkit("run", "00", "-p", "kubeconfig", str(path), "--out", str(out), kubeconfig=path, cwd=tmp_path)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in written) and any(p.suffix == ".html" for p in written), shown
    leaks = [str(p) for p in written if CANARY.encode() in p.read_bytes()] + (
        [" (terminal)"] if CANARY in shown else []
    )
    assert not leaks


def test_server_urls_are_shown_without_credentials_or_query():
    shown = kube.shown_server("https://u:CANARYP@api.lab:6443/k8s?access_token=CANARYQ#CANARYF")
    assert shown == "https://api.lab:6443/k8s"


def test_the_secrets_of_a_kubeconfig_are_every_user_value_but_not_the_plugin_name(tmp_path):
    (tmp_path / "a.yaml").write_text(VALUES)
    (tmp_path / "b.yaml").write_text(EXEC)
    secrets = kube.kubeconfig_secrets([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    assert {"CANARYTOKEN", "CANARYPASSWORD", "CANARYKEYDATA", "CANARYPASSURL", "access_token=CANARYQUERY"} <= secrets
    assert "CANARYENV" in secrets and any("CANARYEXECSTDERR" in s for s in secrets)
    assert "python3" not in secrets  # announced by name: the command is not a secret
    assert kube.scrub("token CANARYTOKEN in a message", secrets) == "token <redacted> in a message"

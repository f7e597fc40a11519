"""Set-up contracts: one source of truth for requirements, CI calls the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject():
    project = pyproject()["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["mpi"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip_section if not r.startswith("-e")}
    assert listed == expected, f"only in environment.yml: {listed - expected}; only in pyproject: {expected - listed}"
    assert "python=3.11" in env["dependencies"] and "-e ." in pip_section


def test_required_packages_are_declared():
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in pyproject()["project"]["dependencies"]}
    for pkg in [
        "jupyterlab",
        "ipywidgets",
        "papermill",
        "nbclient",
        "kubernetes",
        "deepspeed",
        "torch",
        "accelerate",
        "matplotlib",
        "nvidia-ml-py",
        "jupytext",
    ]:
        assert pkg in names, pkg


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make run" in readme
    assert "exit 1" in ci, "pytest's 'no tests collected' (5) must fail CI"


def test_cpu_setup_pins_the_local_cpu_torch():
    # An unpinned torch pulls a multi-GB CUDA build on a CPU machine.
    assert "TORCH_SPEC:-torch==2.13.0" in (ROOT / "scripts" / "bootstrap.sh").read_text()


def test_console_script_points_at_cli():
    assert pyproject()["project"]["scripts"]["labkit"] == "labkit.cli:main"

"""The chapters in a real browser (issue 14): JupyterLab + Chromium through labkit.e2e. A small notebook shows each
check can fail; the CPU-cheap subset of the real chapters runs here (`make e2e` runs all of them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kit_testing import kit_processes

from labkit import browser, e2e, notebooks

CI_SUBSET = ("01", "05")  # a widget-driven table and figure, and a real DeepSpeed run with figures and widgets


def _notebook(path, *cells: tuple[str, str]):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in cells
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_browser_checks_catch_what_papermill_cannot(tmp_path):
    """A slider that answers, a figure handed over without the inline backend, an error that stops Run All, and no
    closing section: each is reported, and the slider's interaction is seen."""
    assert e2e.why_not_runnable() is None, e2e.why_not_runnable()  # CI installs chromium and playwright (make install)
    good = _notebook(
        tmp_path / "good.ipynb",
        ("md", "# good"),
        ("code", "import ipywidgets as w\nw.interact(lambda n: print('n =', n), n=w.IntSlider(value=1, min=0, max=5))"),
        ("md", "## What this run showed"),
        ("code", "print('done')"),
    )
    bad = _notebook(
        tmp_path / "bad.ipynb",
        ("code", "import matplotlib.figure\nfig = matplotlib.figure.Figure()\nfig.add_subplot().plot([1, 2])\nfig"),
        ("code", "raise ValueError('boom')"),
        ("code", "print('never')"),
    )
    runs = {r.notebook: r for r in e2e.run_notebooks([good, bad], tmp_path / "shots", cell_timeout_s=120)}
    assert runs["good"].passed, runs["good"].problems
    assert runs["good"].interactions == ["slider one step right: output changed"]
    problems = " | ".join(runs["bad"].problems)
    assert "ValueError: boom" in problems and "1 cell(s) never ran" in problems
    assert "figure(s) shown as '<Figure size ...>' text" in problems and "no closing 'What this run showed'" in problems
    for r in runs.values():
        assert (tmp_path / "shots" / f"{r.notebook}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "shots" / "results.json").read_text())[0]["notebook"] == "good"
    assert not kit_processes()


@pytest.mark.slow
def test_the_ci_subset_of_chapters_runs_clean_in_jupyterlab(tmp_path):
    runs = e2e.run_notebooks(notebooks.select(CI_SUBSET), tmp_path / "e2e", cell_timeout_s=600)
    failed = {r.notebook: {"screenshot": r.screenshot, "problems": r.problems} for r in runs if not r.passed}
    assert not failed, failed  # the CI log names the screenshot and the first error output
    assert all(r.interactions and all(i.endswith("output changed") for i in r.interactions) for r in runs)


def test_the_browser_is_found_where_each_system_puts_it(tmp_path, monkeypatch):
    """Debian's /usr/bin/chromium first; where it is missing (Ubuntu, macOS) a Chromium or Chrome on PATH; an explicit
    LABKIT_CHROMIUM wins, and a wrong one is named with its fix, as is a machine with no browser at all."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    chrome = fake_bin / "google-chrome"
    chrome.write_text("#!/bin/sh\n")
    chrome.chmod(0o755)
    monkeypatch.delenv(e2e.BROWSER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(fake_bin))
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "debian" / "chromium")  # not on this "machine"
    mac_app = tmp_path / "Applications" / "Google Chrome.app" / "Contents" / "MacOS" / "Google Chrome"
    monkeypatch.setattr(browser, "MACOS_BROWSERS", (mac_app,))
    assert e2e.chromium_path() == chrome
    chrome.rename(tmp_path / "elsewhere")
    mac_app.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").rename(mac_app)
    assert e2e.chromium_path() == mac_app  # macOS: the app bundle, which is on no PATH
    mac_app.rename(chrome)

    debian = tmp_path / "debian" / "chromium"
    debian.parent.mkdir()
    debian.write_text("#!/bin/sh\n")
    debian.chmod(0o755)
    assert e2e.chromium_path() == debian  # Debian's package before whatever PATH holds

    monkeypatch.setenv(e2e.BROWSER_ENV, str(chrome))
    assert e2e.chromium_path() == chrome

    monkeypatch.setenv(e2e.BROWSER_ENV, str(tmp_path / "no-such-browser"))
    assert e2e.why_not_runnable() == (
        f"LABKIT_CHROMIUM={tmp_path / 'no-such-browser'} is not an executable file: set it to a Chromium or Chrome"
        " binary, or unset it"
    )

    monkeypatch.delenv(e2e.BROWSER_ENV)
    debian.unlink()
    chrome.unlink()
    missing = e2e.why_not_runnable()
    assert missing.startswith("no Chromium found") and "apt-get install chromium" in missing
    assert "google-chrome" in missing and "set LABKIT_CHROMIUM" in missing


def test_the_set_up_asks_the_same_lookup_before_the_venv_exists(tmp_path):
    """scripts/bootstrap.sh decides whether to apt-get a Chromium before there is a venv: it runs labkit/browser.py on
    the machine's Python (standard library only) instead of a shell copy of the list, which had drifted once already
    (the macOS apps). Its answer is chromium_path's, with a browser given and on a bare PATH."""
    root = Path(e2e.__file__).parents[1]
    script = (root / "scripts" / "bootstrap.sh").read_text()
    have_browser = re.search(r"^have_browser\(\) \{.*?^\}$", script, re.S | re.M).group(0)
    assert not any(name in script for name in browser.BROWSER_NAMES[1:]), "a second list of browser names"
    bare = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PYTHON": sys.executable}
    for env in ({**bare, browser.BROWSER_ENV: str(tmp_path / "chrome")}, bare):
        said = subprocess.run(["/bin/bash", "-c", f"{have_browser}\nhave_browser"], cwd=root, env=env, timeout=60)
        expect = subprocess.run(
            [sys.executable, "-c", "from labkit.browser import chromium_path; print(chromium_path() or '')"],
            env={**os.environ, **env, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert (said.returncode == 0) == bool(expect), (env, expect)

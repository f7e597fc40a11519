"""Every chapter in a real browser: JupyterLab started on a copy of the notebooks, Debian's Chromium driven by
Playwright, each notebook run with "Run All" and checked the way a learner would look at it.

    python -m labkit.e2e [NOTEBOOK ...] [--out runs/e2e]      (make e2e: every notebook)

Per notebook: no error output; every widget rendered as a widget (not its text repr) and answering an interaction
(a dropdown changed or a slider moved re-renders its output); every figure loaded as an image; the closing
"What this run showed" section present. A full-page screenshot goes to OUT/<notebook>.png. Playwright's own browser
is never downloaded: the machine's own is used (`chromium_path`: $LABKIT_CHROMIUM, else Debian's /usr/bin/chromium,
else Chromium or Google Chrome on PATH; recipe: ../shared/notes/notebooks.md). The server, kernels and the browser are
stopped on any exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labkit import launch, notebooks, procs
from labkit.browser import BROWSER_ENV, BROWSER_NAMES, CHROMIUM, chromium_path
from labkit.errors import LabkitError

BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
CLOSING_HEADING = notebooks.CLOSING_HEADING.removeprefix("## ")
# Workshop settings: no news or update pop-ups; every cell in the DOM (no windowing), so the page shows them all.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}  # make lab gets the first from scripts/jupyterlab-overrides.json
_IDLE = "/\\| Idle/.test(document.querySelector('.jp-StatusBar-Widget')?.innerText || '')"
_PROMPTS = "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.innerText.trim())"
# Run All marks every queued cell [*]; it has started once a prompt shows [*] or a number, and settled once none
# shows [*] and the kernel is idle (cells after a failing one keep an empty prompt).
_STARTED = f"() => {_PROMPTS}.some(t => t === '[*]:' || /^\\[\\d+\\]:$/.test(t))"
_SETTLED = f"() => !{_PROMPTS}.some(t => t === '[*]:') && {_IDLE}"
_NEVER_RAN = (
    "() => window.jupyterapp.shell.currentWidget.content.widgets"
    ".filter(c => c.model.type === 'code' && !c.model.executionCount).length"
)
# What the page shows, read once the kernel is idle again.
_INSPECT = """() => {
  const outs = [...document.querySelectorAll('.jp-OutputArea-output')];
  const text = e => (e.innerText || '').trim();
  return {
    errors: outs.filter(e => e.getAttribute('data-mime-type') === 'application/vnd.jupyter.error'
                         || /Traceback \\(most recent call last\\)/.test(text(e))).map(e => text(e).slice(0, 2000)),
    widget_reprs: outs.filter(e => /^(interactive|VBox|HTML|IntSlider|FloatSlider|Dropdown|Text|Button)\\(/m
                                   .test(text(e)))
                      .map(e => text(e).slice(0, 200)),
    figure_texts: outs.filter(e => /<Figure size /.test(text(e))).length,
    images: [...document.querySelectorAll('.jp-OutputArea-output img')].map(i => i.complete && i.naturalWidth > 0),
    widgets: document.querySelectorAll('.jupyter-widgets.widget-interact, .jupyter-widgets.widget-slider,'
                                        + ' .jupyter-widgets.widget-dropdown').length,
    interacts: document.querySelectorAll('.widget-interact').length,
    headings: [...document.querySelectorAll('.jp-MarkdownCell h2')].map(text),
    height: document.querySelector('.jp-WindowedPanel-outer')?.scrollHeight || 0,
  };
}"""
# Change the first control of each interact (a dropdown's next option, or a slider one step right) and report whether
# its output area re-rendered.
_INTERACT = """async (index) => {
  const box = document.querySelectorAll('.widget-interact')[index];
  const out = box.querySelector('.widget-output') || box;
  let changed = false;
  const seen = new MutationObserver(() => { changed = true; });
  seen.observe(out, {childList: true, subtree: true, characterData: true});
  const select = box.querySelector('.widget-dropdown select');
  const handle = box.querySelector('.noUi-handle, .widget-slider input[type=range]');
  let how = 'nothing to change';
  if (select && select.options.length > 1) {
    select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
    select.dispatchEvent(new Event('change', {bubbles: true}));
    how = 'dropdown -> ' + select.value;
  } else if (handle) {
    handle.focus();
    const key = {key: 'ArrowRight', code: 'ArrowRight', keyCode: 39, bubbles: true};
    handle.dispatchEvent(new KeyboardEvent('keydown', key));
    how = 'slider one step right';
  }
  for (let i = 0; i < 100 && !changed; i++) await new Promise(r => setTimeout(r, 100));
  seen.disconnect();
  return {how, changed};
}"""


@dataclass
class BrowserRun:
    notebook: str
    seconds: float = 0.0
    screenshot: str = ""
    problems: list[str] = field(default_factory=list)
    interactions: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def why_not_runnable() -> str | None:
    """One line saying what is missing to drive a browser here, or None."""
    browser = chromium_path()
    if browser is None:
        return (
            f"no Chromium found ({CHROMIUM}, {', '.join(BROWSER_NAMES)} on PATH, or a macOS Chrome app): on Debian"
            " `apt-get install chromium` (`make install` does it as root); elsewhere install Chromium or Google Chrome,"
            f" or set {BROWSER_ENV} to its executable"
        )
    if not (browser.is_file() and os.access(browser, os.X_OK)):
        return f"{BROWSER_ENV}={browser} is not an executable file: set it to a Chromium or Chrome binary, or unset it"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed: `make install` (dev extras) installs it"
    return None


@contextlib.contextmanager
def jupyterlab(root: Path, *, start_timeout_s: float = 90.0) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on `root` with the workshop settings: yields (its base URL, its token)."""
    settings, token, port = root / ".settings", secrets.token_hex(16), launch.free_port()
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(root / ".ws")}
    env["LABKIT_RUN_DIR"] = str(root / "work")  # what the notebooks write lands in the copy, not the repository
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    log = open(root / "jupyterlab.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "jupyterlab.log").read_text(errors="replace")[-1500:]
                    raise LabkitError(f"JupyterLab did not start within {start_timeout_s:.0f} s: {tail}") from None
                time.sleep(0.3)
        yield base, token
    finally:
        procs.stop_tree(server, grace_s=5.0)  # the kernels are its children: they go with it
        log.close()


def _shut_down_kernels(base: str, token: str) -> None:
    """Every session of the server ended through its REST API (no dialog to answer), so notebooks run one at a time."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as answer:
        sessions = json.load(answer)
    for session in sessions:
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


def _check(page, nb: Path, out_dir: Path, cell_timeout_s: float) -> BrowserRun:
    run, start = BrowserRun(nb.stem), time.monotonic()
    page.wait_for_function(f"() => {_IDLE}", timeout=90_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
    try:
        page.wait_for_function(_STARTED, timeout=60_000, polling=200)
        page.wait_for_function(_SETTLED, timeout=cell_timeout_s * 1000, polling=500)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: say which notebook and save what it shows
        running = page.evaluate(f"() => {_PROMPTS}")
        run.problems.append(f"the cells did not all finish within {cell_timeout_s:.0f} s (prompts: {running})")
    # From the notebook's model, not the prompts: a cell whose source is collapsed (a solution) shows no prompt.
    if skipped := page.evaluate(_NEVER_RAN):
        run.problems.append(f"{skipped} cell(s) never ran (Run All stops at a failing cell)")
    seen = page.evaluate(_INSPECT)
    run.problems += [f"error output: {text}" for text in seen["errors"]]
    run.problems += [f"a widget shown as text (widget manager not loaded): {text}" for text in seen["widget_reprs"]]
    if seen["figure_texts"]:
        run.problems.append(f"{seen['figure_texts']} figure(s) shown as '<Figure size ...>' text, not an image")
    if not all(seen["images"]):
        run.problems.append(f"{seen['images'].count(False)} image(s) did not load")
    if CLOSING_HEADING not in seen["headings"]:
        run.problems.append(f"no closing '{CLOSING_HEADING}' section (headings: {seen['headings']})")
    for i in range(seen["interacts"]):
        answer = page.evaluate(_INTERACT, i)
        run.interactions.append(f"{answer['how']}: {'output changed' if answer['changed'] else 'NO CHANGE'}")
        if not answer["changed"]:
            run.problems.append(f"widget {i + 1} did not answer an interaction ({answer['how']})")
    page.wait_for_function(f"() => {_IDLE}", timeout=60_000)  # callbacks done before the picture
    page.set_viewport_size({"width": 1400, "height": min(max(seen["height"] + 200, 900), 30_000)})
    page.evaluate("() => { document.querySelector('.jp-WindowedPanel-outer')?.scrollTo(0, 0); }")  # Run All scrolled
    page.wait_for_timeout(500)
    shot = out_dir / f"{nb.stem}.png"
    page.screenshot(path=str(shot), full_page=True)
    run.screenshot, run.seconds = str(shot), time.monotonic() - start
    return run


def run_notebooks(paths: list[Path], out_dir: str | Path, *, cell_timeout_s: float = 600.0) -> list[BrowserRun]:
    """Open and run each notebook in JupyterLab in Chromium; screenshots and results.json into out_dir."""
    if missing := why_not_runnable():
        raise LabkitError(f"e2e cannot run: {missing}")
    from playwright.sync_api import sync_playwright

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[BrowserRun] = []
    with tempfile.TemporaryDirectory(prefix="labkit-e2e-") as tmp:
        root = Path(tmp)
        (root / "work").mkdir()
        for nb in paths:  # a fresh, output-free copy: autosave may write outputs into what it opened
            shutil.copy(nb, root / nb.name)
        with jupyterlab(root) as (base, token), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium_path()), headless=True, args=BROWSER_ARGS)
            try:
                for nb in paths:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    # a workspace of its own: the previous notebook is not restored beside it
                    page.goto(f"{base}/lab/workspaces/e2e-{nb.stem}/tree/{nb.name}?token={token}")
                    try:
                        runs.append(_check(page, nb, out_dir, cell_timeout_s))
                    finally:
                        page.close()
                        _shut_down_kernels(base, token)
                    status = "passed" if runs[-1].passed else "FAILED: " + "; ".join(runs[-1].problems)[:400]
                    print(f"labkit e2e: {nb.stem}: {status} ({runs[-1].seconds:.0f} s)", file=sys.stderr, flush=True)
            finally:
                browser.close()
    (out_dir / "results.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="stems or paths (default: every notebook)")
    parser.add_argument("--out", default="runs/e2e", help="screenshots and results.json (default runs/e2e)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for a notebook's cells to finish")
    args = parser.parse_args(argv)
    # A SIGTERM (CI's timeout, `kill`) unwinds like Ctrl-C: the server, its kernels and the browser are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        paths = notebooks.select(args.notebooks) if args.notebooks else notebooks.discover()
        runs = run_notebooks(paths, args.out, cell_timeout_s=args.timeout)
    except LabkitError as exc:
        print(f"labkit e2e: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in runs if not r.passed]
    for r in failed:
        print(f"labkit e2e: {r.notebook} FAILED (screenshot {r.screenshot}): {r.problems[0]}", file=sys.stderr)
    print(f"labkit e2e: {len(runs) - len(failed)} of {len(runs)} notebooks passed; screenshots in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

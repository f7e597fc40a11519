"""The papermill runner behind `labkit run`: parameter checks, failure reporting, the HTML report."""

from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from labkit import notebooks, procs, results
from labkit.cli import main
from labkit.errors import ConfigError


def make_notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), p] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def good(tmp_path):
    return make_notebook(
        tmp_path / "good.ipynb",
        "epochs: int = 2  # passes\nname: str = 'x'  # a label\n"
        "lr: float = 0.1  # learning rate\nfast: bool = False  # go fast",
        "from labkit import results\nresults.record('echo', {'epochs': epochs, 'name': name, 'lr': lr, 'fast': fast})",
    )


def test_declared_parameters_are_typed(good):
    declared = notebooks.declared_parameters(good)
    assert {k: v["inferred_type_name"] for k, v in declared.items()} == {
        "epochs": "int",
        "name": "str",
        "lr": "float",
        "fast": "bool",
    }
    assert declared["epochs"]["help"] == "passes"


def test_cli_strings_are_coerced_to_declared_types(good):
    assert notebooks.check_parameters(good, {"epochs": "5", "lr": "0.5", "fast": "yes", "name": "7"}) == {
        "epochs": 5,
        "lr": 0.5,
        "fast": True,
        "name": "7",
    }
    with pytest.raises(ConfigError, match="epochs.*not a valid int"):
        notebooks.check_parameters(good, {"epochs": "many"})


def test_unknown_parameter_is_refused_before_running(good, tmp_path):
    with pytest.raises(ConfigError) as err:
        notebooks.check_parameters(good, {"epoch": 3})
    assert "good.ipynb" in str(err.value) and "epoch" in str(err.value) and "epochs" in str(err.value)


def test_run_records_values_and_writes_report(good, tmp_path):
    run_dir, runs = notebooks.run_all([good], {"epochs": "3"}, out_dir=tmp_path / "run", progress=False)
    (run,) = runs
    assert run.passed, run.error
    assert results.read(run.output)["echo"] == {"epochs": 3, "name": "x", "lr": 0.1, "fast": False}
    index = (run_dir / "index.html").read_text()
    assert "good" in index and "passed" in index and "good.html" in index
    assert "<th>error</th>" not in index and "<th>expectations</th>" not in index  # empty columns are left out
    assert f"Machine: {platform.node()}: " in index and "usable core(s)" in index  # which machine ran it (issue 13)
    assert Path(run.html).read_text().startswith("<!DOCTYPE html>")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary[0]["parameters"] == {"epochs": 3}


@pytest.mark.parametrize("command", ["params", "run"])
@pytest.mark.parametrize("name", ["", ".", "/"])
def test_cli_an_empty_notebook_name_lists_the_notebooks(command, name, capsys):
    """`labkit params ''` was a ValueError traceback (PosixPath('.') has an empty name)."""
    assert main([command, name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"labkit: error: notebook: {name!r} matches 0 notebooks") and "name one of: 00_" in err


def test_cli_unknown_parameter_exits_nonzero_naming_notebook(good, tmp_path, capsys):
    code = main(["run", str(good), "-p", "epoch", "3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "good.ipynb" in err and "epoch" in err
    assert not (tmp_path / "r").exists(), "nothing may run before the parameters are checked"


def test_cli_run_folder_and_junit_file_are_checked_before_anything_runs(good, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(notebooks, "run_notebook", lambda *a, **k: pytest.fail("a notebook ran"))
    (tmp_path / "afile").write_text("")
    assert main(["run", str(good), "--out", str(tmp_path / "afile")]) == 2  # was a FileExistsError traceback
    assert "labkit: error: out: cannot make the folder" in capsys.readouterr().err
    suite = Path(__file__).parents[1] / "regression" / "cpu-smoke.yaml"
    monkeypatch.setattr(notebooks, "run_all", lambda *a, **k: pytest.fail("the suite ran"))  # and then crashed
    assert main(["run", "--suite", str(suite), "--junit", str(tmp_path / "no" / "j.xml")]) == 2
    assert f"labkit: error: --junit: {tmp_path / 'no'} is not a folder" in capsys.readouterr().err


def test_report_links_quote_file_names_and_keep_anchors():
    assert notebooks._link("/r/50%_done#1.html", "t", "cell-id=ab") == '<a href="50%25_done%231.html#cell-id=ab">t</a>'
    assert notebooks._link("", "<b>") == "&lt;b&gt;"


def test_cli_failing_cell_names_notebook_and_cell(tmp_path, capsys):
    bad = make_notebook(
        tmp_path / "bad.ipynb", "n: int = 1  # a number", "x = n + 1", "raise ValueError('boom ' + str(x))"
    )
    code = main(["run", str(bad), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert "bad.ipynb" in err and "cell 3" in err and "ValueError: boom 2" in err
    index = (tmp_path / "r" / "index.html").read_text()
    assert "failed" in index and "<th>error</th>" in index
    # the report links the failed cell of the rendered notebook, by the anchor nbconvert gives it
    anchor = re.search(r'href="bad.html#(cell-id=[^"]+)">the failed cell', index).group(1)
    assert f'id="{anchor}"' in (tmp_path / "r" / "bad.html").read_text()


def test_cell_timeout_and_dead_kernel_are_reported_like_failures(tmp_path):
    slow = make_notebook(tmp_path / "slow.ipynb", "s: float = 30.0  # seconds", "import time; time.sleep(s)")
    dead = make_notebook(tmp_path / "dead.ipynb", "code: int = 3  # exit code", "import os; os._exit(code)")
    _, runs = notebooks.run_all([slow, dead], out_dir=tmp_path / "r", timeout=5, progress=False)
    assert [r.status for r in runs] == ["failed", "failed"]
    assert "CellTimeoutError" in runs[0].error and "cell 2" in runs[0].error
    assert "DeadKernelError" in runs[1].error


def test_what_a_killed_kernel_left_in_its_temp_folder_goes_with_it(tmp_path, monkeypatch):
    """A kernel stopped at a deadline or killed never runs its cleanup: a library's temp folder it was using
    (DeepSpeed's compile probe makes one with tempfile.mkdtemp) stayed in the user's /tmp. Its TMPDIR is now its own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cache = str(tmp_path / "inductor")  # a compile cache the user chose is kept, not moved into the removed folder
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", cache)
    killed = make_notebook(
        tmp_path / "killed.ipynb",
        "code: int = 3  # exit code",
        "import os, pathlib, tempfile\nfrom labkit import results\nprobe = pathlib.Path(tempfile.mkdtemp())\n"
        "(probe / 'test.c').write_text('int main(void) { return 0; }')\n"
        "results.record('probe', {'dir': str(probe), 'inductor': os.environ['TORCHINDUCTOR_CACHE_DIR']})",
        "os._exit(code)",
    )
    _, (run,) = notebooks.run_all([killed], out_dir=tmp_path / "r", progress=False)
    assert run.status == "failed" and "DeadKernelError" in run.error
    probe = Path(run.results["probe"]["dir"])
    assert probe.parent.parent == tmp, probe  # in a folder of the kernel's own, under the user's TMPDIR
    assert run.results["probe"]["inductor"] == cache
    assert not list(tmp.iterdir()), "the killed kernel's temp folder was left behind"


def test_labkit_run_limits_every_cell_by_default_and_refuses_a_negative_limit(monkeypatch, tmp_path, capsys):
    # An upstream client can wait for ever on a reply a kernel never sends (seen on the GPU machine at a widget cell):
    # the CLI always hands papermill a per-cell limit unless told 0.
    seen = []
    monkeypatch.setattr(notebooks, "run_all", lambda *a, **k: seen.append(k["timeout"]) or (tmp_path, []))
    for flags, expected in (([], 900.0), (["--timeout", "60"], 60.0), (["--timeout", "0"], None)):
        main(["run", "00", "--out", str(tmp_path / "r"), *flags])
        assert seen.pop() == expected
    assert main(["run", "00", "--timeout", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "timeout" in capsys.readouterr().err and not seen


def test_params_command_lists_types(good, capsys):
    assert main(["params", str(good)]) == 0
    out = capsys.readouterr().out
    assert "epochs" in out and "int" in out and "passes" in out


def test_figures_render_as_images_and_the_kernel_channel_is_encrypted(tmp_path, capfd):
    # Figures built without pyplot showed as "<Figure size ...>" text; ipykernel warned on every start that it was
    # "running over TCP without encryption" until the runner asked jupyter_client for CurveZMQ keys.
    plot = make_notebook(
        tmp_path / "plot.ipynb",
        "n: int = 3  # points",
        "%matplotlib inline\n"
        "from IPython.display import display\nfrom matplotlib.figure import Figure\n"
        "fig = Figure()\nfig.add_subplot().plot(range(n))\ndisplay(fig)",
    )
    _, (run,) = notebooks.run_all([plot], out_dir=tmp_path / "r", progress=False)
    assert run.passed, run.error
    outputs = json.loads(Path(run.output).read_text())["cells"][-1]["outputs"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    log = tmp_path / "r" / "plot.kernel.log"  # where ipykernel's own stderr goes now
    assert "without encryption" not in capfd.readouterr().err + (log.read_text() if log.exists() else "")


def test_the_kernels_shutdown_interrupt_is_not_shown_but_its_other_errors_are(tmp_path, capfd):
    """`make run` now and then (2 of 16 runs) printed "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." in a
    run where every notebook passed: jupyter_client interrupts a kernel before shutting it down, and a kernel still in
    a message handler logs that. Here the kernel's own log says it (the race, made certain), and says something else."""
    nb = make_notebook(
        tmp_path / "log.ipynb",
        "n: int = 1  # unused",
        "log = get_ipython().kernel.log\nlog.error('KeyboardInterrupt caught in kernel.')\n"
        "log.error('KeyboardInterrupt caught in kernel')\nlog.error('a kernel error the learner needs')",
    )
    _, (run,) = notebooks.run_all([nb], out_dir=tmp_path / "r", progress=False)
    assert run.passed, run.error
    assert "KeyboardInterrupt" not in capfd.readouterr().err  # the kernel's log goes to its file, not the terminal
    log = (tmp_path / "r" / "log.kernel.log").read_text()
    assert "[IPKernelApp] ERROR | a kernel error the learner needs" in log, log
    assert "KeyboardInterrupt" not in log, log


def test_a_run_into_the_same_folder_again_shows_only_its_own_kernel_log(tmp_path):
    """`labkit run 05 --out runs/x` again after a failed run: the kernel's log was appended to, so a run whose kernel
    logged nothing left the earlier run's log in place, and a failing one pointed at the earlier run's lines too."""
    nb = make_notebook(
        tmp_path / "again.ipynb",
        "label: str = 'first'  # which run\nfail: bool = True  # end in an error",
        "get_ipython().kernel.log.error(f'{label} run logged this')\nassert not fail",
    )
    _, (first,) = notebooks.run_all([nb], out_dir=tmp_path / "r", progress=False)
    log = tmp_path / "r" / "again.kernel.log"
    assert not first.passed and str(log) in first.error and "first run" in log.read_text()
    _, (second,) = notebooks.run_all([nb], {"label": "second"}, out_dir=tmp_path / "r", progress=False)
    assert not second.passed and str(log) in second.error
    assert "second run" in log.read_text() and "first run" not in log.read_text()
    quiet = make_notebook(tmp_path / "again.ipynb", "fail: bool = False  # end in an error", "assert not fail")
    _, (third,) = notebooks.run_all([quiet], out_dir=tmp_path / "r", progress=False)
    # none of the earlier runs' lines (once, in a CI run, this passing kernel left a log of its own: not the bug here)
    left = log.read_text() if log.exists() else ""
    assert third.passed and "second run" not in left and "first run" not in left, left


def test_a_kernel_that_cannot_start_fails_its_notebook_in_one_line_with_the_kernels_reason(tmp_path, capsys):
    """A kernel that died at start (a broken ipykernel, an import that fails) ended `labkit run` with nbclient's
    40-line traceback, "RuntimeError: Kernel died before replying to kernel_info", and since the kernel's stderr goes
    to NN_name.kernel.log its own reason was on no screen. The notebook now fails like any other, saying why."""
    nb = make_notebook(tmp_path / "nostart.ipynb", "n: int = 1  # unused", "print(n)")
    work = tmp_path / "r" / "nostart.work"  # the kernel starts there: `python -m ipykernel_launcher` finds this one
    work.mkdir(parents=True)
    (work / "ipykernel_launcher.py").write_text("import sys\nsys.exit('ImportError: no module named zmq (as set up)')")
    assert main(["run", str(nb), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "FAILED" in line]
    assert "the kernel did not start" in line and "ImportError: no module named zmq (as set up)" in line, line
    assert str(tmp_path / "r" / "nostart.kernel.log") in line


def test_a_kernel_that_dies_mid_run_is_told_once_with_its_cell_and_its_log(tmp_path):
    """A kernel that died in a cell (a segfault, os._exit) printed nbclient's "Kernel died while waiting for execute
    reply." through papermill's logger besides the kit's own summary, and the summary did not say what the kernel
    last wrote (to its log, on no screen). Now the summary alone tells it: the notebook, the cell, the kernel's last
    words and where its log is. (A process of its own: pytest's log capture would take papermill's line.)"""
    # the kernel's own log writes at once (what the cell writes to fd 2 is echoed there by a thread: too late)
    cell = "get_ipython().kernel.log.error('Fatal: out of luck')\nimport os\nos._exit(code)"
    nb = make_notebook(tmp_path / "dies.ipynb", "code: int = 3  # exit code", cell)
    cmd = [sys.executable, "-m", "labkit", "run", str(nb), "--out", str(tmp_path / "r")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert run.returncode == 1 and "Kernel died while waiting" not in run.stderr, run.stderr
    (line,) = [line for line in run.stderr.splitlines() if "FAILED" in line]
    assert "dies.ipynb" in line and "cell 2 failed" in line and "the kernel died" in line, line
    log = tmp_path / "r" / "dies.kernel.log"
    assert "Fatal: out of luck" in line and f"(the kernel's log: {log})" in line, line
    assert "Fatal: out of luck" in log.read_text()


def test_the_html_report_shows_a_progress_bar_as_its_text(tmp_path):
    """nbconvert writes a widget as a script that fetches its renderer from unpkg.com: opened offline (a workshop
    room, a CI artifact) notebook 04's bar was a blank line in the report, though the notebook saved its text."""
    cell = "from labkit.progress import bar\nb = bar(n, desc='counted')\nb.update(n)\nb.close()"
    nb = make_notebook(tmp_path / "bar.ipynb", "n: int = 3  # steps", cell)
    _, (run,) = notebooks.run_all([nb], out_dir=tmp_path / "r", progress=False)
    assert run.passed, run.error
    saved = Path(run.output).read_text()
    assert "widget-view" in saved  # the notebook keeps its widget (JupyterLab draws it) ...
    html = Path(run.html).read_text()
    assert "counted: 100%" in html and "widget-view" not in html  # ... the page shows the bar as it ended


def test_relative_run_dir_works_from_the_kernels_working_directory(tmp_path, monkeypatch):
    # `make run` passes no --out: the run directory is relative (runs/<ts>) while the kernel runs in its work dir
    nb = make_notebook(
        tmp_path / "writes.ipynb",
        "name: str = 'f.txt'  # file to write",
        "import os, pathlib\nwork = pathlib.Path(os.environ['LABKIT_RUN_DIR'])\n"
        "(work / name).write_text('ok')\nfrom labkit import results\n"
        "results.record('wrote', str(work / name))\nassert pathlib.Path.cwd() == work",
    )
    monkeypatch.chdir(tmp_path)
    run_dir, (run,) = notebooks.run_all([nb], out_dir="runs/r1", progress=False)
    assert run.passed, run.error
    written = Path(results.read(run.output)["wrote"])
    assert written.is_absolute() and written.read_text() == "ok"
    assert written.parent == (tmp_path / "runs" / "r1" / "writes.work")


def test_the_report_shows_the_latest_browser_screenshots(good, tmp_path, capsys):
    shots = tmp_path / "e2e"
    shots.mkdir()
    (shots / "good.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # what make e2e leaves for this notebook
    assert main(["run", str(good), "--out", str(tmp_path / "r"), "--screenshots", str(shots)]) == 0
    assert "1 screenshot(s)" in capsys.readouterr().out
    assert '<img src="screenshots/good.png"' in (tmp_path / "r" / "index.html").read_text()
    assert (tmp_path / "r" / "screenshots" / "good.png").is_file()
    assert main(["run", str(good), "--screenshots", str(tmp_path / "none")]) == 2  # refused before anything runs


def test_the_report_gives_each_notebook_its_one_line_finding(tmp_path):
    """Issue 13: the report said "results recorded: 3"; it now says what the chapter's closing cell found."""
    nb = nbformat.v4.new_notebook()
    closing = nbformat.v4.new_code_cell("Markdown(...)")
    closing.outputs = [
        nbformat.v4.new_output(
            "execute_result", {"text/markdown": "- On **2** ranks `ZeRO-3` held 84 MB. More detail follows here."}
        )
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("## What this run showed"), closing]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert notebooks.closing_finding(path) == "On 2 ranks ZeRO-3 held 84 MB."
    run = notebooks.NotebookRun(name="x", source=str(path), status="passed", finding="On 2 ranks ZeRO-3 held 84 MB.")
    page = notebooks.write_report(tmp_path, [run]).read_text()
    assert "<th>what it found</th>" in page and "On 2 ranks ZeRO-3 held 84 MB." in page
    nb.cells = nb.cells[:1]  # the closing cell never ran (a failure earlier)
    nbformat.write(nb, path)
    assert notebooks.closing_finding(path) == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_says_where_in_one_line_and_leaves_no_kernel(tmp_path, sig):
    # ^C or `kill` mid-cell printed the kernel's ZMQError traceback (it was shut down while replying) and a bare
    # "interrupted": the user needs one line naming the notebook, the cell and where the partial notebook went.
    marker = tmp_path / "kernel.pid"
    nb = make_notebook(
        tmp_path / "long.ipynb",
        "s: float = 120.0  # seconds",
        f"import os, pathlib, time\npathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\ntime.sleep(s)",
    )
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "labkit", "run", str(nb), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not marker.exists() or not marker.read_text():  # the cell that sleeps has started
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    kernel = int(marker.read_text())
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    # the whole output on failure: once on an H100 under load a Traceback came that the truncated diff hid
    assert "Traceback" not in stderr + stdout and "ZMQError" not in stderr, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("labkit: ") and "running long.ipynb" not in ln]
    assert "long.ipynb" in line and "cell 2" in line and str(out / "long.ipynb") in line, line
    assert (out / "long.ipynb").exists()
    assert not procs.alive(kernel)


def test_two_shutdowns_at_once_stop_the_kernel_once_without_an_error(tmp_path, caplog):
    """On ^C or SIGTERM nbclient shuts the kernel down twice (its signal handler's cleanup, then its own finally's).
    Two at once resolve jupyter_client's `ready` future twice: InvalidStateError, logged with a Traceback
    (jupyter/jupyter_client#967), which an H100 under load showed beside the interrupted run's one line."""
    import asyncio

    from labkit import kernels

    async def twice() -> tuple[list, bool]:
        km = kernels.LoggedKernelManager(kernel_name="python3", stderr_path=str(tmp_path / "kernel.log"))
        await km.start_kernel()
        pid = km.provisioner.pid
        said = await asyncio.gather(km.shutdown_kernel(), km.shutdown_kernel(), return_exceptions=True)
        return said, procs.alive(pid)

    said, alive = asyncio.run(twice())
    assert said == [None, None] and not alive
    assert "InvalidStateError" not in caplog.text and "Traceback" not in caplog.text


def test_a_figures_description_is_its_alt_text_on_the_page(tmp_path):
    """nbconvert wrote 'No description has been provided for this image' as the alt text of every figure of the
    report's pages, though each kit figure carries its description (labkit.plots.figure): a screen reader, or a page
    whose images do not load, says what the figure shows."""
    cell = (
        "from labkit import plots\nfig = plots.figure(3, 2, alt='loss fell from 2.3 to 0.4 <in 3 epochs>')\n"
        "fig.add_subplot().plot([2.3, 0.4])\nfig"
    )
    nb = make_notebook(tmp_path / "fig.ipynb", "n: int = 1  # unused", cell)
    _, (run,) = notebooks.run_all([nb], out_dir=tmp_path / "r", progress=False)
    assert run.passed, run.error
    page = Path(run.html).read_text()
    assert 'alt="loss fell from 2.3 to 0.4 &lt;in 3 epochs&gt;"' in page and "No description has been" not in page
    assert page.count("<img ") == 1

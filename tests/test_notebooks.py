"""Every notebook under notebooks/ runs headless with its test parameters through the same runner as `labkit run`.

New notebooks are covered without editing this file.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from kit_testing import execute_once

from labkit import kernels, notebooks, results

ALL = notebooks.discover()
ROOT = Path(__file__).resolve().parents[1]


def test_there_are_notebooks():
    assert len(ALL) >= 2, "expected the kit's notebooks under notebooks/"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_committed_without_outputs(path):
    assert not notebooks.has_outputs(path), f"{path} has outputs: run `make notebooks`"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_reads_like_a_tutorial_chapter(path):
    """Objectives, prerequisites, time and contents up front; a predict-then-verify exercise with a collapsed
    solution; a closing cell computed from the run; troubleshooting with sources and documentation links at the end."""
    cells = json.loads(path.read_text())["cells"]
    text = lambda c: "".join(c["source"])  # noqa: E731
    head = text(cells[0])
    for part in ("**Objectives.**", "**Prerequisites.**", "**Time**", "**Contents:**"):
        assert part in head, f"the first cell lacks {part}"
    tags = [c.get("metadata", {}).get("tags", []) for c in cells]
    exercises = [c for c, t in zip(cells, tags) if "exercise" in t]
    solutions = [c for c, t in zip(cells, tags) if "solution" in t]
    assert exercises and solutions, "no cell tagged exercise, or none tagged solution"
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") for c in solutions), "solution not collapsed"
    assert any("exercises.verdict(" in text(c) or "_prediction(" in text(c) for c in exercises), "nothing checks it"
    markdown = [text(c) for c in cells if c["cell_type"] == "markdown"]
    assert any(m.startswith("## What this run showed") for m in markdown)
    trouble = [m for m in markdown if m.startswith("## Troubleshooting")]
    assert trouble, "no troubleshooting section"
    assert len(re.findall(r"\n(?:- |\d+\. )\*\*", trouble[0])) >= 3, "fewer than 3 troubleshooting items"
    assert "**Docs:**" in trouble[0] and "](https://" in trouble[0]
    assert markdown.index(trouble[0]) == len(markdown) - 1, "troubleshooting closes the chapter"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_parameters_are_typed_and_documented(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    declared = notebooks.declared_parameters(path)
    assert declared, "the parameters cell declares nothing"
    for name, info in declared.items():
        assert info["inferred_type_name"] not in ("None", None), f"{name} has no type annotation"
        assert info.get("help"), f"{name} has no help comment"
    for line in "".join(tagged[0]["source"]).splitlines():
        if re.match(r"^[A-Za-z_]\w*\s*=", line.strip()):
            pytest.fail(f"unannotated parameter line: {line!r}")
        # papermill must parse every parameter (an `=` in the comment hides it from `-p NAME VALUE` and --help)
        name = re.match(r"^([A-Za-z_]\w*)\s*:", line)
        if name:
            assert name.group(1) in declared, f"papermill cannot parse {line!r}: no '=' in the help comment"
    # test parameters may only name declared parameters
    assert set(notebooks.test_parameters(path)) <= set(declared)


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs_headless(path, notebook_run_dir):
    run = execute_once(path.stem, notebook_run_dir)
    assert run.passed, f"{run.source}: {run.error}"
    recorded = results.read(run.output)
    assert recorded, "the notebook recorded no results (labkit.results.record)"
    assert run.html and run.html.endswith(".html")


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_output_is_clean(path, notebook_run_dir):
    """What a learner reads: figures as images, no build noise, warnings, tracebacks, dumps or internal paths."""
    run = execute_once(path.stem, notebook_run_dir)
    assert run.passed, f"{run.source}: {run.error}"
    assert not run.noise, "\n".join(run.noise)


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_no_output_widget_for_a_headless_client_to_answer(path, notebook_run_dir):
    """An Output widget (ipywidgets.interact's) makes nbclient send its state back on the shell channel while it
    awaits the cell's reply there; notebook 05 hung that way on the H200 (labkit.controls says why)."""
    run = execute_once(path.stem, notebook_run_dir)
    assert run.passed, f"{run.source}: {run.error}"
    widgets = json.loads(open(run.output).read())["metadata"].get("widgets", {})
    state = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    models = [m["model_name"] for m in state.values()]
    assert "OutputModel" not in models, "an Output widget in the executed notebook: use labkit.controls.live_html"


def test_output_problems_finds_each_kind_of_noise(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    noisy = [
        new_output("execute_result", {"text/plain": "<Figure size 640x480 with 1 Axes>"}, execution_count=1),
        new_output("stream", name="stderr", text="/x/y.py:3: FutureWarning: old\n"),
        new_output("stream", name="stdout", text=f"wrote {notebooks.NOTEBOOKS_DIR}/x.json\n"),
        new_output("stream", name="stdout", text="row\n" * (notebooks.MAX_OUTPUT_LINES + 1)),
        new_output("execute_result", {"text/plain": "{'stage': 2, 'world_size': 1}"}, execution_count=2),
    ]
    clean = [
        new_output("display_data", {"image/png": "iVBOR", "text/plain": "<Figure size 640x480 with 1 Axes>"}),
        new_output("stream", name="stdout", text="ZeRO-3 held 2.69 GB per rank\n"),
        new_output("execute_result", {"text/html": "<table/>", "text/plain": "[1, 2]"}, execution_count=3),
        new_output("execute_result", {"text/plain": ""}, execution_count=4),
    ]
    nb = new_notebook(cells=[new_code_cell("x", outputs=noisy), new_code_cell("y", outputs=clean)])
    nbformat.write(nb, tmp_path / "n.ipynb")
    problems = notebooks.output_problems(tmp_path / "n.ipynb")
    assert len(problems) == 5 and all(p.startswith("cell 0:") for p in problems), problems
    assert any("figure shown as text" in p for p in problems) and any("FutureWarning" in p for p in problems)
    assert any("internal path" in p for p in problems) and any("lines (more than" in p for p in problems)
    assert any("a value's repr as the cell's result" in p for p in problems)
    # What is shown as Markdown or HTML counts too, and a progress bar or a UserWarning written as text
    shown = [
        new_output("display_data", {"text/markdown": f"fix: run {notebooks.NOTEBOOKS_DIR}/x", "text/plain": "<M>"}),
        new_output("display_data", {"text/html": "<p>RuntimeWarning: overflow</p>", "text/plain": "<H>"}),
        new_output("stream", name="stderr", text="train: 100%|##########| 100/100 [00:01<00:00, 99.1it/s]\n"),
        new_output("stream", name="stderr", text="/x.py:1: UserWarning: TypedStorage is deprecated\n"),
    ]
    nbformat.write(new_notebook(cells=[new_code_cell("z", outputs=shown)]), tmp_path / "m.ipynb")
    problems = notebooks.output_problems(tmp_path / "m.ipynb")
    assert len(problems) == 4 and "internal path" in problems[0] and "RuntimeWarning" in problems[1], problems
    assert "progress bar" in problems[2] and "UserWarning" in problems[3]


def test_short_paths_leaves_no_internal_path_for_the_output_check():
    from labkit import tabular

    line = f"cmd = mpirun -x PYTHONPATH={notebooks.NOTEBOOKS_DIR.parent} {sys.executable} -u -m labkit.ranks.hello"
    shown = tabular.short_paths(line)
    assert "<labkit>" in shown and str(notebooks.NOTEBOOKS_DIR.parent) not in shown
    assert tabular.short_paths("/usr/bin/mpirun") == "/usr/bin/mpirun"


def test_a_plan_line_is_wrapped_at_words_for_an_output_that_breaks_lines_anywhere():
    """Chapters 02, 05 and 07 printed their plan's why as one line; JupyterLab's output CSS (word-break: break-all)
    showed 'ZeRO n' / 'eeds 2 or more ranks' on the GPU machine's page."""
    from labkit import tabular

    why = "ranks: 2 x cpu (automatic: 2 CPU ranks (gloo), because this machine has 1 CUDA device(s) and ZeRO needs 2 "
    shown = tabular.wrapped(why + "or more ranks to partition model states)")
    lines = shown.splitlines()
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines) and lines[1].startswith("    needs 2")
    assert " ".join(shown.split()) == " ".join((why + "or more ranks to partition model states)").split())
    label = tabular.wrapped("a/b: " + "word " * 30, "job          ").splitlines()
    assert label[0].startswith("job          a/b:") and all(line.startswith(" " * 13) for line in label[1:])
    assert tabular.wrapped("x" * 150) == "x" * 150  # a path or a command is never cut


@pytest.mark.slow
def test_a_saved_notebook_shows_each_progress_bar_as_it_ended(tmp_path):
    """nbconvert (and GitHub, CI logs) show a widget's text/plain, which was its first state: executed notebooks read
    'ZeRO comparison (2 ranks, cpu): 0%| | 0/28' and 'rank 0 steps: 0%| | 0/30' after the run."""
    import nbformat
    from nbclient import NotebookClient

    cell = """
import io
from labkit import zero
from labkit.chapters import interactive, serving  # noqa: F401 (the kit's other bars share the one home)
from labkit.progress import bar
b = bar(3, desc="steps here")
b.update(3)
b.close()
p = interactive.TrainingProgress(total_steps=2, stream=io.StringIO())
p('LABKIT_METRIC {"event": "step", "rank": 0, "world_size": 1, "step": 1, "loss": 1.0}\\n' * 2)
p.close()
from labkit import train  # one rank in the kernel (notebook 04 on one GPU) read '0%| | 0/93' after 93 steps
_ = train.run_in_process(train.TrainConfig(synthetic=True, synthetic_train=128, synthetic_test=64, model="lenet",
                                           epochs=1, micro_batch=64, device="cpu"))
"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    # the runner's kernel (encrypted transport, one shutdown at a time; a bare AsyncKernelManager once failed here at
    # shutdown on an H100 with jupyter_client's InvalidStateError)
    options = kernels.kernel_options(tmp_path, tmp_path / "kernel.log")
    kernel = {k: options[k] for k in ("config", "kernel_manager_class")}
    NotebookClient(nb, timeout=120, kernel_name="python3", **kernel).execute(cwd=str(tmp_path))
    shown = [o["data"]["text/plain"] for o in nb.cells[0].outputs if "text/plain" in o.get("data", {})]
    assert "3/3" in shown[0] and "steps here: 100%" in shown[0], shown
    assert "rank 0 steps: 100%" in shown[1] and "2/2" in shown[1], shown
    assert len(shown) == 3 and "lenet ZeRO-0: 100%" in shown[2] and "2/2" in shown[2], shown
    said = "".join(o["text"] for o in nb.cells[0].outputs if o["output_type"] == "stream")
    assert "step/s" not in said, "a text bar instead of the widget"


@pytest.mark.parametrize("how", ["timeout", "dead kernel"])
def test_a_hung_cell_or_a_dead_kernel_is_named_by_the_cell_it_happened_in(tmp_path, how):
    """papermill marks every cell after a failure "completed": the run named the notebook's last cell (a markdown
    cell, 'cell 23') for a timeout in cell 12, where `--timeout` promises to name the cell that hung."""
    import nbformat

    stop = "import time; time.sleep(60)" if how == "timeout" else "import os, signal; os.kill(os.getpid(), 9)"
    params = nbformat.v4.new_code_cell("wait = 0  # seconds", metadata={"tags": ["parameters"]})
    cells = [nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell(stop),
             nbformat.v4.new_code_cell("print('after')"), nbformat.v4.new_markdown_cell("## end")]  # fmt: skip
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "hang.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": kernel}), path)
    run = notebooks.run_notebook(path, tmp_path / "out", timeout=5)
    assert run.status == "failed" and run.failed_cell == 2, run.error
    assert run.error.startswith(f"cell 2 failed: {'CellTimeoutError' if how == 'timeout' else 'DeadKernelError'}")


def test_output_problems_finds_a_widget_shown_as_its_repr(tmp_path):
    """A saved page has no widget renderer: a widget without HTML shows as 'VBox(children=(...' there; tqdm's bar
    (its text is the bar) and a widget that offers HTML are fine."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "m", "version_major": 2, "version_minor": 0}}
    outputs = [
        new_output("display_data", {**view, "text/plain": "VBox(children=(Dropdown(description='kind', options=…"}),
        new_output("display_data", {**view, "text/plain": "train (2 ranks): 100%|##########| 3/3 [00:25<00:00]"}),
        new_output("display_data", {**view, "text/html": "<p>kind = all</p>", "text/plain": "VBox(children=(…"}),
    ]
    nbformat.write(new_notebook(cells=[new_code_cell("w", outputs=outputs)]), tmp_path / "w.ipynb")
    problems = notebooks.output_problems(tmp_path / "w.ipynb")
    assert len(problems) == 1 and "widget" in problems[0] and "VBox(children=" in problems[0], problems


def _recorded_runs() -> tuple[list[str], dict[str, list[float]]]:
    """docs/benchmarks.md's table of notebook times: its run columns, and name -> that notebook's time in each."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    table = text.split("## Notebook times at their defaults", 1)[1].split("\n\n")[2].splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")][1:]
    rows = ([cell.strip() for cell in row.strip("|").split("|")] for row in table[2:])
    return header, {cells[0]: [float(cell) for cell in cells[1:]] for cells in rows}


def _range(values: list[float]) -> str:
    low, high = (f"{f(values):.0f}" for f in (min, max))
    return low if low == high else f"{low}-{high}"


def _recorded_times() -> dict[str, tuple[str, str]]:
    """name -> (the range of its every CPU run, of every H100 run), from docs/benchmarks.md's table."""
    header, runs = _recorded_runs()
    return {
        name: tuple(
            _range([t for run, t in zip(header, times) if run.startswith(machine)]) for machine in ("CPU", "H100")
        )
        for name, times in runs.items()
    }


def test_the_stated_times_are_the_recorded_runs():
    """Notebook 03 said '44.5 s on one H100' and took 67.9 s on an H100 at the same defaults, and 02 'about 31 s' on
    a CPU took 108 s on a CPU without native bf16: the Time line and the README give each notebook's range over every
    recorded CPU and H100 run, read from docs/benchmarks.md's table (one home)."""
    times, readme = _recorded_times(), (ROOT / "README.md").read_text()
    assert set(times) == {p.stem for p in ALL}
    for path in ALL:
        cpu, gpu = times[path.stem]
        head = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert f"{cpu} s on an idle 2-core CPU machine and {gpu} s on one H100" in head, path.stem
        assert f"| `{path.stem}` |" in readme and f"| {cpu} s | {gpu} s |" in readme, path.stem
    # the instructor's guide says what all eight chapters add up to on a CPU: it said "about 127 s" after a CPU run of
    # 244 s had been recorded
    header, runs = _recorded_runs()
    # to the table's 0.1 s: Python 3.12's sum() compensates rounding (231.5), 3.11's did not (231.49999...: "231")
    totals = [round(sum(t[i] for t in runs.values()), 1) for i, run in enumerate(header) if run.startswith("CPU")]
    guide = " ".join((ROOT / "docs" / "instructor.md").read_text().split())
    assert f"The CPU column adds up to {_range(totals)} s of running time for all eight chapters" in guide, totals

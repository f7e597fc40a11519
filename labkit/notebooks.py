"""The kit's notebooks: build each .ipynb from its Jupytext percent script, run them headless, report the runs.

`run_all` is what `labkit run`, `make run` and tests/test_notebooks.py use, so the suite exercises the path users take:
parameters are checked before any kernel starts; each executed notebook is kept with its HTML, listed in index.html.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import functools
import html
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

from labkit import pages, procs, results, tabular
from labkit.errors import ConfigError, make_folder

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"  # a source checkout or editable install
NOTEBOOKS_ENV = "LABKIT_NOTEBOOKS"  # where an installed kit finds them (the lab image sets it)


def notebooks_dir() -> Path:
    """The kit's notebooks: $LABKIT_NOTEBOOKS, else notebooks/ beside the package."""
    return Path(os.environ.get(NOTEBOOKS_ENV) or NOTEBOOKS_DIR)


_BOOLS = {**dict.fromkeys(("true", "yes", "1", "on"), True), **dict.fromkeys(("false", "no", "0", "off"), False)}
_SCALARS = {"int": int, "float": float, "bool": lambda text: _BOOLS[text.lower()]}


@dataclass
class NotebookRun:
    name: str
    source: str
    status: str = "pending"  # passed | failed
    duration_s: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    html: str = ""
    error: str | None = None
    failed_cell: int | None = None
    results: dict[str, Any] = field(default_factory=dict)
    noise: list[str] = field(default_factory=list)  # output_problems(): what a learner should not have to read
    finding: str = ""  # the first sentence of the chapter's "What this run showed", as the run wrote it

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def discover(directory: str | Path | None = None) -> list[Path]:
    """Every notebook of the kit, in chapter order (the paired .py sources are not notebooks)."""
    return sorted(p for p in Path(directory or notebooks_dir()).glob("*.ipynb") if not p.name.startswith("."))


def select(names: Iterable[str]) -> list[Path]:
    """Notebook paths from paths (a notebook or its .py source) or stems ("02", "02_zero_stage_comparison")."""
    found: list[Path] = []
    available = discover()
    for name in names:
        if Path(name).suffix in (".ipynb", ".py") and Path(name).with_suffix(".ipynb").is_file():
            found.append(Path(name).with_suffix(".ipynb"))  # only after the suffix test: '', '.' have no name for one
            continue
        matches = [p for p in available if p.stem == name or p.stem.startswith(f"{name}_")]
        if not available:  # an installed kit (a wheel has no notebooks/): where they are is the fix
            fix = f"set {NOTEBOOKS_ENV} to the kit's notebooks folder (a source checkout's notebooks/), or pass a path"
            raise ConfigError("notebook", f"no notebooks found in {notebooks_dir()}", fix)
        if len(matches) != 1:
            listing = ", ".join(p.stem for p in available)
            raise ConfigError("notebook", f"{name!r} matches {len(matches)} notebooks", f"name one of: {listing}")
        found.append(matches[0])
    return found


def declared_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's parameters as papermill sees them: name -> {inferred_type_name, default, help}."""
    import papermill

    return papermill.inspect_notebook(str(path))


def test_parameters(path: str | Path) -> dict[str, Any]:
    """Small CPU parameters a notebook declares for the test suite (metadata `labkit.test_parameters`)."""
    return dict(json.loads(Path(path).read_text())["metadata"].get("labkit", {}).get("test_parameters", {}))


def coerce(value: Any, type_name: str, *, name: str, notebook: str) -> Any:
    """Turn a command-line string into the declared type of a parameter (str, Literal and untyped stay text); a value
    already typed (a suite's YAML, a notebook call) must be of the declared type (bools are no numbers here)."""
    t = (type_name or "None").replace(" ", "")
    fix = f"pass a {t} value, e.g. see `labkit params {notebook}`"
    if not isinstance(value, str):
        want = {"int": int, "float": (int, float), "bool": bool}.get(t)
        if want is not None and (not isinstance(value, want) or (t != "bool" and isinstance(value, bool))):
            raise ConfigError(f"{notebook}: parameter {name}", f"{value!r} is not a {t}", fix)
        return value
    try:
        if t in _SCALARS:
            return _SCALARS[t](value)
        if t.startswith(("list", "dict", "tuple", "List", "Dict")):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(value)
            return ast.literal_eval(value)
    except (ValueError, SyntaxError, KeyError) as exc:
        raise ConfigError(f"{notebook}: parameter {name}", f"{value!r} is not a valid {t}", fix) from exc
    if "|" in t or t.startswith(("Optional", "Union")):  # e.g. `str | None`: None or a JSON scalar, else the text
        with contextlib.suppress(json.JSONDecodeError):
            return None if value.lower() in ("none", "null") else json.loads(value)
    return value


def check_parameters(path: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Refuse parameters the notebook does not declare; coerce the rest to the declared types."""
    declared = declared_parameters(path)
    if unknown := sorted(set(parameters) - set(declared)):
        fix = f"use one of: {', '.join(declared) or '(none)'} (see `labkit params {path}`)"
        raise ConfigError(f"{path.name}: parameter {', '.join(unknown)}", "not declared by this notebook", fix)
    types = {k: d.get("inferred_type_name", "None") for k, d in declared.items()}
    return {k: coerce(v, types[k], name=k, notebook=path.name) for k, v in parameters.items()}


def parameters_per_notebook(notebooks: list[Path], parameters=None, *, use_test_parameters=False, optional=None):
    """Checked parameters per notebook, before anything runs: `parameters` apply where declared (each must be declared
    by at least one of the notebooks), `optional` (e.g. the backend) only where declared."""
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    if unknown := [k for k in parameters or {} if not any(k in d for d in declared.values())]:
        names = ", ".join(p.name for p in notebooks)
        fix = "check the names with `labkit params NOTEBOOK`"
        raise ConfigError(f"parameter {', '.join(unknown)}", f"not declared by {names}", fix)
    given = {**(optional or {}), **(parameters or {})}
    base = {nb: test_parameters(nb) if use_test_parameters else {} for nb in notebooks}
    return {nb: check_parameters(nb, base[nb] | {k: given[k] for k in given.keys() & declared[nb]}) for nb in notebooks}


def _last_started_cell(output: Path) -> int | None:
    """The index of the last cell papermill started in `output` (after a failure papermill marks every later cell
    "completed" too; only started cells have a start_time)."""
    if not output.exists():
        return None
    marks = [c["metadata"].get("papermill", {}) for c in json.loads(output.read_text())["cells"]]
    return max((i for i, m in enumerate(marks) if m.get("start_time")), default=None)


def _failure(exc: BaseException, output: Path) -> tuple[int | None, str]:
    """(index of the failing cell, error text) for a failed papermill execution."""
    cell = getattr(exc, "cell_index", None)
    if cell is None:  # a timeout or a dead kernel: the last cell papermill started
        cell = _last_started_cell(output)
    explained = {"CellTimeoutError": "the cell did not finish in time", "DeadKernelError": "the kernel died"}
    name, first_line = type(exc).__name__, (str(exc).splitlines() or [""])[0]
    text = f"{exc.ename}: {exc.evalue}" if hasattr(exc, "ename") else f"{name}: {explained[name]} ({first_line})"
    return cell, f"{'a cell' if cell is None else f'cell {cell}'} failed: {text.strip()}"


def run_notebook(
    path: Path, out_dir, parameters=None, *, timeout=None, progress=False, log_output=False, stem_suffix: str = ""
):  # fmt: skip
    """Execute one notebook into `out_dir` -> NotebookRun; never raises for a failing cell (the run says so).
    `stem_suffix` names the files of a second run of the same notebook apart."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from labkit import kernels  # jupyter_client: only where a notebook runs

    parameters = check_parameters(path, parameters or {})
    out_dir = Path(out_dir).resolve()  # the kernel runs in work_dir: a relative LABKIT_RUN_DIR would point nowhere
    name = path.stem + stem_suffix
    work_dir = out_dir / f"{name}.work"  # files a notebook writes land in the run, not the repo
    work_dir.mkdir(parents=True, exist_ok=True)
    output, html_path = out_dir / f"{name}.ipynb", out_dir / f"{name}.html"
    kernel_log = out_dir / f"{name}.kernel.log"
    kernel_log.unlink(missing_ok=True)  # appended to (a restarted kernel keeps its lines): not an earlier run's
    run = NotebookRun(name=name, source=str(path), parameters=parameters, output=str(output))
    flags = {"progress_bar": progress, "log_output": log_output, "execution_timeout": timeout}
    start, last_words = time.monotonic(), False  # last_words: the kernel's reason is its log's last line
    try:
        # The kernel's TMPDIR is its own, removed after it: what a kernel stopped at a deadline or killed left there
        # (DeepSpeed's compile probes, a library's scratch folder) goes with it. Its ranks' folders nest inside.
        run_env = procs.own_tmpdir({**os.environ, "LABKIT_RUN_DIR": str(work_dir)})
        with run_env as env, mock.patch.dict(os.environ, env), kernels.death_told_once():
            options = kernels.kernel_options(work_dir, kernel_log)
            papermill.execute_notebook(path, output, parameters=parameters, **options, **flags)
        run.status = "passed"
    except (PapermillExecutionError, CellTimeoutError, DeadKernelError) as exc:
        run.status, last_words = "failed", isinstance(exc, DeadKernelError)
        run.failed_cell, run.error = _failure(exc, output)
    except RuntimeError as exc:  # a kernel that did not start: its own reason is in its log, on no screen
        if (said := kernels.start_failure(exc)) is None:
            raise
        run.status, run.error, last_words = "failed", said, True
    except (KeyboardInterrupt, procs.Terminated) as exc:  # the CLI's one line says where the run stopped
        cell = _last_started_cell(output)
        exc.add_note(f"in {path.name} {'before its first cell' if cell is None else f'at cell {cell}'}; "
                     f"the notebook so far: {output if output.exists() else 'none written'}")  # fmt: skip
        raise
    if (note := kernels.log_note(kernel_log, last_words=last_words)) and not run.passed:  # (an empty log is removed)
        run.error += note
    run.duration_s = time.monotonic() - start
    if output.exists():
        run.results = results.read(output)
        run.noise = output_problems(output)
        run.finding = closing_finding(output)
        try:
            pages.write_page(output, html_path)
            run.html = str(html_path)
        except Exception as exc:  # a report problem must not hide the run's own status
            print(f"labkit: could not render {output.name} to HTML: {exc}", file=sys.stderr)
    return run


def new_run_dir(root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path(root) / stamp, 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def run_all(
    notebooks=None, parameters=None, *, out_dir=None, use_test_parameters=False, optional=None, per_notebook=None,
    **options,
):  # fmt: skip
    """Run notebooks in order into `out_dir` (default: a fresh runs/<timestamp>), keeping index.html and summary.json
    there up to date; `options` (timeout, progress, log_output) go to `run_notebook`. `per_notebook`: checked
    parameters for each notebook in turn (a suite; the same notebook may run twice). Returns (run dir, runs)."""
    notebooks = notebooks or discover()
    if not notebooks:
        fix = f"put .ipynb files in {notebooks_dir()}, or set {NOTEBOOKS_ENV} to the kit's notebooks folder"
        raise ConfigError("notebooks", "no notebooks found", fix)
    if per_notebook is None:
        checked = parameters_per_notebook(
            notebooks, parameters, use_test_parameters=use_test_parameters, optional=optional
        )
        notebooks, per_notebook = list(checked), list(checked.values())
    chosen = list(zip(notebooks, per_notebook, strict=True))
    run_dir = Path(out_dir) if out_dir else new_run_dir()
    make_folder(run_dir, "out")
    runs: list[NotebookRun] = []
    for i, (nb, params) in enumerate(chosen):
        earlier = sum(other == nb for other, _ in chosen[:i])  # a second run of one notebook gets its own files
        suffix = f"-{earlier + 1}" if earlier else ""
        print(f"labkit: running {nb.name} {json.dumps(params) if params else ''}", file=sys.stderr, flush=True)
        runs.append(run_notebook(nb, run_dir, params, **{"progress": True, **options, "stem_suffix": suffix}))
        status = "passed" if runs[-1].passed else f"FAILED ({runs[-1].error})"
        print(f"labkit: {nb.name}: {status} in {runs[-1].duration_s:.1f} s", file=sys.stderr, flush=True)
        write_report(run_dir, runs)
    return run_dir, runs


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>labkit report: {name}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em .7em;vertical-align:top}} tr.passed td:nth-child(2){{color:#080}}
tr.failed td:nth-child(2){{color:#b00;font-weight:bold}} pre{{white-space:pre-wrap;margin:0}}
div.failed{{color:#b00}}</style></head>
<body><h1>labkit report: {name}</h1>
<p>Machine: {machine}.</p>
<p>{passed} of {total} notebooks passed; total {seconds:.1f} s.</p>
<table><tr>{head}</tr>
{rows}
</table></body></html>
"""


_COLUMNS = ("notebook", "status", "duration", "parameters", "what it found", "error", "output noise", "expectations",
            "in JupyterLab (make e2e)")  # fmt: skip
_OPTIONAL = _COLUMNS.index("error")  # the columns from "error" on are shown only where some notebook fills them


def _link(path: str, text: str, anchor: str = "") -> str:
    """A link to a file beside the report (its name URL-quoted: `50%_done#1.html`), at `anchor` if given."""
    if not path:
        return html.escape(text)
    href = quote(Path(path).name) + (f"#{anchor}" if anchor else "")
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def attach_screenshots(run_dir: Path, source: str | Path, runs: list[NotebookRun]) -> int:
    """Copy the latest browser screenshots (`make e2e` writes <notebook>.png) of this run's notebooks into
    run_dir/screenshots, where the report shows them. Returns how many were found."""
    found = 0
    for run in runs:
        png = Path(source) / f"{Path(run.source).stem}.png"
        if png.is_file():
            (run_dir / "screenshots").mkdir(exist_ok=True)
            shutil.copy(png, run_dir / "screenshots" / f"{run.name}.png")
            found += 1
    return found


def write_report(run_dir: Path, runs: list[NotebookRun], outcomes=None) -> Path:
    """index.html: one row per notebook (status, duration, parameters, links, a suite's expectations; a column no
    notebook fills is left out, so a passing run's table fits a laptop's screen), plus summary.json. A failed cell
    links to that cell of the rendered notebook."""
    checked = {r.name: [o for o in outcomes or [] if o.notebook == r.name] for r in runs}
    summary = [asdict(r) | ({"expectations": [_outcome_dict(o) for o in checked[r.name]]} if checked[r.name] else {})
               for r in runs]  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table = []  # each notebook's cells, in _COLUMNS' order
    for r in runs:
        params = f"<code>{html.escape(json.dumps(r.parameters))}</code>" if r.parameters else "<i>defaults</i>"
        error = f"<pre>{html.escape(r.error)}</pre>" if r.error else ""
        failed = _cell_id(r.output, r.failed_cell) if r.error and r.html else None
        if failed:  # nbconvert's lab template anchors each cell as id="cell-id=<the cell's id>"
            error += _link(r.html, "the failed cell", f"cell-id={failed}")
        links = f"{_link(r.html, r.name)} ({_link(r.output, 'ipynb')})"
        noise = f"<pre>{html.escape(chr(10).join(r.noise))}</pre>" if r.noise else ""
        expect = "".join(
            f'<div class="{"passed" if o.passed else "failed"}">{"ok" if o.passed else "FAILED"}: '
            f"{html.escape(o.expectation.describe())}{' (' + html.escape(o.message or _measured(o)) + ')'}"
            f"{'' if o.passed else _recording_cell_link(r, o.expectation.result)}</div>"
            for o in checked.get(r.name, [])
        )
        shot = f"screenshots/{html.escape(quote(r.name))}.png"
        picture = f'<a href="{shot}"><img src="{shot}" width="160" alt="in JupyterLab"></a>'
        picture = picture if (run_dir / "screenshots" / f"{r.name}.png").is_file() else ""
        found = html.escape(r.finding) or f"<i>{len(r.results)} result(s) recorded</i>"
        table.append([links, r.status, f"{r.duration_s:.1f} s", params, found, error, noise, expect, picture])
    shown = [i for i in range(len(_COLUMNS)) if i < _OPTIONAL or any(cells[i] for cells in table)]
    head = "".join(f"<th>{_COLUMNS[i]}</th>" for i in shown)
    rows = [f'<tr class="{c[1]}">' + "".join(f"<td>{c[i]}</td>" for i in shown) + "</tr>" for c in table]
    stats = {"passed": sum(r.passed for r in runs), "total": len(runs), "seconds": sum(r.duration_s for r in runs)}
    machine = html.escape(_machine())
    page = _PAGE.format(name=html.escape(run_dir.name), head=head, rows="".join(rows), machine=machine, **stats)
    (run_dir / "index.html").write_text(page)
    return run_dir / "index.html"


def _measured(outcome) -> str:
    value = outcome.measured
    return f"measured {value:,.4g}" if isinstance(value, float) else f"measured {value!r}"


@functools.cache
def _machine() -> str:
    from labkit.devices import machine_summary

    try:
        return machine_summary()
    except Exception as exc:  # noqa: BLE001 - the report must not fail over a description
        return f"not identified ({type(exc).__name__})"


def _recording_cell_link(run: NotebookRun, dotted: str) -> str:
    """' (the cell)': a link to the cell that recorded the result an expectation read; '' when there is none."""
    try:
        cell_id = results.cell_of(run.output, dotted.split(".")[0]) if run.html and run.output else None
    except (OSError, ValueError):
        cell_id = None
    return f" ({_link(run.html, 'the cell', f'cell-id={cell_id}')})" if cell_id else ""


def _cell_id(executed: str, index: int | None) -> str | None:
    try:
        return json.loads(Path(executed).read_text())["cells"][index].get("id") if index is not None else None
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None


def _outcome_dict(outcome) -> dict[str, Any]:
    e = outcome.expectation
    return {"result": e.result, "checks": e.checks, "passed": outcome.passed, "measured": outcome.measured,
            "message": outcome.message}  # fmt: skip


# What a learner must never see in an executed notebook: (what, marker). Each has a fix at its source, not a filter.
NOISE = (
    ("a figure shown as text (no inline backend)", "<Figure size "),
    ("DeepSpeed's accelerator notice", "Setting accelerator to"),
    ("op build noise", "built successfully"),
    ("linker noise from an op probe", "collect2: error"),
    ("linker noise from an op probe", "cannot find -l"),
    ("a FutureWarning", "FutureWarning: "),
    ("a DeprecationWarning", "DeprecationWarning: "),
    ("a UserWarning", "UserWarning: "),
    ("a RuntimeWarning", "RuntimeWarning: "),
    ("a progress bar written as text (no widget)", "it/s]"),
    ("the kernel's transport warning", "without encryption"),
    ("torch's reverse-DNS warning (a rendezvous off loopback)", "The hostname of the client socket cannot be"),
    ("a Python traceback", "Traceback (most recent call last)"),
)
_WIDGET_REPR = re.compile(r"[A-Z]\w*\((children|value|description|options)=")  # ipywidgets' repr; tqdm's is the bar
MAX_OUTPUT_LINES = 150  # a longer single output is a dump, not a lesson

CLOSING_HEADING = "## What this run showed"


def closing_finding(path: str | Path, limit: int = 300) -> str:
    """The first sentence of what the closing cell (the code cell after the "What this run showed" heading) displayed,
    Markdown emphasis removed: the report's one-line finding for the notebook. '' when the cell did not run."""
    cells = json.loads(Path(path).read_text())["cells"]
    heading = next((i for i, c in enumerate(cells) if "".join(c["source"]).startswith(CLOSING_HEADING)), None)
    code = next((c for c in cells[heading + 1 :] if c["cell_type"] == "code"), None) if heading is not None else None
    for out in (code or {}).get("outputs", []):
        data = out.get("data", {})
        text = data.get("text/markdown") or out.get("text") or data.get("text/plain") or ""
        text = ("".join(text) if isinstance(text, list) else text).replace("**", "").replace("`", "")
        text = " ".join(text.lstrip("- ").split())
        if text:
            end = text.find(". ")
            sentence = text if end < 0 else text[: end + 1]
            return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"
    return ""


def output_problems(path: str | Path) -> list[str]:
    """Noise in an executed notebook's outputs: NOISE markers, internal absolute paths, over-long outputs.

    Returns one line per problem ("cell 7: a FutureWarning: ..."); [] for a clean notebook."""
    internal = {path for path, short in tabular.INTERNAL_PATHS if short != "~"} | {os.path.expanduser("~/.cache")}
    found = []
    for i, cell in enumerate(json.loads(Path(path).read_text())["cells"]):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                continue  # a figure's text/plain fallback is not shown
            # what is shown: the text, else the richest form (Markdown, HTML), and an error's traceback
            shown = (
                out.get("text") or data.get("text/markdown") or data.get("text/html") or data.get("text/plain") or ""
            )
            text = "".join(shown) if isinstance(shown, list) else shown
            if out.get("output_type") == "error":
                text += f"\n{out.get('ename')}: {out.get('evalue')}\n" + "\n".join(out.get("traceback") or [])
            if pages.WIDGET_VIEW in data and _WIDGET_REPR.match(text):  # the page's only form of a widget without HTML
                found.append(f"cell {i}: a widget shown as its repr (give it HTML: labkit.controls): {text[:80]}")
            bare_result = out.get("output_type") == "execute_result" and data.keys() == {"text/plain"}
            if bare_result and text.startswith(("{", "[")):
                found.append(f"cell {i}: a value's repr as the cell's result (a table, or `;` after it): {text[:80]}")
            for what, marker in NOISE:
                if marker in text:
                    line = next(ln for ln in text.splitlines() if marker in ln)
                    found.append(f"cell {i}: {what}: {line.strip()[:160]}")
            found += [f"cell {i}: an internal path ({p})" for p in internal if p and p in text]
            plain = not data.keys() & {"text/markdown", "text/html"}  # HTML's lines are not lines seen (<details>)
            if plain and text.count("\n") > MAX_OUTPUT_LINES:
                found.append(f"cell {i}: an output of {text.count(chr(10))} lines (more than {MAX_OUTPUT_LINES})")
    return found


# -- sources: each notebook is built from its Jupytext percent script, without outputs and with stable cell ids --


def sources(directory: str | Path | None = None) -> list[Path]:
    """The percent scripts the notebooks are built from (notebooks/NN_name.py, paired in notebooks/jupytext.toml)."""
    return sorted(Path(directory or notebooks_dir()).glob("[0-9]*.py"))


def build(source: str | Path):
    """The notebook a percent script describes: the script's header metadata (kernelspec, `labkit.test_parameters`),
    no outputs, and cell ids `{labkit.cell_id_prefix}-{index:02d}` so a rebuilt notebook diffs cleanly."""
    import jupytext
    import nbformat

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata.pop("jupytext", None)  # the pairing lives in notebooks/jupytext.toml
    for i, cell in enumerate(nb.cells):
        cell.id = f"{nb.metadata['labkit']['cell_id_prefix']}-{i:02d}"
    nbformat.validate(nb)
    return nb


def has_outputs(path: str | Path) -> bool:
    return any(c.get("outputs") or c.get("execution_count") for c in json.loads(Path(path).read_text())["cells"])


if __name__ == "__main__":  # python -m labkit.notebooks build [SOURCE.py ...]: write each paired .ipynb (default: all)
    import nbformat

    if sys.argv[1:2] != ["build"]:
        sys.exit("usage: python -m labkit.notebooks build [SOURCE.py ...]")
    for source in sys.argv[2:] or sources():
        nbformat.write(build(source), Path(source).with_suffix(".ipynb"))
        print(f"built {Path(source).with_suffix('.ipynb')}")

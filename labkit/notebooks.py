"""Run the kit's notebooks headless with papermill and write an HTML report.

`run_all` is what `labkit run` and `make run` call and what tests/test_notebooks.py uses, so the suite exercises the very
path users take: parameters are checked against the notebook's declared ones before any kernel starts, every executed
notebook is kept with an HTML rendering, and `index.html` lists status, duration and parameters of each.
"""
from __future__ import annotations

import ast
import datetime as _dt
import html
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from labkit.errors import ConfigError, LabkitError

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass
class NotebookRun:
    """The outcome of one executed notebook."""

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

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class NotebookFailed(LabkitError):
    """One or more notebooks failed; the message names each notebook, cell and error."""

    def __init__(self, runs: list[NotebookRun]):
        self.runs = runs
        lines = [f"{r.source}: {r.error}" for r in runs if not r.passed]
        super().__init__("notebook run failed:\n  " + "\n  ".join(lines))


def discover(directory: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """Every notebook of the kit, in chapter order."""
    return sorted(p for p in Path(directory).glob("*.ipynb") if not p.name.startswith("."))


def resolve(names: Iterable[str]) -> list[Path]:
    """Notebook paths from paths or stems ("02", "02_zero_stage_comparison", "notebooks/02_...ipynb")."""
    found: list[Path] = []
    available = discover()
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            found.append(path)
            continue
        matches = [p for p in available if p.stem == name or p.stem.startswith(f"{name}_")]
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
    nb = json.loads(Path(path).read_text())
    return dict(nb.get("metadata", {}).get("labkit", {}).get("test_parameters", {}))


def coerce(value: Any, type_name: str, *, name: str, notebook: str) -> Any:
    """Turn a command-line string into the declared type of a parameter."""
    if not isinstance(value, str):
        return value
    t = (type_name or "None").replace(" ", "")
    try:
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            low = value.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(value)
        if t == "str" or t.startswith("Literal"):
            return value
        if t.startswith(("list", "dict", "tuple", "List", "Dict")):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        raise ConfigError(f"{notebook}: parameter {name}", f"{value!r} is not a valid {t}",
                          f"pass a {t} value, e.g. see `labkit params {notebook}`") from exc
    if "|" in t or t.startswith(("Optional", "Union")):  # e.g. `str | None`: try JSON scalars, else keep the string
        if value.lower() in ("none", "null"):
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def check_parameters(path: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Refuse parameters the notebook does not declare; coerce the rest to the declared types."""
    declared = declared_parameters(path)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ConfigError(f"{path.name}: parameter {', '.join(unknown)}", "not declared by this notebook",
                          f"use one of: {', '.join(declared) or '(none)'} (see `labkit params {path}`)")
    return {k: coerce(v, declared[k].get("inferred_type_name", "None"), name=k, notebook=path.name)
            for k, v in parameters.items()}


def _failed_cell(output_nb: Path) -> int | None:
    """Index of the cell papermill marked as raising, read from the partial output notebook."""
    try:
        nb = json.loads(output_nb.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    cells = nb.get("cells", [])
    for i, cell in enumerate(cells):
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            return i
    # A timeout or a dead kernel marks nothing: the failing cell is the last one papermill started.
    started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("status") not in
               (None, "pending")]
    return started[-1] if started else None


def _error_text(exc: BaseException) -> str:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"{exc.ename}: {exc.evalue}".strip()
    if isinstance(exc, CellTimeoutError):
        return f"CellTimeoutError: cell did not finish in time ({str(exc).splitlines()[0] if str(exc) else ''})"
    if isinstance(exc, DeadKernelError):
        return f"DeadKernelError: the kernel died ({exc})"
    return f"{type(exc).__name__}: {exc}"


def to_html(executed: Path, html_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    html_path.write_text(body)


def run_notebook(path: Path, out_dir: Path, parameters: dict[str, Any] | None = None, *,
                 timeout: float | None = None, progress: bool = False, log_output: bool = False,
                 kernel_name: str = "python3") -> NotebookRun:
    """Execute one notebook into `out_dir`; never raises for a failing cell (the run says so)."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from labkit import results

    parameters = check_parameters(path, parameters or {})
    out_dir = Path(out_dir).resolve()  # the kernel runs in work_dir: a relative LABKIT_RUN_DIR would point nowhere
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / f"{path.stem}.work"  # files a notebook writes land in the run, not the repo
    work_dir.mkdir(exist_ok=True)
    output = out_dir / path.name
    run = NotebookRun(name=path.stem, source=str(path), parameters=parameters, output=str(output))
    start = time.monotonic()
    env_before = os.environ.get("LABKIT_RUN_DIR")
    os.environ["LABKIT_RUN_DIR"] = str(work_dir)
    try:
        papermill.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(work_dir), progress_bar=progress, log_output=log_output,
                                   execution_timeout=timeout, start_timeout=120)
        run.status = "passed"
    except (PapermillExecutionError, CellTimeoutError, DeadKernelError) as exc:
        run.status = "failed"
        run.failed_cell = getattr(exc, "cell_index", None)
        if run.failed_cell is None:
            run.failed_cell = _failed_cell(output)
        where = f"cell {run.failed_cell}" if run.failed_cell is not None else "a cell"
        run.error = f"{where} failed: {_error_text(exc)}"
    finally:
        if env_before is None:
            os.environ.pop("LABKIT_RUN_DIR", None)
        else:
            os.environ["LABKIT_RUN_DIR"] = env_before
        run.duration_s = time.monotonic() - start
    if output.exists():
        run.results = results.read(output)
        html_path = out_dir / f"{path.stem}.html"
        try:
            to_html(output, html_path)
            run.html = str(html_path)
        except Exception as exc:  # a report problem must not hide the run's own status
            print(f"labkit: could not render {output.name} to HTML: {exc}", file=sys.stderr)
    return run


def new_run_dir(root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def plan(notebooks: list[Path], parameters: dict[str, Any], *, use_test_parameters: bool = False,
         optional: dict[str, Any] | None = None) -> dict[Path, dict[str, Any]]:
    """Parameters per notebook: `parameters` apply where declared (each must be declared by at least one selected
    notebook), `optional` (e.g. the backend) only where declared; all checked before anything runs."""
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    unknown = [k for k in parameters if not any(k in d for d in declared.values())]
    if unknown:
        names = ", ".join(p.name for p in notebooks)
        raise ConfigError(f"parameter {', '.join(unknown)}", f"not declared by {names}",
                          "check the names with `labkit params NOTEBOOK`")
    per_nb: dict[Path, dict[str, Any]] = {}
    for nb in notebooks:
        chosen = dict(test_parameters(nb)) if use_test_parameters else {}
        chosen.update({k: v for k, v in (optional or {}).items() if k in declared[nb]})
        chosen.update({k: v for k, v in parameters.items() if k in declared[nb]})
        per_nb[nb] = check_parameters(nb, chosen)
    return per_nb


def run_all(notebooks: list[Path] | None = None, parameters: dict[str, Any] | None = None, *,
            out_dir: str | Path | None = None, use_test_parameters: bool = False, optional: dict[str, Any] | None = None,
            timeout: float | None = None, progress: bool = True, log_output: bool = False) -> tuple[Path, list[NotebookRun]]:
    """Run notebooks in order into a fresh run directory; write index.html and summary.json there."""
    notebooks = notebooks or discover()
    if not notebooks:
        raise ConfigError("notebooks", "no notebooks found", f"put .ipynb files in {NOTEBOOKS_DIR}")
    per_nb = plan(notebooks, parameters or {}, use_test_parameters=use_test_parameters, optional=optional)
    run_dir = Path(out_dir) if out_dir else new_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    runs: list[NotebookRun] = []
    for nb, params in per_nb.items():
        print(f"labkit: running {nb.name} {json.dumps(params) if params else ''}", file=sys.stderr, flush=True)
        run = run_notebook(nb, run_dir, params, timeout=timeout, progress=progress, log_output=log_output)
        status = "passed" if run.passed else f"FAILED ({run.error})"
        print(f"labkit: {nb.name}: {status} in {run.duration_s:.1f} s", file=sys.stderr, flush=True)
        runs.append(run)
        write_report(run_dir, runs)
    return run_dir, runs


def write_report(run_dir: Path, runs: list[NotebookRun]) -> Path:
    """index.html: one row per notebook (status, duration, parameters, links), plus summary.json."""
    (run_dir / "summary.json").write_text(json.dumps([asdict(r) for r in runs], indent=2, default=str))
    rows = []
    for r in runs:
        link = f'<a href="{html.escape(Path(r.html).name)}">{html.escape(r.name)}</a>' if r.html else html.escape(r.name)
        nb_link = f'<a href="{html.escape(Path(r.output).name)}">ipynb</a>' if r.output else ""
        params = html.escape(json.dumps(r.parameters)) if r.parameters else "<i>defaults</i>"
        err = f"<pre>{html.escape(r.error)}</pre>" if r.error else ""
        rows.append(f'<tr class="{r.status}"><td>{link} ({nb_link})</td><td>{r.status}</td>'
                    f"<td>{r.duration_s:.1f} s</td><td><code>{params}</code></td><td>{len(r.results)}</td><td>{err}</td></tr>")
    passed = sum(r.passed for r in runs)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>labkit run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em .7em;vertical-align:top}} tr.passed td:nth-child(2){{color:#080}}
tr.failed td:nth-child(2){{color:#b00;font-weight:bold}} pre{{white-space:pre-wrap;margin:0}}</style></head>
<body><h1>labkit run {html.escape(run_dir.name)}</h1>
<p>{passed} of {len(runs)} notebooks passed; total {sum(r.duration_s for r in runs):.1f} s.</p>
<table><tr><th>notebook</th><th>status</th><th>duration</th><th>parameters</th><th>results recorded</th><th>error</th></tr>
{''.join(rows)}
</table></body></html>
"""
    index = run_dir / "index.html"
    index.write_text(page)
    return index


# -- keeping notebooks output-free in git ------------------------------------------------------------------------

def has_outputs(path: str | Path) -> bool:
    nb = json.loads(Path(path).read_text())
    return any(c.get("outputs") or c.get("execution_count") for c in nb.get("cells", []) if c.get("cell_type") == "code")


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts (tags and other metadata stay). Returns True if the file changed."""
    p = Path(path)
    nb = json.loads(p.read_text())
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            cell["outputs"], cell["execution_count"] = [], None
            changed = True
        for key in ("execution", "papermill"):
            if cell.get("metadata", {}).pop(key, None) is not None:
                changed = True
    if changed:
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def _main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "strip":
        for path in argv[1:]:
            if strip_outputs(path):
                print(f"stripped {path}")
        return 0
    print("usage: python -m labkit.notebooks strip NOTEBOOK...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

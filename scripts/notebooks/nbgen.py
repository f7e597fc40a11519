"""Shared by the notebook generators: turn a list of cells into an output-free notebook with stable cell ids.

Each generator (scripts/notebooks/NN_name.py) defines `build()` with this helper; `python scripts/notebooks/NN_name.py`
writes notebooks/NN_name.ipynb, and tests/test_notebook_sources.py checks that the committed notebook is what its
generator builds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def build(cells: list, *, id_prefix: str, test_parameters: dict[str, Any]) -> nbformat.NotebookNode:
    """cells: ("md" | "params" | "code", source) pairs, or nbformat cells (a code cell tagged `parameters` counts)."""
    built = []
    for i, cell in enumerate(cells):
        if isinstance(cell, tuple):
            kind, source = cell
            cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
        cell.id = f"{id_prefix}-{i:02d}"
        built.append(cell)
    nb = new_notebook(cells=built, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
        "labkit": {"test_parameters": test_parameters},
    })
    nbformat.validate(nb)
    return nb


def write(nb: nbformat.NotebookNode, name: str) -> Path:
    out = NOTEBOOKS / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    print(f"wrote {out}")
    return out

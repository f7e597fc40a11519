"""Each committed notebook is exactly what its generator (scripts/notebooks/NN_name.py) builds, and every notebook
has a generator: edit the generator, run it, commit both."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATORS = ROOT / "scripts" / "notebooks"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load_generator(stem: str):
    path = GENERATORS / f"{stem}.py"
    assert path.is_file(), f"{stem}.ipynb has no generator at {path}"
    sys.path.insert(0, str(GENERATORS))
    try:
        spec = importlib.util.spec_from_file_location(f"nbgen_{stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # the generators write only under __main__
    finally:
        sys.path.remove(str(GENERATORS))
    return module


def normalized(nb: dict) -> list[tuple]:
    def text(source):
        return "".join(source) if isinstance(source, list) else source
    return [(c["cell_type"], c.get("id"), text(c["source"]), c.get("metadata", {})) for c in nb["cells"]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_matches_its_generator(path):
    built = json.loads(json.dumps(load_generator(path.stem).build()))
    committed = json.loads(path.read_text())
    assert normalized(committed) == normalized(built), f"regenerate: python scripts/notebooks/{path.stem}.py"
    assert committed["metadata"] == built["metadata"]

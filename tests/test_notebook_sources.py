"""Each notebook is built from its Jupytext percent script (notebooks/NN_name.py): edit the script (or the notebook in
JupyterLab, which keeps the pair in sync), run `make notebooks`, commit both."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from labkit import notebooks

NOTEBOOKS = notebooks.discover()
SOURCES = notebooks.sources()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_what_its_source_builds(path):
    source = path.with_suffix(".py")
    assert source.is_file(), f"{path.name} has no percent-script source at {source}"
    built = json.loads(nbformat.writes(notebooks.build(source)))
    committed = json.loads(path.read_text())
    assert committed == built, f"rebuild: make notebooks (python -m labkit.notebooks build {source.name})"
    assert [c["id"] for c in built["cells"]] == [
        f"{built['metadata']['labkit']['cell_id_prefix']}-{i:02d}" for i in range(len(built["cells"]))
    ]


def test_every_source_has_its_notebook_and_no_source_is_mistaken_for_one():
    assert SOURCES and [s.with_suffix(".ipynb") for s in SOURCES] == NOTEBOOKS
    assert all(p.suffix == ".ipynb" for p in notebooks.discover())
    assert notebooks.select([str(SOURCES[0])]) == [NOTEBOOKS[0]], "a source path runs its paired notebook"


def test_build_takes_tags_and_test_parameters_from_the_script(tmp_path):
    source = tmp_path / "09_demo.py"
    source.write_text(
        "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
        "#     name: python3\n"
        "#   labkit:\n#     cell_id_prefix: demo\n#     test_parameters:\n#       n: 1\n# ---\n\n"
        '# %% [markdown]\n# # Demo\n\n# %% tags=["parameters"]\nn: int = 3  # a number\n\n# %%\n# %matplotlib inline\n'
        "print(n)\n"
    )
    nb = notebooks.build(source)
    assert [(c.cell_type, c.id) for c in nb.cells] == [
        ("markdown", "demo-00"),
        ("code", "demo-01"),
        ("code", "demo-02"),
    ]
    assert nb.cells[1].metadata == {"tags": ["parameters"]} and nb.cells[2].source.startswith("%matplotlib inline")
    assert nb.metadata["labkit"]["test_parameters"] == {"n": 1} and "jupytext" not in nb.metadata
    subprocess.run([sys.executable, "-m", "labkit.notebooks", "build", str(source)], check=True)  # `make notebooks`
    assert notebooks.test_parameters(source.with_suffix(".ipynb")) == {"n": 1}
    assert not notebooks.has_outputs(source.with_suffix(".ipynb"))


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_a_solution_cell_does_not_answer_as_the_learner(source):
    """A solution cell that feeds the answer to the prediction check shows 'Your prediction: 2; ...: right' to a
    learner who predicted nothing: it states the answer and why (exercises.solution)."""
    for cell in notebooks.build(source).cells:
        if "solution" in cell.metadata.get("tags", []):
            assert "_prediction(" not in cell.source and "verdict(" not in cell.source, cell.source


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_prose_compares_bytes_in_one_unit_system(source):
    """'558,331 KiB allocated against 336.48 MB' reads as 1,660x: a sentence that sets two amounts side by side
    writes both in decimal (kB, MB, GB) or both in binary (KiB, MiB, GiB) units."""
    import re

    binary, decimal = re.compile(r"\d\s*(KiB|MiB|GiB)\b"), re.compile(r"\d\s*(kB|MB|GB)\b")
    for cell in notebooks.build(source).cells:
        if cell.cell_type == "markdown":
            for sentence in re.split(r"(?<=[.;:])\s", cell.source):
                assert not (binary.search(sentence) and decimal.search(sentence)), sentence


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_job_commands_name_the_labs_namespace_not_the_shared_one(source):
    """In a learner's own lab (LABKIT_NAMESPACE=alice) `-n workloads` is refused (403): a notebook's code takes a job's
    namespace from manifests.default_namespace(), as the CLI does, never the shared lab's NAMESPACES or a literal."""
    for cell in notebooks.build(source).cells:
        if cell.cell_type == "code":
            code = "\n".join(line.split("#")[0] for line in cell.source.splitlines())  # comments may say it
            assert "NAMESPACES[" not in code and '"workloads' not in code and "'workloads" not in code, cell.source

"""The HTML page of an executed notebook (`labkit run`'s report links one per notebook): what a reader of the page
sees offline, without a kernel or the internet."""

from __future__ import annotations

from pathlib import Path

from labkit import results

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# nbconvert's lab template leaves a PNG's alt out and its exporter then writes "No description has been provided for
# this image" for every figure: the kit's figures carry their description in the output's metadata
# (labkit.plots.figure), which this template puts in the page.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block data_png scoped -%}
{%- set alt = output | get_metadata('alt', 'image/png') -%}
{%- if alt -%}{{ super() | replace('<img ', '<img alt="' ~ (alt | escape_html) ~ '" ', 1) }}
{%- else -%}{{ super() }}{%- endif -%}
{%- endblock data_png -%}
"""


def write_page(notebook: Path, page: Path) -> None:
    """`notebook` (executed) as an HTML page at `page`: values recorded for tests and reports are left out (nbconvert
    would warn of their type), a widget shows its text (its view is a script fetching a renderer online), a figure
    its description as the image's alt text."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        cell["outputs"] = [o for o in cell.get("outputs", []) if set(o.get("data", {})) != {results.MIME_TYPE}]
        for o in cell["outputs"]:
            o.get("data", {}).pop(WIDGET_VIEW, None)
    nb.metadata.pop("widgets", None)
    loader = jinja2.DictLoader({"labkit_page.html.j2": _TEMPLATE})
    exporter = HTMLExporter(template_name="lab", extra_loaders=[loader], template_file="labkit_page.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    page.write_text(body)

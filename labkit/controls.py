"""Live controls for the notebooks: ipywidgets whose changes re-render an HTML view.

Not `ipywidgets.interact`: interact renders into an Output widget, and a headless run (papermill, nbclient) mimics
that widget by sending its state back to the kernel on the shell channel while it waits on that channel for the
cell's `execute_reply` (nbclient `output_widget.py`, `OutputWidget.sync_state`; reported as nbclient issue 312). On
the lent H200 machine notebook 05 waited there for ever, 3 runs of 3. The view here is an HTML widget whose value the
kernel sets: a headless client stores its state and sends nothing back.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as widgets

from labkit.errors import LabkitError


def live_html(render: Callable[..., str], **controls: widgets.ValueWidget) -> widgets.VBox:
    """The controls above an HTML view of `render(**values)`, re-rendered whenever a control's value changes.

    Each control's description defaults to its keyword. A LabkitError from `render` (e.g. a size the learner typed
    that does not parse) shows as its one line in the view instead of a traceback."""
    view = widgets.HTML()

    def update(_change: object = None) -> None:
        try:
            view.value = render(**{name: control.value for name, control in controls.items()})
        except LabkitError as e:
            view.value = preformatted([str(e)])

    for name, control in controls.items():
        control.description = control.description or name
        control.observe(update, names="value")
    update()
    box = _SavedView([*controls.values(), view])
    box.add_class("widget-interact")  # interact's look in JupyterLab, and what labkit.e2e drives
    return box


class _SavedView(widgets.VBox):
    """A VBox that also offers HTML: the controls' values and the view as displayed. A saved notebook's page
    (nbconvert, GitHub, labkit's report) has no widget renderer and would show the repr 'VBox(children=(...'."""

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        *inputs, view = self.children
        values = ", ".join(f"{c.description} = <code>{html.escape(str(c.value))}</code>" for c in inputs)
        data["text/html"] = f"<p>{values} (change {'it' if len(inputs) == 1 else 'them'} in JupyterLab)</p>{view.value}"
        return data


def preformatted(lines: list[str]) -> str:
    """Plain-text lines as an HTML block that keeps their alignment."""
    # a saved page (nbconvert's lab template) sets <pre> in the text font unless told
    return '<pre style="font-family: monospace">' + html.escape("\n".join(lines)) + "</pre>"

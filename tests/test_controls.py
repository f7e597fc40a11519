"""labkit.controls: live widgets that need nothing sent back by a headless client."""

from __future__ import annotations

import ipywidgets as widgets

from labkit import controls
from labkit.errors import ConfigError


def _view(box: widgets.VBox) -> widgets.HTML:
    return box.children[-1]


def test_a_control_change_re_renders_the_view():
    calls = []

    def render(n, kind):
        calls.append((n, kind))
        return f"<b>{kind} x {n}</b>"

    n, kind = widgets.IntSlider(2, 1, 8), widgets.Dropdown(options=["cpu", "cuda"], value="cpu")
    box = controls.live_html(render, n=n, kind=kind)
    assert _view(box).value == "<b>cpu x 2</b>" and calls == [(2, "cpu")]
    n.value = 5
    kind.value = "cuda"
    assert _view(box).value == "<b>cuda x 5</b>"
    assert list(box.children[:2]) == [n, kind] and n.description == "n" and kind.description == "kind"
    assert "widget-interact" in box._dom_classes


def test_a_labkit_error_shows_as_its_line_and_the_next_value_recovers():
    def render(text):
        if not text.isdigit():
            raise ConfigError("size", f"{text!r} is not a number", "type e.g. 7")
        return f"ok {text}"

    text = widgets.Text("7", description="size")
    box = controls.live_html(render, text=text)
    text.value = "7<B"
    assert (
        _view(box).value
        == '<pre style="font-family: monospace">size: &#x27;7&lt;B&#x27; is not a number. Fix: type e.g. 7</pre>'
    )
    text.value = "9"
    assert _view(box).value == "ok 9" and text.description == "size"


def test_preformatted_keeps_lines_and_escapes():
    assert controls.preformatted(["a  <b>", "c"]) == '<pre style="font-family: monospace">a  &lt;b&gt;\nc</pre>'


def test_a_saved_page_shows_the_controls_values_and_the_view_not_the_widgets_repr():
    """nbconvert and GitHub show a widget's HTML, else its repr ('VBox(children=(Dropdown(...'): a saved run shows
    the values the controls had and the view they rendered; JupyterLab still shows the live widget."""
    kind = widgets.Dropdown(options=["all", "cpu"], value="all")
    data = controls.live_html(lambda kind: f"<table><tr><td>{kind}</td></tr></table>", kind=kind)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "kind" in data["text/html"] and "all" in data["text/html"] and "<td>all</td>" in data["text/html"]
    assert "VBox(" not in data["text/html"] and "Dropdown(" not in data["text/html"]


def test_preformatted_lines_stay_aligned_on_a_saved_page():
    """The report's page set notebook 05's calculator lines in a proportional font: their columns drifted."""
    assert "font-family: monospace" in controls.preformatted(["a  1", "bb 2"])

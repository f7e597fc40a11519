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
    assert _view(box).value == "<pre>size: &#x27;7&lt;B&#x27; is not a number. Fix: type e.g. 7</pre>"
    text.value = "9"
    assert _view(box).value == "ok 9" and text.description == "size"


def test_preformatted_keeps_lines_and_escapes():
    assert controls.preformatted(["a  <b>", "c"]) == "<pre>a  &lt;b&gt;\nc</pre>"

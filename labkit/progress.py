"""The kit's progress bars, in one place: tqdm's text bar in a terminal, its widget in a notebook, lines in a pipe.

A saved notebook (nbconvert, GitHub, a CI log) shows a widget's text/plain, which is the text it had when first
displayed: '0%| | 0/28' after a run that finished. So the widget is displayed with a display id and that output is
updated when the bar closes: what is saved is the bar as it ended.

A rank's output goes through a pipe to the launcher and from there into a notebook or a log, where tqdm's '\r'
redraws become line breaks and a line printed meanwhile ran into the bar ('loss=1.527]epoch 1/3 ...'): in a pipe each
redraw is a line of its own, and `say` prints around the bar."""

from __future__ import annotations

import functools
import re
import sys

_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's moves between stacked bars: no place in a pipe


def bar(total: int | None = None, *, desc: str, unit: str = "step", disable: bool = False, rate: bool = True, **kwargs):
    """A tqdm bar (`total` None: a counter); keyword arguments are tqdm's. `rate=False` shows no rate: where the
    steps counted are a rank's output lines, their pace is not the step time the chapter measures (notebook 05's bar
    said 3.17 s/step beside a measured 459 ms median step: the probe's own measuring and the pipe ran between)."""
    if not rate:
        kwargs.setdefault("bar_format", "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as widget

    kwargs.setdefault("smoothing", 0)  # the rate since the clock started (advance), not a moving average's guess
    if disable or not issubclass(tqdm, widget):  # a terminal, a pipe, or a notebook without ipywidgets: text
        stream = kwargs.pop("file", None) or sys.stderr
        if not _is_terminal(stream):  # a line every few seconds, not tqdm's ten redraws a second
            stream, kwargs["mininterval"] = LinePerRedraw(stream), kwargs.get("mininterval", 5.0)
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=stream, **kwargs)
    return _saved_widget()(total=total, desc=desc, unit=unit, **kwargs)


def advance(bar) -> None:
    """Count a step. The first one counted starts the bar's clock: the time before it (ranks launching, DeepSpeed
    starting, the first step's warm-up) is no step's time, and tqdm's rate spread it over every step (notebook 03's
    rank-0 bar: 20 s of launch in a 3-step rate)."""
    bar.update(1)
    if not getattr(bar, "clock_started", False):
        bar.clock_started = True
        bar.start_t = bar.last_print_t = bar._time()
        bar.initial = bar.n  # tqdm's rate is (n - initial) / elapsed


def say(message: str) -> None:
    """Print a line while bars may be showing: tqdm clears them, prints, and draws them again (in a terminal a plain
    print would run into the bar and be overwritten by its next redraw)."""
    from tqdm.auto import tqdm

    tqdm.write(message)
    sys.stdout.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: treat it as a pipe
        return False


class LinePerRedraw:
    """A text stream for tqdm in a pipe: each redraw ('\\r' + bar + padding) is written as one line, the clearing
    writes and a redraw repeating the last line are dropped. Everything else (encoding, fileno) is the stream's."""

    def __init__(self, stream):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        line = _CURSOR_MOVES.sub("", text.replace("\r", "").replace("\n", "")).rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def __getattr__(self, name):
        return getattr(self.stream, name)


@functools.cache
def _saved_widget() -> type:
    from IPython.display import display
    from tqdm.notebook import tqdm

    class SavedWidget(tqdm):
        """tqdm's widget whose output is replaced by its final state on close."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, display=False, **kwargs)
            self._output = display(self.container, display_id=True)

        def close(self) -> None:
            was_open = not self.disable
            super().close()
            if was_open:
                self._output.update(self.container)

    return SavedWidget

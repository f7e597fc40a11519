"""The kit's progress bars, in one place: tqdm's text bar in a terminal, its widget in a notebook.

A saved notebook (nbconvert, GitHub, a CI log) shows a widget's text/plain, which is the text it had when first
displayed: '0%| | 0/28' after a run that finished. So the widget is displayed with a display id and that output is
updated when the bar closes: what is saved is the bar as it ended."""

from __future__ import annotations

import functools


def bar(total: int | None = None, *, desc: str, unit: str = "step", disable: bool = False, **kwargs):
    """A tqdm bar (`total` None: a counter); keyword arguments are tqdm's."""
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as widget

    if disable or not issubclass(tqdm, widget):  # a terminal, or a notebook without ipywidgets: text is the truth
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, **kwargs)
    return _saved_widget()(total=total, desc=desc, unit=unit, **kwargs)


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

"""matplotlib figures for the notebooks, one module per topic; each helper returns a Figure.

Figures are built with matplotlib.figure.Figure directly (no pyplot): nothing global is left open, and they render
under any backend, Agg included. A notebook shows one by returning or display()-ing it: it is a PNG with alt text
(nbconvert's HTML export warns about images without one), with or without `%matplotlib inline`.
"""

from __future__ import annotations

import base64
import functools
import io


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class LabFigure(Figure):
        alt = ""

        def _repr_mimebundle_(self, include=None, exclude=None):
            buf = io.BytesIO()
            self.savefig(buf, format="png")
            png = base64.b64encode(buf.getvalue()).decode()
            return {"image/png": png, "text/plain": self.alt}, {"image/png": {"alt": self.alt}}

    return LabFigure


def figure(width: float, height: float, alt: str):
    """A constrained-layout Figure described by `alt` (matplotlib is imported here, when a figure is first drawn)."""
    fig = _figure_class()(figsize=(width, height), layout="constrained")
    fig.alt = alt
    return fig


@functools.cache
def _plain_log_formatter():
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    return PlainLogFormatter


def log_y(ax) -> None:
    """A log-scale y axis labelled in plain numbers: a loss reads 0.3, not matplotlib's '3×10⁻¹' (which also leaves a
    range inside one decade with powers-of-ten labels only at its ends, or none)."""
    plain = _plain_log_formatter()
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain())
    ax.yaxis.set_minor_formatter(plain(labelOnlyBase=False))  # LogFormatter labels minor ticks only where few show


def label_bars(ax, bars, labels: list[str], fontsize="small") -> None:
    """Each bar's number written above it, with room under the top of the frame: autoscaling leaves about 5% above
    the tallest bar, where its number would sit on the frame's edge."""
    ax.bar_label(bars, labels=labels, fontsize=fontsize)
    ax.set_ylim(0, max((bar.get_height() for bar in bars), default=0) * 1.15 or None)

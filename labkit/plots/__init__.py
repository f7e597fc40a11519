"""matplotlib figures for the notebooks, one module per topic; each helper returns a Figure.

Figures are built with matplotlib.figure.Figure directly (no pyplot): nothing global is left open, and they render
under any backend, Agg included. Notebooks show them by returning the Figure from a cell.
"""

from __future__ import annotations


def figure(width: float, height: float):
    """A constrained-layout Figure (matplotlib is imported here, when a figure is first drawn)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")

"""Rows of records as a plain-text table (terminal) or an HTML table (notebook), with no pandas dependency, and the
kit's one byte formatter. Used by the check, device, node and memory reports so that the CLI and the notebooks agree."""

from __future__ import annotations

import html
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Background colours for a `status` cell in HTML tables (pass/warn/fail as in labkit.env).
STATUS_COLOURS = {"pass": "#d4edda", "warn": "#fff3cd", "fail": "#f8d7da"}
# Decimal units by default (GB = 1e9 bytes: the way device memory is sold); binary ones only when a caller names one.
BYTE_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


# Paths of this installation a learner has no use for, longest first, with what a reader sees instead.
# A system Python's prefix (/usr) is not internal: only a virtual environment's is.
_VENV = {sys.prefix: "<venv>"} if sys.prefix != sys.base_prefix else {}
INTERNAL_PATHS = sorted(
    {**_VENV, str(Path(__file__).resolve().parent.parent): "<labkit>", os.path.expanduser("~"): "~"}.items(),
    key=lambda kv: -len(kv[0]),
)


def wrapped(text: str, label: str = "", width: int = 100) -> str:
    """`label` then `text`, wrapped at words to `width` columns and continued under the text (4 spaces without a label).
    Jupyter shows a longer output line broken wherever its edge falls, mid-word (its CSS: word-break: break-all). For
    prose: a command to copy stays one line."""
    more = " " * len(label) if label else " " * 4
    options = dict(break_long_words=False, break_on_hyphens=False)
    return textwrap.fill(text, width, initial_indent=label, subsequent_indent=more, **options)


def short_paths(text: str) -> str:
    """text with this installation's paths (its venv, the kit's checkout, the home folder) shortened."""
    for path, short in INTERNAL_PATHS:
        text = text.replace(path, short)
    return text


def format_bytes(value: float | None, unit: str = "auto") -> str:
    """85_899_345_920 -> '85.90 GB'; unit='GiB' -> '80.00 GiB'; None -> '-'."""
    if value is None:
        return "-"
    if unit == "auto":  # the next unit up when the number as shown reaches 1000: 999,999 B reads 1.00 MB
        unit = next((u for u in ("TB", "GB", "MB", "kB") if abs(value) >= BYTE_UNITS[u]), "B")
        up = {"kB": "MB", "MB": "GB", "GB": "TB"}.get(unit)
        unit = up if up and abs(round(value / BYTE_UNITS[unit], 2)) >= 1000 else unit
    return f"{int(value)} B" if unit == "B" else f"{value / BYTE_UNITS[unit]:,.2f} {unit}"


def format_plural(n: int, word: str) -> str:
    """'1 step', '3 steps': the count and its noun in the number the count needs."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def format_percent(share: float, digits: int = 0) -> str:
    """0.4213 -> '42%'; a share short of 1 never reads '100%' (0.9963 -> '99.6%'; past 4 digits '>99.9999%'), nor
    one above 0 '0%' ('<0.0001%'), nor a negative one '-0%'."""
    text = f"{100 * share:.{digits}f}"
    while digits < 4 and ((text.startswith("100") and share < 1) or (float(text) == 0 and share != 0)):
        digits += 1
        text = f"{100 * share:.{digits}f}"
    if text.startswith("100") and 0 < 1 - share:
        return ">99.9999%"
    if float(text) == 0 and share != 0:
        return f"{'<' if share > 0 else '>-'}0.0001%"
    return text + "%"


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, max_width: int = 70) -> str:
    """Aligned columns; a cell longer than `max_width` is cut with an ellipsis (the JSON form keeps it whole)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in cells]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = [list(columns), ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def html_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, status_column: str | None = "status"
) -> str:
    """An HTML table; the `status_column` cell is coloured by its pass/warn/fail value."""

    def td(row: Mapping[str, Any], col: str) -> str:
        colour = STATUS_COLOURS.get(str(row.get(col))) if col == status_column else None
        style = "text-align:left" + (f";background:{colour};font-weight:bold" if colour else "")
        return f"<td style='{style}'>{html.escape(_cell(row.get(col)))}</td>"

    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(td(row, col) for col in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

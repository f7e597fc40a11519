"""Rows of records as a plain-text table (terminal) or an HTML table (notebook), with no pandas dependency.

Used by the check, device and node reports so that `labkit check` and the notebooks show the same columns.
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

# Background colours for a `status` cell in HTML tables (pass/warn/fail as in labkit.env).
STATUS_COLOURS = {"pass": "#d4edda", "warn": "#fff3cd", "fail": "#f8d7da"}


def format_bytes(value: int | float | None) -> str:
    """Bytes as a short binary-unit string: 85899345920 -> '80.0 GiB'; None -> '-'."""
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, max_width: int = 70) -> str:
    """Aligned columns; a cell longer than `max_width` is cut with an ellipsis (the JSON form keeps it whole)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in cells]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, status_column: str | None = "status") -> str:
    """An HTML table; the `status_column` cell is coloured by its pass/warn/fail value."""
    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        tds = []
        for col in columns:
            text = html.escape(_cell(row.get(col)))
            style = "text-align:left"
            if col == status_column and str(row.get(col)) in STATUS_COLOURS:
                style += f";background:{STATUS_COLOURS[str(row.get(col))]};font-weight:bold"
            tds.append(f"<td style='{style}'>{text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

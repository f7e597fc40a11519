"""Figures for notebooks 00 and 01: check summary, local device memory, accelerators and huge pages per node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from labkit.cluster import NODE_COLUMNS
from labkit.devices import ACCELERATOR_OF, DEVICE_COLUMNS, filter_by_kind
from labkit.plots import figure
from labkit.tabular import html_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GIB = 2**30
STATUS_COLOURS = {"pass": "#2e7d32", "warn": "#f9a825", "fail": "#c62828"}
KIND_COLOURS = {"nvidia": "#76b900", "gaudi": "#0071c5", "amd": "#ed1c24", "cpu": "#7f7f7f"}
KIND_COLOURS |= {device: KIND_COLOURS[accelerator] for device, accelerator in ACCELERATOR_OF.items()}  # cuda, hpu


def check_summary_figure(checks: Sequence) -> Figure:
    """Stacked horizontal bars: pass/warn/fail counts per check group."""
    groups = list(dict.fromkeys(c.group for c in checks))
    counts = {s: [sum(c.group == g and c.status == s for c in checks) for g in groups] for s in STATUS_COLOURS}
    per_group = "; ".join(
        f"{g}: " + ", ".join(f"{counts[s][i]} {s}" for s in STATUS_COLOURS) for i, g in enumerate(groups)
    )
    fig = figure(7, 0.45 * max(len(groups), 2) + 1, f"Bar chart of the environment checks by group: {per_group}")
    ax = fig.add_subplot()
    left = [0] * len(groups)
    for status, colour in STATUS_COLOURS.items():
        ax.barh(groups, counts[status], left=left, color=colour, label=status)
        left = [a + b for a, b in zip(left, counts[status])]
    ax.invert_yaxis()
    ax.set_xlabel("checks")
    ax.set_title("Environment checks by group")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the bars
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def device_memory_figure(devices: Sequence) -> Figure:
    """Memory in use vs total per local device (GiB); devices whose use is unknown show the total only."""
    labels = [f"{d.kind}:{d.index} {d.name[:28]}" for d in devices]
    totals = [(d.mem_total or 0) / GIB for d in devices]
    used = [(d.mem_used or 0) / GIB for d in devices]
    notes = [
        f"{u:.1f} / {t:.1f} GiB" if d.mem_used is not None else f"{t:.1f} GiB (use unknown)"
        for t, u, d in zip(totals, used, devices)
    ]
    alt = "Bar chart of memory in use and total per local device: " + ", ".join(map(": ".join, zip(labels, notes)))
    fig = figure(7, 0.5 * max(len(devices), 2) + 1, alt)
    ax = fig.add_subplot()
    ax.barh(labels, totals, color="#d0d0d0", label="total")
    known = [(label, u, d.kind) for label, u, d in zip(labels, used, devices) if d.mem_used is not None]
    for kind in dict.fromkeys(k for _, _, k in known):  # a legend entry per colour drawn
        rows = [(label, u) for label, u, k in known if k == kind]
        ax.barh(*zip(*rows), color=KIND_COLOURS.get(kind, "#555555"), label=f"in use ({kind})")
    for y, (t, note) in enumerate(zip(totals, notes)):
        ax.text(t, y, " " + note, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GiB")
    ax.set_title("Local devices: memory")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top = max(totals + [1])
    ax.set_xlim(0, top)
    fig.draw_without_rendering()  # the constrained layout sizes the axes: then the notes can be measured against it
    widest = max((t.get_window_extent().width for t in ax.texts), default=0) / ax.get_window_extent().width
    ax.set_xlim(0, top / (1 - min(widest + 0.03, 0.7)))  # room right of the longest bar for its note
    return fig


def node_accelerators_figure(nodes: Sequence) -> Figure:
    """Per node: allocatable accelerators by kind (left) and allocatable hugepages-2Mi in GiB (right)."""
    names = [f"{n.name}\n{n.accelerator_product}" if n.accelerator_product else n.name for n in nodes]
    per_node = ", ".join(
        f"{n.name}: {n.accelerators} {n.accelerator_kind or 'cpu'}, {n.hugepages_2mi_bytes / GIB:.0f} GiB"
        for n in nodes
    )
    alt = f"Bar charts of allocatable accelerators and huge pages per node: {per_node}"
    fig = figure(10, 0.6 * max(len(nodes), 2) + 1.4, alt)
    ax_acc, ax_huge = fig.subplots(1, 2, sharey=True)
    kinds = sorted({n.accelerator_kind for n in nodes if n.accelerator_kind})
    left = [0] * len(nodes)
    for kind in kinds:
        counts = [n.accelerators if n.accelerator_kind == kind else 0 for n in nodes]
        ax_acc.barh(names, counts, left=left, color=KIND_COLOURS.get(kind, "#555555"), label=kind)
        left = [a + b for a, b in zip(left, counts)]
    if not kinds:  # keep the axis (and the node names) even on a CPU-only cluster
        ax_acc.barh(names, [0] * len(nodes))
        ax_acc.text(0.5, 0.5, "no accelerators", transform=ax_acc.transAxes, ha="center", va="center")
    ax_acc.set_xlabel("allocatable accelerators")
    ax_acc.set_title("Accelerators per node")
    ax_acc.xaxis.get_major_locator().set_params(integer=True)
    if kinds:
        fig.legend(loc="outside lower center", ncols=len(kinds))
    ax_huge.barh(names, [n.hugepages_2mi_bytes / GIB for n in nodes], color="#8e24aa")
    ax_huge.set_xlabel("hugepages-2Mi (GiB)")
    ax_huge.set_title("Huge pages per node (Gaudi needs them)")
    ax_acc.invert_yaxis()
    return fig


def filtered_tables_html(devices: Sequence, nodes: Sequence, kind: str) -> str:
    """HTML tables of the local devices and cluster nodes of one device kind ('all', 'cuda', 'hpu', 'cpu')."""
    parts = []
    for title, records, columns in (("Local devices", devices, DEVICE_COLUMNS), ("Cluster nodes", nodes, NODE_COLUMNS)):
        chosen = filter_by_kind(records, kind)
        if records or title == "Local devices":
            table = html_table([r.row() for r in chosen], columns, status_column=None) if chosen else "<p>none</p>"
            parts += [f"<h4>{title}, kind {kind} ({len(chosen)} of {len(records)})</h4>", table]
    return "".join(parts)

"""Figures for notebooks 02 (ZeRO stage comparison) and 05 (memory inspection). Each returns a matplotlib Figure."""

from __future__ import annotations

from labkit.memory import STATE_KINDS, STATE_LABELS, format_count
from labkit.plots import figure, label_bars

STATE_COLOURS = dict(zip(STATE_KINDS, ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974")))


def _scale(max_bytes: float) -> tuple[float, str]:
    return (1e9, "GB") if max_bytes >= 5e8 else (1e6, "MB")


def _config_axes(cfgs: list[dict], width: float, height: float, title: str):
    """A figure with one x tick per configuration, labelled with its (wrapped) label."""
    alt = f"Bar chart: {title}, one bar per configuration ({', '.join(c['label'] for c in cfgs)})"
    fig = figure(max(width, 1.2 * len(cfgs) + 2), height, alt)
    ax = fig.add_subplot()
    ax.set_xticks(range(len(cfgs)), [c["label"].replace(" + ", "\n+ ") for c in cfgs], fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig, ax


def stage_memory_figure(report: dict, rank: int = 0):
    """Stacked bars of measured per-rank model-state bytes by kind for each config (host part hatched), with the
    DeepSpeed-model and paper predictions overlaid as markers."""
    cfgs = report["configs"]
    top = max([c["measured_total"][rank] for c in cfgs] + [c["predicted_paper_total"] for c in cfgs])
    div, unit = _scale(top)
    title = f"Per-rank model states, {format_count(report['params'])} params, {report['dtype']}, "
    title += f"N = {report['world_size']} ({report['device']})"
    fig, ax = _config_axes(cfgs, 6.5, 4.2, title)
    xs, bottom = range(len(cfgs)), [0.0] * len(cfgs)
    for loc, hatch in (("device", None), ("host", "//")):
        for kind in STATE_KINDS:
            vals = [c["measured"][rank][loc][kind] / div for c in cfgs]
            if any(vals):
                label = STATE_LABELS[kind] + (" (host)" if loc == "host" else "")
                ax.bar(xs, vals, 0.6, bottom, color=STATE_COLOURS[kind], hatch=hatch, edgecolor="white", label=label)
                bottom = [b + v for b, v in zip(bottom, vals)]
    ds, paper = ([c[key] / div for c in cfgs] for key in ("predicted_deepspeed_total", "predicted_paper_total"))
    ax.scatter(xs, ds, marker="D", color="black", zorder=3, label="labkit DeepSpeed model")
    # a line across each bar: a bar-wide scatter marker would also be drawn bar-wide over its legend label
    lefts, rights = [x - 0.3 for x in xs], [x + 0.3 for x in xs]
    ax.hlines(paper, lefts, rights, colors="#d62728", linewidths=2.5, zorder=3, label="ZeRO paper formula")
    ax.set_ylabel(f"model-state bytes per rank ({unit})")
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    ax.set_ylim(0, top / div * 1.45)
    return fig


def step_time_figure(report: dict):
    cfgs = report["configs"]
    fig, ax = _config_axes(cfgs, 5.5, 3.0, "Step time per configuration (slowest rank)")
    bars = ax.bar(range(len(cfgs)), [c["step_time_s"] * 1e3 for c in cfgs], color="#4c72b0", width=0.6)
    label_bars(ax, bars, [f"{c['step_time_s'] * 1e3:.0f}" for c in cfgs], fontsize=8)
    ax.set_ylabel("median step time (ms)")
    return fig


def holders_figure(rows: list[dict], title: str = "Where the bytes went"):
    """Horizontal bars: bytes per DeepSpeed holder (tensor attribute), coloured by kind."""
    from matplotlib.patches import Patch

    rows = [r for r in rows if r["bytes"] > 0][:12][::-1]
    div, unit = _scale(max([r["bytes"] for r in rows] or [1]))
    top = ", ".join(f"{r['holder']} {r['bytes'] / div:.1f} {unit}" for r in rows[::-1][:5])
    fig = figure(7.5, 0.35 * max(len(rows), 3) + 1.2, f"Bar chart: {title}; largest: {top}")
    ax = fig.add_subplot()
    labels = [f"{r['holder'][:48]}{' (host)' if r['location'] == 'host' else ''}" for r in rows]
    ax.barh(labels, [r["bytes"] / div for r in rows], color=[STATE_COLOURS[r["kind"]] for r in rows])
    ax.set_xlabel(unit)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=10)
    kinds = [k for k in STATE_KINDS if any(r["kind"] == k for r in rows)]
    handles = [Patch(color=STATE_COLOURS[k], label=STATE_LABELS[k]) for k in kinds]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return fig


def timeline_figure(
    phases: list[dict],
    title: str = "Model-state bytes across a run",
    allocated: bool = True,
    allocated_before: int | None = None,
):
    """Stacked areas of counted bytes by kind at each snapshot (init, then forward/backward/step per step); on a GPU
    the allocator's memory_allocated is drawn on top (the gap is activations and temporaries)."""
    labels = [p["phase"] if p["phase"] == "init" else f"{p['phase']}\n{p['step']}" for p in phases]
    series = {k: [p["tensors"]["device"][k] + p["tensors"]["host"][k] for p in phases] for k in STATE_KINDS}
    alloc = [(p.get("accelerator") or {}).get("allocated") for p in phases]
    alloc = [a - (allocated_before or 0) if a is not None else None for a in alloc]
    div, unit = _scale(max([sum(v[i] for v in series.values()) for i in range(len(phases))] + [a or 0 for a in alloc]))
    alt = f"Stacked area chart: {title}, model-state bytes by kind over {len(phases)} snapshots"
    fig = figure(max(6.5, 0.55 * len(phases) + 2), 3.8, alt)
    ax = fig.add_subplot()
    xs = list(range(len(phases)))
    kinds = [k for k in STATE_KINDS if any(series[k])]
    stacks = [[v / div for v in series[k]] for k in kinds]
    colours = [STATE_COLOURS[k] for k in kinds]
    ax.stackplot(xs, *stacks, labels=[STATE_LABELS[k] for k in kinds], colors=colours, alpha=0.85)
    if allocated and any(a is not None for a in alloc):
        label = "memory_allocated (incl. activations)"
        ax.plot(xs, [(a or 0) / div for a in alloc], color="black", marker="o", ms=3, label=label)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def fit_figure(fit: dict, title: str = "Model states vs device memory"):
    """One bar: model states x headroom against the device's capacity."""
    need, capacity = fit["need_bytes"] / 1e9, fit["capacity_bytes"] / 1e9
    fig = figure(6, 1.8, f"Bar chart: {title}: {need:.1f} GB needed against {capacity:.1f} GB of device memory")
    ax = fig.add_subplot()
    ax.barh(["need"], [need], color="#55a868" if fit["fits"] else "#c44e52")
    ax.barh(["model states"], [fit["model_state_bytes"] / 1e9], color="#4c72b0")
    ax.axvline(capacity, color="black", linestyle="--", label="device memory")
    ax.set_xlabel("GB per device")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig

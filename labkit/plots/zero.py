"""Figures for notebooks 02 (ZeRO stage comparison) and 05 (memory inspection). Each returns a matplotlib Figure."""
from __future__ import annotations

from labkit.memory import KIND_LABELS, KINDS

KIND_COLOURS = {"params": "#4c72b0", "master_params": "#55a868", "gradients": "#c44e52",
                "optimizer_states": "#8172b2", "buffers": "#ccb974"}
PHASE_ORDER = ("init", "forward", "backward", "step")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _scale(max_bytes: float) -> tuple[float, str]:
    return (1e9, "GB") if max_bytes >= 5e8 else (1e6, "MB")


def stage_memory_figure(report: dict, rank: int = 0):
    """Stacked bars of measured per-rank model-state bytes by kind for each config (host part hatched), with the
    DeepSpeed-model and paper predictions overlaid as markers."""
    cfgs = report["configs"]
    totals = [c["measured_total"][rank] for c in cfgs] + [c["predicted_paper_total"] for c in cfgs]
    div, unit = _scale(max(totals))
    fig = _figure(max(6.5, 1.3 * len(cfgs) + 2), 4.2)
    ax = fig.add_subplot()
    xs = range(len(cfgs))
    bottom = [0.0] * len(cfgs)
    for loc, hatch in (("device", None), ("host", "//")):
        for kind in KINDS:
            vals = [c["measured"][rank][loc][kind] / div for c in cfgs]
            if not any(vals):
                continue
            label = KIND_LABELS[kind] + (" (host)" if loc == "host" else "")
            ax.bar(xs, vals, bottom=bottom, color=KIND_COLOURS[kind], hatch=hatch, edgecolor="white", label=label,
                   width=0.6)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.scatter(xs, [c["predicted_deepspeed_total"] / div for c in cfgs], marker="D", color="black", zorder=3,
               label="labkit DeepSpeed model")
    ax.scatter(xs, [c["predicted_paper_total"] / div for c in cfgs], marker="_", s=900, linewidths=2.5,
               color="#d62728", zorder=3, label="ZeRO paper formula")
    ax.set_xticks(list(xs), [c["label"].replace(" + ", "\n+ ") for c in cfgs], fontsize=8)
    ax.set_ylabel(f"model-state bytes per rank ({unit})")
    ax.set_title(f"Per-rank model states, {report['params'] / 1e6:.1f}M params, {report['dtype']}, "
                 f"N = {report['world_size']} ({report['device']})", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    ax.set_ylim(0, max(totals) / div * 1.45)
    return fig


def step_time_figure(report: dict):
    cfgs = report["configs"]
    fig = _figure(max(5.5, 1.1 * len(cfgs) + 2), 3.0)
    ax = fig.add_subplot()
    vals = [c["step_time_s"] * 1e3 for c in cfgs]
    bars = ax.bar(range(len(cfgs)), vals, color="#4c72b0", width=0.6)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(cfgs)), [c["label"].replace(" + ", "\n+ ") for c in cfgs], fontsize=8)
    ax.set_ylabel("median step time (ms)")
    ax.set_title("Step time per configuration (slowest rank)", fontsize=10)
    return fig


def holders_figure(rows: list[dict], title: str = "Where the bytes went"):
    """Horizontal bars: bytes per DeepSpeed holder (tensor attribute), coloured by kind."""
    rows = [r for r in rows if r["bytes"] > 0][:12][::-1]
    div, unit = _scale(max([r["bytes"] for r in rows] or [1]))
    fig = _figure(7.5, 0.35 * max(len(rows), 3) + 1.2)
    ax = fig.add_subplot()
    labels = [f"{r['holder'][:48]}{' (host)' if r['location'] == 'host' else ''}" for r in rows]
    ax.barh(labels, [r["bytes"] / div for r in rows], color=[KIND_COLOURS[r["kind"]] for r in rows],
            hatch=None)
    ax.set_xlabel(unit)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=10)
    from matplotlib.patches import Patch
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=KIND_LABELS[k]) for k in kinds], fontsize=7,
              loc="lower right")
    return fig


def timeline_figure(phases: list[dict], title: str = "Model-state bytes across a run", allocated: bool = True,
                    allocated_before: int | None = None):
    """Stacked areas of counted bytes by kind at each snapshot (init, then forward/backward/step per step); on a GPU
    the allocator's memory_allocated is drawn on top (the gap is activations and temporaries)."""
    labels = [p["phase"] if p["phase"] == "init" else f"{p['phase']}\n{p['step']}" for p in phases]
    series = {k: [p["tensors"]["device"][k] + p["tensors"]["host"][k] for p in phases] for k in KINDS}
    alloc = [(p.get("accelerator") or {}).get("allocated") for p in phases]
    alloc = [a - (allocated_before or 0) if a is not None else None for a in alloc]
    peak_all = max([sum(v[i] for v in series.values()) for i in range(len(phases))] + [a or 0 for a in alloc])
    div, unit = _scale(peak_all)
    fig = _figure(max(6.5, 0.55 * len(phases) + 2), 3.8)
    ax = fig.add_subplot()
    xs = list(range(len(phases)))
    kinds = [k for k in KINDS if any(series[k])]
    ax.stackplot(xs, *[[v / div for v in series[k]] for k in kinds], labels=[KIND_LABELS[k] for k in kinds],
                 colors=[KIND_COLOURS[k] for k in kinds], alpha=0.85, step=None)
    if allocated and any(a is not None for a in alloc):
        ax.plot(xs, [(a or 0) / div for a in alloc], color="black", marker="o", ms=3,
                label="memory_allocated (incl. activations)")
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def fit_figure(fit: dict, title: str = "Model states vs device memory"):
    """One bar: model states x headroom against the device's capacity."""
    fig = _figure(6, 1.8)
    ax = fig.add_subplot()
    ax.barh(["need"], [fit["need_bytes"] / 1e9], color="#55a868" if fit["fits"] else "#c44e52")
    ax.barh(["model states"], [fit["model_state_bytes"] / 1e9], color="#4c72b0")
    ax.axvline(fit["capacity_bytes"] / 1e9, color="black", linestyle="--", label="device memory")
    ax.set_xlabel("GB per device")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig

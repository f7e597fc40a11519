"""Notebook 02 (and `labkit zero`): a ZeRO comparison report as table rows, a text table and computed conclusions."""

from __future__ import annotations

from labkit.chapters import exercises
from labkit.memory import paper_model_states
from labkit.sizing import TRAINING_HEADROOM
from labkit.tabular import format_bytes, format_percent
from labkit.zero import ONE_RANK_NOTE

_WHERE = {"cuda": "per GPU", "hpu": "per HPU"}


def summary_rows(report: dict, rank: int = 0) -> list[dict]:
    """One row per configuration: measured vs both predictions, step time (for tables and the CLI)."""
    rows = []
    for c in report["configs"]:
        m = c["measured"][rank]
        row = {"config": c["label"], "measured_device": sum(m["device"].values())}
        row |= {"measured_host": sum(m["host"].values()), "measured_total": c["measured_total"][rank]}
        row |= {"deepspeed_model": c["predicted_deepspeed_total"], "paper": c["predicted_paper_total"]}
        row |= {"paper_formula": c["predicted_paper"]["formula"], "rel_error_deepspeed": c["rel_error_deepspeed"]}
        row |= {"peak_allocated": c["peak_above_start"][rank], "step_ms": c["step_time_s"] * 1e3}
        rows.append(row | {"final_loss": c["losses"][-1]})
    return rows


def format_table(rows: list[dict], unit: str = "MB") -> str:
    scale = {"MB": 1e6, "GB": 1e9}[unit]
    head = f"{'config':<30} {'measured':>10} {'DeepSpeed':>10} {'err':>7} {'paper':>10}  {'paper formula':<22} "
    head += f"{'peak':>9} {'step ms':>8}"
    lines = [f"model-state bytes per rank ({unit}); measured = tensors counted in the engine; peak = allocator peak"]
    lines += [head, "-" * len(head)]
    for r in rows:
        peak = f"{r['peak_allocated'] / scale:9.1f}" if r.get("peak_allocated") else f"{'n/a':>9}"
        line = f"{r['config']:<30} {r['measured_total'] / scale:10.2f} {r['deepspeed_model'] / scale:10.2f} "
        line += f"{r['rel_error_deepspeed'] * 100:6.2f}% {r['paper'] / scale:10.2f}  {r['paper_formula']:<22} "
        lines.append(line + f"{peak} {r['step_ms']:8.1f}")
    return "\n".join(lines)


def conclusions(report: dict, rank: int = 0) -> list[str]:
    """Sentences computed from the run's own numbers: what each config saved and cost against the first one."""
    cfgs, base = report["configs"], report["configs"][0]
    split = report["device"] != "cpu"  # on a CPU-only run "offloaded" tensors stay in the same RAM: compare totals

    def on_device(c: dict) -> int:
        return sum(c["measured"][rank]["device"].values()) if split else c["measured_total"][rank]

    base_dev, where = on_device(base), _WHERE.get(report["device"], "per rank")
    base_text = format_bytes(base_dev)
    out = [ONE_RANK_NOTE] if report["world_size"] == 1 and any(c["stage"] for c in cfgs) else []
    for c in cfgs[1:]:
        dev, host = on_device(c), sum(c["measured"][rank]["host"].values()) if split else 0
        change = 1 - dev / base_dev if base_dev else 0.0
        rel = f"{format_percent(change)} less than" if change >= 0 else f"{format_percent(-change)} more than"
        slower = c["step_time_s"] / base["step_time_s"] if base["step_time_s"] else float("nan")
        s = f"{c['label']}: {format_bytes(dev)} of model states {where}, {rel} {base['label']} ({base_text})"
        s += f", plus {format_bytes(host)} moved to host memory" if host else ""
        out.append(s + f"; step time {c['step_time_s'] * 1e3:.0f} ms ({slower:.2f}x {base['label']}).")
    out += surprises(report, rank)
    worst = max(cfgs, key=lambda c: c["rel_error_deepspeed"])
    max_bytes = max(abs(m - c["predicted_deepspeed_total"]) for c in cfgs for m in c["measured_total"])
    out.append(
        f"labkit's DeepSpeed model matched the counted bytes within {worst['rel_error_deepspeed']:.4%} "
        f"(at most {max_bytes:,} bytes off, worst: {worst['label']}); the paper's formulas were off by up to "
        f"{format_percent(max(c['rel_error_paper'] for c in cfgs))}."
    )
    if finals := [c["losses"][-1] for c in cfgs if c.get("losses")]:
        out.append(
            f"Final losses across configurations differ by {max(finals) - min(finals):.2e}: ZeRO changes where the "
            "states live, not the mathematics (small differences come from reduction order and precision)."
        )
    return out


def surprises(report: dict, rank: int = 0) -> list[str]:
    """What the run shows that the paper's table does not, explained with the run's own numbers."""
    by, out = {c["label"]: c for c in report["configs"]}, []
    one, two = by.get("ZeRO-1"), by.get("ZeRO-2")
    if one and two and report["world_size"] > 1 and one["measured_total"][rank] == two["measured_total"][rank]:
        paper = one["predicted_paper_total"]
        out.append(
            f"ZeRO-1 held exactly what ZeRO-2 held ({format_bytes(one['measured_total'][rank])}), less than the "
            f"paper's stage-1 figure ({format_bytes(paper)}, {one['predicted_paper']['formula']}): DeepSpeed 0.19's "
            "stage-1/2 optimizer (stage_1_and_2.py) keeps only this rank's partition of the reduced gradients at "
            "stage 1 too, where the paper's stage 1 keeps every gradient."
        )
    if report["device"] == "cpu":
        for c in report["configs"]:
            plain = by.get(f"ZeRO-{c['stage']}")
            if c.get("offload_optimizer") and plain and c["measured_total"][rank] >= plain["measured_total"][rank]:
                extra = c["measured_total"][rank] - plain["measured_total"][rank]
                out.append(
                    f"{c['label']} held {format_bytes(extra)} more than {plain['label']}, not less: on CPU ranks the "
                    "'offloaded' states move within the same RAM, and offload adds its staging buffers; on a GPU the "
                    "same run moves them off the device (the 2 x H200 numbers in docs/benchmarks.md)."
                )
                break
    return out


def check_zero3_prediction(params: int, dtype: str, prediction_mb: float | None, world_size: int = 4) -> str:
    """The exercise of notebook 02: predict ZeRO-3's per-rank model states at `world_size` ranks, then compare with
    the paper's formula for this model (within 5% counts as right). None: not answered yet."""
    truth = paper_model_states(params, 3, world_size, dtype)
    # unrounded: a small model's 0.132 MB rounded to 0.1 MB put the right answer 32% off
    line = exercises.verdict(prediction_mb, truth["total"] / 1e6, name="my_zero3_mb", unit=" MB", rel_tol=0.05)
    if prediction_mb is None:
        return f"{line} Hint: the table of predictions shows the formula; this exercise asks for {world_size} ranks."
    return f"{line} The paper's {truth['formula']} for {params:,} parameters at N = {world_size}."


def zero3_solution(params: int, dtype: str, world_size: int = 4) -> str:
    """The solution cell of notebook 02's exercise: the paper's ZeRO-3 model states per rank at `world_size`."""
    truth = paper_model_states(params, 3, world_size, dtype)
    then = f"The paper's {truth['formula']} for {params:,} parameters at N = {world_size}."
    return exercises.solution(truth["total"] / 1e6, unit=" MB", then=then)


def one_device_rows(report: dict, reference: dict, rank: int = 0) -> list[dict]:
    """Notebook 02/05 on a machine with one accelerator: each configuration per CPU rank beside the same one on the
    single device (`zero.one_device_reference`), byte counts as numbers."""
    rows = []
    for c, r in zip(report["configs"], reference["configs"]):
        row = {"config": c["label"], "per_cpu_rank": c["measured_total"][rank], "one_device": r["measured_total"][0]}
        on_device = sum(r["measured"][0]["device"].values())
        rows.append(row | {"one_device_on_device": on_device, "one_device_step_ms": r["step_time_s"] * 1e3})
    return rows


def one_device_note(report: dict, reference: dict) -> str:
    """What the 1-device numbers show, computed from both runs: stages barely differ on one rank; offload still moves
    bytes off the device."""
    dev, n = reference["device"].upper(), report["world_size"]
    rows = one_device_rows(report, reference)
    stages = [row for c, row in zip(reference["configs"], rows) if not c["offload_optimizer"]]
    text = f"On the one {dev} device (1 rank) "
    if len(stages) > 1:
        held = [row["one_device"] for row in stages]
        text += f"the ZeRO stages held {format_bytes(min(held))} to {format_bytes(max(held))} of model states, a "
        text += f"spread of {format_percent(max(held) / min(held) - 1)}: one rank partitions nothing. "
        first, last = stages[0], stages[-1]
        cut = 1 - last["per_cpu_rank"] / first["per_cpu_rank"] if first["per_cpu_rank"] else 0.0
        text += f"On {n} CPU ranks, {last['config']} held {format_bytes(last['per_cpu_rank'])} per rank, "
        text += f"{format_percent(cut)} less than {first['config']} ({format_bytes(first['per_cpu_rank'])})."
    else:
        row = rows[0]
        text += f"{row['config']} held {format_bytes(row['one_device'])} of model states; on {n} CPU ranks, "
        text += f"{format_bytes(row['per_cpu_rank'])} per rank."
    offloaded = [row for c, row in zip(reference["configs"], rows) if c["offload_optimizer"]]
    if offloaded and stages:
        base = stages[0]
        best = min(offloaded, key=lambda row: row["one_device_on_device"])
        text += f" Offload still pays on one device: {best['config']} kept {format_bytes(best['one_device_on_device'])}"
        text += f" on the {dev} device against {format_bytes(base['one_device_on_device'])} for {base['config']}."
    return text


def headroom_note(reference: dict) -> str:
    """The allocator's peak against the counted model states on a GPU run: what grounds (or questions) the training
    calculator's head-room assumption (sizing.TRAINING_HEADROOM)."""
    peak, states, ratio, verdict = headroom(reference)
    if not peak:
        return "No allocator peak on this run (a CPU has no CUDA allocator to ask)."
    return (
        f"The allocator peaked at {format_bytes(peak)} above the run's start, {ratio:.2f}x the {format_bytes(states)} "
        f"of model states: {verdict} the calculator's assumed {TRAINING_HEADROOM:g}x head-room, which has to cover "
        "what lies above the states: activations, DeepSpeed's buffers and the optimizer step's temporaries. "
        f"torch's summary counts in KiB (1,024 bytes) and MiB: {format_bytes(peak)} is {peak / 1024:,.0f} KiB."
    )


def headroom(reference: dict) -> tuple[int | None, int, float, str]:
    """The first configuration's allocator peak above the run's start, its model states, their ratio and 'within' or
    'above' sizing.TRAINING_HEADROOM; the peak is None where there is no allocator (a CPU) or nothing was counted."""
    c = reference["configs"][0]
    peak, states = (c["peak_above_start"] or [None])[0], c["measured_total"][0]
    if not peak or not states:
        return None, states, 0.0, ""
    ratio = peak / states
    return peak, states, ratio, "within" if ratio <= TRAINING_HEADROOM else "above"

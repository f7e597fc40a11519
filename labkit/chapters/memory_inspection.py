"""Notebook 05: one ZeRO run inspected: its parameters checked, then bytes by kind, by holder and across phases."""

from __future__ import annotations

import itertools

from labkit import sizing
from labkit.chapters import exercises, zero_stages
from labkit.errors import check_int, named_as
from labkit.memory import LOCATIONS, STATE_KINDS, STATE_LABELS, parse_count
from labkit.tabular import format_bytes, format_percent
from labkit.zero import ONE_RANK_NOTE, Variant


def variant_token(stage: int, offload: str = "none") -> str:
    """The single stage token for one inspected run: (3, 'optimizer') -> '3+opt'. Validated."""
    return Variant.of(stage, offload).name


# what sizing checks, as notebook 05 names it: its own `dtype` and `world_size` (0 = automatic) are the inspected run's
CALC_NAMES = {"dtype": "calc_dtype", "stage": "calc_stage", "world_size": "calc_world_size",
              "device_type": "calc_device"}  # fmt: skip


def calculator(params: str, dtype: str, stage: int, world_size: int, device: str) -> dict:
    """sizing.training_fit for the notebook's calc_* parameters; a bad one is named as the notebook names it."""
    with named_as(CALC_NAMES):
        return sizing.training_fit(parse_count(params, "calc_params"), dtype, stage, world_size, device)


def check_rank(rank: int, world_size: int) -> int:
    return check_int("rank", rank, 0, "pick a rank that exists", maximum=world_size - 1)


def kind_rows(config: dict, rank: int = 0) -> list[dict]:
    """Per kind and location: measured bytes (steady backward), labkit's DeepSpeed model, and the paper's term."""
    m, p, paper = config["measured"][rank], config["predicted_deepspeed"], config["predicted_paper"]
    rows = []
    for loc, kind in itertools.product(LOCATIONS, STATE_KINDS):
        pk = paper[loc].get(kind) if kind != "buffers" else None
        if m[loc][kind] or p[loc][kind] or pk:
            row = {"kind": STATE_LABELS[kind], "location": loc, "measured": m[loc][kind]}
            rows.append(row | {"deepspeed_model": p[loc][kind], "paper": pk, "difference": m[loc][kind] - p[loc][kind]})
    return rows


def holder_rows(config: dict, rank: int = 0) -> list[dict]:
    """Where the bytes went at the steady backward point: bytes per DeepSpeed attribute holding them."""
    detailed = [p for p in config["timeline"][rank] if p["phase"] == "backward" and "holders" in p["tensors"]]
    return detailed[-1]["tensors"]["holders"] if detailed else []


def timeline_rows(config: dict, rank: int = 0) -> list[dict]:
    """One row per snapshot: bytes counted (all, on the host, per kind) and the allocator's view above its start."""
    base = config["allocated_before"][rank]
    rows = []
    for p in config["timeline"][rank]:
        t, alloc = p["tensors"], (p.get("accelerator") or {}).get("allocated")
        row = {"phase": p["phase"], "step": p["step"], "counted": sum(t["device"].values()) + sum(t["host"].values())}
        row |= {"host": sum(t["host"].values()), **{k: t["device"][k] + t["host"][k] for k in STATE_KINDS}}
        rows.append(row | {"allocated": alloc - base if alloc is not None and base is not None else alloc})
    return rows


def timeline_note(rows: list[dict]) -> str:
    """When each kind of model state appeared and where the working parameters peaked, read from this run's
    timeline (the sentence the notebook shows under its figure; nothing here is assumed)."""

    def when(r: dict) -> str:
        known = {"init": "at initialize", "step": f"at step {r['step']}'s optimizer step"}
        return known.get(r["phase"], f"in step {r['step']}'s {r['phase']}")

    parts = []
    for kind in ("params", "gradients", "optimizer_states"):
        first = next((r for r in rows if r.get(kind)), None)
        if first is None:
            continue
        part = f"{STATE_LABELS[kind]} {format_bytes(first[kind])} {when(first)}"
        if kind == "gradients" and first["phase"] == "init":
            part += " (the flat gradient buffer comes with deepspeed.initialize, before any backward)"
        if kind == "optimizer_states" and first["phase"] == "step":
            part += " (Adam creates its moments lazily, at its first step)"
        parts.append(part)
    peak = max(rows, key=lambda r: r.get("params", 0), default=None)
    text = "In this run: " + "; ".join(parts) + "."
    if peak and rows and peak["params"] > 1.5 * rows[-1]["params"]:
        text += (
            f" The working parameters peaked at {format_bytes(peak['params'])} {when(peak)}, "
            f"{peak['params'] / rows[-1]['params']:.1f}x what stays after it: ZeRO-3 gathers whole layers for compute "
            "and releases them."
        )
    return text


def closing_lines(
    config: dict, rank: int, calc: dict, calc_setup: str, *, one_rank: bool = False, reference: dict | None = None
) -> list[str]:
    """The chapter's closing bullets, each from this run: what rank `rank` held against both models, its largest
    holder, what appeared after initialize, the calculator's verdict for `calc_setup` (e.g. '7B in bf16 ...') and,
    where the CPU ranks were repeated on a machine's one GPU (`reference`, zero.one_device_reference), that run."""
    m, p = config["measured_total"][rank], config["predicted_deepspeed_total"]
    timeline = timeline_rows(config, rank)
    init, steady = timeline[0], [t for t in timeline if t["phase"] == "backward"][-1]
    grew = ", ".join(
        f"{STATE_LABELS[k]} (+{format_bytes(steady[k] - init[k])})" for k in STATE_KINDS if steady[k] > init[k]
    )
    # in bytes: a handful of scalars (grad norm, overflow flag) printed as a percentage read "+0.0000%"
    gap = abs(m - p)
    off = f"{gap} bytes" if gap < 1000 else f"{format_bytes(gap)}, {format_percent(gap / p)}"
    off = "exactly" if not gap else f"{off} {'fewer' if m > p else 'more'}"
    lines = [ONE_RANK_NOTE] if one_rank else []
    lines.append(
        f"On rank {rank} of {config['label']}, the engine held {format_bytes(m)} of model states; labkit's DeepSpeed "
        f"model predicted {format_bytes(p)} ({off}), the paper "
        f"{format_bytes(config['predicted_paper_total'])} ({config['predicted_paper']['formula']})."
    )
    holders = holder_rows(config, rank)
    if holders:
        big = holders[0]
        lines.append(f"The largest holder was `{big['holder']}` ({STATE_LABELS[big['kind']]}, "
                     f"{format_bytes(big['bytes'])}, {format_percent(big['bytes'] / m)} of the total).")  # fmt: skip
    lines.append(
        f"After initialize the rank held {format_bytes(init['counted'])}; at the steady backward point "
        f"{format_bytes(steady['counted'])} ({steady['counted'] / init['counted']:.1f}x); what appeared after "
        f"initialize: {grew or 'nothing'}."
    )
    verdict = "fits" if calc["fits"] else "does not fit"
    bytes_ = (f"{format_bytes(calc['need_bytes'])} needed per device with head-room, "
              f"{format_bytes(calc['capacity_bytes'])} available")  # fmt: skip
    lines.append(
        f"Calculator: {calc_setup} {verdict} ({calc['no_fit_reason'] if calc.get('unsupported_dtype') else bytes_})."
    )
    if reference:
        lines.append(one_device_line(reference))
    return lines


def one_device_line(reference: dict) -> str:
    """The closing bullet of the run repeated on the machine's one GPU: its model states and its allocator's peak
    against the calculator's head-room."""
    ref = reference["configs"][0]
    line = (f"The same {ref['label']} on this machine's one {reference['device'].upper()} device (1 rank) held "
            f"{format_bytes(ref['measured_total'][0])} of model states")  # fmt: skip
    peak, _, ratio, verdict = zero_stages.headroom(reference)
    if peak:
        line += (f"; its allocator peaked at {format_bytes(peak)}, {ratio:.2f}x them, {verdict} the calculator's "
                 f"assumed {sizing.TRAINING_HEADROOM:g}x head-room")  # fmt: skip
    return line + "."


def min_devices_answer(calc: dict) -> int | str:
    """The exercise's answer: the smallest number of devices that fits, or "none" (what the learner writes then)."""
    return calc["min_world_size"] or "none"


def check_min_devices_prediction(calc: dict, device: str, prediction: int | str | None) -> str:
    """The exercise of notebook 05: the smallest number of `device` the calculator's training fits on, predicted
    before the calculator prints it (`calc`: sizing.training_fit's result); "none" when no number fits."""
    why = _min_devices_why(calc, device)
    return exercises.verdict(prediction, calc["min_world_size"], name="my_min_devices", then=why, none="none")


def min_devices_solution(calc: dict, device: str) -> str:
    """The solution cell of notebook 05's exercise: the answer and why."""
    return exercises.solution(calc["min_world_size"], then=_min_devices_why(calc, device), none="none")


def _min_devices_why(calc: dict, device: str) -> str:
    if calc["min_world_size"] is None:
        return f"No number of devices fits: {calc['no_fit_reason']}."
    n = calc["min_world_size"]
    return f"{n} x {device} is the smallest N whose per-device need (model states x head-room) fits."

"""Notebook 05: one ZeRO run inspected: its parameters checked, then bytes by kind, by holder and across phases."""

from __future__ import annotations

from labkit.errors import check_int
from labkit.memory import LOCATIONS, STATE_KINDS, STATE_LABELS
from labkit.zero import Variant


def variant_token(stage: int, offload: str = "none") -> str:
    """The single stage token for one inspected run: (3, 'optimizer') -> '3+opt'. Validated."""
    return Variant.of(stage, offload).name


def check_rank(rank: int, world_size: int) -> int:
    return check_int("rank", rank, 0, "pick a rank that exists", maximum=world_size - 1)


def kind_rows(config: dict, rank: int = 0) -> list[dict]:
    """Per kind and location: measured bytes (steady backward), labkit's DeepSpeed model, and the paper's term."""
    m, p, paper = config["measured"][rank], config["predicted_deepspeed"], config["predicted_paper"]
    rows = []
    for loc, kind in ((loc, kind) for loc in LOCATIONS for kind in STATE_KINDS):
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

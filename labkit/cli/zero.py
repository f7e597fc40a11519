"""`labkit zero`: a real ZeRO stage comparison, measured vs predicted memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labkit import memory, zero
from labkit.chapters.zero_stages import conclusions, format_table, summary_rows
from labkit.devices import DEVICE_CHOICES


def register(subparsers) -> None:
    z = subparsers.add_parser(
        "zero",
        help="run ZeRO stages as real DeepSpeed jobs; measured vs predicted memory",
        description="Runs every stage variant in ONE DeepSpeed launch of local ranks and prints per-rank model-state "
        "bytes measured (tensors counted in the engine) beside labkit's DeepSpeed model and the ZeRO paper's formula.",
    )
    z.add_argument("--stages", default="0,1,2,3", help="stage variants: 0,1,2,3 and e.g. 2+opt, 3+opt+param")
    help_offload = "also run each listed stage >= 1 with this offload (parameters: stage 3 only)"
    z.add_argument("--offload", default="none", choices=memory.OFFLOADS, help=help_offload)
    z.add_argument("--world-size", type=int, default=2, help="data-parallel ranks on this machine")
    z.add_argument("--params", default="20M", help="model size, e.g. 20M, 335M, 1.3B")
    z.add_argument("--dtype", default="auto", choices=zero.DTYPES)
    z.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    z.add_argument("--steps", type=int, default=4, help="training steps per configuration (>= 2)")
    z.add_argument("--timeout", type=float, default=900.0, help="seconds before every rank is stopped")
    z.add_argument("--json", dest="json_path", help="write the full report (per rank, per phase) here")
    z.add_argument("--dry-run", action="store_true", help="validate and print the launch command, run nothing")
    z.set_defaults(func=_zero)


def _zero(args: argparse.Namespace) -> int:
    plan = zero.make_plan(
        args.params,
        args.world_size,
        args.stages,
        offload=args.offload,
        dtype=args.dtype,
        device=args.device,
        steps=args.steps,
        timeout_s=args.timeout,
    )
    print(
        f"model: {plan.params:,} parameters ({plan.layers} x MLP block, hidden {plan.hidden}), {plan.dtype}, "
        f"{plan.world_size} x {plan.device} rank(s); configs: {', '.join(v.label for v in plan.variants)}"
    )
    print("command:", " ".join(plan.command()))
    if args.dry_run:
        return 0
    report = zero.run_plan(plan, progress=True)
    print(format_table(summary_rows(report), unit="GB" if plan.params >= 10**8 else "MB"))
    for line in conclusions(report):
        print(" -", line)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1))
        print(f"report: {args.json_path}")
    return 0

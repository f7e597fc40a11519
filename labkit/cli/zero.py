"""`labkit zero`: a real ZeRO stage comparison, measured vs predicted memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labkit import zero
from labkit.chapters.zero_stages import conclusions, format_table, summary_rows
from labkit.devices import DEVICE_CHOICES
from labkit.errors import ConfigError, as_flag, check_output_file
from labkit.memory import OFFLOADS

_OPTIONS = (  # (flag, default, help; choices)
    ("--stages", "0,1,2,3", "stage variants: 0,1,2,3 and e.g. 2+opt, 3+opt+param", None),
    ("--offload", "none", "also run each listed stage >= 1 with this offload (parameters: stage 3 only)", OFFLOADS),
    ("--world-size", 0, "data-parallel ranks on this machine (0: automatic, the command says what it picked)", None),
    ("--params", "20M", "model size, e.g. 20M, 335M, 1.3B", None),
    ("--dtype", "auto", "training precision", zero.DTYPES),
    ("--device", "auto", "where ranks run", DEVICE_CHOICES),
    ("--steps", 4, "training steps per configuration (>= 2)", None),
    ("--timeout", 900.0, "seconds before every rank is stopped", None),
)


def register(subparsers) -> None:
    about = "Runs every stage variant in ONE DeepSpeed launch of local ranks and prints per-rank model-state bytes "
    about += "measured (tensors counted in the engine) beside labkit's DeepSpeed model and the ZeRO paper's formula."
    z = subparsers.add_parser("zero", help="run ZeRO stages as real DeepSpeed jobs; measured vs predicted memory")
    z.description = about
    for flag, default, help_text, choices in _OPTIONS:
        z.add_argument(flag, default=default, type=type(default), choices=choices, help=help_text)
    z.add_argument("--json", dest="json_path", help="write the full report (per rank, per phase) here")
    z.add_argument("--dry-run", action="store_true", help="validate and print the launch command, run nothing")
    z.set_defaults(func=_zero)


def _zero(args: argparse.Namespace) -> int:
    if args.json_path:
        check_output_file("--json", args.json_path)
    options = {"offload": args.offload, "dtype": args.dtype, "device": args.device, "steps": args.steps}
    try:
        plan = zero.make_plan(args.params, args.world_size, args.stages, **options, timeout_s=args.timeout)
    except ConfigError as exc:  # named as the user typed it
        raise as_flag(exc, {"timeout_s": "--timeout"}) from None
    print(
        f"model: {plan.params:,} parameters ({plan.layers} x MLP block, hidden {plan.hidden}), {plan.dtype}, "
        f"{plan.world_size} x {plan.device} rank(s) ({plan.why}); configs: {', '.join(v.label for v in plan.variants)}"
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

"""`labkit size`: inference weight bytes and devices needed, or whether ZeRO training fits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labkit import memory, sizing
from labkit.errors import check_output_file
from labkit.tabular import format_bytes


def register(subparsers) -> None:
    s = subparsers.add_parser("size", help="inference weight bytes and devices needed; or whether training fits")
    s.description = (
        "Inference: weights = params x bytes per dtype, devices = ceil(weights x headroom / device memory). With "
        "--train-stage: per-device model states of DeepSpeed ZeRO training on --world-size devices of --device."
    )
    s.add_argument("--params", required=True, help="model size, e.g. 7B, 70B, 350M")
    s.add_argument("--dtype", default="all", help=f"one of {', '.join(sizing.INFERENCE_DTYPES)} or all")
    help_headroom = f"multiplier for KV cache/activations (default {sizing.INFERENCE_HEADROOM} inference, "
    s.add_argument("--headroom", type=float, default=None, help=help_headroom + f"{sizing.TRAINING_HEADROOM} training)")
    s.add_argument("--train-stage", type=int, default=None, help="size training with this ZeRO stage instead")
    s.add_argument("--world-size", type=int, default=8, help="devices for --train-stage")
    s.add_argument("--device", default="H100", help=f"device for --train-stage: {', '.join(sizing.DEVICE_MEMORY_GB)}")
    s.add_argument("--offload", default="none", choices=memory.OFFLOADS)
    s.add_argument("--json", dest="json_path", help="also write the rows as JSON here")
    s.set_defaults(func=_size)


def _size(args: argparse.Namespace) -> int:
    if args.json_path:
        check_output_file("--json", args.json_path)
    params = memory.parse_count(args.params, "--params")
    if args.train_stage is not None:
        dtype = "bf16" if args.dtype == "all" else args.dtype  # training_fit checks it, the stage and N
        headroom = sizing.TRAINING_HEADROOM if args.headroom is None else args.headroom
        offload = {"offload_optimizer": args.offload != "none", "offload_param": "param" in args.offload}
        result = sizing.training_fit(
            params, dtype, args.train_stage, args.world_size, args.device, **offload, headroom=headroom
        )
        n = result["min_world_size"]
        print("\n".join(result["lines"]))
        print(f"  smallest N that fits: {n}" if n else f"  no N fits: {result['no_fit_reason']}")
    else:
        dtypes = list(sizing.INFERENCE_DTYPES) if args.dtype == "all" else [args.dtype]
        headroom = sizing.INFERENCE_HEADROOM if args.headroom is None else args.headroom
        result = sizing.inference_table(params, dtypes, headroom=headroom)
        devs = sizing.DEVICE_MEMORY_GB
        print(
            f"{memory.format_count(params)} parameters: weights x {headroom} headroom (KV cache, activations, runtime) "
            "-> devices needed (memory in GB = 1e9 B)"
        )
        print(f"{'dtype':<6} {'weights':>10} " + " ".join(f"{f'{d} {gb}':>12}" for d, gb in devs.items()))
        for r in result:
            cells = " ".join(f"{r['devices'][d]:>12}" for d in devs)
            print(f"{r['dtype']:<6} {format_bytes(r['weight_bytes'], 'GB'):>10} {cells}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1))
    return 0

"""`labkit zero` (a real ZeRO stage comparison) and `labkit size` (inference sizing / will training fit?)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from labkit import memory


def register(subparsers) -> None:
    z = subparsers.add_parser("zero", help="run ZeRO stages as real DeepSpeed jobs; measured vs predicted memory",
                              description="Runs every stage variant in ONE DeepSpeed launch of local ranks and prints "
                              "per-rank model-state bytes measured (tensors counted in the engine) beside labkit's "
                              "DeepSpeed model and the ZeRO paper's formula.")
    z.add_argument("--stages", default="0,1,2,3", help="stage variants: 0,1,2,3 and e.g. 2+opt, 3+opt+param")
    z.add_argument("--offload", default="none", choices=["none", "optimizer", "optimizer+param"],
                   help="also run each listed stage >= 1 with this offload (parameters: stage 3 only)")
    z.add_argument("--world-size", type=int, default=2, help="data-parallel ranks on this machine")
    z.add_argument("--params", default="20M", help="model size, e.g. 20M, 335M, 1.3B")
    z.add_argument("--dtype", default="auto", choices=["auto", *memory.TRAIN_DTYPES])
    z.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "hpu"])
    z.add_argument("--steps", type=int, default=4, help="training steps per configuration (>= 2)")
    z.add_argument("--timeout", type=float, default=900.0, help="seconds before every rank is stopped")
    z.add_argument("--json", dest="json_path", help="write the full report (per rank, per phase) here")
    z.add_argument("--dry-run", action="store_true", help="validate and print the launch command, run nothing")
    z.set_defaults(func=_zero)

    s = subparsers.add_parser("size", help="inference weight bytes and devices needed; or whether training fits",
                              description="Inference: weights = params x bytes per dtype, devices = ceil(weights x "
                              "headroom / device memory). With --train-stage: per-device model states of DeepSpeed "
                              "ZeRO training on --world-size devices of --device.")
    s.add_argument("--params", required=True, help="model size, e.g. 7B, 70B, 350M")
    s.add_argument("--dtype", default="all", help=f"one of {', '.join(memory.INFERENCE_DTYPES)} or all")
    s.add_argument("--headroom", type=float, default=None,
                   help=f"multiplier for KV cache/activations (default {memory.INFERENCE_HEADROOM} inference, "
                   f"{memory.TRAINING_HEADROOM} training)")
    s.add_argument("--train-stage", type=int, default=None, help="size training with this ZeRO stage instead")
    s.add_argument("--world-size", type=int, default=8, help="devices for --train-stage")
    s.add_argument("--device", default="H100", help=f"device for --train-stage: {', '.join(memory.DEVICE_MEMORY_GB)}")
    s.add_argument("--offload", default="none", choices=["none", "optimizer", "optimizer+param"])
    s.add_argument("--json", dest="json_path", help="also write the rows as JSON here")
    s.set_defaults(func=_size)


def _zero(args: argparse.Namespace) -> int:
    from labkit import zero

    plan = zero.make_plan(args.params, args.world_size, args.stages, offload=args.offload, dtype=args.dtype,
                          device=args.device, steps=args.steps, timeout_s=args.timeout)
    print(f"model: {plan.params:,} parameters ({plan.layers} x MLP block, hidden {plan.hidden}), {plan.dtype}, "
          f"{plan.world_size} x {plan.device} rank(s); configs: {', '.join(v.label for v in plan.variants)}")
    print("command:", " ".join(plan.command()))
    if args.dry_run:
        return 0
    report = zero.run_plan(plan, progress=True)
    print(zero.format_table(zero.summary_rows(report), unit="GB" if plan.params >= 10**8 else "MB"))
    for line in zero.conclusions(report):
        print(" -", line)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1))
        print(f"report: {args.json_path}")
    return 0


def _size(args: argparse.Namespace) -> int:
    params = memory.parse_count(args.params, "--params")
    if args.train_stage is not None:
        dtype = "bf16" if args.dtype == "all" else memory.check_train_dtype(args.dtype)
        fit = memory.training_fit(params, dtype, memory.check_stage(args.train_stage),
                                  memory.check_world_size(args.world_size), args.device,
                                  offload_optimizer=args.offload != "none", offload_param="param" in args.offload,
                                  headroom=args.headroom or memory.TRAINING_HEADROOM)
        print("\n".join(fit["lines"]))
        n = fit["min_world_size"]
        print(f"  smallest N that fits: {n}" if n else "  no N fits: model states do not shrink at this stage")
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(fit, indent=1))
        return 0
    dtypes = list(memory.INFERENCE_DTYPES) if args.dtype == "all" else [args.dtype]
    headroom = args.headroom or memory.INFERENCE_HEADROOM
    rows = memory.inference_table(params, dtypes, headroom=headroom)
    devs = list(memory.DEVICE_MEMORY_GB)
    print(f"{memory.format_count(params)} parameters: weights x {headroom} headroom (KV cache, activations, runtime) "
          f"-> devices needed (memory in GB = 1e9 B)")
    print(f"{'dtype':<6} {'weights':>10} " + " ".join(f"{d + ' ' + str(memory.DEVICE_MEMORY_GB[d]):>12}" for d in devs))
    for r in rows:
        print(f"{r['dtype']:<6} {memory.format_bytes(r['weight_bytes'], 'GB'):>10} "
              + " ".join(f"{r['devices'][d]:>12}" for d in devs))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=1))
    return 0

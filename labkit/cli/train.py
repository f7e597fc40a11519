"""`labkit train ...`: CIFAR-10 through DeepSpeed, in this process or on N local ranks (labkit.chapters.cifar)."""

from __future__ import annotations

import dataclasses
import json

from labkit import train
from labkit.chapters import cifar
from labkit.errors import check_number
from labkit.ranks import train as train_rank


def register(subparsers) -> None:
    description = (
        "Train CIFAR-10 through DeepSpeed. One rank runs in this process; N ranks start locally through the chosen "
        "launcher. Every labkit.ranks.train flag is accepted. Sizes left out (or --width 0, --max-train 0) follow the "
        "device: on a CPU the first 2,000 images at width 0.5 (an epoch takes seconds), on an accelerator all at 1.0."
    )
    parser = subparsers.add_parser("train", help="train CIFAR-10 through DeepSpeed", description=description)
    parser.add_argument("--world-size", type=int, default=0, help="ranks (0 = automatic: all GPUs, 2 on a CPU)")
    parser.add_argument("--launcher", default="auto", help=" | ".join(cifar.LAUNCHERS))
    parser.add_argument("--timeout", type=float, default=None, help="stop all ranks after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the DeepSpeed config and the command")
    # only the flags given are set: one left out is automatic (cifar.plan), one given is kept even when it equals
    # TrainConfig's default (--width 1.0 on a CPU)
    train_rank.add_arguments(parser, defaults=False, helps=cifar.automatic_help())
    parser.set_defaults(func=_train)


def _train(args) -> int:
    if args.timeout is not None:  # before the plan: 0 or nan is no deadline a user means
        check_number("--timeout", args.timeout, 0.0, "pass seconds > 0, or leave it out for no deadline", strict=True)
    defaults = train.TrainConfig()
    run = {"world_size": args.world_size, "launcher": args.launcher}
    run |= {k: getattr(args, k, getattr(defaults, k)) for k in ("epochs", "synthetic")}
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(defaults) if hasattr(args, f.name)}
    options = {k: v for k, v in options.items() if k not in run}
    plan = cifar.plan(**run, **options)
    try:
        print(f"{plan.world_size} rank(s) on {plan.config.device} via {plan.launcher} ({plan.why})", flush=True)
        if args.dry_run:
            print(json.dumps(plan.deepspeed_config, indent=2))
            print(" ".join(plan.command) if plan.command else "(one rank in this process)")
            return 0
        result = cifar.execute(plan, on_output=cifar.printer(), timeout=args.timeout)
        print(json.dumps(result["summary"], indent=2))
        return 0
    finally:
        plan.close()

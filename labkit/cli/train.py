"""`labkit train ...`: CIFAR-10 through DeepSpeed, in this process or on N local ranks (labkit.chapters.cifar)."""

from __future__ import annotations

import json

from labkit import train
from labkit.chapters import cifar


def register(subparsers) -> None:
    description = (
        "Train CIFAR-10 through DeepSpeed. One rank runs in this process; N ranks start locally through the chosen "
        "launcher. Every labkit.ranks.train flag is accepted."
    )
    parser = subparsers.add_parser("train", help="train CIFAR-10 through DeepSpeed", description=description)
    parser.add_argument("--world-size", type=int, default=0, help="ranks (0 = automatic: all GPUs, 2 on a CPU)")
    parser.add_argument("--launcher", default="auto", help=" | ".join(cifar.LAUNCHERS))
    parser.add_argument("--timeout", type=float, default=None, help="stop all ranks after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the DeepSpeed config and the command")
    train.add_arguments(parser)
    parser.set_defaults(func=_train)


def _train(args) -> int:
    # flags left at their defaults stay automatic (sizes and width follow the device, see cifar.plan)
    defaults = train.TrainConfig()
    run = {k: getattr(args, k) for k in ("world_size", "launcher", "epochs", "synthetic")}
    given = vars(train.config_from_args(args))
    options = {k: v for k, v in given.items() if v != getattr(defaults, k) and k not in run}
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

"""`labkit data ...` (CIFAR-10 files: synthesise, download, check) and `labkit train ...` (CIFAR-10 through DeepSpeed)."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    data_p = subparsers.add_parser("data", help="CIFAR-10 data: write a synthetic set, download, check a folder")
    data_sub = data_p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = data_sub.add_parser("synth", help="write a synthetic set in the cifar-10-batches-py format")
    synth.add_argument("--dest", required=True, help="folder to write cifar-10-batches-py into")
    synth.add_argument("--train", type=int, default=5000, help="training images (default 5000; the real set: 50000)")
    synth.add_argument("--test", type=int, default=1000, help="test images (default 1000; the real set: 10000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    down = data_sub.add_parser("download", help="download the official archive (checksum verified) and extract it")
    down.add_argument("--dest", required=True, help="folder to extract cifar-10-batches-py into")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the server")
    down.set_defaults(func=_download)

    check = data_sub.add_parser("check", help="read and validate a cifar-10-batches-py folder")
    check.add_argument("path", help="the folder (or its parent)")
    check.set_defaults(func=_check)

    train_p = subparsers.add_parser(
        "train",
        help="train CIFAR-10 through DeepSpeed (in-process or N local ranks)",
        description="Train CIFAR-10 through DeepSpeed. One rank runs in this process; --world-size N starts N local "
        "ranks through the chosen launcher. Every labkit/train.py flag is accepted.",
    )
    train_p.add_argument("--world-size", type=int, default=1, help="ranks to run (default 1)")
    train_p.add_argument("--launcher", default="auto", help="auto | inprocess | deepspeed | openmpi | mpirun")
    train_p.add_argument("--timeout", type=float, default=None, help="stop all ranks after this many seconds")
    train_p.add_argument(
        "--dry-run", action="store_true", help="validate, print the DeepSpeed config and the launch command, and exit"
    )
    from labkit import train as train_module

    train_module.add_arguments(train_p)
    train_p.set_defaults(func=_train)


def _synth(args) -> int:
    from labkit import data

    folder = data.write_synthetic(args.dest, args.train, args.test, args.seed)
    print(f"wrote a synthetic CIFAR-10-format set ({args.train} train / {args.test} test images) to {folder}")
    return 0


def _download(args) -> int:
    from labkit import data

    folder = data.download(args.dest, timeout=args.timeout)
    print(f"CIFAR-10 ready in {folder}")
    return 0


def _check(args) -> int:
    import numpy as np

    from labkit import data

    arrays = data.load(args.path)
    summary = arrays.summary()
    summary["train_per_class"] = np.bincount(arrays.train_labels, minlength=data.NUM_CLASSES).tolist()
    summary["label_names"] = list(arrays.label_names)
    print(json.dumps(summary, indent=2))
    return 0


def _train(args) -> int:
    from labkit import train, training_run

    cfg, defaults = train.config_from_args(args), train.TrainConfig()
    # flags left at their defaults stay automatic (sizes and width follow the device, see training_run.plan)
    overrides = {
        k: v
        for k, v in vars(cfg).items()
        if v != getattr(defaults, k)
        and k
        not in (
            "data_dir",
            "synthetic",
            "epochs",
            "model",
            "stage",
            "dtype",
            "micro_batch",
            "checkpoint_dir",
            "device",
            "max_train",
            "width",
        )
    }
    plan = training_run.plan(
        data_dir=cfg.data_dir,
        synthetic=cfg.synthetic,
        epochs=cfg.epochs,
        model=cfg.model,
        stage=cfg.stage,
        dtype=cfg.dtype,
        world_size=args.world_size,
        micro_batch=cfg.micro_batch,
        checkpoint_dir=cfg.checkpoint_dir,
        device=cfg.device,
        launcher=args.launcher,
        max_train=cfg.max_train,
        width=0.0 if cfg.width == defaults.width else cfg.width,
        **overrides,
    )
    try:
        if args.dry_run:
            print(json.dumps(plan.deepspeed_config, indent=2))
            print(" ".join(plan.command) if plan.command else "(one rank in this process)")
            return 0
        result = training_run.execute(plan, on_output=training_run.printer(), timeout=args.timeout)
        summary = result["summary"]
        print(json.dumps(summary, indent=2), file=sys.stdout)
        return 0
    finally:
        plan.close()

"""`labkit data ...`: CIFAR-10 files in the cifar-10-batches-py layout: synthesise, download, check."""

from __future__ import annotations

import json

import numpy as np

from labkit import data
from labkit.errors import ConfigError, as_flag


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="CIFAR-10 data: write a synthetic set, download, check a folder")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = actions.add_parser("synth", help="write a synthetic set in the cifar-10-batches-py format")
    synth.add_argument("--dest", required=True, help="folder to write cifar-10-batches-py into")
    synth.add_argument("--train", type=int, default=5000, help="training images (default 5000; the real set: 50000)")
    synth.add_argument("--test", type=int, default=1000, help="test images (default 1000; the real set: 10000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    down = actions.add_parser("download", help="download the official archive (checksum verified) and extract it")
    down.add_argument("--dest", required=True, help="folder to extract cifar-10-batches-py into")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the server")
    down.set_defaults(func=_download)

    check = actions.add_parser("check", help="read and validate a cifar-10-batches-py folder")
    check.add_argument("path", help="the folder (or its parent)")
    check.set_defaults(func=_check)


def _synth(args) -> int:
    folder = data.write_synthetic(args.dest, args.train, args.test, args.seed)
    print(f"wrote a synthetic CIFAR-10-format set ({args.train} train / {args.test} test images) to {folder}")
    return 0


def _download(args) -> int:
    try:
        folder = data.download(args.dest, timeout=args.timeout)
    except ConfigError as exc:
        if exc.field == "timeout":  # named as typed; the others already name --dest or the data folder
            raise as_flag(exc) from None
        raise
    print(f"CIFAR-10 ready in {folder}")
    return 0


def _check(args) -> int:
    arrays = data.load(args.path)
    per_class = np.bincount(arrays.train_labels, minlength=data.NUM_CLASSES).tolist()
    summary = {**arrays.summary(), "train_per_class": per_class, "label_names": list(arrays.label_names)}
    print(json.dumps(summary, indent=2))
    return 0

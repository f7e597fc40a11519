"""The rank entry of CIFAR-10 training and its command line: one flag per TrainConfig field (`--help`), to and from
a TrainConfig. One rank per process:

python -m labkit.ranks.train --synthetic --epochs 2                                  # a world of one
deepspeed --num_gpus 2 --module labkit.ranks.train --data-dir /data                  # local ranks
deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi --module labkit.ranks.train --data-dir /data   # MPIJob
mpirun -n 2 python -m labkit.ranks.train --data-dir /data                            # ranks from Open MPI's env
... --write-config ds.json   then   ... --deepspeed_config ds.json                   # reuse the config
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from labkit import train
from labkit.ranks.runtime import rank_and_world, rank_guard


def add_arguments(
    parser: argparse.ArgumentParser, defaults: bool = True, helps: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (booleans: --synthetic / --no-synthetic). Without defaults, only the flags given
    are set (the `labkit train` CLI keeps those, and leaves the rest automatic); `helps` replaces a field's help and
    its "(default: ...)" (what the CLI picks instead)."""
    for f in dataclasses.fields(train.TrainConfig):
        text = (helps or {}).get(f.name) or f.metadata["help"] + f" (default: {f.default!r})"
        text = text.replace("%", "%%")
        how = {"type": type(f.default), "metavar": f.name.upper()}
        how = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else how
        default = f.default if defaults else argparse.SUPPRESS
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, help=text, **how)
    # DeepSpeed's spelling of the config flag, and the launcher's rank argument
    parser.add_argument(
        "--deepspeed_config", dest="deepspeed_config", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> train.TrainConfig:
    return train.TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(train.TrainConfig)})


def config_args(cfg: train.TrainConfig) -> list[str]:
    """`cfg` as flags of labkit.ranks.train (only the values that differ from the defaults)."""
    args = []
    for f in dataclasses.fields(train.TrainConfig):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if value != f.default:
            args += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit.ranks.train", description="CIFAR-10 training through DeepSpeed.")
    cfg = config_from_args(add_arguments(parser).parse_args(argv))
    with rank_guard():
        cfg = cfg.resolved(rank_and_world()[1])  # fail fast, before the process group
        train.init_distributed(cfg)
        train.train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

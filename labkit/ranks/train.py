"""The rank entry of CIFAR-10 training; its flags are TrainConfig's fields (`--help`). One rank per process:

python -m labkit.ranks.train --synthetic --epochs 2                                  # a world of one
deepspeed --num_gpus 2 --module labkit.ranks.train --data-dir /data                  # local ranks
deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi --module labkit.ranks.train --data-dir /data   # MPIJob
mpirun -n 2 python -m labkit.ranks.train --data-dir /data                            # ranks from Open MPI's env
... --write-config ds.json   then   ... --deepspeed_config ds.json                   # reuse the config
"""

from __future__ import annotations

import argparse
import sys

from labkit import train
from labkit.ranks.runtime import rank_and_world, rank_guard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit.ranks.train", description="CIFAR-10 training through DeepSpeed.")
    cfg = train.config_from_args(train.add_arguments(parser).parse_args(argv))
    with rank_guard():
        cfg = cfg.resolved(rank_and_world()[1])  # fail fast, before the process group
        train.init_distributed(cfg)
        train.train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

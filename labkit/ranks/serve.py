"""One rank of `labkit serve`: every rank loads its part of the model and joins every forward pass; rank 0 also
answers HTTP (labkit.serving.service). Started by the DeepSpeed launcher:
`deepspeed --num_gpus N --module labkit.ranks.serve --model regressor --mode tp --port 8000 ...`
(or with `--hostfile /etc/mpi/hostfile --launcher openmpi` in an MPIJob launcher, where rank 0 runs on worker 0).
"""

from __future__ import annotations

import contextlib
import os
import sys

from labkit.ranks.runtime import rank_guard
from labkit.serving.config import ServeConfig
from labkit.serving.service import run


def main(argv: list[str] | None = None) -> int:
    config = ServeConfig.from_argv(argv)
    with rank_guard():  # its exit shuts the process group down in order
        code = run(config)
    # Stopped cleanly: leave now. The interpreter's own teardown of torch and DeepSpeed takes 1-2 s per rank on a busy
    # CPU, which a stop (/shutdown, SIGTERM, a pod's grace period) would spend waiting.
    with contextlib.suppress(OSError):  # stopped because the process that read our output exited: nothing to flush to
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

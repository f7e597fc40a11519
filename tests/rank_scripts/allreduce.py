"""A minimal rank script for launcher tests: init DeepSpeed's comm, all-reduce, optionally fail or hang."""

import argparse
import os
import time

from labkit.launch import rank_guard

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=0)  # appended by the deepspeed launcher
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--hang", type=float, default=0.0)
args = parser.parse_args()

with rank_guard():
    import deepspeed
    import torch
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo", distributed_port=int(os.environ.get("MASTER_PORT") or 29500))
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == args.fail_rank:
        raise RuntimeError(f"deliberate failure on rank {rank}")
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    print(f"rank {rank}/{world} sum={t.item():g}", flush=True)
    if args.hang:
        time.sleep(args.hang)
    dist.barrier()

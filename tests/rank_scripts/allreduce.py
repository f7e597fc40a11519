"""A minimal rank script for launcher tests: init DeepSpeed's comm, all-reduce, optionally fail (before or after the
rendezvous), run out of device memory, die without a word (a signal, as the OOM killer or a segfault ends a rank) or
hang."""

import argparse
import os
import signal
import time

from labkit.ranks.runtime import init_deepspeed, rank_and_world, rank_guard

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=0)  # appended by the deepspeed launcher
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--fail-before-init", type=int, default=-1, help="this rank fails before the rendezvous")
parser.add_argument(
    "--kill-rank", type=int, default=-1, help="this rank sends itself --kill-signal after the all-reduce"
)
parser.add_argument("--kill-signal", type=int, default=int(signal.SIGKILL))
parser.add_argument("--oom-rank", type=int, default=-1, help="this rank asks for more memory than its device has")
parser.add_argument("--hang", type=float, default=0.0)
parser.add_argument("--listeners", action="store_true", help="print the TCP addresses this rank listens on")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
args = parser.parse_args()

with rank_guard():
    if rank_and_world()[0] == args.fail_before_init:
        raise ValueError("device_id cuda:1 is out of range (a drill: this rank dies before the rendezvous)")
    import torch
    import torch.distributed as dist

    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    init_deepspeed(args.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == args.fail_rank:
        raise RuntimeError(f"deliberate failure on rank {rank}")
    t = torch.tensor([rank + 1.0], device=args.device)
    dist.all_reduce(t)
    print(f"rank {rank}/{world} sum={t.item():g}", flush=True)
    if args.listeners:
        import psutil

        listening = [c.laddr for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        port, where = os.environ["MASTER_PORT"], sorted({f"{a.ip}:{a.port}" for a in listening})
        print(f"rank {rank} store port {port} listens on {where}", flush=True)
    if rank == args.kill_rank:
        os.kill(os.getpid(), args.kill_signal)
    if rank == args.oom_rank:  # the allocator's own error (not the kernel's OOM killer: that is --kill-rank's SIGKILL)
        most = torch.cuda.get_device_properties(t.device).total_memory if args.device == "cuda" else 2**59
        torch.empty(2 * most, dtype=torch.uint8, device=t.device)
    dist.barrier()
    if args.hang:
        time.sleep(args.hang)

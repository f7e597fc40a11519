"""A small, real DeepSpeed job: what the interactive MPIJob chapter runs inside its launcher.

Every rank trains the same tiny regression model on its own shard of synthetic data for a few ZeRO steps, then
all-reduces a check value, and prints `LABKIT_METRIC {json}` lines (rank, world size, step, loss) that
labkit reads back. Runs under any launcher: `deepspeed --module labkit.ranks.hello` (locally or `--launcher openmpi` on
a cluster) or `mpirun ... python -m labkit.ranks.hello`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from labkit.launch import COLLECTIVE_TIMEOUT_S, local_threads
from labkit.ranks.runtime import init_deepspeed, rank_guard, say

TAG = "LABKIT_METRIC"


def emit(**value) -> None:
    say(f"{TAG} {json.dumps(value)}")


FLAGS = (  # flag, type, default, help
    ("--steps", int, 20, "optimizer steps per rank"),
    ("--zero-stage", int, 1, "ZeRO stage 0-3"),
    ("--hidden", int, 64, "hidden width of the 2-layer model"),
    ("--batch", int, 64, "micro-batch per rank"),
    ("--lr", float, 0.02, "Adam learning rate"),
    ("--step-sleep", float, 0.0, "seconds to sleep per step (makes a run last)"),
    ("--fail-at-step", int, -1, "raise on --fail-rank at this step (failure drills)"),
    ("--fail-rank", int, 0, "the rank that fails when --fail-at-step is set"),
    ("--local_rank", int, -1, "set by the DeepSpeed launcher"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind, default, text in FLAGS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    args = parser.parse_args(argv)
    if args.zero_stage not in (0, 1, 2, 3):
        parser.error(f"--zero-stage: {args.zero_stage} is not one of 0, 1, 2, 3")
    with rank_guard():
        run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    # Ranks share the host's cores: more threads than cores/ranks makes every rank slower.
    torch.set_num_threads(local_threads())
    init_deepspeed(timeout_s=COLLECTIVE_TIMEOUT_S)
    rank, world = dist.get_rank(), dist.get_world_size()
    say(f"rank {rank}/{world} on {socket.gethostname()}: backend {dist.get_backend()}, ZeRO stage {args.zero_stage}")

    torch.manual_seed(0)  # same initial weights and target on every rank
    features, nn = 16, torch.nn
    model = nn.Sequential(nn.Linear(features, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 1))
    true_w = torch.randn(features, 1)
    data_gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data shard
    optimizer = {"type": "Adam", "params": {"lr": args.lr, "torch_adam": True}}
    config = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1, "optimizer": optimizer}
    config |= {"zero_optimization": {"stage": args.zero_stage}, "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    device, ids = engine.device, {"rank": rank, "world_size": world}
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        x = torch.randn(args.batch, features, generator=data_gen)
        y = torch.tanh(x @ true_w) + 0.01 * torch.randn(args.batch, 1, generator=data_gen)
        loss = torch.nn.functional.mse_loss(engine(x.to(device)), y.to(device))
        engine.backward(loss)
        engine.step()
        if step == args.fail_at_step and rank == args.fail_rank:
            raise RuntimeError(f"failure drill: rank {rank} fails at step {step}")
        if args.step_sleep:
            time.sleep(args.step_sleep)
        emit(event="step", **ids, step=step, loss=float(loss.item()), step_s=time.perf_counter() - t0)

    check = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(check)
    params = sum(p.numel() for p in model.parameters())
    run_facts = {"host": socket.gethostname(), "backend": dist.get_backend(), "zero_stage": args.zero_stage}
    total = {"allreduce_sum": float(check.item()), "allreduce_expected": world * (world + 1) / 2, "params": params}
    emit(event="done", **ids, **run_facts, steps=args.steps, **total)


if __name__ == "__main__":
    sys.exit(main())

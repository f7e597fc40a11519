"""A small, real DeepSpeed job: what the interactive MPIJob chapter runs inside its launcher.

Every rank trains the same tiny regression model on its own shard of synthetic data for a few ZeRO steps, then
all-reduces a check value, and prints `LABKIT_METRIC {json}` lines (rank, world size, step, loss) that
`labkit.jobs.parse_metrics` reads back. Runs under any launcher: `deepspeed` (locally or `--launcher openmpi` on a
cluster), `mpirun`, or `deepspeed --module labkit.jobs.hello_deepspeed`. Imports nothing from labkit (it runs in ranks).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback

# Run by path, this file's folder is sys.path[0], and its siblings (kubernetes.py, local.py...) would shadow
# top-level modules of those names for everything the rank imports.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

TAG = "LABKIT_METRIC"


def say(text: str) -> None:
    # One write per line: under `python -u` print() writes the text and the newline separately, and mpirun's
    # --tag-output then glues another rank's output onto the unfinished line.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def emit(**value) -> None:
    say(f"{TAG} {json.dumps(value)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per rank")
    p.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2, 3], help="ZeRO stage")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of the 2-layer model")
    p.add_argument("--batch", type=int, default=64, help="micro-batch per rank")
    p.add_argument("--lr", type=float, default=0.02, help="Adam learning rate")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (makes a run last)")
    p.add_argument("--fail-at-step", type=int, default=-1, help="raise on --fail-rank at this step (failure drills)")
    p.add_argument("--fail-rank", type=int, default=0, help="the rank that fails when --fail-at-step is set")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the DeepSpeed launcher")
    return p.parse_args(argv)


def local_world_size() -> int:
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import deepspeed
    import torch
    import torch.distributed as dist

    # Ranks share the host's cores: more threads than cores/ranks makes every rank slower.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size()))
    # Under `--launcher openmpi` DeepSpeed drops the runner's --master_port: its MPI discovery uses this argument
    # (default 29500), so two jobs on one host would meet on the same port. The kit's local exec exports MASTER_PORT.
    deepspeed.init_distributed(distributed_port=int(os.environ.get("MASTER_PORT") or 29500))
    rank, world = dist.get_rank(), dist.get_world_size()
    say(f"rank {rank}/{world} on {socket.gethostname()}: backend {dist.get_backend()}, ZeRO stage {args.zero_stage}")

    torch.manual_seed(0)  # same initial weights and target on every rank
    features = 16
    model = torch.nn.Sequential(torch.nn.Linear(features, args.hidden), torch.nn.Tanh(),
                                torch.nn.Linear(args.hidden, 1))
    true_w = torch.randn(features, 1)
    data_gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data shard
    config = {
        "train_micro_batch_size_per_gpu": args.batch,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Adam", "params": {"lr": args.lr, "torch_adam": True}},
        "zero_optimization": {"stage": args.zero_stage},
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    device = engine.device
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
        emit(event="step", rank=rank, world_size=world, step=step, loss=float(loss.item()),
             step_s=time.perf_counter() - t0)

    check = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(check)
    emit(event="done", rank=rank, world_size=world, host=socket.gethostname(), backend=dist.get_backend(),
         zero_stage=args.zero_stage, steps=args.steps, allreduce_sum=float(check.item()),
         allreduce_expected=world * (world + 1) / 2, params=sum(p.numel() for p in model.parameters()))
    dist.barrier()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BaseException as exc:  # noqa: BLE001 - tagged like labkit.launch.rank_guard, then re-raised
        if not isinstance(exc, SystemExit):
            rank = os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "?"))
            print(f"LABKIT_RANK_ERROR rank={rank} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
        raise

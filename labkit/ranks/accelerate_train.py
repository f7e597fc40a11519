"""The training script `accelerate launch` runs on each rank: a small causal LM built from a transformers config (no
download) trained through accelerate's DeepSpeed integration, then used for greedy inference through the same engine.

    accelerate launch --config_file acc.yaml -m labkit.ranks.accelerate_train --out RUN --stage 2 --num-processes 2

It proves DeepSpeed is really active before training (`check_deepspeed_active`): accelerate falls back silently (exit 0,
no DeepSpeed) under `--cpu` or ACCELERATE_USE_CPU=1. The task is counting: every sequence is start, start+1, ...
(mod vocab), so a trained model continues any prompt and its inference is checkable. Each rank writes rank_<r>.json:
losses, step times, what the check saw, model-state bytes counted in the engine, the generated tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from labkit.launch import BACKEND_OF, COLLECTIVE_TIMEOUT_S, PROGRESS_TAG
from labkit.ranks.runtime import init_deepspeed, rank_guard, say, set_local_size
from labkit.ranks.zero_probe import accel_stats, inventory


class DeepSpeedNotActive(RuntimeError):
    """accelerate ran the script without the DeepSpeed engine it was configured for."""


def check_deepspeed_active(accelerator, model, stage: int, num_processes: int, world_size: int) -> dict:
    """What accelerate really built, or DeepSpeedNotActive in one line naming what differs and the likely cause."""
    from deepspeed import DeepSpeedEngine

    seen = {"engine": type(model).__name__, "distributed_type": str(accelerator.distributed_type).split(".")[-1]}
    seen |= {"num_processes": accelerator.num_processes, "world_size": world_size}
    seen["zero_stage"] = model.zero_optimization_stage() if isinstance(model, DeepSpeedEngine) else None
    problems = []
    if not isinstance(model, DeepSpeedEngine):
        problems.append(f"prepare() returned {seen['engine']}, not a DeepSpeedEngine ({seen['distributed_type']})")
    elif seen["zero_stage"] != stage:
        problems.append(f"the engine runs ZeRO stage {seen['zero_stage']}, the config asked for {stage}")
    if not (accelerator.num_processes == world_size == num_processes):
        problems.append(f"{accelerator.num_processes} accelerate processes, a world of {world_size}, "
                        f"{num_processes} configured")  # fmt: skip
    if problems:
        cause = "likely cause: --cpu or ACCELERATE_USE_CPU=1 (accelerate then falls back without DeepSpeed)"
        raise DeepSpeedNotActive("DeepSpeed is not active: " + "; ".join(problems) + f"; {cause}")
    return seen


def counting_batches(n: int, micro_batch: int, seq: int, vocab: int, seed: int):
    """n sequences of `seq` tokens counting up from a random start (mod vocab)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n * micro_batch, 1), generator=g)
    return (start + torch.arange(seq)) % vocab


def build_model(hidden: int, layers: int, vocab: int, seq: int):
    """A Llama-shaped causal LM from a config: random weights, nothing downloaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 32)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2 * seq + 64,
                         tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def hide_gpus_from_cpu_ranks(env) -> None:
    """CPU ranks on a GPU host: DeepSpeed's launcher sets CUDA_VISIBLE_DEVICES to the rank ids even for its CPU
    accelerator (deepspeed/accelerator/cpu_accelerator.py, set_visible_devices_envs), and accelerate would then put
    rank N on cuda:N (there is no cuda:1 on a 1-GPU machine). Before torch is imported."""
    if env.get("DS_ACCELERATOR") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""


def train(args) -> None:
    from datetime import timedelta

    hide_gpus_from_cpu_ranks(os.environ)
    import torch

    set_local_size()  # before DeepSpeed's accelerator is asked (torchrun, accelerate's local launcher, leaves it unset)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from deepspeed.accelerator import get_accelerator

    device_type = get_accelerator().device_name()
    if device_type != "cpu":  # before the process group: NCCL binds to the current device
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))
    init_deepspeed(timeout_s=COLLECTIVE_TIMEOUT_S)  # the kit's quiet start; accelerate then reuses the group
    backend = BACKEND_OF.get(device_type)
    # On CPU accelerate must be told gloo, or every rank believes it is rank 0 (see ../shared notes).
    handler = InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    acc = Accelerator(kwargs_handlers=[handler])
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    torch.manual_seed(0)
    model = build_model(args.hidden, args.layers, args.vocab, args.seq)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = counting_batches(args.steps * world, args.micro_batch, args.seq, args.vocab, seed=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=args.micro_batch)
    t0 = time.perf_counter()
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    init_s = time.perf_counter() - t0
    seen = check_deepspeed_active(acc, model, args.stage, args.num_processes, world)
    rank = acc.process_index
    memory = {"init": inventory(model, model.basic_optimizer, device_type)}
    losses, step_times = [], []
    for step, (tokens,) in enumerate(loader, start=1):
        t = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        get_accelerator().synchronize()
        step_times.append(time.perf_counter() - t)
        losses.append(float(loss.detach().float()))
        if step == 1:
            memory["step"] = inventory(model, model.basic_optimizer, device_type)
        if rank == 0:
            say(f"{PROGRESS_TAG} step={step}")
    memory["accelerator"] = accel_stats(get_accelerator(), device_type)
    prompt = [3, 4, 5, 6]
    generated, infer_s = greedy(model, prompt, args.generate, acc.device)
    expected = [(prompt[-1] + 1 + i) % args.vocab for i in range(args.generate)]
    result = {"rank": rank, "world_size": world, "device_type": device_type, "check": seen, "params": params}
    result |= {"init_s": init_s, "losses": losses, "step_times_s": step_times, "memory": memory}
    result |= {"optimizer_class": type(model.optimizer).__name__, "prompt": prompt, "generated": generated}
    result |= {"expected": expected, "inference_s": infer_s}
    out = Path(args.out)
    (out / f".rank_{rank}.json.tmp").write_text(json.dumps(result))
    (out / f".rank_{rank}.json.tmp").replace(out / f"rank_{rank}.json")
    acc.wait_for_everyone()


def greedy(engine, prompt: list[int], new_tokens: int, device) -> tuple[list[int], float]:
    """Greedy decoding through the DeepSpeed engine: under ZeRO-3 every forward gathers each layer's partitioned
    parameters from all ranks, so every rank runs the same steps (a rank that stopped early would hang its peers)."""
    import torch

    engine.eval()
    ids = torch.tensor([prompt], device=device)
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = engine(input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :].tolist(), time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run directory: rank_<r>.json files land here")
    parser.add_argument("--stage", type=int, required=True, help="the ZeRO stage the config asks for (checked)")
    parser.add_argument("--num-processes", type=int, required=True, help="the configured process count (checked)")
    numbers = {"steps": 30, "micro-batch": 8, "seq": 32, "hidden": 128, "layers": 2, "vocab": 64, "generate": 12}
    for name, default in numbers.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--local_rank", type=int, default=0, help="set by DeepSpeed's launcher (unused)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with rank_guard():
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

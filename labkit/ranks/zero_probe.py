"""The script each rank runs for a ZeRO comparison: one launch, several DeepSpeed engines, one JSON file per rank.

    deepspeed --num_gpus 2 --module labkit.ranks.zero_probe --plan plan.json --out RUN_DIR

For every configuration in the plan it builds the same MLP, calls `deepspeed.initialize`, trains a few steps and, at
each phase (init, forward, backward, step), inventories the engine's tensors: every tensor reachable from the module,
the ZeRO optimizer and the inner optimizer, counted once per storage and classified by kind (low-precision params, fp32
master weights, gradients, optimizer state, reduction buffers). That count is exact on any device; on a GPU the
allocator's own numbers (`memory_allocated`, peak) are recorded beside it. The engine is freed before the next config.

Imports only the standard library, torch, deepspeed and labkit.launch's rank guard.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from labkit.launch import rank_guard

STATE_KINDS = ("params", "master_params", "gradients", "optimizer_states", "buffers")  # = labkit.memory.STATE_KINDS
# Walk into objects of these packages only: the optimizer wrappers hold their flat buffers in plain attributes.
_WALK_PACKAGES = ("deepspeed.", "torch.optim")


def build_model(hidden: int, layers: int):
    """`layers` blocks of [Linear(h, 4h), GELU, Linear(4h, h)]: 8h^2 + 5h parameters each (labkit.memory.mlp_shapes)."""
    import torch.nn as nn

    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)]
    return nn.Sequential(*blocks)


# ----------------------------------------------------------------------------------------------------------------------
# Tensor inventory
# ----------------------------------------------------------------------------------------------------------------------
class Inventory:
    """Storages seen so far -> (bytes, kind, device); the first classification of a storage wins."""

    def __init__(self, accelerator_device_type: str):
        self.accel = accelerator_device_type
        self.storages: dict[tuple, dict] = {}

    def add(self, tensor, kind: str, where: str = "") -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        if storage.nbytes() == 0 or storage.data_ptr() == 0:
            return
        key = (tensor.device.type, tensor.device.index, storage.data_ptr())
        if key in self.storages:
            return
        location = "device" if tensor.device.type == self.accel else "host"
        self.storages[key] = {"bytes": int(storage.nbytes()), "kind": kind, "location": location, "where": where}

    def totals(self) -> dict:
        out = {"device": {k: 0 for k in STATE_KINDS}, "host": {k: 0 for k in STATE_KINDS}}
        for s in self.storages.values():
            out[s["location"]][s["kind"]] += s["bytes"]
        return out

    def by_holder(self) -> list[dict]:
        """Bytes per (holder, kind, location), list indices folded: where the bytes went, for a table."""
        rows: dict[tuple, dict] = {}
        for s in self.storages.values():
            holder = re.sub(r"\[\d+\]", "[i]", s["where"])
            key = (holder, s["kind"], s["location"])
            row = rows.setdefault(
                key, {"holder": holder, "kind": s["kind"], "location": s["location"], "bytes": 0, "tensors": 0}
            )
            row["bytes"] += s["bytes"]
            row["tensors"] += 1
        return sorted(rows.values(), key=lambda r: -r["bytes"])


def _walk(obj, path: str, visit, seen: set, depth: int = 0) -> None:
    import torch

    if depth > 8 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        visit(obj, path)
        grad = obj.grad if obj.requires_grad or obj.grad is not None else None
        if grad is not None:
            visit(grad, path + ".grad")
        return
    if isinstance(obj, torch.nn.Module):
        return  # parameters are classified explicitly; do not wander into the model
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            if isinstance(k, torch.Tensor):
                _walk(k, f"{path}[key]", visit, seen, depth + 1)
            _walk(v, f"{path}[{k if isinstance(k, (str, int)) else '.'}]", visit, seen, depth + 1)
        return
    if isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(list(obj)):
            _walk(v, f"{path}[{i}]", visit, seen, depth + 1)
        return
    module = type(obj).__module__ or ""
    if hasattr(obj, "__dict__") and module.startswith(_WALK_PACKAGES):
        for name, v in list(vars(obj).items()):
            if name in ("module", "_modules", "deepspeed", "engine", "parent", "timers", "mpu"):
                continue
            _walk(v, f"{path}.{name}", visit, seen, depth + 1)


def _kind_from_path(path: str) -> str:
    p = path.lower()
    if "ipg" in p or "bucket" in p or "temp_" in p or "buffer_of_bit16" in p or "allgather" in p:
        return "buffers"
    if "grad" in p:
        return "gradients"
    if "fp32" in p or "master" in p:
        return "master_params"
    if "fp16" in p or "bit16" in p or "bf16" in p:
        return "params"
    return "buffers"


def inventory(engine, basic_optimizer, accel_type: str, detail: bool = False) -> dict:
    """Classified byte counts of every tensor the engine holds, by location (device/host) and kind."""
    import torch

    inv = Inventory(accel_type)
    module_params = list(engine.module.parameters())
    # 1. the model's own (low-precision, possibly partitioned) parameters
    for p in module_params:
        ds_tensor = getattr(p, "ds_tensor", None)  # ZeRO-3 keeps this rank's partition here
        if ds_tensor is not None:
            inv.add(ds_tensor, "params", "ds_tensor")
        inv.add(p.data, "params", "module")
    # 2. what the inner optimizer updates: in ZeRO/mixed precision these are the fp32 master partitions
    opt_params = [q for g in basic_optimizer.param_groups for q in g["params"]]
    for q in opt_params:
        inv.add(q, "master_params", "optimizer.param_groups")
    # ZeRO-3 empties param_groups between steps: the state's keys are the master partitions too
    for q in basic_optimizer.state.keys():
        inv.add(q, "master_params", "optimizer.state[key]")
    # 3. optimizer state (Adam moments, step counters)
    for state in basic_optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                inv.add(v, "optimizer_states", "optimizer.state")
    # 4. gradients held on the parameters themselves
    for q in module_params + opt_params:
        if q.grad is not None:
            inv.add(q.grad, "gradients", "param.grad")
    # 5. everything else the ZeRO/mixed-precision wrapper holds (flat buffers, grad partitions, buckets)
    seen: set = set()
    wrapper = engine.optimizer

    def visit(t, path):
        inv.add(t, _kind_from_path(path), path)

    if wrapper is not None and wrapper is not basic_optimizer:
        _walk(wrapper, "optimizer", visit, seen)
    # The engine object itself holds no model states beyond its module and optimizer (walked above); anything
    # else alive in the process (inputs, activations, allocator slack) shows up only in memory_allocated on a GPU.
    out = inv.totals()
    if detail:
        out["holders"] = inv.by_holder()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# One configuration
# ----------------------------------------------------------------------------------------------------------------------
def _accel_stats(accel, device_type: str) -> dict:
    if device_type in ("cpu",):
        return {}
    return {
        "allocated": int(accel.memory_allocated()),
        "peak_allocated": int(accel.max_memory_allocated()),
        "reserved": int(accel.memory_reserved()),
    }


def run_config(cfg: dict, rank: int, world_size: int, progress) -> dict:
    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    device_type = accel.device_name()
    device = torch.device(accel.current_device_name())
    if cfg.get("fail_rank") == rank and cfg.get("fail_at") == "init":
        raise RuntimeError(f"injected failure on rank {rank} before initialize (config {cfg['name']})")

    gc.collect()
    accel.empty_cache()
    if device_type != "cpu":
        # The probe owns this process: resetting the peak here measures this config alone.
        accel.reset_peak_memory_stats()
    before = _accel_stats(accel, device_type)

    torch.manual_seed(cfg.get("seed", 0))
    model = build_model(cfg["hidden"], cfg["layers"])
    t0 = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg["ds_config"])
    init_s = time.perf_counter() - t0
    basic = engine.basic_optimizer
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["dtype"]]

    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(cfg["micro_batch"], cfg["seq"], cfg["hidden"], generator=gen).to(device=device, dtype=dtype)
    target = torch.randn(cfg["micro_batch"], cfg["seq"], cfg["hidden"], generator=gen).to(device=device, dtype=dtype)

    phases = []

    def snap(name: str, step: int) -> None:
        if device_type != "cpu":
            accel.synchronize()
        detail = name == "backward" and step == min(2, cfg["steps"]) or name == "init"
        phases.append(
            {
                "phase": name,
                "step": step,
                "tensors": inventory(engine, basic, device_type, detail),
                "accelerator": _accel_stats(accel, device_type),
            }
        )

    snap("init", 0)
    step_times, losses = [], []
    for step in range(1, cfg["steps"] + 1):
        if cfg.get("fail_rank") == rank and cfg.get("fail_at") == "step" and step == 2:
            raise RuntimeError(f"injected failure on rank {rank} at step {step} (config {cfg['name']})")
        if device_type != "cpu":
            accel.synchronize()
        t = time.perf_counter()
        out = engine(x)
        loss = torch.nn.functional.mse_loss(out.float(), target.float())
        snap_fwd = step <= 2 or step == cfg["steps"]
        if snap_fwd:
            t_pause = time.perf_counter()
            snap("forward", step)
            t += time.perf_counter() - t_pause
        engine.backward(loss)
        if snap_fwd:
            t_pause = time.perf_counter()
            snap("backward", step)
            t += time.perf_counter() - t_pause
        engine.step()
        if device_type != "cpu":
            accel.synchronize()
        dt = time.perf_counter() - t
        losses.append(float(loss.detach().float().item()))
        step_times.append(dt)
        if snap_fwd:
            snap("step", step)
        progress(cfg["name"], step)
    warmup = min(cfg.get("warmup", 1), len(step_times) - 1)
    measured = step_times[warmup:]
    peak = _accel_stats(accel, device_type)
    params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    result = {"name": cfg["name"], "rank": rank, "world_size": world_size, "device_type": device_type}
    result |= {"device_name": _device_name(accel, device_type), "zero_stage": int(engine.zero_optimization_stage())}
    result |= {"optimizer_class": type(engine.optimizer).__name__, "basic_optimizer_class": type(basic).__name__}
    result |= {"param_count": int(params), "init_s": init_s, "step_times_s": step_times, "losses": losses}
    result |= {"step_time_s": statistics.median(measured), "phases": phases, "accelerator_before": before}
    result["peak_allocated"] = peak.get("peak_allocated")
    result["memory_summary"] = _memory_summary(device_type) if cfg.get("memory_summary") else None
    # Was the engine really freed? (DeepSpeed keeps ZeRO-3's top module in a module-level list, which keeps the whole
    # engine alive: the next configuration would start with the previous one's memory still allocated.)
    import weakref

    probes = [weakref.ref(q) for q in [*(q for g in basic.param_groups for q in g["params"]), *basic.state.keys()]]
    engine.destroy()
    _release_deepspeed_globals(engine.module)
    engine = basic = model = x = target = out = loss = None  # (not del: snap() still names them)
    gc.collect()
    accel.empty_cache()
    result["engine_released"] = not any(r() is not None for r in probes)
    result["accelerator_after"] = _accel_stats(accel, device_type)
    return result


def _release_deepspeed_globals(module) -> None:
    try:
        from deepspeed.runtime.zero import parameter_offload
    except ImportError:
        return
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack[:] = [m for m in stack if m is not module]


def _memory_summary(device_type: str) -> str | None:
    if device_type != "cuda":
        return None
    import torch

    return torch.cuda.memory_summary(abbreviated=True)


def _device_name(accel, device_type: str) -> str:
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return device_type


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="JSON file: {'configs': [...], 'timeout_s': N}")
    parser.add_argument("--out", required=True, help="run directory: rank_<r>.json files land here")
    parser.add_argument("--local_rank", type=int, default=0, help="set by the DeepSpeed launcher")
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    with rank_guard():
        probe(plan, out_dir, args.local_rank)
    return 0


def probe(plan: dict, out_dir: Path, local_rank: int) -> None:
    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    if get_accelerator().device_name() != "cpu":  # before the process group: NCCL binds to the current device
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", local_rank)))
    # A rank that dies mid-collective must not leave its peers blocked for ever.
    timeout = timedelta(seconds=plan.get("collective_timeout_s", 300))
    deepspeed.init_distributed(timeout=timeout, distributed_port=int(os.environ.get("MASTER_PORT") or 29500))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    results = []

    def progress(name, step):
        if rank == 0:
            print(f"LABKIT_PROGRESS config={name} step={step}", flush=True)

    for cfg in plan["configs"]:
        results.append(run_config(cfg, rank, world, progress))
        tmp = out_dir / f".rank_{rank}.json.tmp"
        tmp.write_text(json.dumps({"rank": rank, "world_size": world, "results": results}))
        tmp.replace(out_dir / f"rank_{rank}.json")  # complete configs survive a later failure
    torch.distributed.barrier()


if __name__ == "__main__":
    sys.exit(main())

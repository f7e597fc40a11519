"""The script each rank runs for a ZeRO comparison: one launch, several DeepSpeed engines, one JSON file per rank.

    deepspeed --num_gpus 2 --module labkit.ranks.zero_probe --plan plan.json --out RUN_DIR

For every configuration in the plan it builds the same MLP, calls `deepspeed.initialize`, trains a few steps and, at
each phase (init, forward, backward, step), counts every tensor reachable from the module, the ZeRO optimizer and the
inner optimizer, once per storage, classified by kind of model state. That count is exact on any device; on a GPU the
allocator's own numbers are recorded beside it. The engine is freed before the next configuration.
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
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from labkit.launch import COLLECTIVE_TIMEOUT_S, PROGRESS_TAG
from labkit.memory import LOCATIONS, STATE_KINDS
from labkit.ranks.runtime import init_deepspeed, rank_guard, say

# Walk into objects of these packages only: the optimizer wrappers hold their flat buffers in plain attributes.
_WALK_PACKAGES = ("deepspeed.", "torch.optim")
_SKIP_ATTRS = ("module", "_modules", "deepspeed", "engine", "parent", "timers", "mpu")
_STATS = {"allocated": "memory_allocated", "peak_allocated": "max_memory_allocated", "reserved": "memory_reserved"}
_KIND_WORDS = (  # the first kind whose words appear in a holder's attribute path
    ("buffers", ("ipg", "bucket", "temp_", "buffer_of_bit16", "allgather")),
    ("gradients", ("grad",)),
    ("master_params", ("fp32", "master")),
    ("params", ("fp16", "bit16", "bf16")),
)


def build_model(hidden: int, layers: int):
    """`layers` blocks of [Linear(h, 4h), GELU, Linear(4h, h)]: labkit.memory.mlp_tensor_numels gives the sizes."""
    import torch.nn as nn

    blocks = ((nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)) for _ in range(layers))
    return nn.Sequential(*[m for block in blocks for m in block])


@dataclass
class Inventory:
    """Storages seen so far -> (bytes, kind, location, holder); the first classification of a storage wins."""

    accel: str  # the accelerator's device type: tensors on any other device are on the host
    storages: dict[tuple, dict] = field(default_factory=dict)

    def add(self, tensor, kind: str, where: str = "") -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = (tensor.device.type, tensor.device.index, storage.data_ptr())
        if storage.nbytes() == 0 or storage.data_ptr() == 0 or key in self.storages:
            return
        location = "device" if tensor.device.type == self.accel else "host"
        self.storages[key] = {"bytes": int(storage.nbytes()), "kind": kind, "location": location, "where": where}

    def totals(self) -> dict:
        out = {loc: dict.fromkeys(STATE_KINDS, 0) for loc in LOCATIONS}
        for s in self.storages.values():
            out[s["location"]][s["kind"]] += s["bytes"]
        return out

    def by_holder(self) -> list[dict]:
        """Bytes per (holder, kind, location), list indices folded: where the bytes went, for a table."""
        rows: dict[tuple, dict] = {}
        for s in self.storages.values():
            holder = re.sub(r"\[\d+\]", "[i]", s["where"])
            key = (holder, s["kind"], s["location"])
            row = rows.setdefault(key, dict(zip(("holder", "kind", "location", "bytes", "tensors"), (*key, 0, 0))))
            row["bytes"], row["tensors"] = row["bytes"] + s["bytes"], row["tensors"] + 1
        return sorted(rows.values(), key=lambda r: -r["bytes"])


def _walk(obj, path: str, visit, seen: set, depth: int = 0) -> None:
    import torch

    if depth > 8 or id(obj) in seen or isinstance(obj, torch.nn.Module):  # parameters are classified explicitly
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        visit(obj, path)
        if obj.grad is not None:
            visit(obj.grad, path + ".grad")
    elif isinstance(obj, dict):
        for k, v in list(obj.items()):
            if isinstance(k, torch.Tensor):
                _walk(k, f"{path}[key]", visit, seen, depth + 1)
            _walk(v, f"{path}[{k if isinstance(k, (str, int)) else '.'}]", visit, seen, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(list(obj)):
            _walk(v, f"{path}[{i}]", visit, seen, depth + 1)
    elif hasattr(obj, "__dict__") and (type(obj).__module__ or "").startswith(_WALK_PACKAGES):
        for name, v in list(vars(obj).items()):
            if name not in _SKIP_ATTRS:
                _walk(v, f"{path}.{name}", visit, seen, depth + 1)


def _kind_from_path(path: str) -> str:
    p = path.lower()
    return next((kind for kind, words in _KIND_WORDS if any(w in p for w in words)), "buffers")


def inventory(engine, basic_optimizer, accel_type: str, detail: bool = False) -> dict:
    """Classified byte counts of every tensor the engine holds, by location (device/host) and kind."""
    inv = Inventory(accel_type)
    module_params = list(engine.module.parameters())
    for p in module_params:  # the model's own (low-precision, possibly partitioned) parameters
        inv.add(getattr(p, "ds_tensor", None), "params", "ds_tensor")  # ZeRO-3 keeps this rank's partition here
        inv.add(p.data, "params", "module")
    # What the inner optimizer updates: in ZeRO/mixed precision the fp32 master partitions. ZeRO-3 empties
    # param_groups between steps: the state's keys are the master partitions too.
    opt_params = [q for g in basic_optimizer.param_groups for q in g["params"]]
    for where, tensors in (("optimizer.param_groups", opt_params), ("optimizer.state[key]", basic_optimizer.state)):
        for q in tensors:
            inv.add(q, "master_params", where)
    for state in basic_optimizer.state.values():  # Adam moments, step counters
        for v in state.values():
            inv.add(v, "optimizer_states", "optimizer.state")
    for q in module_params + opt_params:
        inv.add(q.grad, "gradients", "param.grad")
    # Everything else the ZeRO/mixed-precision wrapper holds (flat buffers, grad partitions, buckets). The engine holds
    # no model states beyond its module and optimizer; the rest of the process shows only in memory_allocated.
    if engine.optimizer is not None and engine.optimizer is not basic_optimizer:
        _walk(engine.optimizer, "optimizer", lambda t, path: inv.add(t, _kind_from_path(path), path), set())
    return inv.totals() | ({"holders": inv.by_holder()} if detail else {})


def accel_stats(accel, device_type: str) -> dict:
    return {} if device_type == "cpu" else {key: int(getattr(accel, name)()) for key, name in _STATS.items()}


def run_config(cfg: dict, rank: int, world_size: int, progress) -> dict:
    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    device_type, device = accel.device_name(), torch.device(accel.current_device_name())
    sync = accel.synchronize if device_type != "cpu" else lambda: None

    def fail_here(at: str, step: int = 0) -> None:  # the test hook of ZeroPlan.fail_rank
        if cfg.get("fail_rank") == rank and cfg.get("fail_at") == at and step in (0, 2):
            where = f"at step {step}" if step else "before initialize"
            raise RuntimeError(f"injected failure on rank {rank} {where} (config {cfg['name']})")

    fail_here("init")
    gc.collect()
    accel.empty_cache()
    if device_type != "cpu":  # the probe owns this process: resetting the peak here measures this config alone
        accel.reset_peak_memory_stats()
    before = accel_stats(accel, device_type)
    torch.manual_seed(cfg.get("seed", 0))
    model = build_model(cfg["hidden"], cfg["layers"])
    t0 = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg["ds_config"])
    init_s, basic = time.perf_counter() - t0, engine.basic_optimizer
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["dtype"]]
    gen = torch.Generator().manual_seed(1000 + rank)
    shape = (cfg["micro_batch"], cfg["seq"], cfg["hidden"])
    x, target = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    phases, step_times, losses = [], [], []

    def snap(name: str, step: int) -> float:
        """Record the inventory after `name`; returns the seconds it took (not counted as step time)."""
        t = time.perf_counter()
        sync()
        detail = name == "backward" and step == min(2, cfg["steps"]) or name == "init"
        tensors = inventory(engine, basic, device_type, detail)
        phases.append({"phase": name, "step": step, "tensors": tensors, "accelerator": accel_stats(accel, device_type)})
        return time.perf_counter() - t

    snap("init", 0)
    for step in range(1, cfg["steps"] + 1):
        fail_here("step", step)
        sync()
        snapped = step <= 2 or step == cfg["steps"]
        t = time.perf_counter()
        out = engine(x)
        loss = torch.nn.functional.mse_loss(out.float(), target.float())
        paused = snap("forward", step) if snapped else 0.0
        engine.backward(loss)
        paused += snap("backward", step) if snapped else 0.0
        engine.step()
        sync()
        step_times.append(time.perf_counter() - t - paused)
        losses.append(float(loss.detach().float().item()))
        if snapped:
            snap("step", step)
        progress(cfg["name"], step)
    measured = step_times[min(cfg.get("warmup", 1), len(step_times) - 1) :]
    summary = cfg.get("memory_summary") and device_type == "cuda" and torch.cuda.memory_summary(abbreviated=True)
    result = {"name": cfg["name"], "rank": rank, "world_size": world_size, "device_type": device_type}
    result |= {"device_name": torch.cuda.get_device_name() if device_type == "cuda" else device_type}
    result |= {"optimizer_class": type(engine.optimizer).__name__, "init_s": init_s, "step_times_s": step_times}
    result |= {"losses": losses, "step_time_s": statistics.median(measured), "phases": phases}
    result |= {"accelerator_before": before, "peak_allocated": accel_stats(accel, device_type).get("peak_allocated")}
    result["memory_summary"] = summary or None
    # Was the engine really freed? (DeepSpeed keeps ZeRO-3's top module in a module-level list, which keeps the whole
    # engine alive: the next configuration would start with the previous one's memory still allocated.)
    probes = [weakref.ref(q) for q in [*(q for g in basic.param_groups for q in g["params"]), *basic.state.keys()]]
    engine.destroy()
    _release_deepspeed_globals(engine.module)
    engine = basic = model = x = target = out = loss = None  # (not del: snap() still names them)
    gc.collect()
    accel.empty_cache()
    return result | {"engine_released": not any(r() is not None for r in probes)}


def _release_deepspeed_globals(module) -> None:
    try:
        from deepspeed.runtime.zero import parameter_offload
    except ImportError:
        return
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack[:] = [m for m in stack if m is not module]


def probe(plan: dict, out_dir: Path, local_rank: int) -> None:
    import torch
    from deepspeed.accelerator import get_accelerator

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if get_accelerator().device_name() != "cpu":  # before the process group: NCCL binds to the current device
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", local_rank)))
    # A rank that dies mid-collective must not leave its peers blocked for ever.
    init_deepspeed(timeout_s=plan.get("collective_timeout_s", COLLECTIVE_TIMEOUT_S))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    results = []

    def progress(name, step):
        if rank == 0:
            say(f"{PROGRESS_TAG} config={name} step={step}")

    for cfg in plan["configs"]:
        results.append(run_config(cfg, rank, world, progress))
        tmp = out_dir / f".rank_{rank}.json.tmp"
        tmp.write_text(json.dumps({"rank": rank, "world_size": world, "results": results}))
        tmp.replace(out_dir / f"rank_{rank}.json")  # complete configs survive a later failure
    torch.distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="JSON file: {'configs': [...], 'collective_timeout_s': N}")
    parser.add_argument("--out", required=True, help="run directory: rank_<r>.json files land here")
    parser.add_argument("--local_rank", type=int, default=0, help="set by the DeepSpeed launcher")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with rank_guard():
        probe(json.loads(Path(args.plan).read_text()), Path(args.out), args.local_rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())

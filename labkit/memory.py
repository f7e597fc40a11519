"""Memory arithmetic of training: parameter counts, the ZeRO paper's model, DeepSpeed as implemented.

Pure functions (torch and accelerate are imported only by the helpers that need a module). Bytes are plain integers;
"GB" means 1e9 bytes. Two models of per-rank model-state bytes sit side by side: `paper_model_states` (the K-factor
formulas of arXiv 1910.02054) and `deepspeed_model_states`, what DeepSpeed 0.19 really allocates, tensor by tensor,
read from `runtime/zero/stage_1_and_2.py`, `stage3.py` and `fp16/unfused_optimizer.py` and checked against real
engines (tests/test_zero.py). Sizing a model against devices (inference and training) is in labkit.sizing.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from labkit.errors import ConfigError, check_choice, check_int

TRAIN_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}
STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "optimizer", "optimizer+param")
OPTIMIZER_IMPLS = ("torch", "fused")  # torch.optim.AdamW (torch_adam: true) | DeepSpeed FusedAdam/CPUAdam
STATE_LABELS = {  # the kinds of model state, in display order
    "params": "parameters (working dtype)",
    "master_params": "fp32 master weights",
    "gradients": "gradients",
    "optimizer_states": "Adam moments",
    "buffers": "reduction/offload buffers",
}
STATE_KINDS = tuple(STATE_LABELS)
LOCATIONS = ("device", "host")
DEFAULT_PERSISTENCE_THRESHOLD = 100_000  # DeepSpeed's stage3_param_persistence_threshold default
ZERO12_ALIGNMENT = 2  # stage_1_and_2.py: nccl_start_alignment_factor (4-byte alignment / sizeof(fp16))
PHASES = ("init", "forward", "backward", "step")
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_COUNT_FIX = "write e.g. 20M, 1.3B or 350000"


def parse_count(text: str | int | float, field: str = "params") -> int:
    """'20M' -> 20_000_000, '7B' -> 7e9, '1.5b', '350k', '7e9', 1000 -> int. ConfigError naming `field` otherwise."""
    if isinstance(text, bool):
        raise ConfigError(field, f"expected a parameter count, got {text!r}", _COUNT_FIX)
    value = float(text) if isinstance(text, (int, float)) else None
    if value is None:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMbBgGtT]?)\s*\Z", str(text))
        if not m:
            raise ConfigError(field, f"cannot read {text!r} as a parameter count", _COUNT_FIX)
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(field, f"must be at least 1 parameter, got {text!r}", _COUNT_FIX)
    return int(round(value))


def format_count(n: int) -> str:
    """n in three significant digits with its unit, picked after rounding (999.9M reads 1B, not 1e+03M)."""
    shown = float(f"{n:.3g}")
    scale = next(((s, v) for s, v in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)) if shown >= v), None)
    return f"{shown / scale[1]:.3g}{scale[0]}" if scale else str(n)


def check_stage(stage) -> int:
    return check_int("stage", stage, 0, "pick a ZeRO stage from 0-3", maximum=3)


def check_offload(stage: int, offload_optimizer: bool, offload_param: bool) -> None:
    rules = [  # (broken, problem, fix)
        (offload_param and stage != 3, f"parameter offload needs ZeRO stage 3 (got stage {stage})",
         "use stage 3 with offload_param, or offload only the optimizer"),
        (offload_optimizer and stage == 0, "optimizer offload (ZeRO-Offload) needs ZeRO stage 1, 2 or 3",
         "pick stage 1-3, or turn offload off for stage 0"),
        (offload_param and not offload_optimizer, "parameter offload without optimizer offload is not a DeepSpeed "
         "configuration labkit models", "offload the optimizer too (offload='optimizer+param')"),
    ]  # fmt: skip
    broken = next(((problem, fix) for bad, problem, fix in rules if bad), None)
    if broken:
        raise ConfigError("offload", *broken)


def _check_training(stage: int, world_size: int, dtype: str, offload_optimizer: bool, offload_param: bool) -> None:
    check_stage(stage)
    check_int("world_size", world_size, 1, "use 1 or more data-parallel ranks")
    check_choice("dtype", dtype, TRAIN_DTYPES)
    check_offload(stage, offload_optimizer, offload_param)


# -- Parameter counting ------------------------------------------------------------------------------------------------
@dataclass
class ParamCount:
    total: int
    trainable: int
    largest_layer: int  # parameters of the largest leaf module (what ZeRO-3 must gather at once)
    largest_layer_name: str
    tensor_numels: list[int] = field(default_factory=list)  # trainable tensors in module.parameters() order


def count_parameters(module) -> ParamCount:
    """Counts for any nn.Module (shared tensors once). Largest layer = the leaf module holding most parameters."""
    params = list(module.parameters())  # parameters() already yields a shared tensor once
    trainable = [p.numel() for p in params if p.requires_grad]
    leaves = [
        (sum(p.numel() for p in sub.parameters(recurse=False)), name or type(sub).__name__)
        for name, sub in module.named_modules()
        if not any(True for _ in sub.children())
    ]
    largest, name = max(leaves, key=lambda x: x[0], default=(0, ""))
    return ParamCount(sum(p.numel() for p in params), sum(trainable), largest, name if largest else "", trainable)


def accelerate_sizes(module) -> dict:
    """accelerate's offline sizing of `module`: total bytes and the largest layer (bytes, names)."""
    from accelerate.utils import calculate_maximum_sizes

    total, (largest, names) = calculate_maximum_sizes(module)
    return {"total_bytes": int(total), "largest_layer_bytes": int(largest), "largest_layer_names": list(names)}


# The comparison model: `layers` blocks of Linear(h, 4h) -> GELU -> Linear(4h, h) (a transformer MLP without attention).
def mlp_tensor_numels(hidden: int, layers: int) -> list[int]:
    return [4 * hidden * hidden, 4 * hidden, 4 * hidden * hidden, hidden] * layers


def mlp_params(hidden: int, layers: int) -> int:
    return layers * (8 * hidden * hidden + 5 * hidden)


def mlp_shape_for(params: int, layers: int = 10) -> tuple[int, int]:
    """(hidden, layers) of the comparison MLP closest to `params`: hidden a multiple of 64, ~`layers` blocks."""
    smallest = mlp_params(64, 1)
    if params < smallest:
        problem = f"{params:,} parameters is too small for the comparison model (minimum {smallest:,}: one block of "
        raise ConfigError("params", problem + "hidden size 64)", "ask for at least 40K parameters")
    hidden = max(64, int(round(math.sqrt(params / (8 * layers)) / 64)) * 64)
    return hidden, max(1, int(round(params / mlp_params(hidden, 1))))


# -- Model states: the paper -------------------------------------------------------------------------------------------
def paper_model_states(
    params: int, stage: int, world_size: int, dtype: str = "bf16", offload_optimizer=False, offload_param=False
) -> dict:
    """Per-rank model-state bytes by the ZeRO paper: params p, gradients g, optimizer states K (bytes per parameter).

    Mixed precision (bf16/fp16): p=2, g=2, K=12 (fp32 master + two Adam moments) -> 16Ψ at stage 0, 4Ψ+12Ψ/N (P_os),
    2Ψ+14Ψ/N (P_os+g), 16Ψ/N (P_os+g+p). fp32: p=4, g=4, K=8. ZeRO-Offload keeps K and the gradients on the host.
    Returns {"device": {...}, "host": {...}, "total": int, "formula": str}; K is split into the fp32 master copy
    ("master_params", 4 bytes) and the Adam moments ("optimizer_states", 8 bytes) to line up with what DeepSpeed holds.
    """
    _check_training(stage, world_size, dtype, offload_optimizer, offload_param)
    p, g, k = (4, 4, 8) if dtype == "fp32" else (2, 2, 12)
    master, n = (0 if dtype == "fp32" else 4), world_size
    pb, gb, kb = (x * params / (n if stage >= s else 1) for x, s in ((p, 3), (g, 2), (k, 1)))
    device = {"params": pb, "master_params": kb * master / k, "gradients": gb}
    device["optimizer_states"] = kb * (k - master) / k
    host = dict.fromkeys(device, 0.0)
    moved = ("master_params", "optimizer_states", "gradients") * offload_optimizer + ("params",) * offload_param
    for kind in moved:
        host[kind], device[kind] = device[kind], 0.0
    if offload_optimizer:  # ZeRO-Offload: the fp32 gradients on the host are partitioned whatever the stage
        host["gradients"] = g * params / n
        on_device = "0" if offload_param else (f"{p}Ψ/N" if stage == 3 else f"{p}Ψ")
        formula = f"{on_device} device + {g + k}Ψ/N host" + (f" + {p}Ψ/N host" if offload_param else "")
    else:
        formula = {0: f"{p + g + k}Ψ", 1: f"{p + g}Ψ + {k}Ψ/N", 2: f"{p}Ψ + {g + k}Ψ/N", 3: f"{p + g + k}Ψ/N"}[stage]
    device, host = ({kind: int(round(v)) for kind, v in d.items()} for d in (device, host))
    return {"device": device, "host": host, "total": sum(device.values()) + sum(host.values()), "formula": formula}


# -- Model states: DeepSpeed 0.19 as implemented -----------------------------------------------------------------------
@dataclass
class Piece:
    """One tensor (or family of tensors) DeepSpeed allocates per rank."""

    kind: str  # one of STATE_KINDS
    holder: str  # where it lives in DeepSpeed (attribute name), for the "where did the bytes go" table
    bytes: int
    location: str  # "device" (accelerator) or "host" (CPU memory, offload)
    created: str  # one of PHASES: "forward" = first forward, "step" = first optimizer step
    freed_at_step: bool = False  # gradients that the step releases


@dataclass
class DeepSpeedMemory:
    stage: int
    world_size: int
    dtype: str
    offload_optimizer: bool
    offload_param: bool
    params: int
    pieces: list[Piece]

    def at(self, phase: str = "backward", steady: bool = True) -> dict:
        """Bytes alive after `phase` by location and kind. steady=True: a step >= 2 (lazy state exists).

        "backward" of a steady step is when all model states coexist: the number to compare with the paper.
        """
        check_choice("phase", phase, PHASES)
        out = {loc: dict.fromkeys(STATE_KINDS, 0) for loc in LOCATIONS}
        for piece in self.pieces:
            created = PHASES.index(piece.created) <= PHASES.index(phase) or (steady and phase != "init")
            # freed gradients are gone after the step, and at the next forward
            if created and not (piece.freed_at_step and phase in ("step", "forward")):
                out[piece.location][piece.kind] += piece.bytes
        return out

    def total(self, phase: str = "backward", location: str | None = None) -> int:
        at = self.at(phase)
        return sum(sum(at[loc].values()) for loc in ([location] if location else LOCATIONS))


def deepspeed_model_states(
    tensor_numels: Sequence[int] | int,
    stage: int,
    world_size: int,
    dtype: str = "bf16",
    *,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    optimizer_impl: str = "torch",
    reduce_bucket_size: int = 500_000_000,
    contiguous_gradients: bool = True,
    param_persistence_threshold: int = DEFAULT_PERSISTENCE_THRESHOLD,
    model_persistence_threshold: int = sys.maxsize,
    ranks_on_cpu: bool = False,
) -> DeepSpeedMemory:
    """Per-rank tensors DeepSpeed 0.19 allocates for model states (one param group, Adam/AdamW, no MoE).

    `tensor_numels`: the trainable tensors' sizes in `module.parameters()` order (or one int: a model whose exact
    shapes are unknown, treated as one tensor: padding and ZeRO-3 persistence then cannot be modelled).
    `ranks_on_cpu`: the ranks compute on the CPU, so a partition offloaded to the host is in their own memory.
    """
    _check_training(stage, world_size, dtype, offload_optimizer, offload_param)
    check_choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    numels = [int(tensor_numels)] if isinstance(tensor_numels, (int, float)) else [int(n) for n in tensor_numels]
    if not numels or min(numels) < 1:
        fix = "pass the model's parameter sizes or a parameter count"
        raise ConfigError("tensor_numels", "needs at least one tensor with at least one element", fix)
    n, lp, psi, largest = world_size, TRAIN_DTYPES[dtype], sum(numels), max(numels)
    # torch.optim.Adam(W) keeps a 4-byte fp32 `step` tensor per parameter tensor on the host (not capturable/fused);
    # FusedAdam/CPUAdam keep the step as a Python int.
    step_bytes = 4 if optimizer_impl == "torch" else 0
    opt_loc = "host" if offload_optimizer else "device"
    adam, step = "optimizer.state (exp_avg, exp_avg_sq)", "optimizer.state (step)"
    rows: list[tuple] = []  # (kind, holder, bytes, location, created[, freed_at_step])
    if stage == 0:
        rows.append(("params", "module parameters", psi * lp, "device", "init"))
        rows.append(("gradients", "param.grad", psi * lp, "device", "backward", True))
        if dtype == "fp32":  # no wrapper: the inner optimizer updates the model's own tensors, Adam state is lazy
            rows += [
                ("optimizer_states", adam, 2 * psi * 4, "device", "step"),
                ("optimizer_states", step, step_bytes * len(numels), "host", "step"),
            ]
        else:  # FP16_Optimizer / FP16_UnfusedOptimizer: fp32 master copies; Adam state is initialised eagerly
            rows += [
                ("master_params", "fp32 master copies (fp32_groups)", psi * 4, "device", "init"),
                ("optimizer_states", adam, 2 * psi * 4, "device", "init"),
                ("optimizer_states", step, step_bytes * len(numels), "host", "init"),  # step_bytes is 0 unless torch
            ]
    elif stage in (1, 2):
        # stage_1_and_2.py: one flat buffer per param group padded to a multiple of 2*N elements; each rank owns
        # 1/N of it; its fp32 master partition is a clone (also when training in fp32).
        part = -(-psi // (ZERO12_ALIGNMENT * n)) * ZERO12_ALIGNMENT
        rows += [
            ("params", "bit16_groups_flat (model params are views)", part * n * lp, "device", "init"),
            ("master_params", "single_partition_of_fp32_groups", part * 4, opt_loc, "init"),
            ("optimizer_states", adam, 2 * part * 4, opt_loc, "step"),
            ("optimizer_states", step, step_bytes, "host", "step"),
        ]
        if offload_optimizer:  # the fp32 gradient partition lives on the host for good; staging buffers for copies
            rows += [
                ("gradients", "single_partition_of_fp32_groups.grad", part * 4, "host", "init"),
                ("buffers", "param_buffer_of_bit16_for_cpu_offload_groups", part * lp, "host", "init"),
                ("buffers", "temp_grad_buffer_for_cpu_offload", largest * lp, "host", "init"),
                ("buffers", "temp_grad_buffer_for_gpu_offload", largest * lp, "device", "init"),
            ]
        else:  # reduced gradients of this rank's partition, at stage 1 as at stage 2 (the ipg bucket is transient)
            rows.append(("gradients", "averaged_gradients (partition)", part * lp, "device", "backward", True))
    else:
        # stage3.py / partition_parameters.py: every tensor is split into N chunks of ceil(n/N) elements.
        p3, persistent = sum(-(-x // n) for x in numels), 0
        for x in numels:  # parameter_offload.mark_persistent_parameters
            if x + persistent <= model_persistence_threshold and x <= param_persistence_threshold:
                persistent += x
        bucket, param_loc = reduce_bucket_size * lp * contiguous_gradients, "host" if offload_param else "device"
        # With one rank a small parameter's partition is the whole parameter, and gathering it (NoGatherHandle:
        # ds_tensor.to(the compute device)) makes no copy unless the partition was offloaded off that device.
        whole = persistent * lp if n > 1 or (offload_param and not ranks_on_cpu) else 0
        rows += [
            ("params", "ds_tensor partitions (lp_param_buffer)", p3 * lp, param_loc, "init"),
            ("params", "persistent small params, kept whole", whole, "device", "forward"),
            ("master_params", "fp32_partitioned_groups_flat", p3 * 4, opt_loc, "init"),
            ("gradients", "grad_partitions_flat_buffer", p3 * lp, opt_loc, "init"),
            ("gradients", "fp32_partitioned_groups_flat.grad", p3 * 4 * offload_optimizer, "host", "init"),
            ("buffers", "ipg_buckets buffer (reduce_bucket_size)", bucket, "device", "init"),
            ("optimizer_states", adam, 2 * p3 * 4, opt_loc, "step"),
            ("optimizer_states", step, step_bytes, "host", "step"),
        ]
    pieces = [Piece(*row) for row in rows if row[2]]  # a zero-byte row is a tensor this configuration lacks
    return DeepSpeedMemory(stage, n, dtype, offload_optimizer, offload_param, psi, pieces)


def on_one_memory(states: dict) -> dict:
    """`states` ({"device": {...}, "host": {...}, ...}) as ranks on the CPU hold it: their device is the host, and
    zero_probe counts every tensor on it as "device" (torch Adam's `step`, offloaded states). Other keys are kept."""
    device = {kind: n + states["host"].get(kind, 0) for kind, n in states["device"].items()}
    return states | {"device": device, "host": dict.fromkeys(states["host"], 0)}


def compare_to_measured(predicted: dict, measured: dict) -> dict:
    """Totals and relative error of a prediction ({'device': {...}, 'host': {...}}) against a measurement."""
    p = sum(sum(v.values()) for v in predicted.values())
    m = sum(sum(measured[loc].get(k, 0) for k in STATE_KINDS) for loc in LOCATIONS)
    return {"predicted": p, "measured": m, "rel_error": (m - p) / p if p else float("nan")}

"""Memory arithmetic for training and inference: parameter counts, the ZeRO paper's model, DeepSpeed as implemented.

Pure functions: torch/deepspeed/accelerate are imported only by the helpers that need a module or DeepSpeed's own
estimators. Bytes are plain integers; "GB" means 1e9 bytes and "GiB" 2**30, as labelled.

Two models of per-rank model-state bytes sit side by side:

* `paper_model_states`: the ZeRO paper's (arXiv 1910.02054) K-factor formulas: 16Ψ, 4Ψ+12Ψ/N, 2Ψ+14Ψ/N, 16Ψ/N for
  mixed-precision Adam.
* `deepspeed_model_states`: what DeepSpeed 0.19 really allocates, tensor by tensor, read from its sources
  (`runtime/zero/stage_1_and_2.py`, `stage3.py`, `fp16/unfused_optimizer.py`) and checked against tensor counts of real
  engines (tests/test_zero.py): flat buffers padded to multiples of 2·N elements (ZeRO-1/2), per-parameter partitions
  of ceil(n/N) elements (ZeRO-3), an fp32 master copy even when training in fp32, gradients partitioned already at
  stage 1, Adam moments created lazily at the first step (eagerly by the stage-0 mixed-precision wrapper), the ZeRO-3
  gradient partition buffer and reduce bucket allocated at initialize, small parameters kept whole under ZeRO-3
  (`stage3_param_persistence_threshold`), and the staging buffers of optimizer offload.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from labkit.errors import ConfigError, check_choice, check_int, check_number
from labkit.tabular import format_bytes

GB = 10**9
TRAIN_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}
INFERENCE_DTYPES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5}
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
# Device memory in GB (1e9 bytes) as sold; what a user compares a model against.
DEVICE_MEMORY_GB = {
    "T4": 16, "L4": 24, "A10G": 24, "A100-40GB": 40, "A100-80GB": 80, "H100": 80, "H200": 141,
    "Gaudi2": 96, "Gaudi3": 128, "MI300X": 192,
}  # fmt: skip
INFERENCE_HEADROOM = 1.2  # room beyond the weights: KV cache, activations, runtime/allocator
TRAINING_HEADROOM = 1.25  # room beyond model states: activations, buckets, allocator fragmentation
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
    scale = next(((s, v) for s, v in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)) if n >= v), None)
    return f"{n / scale[1]:.3g}{scale[0]}" if scale else str(n)


def check_stage(stage) -> int:
    return check_int("stage", stage, 0, "pick a ZeRO stage from 0-3", maximum=3)


def check_offload(stage: int, offload_optimizer: bool, offload_param: bool) -> None:
    for bad, problem, fix in (
        (
            offload_param and stage != 3,
            f"parameter offload needs ZeRO stage 3 (got stage {stage})",
            "use stage 3 with offload_param, or offload only the optimizer",
        ),
        (
            offload_optimizer and stage == 0,
            "optimizer offload (ZeRO-Offload) needs ZeRO stage 1, 2 or 3",
            "pick stage 1-3, or turn offload off for stage 0",
        ),
        (
            offload_param and not offload_optimizer,
            "parameter offload without optimizer offload is not a DeepSpeed configuration labkit models",
            "offload the optimizer too (offload='optimizer+param')",
        ),
    ):
        if bad:
            raise ConfigError("offload", problem, fix)


def _check_training(stage: int, world_size: int, dtype: str, offload_optimizer: bool, offload_param: bool) -> None:
    check_stage(stage), check_int("world_size", world_size, 1, "use 1 or more data-parallel ranks")
    check_choice("dtype", dtype, TRAIN_DTYPES)
    check_offload(stage, offload_optimizer, offload_param)


# ----------------------------------------------------------------------------------------------------------------------
# Parameter counting
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ParamCount:
    total: int
    trainable: int
    largest_layer: int  # parameters of the largest leaf module (what ZeRO-3 must gather at once)
    largest_layer_name: str
    tensor_numels: list[int] = field(default_factory=list)  # trainable tensors in module.parameters() order


def count_parameters(module) -> ParamCount:
    """Counts for any nn.Module (shared tensors once). Largest layer = the leaf module holding most parameters."""
    seen = {id(p): p for p in module.parameters()}  # parameters() already yields a shared tensor once
    trainable = [p.numel() for p in seen.values() if p.requires_grad]
    leaves = [
        (sum(p.numel() for p in sub.parameters(recurse=False)), name or type(sub).__name__)
        for name, sub in module.named_modules()
        if not any(True for _ in sub.children())
    ]
    largest, name = max(leaves, key=lambda x: x[0], default=(0, ""))
    total = sum(p.numel() for p in seen.values())
    return ParamCount(total, sum(trainable), largest, name if largest else "", trainable)


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


MIN_MLP_PARAMS = mlp_params(64, 1)


def mlp_shape_for(params: int, layers: int = 10) -> tuple[int, int]:
    """(hidden, layers) of the comparison MLP closest to `params`: hidden a multiple of 64, ~`layers` blocks."""
    if params < MIN_MLP_PARAMS:
        raise ConfigError(
            "params",
            f"{params:,} parameters is too small for the comparison model (minimum "
            f"{MIN_MLP_PARAMS:,}: one block of hidden size 64)",
            "ask for at least 40K parameters",
        )
    hidden = max(64, int(round(math.sqrt(params / (8 * layers)) / 64)) * 64)
    return hidden, max(1, int(round(params / mlp_params(hidden, 1))))


# ----------------------------------------------------------------------------------------------------------------------
# Model states: the paper
# ----------------------------------------------------------------------------------------------------------------------
def paper_model_states(
    params: int,
    stage: int,
    world_size: int,
    dtype: str = "bf16",
    offload_optimizer: bool = False,
    offload_param: bool = False,
) -> dict:
    """Per-rank model-state bytes by the ZeRO paper: params p, gradients g, optimizer states K (bytes per parameter).

    Mixed precision (bf16/fp16): p=2, g=2, K=12 (fp32 master + two Adam moments) -> 16Ψ at stage 0, 4Ψ+12Ψ/N (P_os),
    2Ψ+14Ψ/N (P_os+g), 16Ψ/N (P_os+g+p). fp32: p=4, g=4, K=8. ZeRO-Offload keeps K and the gradients on the host.
    Returns {"device": {...}, "host": {...}, "total": int, "formula": str}; K is split into the fp32 master copy
    ("master_params", 4 bytes) and the Adam moments ("optimizer_states", 8 bytes) to line up with what DeepSpeed holds.
    """
    _check_training(stage, world_size, dtype, offload_optimizer, offload_param)
    p, g, k = (4, 4, 8) if dtype == "fp32" else (2, 2, 12)
    master = 0 if dtype == "fp32" else 4
    n = world_size
    pb = p * params / n if stage >= 3 else p * params
    gb = g * params / n if stage >= 2 else g * params
    kb = k * params / n if stage >= 1 else k * params
    device = {
        "params": pb,
        "master_params": kb * master / k,
        "gradients": gb,
        "optimizer_states": kb * (k - master) / k,
    }
    host = dict.fromkeys(device, 0.0)
    if offload_optimizer:
        for kind in ("master_params", "optimizer_states"):
            host[kind], device[kind] = device[kind], 0.0
        host["gradients"], device["gradients"] = g * params / n, 0.0
    if offload_param:
        host["params"], device["params"] = pb, 0.0
    formula = {0: f"{p + g + k}Ψ", 1: f"{p + g}Ψ + {k}Ψ/N", 2: f"{p}Ψ + {g + k}Ψ/N", 3: f"{p + g + k}Ψ/N"}[stage]
    if offload_optimizer:  # ZeRO-Offload: working params on the device, fp32 states and gradients on the host
        on_device = "0" if offload_param else (f"{p}Ψ/N" if stage == 3 else f"{p}Ψ")
        formula = f"{on_device} device + {g + k}Ψ/N host" + (f" + {p}Ψ/N host" if offload_param else "")
    device = {kk: int(round(v)) for kk, v in device.items()}
    host = {kk: int(round(v)) for kk, v in host.items()}
    return {"device": device, "host": host, "total": sum(device.values()) + sum(host.values()), "formula": formula}


# ----------------------------------------------------------------------------------------------------------------------
# Model states: DeepSpeed 0.19 as implemented
# ----------------------------------------------------------------------------------------------------------------------
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
        out = {loc: dict.fromkeys(STATE_KINDS, 0) for loc in ("device", "host")}
        for piece in self.pieces:
            created = PHASES.index(piece.created) <= PHASES.index(phase) or (steady and phase != "init")
            # freed gradients are gone after the step, and at the next forward
            if created and not (piece.freed_at_step and phase in ("step", "forward")):
                out[piece.location][piece.kind] += piece.bytes
        return out

    def total(self, phase: str = "backward", location: str | None = None) -> int:
        at = self.at(phase)
        return sum(sum(at[loc].values()) for loc in ([location] if location else ["device", "host"]))

    def to_dict(self) -> dict:
        return asdict(self) | {
            "at_backward": self.at("backward"),
            "at_step": self.at("step"),
            "at_init": self.at("init", steady=False),
            "total": self.total("backward"),
        }


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


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
) -> DeepSpeedMemory:
    """Per-rank tensors DeepSpeed 0.19 allocates for model states (one param group, Adam/AdamW, no MoE).

    `tensor_numels`: the trainable tensors' sizes in `module.parameters()` order (or one int: a model whose exact
    shapes are unknown, treated as one tensor: padding and ZeRO-3 persistence then cannot be modelled).
    """
    _check_training(stage, world_size, dtype, offload_optimizer, offload_param)
    check_choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    numels = [int(tensor_numels)] if isinstance(tensor_numels, (int, float)) else [int(n) for n in tensor_numels]
    if not numels or min(numels) < 1:
        raise ConfigError(
            "tensor_numels",
            "needs at least one tensor with at least one element",
            "pass the model's parameter sizes or a parameter count",
        )
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
        if dtype == "fp32":
            # No wrapper: the inner optimizer updates the model's own tensors; Adam state appears at the first step.
            rows += [
                ("optimizer_states", adam, 2 * psi * 4, "device", "step"),
                ("optimizer_states", step, step_bytes * len(numels), "host", "step"),
            ]
        else:
            # FP16_Optimizer / FP16_UnfusedOptimizer: fp32 master copies; Adam state is initialised eagerly.
            impl_tensors = len(numels) if optimizer_impl == "torch" else 1
            rows += [
                ("master_params", "fp32 master copies (fp32_groups)", psi * 4, "device", "init"),
                ("optimizer_states", adam, 2 * psi * 4, "device", "init"),
                ("optimizer_states", step, step_bytes * impl_tensors, "host", "init"),
            ]
    elif stage in (1, 2):
        # stage_1_and_2.py: one flat buffer per param group padded to a multiple of 2*N elements; each rank owns
        # 1/N of it; its fp32 master partition is a clone (also when training in fp32).
        flat = _ceil_to(psi, ZERO12_ALIGNMENT * n)
        part = flat // n
        rows += [
            ("params", "bit16_groups_flat (model params are views)", flat * lp, "device", "init"),
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
        p3 = sum(-(-x // n) for x in numels)
        persistent = 0
        for x in numels:  # parameter_offload.mark_persistent_parameters
            if x + persistent <= model_persistence_threshold and x <= param_persistence_threshold:
                persistent += x
        rows += [
            (
                "params",
                "ds_tensor partitions (lp_param_buffer)",
                p3 * lp,
                "host" if offload_param else "device",
                "init",
            ),
            ("params", "persistent small params, kept whole", persistent * lp, "device", "forward"),
            ("master_params", "fp32_partitioned_groups_flat", p3 * 4, opt_loc, "init"),
            ("gradients", "grad_partitions_flat_buffer", p3 * lp, opt_loc, "init"),
            ("gradients", "fp32_partitioned_groups_flat.grad", p3 * 4 * offload_optimizer, "host", "init"),
            (
                "buffers",
                "ipg_buckets buffer (reduce_bucket_size)",
                reduce_bucket_size * lp * contiguous_gradients,
                "device",
                "init",
            ),
            ("optimizer_states", adam, 2 * p3 * 4, opt_loc, "step"),
            ("optimizer_states", step, step_bytes, "host", "step"),
        ]
    pieces = [Piece(*row) for row in rows if row[2]]  # a zero-byte row is a tensor this configuration lacks
    return DeepSpeedMemory(stage, n, dtype, offload_optimizer, offload_param, psi, pieces)


def compare_to_measured(predicted: dict, measured: dict) -> dict:
    """Totals and relative error of a prediction ({'device': {...}, 'host': {...}}) against a measurement."""
    p = sum(sum(v.values()) for v in predicted.values())
    m = sum(sum(measured[loc].get(k, 0) for k in STATE_KINDS) for loc in ("device", "host"))
    return {"predicted": p, "measured": m, "rel_error": (m - p) / p if p else float("nan")}


# ----------------------------------------------------------------------------------------------------------------------
# DeepSpeed's own estimators, as data
# ----------------------------------------------------------------------------------------------------------------------
def deepspeed_estimates(
    total_params: int, largest_layer_params: int, gpus_per_node: int = 1, nodes: int = 1, buffer_factor: float = 1.5
) -> list[dict]:
    """The rows DeepSpeed's estimate_zero2/zero3_model_states_mem_needs_all_cold print, returned as data (bytes)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    rows = []
    for offload in (True, False):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total_params, gpus_per_node, nodes, offload, buffer_factor)
        rows.append(
            {
                "stage": 2,
                "offload_optimizer": offload,
                "offload_param": False,
                "zero_init": None,
                "per_cpu_bytes": cpu,
                "per_gpu_bytes": gpu,
            }
        )
    for offload, offload_params, zero_init in (
        (o, p, z) for o in (True, False) for p in (True, False) for z in (True, False) if o or not p
    ):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, gpus_per_node, nodes, offload, offload_params, zero_init, buffer_factor
        )
        rows.append(
            {
                "stage": 3,
                "offload_optimizer": offload,
                "offload_param": offload_params,
                "zero_init": zero_init,
                "per_cpu_bytes": cpu,
                "per_gpu_bytes": gpu,
            }
        )
    return rows


_EST_LINE = re.compile(r"^\s*([0-9.]+)GB\s*\|\s*([0-9.]+)GB\s*\|\s*(.*)$")


def parse_estimator_output(text: str) -> list[dict]:
    """Rows of the table DeepSpeed's estimators print: per-CPU and per-GPU GiB (labelled GB) and the options."""
    rows = []
    for m in filter(None, map(_EST_LINE.match, text.splitlines())):
        opts = dict(kv.split("=", 1) for kv in (s.strip() for s in m.group(3).split(",")) if "=" in kv)
        rows.append(
            {
                "per_cpu_gib": float(m.group(1)),
                "per_gpu_gib": float(m.group(2)),
                "options": {k: v.strip() for k, v in opts.items()},
            }
        )
    return rows


def capture_deepspeed_estimator(
    stage: int, total_params: int, largest_layer_params: int = 0, gpus_per_node: int = 1, nodes: int = 1
) -> tuple[str, list[dict]]:
    """Run DeepSpeed's printing estimator (`..._all_cold`) and return (printed text, parsed rows)."""
    check_choice(
        "stage", stage, (2, 3), "use stage 2 (it also bounds stage 1) or 3: DeepSpeed has estimators for those"
    )
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold as zero3
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold as zero2

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if stage == 2:
            zero2(total_params, gpus_per_node, nodes)
        else:
            zero3(total_params, largest_layer_params, gpus_per_node, nodes)
    return buf.getvalue(), parse_estimator_output(buf.getvalue())


# ----------------------------------------------------------------------------------------------------------------------
# Inference sizing and "do I need more devices?"
# ----------------------------------------------------------------------------------------------------------------------
def check_device_type(device: str) -> str:
    return check_choice("device_type", device, DEVICE_MEMORY_GB)


def inference_weight_bytes(params: int, dtype: str) -> int:
    return int(math.ceil(params * INFERENCE_DTYPES[check_choice("dtype", dtype, INFERENCE_DTYPES)]))


def devices_needed(need_bytes: float, device: str, headroom: float = 1.0) -> int:
    check_device_type(device)
    check_number("headroom", headroom, 1.0, "use e.g. 1.2 for 20% extra (a multiplier on the bytes needed)")
    return max(1, math.ceil(need_bytes * headroom / (DEVICE_MEMORY_GB[device] * GB)))


def inference_table(
    params: int,
    dtypes: Iterable[str] | None = None,
    devices: Iterable[str] | None = None,
    headroom: float = INFERENCE_HEADROOM,
) -> list[dict]:
    """Weight bytes per dtype and how many devices of each type hold them with `headroom` (weights x headroom)."""
    rows = []
    for dtype in dtypes or INFERENCE_DTYPES:
        w = inference_weight_bytes(params, dtype)
        rows.append(
            {
                "dtype": dtype,
                "weight_bytes": w,
                "with_headroom_bytes": int(w * headroom),
                "headroom": headroom,
                "devices": {d: devices_needed(w, d, headroom) for d in (devices or DEVICE_MEMORY_GB)},
            }
        )
    return rows


def _device_state_bytes(params: int, dtype: str, stage: int, n: int, offload: tuple[bool, bool]) -> DeepSpeedMemory:
    """DeepSpeed's as-implemented model for a model of unknown shapes (one flat tensor), no buckets."""
    return deepspeed_model_states(
        params,
        stage,
        n,
        dtype,
        offload_optimizer=offload[0],
        offload_param=offload[1],
        optimizer_impl="fused",
        reduce_bucket_size=0,
    )


def training_fit(
    params: int,
    dtype: str,
    stage: int,
    world_size: int,
    device: str,
    *,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    headroom: float = TRAINING_HEADROOM,
) -> dict:
    """Does training a `params` model fit on `world_size` devices of `device`? With the arithmetic shown.

    The device-resident model states (DeepSpeed's as-implemented model) times `headroom` for activations and buffers,
    against the device's memory.
    """
    check_device_type(device)
    offload = (offload_optimizer, offload_param)
    at = _device_state_bytes(params, dtype, stage, world_size, offload).at("backward")
    dev_bytes, host_bytes = sum(at["device"].values()), sum(at["host"].values())
    capacity, need = DEVICE_MEMORY_GB[device] * GB, dev_bytes * headroom
    paper = paper_model_states(params, stage, world_size, dtype, offload_optimizer, offload_param)
    paper_bytes, fits = sum(paper["device"].values()), need <= capacity
    gb = lambda b: format_bytes(b, "GB")  # noqa: E731
    lines = [
        f"model: {format_count(params)} parameters (Ψ), {dtype}, ZeRO stage {stage}, N = {world_size} "
        f"× {device} ({DEVICE_MEMORY_GB[device]} GB each)"
    ]
    lines += [f"  {STATE_LABELS[k]:<28} {gb(b):>12} per device" for k, b in at["device"].items() if b]
    lines.append(f"  model states per device       {gb(dev_bytes):>12}   (paper {paper['formula']}: {gb(paper_bytes)})")
    if host_bytes:
        lines.append(f"  on the host (offload)          {gb(host_bytes):>12} per rank")
    lines.append(f"  × headroom {headroom} for activations/buffers = {gb(need)} {'<=' if fits else '>'} {gb(capacity)}")
    lines.append("  -> fits" if fits else "  -> does NOT fit")
    options = {"offload_optimizer": offload_optimizer, "offload_param": offload_param, "headroom": headroom}
    smallest = min_world_size(params, dtype, stage, device, **options)
    return {
        "fits": fits,
        "need_bytes": int(need),
        "model_state_bytes": dev_bytes,
        "host_bytes": host_bytes,
        "capacity_bytes": capacity,
        "paper_bytes": paper_bytes,
        "lines": lines,
        "min_world_size": smallest,
    }


def min_world_size(params: int, dtype: str, stage: int, device: str, limit: int = 4096, **fit_options) -> int | None:
    """Smallest N for which training fits (None if even `limit` devices do not: stage 0 does not shrink with N).
    `fit_options`: offload_optimizer, offload_param and headroom, as training_fit takes them."""
    offload = (fit_options.get("offload_optimizer", False), fit_options.get("offload_param", False))
    headroom = fit_options.get("headroom", TRAINING_HEADROOM)
    capacity = DEVICE_MEMORY_GB[check_device_type(device)] * GB

    def fits(n: int) -> bool:
        states = _device_state_bytes(params, dtype, stage, n, offload)
        return states.total("backward", "device") * headroom <= capacity

    n = 1
    while n <= limit and not fits(n):  # doubling, then bisect: memory per device only shrinks as N grows
        n *= 2
    if n > limit:
        return None
    lo, hi = max(1, n // 2), n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return hi

"""Sizing a model against devices: inference weights, "does ZeRO training fit?", and DeepSpeed's own estimators.

Device memory is in GB (1e9 bytes) as sold. Training sizes use labkit.memory's DeepSpeed-as-implemented model.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import math
import re
from collections.abc import Iterable

from labkit.errors import check_choice, check_number
from labkit.memory import STATE_LABELS, TRAIN_DTYPES, deepspeed_model_states, format_count, paper_model_states
from labkit.tabular import format_bytes

GB = 10**9
INFERENCE_DTYPES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5}
DEVICE_MEMORY_GB = {
    "T4": 16, "L4": 24, "A10G": 24, "A100-40GB": 40, "A100-80GB": 80, "H100": 80, "H200": 141,
    "Gaudi2": 96, "Gaudi3": 128, "MI300X": 192,
}  # fmt: skip
# Devices with FP8 arithmetic (Hopper, Ada, Gaudi2/3, CDNA3). T4 (Turing), A10G and A100 (Ampere) have none, and T4
# has no bf16 either: weights in such a dtype are a storage format there, so the table gives no count, not a
# misleading one.
FP8_DEVICES = frozenset({"L4", "H100", "H200", "Gaudi2", "Gaudi3", "MI300X"})
NO_FP8 = "n/a (no FP8)"
LACKS = {"fp8": (set(DEVICE_MEMORY_GB) - FP8_DEVICES, NO_FP8), "bf16": ({"T4"}, "n/a (no BF16)")}
INFERENCE_HEADROOM = 1.2  # room beyond the weights: KV cache, activations, runtime/allocator
TRAINING_HEADROOM = 1.25  # room beyond model states: activations, buckets, allocator fragmentation
HEADROOM_FIX = "use e.g. 1.2 for 20% extra (a multiplier on the bytes needed)"
MAX_WORLD = 4096  # the most devices min_world_size tries
ESTIMATE_KEYS = ("stage", "offload_optimizer", "offload_param", "zero_init", "per_cpu_bytes", "per_gpu_bytes")
_EST_LINE = re.compile(r"^\s*([0-9.]+)GB\s*\|\s*([0-9.]+)GB\s*\|\s*(.*)$")


# -- DeepSpeed's own estimators, as data -------------------------------------------------------------------------------
def deepspeed_estimates(
    total_params: int, largest_layer_params: int, gpus_per_node: int = 1, nodes: int = 1, buffer_factor: float = 1.5
) -> list[dict]:
    """The rows DeepSpeed's estimate_zero2/zero3_model_states_mem_needs_all_cold print, returned as data (bytes)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as zero3
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as zero2

    rows = [(2, o, False, None, *zero2(total_params, gpus_per_node, nodes, o, buffer_factor)) for o in (True, False)]
    for o, p, z in ((o, p, z) for o in (True, False) for p in (True, False) for z in (True, False) if o or not p):
        cpu, gpu, _ = zero3(total_params, largest_layer_params, gpus_per_node, nodes, o, p, z, buffer_factor)
        rows.append((3, o, p, z, cpu, gpu))
    return [dict(zip(ESTIMATE_KEYS, row)) for row in rows]


def parse_estimator_output(text: str) -> list[dict]:
    """Rows of the table DeepSpeed's estimators print: per-CPU and per-GPU GiB (labelled GB) and the options."""
    rows = []
    for m in filter(None, map(_EST_LINE.match, text.splitlines())):
        options = dict(kv.split("=", 1) for kv in (s.strip() for s in m.group(3).split(",")) if "=" in kv)
        options = {k: v.strip() for k, v in options.items()}
        rows.append({"per_cpu_gib": float(m.group(1)), "per_gpu_gib": float(m.group(2)), "options": options})
    return rows


def capture_deepspeed_estimator(
    stage: int, total_params: int, largest_layer_params: int = 0, gpus_per_node: int = 1, nodes: int = 1
) -> tuple[str, list[dict]]:
    """Run DeepSpeed's printing estimator (`..._all_cold`) and return (printed text, parsed rows)."""
    fix = "use stage 2 (it also bounds stage 1) or 3: DeepSpeed has estimators for those"
    check_choice("stage", stage, (2, 3), fix)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold as zero3
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold as zero2

    with contextlib.redirect_stdout(io.StringIO()) as buf:
        if stage == 2:
            zero2(total_params, gpus_per_node, nodes)
        else:
            zero3(total_params, largest_layer_params, gpus_per_node, nodes)
    return buf.getvalue(), parse_estimator_output(buf.getvalue())


# -- Inference sizing and "do I need more devices?" --------------------------------------------------------------------
def check_device_type(device: str) -> str:
    return check_choice("device_type", device, DEVICE_MEMORY_GB)


def lacks(dtype: str, device: str) -> str:
    """'n/a (no BF16)' (the tables' cell) when `device` has no arithmetic in `dtype`, else ''. One rule for inference
    and training: weights in such a dtype are a storage format there, nothing computes in it."""
    devices, text = LACKS.get(dtype, ((), ""))
    return text if device in devices else ""


def inference_weight_bytes(params: int, dtype: str) -> int:
    return int(math.ceil(params * INFERENCE_DTYPES[check_choice("dtype", dtype, INFERENCE_DTYPES)]))


def devices_needed(need_bytes: float, device: str, headroom: float = 1.0) -> int:
    check_device_type(device)
    check_number("headroom", headroom, 1.0, HEADROOM_FIX)
    return max(1, math.ceil(need_bytes * headroom / (DEVICE_MEMORY_GB[device] * GB)))


def inference_table(
    params: int, dtypes: Iterable[str] | None = None, devices: Iterable[str] | None = None, headroom=INFERENCE_HEADROOM
) -> list[dict]:
    """Weight bytes per dtype and how many devices of each type hold them with `headroom` (weights x headroom);
    'n/a (no FP8)' / 'n/a (no BF16)' where a device lacks that arithmetic."""
    rows = []
    for dtype in dtypes or INFERENCE_DTYPES:
        w = inference_weight_bytes(params, dtype)
        needed = {d: lacks(dtype, d) or devices_needed(w, d, headroom) for d in (devices or DEVICE_MEMORY_GB)}
        rows.append({"dtype": dtype, "weight_bytes": w, "with_headroom_bytes": int(w * headroom)})
        rows[-1] |= {"headroom": headroom, "devices": needed}
    return rows


def _device_states(params: int, dtype: str, stage: int, n: int, offload_optimizer=False, offload_param=False):
    """DeepSpeed's as-implemented model for a model of unknown shapes (one flat tensor), no buckets."""
    offload = {"offload_optimizer": offload_optimizer, "offload_param": offload_param}
    return deepspeed_model_states(params, stage, n, dtype, **offload, optimizer_impl="fused", reduce_bucket_size=0)


def training_fit(
    params: int, dtype: str, stage: int, world_size: int, device: str, *, headroom=TRAINING_HEADROOM, **offload
) -> dict:
    """Does training a `params` model fit on `world_size` devices of `device`? With the arithmetic shown.

    The device-resident model states (DeepSpeed's as-implemented model) times `headroom` for activations and buffers,
    against the device's memory. `offload`: offload_optimizer, offload_param (booleans).
    """
    check_device_type(device)
    check_number("headroom", headroom, 1.0, HEADROOM_FIX)
    at = _device_states(params, dtype, stage, world_size, **offload).at("backward")
    dev_bytes, host_bytes = sum(at["device"].values()), sum(at["host"].values())
    capacity, need = DEVICE_MEMORY_GB[device] * GB, dev_bytes * headroom
    paper = paper_model_states(params, stage, world_size, dtype, **offload)
    missing = lacks(dtype, device)  # no arithmetic in that dtype: nothing fits, whatever the bytes
    paper_bytes, fits = sum(paper["device"].values()), need <= capacity and not missing
    lines = [
        f"model: {format_count(params)} parameters (Ψ), {dtype}, ZeRO stage {stage}, N = {world_size} "
        f"× {device} ({DEVICE_MEMORY_GB[device]} GB each)",
        *(f"  {STATE_LABELS[k]:<28} {gb(b):>12} per device" for k, b in at["device"].items() if b),
        f"  model states per device       {gb(dev_bytes):>12}   (paper {paper['formula']}: {gb(paper_bytes)})",
        *([f"  on the host (offload)          {gb(host_bytes):>12} per rank"] if host_bytes else []),
        f"  × headroom {headroom} for activations/buffers = {gb(need)} {'<=' if need <= capacity else '>'} "
        f"{gb(capacity)}",
        "  -> fits"
        if fits
        else f"  -> does NOT fit{f': a {device} has no {dtype.upper()} arithmetic' if missing else ''}",
    ]
    smallest = min_world_size(params, dtype, stage, device, headroom=headroom, **offload)
    result = {"fits": fits, "need_bytes": int(need), "model_state_bytes": dev_bytes, "host_bytes": host_bytes}
    result |= {"capacity_bytes": capacity, "paper_bytes": paper_bytes, "lines": lines, "min_world_size": smallest}
    result["unsupported_dtype"] = bool(missing)
    if missing:
        others = " or ".join(d for d in TRAIN_DTYPES if not lacks(d, device))
        result["no_fit_reason"] = f"a {device} has no {dtype.upper()} arithmetic: train in {others} there"
    elif smallest is None:
        result["no_fit_reason"] = _no_fit_reason(params, dtype, stage, capacity, headroom, offload)
    return result


def _no_fit_reason(params: int, dtype: str, stage: int, capacity: float, headroom: float, offload: dict) -> str:
    """What no number of devices splits: the states that do not shrink from 1 to MAX_WORLD devices at this stage."""
    one, most = (_device_states(params, dtype, stage, n, **offload).at("backward")["device"] for n in (1, MAX_WORLD))
    whole = [k for k, b in most.items() if b and 2 * b > one[k]]  # shrank less than half: kept whole (padding aside)
    kept = "every model state" if whole == [k for k, b in one.items() if b] else _and([STATE_LABELS[k] for k in whole])
    what = f"ZeRO-{stage} keeps {kept} whole on every device ({gb(sum(most[k] for k in whole))}): " if whole else ""
    return f"{what}{gb(sum(most.values()) * headroom)} per device with head-room even on {MAX_WORLD}, > {gb(capacity)}"


def _and(words: list[str]) -> str:
    return "the " + (" and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1])


def gb(value: float) -> str:
    return format_bytes(value, unit="GB")


def min_world_size(
    params: int, dtype: str, stage: int, device: str, limit: int = MAX_WORLD, headroom=TRAINING_HEADROOM, **offload
) -> int | None:
    """Smallest N for which training fits (None if even `limit` devices do not: what a stage keeps whole on every
    device does not shrink with N). `offload`: offload_optimizer, offload_param, as training_fit takes them."""
    capacity = DEVICE_MEMORY_GB[check_device_type(device)] * GB
    check_number("headroom", headroom, 1.0, HEADROOM_FIX)
    if lacks(dtype, device):
        return None

    def fits(n: int) -> bool:
        return _device_states(params, dtype, stage, n, **offload).total("backward", "device") * headroom <= capacity

    n = 1
    while n <= limit and not fits(n):  # doubling, then bisect: memory per device only shrinks as N grows
        n *= 2
    lo = max(1, n // 2)
    return None if n > limit else lo + bisect.bisect_left(range(lo, n), True, key=fits)

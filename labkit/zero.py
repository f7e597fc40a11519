"""Real ZeRO comparisons: a validated plan -> one DeepSpeed launch -> per-rank JSON -> measured vs predicted.

    plan = make_plan(params="20M", world_size=0, stages="0,1,2,3,2+opt")  # 0 ranks: automatic, plan.why says why
    report = run_plan(plan)  # one `deepspeed --num_gpus N --module labkit.ranks.zero_probe ...` launch

One launch runs every configuration (start-up dominates on small machines): the probe initializes one engine per
configuration, frees it and moves on; each rank writes its own JSON file into the run directory. Stage tokens: "2"
(ZeRO-2), "2+opt" (optimizer offloaded to the CPU), "3+opt+param" (parameters offloaded too).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from labkit import checks, devices, host, launch, memory
from labkit.errors import ConfigError, LabkitError, check_choice, check_int, check_number
from labkit.progress import bar as progress_bar
from labkit.sizing import TRAINING_HEADROOM
from labkit.tabular import format_bytes

PROBE_MODULE = "labkit.ranks.zero_probe"  # what every rank runs: `deepspeed --module labkit.ranks.zero_probe ...`
DTYPES = ("auto", *memory.TRAIN_DTYPES)
MIN_ELEMENTS_PER_RANK = 1024
RUN_MINIMUMS = {"steps": 2, "warmup": 0, "micro_batch": 0, "seq": 0}  # run settings: whole numbers at least this
ONE_RANK_NOTE = (
    "One rank partitions nothing: ZeRO splits model states over N ranks, and with N = 1 every stage keeps all of "
    "them (16Ψ/N = 16Ψ), so the stages differ only by DeepSpeed's buffers. Run with world_size 0 (automatic) or 2+."
)
_PROGRESS = re.compile(rf"{launch.PROGRESS_TAG} config=(\S+) step=(\d+)")
_STAGE_FIX = "write stages like 0,1,2,3 or 2+opt, 3+opt+param"


@dataclass(frozen=True)
class Variant:
    """A ZeRO stage and what it offloads; a combination DeepSpeed has no configuration for is a ConfigError."""

    stage: int
    offload_optimizer: bool = False
    offload_param: bool = False

    def __post_init__(self) -> None:
        memory.check_offload(self.stage, self.offload_optimizer, self.offload_param)

    @property
    def name(self) -> str:
        return f"{self.stage}" + ("+opt" if self.offload_optimizer else "") + ("+param" if self.offload_param else "")

    @property
    def label(self) -> str:
        extra = " + CPU optimizer" if self.offload_optimizer else ""
        return f"ZeRO-{self.stage}{extra}" + (" + CPU params" if self.offload_param else "")

    @classmethod
    def of(cls, stage: int, offload: str = "none") -> Variant:
        """One validated variant: (3, 'optimizer') -> 3+opt."""
        memory.check_stage(stage)
        return cls(stage, check_choice("offload", offload, memory.OFFLOADS) != "none", "param" in offload)


def parse_stages(text: str | list, offload: str = "none") -> list[Variant]:
    """'0,1,2,3,2+opt' -> variants. `offload` ('none'|'optimizer'|'optimizer+param') adds offloaded variants of the
    listed stages that support it (optimizer: stages 1-3; parameters: stage 3)."""
    check_choice("offload", offload, memory.OFFLOADS)
    tokens = [str(t).strip() for t in (text if isinstance(text, (list, tuple)) else str(text).split(","))]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise ConfigError("stages", "no stage given", _STAGE_FIX)
    variants: list[Variant] = []
    for tok in tokens:
        m = re.fullmatch(r"(-?\d+)((?:\+(?:opt|param))*)", tok)
        if not m:
            raise ConfigError("stages", f"cannot read stage {tok!r}", _STAGE_FIX)
        if int(m.group(1)) not in memory.STAGES:
            raise ConfigError("stages", f"ZeRO stage must be 0, 1, 2 or 3, got {m.group(1)}", "pick stages from 0-3")
        variants.append(Variant(int(m.group(1)), "+opt" in m.group(2), "+param" in m.group(2)))
    with_param = "param" in offload
    if with_param and not any(v.stage == 3 for v in variants):
        fix = "add stage 3 to stages, or use offload='optimizer'"
        raise ConfigError("offload", "parameter offload needs ZeRO stage 3, which is not in the stage list", fix)
    if offload != "none" and not any(v.stage for v in variants):  # nothing to offload from: not silently ignored
        fix = "add a stage 1-3 to stages, or use offload='none'"
        raise ConfigError("offload", "optimizer offload needs ZeRO stage 1-3, none is in the stage list", fix)
    if offload != "none":
        extras = [
            Variant(v.stage, True, with_param and v.stage == 3) for v in variants if v.stage and not v.offload_optimizer
        ]
        variants += [v for v in dict.fromkeys(extras) if v not in variants]
    if len(set(variants)) != len(variants):
        raise ConfigError("stages", f"a configuration is listed twice in {tokens}", "list each stage variant once")
    return variants


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto': bf16 everywhere it runs (the ZeRO paper's mixed-precision setting; DeepSpeed's CPU accelerator
    supports it), fp16 on GPUs without bf16."""
    check_choice("dtype", dtype, DTYPES)
    if device == "cuda":
        import torch

        bf16 = torch.cuda.is_bf16_supported()
        if dtype == "bf16" and not bf16:
            raise ConfigError("dtype", "this GPU does not support bf16", "use dtype='fp16' or 'auto'")
        return ("bf16" if bf16 else "fp16") if dtype == "auto" else dtype
    if dtype == "fp16" and device == "cpu":
        import torch

        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
        except Exception:  # any failure means not supported
            ok = False
        if not ok:
            fix = "use dtype='bf16' (or 'auto') or 'fp32'"
            raise ConfigError("dtype", "DeepSpeed's CPU accelerator does not support fp16 on this CPU", fix)
    return "bf16" if dtype == "auto" else dtype


def auto_ranks(world_size: int, device: str = "auto") -> tuple[int, str, str]:
    """(ranks, device, why). world_size 0 = automatic (`devices.auto_ranks`), needing 2 ranks: ZeRO's lesson is
    partitioning, so one GPU with device 'auto' (or none) gives 2 CPU ranks instead."""
    check_int("world_size", world_size, 0, "use 0 (automatic) or 1 or more data-parallel ranks")
    if world_size:
        dev = devices.pick_device(device)
        devices.check_ranks_fit("world_size", world_size, dev)
        return world_size, dev, f"as asked: world_size={world_size}"
    ranks, dev, why = automatic_ranks(device)
    return ranks, dev, f"automatic: {why}"


def automatic_ranks(device: str = "auto") -> tuple[int, str, str]:
    """(ranks, device, why) of world_size 0: `devices.auto_ranks` needing 2 ranks, in ZeRO's words."""
    needs = "ZeRO needs 2 or more ranks to partition model states"
    ranks, dev, why = devices.auto_ranks(device, at_least=2, needs=needs)
    if ranks == 1:  # one accelerator asked for by name: kept, and said to partition nothing
        why += f"; {ONE_RANK_NOTE.split(':')[0].lower()}"
    return ranks, dev, why


@dataclass
class ZeroPlan:
    """A validated comparison: everything needed to launch, nothing launched yet."""

    params_requested: int
    hidden: int
    layers: int
    world_size: int
    device: str
    dtype: str
    variants: list[Variant]
    steps: int = 4
    warmup: int = 1
    micro_batch: int = 2
    seq: int = 16
    lr: float = 1e-4
    optimizer_impl: str = "torch"
    bucket_size: int = 0
    memory_summary: bool = False
    timeout_s: float = 900.0
    why: str = ""  # how world_size and device were chosen, in one line (notebooks print it)
    batch_why: str = ""  # why micro_batch x seq is smaller than the device's default, if it is (notebooks print it)
    fail_rank: int | None = None  # test hook: make this rank raise
    fail_at: str = "step"

    @property
    def params(self) -> int:
        return memory.mlp_params(self.hidden, self.layers)

    @property
    def batch(self) -> str:
        """The batch in words, with why it is smaller than the device's default where it is."""
        why = f" ({self.batch_why})" if self.batch_why else ""
        return f"{self.micro_batch} x {self.seq} tokens per rank and step{why}"

    @property
    def tensor_numels(self) -> list[int]:
        return memory.mlp_tensor_numels(self.hidden, self.layers)

    @property
    def partitions_nothing(self) -> bool:
        """One rank and a ZeRO stage: the comparison cannot show partitioning (say so beside its numbers)."""
        return self.world_size == 1 and any(v.stage for v in self.variants)

    def ds_config(self, v: Variant) -> dict:
        buckets = ("reduce_bucket_size", "allgather_bucket_size") + (("stage3_prefetch_bucket_size",) * (v.stage == 3))
        zero: dict = {"stage": v.stage, **dict.fromkeys(buckets, self.bucket_size)}
        for key, on in (("offload_optimizer", v.offload_optimizer), ("offload_param", v.offload_param)):
            if on:
                zero[key] = {"device": "cpu", "pin_memory": self.device != "cpu"}
        # torch.optim.AdamW: nothing to compile; with offload it runs on the host instead of DeepSpeedCPUAdam.
        torch_adam = {"torch_adam": True} if self.optimizer_impl == "torch" else {}
        cfg = {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": self.lr, "weight_decay": 0.0, **torch_adam}},
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": self.optimizer_impl != "torch",
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.dtype != "fp32":
            cfg[self.dtype] = {"enabled": True} | ({"initial_scale_power": 8} if self.dtype == "fp16" else {})
        return cfg

    def probe_configs(self) -> list[dict]:
        keys = ("hidden", "layers", "dtype", "micro_batch", "seq", "steps", "warmup", "memory_summary")
        shared = {k: getattr(self, k) for k in keys} | {"seed": 0}
        if self.fail_rank is not None:
            shared.update(fail_rank=self.fail_rank, fail_at=self.fail_at)
        return [{"name": v.name, **shared, "ds_config": self.ds_config(v)} for v in self.variants]

    def predictions(self, v: Variant) -> dict:
        offload = {"offload_optimizer": v.offload_optimizer, "offload_param": v.offload_param}
        options = {**offload, "optimizer_impl": self.optimizer_impl, "reduce_bucket_size": self.bucket_size}
        options["ranks_on_cpu"] = self.device == "cpu"
        ds = memory.deepspeed_model_states(self.tensor_numels, v.stage, self.world_size, self.dtype, **options)
        paper = memory.paper_model_states(self.params, v.stage, self.world_size, self.dtype, **offload)
        return {
            "deepspeed": ds.at("backward"),
            "deepspeed_after_step": ds.at("step"),
            "deepspeed_after_init": ds.at("init", steady=False),
            "deepspeed_pieces": [asdict(p) for p in ds.pieces],
            "paper": paper,
        }

    def command(self, plan_path: str = "plan.json", out_dir: str = "RUN_DIR") -> list[str]:
        """The launch line as a user types it (the launcher by name, not by this machine's path)."""
        return launch.shown_command(launch.build_command(self.launch_spec(plan_path, out_dir)))

    def launch_spec(self, plan_path, out_dir) -> launch.LaunchSpec:
        args = ["--plan", str(plan_path), "--out", str(out_dir)]
        return launch.LaunchSpec(PROBE_MODULE, args, self.world_size, "deepspeed", device=self.device)

    def to_dict(self) -> dict:
        return asdict(self) | {"variants": [v.name for v in self.variants], "params": self.params}


def make_plan(params="20M", world_size=0, stages="0,1,2,3", *, offload="none", dtype="auto", device="auto", **run):
    """Validate every input (one ConfigError naming the field and the fix) before anything is launched.

    world_size 0 = automatic (auto_ranks). The model is `layers` (run setting, default 10) MLP blocks sized to `params`
    (hidden a multiple of 64); `hidden` > 0 fixes the width instead (then `layers` is used as given), e.g. an odd width
    to exercise padding. Other `run` settings are ZeroPlan's: steps, warmup, micro_batch and seq (0: by device),
    optimizer_impl, memory_summary, timeout_s.
    """
    n_params = memory.parse_count(params, "params")
    variants = parse_stages(stages, offload)
    check_choice("dtype", dtype, DTYPES)  # before resolving the device: a typo should not cost an import
    check_choice("optimizer_impl", run.get("optimizer_impl", "torch"), memory.OPTIMIZER_IMPLS)
    layers, hidden = check_int("layers", run.pop("layers", 10), 1), check_int("hidden", run.pop("hidden", 0), 0)
    steps, warmup = run.setdefault("steps", 4), run.setdefault("warmup", 1)
    for name, lo in RUN_MINIMUMS.items():
        check_int(name, run.get(name, lo), lo)
    check_number("timeout_s", run.get("timeout_s", ZeroPlan.timeout_s), strict=True, fix="pass seconds > 0")
    if warmup >= steps:
        fix = "raise steps or lower warmup: step time is the median of the steps after warm-up"
        raise ConfigError("warmup", f"warm-up steps ({warmup}) must be fewer than steps ({steps})", fix)
    hidden, layers = (hidden, layers) if hidden else memory.mlp_shape_for(n_params, layers)
    ranks, dev, why = auto_ranks(world_size, device)
    actual = memory.mlp_params(hidden, layers)
    if any(v.stage > 0 for v in variants) and actual // ranks < MIN_ELEMENTS_PER_RANK:
        problem = f"a {actual:,}-parameter model is too small to partition over {ranks} ranks (each would own "
        problem += f"fewer than {MIN_ELEMENTS_PER_RANK:,} elements)"
        raise ConfigError("params", problem, "use a larger model or fewer ranks")
    gpu_like, dtype = dev in ("cuda", "hpu"), resolve_dtype(dtype, dev)
    batch, seq = (8, 512) if gpu_like else (2, 16)
    chosen = run.get("micro_batch") or run.get("seq")  # 0: by device
    if not gpu_like and dtype == "bf16" and not chosen and checks.native_cpu_bf16() is False:
        # bf16 matmuls hundreds of times slower than fp32 (no AVX-512)
        why_smaller = "this CPU has no native bf16, and model states do not depend on the batch"
        run["batch_why"] = f"not {batch} x {seq}: {why_smaller}"
        batch, seq = checks.SLOW_BF16_CPU_BATCH
    run["micro_batch"], run["seq"] = run.get("micro_batch") or batch, run.get("seq") or seq
    run |= {"bucket_size": hidden * hidden + (hidden * hidden) % 2, "why": why}
    plan = ZeroPlan(n_params, hidden, layers, ranks, dev, dtype, variants, **run)
    check_memory(plan, host.memory_available(), devices.device_memory(dev))
    return plan


def _shortfall(plan: ZeroPlan, v: Variant, host_free: int | None, device_size: int | None) -> tuple[str, float]:
    """('', 1.0) when `v` fits, else (why not, the fraction of the model that would fit). Need: labkit's DeepSpeed
    model of the states times the training head-room; CPU ranks hold all of it in the host's memory, every rank."""
    at = plan.predictions(v)["deepspeed"]
    dev, off = (sum(at[loc].values()) * TRAINING_HEADROOM for loc in memory.LOCATIONS)
    dev, off = (0.0, dev + off) if plan.device == "cpu" else (dev, off)
    ranks = f"world_size = {plan.world_size} rank{'s' * (plan.world_size != 1)}"
    if device_size and dev > device_size:
        why = f"needs {format_bytes(dev)} per {plan.device.upper()} device, more than its {format_bytes(device_size)}"
        return why, device_size / dev
    if host_free is not None and off * plan.world_size > host_free:
        sharing = "sharing this host" if plan.device == "cpu" else "offloading to this host"
        why = f"needs {format_bytes(off * plan.world_size)} of host memory ({format_bytes(off)} for each of {ranks} "
        return why + f"{sharing}), {format_bytes(host_free)} available", host_free / (off * plan.world_size)
    return "", 1.0


def check_memory(plan: ZeroPlan, host_free: int | None, device_size: int | None) -> None:
    """ConfigError naming `params` before launch where a configuration's model states (with the head-room) cannot fit
    the host's available memory (`host_free`) or each device (`device_size`; None: unknown, not checked); the fix
    names only the changes that would fit: a smaller model, fewer CPU ranks, the configurations that fit."""

    def fits(p: ZeroPlan, variants: list[Variant]) -> bool:
        return not any(_shortfall(p, v, host_free, device_size)[0] for v in variants)

    short = [(share, why, v) for v in plan.variants for why, share in [_shortfall(plan, v, host_free, device_size)]]
    short = [s for s in short if s[1]]
    if not short:
        return
    share, why, worst = min(short, key=lambda s: s[0])
    options = [f"params at most about {memory.format_count(_round_down(plan.params * share * 0.95))}"]
    if plan.device == "cpu":  # the ranks share one memory: fewer need less (on accelerators each would need more)
        n = next((n for n in range(plan.world_size - 1, 1, -1) if fits(replace(plan, world_size=n), plan.variants)), 0)
        options += [f"world_size={n}"] if n else []
    every = [Variant(s) for s in memory.STAGES] + [Variant(s, True) for s in (1, 2, 3)] + [Variant(3, True, True)]
    good = [v.name for v in every if fits(plan, [v])]
    options += [f"stages={','.join(good)} (the configurations that fit)"] if good else []
    labels = ", ".join(v.label for _, _, v in short)
    problem = f"{labels} of a {plan.params:,}-parameter model cannot fit: {worst.label} {why} (its model states x "
    problem += f"{TRAINING_HEADROOM:g} head-room for activations and buffers)"
    raise ConfigError("params", problem, "use " + "; or ".join(options))


def _round_down(x: float) -> int:
    """x down to two significant digits (a count to suggest: 613,4xx,xxx -> 610,000,000)."""
    step = 10 ** max(0, len(str(int(x))) - 2)
    return max(1, int(x) // step * step)


def one_device_reference(plan: ZeroPlan, device: str = "auto") -> ZeroPlan | None:
    """The same configurations on this machine's one accelerator, when the automatic plan moved the lesson to CPU
    ranks because there was only one (issue 10: compare on 2 CPU ranks and add the 1-GPU numbers, saying so).

    None when the plan already runs on accelerators, `device` was asked for explicitly, or there is none here."""
    if plan.device != "cpu" or str(device).strip().lower() != "auto":
        return None
    dev = devices.pick_device("auto")
    if dev == "cpu" or devices.device_count(dev) != 1:
        return None
    why = f"the one {dev.upper()} device, for reference: {ONE_RANK_NOTE.split(':')[0].lower()}"
    dtype = resolve_dtype("auto", dev) if plan.dtype == "bf16" else plan.dtype  # bf16 may be what CPUs have, not GPUs
    return replace(plan, world_size=1, device=dev, dtype=dtype, why=why)


# -- Running -----------------------------------------------------------------------------------------------------------
def run_plan(plan: ZeroPlan, *, run_dir=None, progress: bool | Callable = True, log_path=None) -> dict:
    """Launch the probe once for all configurations; return the report (JSON-able). Raises LaunchError naming the
    failing rank's own error; all ranks are stopped and a temporary run directory is removed on any exit. Rank output
    is captured (`log_path` keeps it). `progress`: True (tqdm), False, or a callable(config, step, done, total)."""
    work = Path(tempfile.mkdtemp(prefix="labkit-zero-") if run_dir is None else run_dir)
    work.mkdir(parents=True, exist_ok=True)
    total, done = len(plan.variants) * plan.steps, [0]
    what = "ZeRO comparison" if len(plan.variants) > 1 else f"{plan.variants[0].label} run"  # 05 runs one
    desc = f"{what} ({plan.world_size} rank{'s' * (plan.world_size != 1)}, {plan.device})"
    bar = progress_bar(total, desc=desc, disable=progress is not True, rate=False)

    def on_output(line: str) -> None:
        m = _PROGRESS.search(line)
        if m:
            done[0] += 1
            bar.set_postfix_str(f"ZeRO {m.group(1)}", refresh=False)
            bar.update(1)
            if callable(progress):
                progress(m.group(1), int(m.group(2)), done[0], total)

    try:
        collective_s = int(min(plan.timeout_s, launch.COLLECTIVE_TIMEOUT_S))
        plan_file = {"configs": plan.probe_configs(), "collective_timeout_s": collective_s}
        (work / "plan.json").write_text(json.dumps(plan_file, indent=1))
        spec, t0 = plan.launch_spec(work / "plan.json", work / "ranks"), time.monotonic()
        result = launch.run(spec, timeout=plan.timeout_s, on_output=on_output if progress else None, log_path=log_path)
        ranks = read_rank_files(work / "ranks", plan.world_size)
        return build_report(plan, ranks, command=result.command, wall_s=time.monotonic() - t0)
    finally:
        bar.close()
        if run_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def read_rank_files(out_dir: Path, world_size: int) -> list[dict]:
    ranks = []
    for r in range(world_size):
        path = Path(out_dir) / f"rank_{r}.json"
        if not path.is_file():
            raise LabkitError(f"rank {r} wrote no result file ({path}); the run ended before it finished")
        ranks.append(json.loads(path.read_text()))
    return ranks


def _steady(phases: list[dict], phase: str) -> dict:
    """The inventory at `phase` of the last measured step >= 2 (lazy state exists by then)."""
    cands = [p for p in phases if p["phase"] == phase and p["step"] >= 2]
    return cands[-1] if cands else [p for p in phases if p["phase"] == phase][-1]


def _minus(values: list, bases: list) -> list:
    return [a - b if a is not None and b is not None else None for a, b in zip(values, bases)]


def _tensors(results: list[dict], phase: str) -> list[dict]:
    return [{loc: dict(_steady(res["phases"], phase)["tensors"][loc]) for loc in memory.LOCATIONS} for res in results]


def _config_report(plan: ZeroPlan, v: Variant, per_rank: list[dict]) -> dict:
    """One configuration: what each rank counted and allocated beside both predictions."""
    pred = plan.predictions(v)
    if plan.device == "cpu":  # where DeepSpeed puts a tensor "on the host" is the ranks' own memory: compare like that
        folded = ("deepspeed", "deepspeed_after_step", "deepspeed_after_init", "paper")
        pred |= {k: memory.on_one_memory(pred[k]) for k in folded}
    measured = _tensors(per_rank, "backward")
    errs = [memory.compare_to_measured(pred["deepspeed"], m) for m in measured]
    paper_total = pred["paper"]["total"]
    alloc_step = [(_steady(res["phases"], "step").get("accelerator") or {}).get("allocated") for res in per_rank]
    before = [(res.get("accelerator_before") or {}).get("allocated") for res in per_rank]
    peaks = [res.get("peak_allocated") for res in per_rank]
    out = {"name": v.name, "label": v.label, **asdict(v), "optimizer_class": per_rank[0]["optimizer_class"]}
    out |= {"measured": measured, "measured_after_step": _tensors(per_rank, "step")}
    out |= {"measured_total": [e["measured"] for e in errs], "predicted_deepspeed_total": errs[0]["predicted"]}
    out |= {f"predicted_{k}": pred[k] for k in ("deepspeed", "deepspeed_after_step", "deepspeed_after_init")}
    out |= {"deepspeed_pieces": pred["deepspeed_pieces"], "predicted_paper": pred["paper"]}
    out |= {"predicted_paper_total": paper_total, "rel_error_deepspeed": max(abs(e["rel_error"]) for e in errs)}
    out["rel_error_paper"] = max(abs(e["measured"] - paper_total) / paper_total for e in errs)
    out |= {"step_time_s": max(res["step_time_s"] for res in per_rank), "init_s": max(r["init_s"] for r in per_rank)}
    out |= {"step_times_s": [res["step_times_s"] for res in per_rank], "losses": per_rank[0]["losses"]}
    # what this config added to the allocator's peak (earlier engines in the process may not be freed)
    out |= {"peak_allocated": peaks, "peak_above_start": _minus(peaks, before), "allocated_before": before}
    out |= {"engine_released": [res.get("engine_released") for res in per_rank]}
    out |= {"allocated_after_step": _minus(alloc_step, before), "timeline": [res["phases"] for res in per_rank]}
    return out | {"memory_summary": per_rank[0].get("memory_summary")}


def build_report(plan: ZeroPlan, ranks: list[dict], command: list[str] | None = None, wall_s=None) -> dict:
    configs = [_config_report(plan, v, [r["results"][i] for r in ranks]) for i, v in enumerate(plan.variants)]
    first = ranks[0]["results"][0] if ranks and ranks[0]["results"] else {}
    head = {"plan": plan.to_dict(), "params": plan.params, "tensor_numels": plan.tensor_numels, "device": plan.device}
    head |= {"device_name": first.get("device_name"), "world_size": plan.world_size, "dtype": plan.dtype}
    return head | {"why": plan.why, "command": command, "wall_s": wall_s, "configs": configs}

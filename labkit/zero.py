"""Real ZeRO comparisons: a validated plan -> one DeepSpeed launch -> per-rank JSON -> measured vs predicted.

    plan = make_plan(params="20M", world_size=2, stages="0,1,2,3,2+opt")
    report = run_plan(plan)            # one `deepspeed --num_gpus 2 labkit/zero_probe.py ...` launch
    rows = summary_rows(report)

Every configuration of a comparison runs in ONE launch (start-up dominates on small machines): the probe initializes
one engine per configuration, frees it, and moves on. Each rank writes its own JSON file into the run directory.
Stage tokens: "2" (ZeRO-2), "2+opt" (optimizer offloaded to the CPU), "3+opt+param" (parameters offloaded too).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Callable

from labkit import memory
from labkit.errors import ConfigError, LabkitError

PROBE_SCRIPT = Path(__file__).with_name("zero_probe.py")
DEVICES = ("auto", "cpu", "cuda", "hpu")
DTYPES = ("auto", *memory.TRAIN_DTYPES)
MIN_ELEMENTS_PER_RANK = 1024
_PROGRESS = re.compile(r"LABKIT_PROGRESS config=(\S+) step=(\d+)")


@dataclass(frozen=True)
class Variant:
    stage: int
    offload_optimizer: bool = False
    offload_param: bool = False

    @property
    def name(self) -> str:
        return f"{self.stage}" + ("+opt" if self.offload_optimizer else "") + ("+param" if self.offload_param else "")

    @property
    def label(self) -> str:
        extra = " + CPU optimizer" if self.offload_optimizer else ""
        extra += " + CPU params" if self.offload_param else ""
        return f"ZeRO-{self.stage}{extra}"


def parse_stages(text: str | list, offload: str = "none") -> list[Variant]:
    """'0,1,2,3,2+opt' -> variants. `offload` ('none'|'optimizer'|'optimizer+param') adds offloaded variants of the
    listed stages that support it (optimizer: stages 1-3; parameters: stage 3)."""
    if offload not in ("none", "optimizer", "optimizer+param", "param"):
        raise ConfigError("offload", f"unknown offload {offload!r}", "use none, optimizer or optimizer+param")
    tokens = [str(t).strip() for t in (text if isinstance(text, (list, tuple)) else str(text).split(",")) if str(t).strip()]
    if not tokens:
        raise ConfigError("stages", "no stage given", "list stages like 0,1,2,3 (optionally 2+opt, 3+opt+param)")
    variants: list[Variant] = []
    for tok in tokens:
        m = re.fullmatch(r"(-?\d+)((?:\+(?:opt|param))*)", tok)
        if not m:
            raise ConfigError("stages", f"cannot read stage {tok!r}", "write stages like 0,1,2,3 or 2+opt, 3+opt+param")
        stage = int(m.group(1))
        if stage not in memory.STAGES:
            raise ConfigError("stages", f"ZeRO stage must be 0, 1, 2 or 3, got {stage}", "pick stages from 0-3")
        v = Variant(stage, "+opt" in m.group(2), "+param" in m.group(2))
        memory.check_offload(v.stage, v.offload_optimizer, v.offload_param)
        variants.append(v)
    if offload != "none":
        with_param = "param" in offload
        if with_param and not any(v.stage == 3 for v in variants):
            raise ConfigError("offload", "parameter offload needs ZeRO stage 3, which is not in the stage list",
                              "add stage 3 to stages, or use offload='optimizer'")
        for v in list(variants):
            if v.stage == 0 or v.offload_optimizer:
                continue
            extra = Variant(v.stage, True, with_param and v.stage == 3)
            if extra not in variants:
                variants.append(extra)
    if len(set(variants)) != len(variants):
        raise ConfigError("stages", f"a configuration is listed twice in {tokens}", "list each stage variant once")
    return variants


def detect_device() -> str:
    """cuda if a CUDA GPU is visible, hpu if Gaudi's torch bridge is importable, else cpu."""
    try:
        import torch
        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    try:
        import habana_frameworks.torch.hpu as hpu  # noqa: F401
        if hpu.is_available():
            return "hpu"
    except ImportError:
        pass
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto': bf16 everywhere it runs (the ZeRO paper's mixed-precision setting; DeepSpeed's CPU accelerator
    supports it), fp16 on GPUs without bf16."""
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    if device == "cuda":
        import torch
        if dtype == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("dtype", "this GPU does not support bf16", "use dtype='fp16' or 'auto'")
        return dtype
    if dtype == "auto":
        return "bf16"
    if dtype == "fp16" and device == "cpu":
        import torch
        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
        except Exception:  # noqa: BLE001 - any failure means not supported
            ok = False
        if not ok:
            raise ConfigError("dtype", "DeepSpeed's CPU accelerator does not support fp16 on this CPU",
                              "use dtype='bf16' (or 'auto') or 'fp32'")
    return dtype


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
    fail_rank: int | None = None  # test hook: make this rank raise
    fail_at: str = "step"

    @property
    def params(self) -> int:
        return memory.mlp_params(self.hidden, self.layers)

    @property
    def tensor_numels(self) -> list[int]:
        return memory.mlp_tensor_numels(self.hidden, self.layers)

    def ds_config(self, v: Variant) -> dict:
        zero: dict = {"stage": v.stage, "reduce_bucket_size": self.bucket_size,
                      "allgather_bucket_size": self.bucket_size}
        if v.stage == 3:
            zero["stage3_prefetch_bucket_size"] = self.bucket_size
        if v.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.device != "cpu"}
        if v.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": self.device != "cpu"}
        opt_params: dict = {"lr": self.lr, "weight_decay": 0.0}
        if self.optimizer_impl == "torch":
            # torch.optim.AdamW: nothing to compile; with offload it runs on the host instead of DeepSpeedCPUAdam.
            opt_params["torch_adam"] = True
        cfg = {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": opt_params},
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": self.optimizer_impl != "torch",
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.dtype == "bf16":
            cfg["bf16"] = {"enabled": True}
        elif self.dtype == "fp16":
            cfg["fp16"] = {"enabled": True, "initial_scale_power": 8}
        return cfg

    def probe_configs(self) -> list[dict]:
        out = []
        for v in self.variants:
            cfg = {"name": v.name, "hidden": self.hidden, "layers": self.layers, "dtype": self.dtype,
                   "micro_batch": self.micro_batch, "seq": self.seq, "steps": self.steps, "warmup": self.warmup,
                   "seed": 0, "memory_summary": self.memory_summary, "ds_config": self.ds_config(v)}
            if self.fail_rank is not None:
                cfg.update(fail_rank=self.fail_rank, fail_at=self.fail_at)
            out.append(cfg)
        return out

    def predictions(self, v: Variant) -> dict:
        ds = memory.deepspeed_model_states(self.tensor_numels, v.stage, self.world_size, self.dtype,
                                           offload_optimizer=v.offload_optimizer, offload_param=v.offload_param,
                                           optimizer_impl=self.optimizer_impl, reduce_bucket_size=self.bucket_size)
        paper = memory.paper_model_states(self.params, v.stage, self.world_size, self.dtype,
                                          v.offload_optimizer, v.offload_param)
        return {"deepspeed": ds.at("backward"), "deepspeed_after_step": ds.at("step"),
                "deepspeed_after_init": ds.at("init", steady=False),
                "deepspeed_pieces": [asdict(p) for p in ds.pieces], "paper": paper}

    def command(self, plan_path: str = "plan.json", out_dir: str = "RUN_DIR") -> list[str]:
        from labkit import launch
        return launch.build_command(self.launch_spec(plan_path, out_dir))

    def launch_spec(self, plan_path, out_dir):
        from labkit import launch
        return launch.LaunchSpec(script=str(PROBE_SCRIPT), args=["--plan", str(plan_path), "--out", str(out_dir)],
                                 world_size=self.world_size, launcher="deepspeed", accelerator=self.device)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["variants"] = [v.name for v in self.variants]
        d["params"] = self.params
        return d


def make_plan(params: str | int = "20M", world_size: int = 2, stages: str | list = "0,1,2,3", *, offload: str = "none",
              dtype: str = "auto", device: str = "auto", steps: int = 4, warmup: int = 1, micro_batch: int = 0,
              seq: int = 0, layers: int = 10, hidden: int = 0, optimizer_impl: str = "torch",
              memory_summary: bool = False, timeout_s: float = 900.0) -> ZeroPlan:
    """Validate every input (one ConfigError naming the field and the fix) before anything is launched.

    The model is `layers` MLP blocks sized to `params` (hidden a multiple of 64); `hidden` > 0 fixes the width
    instead (then `layers` is used as given and `params` only checked), e.g. an odd width to exercise padding.
    """
    n_params = memory.parse_count(params, "params")
    memory.check_world_size(world_size)
    variants = parse_stages(stages, offload)
    if device not in DEVICES:
        raise ConfigError("device", f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    if dtype not in DTYPES:  # before detecting the device: a typo should not cost an import
        raise ConfigError("dtype", f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    if optimizer_impl not in memory.OPTIMIZER_IMPLS:
        raise ConfigError("optimizer_impl", f"unknown optimizer implementation {optimizer_impl!r}",
                          f"use one of {', '.join(memory.OPTIMIZER_IMPLS)}")
    for name, value, lo in (("steps", steps, 2), ("warmup", warmup, 0), ("micro_batch", micro_batch, 0),
                            ("seq", seq, 0), ("layers", layers, 1), ("hidden", hidden, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(name, f"must be a whole number >= {lo}, got {value!r}",
                              f"pass {name}={max(lo, 2) if name == 'steps' else max(lo, 1)} or more")
    if warmup >= steps:
        raise ConfigError("warmup", f"warm-up steps ({warmup}) must be fewer than steps ({steps})",
                          "raise steps or lower warmup: step time is the median of the steps after warm-up")
    if hidden:
        n_layers = layers
    else:
        hidden, n_layers = memory.mlp_shape_for(n_params, layers)
    actual = memory.mlp_params(hidden, n_layers)
    if any(v.stage > 0 for v in variants) and actual // world_size < MIN_ELEMENTS_PER_RANK:
        raise ConfigError("params", f"a {actual:,}-parameter model is too small to partition over {world_size} ranks "
                          f"(each would own fewer than {MIN_ELEMENTS_PER_RANK:,} elements)",
                          "use a larger model or fewer ranks")
    dev = detect_device() if device == "auto" else device
    if dev == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("device", "device='cuda' but no CUDA GPU is visible", "use device='auto' or 'cpu'")
        if world_size > torch.cuda.device_count():
            raise ConfigError("world_size", f"{world_size} ranks but only {torch.cuda.device_count()} CUDA device(s)",
                              "lower world_size to the number of GPUs")
    if dev == "hpu":
        try:
            import habana_frameworks.torch.hpu  # noqa: F401
        except ImportError:
            raise ConfigError("device", "device='hpu' but habana_frameworks is not installed",
                              "run in a Gaudi image (vault.habana.ai/gaudi-docker/...) or use device='auto'") from None
    resolved_dtype = resolve_dtype(dtype, dev)
    gpu_like = dev in ("cuda", "hpu")
    return ZeroPlan(params_requested=n_params, hidden=hidden, layers=n_layers, world_size=world_size, device=dev,
                    dtype=resolved_dtype, variants=variants, steps=steps, warmup=warmup,
                    micro_batch=micro_batch or (8 if gpu_like else 2), seq=seq or (512 if gpu_like else 16),
                    optimizer_impl=optimizer_impl, bucket_size=_even(hidden * hidden),
                    memory_summary=memory_summary, timeout_s=timeout_s)


def _even(x: int) -> int:
    return x + (x % 2)  # allgather_bucket_size must be a multiple of 2


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------
def run_plan(plan: ZeroPlan, *, run_dir: str | Path | None = None, progress: bool | Callable = True,
             log_path: str | Path | None = None) -> dict:
    """Launch the probe once for all configurations; return the report (JSON-able). Raises LaunchError naming the
    failing rank's own error; all ranks are stopped and a temporary run directory is removed on any exit."""
    own_dir = run_dir is None
    work = Path(tempfile.mkdtemp(prefix="labkit-zero-")) if own_dir else Path(run_dir)
    work.mkdir(parents=True, exist_ok=True)
    bar = None
    try:
        from labkit import launch

        plan_path = work / "plan.json"
        plan_path.write_text(json.dumps({"configs": plan.probe_configs(),
                                         "collective_timeout_s": int(min(plan.timeout_s, 600))}, indent=1))
        out_dir = work / "ranks"
        total = len(plan.variants) * plan.steps
        on_output = None
        if progress is True:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc=f"ZeRO comparison ({plan.world_size} ranks, {plan.device})", unit="step")
        done = {"n": 0}

        def on_output_fn(line: str) -> None:
            m = _PROGRESS.search(line)
            if not m:
                return
            done["n"] += 1
            if bar is not None:
                bar.set_postfix_str(f"ZeRO {m.group(1)}")
                bar.update(1)
            elif callable(progress):
                progress(m.group(1), int(m.group(2)), done["n"], total)

        on_output = on_output_fn if progress else None
        spec = plan.launch_spec(plan_path, out_dir)
        t0 = time.monotonic()
        result = launch.run(spec, timeout=plan.timeout_s, on_output=on_output, log_path=log_path)
        ranks = read_rank_files(out_dir, plan.world_size)
        return build_report(plan, ranks, command=result.command, wall_s=time.monotonic() - t0)
    finally:
        if bar is not None:
            bar.close()
        if own_dir:
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


def build_report(plan: ZeroPlan, ranks: list[dict], command: list[str] | None = None, wall_s: float | None = None) -> dict:
    configs = []
    for i, v in enumerate(plan.variants):
        per_rank = [r["results"][i] for r in ranks]
        pred = plan.predictions(v)
        measured = [_strip(_steady(res["phases"], "backward")["tensors"]) for res in per_rank]
        measured_step = [_strip(_steady(res["phases"], "step")["tensors"]) for res in per_rank]
        errs = [memory.compare_to_measured(pred["deepspeed"], m) for m in measured]
        paper_total = pred["paper"]["total"]
        alloc_step = [(_steady(res["phases"], "step").get("accelerator") or {}).get("allocated") for res in per_rank]
        before = [(res.get("accelerator_before") or {}).get("allocated") for res in per_rank]
        configs.append({
            "name": v.name, "label": v.label, "stage": v.stage, "offload_optimizer": v.offload_optimizer,
            "offload_param": v.offload_param,
            "optimizer_class": per_rank[0]["optimizer_class"],
            "measured": measured, "measured_after_step": measured_step,
            "measured_total": [e["measured"] for e in errs],
            "predicted_deepspeed": pred["deepspeed"], "predicted_deepspeed_after_step": pred["deepspeed_after_step"],
            "predicted_deepspeed_after_init": pred["deepspeed_after_init"],
            "predicted_deepspeed_total": errs[0]["predicted"], "deepspeed_pieces": pred["deepspeed_pieces"],
            "predicted_paper": pred["paper"], "predicted_paper_total": paper_total,
            "rel_error_deepspeed": max((abs(e["rel_error"]) for e in errs), default=0.0),
            "rel_error_paper": max(abs(e["measured"] - paper_total) / paper_total for e in errs),
            "step_time_s": max(res["step_time_s"] for res in per_rank),
            "step_times_s": [res["step_times_s"] for res in per_rank],
            "init_s": max(res["init_s"] for res in per_rank),
            "losses": per_rank[0]["losses"],
            "peak_allocated": [res.get("peak_allocated") for res in per_rank],
            # what this config added to the allocator's peak (earlier engines in the process may not be freed)
            "peak_above_start": [pk - b if pk is not None and b is not None else None
                                 for pk, b in zip((res.get("peak_allocated") for res in per_rank), before)],
            "allocated_before": before,
            "engine_released": [res.get("engine_released") for res in per_rank],
            "allocated_after_step": [a - b if a is not None and b is not None else None
                                     for a, b in zip(alloc_step, before)],
            "timeline": [res["phases"] for res in per_rank],
            "memory_summary": per_rank[0].get("memory_summary"),
        })
    first = ranks[0]["results"][0] if ranks and ranks[0]["results"] else {}
    return {"plan": plan.to_dict(), "params": plan.params, "tensor_numels": plan.tensor_numels,
            "device": plan.device, "device_name": first.get("device_name"), "world_size": plan.world_size,
            "dtype": plan.dtype, "command": command, "wall_s": wall_s, "configs": configs}


def _strip(t: dict) -> dict:
    return {"device": dict(t["device"]), "host": dict(t["host"])}


# ----------------------------------------------------------------------------------------------------------------------
# Presenting
# ----------------------------------------------------------------------------------------------------------------------
def summary_rows(report: dict, rank: int = 0) -> list[dict]:
    """One row per configuration: measured vs both predictions, step time (for tables and the CLI)."""
    rows = []
    for c in report["configs"]:
        m = c["measured"][rank]
        rows.append({
            "config": c["label"],
            "measured_device": sum(m["device"].values()), "measured_host": sum(m["host"].values()),
            "measured_total": c["measured_total"][rank],
            "deepspeed_model": c["predicted_deepspeed_total"], "paper": c["predicted_paper_total"],
            "paper_formula": c["predicted_paper"]["formula"],
            "rel_error_deepspeed": c["rel_error_deepspeed"],
            "peak_allocated": c.get("peak_above_start", c["peak_allocated"])[rank], "step_ms": c["step_time_s"] * 1e3,
            "final_loss": c["losses"][-1],
        })
    return rows


def format_table(rows: list[dict], unit: str = "MB") -> str:
    scale = {"MB": 1e6, "GB": 1e9}[unit]
    head = (f"{'config':<30} {'measured':>10} {'DeepSpeed':>10} {'err':>7} {'paper':>10}  {'paper formula':<22} "
            f"{'peak':>9} {'step ms':>8}")
    lines = [f"model-state bytes per rank ({unit}); measured = tensors counted in the engine; peak = allocator peak",
             head, "-" * len(head)]
    for r in rows:
        peak = f"{r['peak_allocated'] / scale:9.1f}" if r.get("peak_allocated") else f"{'n/a':>9}"
        lines.append(f"{r['config']:<30} {r['measured_total'] / scale:10.2f} {r['deepspeed_model'] / scale:10.2f} "
                     f"{r['rel_error_deepspeed'] * 100:6.2f}% {r['paper'] / scale:10.2f}  {r['paper_formula']:<22} "
                     f"{peak} {r['step_ms']:8.1f}")
    return "\n".join(lines)


def conclusions(report: dict, rank: int = 0) -> list[str]:
    """Sentences computed from the run's own numbers: what each config saved and cost against the first one."""
    cfgs = report["configs"]
    base = cfgs[0]
    # On a CPU-only run "offloaded" tensors stay in the same RAM: compare totals there.
    split = report["device"] != "cpu"
    dev_of = lambda c: sum(c["measured"][rank]["device"].values()) if split else c["measured_total"][rank]  # noqa: E731
    base_dev = dev_of(base)
    where = "per GPU" if report["device"] == "cuda" else ("per HPU" if report["device"] == "hpu" else "per rank")
    out = []
    for c in cfgs[1:]:
        dev = dev_of(c)
        host = sum(c["measured"][rank]["host"].values()) if split else 0
        change = 1 - dev / base_dev if base_dev else 0.0
        rel = f"{change:.0%} less than" if change >= 0 else f"{-change:.0%} more than"
        slower = c["step_time_s"] / base["step_time_s"] if base["step_time_s"] else float("nan")
        s = (f"{c['label']}: {memory.format_bytes(dev)} of model states {where}, {rel} {base['label']} "
             f"({memory.format_bytes(base_dev)})")
        if host:
            s += f", plus {memory.format_bytes(host)} moved to host memory"
        s += f"; step time {c['step_time_s'] * 1e3:.0f} ms ({slower:.2f}x {base['label']})."
        out.append(s)
    worst = max(cfgs, key=lambda c: c["rel_error_deepspeed"])
    max_bytes = max(abs(m - c["predicted_deepspeed_total"]) for c in cfgs for m in c["measured_total"])
    out.append(f"labkit's DeepSpeed model matched the counted bytes within {worst['rel_error_deepspeed']:.4%} "
               f"(at most {max_bytes:,} bytes off, worst: {worst['label']}); the paper's formulas were off by up to "
               f"{max(c['rel_error_paper'] for c in cfgs):.0%}.")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# One run, inspected (notebook 05)
# ----------------------------------------------------------------------------------------------------------------------
def variant_token(stage: int, offload: str = "none") -> str:
    """The single stage token for one inspected run: (3, 'optimizer') -> '3+opt'. Validated."""
    memory.check_stage(stage)
    if offload not in ("none", "optimizer", "optimizer+param"):
        raise ConfigError("offload", f"unknown offload {offload!r}", "use none, optimizer or optimizer+param")
    v = Variant(stage, offload != "none", "param" in offload)
    memory.check_offload(v.stage, v.offload_optimizer, v.offload_param)
    return v.name


def check_rank(rank: int, world_size: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError("rank", f"must be between 0 and world_size-1 = {world_size - 1}, got {rank!r}",
                          "pick a rank that exists")
    return rank


def kind_rows(config: dict, rank: int = 0) -> list[dict]:
    """Per kind and location: measured bytes (steady backward), labkit's DeepSpeed model, and the paper's term."""
    m, p = config["measured"][rank], config["predicted_deepspeed"]
    paper = config["predicted_paper"]
    rows = []
    for loc in ("device", "host"):
        for kind in memory.KINDS:
            pk = paper[loc].get(kind) if kind != "buffers" else None
            if not (m[loc][kind] or p[loc][kind] or pk):
                continue
            rows.append({"kind": memory.KIND_LABELS[kind], "location": loc, "measured": m[loc][kind],
                         "deepspeed_model": p[loc][kind], "paper": pk,
                         "difference": m[loc][kind] - p[loc][kind]})
    return rows


def holder_rows(config: dict, rank: int = 0) -> list[dict]:
    """Where the bytes went at the steady backward point: bytes per DeepSpeed attribute holding them."""
    phases = config["timeline"][rank]
    detailed = [p for p in phases if p["phase"] == "backward" and "holders" in p["tensors"]]
    return detailed[-1]["tensors"]["holders"] if detailed else []


def timeline_rows(config: dict, rank: int = 0) -> list[dict]:
    rows = []
    for p in config["timeline"][rank]:
        t = p["tensors"]
        row = {"phase": p["phase"], "step": p["step"],
               "counted": sum(t["device"].values()) + sum(t["host"].values()),
               "host": sum(t["host"].values())}
        row.update({k: t["device"][k] + t["host"][k] for k in memory.KINDS})
        alloc = (p.get("accelerator") or {}).get("allocated")
        base = (config.get("allocated_before") or [None] * (rank + 1))[rank]
        row["allocated"] = alloc - base if alloc is not None and base is not None else alloc
        rows.append(row)
    return rows

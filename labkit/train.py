"""CIFAR-10 through DeepSpeed in nanoGPT's shape: config -> data on the device -> DeepSpeed config -> engine -> loop.

One rank per process: every launcher starts `labkit.ranks.train`, a notebook kernel `run_in_process`. The data set lives
on the device as uint8; batches are cut, cropped and flipped there by one gather into channels_last inputs. DeepSpeed's
throughput timer is off: it synchronises the device twice per step. Rank 0 writes a JSONL metrics file (`run`, `step`,
`epoch` and a final `done` record). Runs inside ranks: nothing here imports notebooks, chapters or jobs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labkit import checkpoint, data, progress
from labkit.devices import DEVICE_CHOICES, pick_device
from labkit.errors import ConfigError, check_bool, check_choice, check_int, check_number
from labkit.launch import COLLECTIVE_TIMEOUT_S, RANK_ENV, RANK_ERROR_TAG, Deadline
from labkit.model import MODELS, build_model
from labkit.procs import StepWatchdog
from labkit.ranks.runtime import init_deepspeed, shutdown_distributed

MICRO_KEY, ACCUM_KEY, TOTAL_KEY = "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"
CHOICES = {
    "model": MODELS,
    "dtype": ("auto", "fp32", "bf16", "fp16"),
    "amp": ("autocast", "engine"),
    "optimizer": ("adamw", "sgd"),
    "schedule": ("cosine", "constant"),
    "device": DEVICE_CHOICES,
    "stage": (0, 1, 2, 3),
}


def opt(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run needs; every field is a command-line flag (`micro_batch` -> `--micro-batch`)."""

    data_dir: str = opt("", "folder with cifar-10-batches-py (or its parent)")
    synthetic: bool = opt(False, "train on generated data in the CIFAR-10 format (outputs say 'synthetic')")
    synthetic_train: int = opt(5000, "synthetic training images")
    synthetic_test: int = opt(1000, "synthetic test images")
    max_train: int = opt(0, "use only the first N training images (0 = all)")
    max_test: int = opt(0, "use only the first N test images (0 = all)")
    model: str = opt("resnet", "resnet (small residual CNN) | lenet (DeepSpeedExamples' 62k-parameter net)")
    width: float = opt(1.0, "channel-width multiplier of the resnet (1.0 = airbench94 widths 64/256/256)")
    epochs: int = opt(2, "passes over the training images")
    micro_batch: int = opt(0, "images per rank per forward pass (0 = 1024 on an accelerator, 64 on CPU)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    global_batch: int = opt(0, "if set: images per optimizer step over all ranks (sets micro_batch)")
    stage: int = opt(0, "ZeRO stage 0-3")
    dtype: str = opt("auto", "auto (bf16 on an accelerator, fp32 on CPU) | fp32 | bf16 | fp16")
    amp: str = opt("autocast", "autocast: fp32 weights, torch.autocast | engine: DeepSpeed bf16/fp16 weights")
    optimizer: str = opt("adamw", "adamw | sgd")
    lr: float = opt(0.0, "0 = 2e-3 for adamw, 0.1 x global_batch/256 for sgd")
    weight_decay: float = opt(0.05, "weight decay")
    momentum: float = opt(0.9, "sgd only (nesterov)")
    schedule: str = opt("cosine", "cosine (linear warm-up, cosine decay) | constant")
    warmup: float = opt(0.1, "fraction of all steps spent warming up (cosine schedule)")
    label_smoothing: float = opt(0.0, "label smoothing of the loss")
    grad_clip: float = opt(0.0, "0 = off (clipping reads the gradient norm: a device sync every step)")
    seed: int = opt(0, "random seed")
    device: str = opt("auto", "auto | cpu | cuda | hpu")
    channels_last: bool = opt(True, "inputs in channels_last memory format")
    compile: bool = opt(
        False,
        "compile the model through DeepSpeed's engine.compile() (torch.compile): the first step "
        "pays the compilation, later ones run faster on a GPU (on a CPU it rarely pays)",
    )
    checkpoint_dir: str = opt("", "'' = no checkpoints; in a cluster: a folder on the shared PVC")
    checkpoint_every: int = opt(0, "steps between checkpoints (0 = at the end of every epoch)")
    keep_checkpoints: int = opt(2, "complete checkpoints kept (older ones are deleted)")
    resume: bool = opt(False, "continue from the latest complete checkpoint in checkpoint_dir")
    metrics: str = opt("", "JSONL metrics file ('' = checkpoint_dir/metrics.jsonl, or none)")
    write_config: str = opt("", "also write the DeepSpeed config JSON here")
    deepspeed_config: str = opt("", "use this DeepSpeed config file instead of building one from the flags")
    log_every: int = opt(0, "steps between loss readings (0 = about 10 per epoch)")
    max_steps: int = opt(0, "stop after this many optimizer steps (0 = epochs x steps per epoch)")
    step_timeout: float = opt(300.0, "watchdog: a rank exits when no step finishes for this long (a peer died)")
    comm_timeout: float = opt(COLLECTIVE_TIMEOUT_S, "torch.distributed timeout for collectives (seconds)")
    progress: bool = opt(True, "tqdm bar on rank 0")
    verbose: bool = opt(False, "DeepSpeed's own INFO logging")

    @property
    def data_kind(self) -> str:
        return "synthetic" if self.synthetic else "CIFAR-10"

    def resolved(self, world_size: int = 1) -> TrainConfig:
        """A validated copy with the automatic values filled in (device, dtype, micro_batch, lr). Raises ConfigError."""
        cfg = dataclasses.replace(self)
        for name, allowed in CHOICES.items():
            check_choice(name, getattr(cfg, name), allowed)
        for name in (f.name for f in dataclasses.fields(cfg) if f.type == "bool"):  # "false" from papermill is true
            check_bool(name, getattr(cfg, name))
        for name in ("epochs", "grad_accum", "synthetic_train", "synthetic_test", "keep_checkpoints"):
            check_int(name, getattr(cfg, name))
        for name in ("micro_batch", "global_batch", "max_train", "max_test", "checkpoint_every", "log_every"):
            check_int(name, getattr(cfg, name), minimum=0)
        check_int("max_steps", cfg.max_steps, minimum=0)
        check_int("seed", cfg.seed, minimum=0, fix="pass 0 or a positive seed")
        check_int("world_size", world_size, fix="pass 1 or more ranks")
        for name in ("lr", "grad_clip", "warmup", "label_smoothing", "momentum", "step_timeout", "weight_decay"):
            check_number(name, getattr(cfg, name))
        check_number("comm_timeout", cfg.comm_timeout, strict=True)
        if check_number("width", cfg.width, strict=True) > 8:
            raise ConfigError("width", f"must be in (0, 8], got {cfg.width}", "pass e.g. 0.5 (faster on CPU) or 1.0")
        for name in ("warmup", "label_smoothing", "momentum"):
            if getattr(cfg, name) >= 1:
                raise ConfigError(name, f"must be < 1, got {getattr(cfg, name)}", f"pass 0 <= {name} < 1")
        if cfg.resume and not cfg.checkpoint_dir:
            fix = "pass checkpoint_dir=DIR (--checkpoint-dir DIR), the folder holding the run's checkpoints"
            raise ConfigError("resume", "needs a checkpoint_dir to resume from", fix)
        old = checkpoint.tags(cfg.checkpoint_dir) if cfg.checkpoint_dir and not cfg.resume else []
        if old:  # a fresh run would mix its checkpoints with the old ones (and pruning keeps the highest steps)
            problem = f"{cfg.checkpoint_dir} already holds checkpoints of another run (newest: {old[0][1].name})"
            fix = "pass resume=True (--resume) to continue that run, or choose an empty folder"
            raise ConfigError("checkpoint_dir", problem, fix)
        if cfg.checkpoint_dir:  # the key that signs (and on resume: checks) the run's checkpoints, before any training
            checkpoint.check_writable(cfg.checkpoint_dir)
            checkpoint.run_key(cfg.checkpoint_dir, create=not cfg.resume)
        if cfg.deepspeed_config:  # DeepSpeed steps by the file's batch: the run counts its steps by the same one
            micro, accum = file_batch(cfg.deepspeed_config, world_size)
            if cfg.micro_batch not in (0, micro) or cfg.grad_accum not in (1, accum) or cfg.global_batch not in (
                0, micro * accum * world_size
            ):  # fmt: skip
                flags = f"micro_batch {cfg.micro_batch}, grad_accum {cfg.grad_accum}, global_batch {cfg.global_batch}"
                problem = f"the flags' batch ({flags}) differs from the file's ({micro} x {accum} x {world_size} ranks)"
                raise ConfigError("deepspeed_config", problem, "leave the batch flags out (the file sets the batch)")
            cfg.micro_batch, cfg.grad_accum, cfg.global_batch = micro, accum, 0
        per_step = world_size * cfg.grad_accum
        if cfg.global_batch % per_step:
            ranks_x_accum = f"{world_size} x {cfg.grad_accum}"
            problem = f"{cfg.global_batch} images are not divisible by world_size x grad_accum = {ranks_x_accum}"
            fix = f"use a multiple of {per_step}, e.g. {max(1, cfg.global_batch // per_step) * per_step}"
            raise ConfigError("global_batch", problem, fix)
        if cfg.global_batch and cfg.micro_batch and cfg.micro_batch * per_step != cfg.global_batch:
            problem = f"{cfg.micro_batch} x {per_step} ranks/accumulation != global_batch {cfg.global_batch}"
            raise ConfigError("micro_batch", problem, "pass only one of micro_batch and global_batch")
        if not cfg.synthetic:
            data.find_folder(cfg.data_dir)  # fails now, before any rank starts work, when the data is missing
        cfg.device = pick_device(cfg.device)
        accelerated = cfg.device != "cpu"
        cfg.dtype = ("bf16" if accelerated else "fp32") if cfg.dtype == "auto" else cfg.dtype
        if cfg.dtype == "fp16" and not accelerated:
            fix = "use dtype='bf16', 'fp32' or 'auto' on CPU"
            raise ConfigError("dtype", "fp16 training needs a GPU or Gaudi", fix)
        cfg.micro_batch = cfg.global_batch // per_step or cfg.micro_batch or (1024 if accelerated else 64)
        cfg.global_batch = cfg.micro_batch * per_step
        cfg.lr = cfg.lr or (2e-3 if cfg.optimizer == "adamw" else 0.1 * cfg.global_batch / 256)
        if cfg.resume:  # another model, stage or batch would fail deep in DeepSpeed's load, or resume mid-epoch wrongly
            checkpoint.check_resumable(cfg.checkpoint_dir, cfg.run_shape(world_size))
        return cfg

    def run_shape(self, world_size: int) -> dict:
        """What a resumed run must share with the run that wrote its checkpoint (world size: at ZeRO > 0 only)."""
        return {"model": self.model, "width": self.width, "stage": self.stage, "global_batch": self.global_batch,
                "world_size": world_size}  # fmt: skip


def file_batch(path: str, world_size: int) -> tuple[int, int]:
    """(micro batch, accumulation steps) a DeepSpeed config file sets, derived as DeepSpeed derives them from any two
    of its three batch keys (or one). ConfigError when the file is unreadable, sets none, or they disagree."""
    try:
        ds = json.loads(Path(path).read_text())
        micro, accum, total = (ds.get(k) for k in (MICRO_KEY, ACCUM_KEY, TOTAL_KEY))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError("deepspeed_config", f"cannot read {path} ({exc})", "pass a DeepSpeed JSON file") from None
    given = [v for v in (micro, accum, total) if v is not None]
    if not all(isinstance(v, int) and v > 0 for v in given) or (micro is None and total is None):
        problem = f"{path} needs {TOTAL_KEY} or {MICRO_KEY} as positive whole numbers"
        raise ConfigError("deepspeed_config", problem, f"set {MICRO_KEY} (and {ACCUM_KEY}) in the file")
    if micro is None:
        micro = total // ((accum or 1) * world_size)
    accum = accum or (total // (micro * world_size) if total else 1)
    if total is not None and (not micro or micro * accum * world_size != total):
        problem = f"{TOTAL_KEY} {total} != {MICRO_KEY} {micro} x {ACCUM_KEY} {accum} x {world_size} ranks"
        raise ConfigError("deepspeed_config", problem, f"make {TOTAL_KEY} their product in {path}")
    return micro, accum


def plan_steps(cfg: TrainConfig, train_images: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of a resolved config: the last incomplete global batch of an epoch is dropped
    (every rank sees full batches), and max_steps caps the total."""
    per_epoch = train_images // cfg.global_batch
    if per_epoch < 1:
        problem = f"one global batch of {cfg.global_batch} images is larger than the {train_images} training images"
        fix = f"use a global_batch (micro_batch x ranks x grad_accum) of at most {train_images}, or more images"
        raise ConfigError("global_batch", problem, fix)
    return per_epoch, min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)


def deepspeed_config(cfg: TrainConfig, total_steps: int) -> dict:
    """The DeepSpeed config of a resolved `cfg` (its deepspeed_config file's, if it names one), usable as-is with
    `--deepspeed_config`."""
    if cfg.deepspeed_config:
        return json.loads(Path(cfg.deepspeed_config).read_text())
    if cfg.optimizer == "adamw":  # torch_adam: torch's AdamW instead of FusedAdam, which JIT-compiles a CUDA op
        params = {"betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True, "adam_w_mode": True}
        optimizer = {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **params}}
    else:
        params = {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0, "weight_decay": cfg.weight_decay}
        optimizer = {"type": "SGD", "params": {"lr": cfg.lr, **params}}
    config: dict = {
        TOTAL_KEY: cfg.global_batch,
        MICRO_KEY: cfg.micro_batch,
        ACCUM_KEY: cfg.grad_accum,
        "optimizer": optimizer,
        "zero_optimization": {"stage": cfg.stage},
        "gradient_clipping": cfg.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # On by default, this timer synchronises the device at the start and end of every step; labkit times epochs.
        "timers": {"throughput": {"enabled": False}},
    }
    if cfg.schedule == "cosine":
        warmup = max(1, round(cfg.warmup * total_steps))
        ratios = {"warmup_type": "linear", "warmup_min_ratio": 0.01, "cos_min_ratio": 0.01}
        schedule = {"total_num_steps": max(total_steps, warmup + 1), "warmup_num_steps": warmup, **ratios}
        config["scheduler"] = {"type": "WarmupCosineLR", "params": schedule}
    if cfg.dtype != "fp32" and cfg.amp == "autocast":
        config["torch_autocast"] = {"enabled": True, "dtype": {"bf16": "bfloat16", "fp16": "float16"}[cfg.dtype]}
    elif cfg.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    elif cfg.dtype == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if cfg.stage > 0 and cfg.optimizer == "sgd":
        config["zero_allow_untested_optimizer"] = True  # ZeRO partitions any torch optimizer; SGD is just not listed
    return config


def input_dtype(ds_config: dict):
    """The dtype the data pipeline produces: what the model's first layer computes in."""
    import torch

    autocast = ds_config.get("torch_autocast", {})
    name = autocast.get("dtype", "float16") if autocast.get("enabled") else "float32"
    for section, low in (("bf16", "bfloat16"), ("fp16", "float16")):
        name = low if ds_config.get(section, {}).get("enabled") else name
    return getattr(torch, name)


class Metrics:
    """Rank 0's JSONL metrics file (and the records in memory for an in-process caller)."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.records = Path(path) if path and enabled else None, []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop what the interrupted run logged after the checkpoint, so every step is logged once."""
        if self.path and self.path.is_file():
            keep = [r for r in read_metrics(self.path) if r.get("kind") != "done" and r.get("step", 0) <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> dict:
        record = {**record, "time": round(time.time(), 3)}
        self.records.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics JSONL file (what the notebook plots)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _sync(device: str) -> None:
    import torch

    if device == "hpu":
        import habana_frameworks.torch.core as htcore

        htcore.mark_step()
    if device in ("cuda", "hpu"):
        getattr(torch, device).synchronize()


def build_engine(cfg: TrainConfig, total: int, rank: int):
    """(engine, DeepSpeed config, parameter count) for a resolved config."""
    import deepspeed

    ds_config = deepspeed_config(cfg, total)
    if cfg.write_config and rank == 0:
        Path(cfg.write_config).write_text(json.dumps(ds_config, indent=2) + "\n")
    model = build_model(cfg.model, cfg.width)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    if cfg.compile:
        # DeepSpeed's own torch.compile of the wrapped module, compiled at the first forward. Static shapes: the test
        # batches' other size would otherwise make the training graph recompile as dynamic in the next epoch.
        engine.compile(compile_kwargs={"dynamic": False})
    return engine, ds_config, sum(p.numel() for p in model.parameters())


def train(cfg: TrainConfig, arrays: data.CifarArrays | None = None, deadline: Deadline | None = None) -> dict:
    """Train on this rank (torch.distributed must be initialised: see `run_in_process` and labkit.ranks.train).
    `arrays` replaces the data the config names (benchmarks pass one set to every variant); `deadline` is checked
    after every step (DeadlineError).
    Returns rank 0's summary: final step, per-epoch metrics, throughput."""
    import deepspeed.comm as dist
    import torch
    import torch.nn.functional as F

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = cfg.resolved(world)
    torch.manual_seed(cfg.seed)
    if cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.backends.cudnn.benchmark = True
    if arrays is None:
        sizes = dict(synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test, seed=cfg.seed)
        if cfg.synthetic and cfg.data_dir:  # rank 0 writes the files, the others wait for them
            if rank == 0:
                data.training_set(cfg.data_dir, True, **sizes)
            dist.barrier()
        arrays = data.training_set(cfg.data_dir, cfg.synthetic, **sizes)
    arrays = arrays.limit(cfg.max_train, cfg.max_test)
    per_epoch, total = plan_steps(cfg, len(arrays.train_labels))
    engine, ds_config, n_params = build_engine(cfg, total, rank)
    feed = data.DeviceData(arrays, engine.device, input_dtype(ds_config), rank, world, cfg.seed, cfg.channels_last)
    default_metrics = str(Path(cfg.checkpoint_dir) / "metrics.jsonl") if cfg.checkpoint_dir else ""
    metrics = Metrics(cfg.metrics or default_metrics, rank == 0)
    say = progress.say if rank == 0 else (lambda msg: None)
    shape = cfg.run_shape(world)
    resumed_from = checkpoint.resume(engine, cfg.checkpoint_dir, shape, say) if cfg.resume else None
    if cfg.resume:  # every step logged once: what the interrupted run logged past its checkpoint goes
        metrics.truncate_after(-1 if resumed_from is None else resumed_from)
    if resumed_from is not None:
        say(f"resumed from checkpoint {checkpoint.tag_of(resumed_from)} (step {resumed_from} of {total})")
    start_step, kind = resumed_from or 0, cfg.data_kind
    shared = {"data": kind, "synthetic": cfg.synthetic, "model": cfg.model, "parameters": n_params}
    shared |= {k: getattr(cfg, k) for k in ("device", "dtype", "stage", "global_batch", "compile")}
    shared |= {"world_size": world, "total_steps": total, "resumed_from": resumed_from}
    run_only = {"data_source": arrays.source, "train_images": feed.train_size, "micro_batch": cfg.micro_batch}
    run_only |= {"steps_per_epoch": per_epoch, "deepspeed_config": ds_config}
    metrics.write({"kind": "run", "step": start_step, **shared, **run_only})
    log_every = cfg.log_every or max(1, per_epoch // 10)
    # two lines: a notebook's output breaks a longer one mid-word
    say(f"training on {kind} data: {feed.train_size} images, {cfg.model} ({n_params:,} parameters)")
    setup = f"{world} rank(s) on {cfg.device}, {cfg.dtype}, ZeRO-{cfg.stage}, global batch {cfg.global_batch}"
    say(f"  {setup}, {total} steps")

    def save(step: int, epoch: int) -> None:
        with watchdog.paused():  # a save to a slow volume is no dead peer either
            checkpoint.save(engine, cfg.checkpoint_dir, step, {"epoch": epoch, **shape}, cfg.keep_checkpoints, say)

    desc, disable = f"{kind} {cfg.model} ZeRO-{cfg.stage}", bool(rank or not cfg.progress)
    bar = progress.bar(total, desc=desc, unit="step", disable=disable, initial=start_step)
    pending: list[tuple[int, int, object, float]] = []  # (step, epoch, loss tensor, lr): read once, not every step

    def flush() -> None:
        for at, epoch, value, lr in pending:
            loss = round(value.item(), 5)
            metrics.write({"kind": "step", "step": at, "epoch": epoch, "loss": loss, "lr": lr, "data": kind})
        if pending:
            bar.set_postfix(loss=f"{pending[-1][2].item():.3f}", refresh=False)
        pending.clear()

    first_step_s = None
    step, epochs_done, zero = start_step, [], lambda dtype=None: torch.zeros((), device=engine.device, dtype=dtype)
    with StepWatchdog(cfg.step_timeout, rank, tag=RANK_ERROR_TAG) as watchdog:
        for epoch in range(start_step // per_epoch, cfg.epochs):
            if step >= total:
                break
            first, stop = step - epoch * per_epoch, min(per_epoch, total - epoch * per_epoch)
            engine.train()
            loss_sum, correct, window, in_window = zero(), zero(torch.long), zero(), 0

            _sync(cfg.device)
            t0 = time.perf_counter()
            for i, (x, y) in enumerate(feed.epoch(epoch, cfg.micro_batch, stop, cfg.grad_accum, first)):
                logits = engine(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                engine.backward(loss)
                engine.step()
                # accumulate on the device: reading a value (.item) would synchronise the device every step
                loss_sum += loss.detach() * len(y)
                window += loss.detach()
                in_window += 1
                correct += (logits.argmax(1) == y).sum()
                if (i + 1) % cfg.grad_accum:
                    continue
                step += 1
                watchdog.beat()
                if deadline:
                    deadline.check(f"at step {step} of {total} (one rank, in this process)")
                if first_step_s is None:  # one sync, once: compilation and autotuning show up here, not in the rate
                    _sync(cfg.device)
                    first_step_s = time.perf_counter() - t0
                bar.update(1)
                epoch_end = step == epoch * per_epoch + stop
                if step % log_every == 0 or epoch_end:
                    # the mean over the micro-steps really in the window (an epoch's last window may be short)
                    pending.append((step, epoch + 1, window / in_window, engine.get_lr()[0]))
                    window, in_window = zero(), 0
                    if cfg.device == "cpu":
                        flush()  # no device to keep busy: show the loss at once
                # mid-epoch checkpoints here; one at an epoch's end waits until its epoch record is written
                if cfg.checkpoint_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not epoch_end:
                    flush()
                    save(step, epoch)
            flush()
            _sync(cfg.device)
            seconds, steps_run = time.perf_counter() - t0, stop - first
            stats = torch.stack([loss_sum, correct.double()]).double()
            with watchdog.paused():  # no step: the collective timeout bounds it (a long test set is no dead peer)
                dist.all_reduce(stats)
                test_loss, test_acc = evaluate(engine, feed, max(cfg.micro_batch, 500))
            images = max(1, steps_run * cfg.global_batch)
            train_loss, train_acc = (round(v / images, 5) for v in stats.tolist())
            record = {"kind": "epoch", "epoch": epoch + 1, "step": step, "data": kind, "train_loss": train_loss}
            record |= {"train_acc": train_acc, "test_loss": round(test_loss, 5), "test_acc": round(test_acc, 5)}
            record |= {"images_per_s": round(images / seconds, 1), "epoch_s": round(seconds, 3), "steps": steps_run}
            epochs_done.append(metrics.write({**record, "resumed": first > 0}))
            rate = f"test acc {test_acc:.3f}, {record['images_per_s']:,.0f} images/s"
            say(f"epoch {epoch + 1}/{cfg.epochs} [{kind}]: train loss {train_loss:.4f} acc {train_acc:.3f}, {rate}")
            if cfg.checkpoint_dir and step < total and (not cfg.checkpoint_every or step % cfg.checkpoint_every == 0):
                save(step, epoch)
        if cfg.checkpoint_dir and step != start_step:  # (a resume that found nothing left to do saves nothing)
            save(step, max(0, math.ceil(step / per_epoch) - 1))
    bar.close()
    last = epochs_done[-1] if epochs_done else {}
    # the first epoch carries warm-up (cuDNN autotuning, allocator growth): report the best later one too
    rates = [e["images_per_s"] for e in epochs_done if e["steps"] > 0]
    finals = {"final_test_acc": last.get("test_acc"), "final_train_loss": last.get("train_loss")}
    finals["images_per_s_first_epoch"] = rates[0] if rates else None
    finals["images_per_s_best"] = max(rates[1:] or rates, default=None)
    finals |= {"compiled": bool(getattr(engine, "is_compiled", False)), "first_step_s": first_step_s}
    summary = metrics.write({"kind": "done", "step": step, "epochs": cfg.epochs, **shared, **finals})
    say(f"done [{kind}]: step {step}/{total}, test accuracy {summary['final_test_acc']}")
    return {**summary, "epochs_log": epochs_done, "records": metrics.records, "deepspeed_config": ds_config}


def evaluate(engine, feed: data.DeviceData, batch: int) -> tuple[float, float]:
    """(loss, accuracy) on the test set, each rank scoring its share."""
    import deepspeed.comm as dist
    import torch
    import torch.nn.functional as F

    engine.eval()
    totals = torch.zeros(3, device=engine.device, dtype=torch.float64)
    with torch.no_grad():
        for x, y in feed.test_batches(batch):
            logits = engine(x).float()
            loss = F.cross_entropy(logits, y, reduction="sum").double()
            totals += torch.stack([loss, (logits.argmax(1) == y).sum().double(), totals.new_tensor(len(y))])
    dist.all_reduce(totals)
    engine.train()
    loss, right, n = totals.tolist()
    return loss / max(1.0, n), right / max(1.0, n)


# ---------------------------------------------------------------------------------------------- process set-up


def init_distributed(cfg: TrainConfig) -> None:
    """torch.distributed for this rank: from the launcher's env (RANK...), Open MPI's (mpirun), or a world of one."""
    init_deepspeed(pick_device(cfg.device), timeout_s=cfg.comm_timeout, verbose=cfg.verbose)


def run_in_process(cfg: TrainConfig, arrays: data.CifarArrays | None = None, timeout: float | None = None) -> dict:
    """One rank in this process (a notebook kernel): initialise, train (DeadlineError after `timeout` s, counted from
    here), and tear the process group down again."""
    deadline = Deadline(timeout)
    import torch.distributed

    if torch.distributed.is_initialized():
        problem, fix = "torch.distributed is already initialised in this process", "restart the kernel"
        raise ConfigError("world_size", problem, f"{fix}, or run through the launcher (world_size > 1)")
    saved = {k: os.environ.pop(k, None) for k in RANK_ENV}
    try:
        init_distributed(cfg)
        return train(cfg, arrays, deadline)
    finally:
        shutdown_distributed()
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for k in (k for k, v in saved.items() if v is None):
            os.environ.pop(k, None)


if __name__ == "__main__":  # `python -m labkit.train ...`: the rank's command line, labkit.ranks.train
    from labkit.ranks.train import main

    sys.exit(main())

"""CIFAR-10 through DeepSpeed, in one file: config -> models -> device-resident data -> DeepSpeed config ->
checkpoints -> training loop -> command line.

One rank per process, however it was started:
    python -m labkit.train --synthetic --epochs 2                     # one rank in this process
    deepspeed --num_gpus 2 labkit/train.py --data-dir /data            # local ranks
    deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi labkit/train.py --data-dir /data   # an MPIJob launcher
    mpirun -n 2 python labkit/train.py --data-dir /data                # ranks read from Open MPI's environment
    ... --write-config ds.json   then   deepspeed labkit/train.py --deepspeed_config ds.json      # reuse the config

Fast path: the whole data set lives on the training device as uint8; each batch is cut, randomly cropped and flipped
there by one gather (no per-image Python), converted to channels_last inputs, and fed to the DeepSpeed engine. The
engine's throughput timer is switched off: by default it synchronises the device twice per step, which idles a GPU
between the small steps of a small network. The same code runs on CPU ranks (gloo).

Rank 0 writes a JSONL metrics file (one `run` record, `step` records with the loss, one `epoch` record per epoch with
train loss/accuracy, test accuracy and images/s, a final `done` record) and shows a tqdm bar. Checkpoints go to
`--checkpoint-dir` every `--checkpoint-every` steps; a checkpoint counts only once its COMPLETE.json manifest (sizes and
sha256 of every file) is written, so `--resume` skips a partial or corrupt latest one and takes the one before.

This file imports nothing from labkit.notebooks or labkit.jobs: it runs inside ranks.
"""

from __future__ import annotations

if __package__ in (None, ""):  # started as a file path by a launcher: make `labkit` importable, and keep labkit/
    import sys as _sys           # itself off sys.path so its module names cannot shadow others
    from pathlib import Path as _Path

    _here = _Path(__file__).resolve().parent
    _sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _here]
    _sys.path.insert(0, str(_here.parent))

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from labkit import data, procs
from labkit.errors import ConfigError

MODELS = ("resnet", "lenet")
DTYPES = ("auto", "fp32", "bf16", "fp16")
AMP_MODES = ("autocast", "engine")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "hpu")
COMPLETE_MARKER = "COMPLETE.json"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything a run needs; every field is a command-line flag (`micro_batch` -> `--micro-batch`)."""

    data_dir: str = ""              # folder with cifar-10-batches-py (or its parent)
    synthetic: bool = False         # train on generated data in the CIFAR-10 format (outputs say "synthetic")
    synthetic_train: int = 5000     # synthetic training images
    synthetic_test: int = 1000      # synthetic test images
    max_train: int = 0              # use only the first N training images (0 = all)
    max_test: int = 0               # use only the first N test images (0 = all)
    model: str = "resnet"           # resnet (small residual CNN) | lenet (DeepSpeedExamples' 62k-parameter net)
    width: float = 1.0              # channel-width multiplier of the resnet (1.0 = airbench94 widths 64/256/256)
    epochs: int = 2                 # passes over the training images
    micro_batch: int = 0            # images per rank per forward pass (0 = 1024 on an accelerator, 64 on CPU)
    grad_accum: int = 1             # micro-batches per optimizer step
    global_batch: int = 0           # if set: images per optimizer step over all ranks (sets micro_batch)
    stage: int = 0                  # ZeRO stage 0-3
    dtype: str = "auto"             # auto (bf16 on an accelerator, fp32 on CPU) | fp32 | bf16 | fp16
    amp: str = "autocast"           # autocast: fp32 weights, torch.autocast (DeepSpeed "torch_autocast");
                                    # engine: DeepSpeed "bf16"/"fp16" (low-precision weights, fp32 master copy)
    optimizer: str = "adamw"
    lr: float = 0.0                 # 0 = 2e-3 for adamw, 0.1 x global_batch/256 for sgd
    weight_decay: float = 0.05
    momentum: float = 0.9           # sgd only (nesterov)
    schedule: str = "cosine"        # cosine (linear warm-up, cosine decay) | constant
    warmup: float = 0.1             # fraction of all steps spent warming up (cosine schedule)
    label_smoothing: float = 0.0
    grad_clip: float = 0.0          # 0 = off (clipping reads the gradient norm: a device sync every step)
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | hpu
    channels_last: bool = True      # inputs in channels_last memory format (the weights stay default: see notes)
    checkpoint_dir: str = ""        # "" = no checkpoints; in a cluster: a folder on the shared PVC
    checkpoint_every: int = 0       # steps between checkpoints (0 = at the end of every epoch)
    keep_checkpoints: int = 2       # complete checkpoints kept (older ones are deleted)
    resume: bool = False            # continue from the latest complete checkpoint in checkpoint_dir
    metrics: str = ""               # JSONL metrics file ("" = checkpoint_dir/metrics.jsonl, or none)
    write_config: str = ""          # also write the DeepSpeed config JSON here
    deepspeed_config: str = ""      # use this DeepSpeed config file instead of building one from the flags
    log_every: int = 0              # steps between loss readings (0 = about 10 per epoch)
    max_steps: int = 0              # stop after this many optimizer steps (0 = epochs x steps per epoch)
    step_timeout: float = 300.0     # watchdog: a rank exits when no step finishes for this long (a peer died)
    comm_timeout: float = 120.0     # torch.distributed timeout for collectives (seconds)
    progress: bool = True           # tqdm bar on rank 0
    verbose: bool = False           # DeepSpeed's own INFO logging

    @property
    def data_kind(self) -> str:
        return "synthetic" if self.synthetic else "CIFAR-10"


def resolve_device(device: str) -> str:
    """'auto' -> cuda if a GPU is visible, hpu if Habana's PyTorch bridge is installed, else cpu."""
    if device != "auto":
        return device
    import importlib.util

    import torch

    if torch.cuda.is_available():
        return "cuda"
    if importlib.util.find_spec("habana_frameworks") is not None:
        return "hpu"
    return "cpu"


def resolve(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Validate `cfg` and fill its automatic values (device, dtype, micro_batch, lr). Raises ConfigError."""
    cfg = dataclasses.replace(cfg)

    def choice(name: str, allowed: tuple) -> None:
        value = getattr(cfg, name)
        if value not in allowed:
            raise ConfigError(name, f"unknown value {value!r}", f"use one of {', '.join(map(str, allowed))}")

    for name, allowed in (("model", MODELS), ("dtype", DTYPES), ("amp", AMP_MODES), ("optimizer", OPTIMIZERS),
                          ("schedule", SCHEDULES), ("device", DEVICES), ("stage", (0, 1, 2, 3))):
        choice(name, allowed)
    for name in ("epochs", "grad_accum", "synthetic_train", "synthetic_test", "keep_checkpoints"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ConfigError(name, f"must be a whole number >= 1, got {getattr(cfg, name)!r}", f"pass {name} >= 1")
    for name in ("micro_batch", "global_batch", "max_train", "max_test", "checkpoint_every", "log_every", "max_steps"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
            raise ConfigError(name, f"must be a whole number >= 0, got {getattr(cfg, name)!r}", f"pass {name} >= 0")
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError("world_size", f"must be a whole number >= 1, got {world_size!r}", "pass 1 or more ranks")
    if not 0 < cfg.width <= 8:
        raise ConfigError("width", f"must be in (0, 8], got {cfg.width}", "pass e.g. 0.5 (faster on CPU) or 1.0")
    if cfg.lr < 0 or not 0 <= cfg.warmup < 1 or cfg.grad_clip < 0 or not 0 <= cfg.label_smoothing < 1:
        raise ConfigError("lr/warmup/grad_clip/label_smoothing", "out of range",
                          "lr >= 0, 0 <= warmup < 1, grad_clip >= 0, 0 <= label_smoothing < 1")
    if cfg.resume and not cfg.checkpoint_dir:
        raise ConfigError("resume", "needs a checkpoint_dir to resume from", "pass --checkpoint-dir DIR")
    if cfg.checkpoint_dir and not cfg.resume and checkpoint_tags(cfg.checkpoint_dir):
        # a fresh run would mix its checkpoints with the old ones (and pruning keeps the highest steps)
        newest = checkpoint_tags(cfg.checkpoint_dir)[0][1].name
        raise ConfigError("checkpoint_dir", f"{cfg.checkpoint_dir} already holds checkpoints of another run "
                                            f"(newest: {newest})",
                          "pass resume=True (--resume) to continue that run, or choose an empty folder")
    if cfg.deepspeed_config and not Path(cfg.deepspeed_config).is_file():
        raise ConfigError("deepspeed_config", f"{cfg.deepspeed_config} does not exist", "pass an existing JSON file")
    if not cfg.synthetic:
        data.find_folder(cfg.data_dir)  # fails now, before any rank starts work, when the data is missing

    cfg.device = resolve_device(cfg.device)
    accelerated = cfg.device != "cpu"
    if cfg.dtype == "auto":
        cfg.dtype = "bf16" if accelerated else "fp32"
    if cfg.dtype == "fp16" and not accelerated:
        raise ConfigError("dtype", "fp16 training needs a GPU or Gaudi (CPU kernels and loss scaling are not there)",
                          "use dtype='bf16' or 'fp32' on CPU, or 'auto'")
    if cfg.global_batch:
        per_step = world_size * cfg.grad_accum
        if cfg.global_batch % per_step:
            raise ConfigError("global_batch", f"{cfg.global_batch} images are not divisible by world_size x grad_accum "
                                              f"= {world_size} x {cfg.grad_accum}",
                              f"use a multiple of {per_step}, e.g. {max(1, cfg.global_batch // per_step) * per_step}")
        if cfg.micro_batch and cfg.micro_batch * per_step != cfg.global_batch:
            raise ConfigError("micro_batch", f"{cfg.micro_batch} x {per_step} ranks/accumulation != global_batch "
                                             f"{cfg.global_batch}", "pass only one of micro_batch and global_batch")
        cfg.micro_batch = cfg.global_batch // per_step
    if not cfg.micro_batch:
        cfg.micro_batch = 1024 if accelerated else 64
    cfg.global_batch = cfg.micro_batch * cfg.grad_accum * world_size
    if not cfg.lr:
        cfg.lr = 2e-3 if cfg.optimizer == "adamw" else 0.1 * cfg.global_batch / 256
    return cfg


def steps_per_epoch(train_images: int, global_batch: int) -> int:
    """Optimizer steps per epoch; the last incomplete global batch is dropped (every rank sees full batches)."""
    return train_images // global_batch


def check_data_fits(cfg: TrainConfig, train_images: int) -> None:
    if steps_per_epoch(train_images, cfg.global_batch) < 1:
        raise ConfigError("micro_batch", f"one global batch of {cfg.global_batch} images is larger than the "
                                         f"{train_images} training images", "use a smaller micro_batch or more data")


# ---------------------------------------------------------------------------------------------------------- models


def build_model(name: str, width: float = 1.0, num_classes: int = 10):
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNet(nn.Module):
        """DeepSpeedExamples' cifar10_deepspeed.py network (62,006 parameters), for comparison."""

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))

    class ConvBlock(nn.Module):
        """airbench94's block (conv, max-pool, BN, GELU, conv, BN, GELU) with a skip around its second conv."""

        def __init__(self, cin: int, cout: int):
            super().__init__()
            # BN momentum 0.4 (airbench's 0.6 in the other convention): running statistics settle within the few
            # hundred steps of a short run, so test accuracy is not held back by stale statistics
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.4)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.4)

        def forward(self, x):
            x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
            return x + F.gelu(self.bn2(self.conv2(x)))

    class CifarResNet(nn.Module):
        """A small residual CNN at airbench94's widths (~2M parameters at width 1): 32 -> 31 -> 15 -> 7 -> 3 px."""

        def __init__(self):
            super().__init__()
            stem, w1, w2, w3 = (max(4, round(c * width)) for c in (24, 64, 256, 256))
            self.stem = nn.Conv2d(3, stem, kernel_size=2)  # 2x2 patches, like airbench's whitening layer
            self.blocks = nn.Sequential(ConvBlock(stem, w1), ConvBlock(w1, w2), ConvBlock(w2, w3))
            self.head = nn.Linear(w3, num_classes, bias=False)

        def forward(self, x):
            x = self.blocks(F.gelu(self.stem(x)))
            return self.head(F.adaptive_max_pool2d(x, 1).flatten(1))

    if name == "lenet":
        return LeNet()
    if name == "resnet":
        return CifarResNet()
    raise ConfigError("model", f"unknown model {name!r}", f"use one of {', '.join(MODELS)}")


# ------------------------------------------------------------------------------------------- device-resident data


class DeviceData:
    """The data set on the training device as uint8. Batches are cut, cropped (4 px, reflect padded) and flipped by
    one gather over the whole batch; the result is a channels_last tensor normalised in the compute dtype.

    Every rank draws the same permutation and augmentation per epoch (seeded by epoch) and takes its own slice of
    each global batch, so a resumed run sees exactly the batches the interrupted one would have.
    """

    def __init__(self, arrays: data.CifarArrays, device, input_dtype, rank: int = 0, world_size: int = 1,
                 seed: int = 0, channels_last: bool = True):
        import torch
        import torch.nn.functional as F

        self.device, self.dtype, self.rank, self.world, self.seed = device, input_dtype, rank, world_size, seed
        self.channels_last = channels_last
        # NHWC uint8 on the device: indexing (image, row, col) yields channels_last batches with no extra copy.
        train = torch.from_numpy(arrays.train_images).to(device)
        padded = [F.pad(chunk.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
                  for chunk in train.split(8192)]
        self.train = torch.cat(padded).permute(0, 2, 3, 1).contiguous()            # N, 40, 40, 3
        self.train_labels = torch.from_numpy(arrays.train_labels).to(device)
        self.test = torch.from_numpy(arrays.test_images).to(device).permute(0, 2, 3, 1).contiguous()  # N, 32, 32, 3
        self.test_labels = torch.from_numpy(arrays.test_labels).to(device)
        mean, std = torch.tensor(CIFAR_MEAN, device=device), torch.tensor(CIFAR_STD, device=device)
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(input_dtype)   # x * scale + shift == (x/255 - mean)/std
        self.shift = (-mean / std).view(1, 3, 1, 1).to(input_dtype)
        self.offsets = torch.arange(32, device=device)

    @property
    def train_size(self) -> int:
        return int(self.train.shape[0])

    def _to_input(self, nhwc):
        x = nhwc.permute(0, 3, 1, 2).to(self.dtype) * self.scale + self.shift  # elementwise ops keep channels_last
        return x if self.channels_last else x.contiguous()

    def epoch(self, epoch: int, micro_batch: int, steps: int, accum: int, start: int = 0):
        """Yield (x, y) micro-batches of optimizer steps `start`..`steps`-1 of `epoch` for this rank."""
        import torch

        g = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + epoch)
        n = self.train_size
        order = torch.randperm(n, generator=g, device=self.device)
        shifts = torch.randint(0, 9, (2, n), generator=g, device=self.device)    # crop offsets in the 40x40 padding
        flips = torch.rand(n, generator=g, device=self.device) < 0.5
        cols_rev = self.offsets.flip(0)
        global_batch = micro_batch * self.world * accum
        for step in range(start, steps):
            for micro in range(accum):
                lo = step * global_batch + (micro * self.world + self.rank) * micro_batch
                idx = order[lo:lo + micro_batch]
                rows = shifts[0, idx, None] + self.offsets                         # B, 32
                cols = shifts[1, idx, None] + torch.where(flips[idx, None], cols_rev, self.offsets)
                yield self._to_input(self.train[idx[:, None, None], rows[:, :, None], cols[:, None, :]]), \
                    self.train_labels[idx]

    def test_batches(self, batch: int):
        """This rank's share of the test set, in order."""
        n = int(self.test.shape[0])
        share = range(self.rank * n // self.world, (self.rank + 1) * n // self.world)
        for lo in range(share.start, share.stop, batch):
            hi = min(lo + batch, share.stop)
            yield self._to_input(self.test[lo:hi]), self.test_labels[lo:hi]


# ------------------------------------------------------------------------------------------------ DeepSpeed config


def deepspeed_config(cfg: TrainConfig, total_steps: int) -> dict:
    """The DeepSpeed config for a resolved `cfg` (see `resolve`), usable as-is with `--deepspeed_config`."""
    if cfg.optimizer == "adamw":
        # torch_adam: torch's AdamW (foreach) instead of FusedAdam, which JIT-compiles a CUDA op on first use.
        optimizer = {"type": "AdamW", "params": {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                 "weight_decay": cfg.weight_decay, "torch_adam": True,
                                                 "adam_w_mode": True}}
    else:
        optimizer = {"type": "SGD", "params": {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": True,
                                               "weight_decay": cfg.weight_decay}}
    config: dict = {
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
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
        config["scheduler"] = {"type": "WarmupCosineLR", "params": {
            "total_num_steps": max(total_steps, warmup + 1), "warmup_num_steps": warmup, "warmup_type": "linear",
            "warmup_min_ratio": 0.01, "cos_min_ratio": 0.01}}
    if cfg.dtype in ("bf16", "fp16"):
        if cfg.amp == "autocast":
            config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if cfg.dtype == "bf16" else "float16"}
        elif cfg.dtype == "bf16":
            config["bf16"] = {"enabled": True}
        else:
            config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if cfg.stage > 0 and cfg.optimizer == "sgd":
        config["zero_allow_untested_optimizer"] = True  # ZeRO partitions any torch optimizer; SGD is just not listed
    return config


def input_dtype(cfg: TrainConfig, ds_config: dict):
    """The dtype the data pipeline produces: what the model's first layer computes in."""
    import torch

    if ds_config.get("bf16", {}).get("enabled") or (ds_config.get("torch_autocast", {}).get("dtype") == "bfloat16"
                                                     and ds_config["torch_autocast"].get("enabled")):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled") or ds_config.get("torch_autocast", {}).get("enabled"):
        return torch.float16
    return torch.float32


# ---------------------------------------------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(tag_dir: Path, meta: dict) -> None:
    """Mark a checkpoint complete: sizes and sha256 of every file, written atomically, last."""
    files = {str(p.relative_to(tag_dir)): [p.stat().st_size, _sha256(p)]
             for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}
    tmp = tag_dir / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({**meta, "files": files}, indent=1))
    os.replace(tmp, tag_dir / COMPLETE_MARKER)


def verify_checkpoint(tag_dir: Path) -> tuple[bool, str]:
    """(ok, reason): a checkpoint is usable when its manifest exists and every file matches it."""
    marker = tag_dir / COMPLETE_MARKER
    if not marker.is_file():
        return False, "no COMPLETE.json (the save did not finish)"
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        return False, f"unreadable manifest ({exc})"
    for rel, (size, digest) in manifest.get("files", {}).items():
        p = tag_dir / rel
        if not p.is_file():
            return False, f"{rel} is missing"
        if p.stat().st_size != size or _sha256(p) != digest:
            return False, f"{rel} does not match its checksum (corrupt or truncated)"
    if not manifest.get("files"):
        return False, "the manifest lists no files"
    return True, "ok"


def checkpoint_tags(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """All step-tagged checkpoint folders, newest first."""
    root = Path(checkpoint_dir)
    tags = [(int(p.name[4:]), p) for p in root.glob("step*") if p.is_dir() and p.name[4:].isdigit()] \
        if root.is_dir() else []
    return sorted(tags, reverse=True)


def latest_complete(checkpoint_dir: str | Path, log=print) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies; reports each newer one it skips and why."""
    for step, path in checkpoint_tags(checkpoint_dir):
        ok, reason = verify_checkpoint(path)
        if ok:
            return step, path
        log(f"checkpoint {path.name} skipped: {reason}")
    return None


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> None:
    complete = [(s, p) for s, p in checkpoint_tags(checkpoint_dir) if (p / COMPLETE_MARKER).is_file()]
    for _, path in complete[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    newest = complete[0][0] if complete else None
    for step, path in checkpoint_tags(checkpoint_dir):  # incomplete leftovers older than the newest complete one
        if newest is not None and step < newest and not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------- metrics and safety


class Metrics:
    """Rank 0's JSONL metrics file (and the records in memory for an in-process caller)."""

    def __init__(self, path: str, enabled: bool):
        self.path = Path(path) if path and enabled else None
        self.records: list[dict] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop what the interrupted run logged after the checkpoint, so every step is logged once."""
        if self.path and self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("kind") != "done" and json.loads(line).get("step", 0) <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        record = {**record, "time": round(time.time(), 3)}
        self.records.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics JSONL file (what the notebook plots)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Watchdog:
    """Exits this rank (os._exit) when no step finishes for `timeout` s. A rank blocked in a collective whose peer
    died cannot exit normally; this bounds the hang even without a launcher watching."""

    def __init__(self, timeout: float, rank: int):
        self.timeout, self.rank = timeout, rank
        self.last = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="labkit-watchdog")

    def __enter__(self):
        if self.timeout > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()

    def beat(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self.stopped.wait(1.0):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                print(f"rank {self.rank}: no training step finished for {idle:.0f} s (step_timeout "
                      f"{self.timeout:.0f} s): a peer rank probably died; exiting", file=sys.stderr, flush=True)
                os._exit(3)


# -------------------------------------------------------------------------------------------------- training loop


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "hpu":
        import habana_frameworks.torch.core as htcore  # noqa: PLC0415
        htcore.mark_step()
        torch.hpu.synchronize()


def load_arrays(cfg: TrainConfig, rank: int) -> data.CifarArrays:
    """The data this run trains on. With synthetic data and a data_dir, rank 0 writes the files, the others wait."""
    import deepspeed.comm as dist

    if cfg.synthetic and cfg.data_dir and rank == 0:
        data.resolve(cfg.data_dir, True, synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test,
                     seed=cfg.seed)
    if cfg.synthetic and cfg.data_dir and dist.is_initialized():
        dist.barrier()
    arrays = data.resolve(cfg.data_dir, cfg.synthetic, synthetic_train=cfg.synthetic_train,
                          synthetic_test=cfg.synthetic_test, seed=cfg.seed)
    return arrays.limit(cfg.max_train, cfg.max_test)


def train(cfg: TrainConfig, arrays: data.CifarArrays | None = None) -> dict:
    """Train on this rank (torch.distributed must be initialised: see `main` / `run_in_process`).
    `arrays` replaces the data the config names (benchmarks pass one set to every variant).
    Returns rank 0's summary: final step, per-epoch metrics, throughput."""
    import deepspeed
    import deepspeed.comm as dist
    import torch
    import torch.nn.functional as F

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = resolve(cfg, world)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))) if cfg.device != "cpu" else \
        torch.device("cpu")
    if cfg.device == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True

    arrays = load_arrays(cfg, rank) if arrays is None else arrays.limit(cfg.max_train, cfg.max_test)
    check_data_fits(cfg, len(arrays.train_labels))
    per_epoch = steps_per_epoch(len(arrays.train_labels), cfg.global_batch)
    total = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)
    if cfg.deepspeed_config:
        ds_config = json.loads(Path(cfg.deepspeed_config).read_text())
        if ds_config.get("train_micro_batch_size_per_gpu", cfg.micro_batch) != cfg.micro_batch:
            raise ConfigError("micro_batch", f"{cfg.micro_batch} differs from train_micro_batch_size_per_gpu in "
                                             f"{cfg.deepspeed_config}", "pass the same --micro-batch or edit the file")
    else:
        ds_config = deepspeed_config(cfg, total)
    if cfg.write_config and rank == 0:
        Path(cfg.write_config).write_text(json.dumps(ds_config, indent=2) + "\n")

    model = build_model(cfg.model, cfg.width)
    n_params = sum(p.numel() for p in model.parameters())
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    feed = DeviceData(arrays, engine.device, input_dtype(cfg, ds_config), rank, world, cfg.seed, cfg.channels_last)

    metrics = Metrics(cfg.metrics or (str(Path(cfg.checkpoint_dir) / "metrics.jsonl") if cfg.checkpoint_dir else ""),
                      rank == 0)
    say = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    start_step, resumed_from = 0, None
    if cfg.resume:
        found = latest_complete(cfg.checkpoint_dir, log=say)
        if found is None:
            say(f"resume: no complete checkpoint in {cfg.checkpoint_dir}; starting from step 0")
        else:
            step, path = found
            manifest = json.loads((path / COMPLETE_MARKER).read_text())
            if manifest.get("world_size") != world and cfg.stage > 0:
                raise ConfigError("world_size", f"checkpoint {path.name} was written by {manifest.get('world_size')} "
                                                f"ranks at ZeRO-{cfg.stage} (optimizer state is partitioned per rank)",
                                  f"resume with {manifest.get('world_size')} ranks, or use a new checkpoint_dir")
            load_path, _ = engine.load_checkpoint(cfg.checkpoint_dir, tag=path.name)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
            start_step = resumed_from = step
            if rank == 0:
                metrics.truncate_after(step)
            say(f"resumed from checkpoint {path.name} (step {step} of {total})")

    kind = cfg.data_kind
    metrics.write({"kind": "run", "step": start_step, "data": kind, "synthetic": cfg.synthetic,
                   "data_source": arrays.source, "train_images": feed.train_size, "model": cfg.model,
                   "parameters": n_params, "world_size": world, "device": cfg.device, "dtype": cfg.dtype,
                   "stage": cfg.stage, "micro_batch": cfg.micro_batch, "global_batch": cfg.global_batch,
                   "steps_per_epoch": per_epoch, "total_steps": total, "resumed_from": resumed_from,
                   "deepspeed_config": ds_config})
    log_every = cfg.log_every or max(1, per_epoch // 10)
    say(f"training on {kind} data: {feed.train_size} images, {cfg.model} ({n_params:,} parameters), {world} rank(s) "
        f"on {cfg.device}, {cfg.dtype}, ZeRO-{cfg.stage}, global batch {cfg.global_batch}, {total} steps")

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start_step, desc=f"{kind} {cfg.model} ZeRO-{cfg.stage}", unit="step",
               disable=rank != 0 or not cfg.progress, mininterval=0.5 if sys.stderr.isatty() else 5.0)
    step, epochs_done, last_epoch = start_step, [], None
    with Watchdog(cfg.step_timeout, rank) as watchdog:
        for epoch in range(start_step // per_epoch, cfg.epochs):
            if step >= total:
                break
            first, stop = step - epoch * per_epoch, min(per_epoch, total - epoch * per_epoch)
            engine.train()
            loss_sum = torch.zeros((), device=engine.device)
            correct = torch.zeros((), device=engine.device, dtype=torch.long)
            window = torch.zeros((), device=engine.device)
            pending: list[tuple[int, object, float]] = []  # (step, loss tensor, lr): read once, not every step

            def flush() -> None:
                for at, value, lr in pending:
                    metrics.write({"kind": "step", "step": at, "epoch": epoch + 1, "loss": round(value.item(), 5),
                                   "lr": lr, "data": kind})
                if pending:
                    bar.set_postfix(loss=f"{pending[-1][1].item():.3f}", refresh=False)
                pending.clear()

            _sync(cfg.device)
            t0 = time.perf_counter()
            for i, (x, y) in enumerate(feed.epoch(epoch, cfg.micro_batch, stop, cfg.grad_accum, first)):
                logits = engine(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                engine.backward(loss)
                engine.step()
                # accumulate on the device: reading a value (.item) would synchronise the device every step
                detached = loss.detach()
                loss_sum += detached * len(y)
                window += detached
                correct += (logits.argmax(1) == y).sum()
                if (i + 1) % cfg.grad_accum:
                    continue
                step += 1
                watchdog.beat()
                bar.update(1)
                if step % log_every == 0 or step == epoch * per_epoch + stop:
                    pending.append((step, window / (log_every * cfg.grad_accum), engine.get_lr()[0]))
                    window = torch.zeros((), device=engine.device)
                    if cfg.device == "cpu":
                        flush()  # no device to keep busy: show the loss at once
                # mid-epoch checkpoints here; one at an epoch's end waits until its epoch record is written
                if (cfg.checkpoint_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                        and step != epoch * per_epoch + stop):
                    flush()
                    save(engine, cfg, step, epoch, world, say)
            flush()
            _sync(cfg.device)
            seconds = time.perf_counter() - t0
            steps_run = stop - first
            stats = torch.stack([loss_sum, correct.double()]).double()
            dist.all_reduce(stats)
            test_loss, test_acc = evaluate(engine, feed, max(cfg.micro_batch, 500))
            watchdog.beat()
            images = steps_run * cfg.global_batch
            last_epoch = {"kind": "epoch", "epoch": epoch + 1, "step": step, "data": kind,
                          "train_loss": round(stats[0].item() / max(1, images), 5),
                          "train_acc": round(stats[1].item() / max(1, images), 5),
                          "test_loss": round(test_loss, 5), "test_acc": round(test_acc, 5),
                          "images_per_s": round(images / seconds, 1), "epoch_s": round(seconds, 3),
                          "steps": steps_run, "resumed": first > 0}
            metrics.write(last_epoch)
            epochs_done.append(last_epoch)
            say(f"epoch {epoch + 1}/{cfg.epochs} [{kind}]: train loss {last_epoch['train_loss']:.4f} "
                f"acc {last_epoch['train_acc']:.3f}, test acc {test_acc:.3f}, {last_epoch['images_per_s']:,.0f} images/s")
            if cfg.checkpoint_dir and step < total and (not cfg.checkpoint_every or step % cfg.checkpoint_every == 0):
                save(engine, cfg, step, epoch, world, say)
        if cfg.checkpoint_dir and step != start_step:  # (a resume that found nothing left to do saves nothing)
            save(engine, cfg, step, max(0, math.ceil(step / per_epoch) - 1), world, say)
    bar.close()
    rates = [e["images_per_s"] for e in epochs_done if e["steps"] > 0]
    summary = {"kind": "done", "step": step, "total_steps": total, "epochs": cfg.epochs, "data": kind,
               "synthetic": cfg.synthetic, "model": cfg.model, "parameters": n_params, "world_size": world,
               "device": cfg.device, "dtype": cfg.dtype, "stage": cfg.stage, "global_batch": cfg.global_batch,
               "resumed_from": resumed_from, "final_test_acc": last_epoch["test_acc"] if last_epoch else None,
               "final_train_loss": last_epoch["train_loss"] if last_epoch else None,
               # the first epoch carries warm-up (cuDNN autotuning, allocator growth): report the best later one too
               "images_per_s_first_epoch": rates[0] if rates else None,
               "images_per_s_best": max(rates[1:] or rates) if rates else None}
    metrics.write(summary)
    say(f"done [{kind}]: step {step}/{total}, test accuracy {summary['final_test_acc']}")
    return {**summary, "epochs_log": epochs_done, "records": metrics.records, "deepspeed_config": ds_config}


def evaluate(engine, feed: DeviceData, batch: int) -> tuple[float, float]:
    """(loss, accuracy) on the test set, each rank scoring its share."""
    import deepspeed.comm as dist
    import torch
    import torch.nn.functional as F

    engine.eval()
    totals = torch.zeros(3, device=engine.device, dtype=torch.float64)
    with torch.no_grad():
        for x, y in feed.test_batches(batch):
            logits = engine(x).float()
            totals += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                   (logits.argmax(1) == y).sum().double(), torch.tensor(len(y), device=y.device,
                                                                                          dtype=torch.float64)])
    dist.all_reduce(totals)
    engine.train()
    loss, right, n = totals.tolist()
    return loss / max(1.0, n), right / max(1.0, n)


def save(engine, cfg: TrainConfig, step: int, epoch: int, world: int, say) -> None:
    """Save on all ranks, then (rank 0, after everyone finished) write the manifest that makes it count."""
    import deepspeed.comm as dist

    tag = f"step{step:08d}"
    if dist.get_rank() == 0:  # re-saving a step (after a resume): it stops counting as complete until done again
        (Path(cfg.checkpoint_dir) / tag / COMPLETE_MARKER).unlink(missing_ok=True)
    dist.barrier()
    engine.save_checkpoint(cfg.checkpoint_dir, tag=tag, client_state={"step": step, "epoch": epoch})
    dist.barrier()
    if dist.get_rank() == 0:
        write_manifest(Path(cfg.checkpoint_dir) / tag, {"step": step, "epoch": epoch, "world_size": world,
                                                         "stage": cfg.stage, "model": cfg.model})
        prune_checkpoints(cfg.checkpoint_dir, cfg.keep_checkpoints)
        say(f"checkpoint step={step} saved to {Path(cfg.checkpoint_dir) / tag}")
    dist.barrier()


# ---------------------------------------------------------------------------------------------- process set-up


def _quiet_deepspeed(verbose: bool) -> None:
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def init_distributed(cfg: TrainConfig) -> None:
    """torch.distributed for this rank: from the launcher's env (RANK...), from Open MPI's env (mpirun), or as a
    world of one when started plainly."""
    from datetime import timedelta

    device = resolve_device(cfg.device)
    os.environ.setdefault("DS_ACCELERATOR", device)
    import deepspeed

    _quiet_deepspeed(cfg.verbose)
    backend = {"cpu": "gloo", "cuda": "nccl", "hpu": "hccl"}[device]
    launched = "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ
    if not launched:
        from labkit.launch import free_port

        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if local:
        os.environ.setdefault("LOCAL_SIZE", local)  # DeepSpeed's CPU all-reduce needs it (torchrun leaves it unset)
    # Under plain mpirun DeepSpeed's MPI discovery overwrites MASTER_PORT with this argument (default 29500, which
    # another job may hold): pass the port the launcher chose.
    with procs.StaleLockSweeper():
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=cfg.comm_timeout),
                                   auto_mpi_discovery=True, distributed_port=int(os.environ.get("MASTER_PORT", 29500)))


def shutdown_distributed() -> None:
    """Destroy the process group through DeepSpeed, which also drops its cached groups, so that a later run in the
    same process (a notebook re-run) starts clean."""
    import torch.distributed

    if torch.distributed.is_initialized():
        import deepspeed.comm as dist

        dist.destroy_process_group()
    comm_module = sys.modules.get("deepspeed.comm.comm")
    if comm_module is not None:
        comm_module.cdb = None


def run_in_process(cfg: TrainConfig, arrays: data.CifarArrays | None = None) -> dict:
    """One rank in this process (a notebook kernel): initialise, train, and tear the process group down again."""
    import torch.distributed

    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
                                            "MASTER_PORT")}
    if torch.distributed.is_initialized():
        raise ConfigError("world_size", "torch.distributed is already initialised in this process",
                          "restart the kernel, or run through the launcher (world_size > 1)")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        os.environ.pop(k, None)
    try:
        init_distributed(cfg)
        return train(cfg, arrays)
    finally:
        shutdown_distributed()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------------------------------- CLI


def _field_help() -> dict[str, str]:
    """TrainConfig's field comments, used as --help texts (one source for both)."""
    import inspect
    import re

    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^ +(\w+): [^=\n]+=[^#\n]+#\s*(.+)$", source, re.M)}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (booleans: --synthetic / --no-synthetic)."""
    defaults, helps = TrainConfig(), _field_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{helps.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=helps.get(f.name, "").replace("%", "%%"))
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, str) if isinstance(f.type, str) else f.type
            parser.add_argument(flag, dest=f.name, type=typ, default=default, metavar=f.name.upper(), help=text)
    # DeepSpeed's spelling of the config flag, and the launcher's rank argument
    parser.add_argument("--deepspeed_config", dest="deepspeed_config", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="labkit.train", description="CIFAR-10 training through DeepSpeed, one rank per process "
                                         "(see the module docstring)."))
    cfg = config_from_args(parser.parse_args(argv))
    from labkit.launch import rank_guard

    with rank_guard():
        try:
            resolve(cfg, int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1))))  # fail fast
            init_distributed(cfg)
            train(cfg)
        except BaseException as exc:
            abort_mpi_job(exc)
            raise
        finally:
            shutdown_distributed()
    return 0


def abort_mpi_job(exc: BaseException) -> None:
    """Under mpirun, a rank that fails takes the whole job down at once (MPI_Abort). Exiting normally would run
    MPI_Finalize, which waits for the other ranks, and they may be waiting for this one."""
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) < 2 or "mpi4py" not in sys.modules:
        return
    import traceback

    from labkit.launch import RANK_ERROR_TAG

    rank = os.environ.get("OMPI_COMM_WORLD_RANK", "?")
    print(f"{RANK_ERROR_TAG} rank={rank} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    from mpi4py import MPI

    MPI.COMM_WORLD.Abort(1)


if __name__ == "__main__":
    sys.exit(main())

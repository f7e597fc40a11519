"""Plan and run CIFAR-10 training from a notebook or the CLI: validate parameters, pick in-process or launched ranks,
read the metrics back.

`plan(...)` checks every parameter (ConfigError before any work), resolves the automatic values for the device, builds
the DeepSpeed config and the launcher command; `execute(plan)` trains one rank in this process or N ranks through
`labkit.launch`, and returns rank 0's records. Temporary folders belong to the plan and are removed when it is
closed, garbage-collected or the interpreter exits.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from labkit import train
from labkit.errors import ConfigError, LabkitError

LAUNCHERS = ("auto", "inprocess", "deepspeed", "openmpi", "mpirun")
CPU_TRAIN_IMAGES = 2000  # automatic data size on a CPU: an epoch in seconds, the whole notebook in about a minute
CPU_TEST_IMAGES = 500
CPU_WIDTH = 0.5


@dataclass
class TrainingPlan:
    config: train.TrainConfig        # resolved: device, dtype, micro_batch, lr filled in
    world_size: int
    launcher: str                    # inprocess | deepspeed | openmpi | mpirun
    workdir: Path                    # metrics (and checkpoints unless checkpoint_dir was given) live here
    train_images: int
    total_steps: int
    deepspeed_config: dict
    command: list[str] = field(default_factory=list)  # the launcher argv ([] for in-process)
    _cleanup: weakref.finalize | None = field(default=None, repr=False)

    @property
    def metrics_path(self) -> Path:
        return Path(self.config.metrics)

    def close(self) -> None:
        """Remove the plan's temporary folder (a no-op for user-given folders)."""
        if self._cleanup is not None:
            self._cleanup()


def _temporary_dir() -> Path:
    import os

    base = os.environ.get("LABKIT_RUN_DIR") or None  # set by `labkit run`: keep files inside the run folder
    return Path(tempfile.mkdtemp(prefix="cifar10-", dir=base))


def plan(*, data_dir: str = "", synthetic: bool = True, epochs: int = 3, model: str = "resnet", stage: int = 0,
         dtype: str = "auto", world_size: int = 1, micro_batch: int = 0, checkpoint_dir: str = "",
         device: str = "auto", launcher: str = "auto", max_train: int = 0, width: float = 0.0,
         **overrides) -> TrainingPlan:
    """Validate notebook/CLI parameters and decide how the run happens. Raises ConfigError naming the field.

    Automatic values (0 / "auto"): on a CPU train on the first 2,000 images at width 0.5 (an epoch takes seconds);
    on an accelerator use the whole set at width 1.0. launcher auto: in-process for one rank, else `deepspeed`.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError("launcher", f"unknown launcher {launcher!r}", f"use one of {', '.join(LAUNCHERS)}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError("world_size", f"must be a whole number >= 1, got {world_size!r}", "pass 1 or more ranks")
    if launcher == "inprocess" and world_size != 1:
        raise ConfigError("launcher", "in-process training runs exactly one rank",
                          "use world_size=1, or launcher='deepspeed' for more ranks")
    if width < 0:
        raise ConfigError("width", f"must be >= 0, got {width}", "pass 0 (automatic) or a multiplier such as 0.5")
    if max_train < 0:
        raise ConfigError("max_train", f"must be >= 0, got {max_train}", "pass 0 (automatic) or an image count")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(train.TrainConfig)}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), "not a training option",
                          f"use fields of labkit.train.TrainConfig")
    resolved_device = train.resolve_device(device) if device in train.DEVICES else device
    on_cpu = resolved_device == "cpu"
    synthetic_sizes = {"synthetic_train": CPU_TRAIN_IMAGES, "synthetic_test": CPU_TEST_IMAGES} if on_cpu else \
        {"synthetic_train": 50_000, "synthetic_test": 10_000}
    cfg = train.TrainConfig(**{
        **synthetic_sizes,
        "data_dir": str(data_dir), "synthetic": bool(synthetic), "epochs": epochs, "model": model, "stage": stage,
        "dtype": dtype, "micro_batch": micro_batch, "checkpoint_dir": str(checkpoint_dir), "device": device,
        "width": width or (CPU_WIDTH if on_cpu else 1.0),
        "max_train": max_train or (CPU_TRAIN_IMAGES if on_cpu else 0),
        "max_test": overrides.pop("max_test", CPU_TEST_IMAGES if on_cpu else 0),
        **overrides,
    })
    cfg = train.resolve(cfg, world_size)  # every field checked here, the data folder included

    available = cfg.synthetic_train if cfg.synthetic else 50_000
    if not cfg.synthetic:
        available = _count_train_images(cfg.data_dir)
    train_images = min(available, cfg.max_train) if cfg.max_train else available
    train.check_data_fits(cfg, train_images)
    per_epoch = train.steps_per_epoch(train_images, cfg.global_batch)
    total = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)

    launcher = ("inprocess" if world_size == 1 else "deepspeed") if launcher == "auto" else launcher
    temporary = not cfg.checkpoint_dir
    workdir = _temporary_dir() if temporary else Path(cfg.checkpoint_dir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, metrics=cfg.metrics or str(workdir / "metrics.jsonl"))
    if not cfg.resume:
        Path(cfg.metrics).unlink(missing_ok=True)  # a fresh run starts a fresh metrics file
    result = TrainingPlan(cfg, world_size, launcher, workdir, train_images, total, train.deepspeed_config(cfg, total))
    if temporary:  # removed on close(), when the plan is garbage-collected, or at interpreter exit
        result._cleanup = weakref.finalize(result, shutil.rmtree, str(workdir), True)
    if launcher != "inprocess":
        from labkit import launch

        result.command = launch.build_command(launch_spec(result))
    return result


def _count_train_images(data_dir: str) -> int:
    """Training images in a batches folder, from the batch files alone (cheap: no arrays kept)."""
    from labkit import data

    folder = data.find_folder(data_dir)
    return sum(len(data.read_batch(folder / name)[1]) for name in data.TRAIN_FILES)


def config_args(cfg: train.TrainConfig) -> list[str]:
    """`cfg` as flags of labkit/train.py (only the values that differ from the defaults)."""
    defaults, args = train.TrainConfig(), []
    for f in dataclasses.fields(train.TrainConfig):
        value = getattr(cfg, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def launch_spec(p: TrainingPlan):
    from labkit import launch

    return launch.LaunchSpec(script=Path(train.__file__), args=config_args(p.config), world_size=p.world_size,
                             launcher=p.launcher, accelerator=p.config.device)


def execute(p: TrainingPlan, *, on_output: Callable[[str], None] | None = None, timeout: float | None = None) -> dict:
    """Train as planned. Returns {"summary": done-record, "records": all rank-0 records, "output": launcher text}."""
    if p.launcher == "inprocess":
        summary = train.run_in_process(p.config)
        # the metrics file holds the whole history, earlier runs that this one resumed included
        records = train.read_metrics(p.metrics_path) if p.metrics_path.is_file() else summary["records"]
        return {"summary": {k: v for k, v in summary.items() if k not in ("epochs_log", "deepspeed_config", "records")},
                "records": records, "output": ""}
    from labkit import launch
    # launch names the rank that went first (the launcher's exit line), not a peer that failed after it.
    result = launch.run(launch_spec(p), timeout=timeout, on_output=on_output)
    records = train.read_metrics(p.metrics_path) if p.metrics_path.is_file() else []
    done = [r for r in records if r.get("kind") == "done"]
    if not done:
        raise LabkitError(f"training exited without a final record in {p.metrics_path}; output tail:\n"
                          f"{result.output[-2000:]}")
    return {"summary": done[-1], "records": records, "output": result.output}


SEED_EXAMPLE_IMAGES_PER_S = 2745  # DeepSpeedExamples cifar10_deepspeed.py on one H200 (shared/notes/deepspeed.md)
AIRBENCH_IMAGES_PER_S = 320_000   # airbench94 on the same H200, without DeepSpeed


def summarize(records: list[dict]) -> dict:
    """What a run showed, computed from its metrics records (the notebook's closing cell prints this)."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    done = next((r for r in reversed(records) if r.get("kind") == "done"), {})
    if not steps or not epochs:
        raise LabkitError("the run logged no steps or epochs: nothing to summarise")
    rates = [e["images_per_s"] for e in epochs]
    steady = max(rates[1:] or rates)  # the first epoch carries warm-up (autotuning, allocator growth)
    first_loss, last_loss = steps[0]["loss"], steps[-1]["loss"]
    return {
        "data": done.get("data", epochs[-1].get("data")), "synthetic": done.get("synthetic"),
        "device": done.get("device"), "world_size": done.get("world_size"), "model": done.get("model"),
        "steps": done.get("step", steps[-1]["step"]), "planned_steps": done.get("total_steps"),
        "first_loss": first_loss, "last_loss": last_loss,
        "loss_drop": (first_loss - last_loss) / first_loss if first_loss else 0.0,
        "final_test_acc": epochs[-1]["test_acc"], "best_test_acc": max(e["test_acc"] for e in epochs),
        "final_train_acc": epochs[-1]["train_acc"],
        "images_per_s": steady, "images_per_s_first_epoch": rates[0],
        "seconds_per_50k_epoch": 50_000 / steady if steady else None,
        "vs_seed_example_h200": steady / SEED_EXAMPLE_IMAGES_PER_S,
        "vs_airbench_h200": steady / AIRBENCH_IMAGES_PER_S,
    }


def epochs_table(records: list[dict]) -> list[dict]:
    """One row per epoch record, for display."""
    keys = ("epoch", "step", "train_loss", "train_acc", "test_acc", "images_per_s", "epoch_s")
    return [{k: r[k] for k in keys} for r in records if r.get("kind") == "epoch"]


def printer(stream=sys.stdout) -> Callable[[str], None]:
    """An on_output callback that echoes rank output except DeepSpeed's INFO chatter."""
    def echo(line: str) -> None:
        if "[INFO]" not in line:
            stream.write(line)
            stream.flush()
    return echo

"""Notebook 04 and `labkit train`: `plan` checks every parameter (ConfigError before any work), fills the automatic
values for the machine and builds the DeepSpeed config and launcher command; `execute` trains one rank in this process
or N through `labkit.launch`. A plan's temporary folder goes when it is closed, garbage-collected or at exit."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from labkit import checkpoint, data, launch, tabular, train
from labkit.devices import auto_ranks, check_ranks_fit, pick_device
from labkit.errors import ConfigError, LabkitError, check_bool, check_choice, check_int, check_number
from labkit.ranks import train as train_rank

LAUNCHERS = ("auto", "inprocess", *launch.LAUNCHERS)
RANK_MODULE = "labkit.ranks.train"
# automatic sizes on a CPU: an epoch in seconds, the whole notebook in about a minute
CPU_SIZES = {"synthetic_train": 2000, "synthetic_test": 500, "max_train": 2000, "max_test": 500, "width": 0.5}
ZERO_MEANS_AUTO = ("width", "max_train")
ACCELERATOR_SIZES = {"synthetic_train": 50_000, "synthetic_test": 10_000, "max_train": 0, "max_test": 0, "width": 1.0}


def automatic_help() -> dict[str, str]:
    """`labkit train --help` for each size the device picks: the rank module's help names its fixed default, which
    the CLI never passes (left out, or 0 for ZERO_MEANS_AUTO, the size is CPU_SIZES' or ACCELERATOR_SIZES')."""
    helps = {}
    for f in dataclasses.fields(train.TrainConfig):
        if f.name in CPU_SIZES:
            cpu, accelerator = (f"{v:,}" if v else "all" for v in (CPU_SIZES[f.name], ACCELERATOR_SIZES[f.name]))
            zero_too = f.name in ZERO_MEANS_AUTO
            text = f.metadata["help"].replace(" (0 = all)", "") if zero_too else f.metadata["help"]
            when = "0 or left out" if zero_too else "left out"
            helps[f.name] = f"{text} ({when}: by device: CPU {cpu}, accelerator {accelerator})"
    return helps


@dataclass
class TrainingPlan:
    config: train.TrainConfig  # resolved: device, dtype, micro_batch, lr filled in
    world_size: int
    launcher: str  # inprocess | deepspeed | openmpi | mpirun
    workdir: Path  # metrics (and checkpoints unless checkpoint_dir was given) live here
    train_images: int
    total_steps: int
    deepspeed_config: dict
    command: list[str] = field(default_factory=list)  # the launcher argv ([] for in-process)
    why: str = ""  # how the number of ranks was chosen
    start_step: int = 0  # where a resumed run continues: its newest complete checkpoint's step (0: from the start)
    _cleanup: weakref.finalize | None = field(default=None, repr=False)

    @property
    def steps_this_run(self) -> int:
        return max(0, self.total_steps - self.start_step)

    @property
    def metrics_path(self) -> Path:
        return Path(self.config.metrics)

    def close(self) -> None:
        if self._cleanup is not None:  # a folder the user gave is kept
            self._cleanup()

    def command_text(self) -> str:
        """The launcher command as a user types it: the executable by name, the run folder as RUN_DIR."""
        return " ".join(launch.shown_command(self.command)).replace(str(self.workdir), "RUN_DIR")

    def launch_spec(self) -> launch.LaunchSpec:
        args = train_rank.config_args(self.config)
        return launch.LaunchSpec(RANK_MODULE, args, self.world_size, self.launcher, device=self.config.device)


def plan(
    *,
    world_size: int = 0,
    launcher: str = "auto",
    synthetic: bool = True,
    epochs: int = 3,
    compile_model: bool | None = None,
    **options,
):
    """Validate notebook/CLI parameters (TrainConfig fields) and decide how the run happens. Raises ConfigError.
    `compile_model` is notebook 04's name for TrainConfig.compile (`compile` would shadow a builtin there).

    Automatic values (0 / "auto"): world_size all visible GPUs, 2 ranks on a CPU (1 with launcher='inprocess'); on a
    CPU train on the first 2,000 images at width 0.5 (an epoch takes seconds), on an accelerator on the whole set at
    width 1.0; launcher in-process for one rank, else `deepspeed`.
    """
    check_choice("launcher", launcher, LAUNCHERS)
    check_bool("synthetic", synthetic)
    if compile_model is not None:
        options["compile"] = check_bool("compile_model", compile_model)
    check_int("world_size", world_size, minimum=0, fix="pass 1 or more ranks, or 0 for automatic")
    device = pick_device(options.get("device", "auto"))
    why = f"world_size={world_size} as given"
    if not world_size and launcher == "inprocess":
        world_size, why = 1, "automatic: in-process training runs one rank"
    elif not world_size:
        world_size, _, why = auto_ranks(options.get("device", "auto"))
        why = f"automatic: {why}"
    if launcher == "inprocess" and world_size != 1:
        fix = "use world_size=1, or launcher='deepspeed' for more ranks"
        raise ConfigError("launcher", "in-process training runs exactly one rank", fix)
    unknown = set(options) - {f.name for f in dataclasses.fields(train.TrainConfig)}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), "not a training option", "use fields of labkit.train.TrainConfig")
    for name in ZERO_MEANS_AUTO:
        check_number(name, options.get(name, 0), fix=f"pass 0 (automatic) or a positive {name}")
    check_ranks_fit("world_size", world_size, device)
    sizes = CPU_SIZES if device == "cpu" else ACCELERATOR_SIZES
    automatic = {k: v for k, v in sizes.items() if k not in options or (k in ZERO_MEANS_AUTO and not options[k])}
    paths = {k: str(options.get(k, "")) for k in ("data_dir", "checkpoint_dir")}  # a notebook may pass Path objects
    options = {**options, **paths, **automatic, "device": device}
    cfg = train.TrainConfig(synthetic=synthetic, epochs=epochs, **options)
    cfg = cfg.resolved(world_size)  # every field checked here, the data folder included

    available = cfg.synthetic_train if cfg.synthetic else _count_train_images(cfg.data_dir)
    train_images = min(available, cfg.max_train) if cfg.max_train else available
    total = train.plan_steps(cfg, train_images)[1]
    # the checkpoint the run will load (train skips the same unverifiable ones and says so): steps left to take
    # hashed here and again by each rank: the plan's step must be the ranks' when the newest is corrupt (0.3 s/200 MB)
    found = checkpoint.latest_complete(cfg.checkpoint_dir, log=lambda _: None) if cfg.resume else None
    launcher = ("inprocess" if world_size == 1 else "deepspeed") if launcher == "auto" else launcher
    temporary = not cfg.checkpoint_dir
    base = os.environ.get("LABKIT_RUN_DIR") or None  # set by `labkit run`: temporary files stay in the run folder
    workdir = Path(tempfile.mkdtemp(prefix="cifar10-", dir=base) if temporary else cfg.checkpoint_dir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, metrics=cfg.metrics or str(workdir / "metrics.jsonl"))
    if not cfg.resume:
        Path(cfg.metrics).unlink(missing_ok=True)  # a fresh run starts a fresh metrics file
    ds_config = train.deepspeed_config(cfg, total)
    result = TrainingPlan(cfg, world_size, launcher, workdir, train_images, total, ds_config, why=why)
    result.start_step = found[0] if found else 0
    if temporary:  # removed on close(), when the plan is garbage-collected, or at interpreter exit
        result._cleanup = weakref.finalize(result, shutil.rmtree, str(workdir), True)
    if launcher != "inprocess":
        result.command = launch.build_command(result.launch_spec())
    return result


def steps_solution(p: TrainingPlan) -> str:
    """The step exercise's worked answer: the plan's steps in all and, on a resume, the steps this run takes."""
    cfg = p.config
    per_epoch = train.plan_steps(cfg, p.train_images)[0]
    text = (f"{p.train_images:,} images // {cfg.global_batch} per step = {per_epoch} steps per epoch, x {cfg.epochs} "
            f"epoch(s) = {p.total_steps}")  # fmt: skip
    if not p.start_step:
        return text + "."
    left = tabular.format_plural(p.steps_this_run, "step")
    return f"{text} in all; resumed from step {p.start_step}: {p.total_steps} - {p.start_step} = {left} this run."


def _count_train_images(data_dir: str) -> int:
    """Training images in a batches folder, from the batch files alone (cheap: no arrays kept)."""
    folder = data.find_folder(data_dir)
    return sum(len(data.read_batch(folder / name)[1]) for name in data.TRAIN_FILES)


def execute(p: TrainingPlan, *, on_output: Callable[[str], None] | None = None, timeout: float | None = None) -> dict:
    """Train as planned. Returns {"summary": done-record, "records": all rank-0 records, "output": launcher text}."""
    output = ""
    if p.launcher == "inprocess":
        summary = train.run_in_process(p.config, timeout=timeout)  # no launcher: the loop keeps the deadline
        # the metrics file holds the whole history, earlier runs that this one resumed included
        records = train.read_metrics(p.metrics_path) if p.metrics_path.is_file() else summary["records"]
    else:  # launch names the rank that went first (the launcher's exit line), not a peer that failed after it
        output = launch.run(p.launch_spec(), timeout=timeout, on_output=on_output).output
        records = train.read_metrics(p.metrics_path) if p.metrics_path.is_file() else []
    done = [r for r in records if r.get("kind") == "done"]
    if not done:
        raise LabkitError(f"training exited without a final record in {p.metrics_path}; output tail:\n{output[-2000:]}")
    return {"summary": done[-1], "records": records, "output": output}


SEED_EXAMPLE_IMAGES_PER_S = 2745  # DeepSpeedExamples cifar10_deepspeed.py on one H200 (shared/notes/deepspeed.md)
AIRBENCH_IMAGES_PER_S = 320_000  # airbench94_compiled.py from its repository on one H200 (docs/benchmarks.md)
RUN_KEYS = ("synthetic", "device", "world_size", "model")


def first_epoch_note(shown: dict) -> str:
    """The first epoch against the best later one, in the words this run's numbers support (not a fixed claim)."""
    first, later = shown["images_per_s_first_epoch"], shown["images_per_s"]
    if shown.get("epochs", 0) < 2 or not first or not later:
        return f"One epoch ran at {first:,.0f} images/s: there is no later epoch to compare it with."
    gap, cpu = first / later - 1, shown.get("device") == "cpu"
    rates = f"epoch 1 ran at {first:,.0f} images/s, the best later epoch at {later:,.0f}"
    slowest = shown.get("images_per_s_slowest_later_epoch")
    if gap < -0.10 and slowest is not None and slowest <= first:
        return (
            f"The epochs' rates swung with what else ran on the machine ({rates}, but epoch "
            f"{shown['slowest_later_epoch']} ran at {slowest:,.0f}, slower than the first): no warm-up cost "
            "stands out from that."
        )
    if gap < -0.10:
        gpu = "cuDNN autotuning and memory-pool growth happen in the first steps on a GPU"
        why = "the first steps pay one-off allocations and warm caches" if cpu else gpu
        if shown.get("compiled") and shown.get("first_step_s"):
            why = f"its first step compiled the model ({shown['first_step_s']:.1f} s), and {why}"
        # Past 2x a factor reads truer than a percentage: "92% slower" undersells 13x
        slower = (
            f"ran {later / first:.1f}x slower" if later >= 2 * first else f"was {tabular.format_percent(-gap)} slower"
        )
        return f"The first epoch {slower} ({rates}): {why}."
    if gap > 0.10:
        return (
            f"The first epoch was the fastest, {100 * gap:.0f}% above the best later one ({rates}): there is no "
            "warm-up cost to see here, and the later epochs lost time to something else on the machine (other "
            "processes sharing its cores are the usual cause)."
        )
    why = "a CPU has no kernel autotuning to pay for up front" if cpu else "at this size the warm-up costs little"
    return f"The epochs ran at about the same rate ({rates}; {100 * gap:+.0f}%): {why}."


def closing_note(shown: dict) -> str:
    """The chapter's closing paragraph (Markdown), every number from `summarize`'s dict for this run."""
    data_words = "**synthetic** images in the CIFAR-10 format" if shown["synthetic"] else "the real CIFAR-10 images"
    seed = f"the DeepSpeedExamples recipe ({SEED_EXAMPLE_IMAGES_PER_S:,} images/s on an H200)"
    if shown["device"] == "cpu":
        scale = (f"At this rate a 50,000-image epoch would take {shown['seconds_per_50k_epoch']:.0f} s on this CPU; "
                 f"on a GPU the same code is measured against {seed} in docs/benchmarks.md.")  # fmt: skip
    else:
        scale = (f"That is {shown['vs_seed_example_h200']:.0f}x {seed} and "
                 f"{tabular.format_percent(shown['vs_airbench_h200'])} of compiled airbench94 "
                 f"({AIRBENCH_IMAGES_PER_S:,} images/s on an H200; this run is eager unless `compile_model` is on); "
                 f"a 50,000-image epoch takes {shown['seconds_per_50k_epoch']:.2f} s.")  # fmt: skip
    acc = {k: tabular.format_percent(shown[k], 1) for k in ("final_test_acc", "best_test_acc")}
    parts = [
        f"The {shown['model']} trained {shown['steps']} of {shown['planned_steps']} planned steps on {data_words}, "
        f"{shown['world_size']} rank(s) on **{shown['device']}**.",
        f"The training loss fell from {shown['first_loss']:.3f} to {shown['last_loss']:.3f} "
        f"({tabular.format_percent(shown['loss_drop'])} lower) and test accuracy reached **{acc['final_test_acc']}** "
        f"(best {acc['best_test_acc']}; chance is 10%).",
        throughput_words(shown),
    ]
    if shown["compiled"]:
        parts.append(f"The model was compiled: its first step took {shown['first_step_s']:.1f} s, paid once per run.")
    parts.append(scale)
    if shown["synthetic"]:
        parts.append(
            "Synthetic textures are easier than real photos: judge accuracy on real data, throughput on either."
        )
    return " ".join(parts)


def throughput_words(shown: dict) -> str:
    """The rate the closing paragraph compares, named for what it is: one epoch's (warm-up included), or the best
    epoch after the first, beside the first and the last."""
    if shown.get("epochs", 0) < 2:
        return f"Throughput: **{shown['images_per_s']:,.0f} images/s** in its one epoch (warm-up included)."
    last = shown.get("images_per_s_last_epoch")
    others = f"first epoch {shown['images_per_s_first_epoch']:,.0f}" + (f", last {last:,.0f}" if last else "")
    return f"Best later epoch: **{shown['images_per_s']:,.0f} images/s** ({others})."


def summarize(records: list[dict]) -> dict:
    """What a run showed, computed from its metrics records (the notebook's closing cell prints this)."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    done = next((r for r in reversed(records) if r.get("kind") == "done"), {})
    if not steps or not epochs:
        raise LabkitError("the run logged no steps or epochs: nothing to summarise")
    rates = [e["images_per_s"] for e in epochs]
    steady = max(rates[1:] or rates)  # the best later epoch: the first carries warm-up (autotuning, allocator growth)
    first_loss, last_loss = steps[0]["loss"], steps[-1]["loss"]
    shown = {"data": done.get("data", epochs[-1].get("data"))} | {k: done.get(k) for k in RUN_KEYS}
    shown |= {"steps": done.get("step", steps[-1]["step"]), "planned_steps": done.get("total_steps")}
    drop = (first_loss - last_loss) / first_loss if first_loss else 0.0
    shown |= {"first_loss": first_loss, "last_loss": last_loss, "loss_drop": drop}
    shown |= {"final_test_acc": epochs[-1]["test_acc"], "best_test_acc": max(e["test_acc"] for e in epochs)}
    shown |= {"final_train_acc": epochs[-1]["train_acc"], "images_per_s": steady, "images_per_s_first_epoch": rates[0]}
    shown |= {"seconds_per_50k_epoch": 50_000 / steady if steady else None, "epochs": len(epochs)}
    shown["images_per_s_last_epoch"] = rates[-1]
    if rates[1:]:  # the slowest later epoch: one slower than the first says the rates follow the machine's load
        shown["slowest_later_epoch"] = min(range(1, len(rates)), key=rates.__getitem__) + 1
        shown["images_per_s_slowest_later_epoch"] = min(rates[1:])
    shown |= {"compiled": bool(done.get("compiled")), "first_step_s": done.get("first_step_s")}
    shown["vs_seed_example_h200"] = steady / SEED_EXAMPLE_IMAGES_PER_S
    shown["vs_airbench_h200"] = steady / AIRBENCH_IMAGES_PER_S
    return shown


def epochs_table(records: list[dict]) -> list[dict]:
    keys = ("epoch", "step", "train_loss", "train_acc", "test_acc", "images_per_s", "epoch_s")
    return [{k: r[k] for k in keys} for r in records if r.get("kind") == "epoch"]


def printer(stream=sys.stdout) -> Callable[[str], None]:
    """An on_output callback that echoes rank output except DeepSpeed's INFO chatter."""

    def echo(line: str) -> None:
        if "[INFO]" not in line:
            stream.write(line)
            stream.flush()

    return echo


def epoch_edge_note(records: list[dict]) -> str:
    """Does the logged loss step down where an epoch starts (a saw-tooth)? Computed from the run's step records: the
    first reading of each epoch against the last one before it, compared with the typical step-to-step change inside
    an epoch (a loss that merely keeps falling is no saw-tooth)."""
    steps = [r for r in records if r.get("kind") == "step"]
    # (epochs apart, relative drop) of each reading from the one before it
    drops = [(b["epoch"] - a["epoch"], 1 - b["loss"] / a["loss"] if a["loss"] else 0.0) for a, b in pairwise(steps)]
    edges = [drop for apart, drop in drops if apart == 1]
    inside = sorted(drop for apart, drop in drops if apart == 0)
    if not edges:
        return "One epoch: no epoch edge to look at."
    mean, typical = sum(edges) / len(edges), inside[len(inside) // 2] if inside else 0.0
    where = (f"over {len(edges)} epoch edge(s) the loss went {'down' if mean > 0 else 'up'} by "
             f"{tabular.format_percent(abs(mean))} on average, against a typical {tabular.format_percent(typical)} "
             "from one reading to the next inside an epoch")  # fmt: skip
    if mean > max(0.05, 2 * typical):
        return (
            f"A saw-tooth: {where}. The network meets again images it trained on an epoch ago: a small data set is "
            "partly memorised (more images, or stronger augmentation, flatten it)."
        )
    return f"No saw-tooth to speak of: {where}."

"""The accelerate route to DeepSpeed: `accelerate config`'s questions as typed values, the YAML accelerate's own loader
reads, the `accelerate launch` line (local ranks, or an MPIJob launcher's hostfile) and a real run's per-rank report.

    cfg = AccelerateConfig(stage=2, num_processes=2, mixed_precision="bf16").validated()
    cfg.write("accelerate.yaml")                       # what `accelerate config` would have asked for, answered
    report = run_training(TrainPlan(cfg, "run/"))      # accelerate launch --config_file ... -m labkit.ranks....

What `accelerate config` asks interactively (machine type, number of machines, dynamo, DeepSpeed, a JSON file or
not, ZeRO stage, offload, mixed precision) is QUESTIONS, each with the guide's advice. The rank script
(labkit.ranks.accelerate_train) proves DeepSpeed is active: accelerate exits 0 without it under `--cpu` or
ACCELERATE_USE_CPU=1.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit import launch, memory, shared_volume
from labkit.devices import DEVICE_CHOICES, pick_device
from labkit.errors import ConfigError, LabkitError, check_choice, check_int, check_number, named_as
from labkit.progress import bar as progress_bar

TRAIN_MODULE = "labkit.ranks.accelerate_train"
_PROGRESS = re.compile(rf"{launch.PROGRESS_TAG} step=(\d+)")  # what the training ranks print (rank 0, each step)
MIXED_PRECISIONS = ("no", "fp16", "bf16")  # accelerate's names; "no" = fp32
OFFLOAD_DEVICES = ("none", "cpu")  # nvme needs a path on fast local disks: not part of the workshop
CLUSTER_HOSTFILE = "/etc/mpi/hostfile"  # where the MPI Operator writes the hostfile in the launcher pod
MULTINODE_LAUNCHER = "openmpi"  # what the MPIJob launcher has: mpirun over the operator's ssh keys
DTYPE_OF = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}  # accelerate's mixed_precision -> labkit.memory's dtype

# `accelerate config`, question by question: (the field here, what accelerate asks, the guide's advice).
QUESTIONS = (
    ("compute_environment", "In which compute environment are you running?",
     "This machine (LOCAL_MACHINE), also inside a Kubernetes pod; AMAZON_SAGEMAKER only for SageMaker jobs."),
    ("distributed_type", "Which type of machine are you using?",
     "Answer DeepSpeed's question below with yes and accelerate writes DEEPSPEED here; 'multi-GPU' alone is DDP."),
    ("num_machines", "How many different machines will you use?",
     "1 on one host; on an MPIJob the number of worker pods (then the hostfile lists them)."),
    ("dynamo", "Do you wish to optimize your script with torch dynamo?",
     "no for the workshop: compiling adds minutes of start-up to short runs; try it once training works."),
    ("use_deepspeed", "Do you want to use DeepSpeed?", "yes: that is the route this chapter takes."),
    ("deepspeed_config_file", "Do you want to specify a json file to a DeepSpeed config?",
     "no: accelerate writes the DeepSpeed config from these answers; given a file, it ignores them."),
    ("zero_stage", "What should be your DeepSpeed's ZeRO optimization stage?",
     "2 when the model's parameters fit on one device (fast); 3 when they do not; 1 rarely wins; see the fit table."),
    ("offload_optimizer_device", "Where to offload optimizer states?",
     "none while the model fits; cpu (ZeRO-Offload) trades step time for device memory."),
    ("offload_param_device", "Where to offload parameters?",
     "none; cpu only with stage 3, when stage 3 alone does not fit."),
    ("gradient_accumulation_steps", "How many gradient accumulation steps you're passing in your script?",
     "1 unless the global batch you want does not fit: it multiplies the batch, not the memory."),
    ("gradient_clipping", "Do you want to use gradient clipping?", "yes, 1.0: cheap insurance against a bad batch."),
    ("zero3_init_flag",
     "Do you want to use deepspeed.zero.Init when using ZeRO Stage-3 for constructing massive models?",
     "no unless the model does not fit in one host's memory when built: it builds the model already partitioned."),
    ("num_processes", "How many GPU(s) should be used for distributed training?",
     "every device of every machine: num_processes is the TOTAL (2 pods x 8 GPUs = 16)."),
    ("mixed_precision", "Do you wish to use FP16 or BF16 (mixed precision)?",
     "bf16 on A100/H100/H200, Gaudi and CPUs; fp16 on T4/V100 (no bf16); no for fp32."),
)  # fmt: skip


@dataclass
class AccelerateConfig:
    """The answers to `accelerate config` for DeepSpeed; `to_yaml()` is the file accelerate launch reads."""

    stage: int = 2
    num_processes: int = 2
    mixed_precision: str = "bf16"
    offload_optimizer: str = "none"
    offload_param: str = "none"
    num_machines: int = 1
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    zero3_init: bool = False

    def validated(self) -> AccelerateConfig:
        """self, or ConfigError naming the field and the fix."""
        check_int("stage", self.stage, 0, "pick a ZeRO stage from 0-3", maximum=3)
        check_int("num_processes", self.num_processes, 1, "pass the total number of processes (devices), 1 or more")
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        check_choice("offload_optimizer", self.offload_optimizer, OFFLOAD_DEVICES)
        check_choice("offload_param", self.offload_param, OFFLOAD_DEVICES)
        check_int("num_machines", self.num_machines, 1, "pass the number of machines (MPIJob worker pods)")
        if self.num_processes % self.num_machines:
            problem = f"{self.num_processes} processes do not split evenly over {self.num_machines} machines"
            raise ConfigError("num_processes", problem, "num_processes is the TOTAL: machines x devices per machine")
        check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_number("gradient_clipping", self.gradient_clipping, 0.0, "pass e.g. 1.0 (0 turns clipping off)")
        if not isinstance(self.zero3_init, bool):
            raise ConfigError("zero3_init", f"must be true or false, got {self.zero3_init!r}", "pass True or False")
        offload_opt, offload_param = self.offload_optimizer == "cpu", self.offload_param == "cpu"
        # the same rule, named after the answer that breaks it, its fix in accelerate's answers (not labkit's offload)
        field = "offload_param" if offload_param else "offload_optimizer"
        fix = "set offload_optimizer='cpu' too (--offload-optimizer cpu)"
        with named_as({"offload": field}, {"offload": fix} if offload_param and not offload_opt else {}):
            memory.check_offload(self.stage, offload_opt, offload_param)
        if self.zero3_init and self.stage != 3:
            raise ConfigError("zero3_init", "deepspeed.zero.Init partitions at build time: stage 3 only", "use stage 3")
        return self

    @property
    def dtype(self) -> str:
        return DTYPE_OF[self.mixed_precision]

    def command_line(self, *extra: str) -> str:
        """The `labkit accelerate config` line that writes this file (the flags the CLI has; `extra` appended)."""
        flags = [f"--stage {self.stage} --num-processes {self.num_processes} --mixed-precision {self.mixed_precision}"]
        defaults = AccelerateConfig()
        for name in ("offload_optimizer", "offload_param", "num_machines", "gradient_accumulation_steps"):
            if getattr(self, name) != getattr(defaults, name):
                flags.append(f"--{name.replace('_', '-')} {getattr(self, name)}")
        return " ".join(["labkit accelerate config", *flags, *extra])

    def to_yaml_dict(self) -> dict:
        """The keys `accelerate config` writes for a DeepSpeed machine (accelerate 1.x), in its order."""
        ds: dict = {
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "gradient_clipping": self.gradient_clipping,
            "offload_optimizer_device": self.offload_optimizer,
            "offload_param_device": self.offload_param,
            "zero3_init_flag": self.zero3_init,
            "zero_stage": self.stage,
        }
        if self.stage == 3:
            ds["zero3_save_16bit_model"] = True  # save_model() then writes one consolidated file, not shards
        if self.num_machines > 1:
            # DeepSpeed's openmpi runner refuses the `--num_gpus` accelerate adds for multi-node launches ("does not
            # support limiting num nodes/gpus"); an empty exclusion filter makes accelerate pass `--exclude ""` instead,
            # which selects every slot of the hostfile.
            ds |= {"deepspeed_multinode_launcher": MULTINODE_LAUNCHER, "deepspeed_hostfile": CLUSTER_HOSTFILE}
            ds["deepspeed_exclusion_filter"] = ""
        return {
            "compute_environment": "LOCAL_MACHINE",
            "debug": False,
            "deepspeed_config": ds,
            "distributed_type": "DEEPSPEED",
            "downcast_bf16": "no",
            "enable_cpu_affinity": False,
            "machine_rank": 0,
            "main_training_function": "main",
            "mixed_precision": self.mixed_precision,
            "num_machines": self.num_machines,
            "num_processes": self.num_processes,
            "rdzv_backend": "static",
            "same_network": True,
            "tpu_env": [],
            "tpu_use_cluster": False,
            "tpu_use_sudo": False,
            "use_cpu": False,  # True is the silent fallback: plain CPU DDP, no DeepSpeed
        }

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.validated().to_yaml_dict(), sort_keys=False)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def load_with_accelerate(path: str | Path):
    """The file as `accelerate launch` reads it (accelerate's own loader): a ClusterConfig."""
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def launch_command(
    config_file: str | Path,
    script_args: list[str],
    *,
    port: int | None = None,
    hostfile: str | None = None,
    executable: list[str] | None = None,
) -> list[str]:
    """`accelerate launch --config_file F [--deepspeed_hostfile H --deepspeed_multinode_launcher openmpi] -m ...`.
    With a hostfile (an MPIJob launcher: /etc/mpi/hostfile) accelerate starts DeepSpeed's runner on it.
    executable: None = the `accelerate` installed beside this Python (else its CLI module); ["accelerate"] = the one
    on a job's PATH (the image's)."""
    if executable is None:
        beside = Path(sys.executable).parent / "accelerate"
        executable = [str(beside)] if beside.is_file() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    cmd = [*executable, "launch", "--config_file", str(config_file)]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    if hostfile:
        cmd += ["--deepspeed_hostfile", hostfile, "--deepspeed_multinode_launcher", MULTINODE_LAUNCHER]
    return [*cmd, "-m", TRAIN_MODULE, *map(str, script_args)]


# ----------------------------------------------------------------------------------------------------------------------
# A training run through `accelerate launch`
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class TrainPlan:
    """A validated run of labkit.ranks.accelerate_train: a small causal LM built from a transformers config."""

    config: AccelerateConfig
    run_dir: str | Path
    device: str = "auto"
    steps: int = 30
    micro_batch: int = 8
    seq: int = 32
    hidden: int = 128
    layers: int = 2
    vocab: int = 64
    lr: float = 3e-3
    generate: int = 12
    timeout_s: float = 600.0
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the fallback trap, in tests

    def validated(self, *, here: bool = True) -> TrainPlan:
        """here=False: the ranks run in a job's pods, so `device` names theirs (auto: whatever they have), not this
        machine's."""
        self.config.validated()
        self.device = pick_device(self.device) if here else check_choice("device", self.device, DEVICE_CHOICES)
        for name, low in (("steps", 1), ("micro_batch", 1), ("seq", 4), ("layers", 1), ("vocab", 8), ("generate", 1)):
            check_int(name, getattr(self, name), low)
        check_int("hidden", self.hidden, 64, "pass a multiple of 64 (4 attention heads of 16 or more)")
        if self.hidden % 64:
            raise ConfigError("hidden", f"{self.hidden} is not a multiple of 64", "pass 64, 128, 256, ...")
        check_number("lr", self.lr, 0.0, "pass a learning rate > 0, e.g. 3e-3", strict=True)
        check_number("timeout_s", self.timeout_s, 0.0, "pass seconds > 0", strict=True)
        if self.device == "cpu" and self.config.mixed_precision == "fp16":
            fix = "use mixed_precision bf16 (or no) on CPU ranks"
            raise ConfigError("mixed_precision", "DeepSpeed's CPU accelerator trains in bf16 or fp32, not fp16", fix)
        return self

    def script_args(self) -> list[str]:
        names = ("steps", "micro_batch", "seq", "hidden", "layers", "vocab", "lr", "generate")
        flags = [f"--{n.replace('_', '-')}={getattr(self, n)}" for n in names]
        return [f"--out={Path(self.run_dir).resolve()}", f"--stage={self.config.stage}",
                f"--num-processes={self.config.num_processes}", *flags]  # fmt: skip

    def config_file(self) -> Path:
        return Path(self.run_dir) / "accelerate_config.yaml"

    def command(self, port: int | None = None) -> list[str]:
        return launch_command(self.config_file(), self.script_args(), port=port)


def job_run_dir(job_name: str) -> str:
    """A job's accelerate run folder (its config and per-rank reports): in the job's own folder of the shared volume,
    which every pod of the job mounts read-write at /shared/runs/<job> (manifests/jobs/interactive), launcher and
    workers alike; a local job maps /shared onto a folder of its own (LocalBackend.shared_path)."""
    return f"{shared_volume.run_dir(job_name)}/accelerate"


def job_command(plan: TrainPlan, job, *, port: int | None = None) -> list[str]:
    """What the MPIJob launcher runs for `plan` (after send_config): accelerate on the operator's hostfile,
    DeepSpeed's openmpi runner under it (mpirun over the workers; locally one host). With run_dir = job_run_dir(job)
    the same argv on both backends: `accelerate` from the job's PATH (the image's; a local job's is this one's)."""
    plan.validated(here=job.backend.one_host)
    cfg, st = plan.config, job.status()
    if cfg.num_machines < 2:
        problem = "one machine: accelerate ignores the hostfile and launches locally"
        raise ConfigError("num_machines", problem, "pass the MPIJob's worker count (2 or more)")
    # DeepSpeed starts a rank on every slot of the hostfile: a config of another shape fails only inside the ranks.
    if (cfg.num_machines, cfg.num_processes) != (st.workers, (st.workers or 0) * (st.slots_per_worker or 0)):
        field = "num_machines" if cfg.num_machines != st.workers else "num_processes"
        problem = (f"{cfg.num_machines} machine(s), {cfg.num_processes} process(es) for job {st.name} of "
                   f"{st.workers} worker(s) x {st.slots_per_worker} slot(s)")  # fmt: skip
        fix = f"num_machines={st.workers} (its workers), num_processes={(st.workers or 0) * (st.slots_per_worker or 0)}"
        raise ConfigError(field, problem, f"pass {fix} (all slots)")
    return launch_command(
        plan.config_file(), plan.script_args(), port=port, hostfile=CLUSTER_HOSTFILE, executable=["accelerate"]
    )


# Writes $2 to the file $1 (its folder created): the content is one argument, never parsed by a shell.
WRITE_FILE = 'mkdir -p "$(dirname "$1")" && printf "%s" "$2" > "$1"'


def send_config(plan: TrainPlan, job) -> str:
    """Write plan's accelerate config where the job's launcher reads it (plan.config_file(): on a cluster the shared
    volume, job_run_dir), through exec: the same on both backends, and no Kubernetes object or permission beyond
    the exec the interactive job needs anyway. The path written."""
    path = str(plan.config_file())
    result = job.run(["sh", "-c", WRITE_FILE, "labkit-write", path, plan.config.to_yaml()], timeout=60)
    if not result.ok:
        why = result.failure or result.output.strip()[-300:] or f"exit code {result.returncode}"
        raise LabkitError(f"writing {path} in job {job.namespace}/{job.name} failed: {why}")
    return path


def run_training(plan: TrainPlan, *, progress: bool = False, on_output: Callable[[str], None] | None = None) -> dict:
    """One `accelerate launch` of 2+ local ranks; the per-rank report. LaunchError (one line) when a rank fails."""
    plan.validated()
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("rank_*.json"):
        old.unlink()
    plan.config.write(plan.config_file())
    port = launch.free_port()
    cmd = plan.command(port)
    env = launch.kit_env({"MASTER_PORT": str(port), **plan.extra_env},
                         world_size=plan.config.num_processes, device=plan.device)  # fmt: skip
    bar = progress_bar(plan.steps, desc="training (rank 0)", disable=not progress, rate=False)

    def watch(line: str) -> None:
        if progress and (step := _PROGRESS.search(line)):  # search: another rank's text may share the line
            bar.n = int(step.group(1))
            bar.refresh()
        if on_output:
            on_output(line)

    start = time.monotonic()
    try:  # the run dir is the cwd: accelerate appends its `.deepspeed_env` there on multi-node launches
        launch.run_command(cmd, env, timeout=plan.timeout_s, on_output=watch, cwd=run_dir, log_path=run_dir / "log")
    finally:
        bar.close()
    return read_report(run_dir, plan, time.monotonic() - start, cmd)


def read_report(run_dir: Path, plan: TrainPlan, wall_s: float, cmd: list[str]) -> dict:
    files = sorted(Path(run_dir).glob("rank_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    ranks = [json.loads(p.read_text()) for p in files]
    if len(ranks) != plan.config.num_processes:
        problem = f"{len(ranks)} rank reports in {run_dir}, expected {plan.config.num_processes}"
        raise ConfigError("num_processes", problem, "check the run's log: a rank ended without its report")
    return {"ranks": ranks, "wall_s": wall_s, "command": launch.shown_command(cmd), "config": asdict(plan.config),
            "device": plan.device, "yaml": plan.config.to_yaml()}  # fmt: skip

"""The interactive MPIJob session of notebook 03, as tested functions: validate the chapter's parameters into a backend,
a job spec and a training command; show live training progress; summarize what the ranks reported.
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import ConfigError
from labkit.jobs.base import (CLUSTER_HOSTFILE, JobBackend, METRIC_TAG, parse_metrics, parse_train_command,
                              validate_backend_name)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "hpu")
_DEVICE_TO_ACCELERATOR = {"cpu": "cpu", "cuda": "nvidia", "hpu": "gaudi"}


@dataclass
class InteractivePlan:
    """Everything the chapter needs, validated before anything is submitted."""

    backend: JobBackend
    spec: Any                           # labkit.manifests.MpiJobSpec, resolved (slots, image... filled in)
    train_argv: list[str]
    default_command: bool
    steps: int
    device_reason: str = ""
    objects: list[dict] = field(default_factory=list)

    @property
    def ranks(self) -> int:
        return self.spec.workers * self.spec.slots_per_worker

    @property
    def command_line(self) -> str:
        return shlex.join(self.train_argv)

    def manifest_yaml(self, kind: str | None = "MPIJob") -> str:
        from labkit import manifests

        objs = [o for o in self.objects if kind is None or o["kind"] == kind]
        return manifests.to_yaml(objs)

    def describe(self) -> str:
        s = self.spec
        others = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects if o["kind"] != "MPIJob")
        return (f"backend      {self.backend.name}\n"
                f"job          {s.namespace}/{s.name}: {s.workers} worker(s) x {s.slots_per_worker} slot(s) = "
                f"{self.ranks} rank(s), accelerator {s.accelerator} ({self.device_reason})\n"
                f"image        {s.image}\n"
                f"deadline     {s.deadline_seconds / 60:g} min (activeDeadlineSeconds {s.deadline_seconds})\n"
                f"with it      {others or '-'}\n"
                f"train        {self.command_line}")


def resolve_accelerator(device: str, backend: str, kubeconfig: str | None = None) -> tuple[str, str]:
    """The MPIJob accelerator (cpu | nvidia | gaudi) for a `device` parameter, and why.

    auto: locally, what this machine has (labkit.devices.pick_device); on kubernetes, the accelerator most of the
    cluster's ready nodes offer (cpu when none, or when the nodes cannot be read).
    """
    value = device.strip().lower() if isinstance(device, str) else device
    if value not in DEVICE_CHOICES:
        raise ConfigError("device", f"unknown value {device!r}", f"use one of {', '.join(DEVICE_CHOICES)}")
    if backend == "local":
        from labkit.devices import pick_device

        picked = pick_device(value)  # raises ConfigError for an unavailable explicit device
        return _DEVICE_TO_ACCELERATOR[picked], ("picked on this machine" if value == "auto" else "requested")
    if value != "auto":
        return _DEVICE_TO_ACCELERATOR[value], "requested"
    try:
        from labkit import cluster

        nodes = cluster.list_node_inventory(cluster.load_client(kubeconfig or None))
    except Exception as exc:  # noqa: BLE001 - auto falls back to cpu, saying why
        return "cpu", f"cluster nodes not readable ({type(exc).__name__}), cpu assumed"
    counts: dict[str, int] = {}
    for node in nodes:
        if node.ready and node.accelerator_kind in ("nvidia", "gaudi") and node.accelerators:
            counts[node.accelerator_kind] = counts.get(node.accelerator_kind, 0) + node.accelerators
    if not counts:
        return "cpu", f"no GPU or Gaudi node among {len(nodes)} node(s)"
    kind = max(counts, key=counts.get)
    return kind, f"{counts[kind]} {kind} device(s) allocatable in the cluster"


def plan_interactive_job(*, backend: str = "local", namespace: str = "workloads", name: str = "deepspeed-interactive",
                         workers: int = 2, slots: int = 1, device: str = "auto", image: str = "",
                         deadline_minutes: float = 30.0, train_command: str = "", steps: int = 30,
                         ready_timeout_s: float = 300.0, kubeconfig: str = "", jobs_dir: str | None = None
                         ) -> InteractivePlan:
    """Validate notebook 03's parameters (one ConfigError naming the parameter) and build the plan. Submits nothing."""
    from labkit import manifests
    from labkit.jobs import get_backend

    validate_backend_name(backend)
    for field_name, value, low, high in (("workers", workers, 1, 64), ("slots", slots, 1, 64), ("steps", steps, 1, 100000)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(field_name, f"must be a whole number from {low} to {high}, got {value!r}",
                              f"pass e.g. {field_name}={low if field_name != 'steps' else 30}")
    if backend == "local" and workers * slots > 16:
        raise ConfigError("workers", f"{workers} x {slots} = {workers * slots} local ranks is more than this kit runs on "
                          "one machine (16)", "use fewer workers/slots locally, or backend='kubernetes'")
    if not isinstance(deadline_minutes, (int, float)) or deadline_minutes < 1:
        raise ConfigError("deadline_minutes", f"must be at least 1 minute, got {deadline_minutes!r}",
                          "pass e.g. 30: the job and its accelerators are released after that many minutes")
    if not isinstance(ready_timeout_s, (int, float)) or ready_timeout_s <= 0:
        raise ConfigError("ready_timeout_s", f"must be positive, got {ready_timeout_s!r}", "pass e.g. 300")
    accelerator, reason = resolve_accelerator(device, backend, kubeconfig or None)
    spec = manifests.MpiJobSpec(name=name, namespace=namespace, image=image or None, workers=workers,
                                slots_per_worker=slots, accelerator=accelerator,
                                deadline_seconds=int(round(deadline_minutes * 60)))
    spec = spec.resolved()  # validates every field (ConfigError naming it) and fills the overlay's defaults
    if backend == "local":
        job_backend = get_backend("local", root=jobs_dir, namespace=namespace)
    else:
        job_backend = get_backend("kubernetes", kubeconfig=kubeconfig or None, namespace=namespace)
    if train_command.strip():
        argv, default = parse_train_command(train_command), False
    else:
        argv, default = job_backend.training_command(spec, steps=steps), True
    return InteractivePlan(backend=job_backend, spec=spec, train_argv=argv, default_command=default, steps=steps,
                           device_reason=reason, objects=manifests.render_all(spec))


class TrainingProgress:
    """An exec output sink: prints each line as it arrives and advances a tqdm bar on rank 0's steps."""

    def __init__(self, total_steps: int | None = None, *, echo: bool = True, stream=None):
        from tqdm.auto import tqdm

        self.echo, self.stream = echo, stream or sys.stdout
        self.lines: list[str] = []
        self._partial = ""
        self.bar = tqdm(total=total_steps, desc="rank 0 steps", unit="step", leave=True, file=sys.stderr)

    def __call__(self, text: str) -> None:
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            self.lines.append(line)
            if METRIC_TAG in line:
                for metric in parse_metrics(line):
                    if metric.get("event") == "step" and metric.get("rank") == 0:
                        self.bar.update(1)
                        self.bar.set_postfix(loss=f"{metric['loss']:.4f}")
                continue  # metric lines go to the plot, not the screen
            if self.echo:
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self._partial:
            self.lines.append(self._partial)
            self._partial = ""
        self.bar.close()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def hostfile_rows(text: str) -> list[dict[str, Any]]:
    """The hostfile's `host slots=N` lines as rows (comments skipped), in file order."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s*([^#\s]\S*)\s+slots=(\d+)", line)
        if m:
            rows.append({"host": m.group(1), "slots": int(m.group(2))})
    return rows


def summarize_training(metrics: list[dict], returncode: int) -> dict[str, Any]:
    """What the ranks reported: world size, ranks seen, steps, first/last loss per rank, the all-reduce check."""
    steps = [m for m in metrics if m.get("event") == "step"]
    done = [m for m in metrics if m.get("event") == "done"]
    ranks = sorted({m["rank"] for m in steps} | {m["rank"] for m in done})
    per_rank = {}
    for rank in ranks:
        mine = sorted((m for m in steps if m["rank"] == rank), key=lambda m: m["step"])
        if mine:
            per_rank[rank] = {"steps": len(mine), "loss_first": mine[0]["loss"], "loss_last": mine[-1]["loss"]}
    world = max((m.get("world_size", 0) for m in steps + done), default=0)
    allreduce_ok = bool(done) and all(m["allreduce_sum"] == m["allreduce_expected"] for m in done)
    first = [v["loss_first"] for v in per_rank.values()]
    last = [v["loss_last"] for v in per_rank.values()]
    return {
        "returncode": returncode, "world_size": world, "ranks": ranks, "ranks_finished": sorted(m["rank"] for m in done),
        "per_rank": per_rank, "steps": max((v["steps"] for v in per_rank.values()), default=0),
        "loss_first_mean": sum(first) / len(first) if first else None,
        "loss_last_mean": sum(last) / len(last) if last else None,
        "allreduce_ok": allreduce_ok, "backend": done[0].get("backend") if done else None,
        "zero_stage": done[0].get("zero_stage") if done else None,
    }


def loss_figure(metrics: list[dict]):
    """Loss per step, one line per rank (each rank trains on its own data shard, so the curves differ a little)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    steps = [m for m in metrics if m.get("event") == "step"]
    for rank in sorted({m["rank"] for m in steps}):
        mine = sorted((m for m in steps if m["rank"] == rank), key=lambda m: m["step"])
        ax.plot([m["step"] for m in mine], [m["loss"] for m in mine], marker=".", label=f"rank {rank}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE loss (own shard)")
    ax.set_yscale("log")
    ax.set_title("DeepSpeed ranks training inside the job")
    ax.grid(True, alpha=0.3)
    if steps:
        ax.legend()
    fig.tight_layout()
    return fig


__all__ = ["CLUSTER_HOSTFILE", "InteractivePlan", "TrainingProgress", "hostfile_rows", "loss_figure",
           "plan_interactive_job", "resolve_accelerator", "summarize_training"]

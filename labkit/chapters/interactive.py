"""Notebook 03, the interactive MPIJob session: the chapter's parameters validated into a backend, a job spec and a
training command; live training progress; a summary and a figure of what the ranks reported.

The same code drives both backends: it asks the backend what differs (which accelerator a `device` gets there,
whether every rank runs on this one host), never which backend it is.
"""

from __future__ import annotations

import atexit
import contextlib
import html
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from labkit import launch, manifests, progress, tabular
from labkit.chapters import exercises
from labkit.errors import ConfigError, check_int, check_number
from labkit.jobs import CLUSTER_HOSTFILE, JobBackend, LocalBackend, get_backend

HELLO_MODULE = "labkit.ranks.hello"  # the small DeepSpeed script the default command runs in every rank
METRIC_TAG = "LABKIT_METRIC"  # what the rank script prints before each JSON record
NO_RANK_REPORTED = "no rank reported a world size: the command was not the kit's training, or it failed first"


def training_command(backend: JobBackend, *, steps: int = 20, extra_args: list[str] | None = None) -> list[str]:
    """What a user types in an MPIJob launcher: DeepSpeed's openmpi launcher over the operator's hostfile
    (`launch.cluster_deepspeed`). `--module`: the script ships inside the labkit package of the image."""
    rank_script = ["--module", HELLO_MODULE, "--steps", str(steps), *(extra_args or [])]
    if not backend.one_host:
        return [*launch.cluster_deepspeed(CLUSTER_HOSTFILE, manifests.SSH_PORT), *rank_script]
    launch.require_mpi("train_command", "openmpi", instead="pass your own train_command")
    # One host: the job answers DeepSpeed's ssh probes itself; Open MPI gets its single-machine options.
    line = ["--hostfile", CLUSTER_HOSTFILE, "--force_multi", "--launcher", "openmpi"]
    return [*launch.job_deepspeed(), *line, "--launcher_args", shlex.join(launch.local_mpi_args()), *rank_script]


def shown_line(argv: list[str]) -> str:
    """A command as the learner types it: `deepspeed ...`, not this machine's `/path/python -m deepspeed...`."""
    return shlex.join(launch.shown_command(argv))


def parse_train_command(text: str) -> list[str]:
    """A notebook's `train_command` string as argv (shell-style quoting)."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        fix = "balance the quotes, or leave it empty for the default DeepSpeed command"
        raise ConfigError("train_command", f"cannot be split into arguments ({exc})", fix) from None
    if not argv:
        raise ConfigError("train_command", "is empty", "leave it empty for the default or give a command")
    return argv


def parse_metrics(output: str) -> list[dict]:
    """The `LABKIT_METRIC {json}` records a rank script printed, in order.

    Tolerates mpirun's `[1,r]<stdout>:` prefixes and two ranks' records glued onto one line (Open MPI's
    --tag-output forwards whatever chunk a rank wrote, so a line can end in the middle of another rank's output).
    """
    decoder, marker = json.JSONDecoder(), METRIC_TAG + " "
    metrics = []
    for line in output.splitlines():
        start = line.find(marker)
        while start >= 0:
            try:
                value, end = decoder.raw_decode(line, start + len(marker))
            except json.JSONDecodeError:
                end = start + len(marker)
            else:
                if isinstance(value, dict):
                    metrics.append(value)
            start = line.find(marker, end)
    return metrics


@dataclass
class InteractivePlan:
    """Everything the chapter needs, validated before anything is submitted."""

    backend: JobBackend
    spec: manifests.JobSpec  # resolved: slots, image... filled in from the overlay
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
        return shown_line(self.train_argv)

    def manifest_yaml(self, kind: str | None = "MPIJob") -> str:
        return manifests.to_yaml([o for o in self.objects if kind is None or o["kind"] == kind])

    def manifest_details(self, kind: str = "MPIJob") -> str:
        """The whole manifest as HTML, folded: the key fields come first; 160 lines of YAML are one click away."""
        text = self.manifest_yaml(kind)
        summary = f"The whole {kind}: {text.count(chr(10))} lines of YAML (click to open)"
        return f"<details><summary>{summary}</summary><pre>{html.escape(text)}</pre></details>"

    def key_fields(self) -> list[dict[str, str]]:
        """The MPIJob fields the chapter's text asks the learner to note, read from the rendered object."""
        job = next(o for o in self.objects if o["kind"] == "MPIJob")
        spec, replicas = job["spec"], job["spec"]["mpiReplicaSpecs"]
        launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
        worker = replicas["Worker"]["template"]["spec"]["containers"][0]
        command = shlex.join(launcher.get("command", []) + launcher.get("args", []))
        rows = [
            ("spec.mpiReplicaSpecs.Launcher...command", command,
             "the launcher idles: you exec the training into it"),
            ("spec.slotsPerWorker", str(spec.get("slotsPerWorker")), "ranks per worker: one per GPU/HPU of the pod"),
            ("spec.runPolicy.activeDeadlineSeconds", str(spec.get("runPolicy", {}).get("activeDeadlineSeconds")),
             "the safety net: the job ends and frees its accelerators after this"),
            ("spec.launcherCreationPolicy", str(spec.get("launcherCreationPolicy")),
             "the launcher starts only when every worker is ready"),
            ("spec.mpiReplicaSpecs.Worker.replicas", str(replicas["Worker"].get("replicas")), "worker pods"),
            ("Worker...readinessProbe", "yes" if worker.get("readinessProbe") else "none",
             "a worker is ready when its sshd accepts connections"),
        ]  # fmt: skip
        return [{"field": f, "value": v, "why": w} for f, v, w in rows]

    def equivalents(self, step: str) -> str:
        """What a learner types for one step of the chapter outside the notebook: the kubectl line on a cluster and
        the `labkit job` line that does the same on either backend."""
        s, ns = self.spec, f"-n {self.spec.namespace}"
        launcher = f"job/{s.name}-launcher"  # the operator's launcher Job; kubectl exec picks its pod
        job = f"--backend {self.backend.name} -n {s.namespace}"
        given = {"--queue": s.queue, "--http-proxy": s.http_proxy, "--https-proxy": s.https_proxy}
        extra = "".join(f" {flag} {value}" for flag, value in {**given, "--no-proxy": s.no_proxy}.items() if value)
        lines = {
            "submit": (
                f"kubectl apply {ns} -f mpijob.yaml   # the YAML above",
                f"labkit job submit {job} --name {s.name} --workers {s.workers} --slots {s.slots_per_worker}{extra} "
                "--wait 300",
            ),
            "wait": (
                f"kubectl wait {ns} --for=condition=Ready pod -l training.kubeflow.org/job-name={s.name} "
                "--timeout=300s",
                f"labkit job status {job} {s.name}",
            ),
            "hostfile": (
                f"kubectl exec {ns} {launcher} -- cat {CLUSTER_HOSTFILE}",
                f"labkit job exec {job} {s.name} -- cat {CLUSTER_HOSTFILE}",
            ),
            "shell": (
                f"kubectl exec -it {ns} {launcher} -- bash   # then type the command, as often as you like",
                f"labkit job exec {job} {s.name} -- {self.command_line}",
            ),
            "delete": (f"kubectl delete mpijob {ns} {s.name}", f"labkit job delete {job} {s.name}"),
        }
        if step not in lines:
            raise ConfigError("step", f"{step!r} is not a step of the chapter", f"use one of {', '.join(lines)}")
        kubectl, labkit = lines[step]
        return f"on a cluster:  {kubectl}\nwith labkit:   {labkit}"

    def describe(self) -> str:
        s = self.spec
        others = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects if o["kind"] != "MPIJob")
        rows = {
            "backend": self.backend.name,
            "job": f"{s.namespace}/{s.name}: {s.workers} worker(s) x {s.slots_per_worker} slot(s) = {self.ranks} "
            f"rank(s), accelerator {s.accelerator} ({self.device_reason})",
            "image": s.image,
            "deadline": f"{s.deadline_seconds / 60:g} min (activeDeadlineSeconds {s.deadline_seconds})",
            "with it": others or "-",
        }
        prose = [tabular.wrapped(str(text), f"{label:<13}") for label, text in rows.items()]
        return "\n".join([*prose, f"{'train':<13}{self.command_line}"])  # the command whole, to copy


def plan_interactive_job(
    *, backend="local", namespace="", name="deepspeed-interactive", workers=0, slots=1, device="auto",
    image="", deadline_minutes=30.0, train_command="", steps=30, ready_timeout_s=300.0, kubeconfig="", jobs_dir=None,
    http_proxy="", https_proxy="", no_proxy="", queue="",
) -> InteractivePlan:  # fmt: skip
    """Validate notebook 03's parameters (one ConfigError naming the parameter) and build the plan. Submits nothing.

    workers=0: automatic (the backend says how many and why); namespace="": manifests.default_namespace(accelerator)
    (the lab's own, else workloads; Gaudi jobs: <that>-gaudi)."""
    check_int("workers", workers, 0, maximum=64)
    check_int("slots", slots, 1, maximum=64)
    check_int("steps", steps, 1, maximum=10**5)
    release = "pass e.g. 30: the job and its accelerators are released after that many minutes"
    check_number("deadline_minutes", deadline_minutes, 1.0, release)
    if deadline_minutes > 30 * 24 * 60:  # named in minutes, not as the JobSpec's deadline_seconds
        raise ConfigError("deadline_minutes", f"{deadline_minutes:g} is more than 30 days", release)
    check_number("ready_timeout_s", ready_timeout_s, 0.0, "pass e.g. 300", strict=True)
    where = dict(jobs_dir=jobs_dir, kubeconfig=kubeconfig or None)
    job_backend = get_backend(backend, namespace=namespace or None, **where)
    accelerator, workers, reason = job_backend.accelerator_for(device, workers, slots)
    namespace = namespace or manifests.default_namespace(accelerator)
    if namespace != job_backend.namespace:  # e.g. Gaudi's hostIPC: a privileged namespace of its own
        job_backend = get_backend(backend, namespace=namespace, **where)
    # resolved(): validates every field (ConfigError naming it) and fills the overlay's defaults.
    spec = manifests.JobSpec(
        name=name, namespace=namespace, image=image or None, workers=workers, slots_per_worker=slots,
        accelerator=accelerator, deadline_seconds=int(round(deadline_minutes * 60)),
        http_proxy=http_proxy or None, https_proxy=https_proxy or None, no_proxy=no_proxy or None, queue=queue or None,
    ).resolved()  # fmt: skip
    default = not train_command.strip()
    argv = training_command(job_backend, steps=steps) if default else parse_train_command(train_command)
    objects = manifests.render_all(spec)
    return InteractivePlan(job_backend, spec, argv, default, steps, device_reason=reason, objects=objects)


class TrainingProgress:
    """An exec output sink: prints each line as it arrives and advances a tqdm bar on rank 0's steps. With no known
    step count (the learner's own command) the bar appears at rank 0's first step: a command that reports none
    (`hostname`) leaves no empty bar behind."""

    def __init__(self, total_steps: int | None = None, *, echo: bool = True, stream=None):
        self.echo, self.stream, self.total_steps = echo, stream or sys.stdout, total_steps
        self.lines: list[str] = []
        self._partial = ""
        self.bar = self._new_bar() if total_steps else None

    def _new_bar(self):
        return progress.bar(self.total_steps, desc="rank 0 steps", leave=True, file=sys.stderr)

    def __call__(self, text: str) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self.lines.append(line)
            if METRIC_TAG in line:  # metric lines go to the plot, not the screen
                for metric in parse_metrics(line):
                    if metric.get("event") == "step" and metric.get("rank") == 0:
                        self.bar = self.bar or self._new_bar()
                        self.bar.set_postfix(loss=f"{metric['loss']:.4f}", refresh=False)
                        progress.advance(self.bar)
            elif self.echo:
                self.stream.write(tabular.short_paths(line) + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self._partial:
            self.lines.append(self._partial)
            self._partial = ""
        if self.bar is not None:
            self.bar.close()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def hostfile_rows(text: str) -> list[dict[str, Any]]:
    """The hostfile's `host slots=N` lines as rows (comments skipped), in file order."""
    matches = (re.match(r"^\s*([^#\s]\S*)\s+slots=(\d+)", line) for line in text.splitlines())
    return [{"host": m.group(1), "slots": int(m.group(2))} for m in matches if m]


def _steps_by_rank(metrics: list[dict]) -> dict[int, list[dict]]:
    steps = [m for m in metrics if m.get("event") == "step"]
    return {
        r: sorted((m for m in steps if m["rank"] == r), key=lambda m: m["step"]) for r in {m["rank"] for m in steps}
    }


def summarize_training(metrics: list[dict], returncode: int) -> dict[str, Any]:
    """What the ranks reported: world size, ranks seen, steps, first/last loss per rank, the all-reduce check."""
    by_rank = _steps_by_rank(metrics)
    done = [m for m in metrics if m.get("event") == "done"]
    per_rank = {
        r: {"steps": len(mine), "loss_first": mine[0]["loss"], "loss_last": mine[-1]["loss"]}
        for r, mine in sorted(by_rank.items())
    }
    first = [v["loss_first"] for v in per_rank.values()]
    last = [v["loss_last"] for v in per_rank.values()]
    reported = [m for mine in by_rank.values() for m in mine] + done
    return {
        "returncode": returncode,
        "world_size": max((m.get("world_size", 0) for m in reported), default=0),
        "ranks": sorted(set(by_rank) | {m["rank"] for m in done}),
        "ranks_finished": sorted(m["rank"] for m in done),
        "per_rank": per_rank,
        "steps": max((v["steps"] for v in per_rank.values()), default=0),
        "steps_least": min((v["steps"] for v in per_rank.values()), default=0),
        "loss_first_mean": sum(first) / len(first) if first else None,
        "loss_last_mean": sum(last) / len(last) if last else None,
        "allreduce_ok": bool(done) and all(m["allreduce_sum"] == m["allreduce_expected"] for m in done),
        "backend": done[0].get("backend") if done else None,
        "zero_stage": done[0].get("zero_stage") if done else None,
    }


def steps_each(summary: dict) -> str:
    """'20 step(s) each', or the range when the ranks stopped at different steps (one died first)."""
    most, least = summary["steps"], summary.get("steps_least", summary["steps"])
    return f"{most} step(s) each" if most == least else f"{least} to {most} step(s) (the ranks stopped apart)"


def exec_again(plan: InteractivePlan, job, command: str = "") -> str:
    """Step 4: `command` exec'd again in the living job (empty: the training again, 5 steps of the chapter's command,
    or the learner's own train_command as it was); what to print. A job that has ended (its deadline) says so."""
    st = job.status()
    if not st.ready:
        return f"the job is {st.phase} ({st.message}): nothing runs in it any more; submit it again to go on"
    if command.strip():
        argv = parse_train_command(command)
    else:
        argv = training_command(plan.backend, steps=5) if plan.default_command else plan.train_argv
    again = job.run(argv, on_output=None)
    return (f"$ {shown_line(argv)}\nexit code {again.returncode} after {again.duration_s:.1f} s; the job still lives: "
            f"{job.status().phase}")  # fmt: skip


def check_world_size_prediction(prediction: float | None, summary: dict) -> str:
    """Notebook 03's exercise: the prediction against the world size the ranks reported; where no rank reported one
    (the learner's own command, a training dead first) there is no answer to score, and the line says why."""
    line = exercises.verdict(prediction, summary["world_size"], name="my_world_size")  # a bad prediction: ConfigError
    return line if summary["world_size"] or prediction is None else f"Nothing to check it against: {NO_RANK_REPORTED}."


def world_size_solution(plan: InteractivePlan, rows: list[dict], summary: dict) -> str:
    """The exercise's solution: workers x slots, the hostfile's slots and what the ranks reported (if any did)."""
    spec, world = plan.spec, summary["world_size"]
    reported = f"the ranks reported {world}" if world else NO_RANK_REPORTED
    return (f"{spec.workers} worker(s) x {spec.slots_per_worker} slot(s) = {plan.ranks} rank(s); the hostfile listed "
            f"{sum(r['slots'] for r in rows)} slot(s) and {reported}.")  # fmt: skip


def closing_note(plan: InteractivePlan, rows: list[dict], training, summary: dict, *, deleted: bool) -> str:
    """The chapter's closing paragraph: the job, its hostfile, the exec (`training`: an ExecResult), what the ranks
    reported (`summary`: summarize_training's) and whether the job is gone, every number from this run."""
    spec, loss = plan.spec, summary["loss_first_mean"]
    failure = f" ({training.failure})" if training.failure else ""
    losses = (f"the mean loss went from {loss:.3f} to {summary['loss_last_mean']:.3f}." if loss is not None
              else "no loss was reported.")  # fmt: skip
    ranks = [
        f"{len(summary['ranks'])} rank(s) reported (world size {summary['world_size']}, backend {summary['backend']},",
        f"ZeRO stage {summary['zero_stage']}), {steps_each(summary)}; {losses}",
        f"The all-reduce check {'held on every rank' if summary['allreduce_ok'] else 'did NOT hold'}.",
    ] if summary["world_size"] else [f"{NO_RANK_REPORTED}."]  # fmt: skip
    return " ".join([
        f"On the **{plan.backend.name}** backend, job `{spec.namespace}/{spec.name}` ({spec.workers} worker(s) x "
        f"{spec.slots_per_worker} slot(s)) became ready, and its hostfile listed {len(rows)} host line(s) with "
        f"{sum(r['slots'] for r in rows)} slot(s).",
        f"The training command exited with code **{training.returncode}** after {training.duration_s:.0f} s{failure}:",
        *ranks,
        f"The job was {'deleted (the backend no longer lists it)' if deleted else 'NOT deleted'}.",
    ])  # fmt: skip


def loss_view(metrics: list[dict], summary: dict):
    """The loss chart (loss_figure), or why there is none: an empty chart says nothing."""
    if summary["steps"]:
        return loss_figure(metrics)
    return f"No loss chart: {NO_RANK_REPORTED if not summary['world_size'] else 'no rank reported a training step'}."


def loss_figure(metrics: list[dict]):
    """Loss per step, one line per rank (each rank trains on its own data shard, so the curves differ a little)."""
    from matplotlib.figure import Figure

    from labkit.plots import log_y

    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    by_rank = _steps_by_rank(metrics)
    for rank, mine in sorted(by_rank.items()):
        ax.plot([m["step"] for m in mine], [m["loss"] for m in mine], marker=".", label=f"rank {rank}")
    ax.set(xlabel="optimizer step", ylabel="MSE loss (own shard)")
    log_y(ax)
    ax.set_title("DeepSpeed ranks training inside the job")
    ax.grid(True, alpha=0.3)
    if by_rank:
        ax.legend()
    fig.tight_layout()
    return fig


def delete_at_exit(job) -> None:
    """Delete `job` when this kernel exits, also after a failed cell (papermill then shuts the kernel down): the
    chapter's steps live in separate cells, so no single `finally` spans them. A kernel killed outright (OOM, kill -9,
    its runner killed) runs no atexit: a local job's launcher watches the kernel too. The deadline is the last net."""
    atexit.register(_delete_quietly, job)
    if isinstance(job.backend, LocalBackend):
        job.backend.end_with(job.name, os.getpid(), namespace=job.namespace)


def _delete_quietly(job) -> None:
    with contextlib.suppress(Exception):  # at interpreter exit there is no one left to tell
        job.delete()

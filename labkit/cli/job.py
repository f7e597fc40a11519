"""`labkit job render|submit|status|exec|logs|delete|list`: interactive MPI jobs on the local or kubernetes backend.

labkit job submit --name demo --workers 2              # local processes by default; --backend kubernetes
labkit job exec demo -- cat /etc/mpi/hostfile          # exit code = the command's
labkit job exec demo --train --steps 20                # the default `deepspeed --hostfile ... --launcher openmpi`
labkit job list                                        # PAST DEADLINE flags forgotten jobs
labkit job list --stale --delete                       # remove finished MPIJobs/TrainJobs (no TTL does)
labkit job delete demo                                 # an MPIJob or a TrainJob; both named so: --kind
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time

from labkit import manifests
from labkit.chapters.interactive import training_command
from labkit.devices import ACCELERATORS, DEVICE_OF
from labkit.errors import ConfigError, LabkitError, check_int, check_number, named_as
from labkit.jobs import BACKENDS, Job, LocalBackend, get_backend
from labkit.jobs.base import FINISHED, JOB_KINDS
from labkit.jobs.k8s_objects import job_command
from labkit.tabular import text_table

# Each action's arguments as data: (flags, add_argument keywords).
BACKEND_OPTIONS = [
    (["--backend"], dict(choices=BACKENDS, default="local", help="local: processes here; kubernetes: MPIJobs")),
    (["-n", "--namespace"], dict(default=None, help=f"namespace (default: {manifests.DEFAULT_NAMESPACE})")),
    (["--kubeconfig"], dict(default=None, help="kubeconfig file (kubernetes; default $KUBECONFIG, ~/.kube/config)")),
    (["--context"], dict(default=None, help="kubeconfig context (kubernetes)")),
    (["--jobs-dir"], dict(default=None, help="where local jobs live (default $LABKIT_JOBS_DIR or ~/.local/state/...)")),
]
SPEC_OPTIONS = [
    (["--name"], dict(default="deepspeed-interactive", help="job name (default: deepspeed-interactive)")),
    (["--workers"], dict(type=int, default=0, help="worker pods (local: groups of ranks here); 0: automatic")),
    (["--slots"], dict(type=int, default=None, help="ranks per worker (GPUs/HPUs per worker; default: overlay)")),
    (["--accelerator"], dict(choices=("auto", *ACCELERATORS), default="auto", help="overlay (auto: what's there)")),
    (["--image"], dict(default=None, help="container image (default: the overlay's)")),
    (["--deadline-minutes"], dict(type=float, default=240.0, help="the job is stopped after this many minutes")),
    (["--http-proxy"], dict(default=None, help="HTTP_PROXY for every pod of the job (a ConfigMap, never the image)")),
    (["--https-proxy"], dict(default=None, help="HTTPS_PROXY for every pod (default: --http-proxy)")),
    (["--no-proxy"], dict(default=None, help="NO_PROXY additions (the cluster's own names are always added)")),
    (["--queue"], dict(default=None, help="kubernetes: the Kueue LocalQueue to submit to (default: none)")),
]
EXEC_OPTIONS = [
    (["--timeout"], dict(type=float, default=None, help="stop the command (and its ranks) after SECONDS")),
    (["--train"], dict(action="store_true", help="run the default DeepSpeed training command")),
    (["--steps"], dict(type=int, default=20, help="training steps for --train")),
]
NAME = [(["name"], {})]
KIND = [(["--kind"], dict(choices=JOB_KINDS, default=None, help="kubernetes: which one (default: whichever exists)"))]
WAIT = [(["--wait"], dict(type=float, default=None, metavar="SECONDS", help="wait until ready (default: don't)"))]
ALL_NAMESPACES = [(["-A", "--all-namespaces"], dict(action="store_true", help="every namespace"))]
STALE = [
    (["--stale"], dict(action="store_true", help="only finished jobs (MPIJobs, TrainJobs) and those past deadline")),
    (["--delete"], dict(action="store_true", help="with --stale: delete them (a finished MPIJob stays until deleted)")),
]
ARGV = [(["argv"], dict(nargs=argparse.REMAINDER, help="[OPTIONS] -- COMMAND [ARGS...]"))]


def _add(parser: argparse.ArgumentParser, options: list, *, suppress_defaults: bool = False) -> None:
    for flags, keywords in options:
        parser.add_argument(*flags, **({**keywords, "default": argparse.SUPPRESS} if suppress_defaults else keywords))


def _backend(a):
    where = dict(jobs_dir=a.jobs_dir, kubeconfig=a.kubeconfig, context=a.context)
    typed = {field: f"--{field}" for field in ("kubeconfig", "context") if getattr(a, field)}  # not $KUBECONFIG's
    with named_as(typed):  # a kubeconfig's errors name the flag as typed
        backend = get_backend(a.backend, namespace=a.namespace, **where)
        if typed and a.backend == "kubernetes":
            _ = backend.api_client  # loaded now, not at its first call (the client is lazy)
    if a.jobs_dir is not None and isinstance(backend, LocalBackend):
        backend.root_field = "--jobs-dir"  # its errors name the flag as typed
    return backend


def _spec(args, backend=None) -> manifests.JobSpec:
    """The job the options describe; with a backend, auto accelerator and workers resolved by it (else cpu, 2)."""
    check_number("--deadline-minutes", args.deadline_minutes, 1.0, "pass 1 or more minutes")
    accelerator, workers, args.why = ("cpu" if args.accelerator == "auto" else args.accelerator), args.workers or 2, ""
    if backend is not None:
        device = "auto" if args.accelerator == "auto" else DEVICE_OF[args.accelerator]
        accelerator, workers, args.why = backend.accelerator_for(device, args.workers, args.slots or 1)
    return manifests.JobSpec(  # namespace None: JobSpec's default_namespace(accelerator), the lab's own
        name=args.name, namespace=args.namespace or None, image=args.image, workers=workers,
        slots_per_worker=args.slots, accelerator=accelerator, deadline_seconds=int(round(args.deadline_minutes * 60)),
        http_proxy=args.http_proxy, https_proxy=args.https_proxy, no_proxy=args.no_proxy, queue=args.queue,
    )  # fmt: skip


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _render(args) -> int:
    print(manifests.to_yaml(manifests.render_all(_spec(args))), end="")
    return 0


def _submit(args) -> int:
    if args.wait is not None:  # before the submit: a job made and then waited on for no time would be deleted
        check_number("--wait", args.wait, 0.0, "pass the seconds to wait until the job is ready, e.g. 300")
    backend = _backend(args)
    spec = _spec(args, backend)
    job = backend.submit(spec)
    shape = f"{spec.workers} worker(s), {spec.accelerator} ({args.why})"
    print(f"submitted {args.backend} job {job.namespace}/{job.name}: {shape}")
    for note in job.notes:
        print(f"note: {note}")
    if args.wait:
        st = job.wait_ready(timeout=args.wait)
        print(f"ready: launcher accepts exec (deadline {_when(st.deadline)})")
    print(f"next: labkit job exec {job.name} --backend {args.backend} -n {job.namespace} -- cat {job.hostfile_path}")
    return 0


def _status(args) -> int:
    for key, value in _backend(args).status(args.name, kind=args.kind).as_dict().items():
        print(f"{key:17} {_when(value) if key in ('created', 'deadline') else value}")
    return 0


def _command(args) -> list[str]:
    """The command to exec; the options between NAME and it (`exec NAME --timeout 5 -- CMD`, kubectl's order, or
    `exec NAME --train --steps 20` without `--`) set on args: argparse's REMAINDER after NAME took them as the
    command. Options stop at the first word that is none (or `--`): the command's own options stay its own."""
    parser = argparse.ArgumentParser(prog="labkit job exec NAME", add_help=False)
    _add(parser, BACKEND_OPTIONS + EXEC_OPTIONS, suppress_defaults=True)  # only what is given here overrides
    parser.add_argument("exec_argv", nargs=argparse.REMAINDER, metavar="[--] COMMAND [ARGS...]")
    argv = parser.parse_args(args.argv, namespace=args).exec_argv
    return argv[1:] if argv[:1] == ["--"] else argv  # argparse (3.10-3.13) keeps the `--` before a REMAINDER


def _exec(args) -> int:
    argv = _command(args)
    if args.train:  # before the job is looked up, and long before DeepSpeed starts
        check_int("--steps", args.steps, 1, "pass the training steps, e.g. --steps 20")
    backend = _backend(args)
    if args.train:
        if argv:
            raise ConfigError("--train", "was given together with a command", "use either --train or -- COMMAND")
        argv = training_command(backend, steps=args.steps)
        print(f"$ {shlex.join(argv)}", flush=True)
    if not argv:
        fix = f"labkit job exec {args.name} -- COMMAND [ARGS...], or --train"
        raise ConfigError("command", "no command given", fix)
    code = Job(backend, args.name).exec(argv, timeout=args.timeout)
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N (sys.exit(-15) would give 241)


def _logs(args) -> int:
    sys.stdout.write(_backend(args).logs(args.name))
    return 0


def _delete(args) -> int:
    backend = _backend(args)
    existed, where = backend.delete(args.name, kind=args.kind), f"{backend.namespace}/{args.name}"
    if existed and _still_terminating(backend, args.name, args.kind):  # exit code 0: the deletion goes on
        again = job_command("status", args.name, backend.namespace)  # only kubernetes jobs terminate
        print(f"{where}: deletion started, still terminating (pods stuck?): `{again}` says when")
    else:
        print(f"deleted {where}" if existed else f"{where} did not exist")
    return 0


def _still_terminating(backend, name: str, kind: str | None, namespace: str | None = None) -> bool:
    """A job the backend's delete waited for whose pods have not gone (a node not answering keeps them)."""
    with contextlib.suppress(LabkitError):  # gone: JobNotFound
        return backend.status(name, namespace=namespace, kind=kind).phase == "Terminating"
    return False


def _list(args) -> int:
    if args.delete and not args.stale:
        raise ConfigError("--delete", "deletes only what --stale selects", "pass --stale --delete")
    backend = _backend(args)
    jobs = backend.list(namespace="*" if args.all_namespaces else None)
    # Finished MPIJobs stay (the operator's TTL removes only the launcher Job) and keep their names; so do TrainJobs.
    if args.stale:
        jobs = [st for st in jobs if st.phase in FINISHED or st.past_deadline]
    if not jobs:
        print("no stale jobs" if args.stale else "no jobs")
        return 0
    rows = [
        {"NAMESPACE": st.namespace, "KIND": st.kind, "NAME": st.name, "PHASE": st.phase,
         "READY": "yes" if st.ready else "no", "WORKERSxSLOTS": f"{st.workers or '?'}x{st.slots_per_worker or '?'}",
         "DEADLINE": _when(st.deadline), "FLAG": "PAST DEADLINE" if st.past_deadline else ""}
        for st in jobs
    ]  # fmt: skip
    print(text_table(rows, list(rows[0])))
    for st in jobs if args.delete else []:
        backend.delete(st.name, namespace=st.namespace, kind=st.kind)
        where = f"{st.kind} {st.namespace}/{st.name} ({st.phase})"
        if _still_terminating(backend, st.name, st.kind, st.namespace):  # as `job delete`
            print(f"{where}: deletion started, still terminating (pods stuck?)")
        else:
            print(f"deleted {where}")
    return 0


ACTIONS = {  # action: (help, handler, its arguments besides the backend options)
    "render": ("print the manifests a submit would create (YAML)", _render, SPEC_OPTIONS),
    "submit": ("create the job (launcher: `sleep infinity`), optionally wait for it", _submit, SPEC_OPTIONS + WAIT),
    "status": ("one job's phase, readiness and deadline", _status, NAME + KIND),
    "exec": ("run a command in the job's launcher (exit code = the command's)", _exec, NAME + EXEC_OPTIONS + ARGV),
    "logs": ("the launcher's log", _logs, NAME),
    "delete": ("stop the job and everything it started", _delete, NAME + KIND),
    "list": ("jobs, flagging those past their deadline", _list, ALL_NAMESPACES + STALE),
}


def register(subparsers) -> None:
    job = subparsers.add_parser("job", help="interactive MPI jobs: render, submit, exec, logs, delete, list")
    sub = job.add_subparsers(dest="job_command", metavar="ACTION")
    for action, (help_text, handler, options) in ACTIONS.items():
        parser = sub.add_parser(action, help=help_text)
        _add(parser, BACKEND_OPTIONS + options)
        parser.set_defaults(func=handler)
    job.set_defaults(func=lambda args: (job.print_help(), 2)[1])

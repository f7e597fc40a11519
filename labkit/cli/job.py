"""`labkit job render|submit|status|exec|logs|delete|list`: interactive MPI jobs on the local or kubernetes backend.

labkit job submit --name demo --workers 2              # local processes by default; --backend kubernetes
labkit job exec demo -- cat /etc/mpi/hostfile          # exit code = the command's
labkit job exec demo --train --steps 20                # the default `deepspeed --hostfile ... --launcher openmpi`
labkit job list                                        # PAST DEADLINE flags forgotten jobs
labkit job delete demo
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from labkit.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["local", "kubernetes"],
        default="local",
        help="local: processes on this machine (default); kubernetes: MPIJobs on your kubeconfig's cluster",
    )
    p.add_argument("-n", "--namespace", default="workloads", help="namespace (default: workloads)")
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (kubernetes; default $KUBECONFIG, ~/.kube/config)"
    )
    p.add_argument("--context", default=None, help="kubeconfig context (kubernetes)")
    p.add_argument(
        "--jobs-dir",
        default=None,
        help="where local jobs live (default $LABKIT_JOBS_DIR or ~/.local/state/labkit/jobs)",
    )


def _spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="deepspeed-interactive", help="job name (default: deepspeed-interactive)")
    p.add_argument("--workers", type=int, default=2, help="worker pods (local: groups of ranks on this host)")
    p.add_argument("--slots", type=int, default=None, help="ranks per worker (GPUs/HPUs per worker; default: overlay)")
    p.add_argument("--accelerator", choices=["cpu", "nvidia", "gaudi"], default="cpu", help="overlay to render")
    p.add_argument("--image", default=None, help="container image (default: the overlay's)")
    p.add_argument(
        "--deadline-minutes", type=float, default=240.0, help="the job is stopped after this many minutes (default 240)"
    )


def register(subparsers) -> None:
    job = subparsers.add_parser("job", help="interactive MPI jobs: render, submit, exec, logs, delete, list")
    sub = job.add_subparsers(dest="job_command", metavar="ACTION")

    p = sub.add_parser("render", help="print the manifests a submit would create (YAML)")
    _common(p)
    _spec_options(p)
    p.set_defaults(func=_render)

    p = sub.add_parser("submit", help="create the job (launcher: `sleep infinity`) and optionally wait for it")
    _common(p)
    _spec_options(p)
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait until ready (default: don't)")
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="one job's phase, readiness and deadline")
    _common(p)
    p.add_argument("name")
    p.set_defaults(func=_status)

    p = sub.add_parser("exec", help="run a command in the job's launcher (exit code = the command's)")
    _common(p)
    p.add_argument("name")
    _exec_flags(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="[OPTIONS] -- COMMAND [ARGS...]")
    p.set_defaults(func=_exec)

    p = sub.add_parser("logs", help="the launcher's log")
    _common(p)
    p.add_argument("name")
    p.set_defaults(func=_logs)

    p = sub.add_parser("delete", help="stop the job and everything it started")
    _common(p)
    p.add_argument("name")
    p.set_defaults(func=_delete)

    p = sub.add_parser("list", help="jobs, flagging those past their deadline")
    _common(p)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.set_defaults(func=_list)
    job.set_defaults(func=lambda args: (job.print_help(), 2)[1])


def _backend(args):
    from labkit.jobs import get_backend

    if args.backend == "local":
        return get_backend("local", root=args.jobs_dir, namespace=args.namespace)
    return get_backend("kubernetes", kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace)


def _spec(args):
    from labkit.manifests import MpiJobSpec

    if not args.deadline_minutes or args.deadline_minutes <= 0:
        raise ConfigError(
            "--deadline-minutes", f"must be positive, got {args.deadline_minutes}", "pass minutes > 0 (at least 1)"
        )
    return MpiJobSpec(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        workers=args.workers,
        slots_per_worker=args.slots,
        accelerator=args.accelerator,
        deadline_seconds=int(round(args.deadline_minutes * 60)),
    )


def _render(args) -> int:
    from labkit import manifests

    print(manifests.to_yaml(_backend(args).render(_spec(args))), end="")
    return 0


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _submit(args) -> int:
    backend = _backend(args)
    job = backend.submit(_spec(args))
    print(f"submitted {args.backend} job {job.namespace}/{job.name}")
    if args.wait:
        st = job.wait_ready(timeout=args.wait)
        print(f"ready: launcher accepts exec (deadline {_when(st.deadline)})")
    print(
        f"next: labkit job exec {job.name} --backend {args.backend} -n {job.namespace} -- cat {backend.hostfile_path}"
    )
    return 0


def _status(args) -> int:
    st = _backend(args).status(args.name)
    for key, value in st.as_dict().items():
        if key in ("created", "deadline"):
            value = _when(value)
        print(f"{key:17} {value}")
    return 0


def _exec(args) -> int:
    from labkit.manifests import MpiJobSpec

    argv = list(args.argv)
    if "--" in argv:
        # `exec NAME --backend kubernetes -n ns -- CMD` (kubectl's order): options between NAME and `--` are ours.
        cut = argv.index("--")
        options, argv = argv[:cut], argv[cut + 1 :]
        if options:
            _exec_options().parse_args(options, namespace=args)
    backend = _backend(args)
    if args.train:
        if argv:
            raise ConfigError("--train", "was given together with a command", "use either --train or -- COMMAND")
        st = backend.status(args.name)
        spec = MpiJobSpec(
            name=st.name, namespace=st.namespace, workers=st.workers or 1, slots_per_worker=st.slots_per_worker
        )
        argv = backend.training_command(spec, steps=args.steps)
        print(f"$ {shlex.join(argv)}", flush=True)
    if not argv:
        raise ConfigError(
            "command", "no command given", f"labkit job exec {args.name} -- COMMAND [ARGS...], or --train"
        )
    return backend.job(args.name).exec(argv, timeout=args.timeout)


def _exec_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit job exec NAME", add_help=False)
    _common(p)
    _exec_flags(p)
    for action in p._actions:  # defaults come from the first parse; only what is given here overrides them
        action.default = argparse.SUPPRESS
    return p


def _exec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, help="stop the command (and its ranks) after SECONDS")
    p.add_argument("--train", action="store_true", help="run the default DeepSpeed training command")
    p.add_argument("--steps", type=int, default=20, help="training steps for --train")


def _logs(args) -> int:
    sys.stdout.write(_backend(args).logs(args.name))
    return 0


def _delete(args) -> int:
    existed = _backend(args).delete(args.name)
    print(f"deleted {args.namespace}/{args.name}" if existed else f"{args.namespace}/{args.name} did not exist")
    return 0


def _list(args) -> int:
    jobs = _backend(args).list(namespace="*" if args.all_namespaces else None)
    if not jobs:
        print("no jobs")
        return 0
    rows = [("NAMESPACE", "NAME", "PHASE", "READY", "WORKERSxSLOTS", "DEADLINE", "FLAG")]
    for st in jobs:
        rows.append(
            (
                st.namespace,
                st.name,
                st.phase,
                "yes" if st.ready else "no",
                f"{st.workers or '?'}x{st.slots_per_worker or '?'}",
                _when(st.deadline),
                "PAST DEADLINE" if st.past_deadline else "",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0

"""`labkit accelerate config`: the answers to `accelerate config` for DeepSpeed as flags, written to a file
`accelerate launch --config_file` reads (checked through accelerate's own loader)."""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from labkit import accelerate_route as route
from labkit.cli.job import BACKEND_OPTIONS, _add, _backend
from labkit.errors import ConfigError, as_flag
from labkit.jobs import Job


def register(subparsers) -> None:
    a = subparsers.add_parser("accelerate", help="the accelerate route to DeepSpeed: write its config file")
    commands = a.add_subparsers(dest="accelerate_command", metavar="SUBCOMMAND", required=True)
    c = commands.add_parser(
        "config",
        help="write an accelerate config file for DeepSpeed (no interactive questions)",
        description="Writes what `accelerate config` asks for interactively, for DeepSpeed. Run it with "
        "`accelerate launch --config_file FILE script.py`; in an MPIJob launcher with --num-machines = worker pods "
        f"and `--deepspeed_hostfile {route.CLUSTER_HOSTFILE} --deepspeed_multinode_launcher openmpi`.",
    )
    c.add_argument("--stage", type=int, required=True, help="ZeRO stage 0-3 (2: parameters fit one device; 3: not)")
    c.add_argument("--num-processes", type=int, required=True, help="TOTAL processes over all machines")
    c.add_argument("--mixed-precision", required=True, help=f"one of {', '.join(route.MIXED_PRECISIONS)}")
    c.add_argument("--offload-optimizer", default="none", help="none | cpu (ZeRO-Offload; stages 1-3)")
    c.add_argument("--offload-param", default="none", help="none | cpu (stage 3, with --offload-optimizer cpu)")
    c.add_argument("--num-machines", type=int, default=1, help="machines (MPIJob worker pods); default 1")
    c.add_argument("--gradient-accumulation-steps", type=int, default=1, help="default 1")
    c.add_argument("--out", default=None, help="file to write (default accelerate_config.yaml)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    into = "write it into this interactive job instead (through exec, to the job's folder on /shared, which all its "
    into += "pods mount) and print the `labkit job exec` line that trains with it there"
    c.add_argument("--job", metavar="NAME", help=into)
    _add(c, BACKEND_OPTIONS)
    c.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    names = ("stage", "num_processes", "mixed_precision", "offload_optimizer", "offload_param", "num_machines")
    config = route.AccelerateConfig(**{n: getattr(args, n) for n in (*names, "gradient_accumulation_steps")})
    try:
        config.validated()
    except ConfigError as exc:  # named as the user typed it
        raise as_flag(exc) from None
    if args.job:
        return _into_job(args, config)
    out = Path(args.out or "accelerate_config.yaml")
    if out.is_dir():  # --force or not: a folder is never overwritten (it was an IsADirectoryError traceback)
        raise ConfigError("--out", f"{out} is a folder", "pass a file name, e.g. --out accelerate_config.yaml")
    if out.exists() and not args.force:
        raise ConfigError("--out", f"{out} exists", "pass --force to overwrite it, or another --out")
    route.load_with_accelerate(config.write(out))  # accelerate's own loader must accept what we wrote
    print(f"wrote {out}: ZeRO-{config.stage}, {config.num_processes} process(es) on {config.num_machines} machine(s)")
    print(f"run: accelerate launch --config_file {out} your_script.py")
    return 0


def _into_job(args: argparse.Namespace, config: route.AccelerateConfig) -> int:
    """The same file, written where the job's launcher reads it; the line to exec is the same on both backends."""
    if args.out is not None:
        fix = f"leave --out out: with --job the file goes to {route.job_run_dir(args.job)}/ (all the job's pods see it)"
        raise ConfigError("--out", "is for a file here, not in a job", fix)
    with tempfile.TemporaryDirectory() as tmp:  # accelerate's own loader must accept what we send
        route.load_with_accelerate(config.write(Path(tmp) / "accelerate_config.yaml"))
    job = Job(_backend(args), args.job)  # in the backend's namespace (-n, or the default)
    plan = route.TrainPlan(config, route.job_run_dir(args.job))
    try:
        argv = route.job_command(plan, job)  # checks the config against the job's workers and slots first
    except ConfigError as exc:  # named as the user typed it
        raise as_flag(exc) from None
    written = route.send_config(plan, job)
    # the job exec line must find the same job: its namespace always, the backend and jobs folder when not defaults
    where = (f" --backend {args.backend}" if args.backend != "local" else "") + f" -n {job.namespace}"
    where += f" --jobs-dir {shlex.quote(str(args.jobs_dir))}" if getattr(args, "jobs_dir", None) else ""
    print(f"wrote {written} in job {job.namespace}/{args.job}: ZeRO-{config.stage}, {config.num_processes} "
          f"process(es) on {config.num_machines} machine(s)")  # fmt: skip
    print(f"run: labkit job exec {args.job}{where} -- {shlex.join(argv)}")
    return 0

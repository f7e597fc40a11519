"""`labkit manifests render|validate`: the kit's Kubernetes objects, rendered with parameters or checked."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from labkit import cluster, kube, manifests
from labkit.devices import ACCELERATORS
from labkit.errors import ConfigError, as_flag, check_output_file
from labkit.manifests.pod_security import LEVELS

# `render` options that set a JobSpec field: (flag, field, type, help).
_SPEC_OPTIONS = [
    ("--name", "name", str, "job name (DNS-1035 label, <= 40 chars)"),
    ("--namespace", "namespace", str, "namespace (default workloads; gaudi: workloads-gaudi)"),
    ("--lab-namespace", "lab_namespace", str, "gaudi: the namespace of the lab that submits here (default workloads)"),
    ("--image", "image", str, "image reference (default: the overlay's, from images/images.yaml)"),
    ("--workers", "workers", int, "worker pods (default 2)"),
    ("--slots", "slots_per_worker", int, "GPUs/HPUs (or CPU ranks) per worker"),
    ("--command", "launcher_command", shlex.split, "launcher command, one shell-quoted string"),
    ("--deadline", "deadline_seconds", int, "activeDeadlineSeconds (default 14400)"),
    ("--ttl", "ttl_seconds_after_finished", int, "ttlSecondsAfterFinished"),
    ("--cpu", "cpu", str, "per-worker cpu (request = limit)"),
    ("--memory", "memory", str, "per-worker memory (request = limit)"),
    ("--hugepages", "hugepages_2mi", str, "gaudi: per-worker hugepages-2Mi"),
    ("--shm-size", "shm_size", str, "size limit of /dev/shm on workers"),
    ("--pvc", "pvc_name", str, "shared PVC name (default labkit-shared)"),
    ("--storage-class", "storage_class", str, 'PVC storage class ("" = the cluster default)'),
    ("--storage-size", "storage_size", str, "PVC size (default 20Gi)"),
    ("--hf-token-secret", "hf_token_secret", str, "name of an existing Secret with key `token`"),
    ("--queue", "queue", str, f"Kueue LocalQueue of the job (label {manifests.QUEUE_LABEL})"),
    # --http-proxy, --https-proxy, --no-proxy: into every pod through ConfigMap labkit-proxy
    *[(f"--{f.replace('_', '-')}", f, str, f"{f.upper()} for every pod of the job") for f in manifests.PROXY_FIELDS],
]
# What a namespace's set-up (--no-job, --kind lab) takes; every other option sets the job it leaves out.
_SETUP_FIELDS = ("namespace", "lab_namespace", "pvc_name", "storage_class", "storage_size")


def register(subparsers) -> None:
    parser = subparsers.add_parser("manifests", help="render and validate the kit's Kubernetes objects")
    parser.description = "Render manifests/ with parameters, or validate YAML before applying it."
    sub = parser.add_subparsers(dest="manifests_command", metavar="ACTION", required=True)
    render = sub.add_parser("render", help="print validated YAML for one job (kubectl apply -f - ready)")
    render.add_argument("--accelerator", default="cpu", choices=ACCELERATORS)
    kinds = "the job's overlay; lab: manifests/lab, a JupyterLab of its own in --namespace (no job)"
    render.add_argument(
        "--kind", default="interactive", choices=(*manifests.OVERLAY_KINDS, manifests.LAB_KIND), help=kinds
    )
    for flag, field, kind, text in _SPEC_OPTIONS:
        render.add_argument(flag, dest=field, type=kind, help=text)
    render.add_argument("--no-hf-token", action="store_true", help="no HF_TOKEN reference at all")
    deadline = "TrainJob spec.activeDeadlineSeconds (Trainer >= 2.2 only); auto: if the cluster's CRD has it"
    render.add_argument("--trainjob-deadline", choices=("auto", "yes", "no"), default="no", help=deadline)
    render.add_argument("--kubeconfig", default=None, help="kubeconfig for --trainjob-deadline auto")
    render.add_argument("--job-only", action="store_true", help="only the MPIJob/TrainJob, not namespace/PVC/RBAC")
    setup = "a namespace's set-up without the job: namespace, PVC, RBAC, policies (and trainjob's runtime)"
    render.add_argument("--no-job", action="store_true", help=setup)
    render.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    render.set_defaults(func=_render)
    validate = sub.add_parser("validate", help="validate YAML files or kustomize directories before applying them")
    validate.add_argument("paths", nargs="+", type=Path, help="YAML files, kustomize directories, or - for stdin")
    level = "Pod Security level for pods whose Namespace object is not in the input (default: restricted, the level of "
    level += "the kit's cpu/nvidia namespace; a Namespace in the input sets its own)"
    validate.add_argument("--pod-security", choices=LEVELS, default="restricted", help=level)
    validate.set_defaults(func=_validate)


def _render(args: argparse.Namespace) -> int:
    if args.output:
        check_output_file("--output", args.output)
    values = {field: getattr(args, field) for _, field, _, _ in _SPEC_OPTIONS if getattr(args, field) is not None}
    if args.no_hf_token:
        values["hf_token_secret"] = None
    setup = "--no-job" if args.no_job else "--kind lab" if args.kind == manifests.LAB_KIND else None
    if setup and args.job_only:
        raise ConfigError("--job-only", f"renders only the job, which {setup} leaves out", "pass one of the two")
    flags = {field: flag for flag, field, _, _ in _SPEC_OPTIONS} | {"trainjob_deadline": "--trainjob-deadline"}
    flags |= {"hf_token_secret": "--no-hf-token"} if args.no_hf_token else {}
    given = [f for f in values if f not in _SETUP_FIELDS] + (
        ["trainjob_deadline"] if args.trainjob_deadline != "no" else []
    )
    if setup and given:  # it would be ignored: a set-up creates no job
        problem = f"sets the job, which {setup} leaves out"
        raise ConfigError(flags[given[0]], problem, f"leave it out, or render without {setup}")
    if args.job_only and args.kind == "trainjob" and args.image:  # Trainer's builder.go: trainer.image -> launcher
        problem = "reaches only the TrainJob's launcher; its nodes run the image of the TrainingRuntime already there"
        fix = "leave --image out, or render without --job-only so the runtime carries the image too"
        raise ConfigError("image", problem, fix)
    ignored = [f for f in ("shm_size", "ttl_seconds_after_finished") if f in values] if args.kind == "trainjob" else []
    if ignored:  # the TrainJob has neither: its pods come from the TrainingRuntime, and it has no TTL field
        flag = {"shm_size": "--shm-size", "ttl_seconds_after_finished": "--ttl"}[ignored[0]]
        raise ConfigError(
            flag, "a TrainJob has no such setting (it would be ignored)", "leave it out for --kind trainjob"
        )
    values.setdefault("namespace", manifests.NAMESPACES.get(args.accelerator))  # an admin's: the overlay's, not a lab's
    if args.accelerator == "gaudi":  # an admin's render binds the shared lab unless told, wherever it runs
        values.setdefault("lab_namespace", manifests.NAMESPACES["cpu"])
    values["trainjob_deadline"] = args.trainjob_deadline == "yes"
    if args.trainjob_deadline == "auto":
        values["trainjob_deadline"] = cluster.trainjob_has_deadline(kube.load_client(args.kubeconfig, None))
    try:
        objects = manifests.render_all(manifests.JobSpec(accelerator=args.accelerator, **values), args.kind)
    except ConfigError as exc:  # JobSpec names its fields: say the flag that was typed
        raise as_flag(exc, flags) from None
    if args.job_only or args.no_job:
        objects = [o for o in objects if (o["kind"] in manifests.JOB_KINDS) == args.job_only]
    text = manifests.to_yaml(objects)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {len(objects)} objects to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _validate(args: argparse.Namespace) -> int:
    failures = 0
    for path in args.paths:
        try:
            if str(path) == "-":
                objects = manifests.load_yaml(sys.stdin.read(), "(stdin)")
            else:
                objects = manifests.kustomize_build(path) if path.is_dir() else manifests.load_yaml(path.read_text())
        except OSError as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            failures += 1
            continue
        if not objects:  # an empty pipe or a wrong file must not read as a checked manifest
            print(f"INVALID {path}: no Kubernetes objects in it")
            failures += 1
            continue
        try:
            levels = manifests.checks.namespace_levels(objects)
        except manifests.ManifestError as exc:
            print(f"INVALID {path}: {exc}")
            failures += 1
            continue
        for obj in objects:
            try:
                manifests.validate_object(obj)
                namespace = (obj.get("metadata") or {}).get("namespace")
                manifests.checks.check_pod_security(obj, levels.get(namespace, args.pod_security))
                print(f"ok      {path}: {manifests.object_ref(obj)}")
            except manifests.ManifestError as exc:
                print(f"INVALID {path}: {exc}")
                failures += 1
    return 1 if failures else 0

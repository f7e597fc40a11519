"""`labkit manifests render|validate` and `labkit images list|build-command`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    manifests = subparsers.add_parser(
        "manifests",
        help="render and validate the kit's Kubernetes objects",
        description="Render manifests/ with parameters, or validate YAML before applying it.",
    )
    sub = manifests.add_subparsers(dest="manifests_command", metavar="ACTION", required=True)

    render = sub.add_parser("render", help="print validated YAML for one job (kubectl apply -f - ready)")
    render.add_argument("--accelerator", default="cpu", help="cpu | nvidia | gaudi (default cpu)")
    render.add_argument("--kind", default="interactive", help="interactive | batch | trainjob (default interactive)")
    render.add_argument("--name", help="job name (DNS-1035 label, <= 40 chars)")
    render.add_argument("--namespace", help="namespace (default workloads)")
    render.add_argument("--image", help="image reference (default: the overlay's, from images/images.yaml)")
    render.add_argument("--workers", type=int, help="worker pods (default 2)")
    render.add_argument("--slots", type=int, dest="slots_per_worker", help="GPUs/HPUs (or CPU ranks) per worker")
    render.add_argument("--command", dest="launcher_command", help="launcher command, one shell-quoted string")
    render.add_argument("--deadline", type=int, dest="deadline_seconds", help="activeDeadlineSeconds (default 14400)")
    render.add_argument("--ttl", type=int, dest="ttl_seconds_after_finished", help="ttlSecondsAfterFinished")
    render.add_argument("--cpu", help="per-worker cpu (request = limit)")
    render.add_argument("--memory", help="per-worker memory (request = limit)")
    render.add_argument("--hugepages", dest="hugepages_2mi", help="gaudi: per-worker hugepages-2Mi")
    render.add_argument("--shm-size", dest="shm_size", help="size limit of /dev/shm on workers")
    render.add_argument("--pvc", dest="pvc_name", help="shared PVC name (default labkit-shared)")
    render.add_argument("--storage-class", help='PVC storage class ("" = the cluster default)')
    render.add_argument("--storage-size", help="PVC size (default 20Gi)")
    render.add_argument("--hf-token-secret", help="name of an existing Secret with key `token`")
    render.add_argument("--no-hf-token", action="store_true", help="no HF_TOKEN reference at all")
    render.add_argument("--job-only", action="store_true", help="only the MPIJob/TrainJob, not namespace/PVC/RBAC")
    render.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    render.set_defaults(func=_render)

    validate = sub.add_parser("validate", help="validate YAML files or kustomize directories before applying them")
    validate.add_argument("paths", nargs="+", type=Path, help="YAML files, kustomize directories, or - for stdin")
    validate.set_defaults(func=_validate)

    images = subparsers.add_parser("images", help="the kit's container images (images/images.yaml)")
    isub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    listing = isub.add_parser("list", help="image names, references and what uses them")
    listing.set_defaults(func=_images_list)
    build = isub.add_parser("build-command", help="print the command that builds an image (run it from the repo root)")
    build.add_argument("name", help="an image name from images/images.yaml, e.g. deepspeed")
    build.add_argument("--builder", default="docker", help="docker | buildah")
    build.set_defaults(func=_images_build)


def _render(args: argparse.Namespace) -> int:
    import shlex

    from labkit import manifests

    values = {
        key: getattr(args, key)
        for key in (
            "name",
            "namespace",
            "image",
            "workers",
            "slots_per_worker",
            "deadline_seconds",
            "ttl_seconds_after_finished",
            "cpu",
            "memory",
            "hugepages_2mi",
            "shm_size",
            "pvc_name",
            "storage_class",
            "storage_size",
            "hf_token_secret",
        )
        if getattr(args, key) is not None
    }
    if args.launcher_command is not None:
        values["launcher_command"] = shlex.split(args.launcher_command)
    if args.no_hf_token:
        values["hf_token_secret"] = None
    spec = manifests.MpiJobSpec(accelerator=args.accelerator, **values)
    objects = manifests.render_all(spec, args.kind)
    if args.job_only:
        objects = [o for o in objects if o["kind"] in ("MPIJob", "TrainJob")]
    text = manifests.to_yaml(objects)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {len(objects)} objects to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from labkit import manifests

    failures = 0
    for path in args.paths:
        try:
            if str(path) == "-":
                objects = manifests.load_yaml(sys.stdin.read())
            elif path.is_dir():
                objects = manifests.kustomize_build(path)
            else:
                objects = manifests.load_yaml(path.read_text())
        except OSError as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            failures += 1
            continue
        for obj in objects:
            try:
                manifests.validate_object(obj)
                print(f"ok      {path}: {manifests.object_ref(obj)}")
            except manifests.ManifestError as exc:
                print(f"INVALID {path}: {exc}")
                failures += 1
    return 1 if failures else 0


def _images_list(args: argparse.Namespace) -> int:
    from labkit.images import load_images

    for spec in load_images().values():
        print(f"{spec.name:16} {spec.image}\n{'':16} {spec.description} (used by {spec.used_by})")
    return 0


def _images_build(args: argparse.Namespace) -> int:
    from labkit.images import build_command, format_command

    print(format_command(build_command(args.name, args.builder)))
    return 0

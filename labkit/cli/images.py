"""`labkit images list|build-command`: the kit's container images (images/images.yaml)."""

from __future__ import annotations

import argparse
import shlex

from labkit.errors import ConfigError, named_as
from labkit.images import BUILDERS, build_command, load_images


def register(subparsers) -> None:
    images = subparsers.add_parser("images", help="the kit's container images (images/images.yaml)")
    sub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="image names, references and what uses them").set_defaults(func=_list)
    build = sub.add_parser("build-command", help="print the command that builds an image (run it from the repo root)")
    build.add_argument("name", help="an image name from images/images.yaml, e.g. deepspeed")
    build.add_argument("--builder", default="docker", choices=BUILDERS)
    extra = "an ARG of the image's Dockerfile, e.g. BASE_DIGEST=sha256:... (required where images.yaml records none)"
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help=extra)
    build.set_defaults(func=_build_command)


def _list(args: argparse.Namespace) -> int:
    for spec in load_images().values():
        print(f"{spec.name:16} {spec.image}\n{'':16} {spec.description} (used by {spec.used_by})")
    return 0


def _build_command(args: argparse.Namespace) -> int:
    extra = {}
    for item in args.build_arg:
        key, eq, value = item.partition("=")
        if not (eq and key):  # docker would read a bare KEY from the environment; this command line has none
            raise ConfigError("--build-arg", f"{item!r} is not KEY=VALUE", f"pass --build-arg {key or 'KEY'}=VALUE")
        extra[key] = value
    with named_as({"build_args": "--build-arg"}):
        print(shlex.join(build_command(args.name, args.builder, build_args=extra)))
    return 0

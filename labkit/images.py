"""The kit's container images as declared in images/images.yaml, and the commands that build them.

images/images.yaml is the single source of truth for image names, tags and build arguments; manifests/ refers to
the same references (tests/test_images.py keeps them equal). Nothing here needs a container engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkit.errors import ConfigError, check_choice
from labkit.manifests.render import PACKAGE_ROOT, kit_dir

BUILDERS = ("docker", "buildah")


@dataclass(frozen=True)
class ImageSpec:
    name: str  # key in images.yaml, e.g. "deepspeed"
    image: str  # full reference, REGISTRY/REPO:TAG
    dockerfile: str  # path relative to the repository root (the build context)
    description: str = ""
    used_by: str = ""
    build_args: dict[str, str] = field(default_factory=dict)


def repo_root() -> Path:
    """The kit's source tree (images/ is not part of the installed package)."""
    env = os.environ.get("LABKIT_MANIFESTS")
    candidates = [Path(env).parent] if env else []
    return kit_dir("images/images.yaml", "not found", "images/images.yaml", [*candidates, PACKAGE_ROOT])


def load_images(path: str | Path | None = None) -> dict[str, ImageSpec]:
    data = yaml.safe_load(Path(path or repo_root() / "images" / "images.yaml").read_text()) or {}
    out = {}
    for name, entry in (data.get("images") or {}).items():
        args = {str(k): str(v) for k, v in (entry.get("build_args") or {}).items()}
        notes = {key: entry.get(key, "") for key in ("description", "used_by")}
        out[name] = ImageSpec(name, entry["image"], entry["dockerfile"], build_args=args, **notes)
    return out


def build_command(name: str, builder: str = "docker", *, images: dict[str, ImageSpec] | None = None) -> list[str]:
    """argv that builds image `name` from the repository root, e.g. ['docker', 'build', '-f', ...]."""
    images = images if images is not None else load_images()
    if name not in images:
        raise ConfigError("image", f"{name!r} is not in images/images.yaml ({', '.join(images)})", "pick one of those")
    check_choice("builder", builder, BUILDERS)
    spec = images[name]
    argv = ["docker", "build"] if builder == "docker" else ["buildah", "build", "--layers"]
    argv += ["-f", spec.dockerfile, "-t", spec.image]
    for key, value in spec.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    return argv + ["."]

"""The kit's container images as declared in images/images.yaml, and the commands that build them.

images/images.yaml is the single source of truth for image names, tags and build arguments; manifests/ refers to
the same references (tests/test_images.py keeps them equal). Nothing here needs a container engine.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkit.errors import ConfigError

BUILDERS = ("docker", "buildah")


@dataclass(frozen=True)
class ImageSpec:
    name: str                      # key in images.yaml, e.g. "deepspeed"
    image: str                     # full reference, REGISTRY/REPO:TAG
    dockerfile: str                # path relative to the repository root (the build context)
    description: str = ""
    used_by: str = ""
    build_args: dict[str, str] = field(default_factory=dict)


def repo_root() -> Path:
    """The kit's source tree (images/ is not part of the installed package)."""
    env = os.environ.get("LABKIT_MANIFESTS")
    candidates = ([Path(env).parent] if env else []) + [Path(__file__).resolve().parent.parent]
    for candidate in candidates:
        if (candidate / "images" / "images.yaml").is_file():
            return candidate
    raise ConfigError("images/images.yaml", f"not found (looked in {', '.join(map(str, candidates))})",
                      "run from a labkit source checkout, or set LABKIT_MANIFESTS to its manifests/ directory")


def load_images(path: str | Path | None = None) -> dict[str, ImageSpec]:
    path = Path(path) if path else repo_root() / "images" / "images.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, entry in (data.get("images") or {}).items():
        args = {str(k): str(v) for k, v in (entry.get("build_args") or {}).items()}
        out[name] = ImageSpec(name=name, image=entry["image"], dockerfile=entry["dockerfile"],
                              description=entry.get("description", ""), used_by=entry.get("used_by", ""),
                              build_args=args)
    return out


def build_command(name: str, builder: str = "docker", *, images: dict[str, ImageSpec] | None = None) -> list[str]:
    """argv that builds image `name` from the repository root, e.g. ['docker', 'build', '-f', ...]."""
    images = images if images is not None else load_images()
    if name not in images:
        raise ConfigError("image", f"{name!r} is not in images/images.yaml ({', '.join(images)})", "pick one of those")
    if builder not in BUILDERS:
        raise ConfigError("builder", f"{builder!r} is not one of {', '.join(BUILDERS)}", "use docker or buildah")
    spec = images[name]
    argv = [builder, "build"] if builder == "docker" else ["buildah", "build", "--layers"]
    argv += ["-f", spec.dockerfile, "-t", spec.image]
    for key, value in spec.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    return argv + ["."]


def format_command(argv: list[str]) -> str:
    return shlex.join(argv)

"""The kit's container images as declared in images/images.yaml, and the commands that build them.

images/images.yaml is the single source of truth for image names, tags and build arguments; manifests/ refers to
the same references (tests/test_images.py keeps them equal). Nothing here needs a container engine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkit.errors import ConfigError, check_choice
from labkit.manifests.render import PACKAGE_ROOT, kit_dir

BUILDERS = ("docker", "buildah")
# Build arguments a Dockerfile requires (`${NAME:?...}`: no default, the build stops without them): the pins nobody
# may guess. Each: (what a value must look like, how to find it).
PINS = {
    "BASE_DIGEST": (
        re.compile(r"^sha256:[0-9a-f]{64}$"),
        "the base image's digest: docker buildx imagetools inspect <BASE_IMAGE> (its Digest line)",
    ),
    "DEEPSPEED_COMMIT": (
        re.compile(r"^[0-9a-f]{40}$"),
        "the fork's commit: git ls-remote https://github.com/HabanaAI/DeepSpeed refs/heads/<GAUDI_RELEASE>",
    ),
}


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


def required_args(dockerfile: Path) -> list[str]:
    """The build arguments a Dockerfile cannot build without (written `${NAME:?...}` in it)."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    return sorted(set(re.findall(r"\$\{(\w+):\?", "\n".join(lines))))


def build_command(
    name: str,
    builder: str = "docker",
    *,
    images: dict[str, ImageSpec] | None = None,
    build_args: dict[str, str] | None = None,
) -> list[str]:
    """argv that builds image `name` from the repository root, e.g. ['docker', 'build', '-f', ...]. `build_args` adds
    to images.yaml's; every pin the Dockerfile requires (PINS) must come from one of them."""
    images = images if images is not None else load_images()
    if name not in images:
        raise ConfigError("image", f"{name!r} is not in images/images.yaml ({', '.join(images)})", "pick one of those")
    check_choice("builder", builder, BUILDERS)
    spec = images[name]
    values = {**spec.build_args, **(build_args or {})}
    for arg in required_args(repo_root() / spec.dockerfile):
        pattern, how = PINS.get(arg, (re.compile(r".+"), "see images/README.md"))
        if arg not in values:
            problem = f"{name} cannot be built without it, and images/images.yaml records none"
            raise ConfigError(arg, problem, f"pass --build-arg {arg}=... ({how}) or add it under build_args")
        if not pattern.match(values[arg]):
            raise ConfigError(arg, f"{values[arg]!r} is not a pin ({pattern.pattern})", how)
    argv = ["docker", "build"] if builder == "docker" else ["buildah", "build", "--layers"]
    pairs = [arg for key, value in values.items() for arg in ("--build-arg", f"{key}={value}")]
    return [*argv, "-f", spec.dockerfile, "-t", spec.image, *pairs, "."]

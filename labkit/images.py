"""The kit's container images as declared in images/images.yaml, and the commands that build them.

images/images.yaml is the single source of truth for image names, tags and build arguments; manifests/ refers to
the same references (tests/test_images.py keeps them equal). Nothing here needs a container engine.
"""

from __future__ import annotations

import difflib
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


# What a tag states, per build argument: ds0.19.8-torch2.13.0-cuda13.0 (GPU), the same without the cuda part (CPU),
# gaudi1.22.0-torch2.7.1 (Gaudi); each a `-`-separated part of the tag. CUDA is read off BASE_IMAGE and TORCH_INDEX_URL.
TAG_PARTS = {"DEEPSPEED_VERSION": "ds", "TORCH_VERSION": "torch", "GAUDI_RELEASE": "gaudi", "GAUDI_TORCH": "torch"}


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


def dockerfile_args(dockerfile: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """ARG name -> the value a build uses: the build argument from `overrides`, else the default with earlier ARGs
    substituted (the Gaudi BASE_IMAGE's ${GAUDI_RELEASE}); an ARG declared again without a default keeps its value."""
    overrides, values = overrides or {}, {}
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"\s*ARG\s+(\w+)(?:=(\S*))?\s*$", line, re.I)
        if match and (match.group(2) or match.group(1) not in values):
            default = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda mt: values.get(mt[1] or mt[2], mt[0]), match[2] or "")
            values[match[1]] = overrides.get(match[1], default.strip('"'))
    return values


def _cuda(values: dict[str, str]) -> dict[str, str | None]:
    """The CUDA version each argument that decides it builds ("13.0", None: none), where it can be read off."""
    found: dict[str, str | None] = {}
    if match := re.search(r"cuda:(\d+\.\d+)", values.get("BASE_IMAGE", "")):
        found["BASE_IMAGE"] = match[1]
    if match := re.search(r"/whl/(cpu|cu(\d+)(\d))/?$", values.get("TORCH_INDEX_URL", "")):
        found["TORCH_INDEX_URL"] = f"{match[2]}.{match[3]}" if match[2] else None
    return found


def tag_disagreements(image: str, values: dict[str, str]) -> dict[str, str]:
    """Build arguments whose value the image's tag does not state: {ARG: what the tag says instead}."""
    parts = image.rsplit(":", 1)[-1].split("-")

    def stated(word: str) -> str | None:
        return next((part[len(word) :] for part in parts if re.fullmatch(rf"{word}\d[\w.]*", part)), None)

    wrong = {}
    for arg, word in TAG_PARTS.items():
        if arg in values and stated(word) != values[arg]:
            wrong[arg] = f"{word}{stated(word)}" if stated(word) else f"no {word} part"
    cuda = stated("cuda")
    for arg, built in _cuda(values).items():
        if built != cuda:
            wrong[arg] = f"cuda{cuda}" if cuda else "no CUDA version: a CPU build"
    return wrong


def check_build_args(spec: ImageSpec, build_args: dict[str, str]) -> None:
    """ConfigError (field build_args) for a build argument, beyond images.yaml's, that the Dockerfile does not declare
    (docker only warns, and builds the default) or that changes a version the tag states (the image would be pushed
    under a tag that lies)."""
    dockerfile = repo_root() / spec.dockerfile
    declared = dockerfile_args(dockerfile)
    for key in build_args:
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            fix = f"did you mean {close[0]}?" if close else f"pass only those ({spec.dockerfile} reads no other)"
            problem = f"{key} is not an ARG of {spec.dockerfile} (its ARGs: {', '.join(declared)})"
            raise ConfigError("build_args", problem, fix)
    values = dockerfile_args(dockerfile, {**spec.build_args, **build_args})
    recorded = tag_disagreements(spec.image, dockerfile_args(dockerfile, spec.build_args))
    for arg, stated in tag_disagreements(spec.image, values).items():
        if arg not in recorded:
            problem = f"{arg}={values[arg]} is not what the tag {spec.image} states ({stated}): the tag would lie"
            fix = (
                f"to build another version, set {arg} under build_args of {spec.name!r} in images/images.yaml, make "
                f"its image tag state it, and the same in {spec.used_by}/kustomization.yaml (tests/test_images.py "
                "checks all three agree)"
            )
            raise ConfigError("build_args", problem, fix)


def build_command(
    name: str,
    builder: str = "docker",
    *,
    images: dict[str, ImageSpec] | None = None,
    build_args: dict[str, str] | None = None,
) -> list[str]:
    """argv that builds image `name` from the repository root, e.g. ['docker', 'build', '-f', ...]. `build_args` adds
    to images.yaml's (ARGs of the Dockerfile only, none changing what the tag states); every pin the Dockerfile
    requires (PINS) must come from one of them."""
    images = images if images is not None else load_images()
    if name not in images:
        raise ConfigError("image", f"{name!r} is not in images/images.yaml ({', '.join(images)})", "pick one of those")
    check_choice("builder", builder, BUILDERS)
    spec = images[name]
    check_build_args(spec, build_args or {})
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

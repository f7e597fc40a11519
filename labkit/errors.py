"""The kit's exceptions and the check helpers every module uses: one clear message that names the field and the fix."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class LabkitError(Exception):
    """Base class for errors the kit reports to a user (CLI prints them without a traceback)."""


class ConfigError(LabkitError, ValueError):
    """A bad parameter, flag or manifest value, raised before any expensive work starts."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")


class ParseError(LabkitError):
    """A tool's output or a kernel file was not in the expected format (the message quotes the offending line)."""


class LaunchError(LabkitError):
    """A multi-process run that failed; carries the exit code, the output tail and the failing rank when known."""

    def __init__(
        self, message: str, *, returncode: int | None = None, output: str = "", failed_rank: int | None = None
    ):
        self.returncode, self.output, self.failed_rank = returncode, output, failed_rank
        super().__init__(message)


class DeadlineError(LaunchError, TimeoutError):
    """A run stopped by the deadline its caller set: a LaunchError to those that catch one, and a TimeoutError, which
    the CLI reports as `labkit: deadline:` with timeout(1)'s exit code 124."""


def renamed(exc: ConfigError, names: dict[str, str], fixes: dict[str, str] | None = None) -> ConfigError:
    """The same error with its field named as the user typed it (`names`: checked field -> the user's name; fields
    not in it are kept) and, where `fixes` has one for the checked field, a fix the user can apply there."""
    return ConfigError(names.get(exc.field, exc.field), exc.problem, (fixes or {}).get(exc.field, exc.fix))


@contextlib.contextmanager
def named_as(names: dict[str, str], fixes: dict[str, str] | None = None) -> Iterator[None]:
    """A ConfigError raised inside re-raised `renamed` (a helper checks `dtype`; the notebook calls it `calc_dtype`)."""
    try:
        yield
    except ConfigError as exc:
        raise renamed(exc, names, fixes) from None


def as_flag(exc: ConfigError, flags: dict[str, str] | None = None) -> ConfigError:
    """The same error named as a CLI user typed it: field `num_processes` -> `--num-processes` (or `flags`'s flag)."""
    return renamed(exc, {exc.field: (flags or {}).get(exc.field) or "--" + exc.field.replace("_", "-")})


def is_number(value: Any) -> bool:
    """A real number: int or float, but not a bool (True is an int to Python, never a count or a limit here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(field: str, value: Any, allowed: Iterable[Any], fix: str | None = None) -> Any:
    """value if it is one of allowed, else ConfigError naming the field and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        choices = ", ".join(map(str, allowed))
        raise ConfigError(field, f"unknown value {value!r}", fix or f"use one of {choices}")
    return value


def check_bool(field: str, value: Any, fix: str | None = None) -> bool:
    """value if it is True or False, else ConfigError: plain papermill passes `-p resume false` as the string "false",
    which is true to Python (only True/False, capitalised, become booleans there)."""
    if not isinstance(value, bool):
        meant = "False" if str(value).strip().lower() in ("false", "0", "no", "off", "") else "True"
        example = f"-p {field} {meant}"
        default = f"pass True or False (papermill: {example}, capitalised, or -y '{field}: false')"
        raise ConfigError(field, f"must be True or False, got {value!r}", fix or default)
    return value


def check_int(field: str, value: Any, minimum: int = 1, fix: str | None = None, maximum: int | None = None) -> int:
    """value if it is a whole number in [minimum, maximum] (bools are refused), else ConfigError."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(field, f"must be a whole number {bound}, got {value!r}", fix or f"pass {field} {bound}")
    return value


def check_number(
    field: str, value: Any, minimum: float = 0.0, fix: str | None = None, *, strict: bool = False
) -> float:
    """value if it is a finite real number >= minimum (> minimum with strict), else ConfigError (inf and nan too: no
    field takes them, and int(inf) would fail later as a traceback)."""
    if not is_number(value) or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        finite = "finite " if is_number(value) and not math.isfinite(value) else ""
        raise ConfigError(field, f"must be a {finite}number {bound}, got {value!r}", fix or f"pass {field} {bound}")
    return float(value)


def check_output_file(field: str, path: str | os.PathLike) -> Path:
    """`path` if a file can be written there (its folder exists and is writable; it is no folder), else ConfigError
    naming the field: checked before the work whose result it keeps, not found out after it as a traceback."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(field, f"{path} is a folder", "pass a file name (in that folder or another)")
    if not path.parent.is_dir():
        raise ConfigError(field, f"{path.parent} is not a folder", "pass a file in an existing folder")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ConfigError(field, f"{path} cannot be written (permission)", "pass a file in a folder you can write")
    return path


def make_folder(path: Path, field: str, mode: int = 0o777) -> Path | None:
    """`path` made (with its parents; `mode` for the last) if missing: the topmost folder made, or None. ConfigError
    naming `field` when it cannot be (a file of that name or above it, no permission)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            field, f"cannot make the folder {path} ({exc.strerror})", "pass a folder you can write"
        ) from None
    return missing[-1] if missing else None


# Names that say a variable holds a credential: HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY
SECRET_NAME = re.compile(r"TOKEN|PASSW|SECRET|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)


def secret_values(environ: Mapping[str, str]) -> set[str]:
    """The values of `environ`'s credential variables (SECRET_NAME), none shorter than 6 characters (short values would
    blank ordinary words): DeepSpeed's openmpi runner prints every MLFLOW*/PYTHON* variable with its value in its
    `cmd = mpirun ... -x NAME=value` line, and a user's script may print its own; no output the kit shows holds them."""
    return {v for k, v in environ.items() if SECRET_NAME.search(k) and isinstance(v, str) and len(v) >= 6}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """text with every secret replaced by <redacted>, longest first (a token may contain a shorter one)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text

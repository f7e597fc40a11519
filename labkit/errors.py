"""The kit's exceptions: one clear message that names the field and the fix."""
from __future__ import annotations


class LabkitError(Exception):
    """Base class for errors the kit reports to a user (CLI prints them without a traceback)."""


class ConfigError(LabkitError, ValueError):
    """A bad parameter, flag or manifest value, raised before any expensive work starts."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")


class LaunchError(LabkitError):
    """A multi-process run that failed; carries the exit code, the output tail and the failing rank when known."""

    def __init__(self, message: str, *, returncode: int | None = None, output: str = "", failed_rank: int | None = None):
        self.returncode, self.output, self.failed_rank = returncode, output, failed_rank
        super().__init__(message)

"""`labkit` command line: a thin layer over the package.

Each module in this package registers its subcommands with `register(subparsers)`; handlers return an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from labkit import __version__, procs
from labkit.errors import LabkitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description="DeepSpeed lab kit: notebooks, checks, jobs")
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def _where(exc: BaseException) -> str:
    """Where an interrupted command stopped, as the code it stopped in noted on the exception (`labkit run`: the
    notebook, the cell, the partial notebook)."""
    return "".join(f" {note}" for note in getattr(exc, "__notes__", ()))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with procs.terminations_raised():  # SIGTERM/SIGHUP unwind like Ctrl-C: ranks stopped, temp folders removed
            return int(args.func(args) or 0)
    except TimeoutError as exc:  # a deadline the user set (--timeout, --ready-timeout) ran out: what stopped, one line
        print(f"labkit: deadline: {exc}", file=sys.stderr)  # before LabkitError: errors.DeadlineError is both
        return 124  # as timeout(1)
    except LabkitError as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"labkit: interrupted{_where(exc)}", file=sys.stderr)
        return 130
    except procs.Terminated as exc:
        print(f"labkit: stopped by {exc}{_where(exc)}", file=sys.stderr)
        return 128 + exc.signum  # as the shell reports a process its signal ended
    except BrokenPipeError:  # `labkit params 02 | head`: the reader left; not an error of ours
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""`labkit run`: execute notebooks headless into a run directory with an HTML report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit import notebooks, suites
from labkit.errors import ConfigError, check_number, check_output_file

CELL_TIMEOUT_S = 900.0  # nothing waits for ever: an upstream client can miss a reply (nbclient issue 312, widgets)


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="execute notebooks headless into runs/<timestamp>/ with an HTML report")
    run.add_argument("notebooks", nargs="*", help="paths or stems (e.g. 02); default: every notebook in notebooks/")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="typed as declared")
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--backend", choices=["local", "kubernetes"], help="for notebooks with a `backend` parameter")
    run.add_argument("--test-params", action="store_true", help="use each notebook's small labkit.test_parameters")
    run.add_argument("--timeout", type=float, default=CELL_TIMEOUT_S,
                     help=f"per-cell limit in seconds (default {CELL_TIMEOUT_S:.0f}: a cell running longer has hung; "
                          "the run names it); 0 for none")  # fmt: skip
    run.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    shots = "show these browser screenshots in the report (make e2e writes runs/e2e)"
    run.add_argument("--screenshots", type=Path, help=shots)
    run.add_argument("--suite", type=Path, help="a regression suite (regression/*.yaml): notebooks, parameters, checks")
    run.add_argument("--junit", type=Path, help="with --suite: write JUnit XML here (a testcase per run and per check)")
    run.set_defaults(func=_run)


def _cell_timeout(args: argparse.Namespace) -> float | None:
    check_number("timeout", args.timeout, 0.0, "pass seconds per cell, or 0 for no limit")
    return args.timeout or None


def _run_suite(args: argparse.Namespace) -> int:
    if args.notebooks or args.parameter or args.test_params:
        fix = "put notebooks and parameters in the suite file, or drop --suite"
        raise ConfigError("suite", "--suite runs exactly the suite's notebooks with its parameters", fix)
    suite = suites.load(args.suite)  # a malformed suite is refused here, before any notebook runs
    if args.junit:  # found out now, not after the whole suite has run
        check_output_file("--junit", args.junit)
    if args.backend:
        for entry in suite.entries:
            if "backend" in notebooks.declared_parameters(entry.notebook):
                entry.parameters.setdefault("backend", args.backend)
    run_dir, result = suites.run_suite(suite, out_dir=args.out, timeout=_cell_timeout(args), log_output=args.log_output)
    if args.junit:
        args.junit.write_text(suites.junit_xml(result))
    print(f"report: {run_dir / 'index.html'}")
    for run in result.runs:
        if not run.passed:
            print(f"labkit: error: {run.source}: {run.error} (executed notebook: {run.output})", file=sys.stderr)
    for outcome in result.outcomes:
        if not outcome.passed:
            print(f"labkit: expectation failed: {outcome.notebook}: {outcome.message}", file=sys.stderr)
    checks = sum(o.passed for o in result.outcomes)
    print(f"suite {suite.name}: {sum(r.passed for r in result.runs)} of {len(result.runs)} notebooks passed, "
          f"{checks} of {len(result.outcomes)} expectations met")  # fmt: skip
    return 0 if result.passed else 1


def _run(args: argparse.Namespace) -> int:
    if args.suite:
        return _run_suite(args)
    if args.junit:
        raise ConfigError("junit", "--junit needs --suite", "pass --suite regression/cpu-smoke.yaml")
    if args.screenshots and not args.screenshots.is_dir():
        raise ConfigError("screenshots", f"{args.screenshots} is not a folder", "run `make e2e` first (runs/e2e)")
    selected = notebooks.select(args.notebooks) if args.notebooks else notebooks.discover()
    optional = {"backend": args.backend} if args.backend else {}
    options = {"timeout": _cell_timeout(args), "log_output": args.log_output, "use_test_parameters": args.test_params}
    run_dir, runs = notebooks.run_all(
        selected, dict(args.parameter or []), out_dir=args.out, optional=optional, **options
    )
    if args.screenshots:
        shown = notebooks.attach_screenshots(run_dir, args.screenshots, runs)
        notebooks.write_report(run_dir, runs)
        print(f"{shown} screenshot(s) from {args.screenshots} in the report")
    print(f"report: {run_dir / 'index.html'}")
    failed = [r for r in runs if not r.passed]
    for r in failed:
        print(f"labkit: error: {r.source}: {r.error} (executed notebook: {r.output})", file=sys.stderr)
    return 1 if failed else 0

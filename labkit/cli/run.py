"""`labkit run`: execute notebooks headless into a run directory with an HTML report."""

from __future__ import annotations

import argparse
import sys

from labkit import notebooks


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="execute notebooks headless into runs/<timestamp>/ with an HTML report")
    run.add_argument("notebooks", nargs="*", help="paths or stems (e.g. 02); default: every notebook in notebooks/")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="typed as declared")
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--backend", choices=["local", "kubernetes"], help="for notebooks with a `backend` parameter")
    run.add_argument("--test-params", action="store_true", help="use each notebook's small labkit.test_parameters")
    run.add_argument("--timeout", type=float, help="per-cell timeout in seconds")
    run.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    selected = notebooks.select(args.notebooks) if args.notebooks else notebooks.discover()
    optional = {"backend": args.backend} if args.backend else {}
    options = {"timeout": args.timeout, "log_output": args.log_output, "use_test_parameters": args.test_params}
    run_dir, runs = notebooks.run_all(
        selected, dict(args.parameter or []), out_dir=args.out, optional=optional, **options
    )
    print(f"report: {run_dir / 'index.html'}")
    failed = [r for r in runs if not r.passed]
    for r in failed:
        print(f"labkit: error: {r.source}: {r.error} (executed notebook: {r.output})", file=sys.stderr)
    return 1 if failed else 0

"""`labkit run` and `labkit params`: execute notebooks headless, list their typed parameters."""

from __future__ import annotations

import argparse
import sys

from labkit import notebooks


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="execute notebooks headless into runs/<timestamp>/ with an HTML report")
    run.add_argument("notebooks", nargs="*", help="paths or stems (e.g. 02); default: every notebook in notebooks/")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter (typed as the notebook declares it)",
    )
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument(
        "--backend",
        choices=["local", "kubernetes"],
        default=None,
        help="job backend for notebooks that declare a `backend` parameter",
    )
    run.add_argument(
        "--test-params",
        action="store_true",
        help="use each notebook's small test parameters (metadata labkit.test_parameters)",
    )
    run.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    run.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    run.set_defaults(func=_run)

    params = subparsers.add_parser("params", help="list a notebook's typed parameters")
    params.add_argument("notebook")
    params.set_defaults(func=_params)


def _run(args: argparse.Namespace) -> int:
    selected = notebooks.resolve(args.notebooks) if args.notebooks else notebooks.discover()
    optional = {"backend": args.backend} if args.backend else {}
    run_dir, runs = notebooks.run_all(
        selected,
        dict(args.parameter),
        out_dir=args.out,
        optional=optional,
        use_test_parameters=args.test_params,
        timeout=args.timeout,
        log_output=args.log_output,
    )
    print(f"report: {run_dir / 'index.html'}")
    failed = [r for r in runs if not r.passed]
    for r in failed:
        print(f"labkit: error: {r.source}: {r.error} (executed notebook: {r.output})", file=sys.stderr)
    return 1 if failed else 0


def _params(args: argparse.Namespace) -> int:
    (path,) = notebooks.resolve([args.notebook])
    declared = notebooks.declared_parameters(path)
    if not declared:
        print(f"{path}: no parameters")
        return 0
    width = max(len(n) for n in declared)
    print(f"{path}:")
    for name, info in declared.items():
        type_name = info.get("inferred_type_name", "None")
        print(f"  {name:<{width}}  {type_name:<10} default {info.get('default')}  # {info.get('help', '')}")
    return 0

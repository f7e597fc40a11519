"""`labkit check [--json]`: the environment checks of this machine (exit 1 only when a check fails)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from labkit import env


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: its current-context)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers) -> None:
    about = "check this machine: Python, torch, CUDA/NCCL, Gaudi, DeepSpeed ops, notebooks, /dev/shm, huge pages, "
    about += "NCCL variables, MPI, kubeconfig (exit 1 only when a check fails)"
    check = subparsers.add_parser("check", help=about)
    add_cluster_flags(check)
    help_timeout = "seconds to wait for the Kubernetes API server, at most 3 (default 2)"
    check.add_argument("--timeout", type=float, default=2.0, help=help_timeout)
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    env.validate_check_options(args.timeout, args.kubeconfig, fields=("--timeout", "--kubeconfig"))
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs to stdout on import; keep stdout the report alone
        report = env.run_checks(kubeconfig=args.kubeconfig, context=args.context, timeout=args.timeout)
    print(report.to_json() if args.json else report.text())
    return report.exit_code()

"""`labkit check [--json]` (environment checks) and `labkit discover [--cluster] [--json]` (devices, cluster nodes)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys


def register(subparsers) -> None:
    check = subparsers.add_parser(
        "check", help="check this machine: Python, torch, CUDA/NCCL, Gaudi, DeepSpeed ops, notebooks, /dev/shm, "
                      "huge pages, NCCL variables, MPI, kubeconfig (exit 1 only when a check fails)")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    _cluster_flags(check)
    check.add_argument("--timeout", type=float, default=2.0,
                       help="seconds to wait for the Kubernetes API server, at most 3 (default 2)")
    check.set_defaults(func=_check)

    discover = subparsers.add_parser("discover", help="list local accelerators (NVIDIA, Gaudi, CPU) and, with "
                                                      "--cluster, the Kubernetes nodes and CRDs")
    discover.add_argument("--cluster", action="store_true", help="also query the cluster in the kubeconfig")
    discover.add_argument("--json", action="store_true", help="print JSON")
    _cluster_flags(discover)
    discover.add_argument("--timeout", type=float, default=10.0, help="seconds per Kubernetes API request (default 10)")
    discover.set_defaults(func=_discover)


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: its current-context)")


def _check(args: argparse.Namespace) -> int:
    from labkit import env

    env.validate_check_options(args.timeout, args.kubeconfig, timeout_field="--timeout", kubeconfig_field="--kubeconfig")
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs to stdout on import; keep stdout the report alone
        report = env.run_checks(kubeconfig=args.kubeconfig, context=args.context, timeout=args.timeout)
    print(report.to_json() if args.json else report.text())
    return report.exit_code()


def _discover(args: argparse.Namespace) -> int:
    from labkit import cluster, devices
    from labkit.errors import ConfigError, LabkitError

    if args.timeout <= 0:
        raise ConfigError("--timeout", f"{args.timeout} is not a positive number of seconds", "use e.g. --timeout 10")
    with contextlib.redirect_stdout(sys.stderr):  # library chatter must not corrupt --json
        local = devices.discover()
        inventory = None
        if args.cluster:
            inventory = cluster.discover_cluster(args.kubeconfig, args.context, timeout=args.timeout)
            if not inventory.configured:  # asked for explicitly: an error, not an empty table
                raise LabkitError(inventory.error)
    if args.json:
        data = {"local": local.to_dict()}
        if inventory is not None:
            data["cluster"] = inventory.to_dict()
        print(json.dumps(data, indent=2))
    else:
        print(local.text())
        if inventory is not None:
            print()
            print(inventory.text())
    return 1 if inventory is not None and not inventory.reachable else 0

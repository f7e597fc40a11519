"""`labkit discover [--cluster] [--json]`: local accelerators and, with --cluster, the Kubernetes nodes and CRDs."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from labkit import cluster, devices
from labkit.cli.check import add_cluster_flags
from labkit.errors import LabkitError, check_number


def register(subparsers) -> None:
    about = "list local accelerators (NVIDIA, Gaudi, CPU) and, with --cluster, the Kubernetes nodes and CRDs"
    discover = subparsers.add_parser("discover", help=about)
    discover.add_argument("--cluster", action="store_true", help="also query the cluster in the kubeconfig")
    add_cluster_flags(discover)
    discover.add_argument("--timeout", type=float, default=10.0, help="seconds per Kubernetes API request (default 10)")
    discover.set_defaults(func=_discover)


def _discover(args: argparse.Namespace) -> int:
    check_number("--timeout", args.timeout, 0.0, "use e.g. --timeout 10", strict=True)
    with contextlib.redirect_stdout(sys.stderr):  # library chatter must not corrupt --json
        local = devices.discover()
        inventory = (
            cluster.discover_cluster(args.kubeconfig, args.context, timeout=args.timeout) if args.cluster else None
        )
    if inventory is not None and not inventory.configured:  # asked for explicitly: an error, not an empty table
        raise LabkitError(inventory.error)
    if args.json:
        data = {"local": local.to_dict()} | ({"cluster": inventory.to_dict()} if inventory else {})
        print(json.dumps(data, indent=2))
    else:
        print(local.text() + (f"\n\n{inventory.text()}" if inventory else ""))
    return 1 if inventory is not None and not inventory.reachable else 0

"""`labkit params NOTEBOOK`: a notebook's typed parameters with their help text."""

from __future__ import annotations

import argparse

from labkit import notebooks


def register(subparsers) -> None:
    params = subparsers.add_parser("params", help="list a notebook's typed parameters")
    params.add_argument("notebook")
    params.set_defaults(func=_params)


def _params(args: argparse.Namespace) -> int:
    (path,) = notebooks.select([args.notebook])
    declared = notebooks.declared_parameters(path)
    width = max((len(n) for n in declared), default=0)
    print(f"{path}:" if declared else f"{path}: no parameters")
    for name, info in declared.items():
        type_name = info.get("inferred_type_name", "None")
        print(f"  {name:<{width}}  {type_name:<10} default {info.get('default')}  # {info.get('help', '')}")
    return 0

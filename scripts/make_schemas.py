#!/usr/bin/env python3
"""Make the structural CRD copies labkit validates MPIJob/TrainJob objects against (labkit/schemas/*.json).

    python scripts/make_schemas.py [--source DIR_WITH_UPSTREAM_CRD_YAML] [--out labkit/schemas] [--check]

Reads the upstream CustomResourceDefinitions, keeps each served version's openAPIV3Schema and drops what validation
does not need (descriptions: ~85% of the bytes). CEL rules (`x-kubernetes-validations`) are not evaluated by
jsonschema: the simple ones (`self >= N`, `self <= N`) become `minimum`/`maximum`, the rest (immutability on
update, cross-field rules) are dropped and left to the API server's dry run. The copies are what labkit checks with
jsonschema as it is: strict about unknown fields (as `kubectl apply` is), and int32/int64 formats as bounds.
`--check` exits 1 when the files on disk differ from what the sources produce.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("/work/shared/schemas")
DEFAULT_OUT = REPO / "labkit" / "schemas"
# Only the CRDs whose objects labkit renders.
CRD_FILES = (
    "kubeflow.org_mpijobs.yaml",
    "trainer.kubeflow.org_trainjobs.yaml",
    "trainer.kubeflow.org_trainingruntimes.yaml",
)
_BOUND = re.compile(r"^\s*self\s*(>=|<=)\s*(-?\d+)\s*$")
INT_MAX = {"int32": 2**31 - 1, "int64": 2**63 - 1}  # jsonschema does not check these formats; it checks bounds


def structural(node):
    """The schema without descriptions, strict, with simple CEL bounds and integer formats as JSON-schema bounds."""
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "x-kubernetes-validations":
            for rule in value:
                match = _BOUND.match(rule.get("rule", ""))
                if match:
                    out["minimum" if match.group(1) == ">=" else "maximum"] = int(match.group(2))
            continue
        out[key] = structural(value)
    if out.get("format") in INT_MAX:
        out.setdefault("minimum", -INT_MAX[out["format"]] - 1)
        out.setdefault("maximum", INT_MAX[out["format"]])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False  # a typo must not vanish silently
    return out


def convert(crd_path: Path) -> dict[str, dict]:
    """{output file name: document} for every served version of one CRD file."""
    text = crd_path.read_text()
    crd = yaml.safe_load(text)
    spec = crd["spec"]
    docs = {}
    for version in spec["versions"]:
        if not version.get("served", False):
            continue
        name = f"{spec['group']}_{spec['names']['plural']}_{version['name']}.json"
        docs[name] = {
            "apiVersion": f"{spec['group']}/{version['name']}",
            "kind": spec["names"]["kind"],
            "scope": spec["scope"],
            "source": crd_path.name,
            "source_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "schema": structural(version["schema"]["openAPIV3Schema"]),
        }
    return docs


def render(docs: dict[str, dict]) -> dict[str, str]:
    return {name: json.dumps(doc, indent=1, sort_keys=True) + "\n" for name, doc in docs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="directory with the upstream CRD YAML files"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON copies go")
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args(argv)
    missing = [name for name in CRD_FILES if not (args.source / name).is_file()]
    if missing:
        print(f"make_schemas: {', '.join(missing)} not found in {args.source}. Fix: pass --source DIR", file=sys.stderr)
        return 2
    files: dict[str, str] = {}
    for name in CRD_FILES:
        files.update(render(convert(args.source / name)))
    stale = [
        name for name, text in files.items() if not (args.out / name).is_file() or (args.out / name).read_text() != text
    ]
    if args.check:
        for name in stale:
            print(f"make_schemas: {args.out / name} is out of date", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name} ({len(text) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

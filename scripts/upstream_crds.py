"""Record the CRDs of the MPI Operator and Kubeflow Trainer releases the kit meets on clusters, for
tests/test_upstream_releases.py: each release's CRDs as upstream tagged them, descriptions dropped (the schema is what
the API server prunes and defaults with), one gzipped JSON per release under tests/data/upstream-crds/.

    python scripts/upstream_crds.py --mpi-operator GIT_DIR --trainer GIT_DIR

GIT_DIR: a clone (or bare mirror) of github.com/kubeflow/mpi-operator or github.com/kubeflow/trainer with its tags.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "upstream-crds"
# (project, ref: a tag, or a commit for an untagged release, the release it is, the CRD files at that ref)
RELEASES = [
    ("mpi-operator", "v0.3.0", "v0.3.0", ["manifests/base/crd.yaml"]),  # the first to serve v2beta1 (beside v1)
    *(("mpi-operator", tag, tag, ["manifests/base/kubeflow.org_mpijobs.yaml"])
      for tag in ("v0.4.0", "v0.5.0", "v0.6.0", "v0.7.0", "v0.8.0")),
    # master at "Prepare v0.8.2 (#825)": the first release with #787 (a finished MPIJob stays finished)
    ("mpi-operator", "caa3c47", "v0.8.2", ["manifests/base/kubeflow.org_mpijobs.yaml"]),
    *(("trainer", tag, tag, [f"manifests/base/crds/trainer.kubeflow.org_{plural}.yaml"
                             for plural in ("trainjobs", "trainingruntimes")])
      for tag in ("v2.0.0", "v2.1.0", "v2.2.0", "v2.3.0")),
]  # fmt: skip


def without_descriptions(value):
    if isinstance(value, dict):
        return {k: without_descriptions(v) for k, v in value.items() if k != "description"}
    if isinstance(value, list):
        return [without_descriptions(v) for v in value]
    return value


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mpi-operator", type=Path, required=True, help="git dir of kubeflow/mpi-operator")
    parser.add_argument("--trainer", type=Path, required=True, help="git dir of kubeflow/trainer")
    args = parser.parse_args()
    repos = {"mpi-operator": args.mpi_operator, "trainer": args.trainer}
    OUT.mkdir(parents=True, exist_ok=True)
    for project, ref, release, paths in RELEASES:
        repo = repos[project]
        commit = git(repo, "rev-parse", f"{ref}^{{commit}}").strip()
        crds = [
            without_descriptions(doc)
            for path in paths
            for doc in yaml.safe_load_all(git(repo, "show", f"{commit}:{path}"))
            if doc and doc.get("kind") == "CustomResourceDefinition"
        ]
        record = {"project": f"kubeflow/{project}", "release": release, "commit": commit, "paths": paths, "crds": crds}
        target = OUT / f"{project}-{release}.json.gz"
        # mtime=0: the same CRDs give the same bytes (a regenerated file diffs only when upstream changed)
        target.write_bytes(gzip.compress(json.dumps(record, sort_keys=True, separators=(",", ":")).encode(), mtime=0))
        print(f"{target.name}: {', '.join(c['metadata']['name'] for c in crds)} at {commit[:12]}")


if __name__ == "__main__":
    main()

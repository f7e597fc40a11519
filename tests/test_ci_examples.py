"""Issue 17's CI examples, checked as their runners and the cluster would check them (none can run here: no GitHub or
GitLab runner, no cluster): the two workflows in docs/ci/ against the official schemas (check-jsonschema's vendored
copies, offline), their `labkit run` lines through labkit's own parser with suites that exist and load; the CronJob of
manifests/regression rendered as `kubectl kustomize` renders it, and its identity on the fake API server."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_rbac import SERVICE_ACCOUNT, load_bindings
from kit_testing import ROOT, fake_cluster, kubectl_kustomize

from labkit import cluster, suites
from labkit import manifests as m
from labkit.chapters.interactive import plan_interactive_job
from labkit.cli import build_parser
from labkit.manifests.checks import check_pod_security

CI = ROOT / "docs" / "ci"
SCHEMAS = {"github-actions.yml": "vendor.github-workflows", "gitlab-ci.yml": "vendor.gitlab-ci"}
CLUSTER_SUITES = sorted((ROOT / "regression").glob("cluster-*.yaml"))


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def labkit_run(line: str, **variables: str) -> tuple[list[str], object]:
    """A shell line's `labkit run ...` (after `.venv/bin/`, `&&`) parsed by labkit's CLI, its $variables expanded
    (the environment's, given, and the line's own `NAME=value` assignments)."""
    words = shlex.split(line.replace("&&", " && "))
    variables |= dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Za-z_]\w*=\S*", w))
    start = next(i for i, w in enumerate(words) if Path(w).name == "labkit" and words[i + 1 : i + 2] == ["run"])
    argv = [re.sub(r"\$(\w+)", lambda v: variables[v.group(1)], w) for w in words[start + 1 :]]
    return argv, build_parser().parse_args(argv)


# ------------------------------------------------------------------------------------------------- the workflows
@pytest.mark.parametrize("name", SCHEMAS)
def test_each_workflow_validates_against_its_official_schema(name, tmp_path):
    done = check_jsonschema(SCHEMAS[name], CI / name)
    assert done.returncode == 0, done.stdout + done.stderr
    # ...and the same check refuses a broken copy: a job without a runner; an artifact kept "sometimes"
    doc = yaml.safe_load((CI / name).read_text())
    if name == "github-actions.yml":
        del doc["jobs"]["gpu-1"]["runs-on"]
    else:
        doc["cpu-smoke"]["artifacts"]["when"] = "sometimes"
    broken = tmp_path / name
    broken.write_text(yaml.safe_dump(doc))
    refused = check_jsonschema(SCHEMAS[name], broken)
    assert refused.returncode == 1 and ("runs-on" in refused.stdout or "sometimes" in refused.stdout), refused.stdout


def _steps() -> list[tuple[str, str, dict]]:
    """(workflow, shell line, what the job keeps: {'junit': [...], 'paths': [...]}) for each line running labkit."""
    found = []
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    for job in github["jobs"].values():
        kept: dict[str, list[str]] = {"junit": [], "paths": []}
        for step in job["steps"]:
            uses, given = step.get("uses", ""), step.get("with") or {}
            if uses.startswith("mikepenz/action-junit-report@"):
                kept["junit"] += given["report_paths"].split(",")
            if uses.startswith("actions/upload-artifact@"):
                kept["paths"] += given["path"].splitlines()
        found += [("github-actions.yml", s["run"], kept) for s in job["steps"] if "labkit run" in s.get("run", "")]
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    for job in gitlab.values():
        artifacts = job.get("artifacts") or {}
        kept = {"junit": [artifacts.get("reports", {}).get("junit", "")], "paths": artifacts.get("paths", [])}
        found += [("gitlab-ci.yml", line, kept) for line in job["script"] if "labkit run" in line]
    return found


def test_every_workflow_runs_a_shipped_suite_and_keeps_its_junit_and_report():
    steps = _steps()
    assert {workflow for workflow, _, _ in steps} == set(SCHEMAS) and len(steps) == 3
    for workflow, line, kept in steps:
        _, args = labkit_run(line)
        assert args.suite and args.junit and args.out, f"{workflow}: {line}"
        suite = suites.load(ROOT / args.suite)  # exists, and loads (every notebook known, every threshold valid)
        assert suite.entries, f"{workflow}: {args.suite} runs nothing"
        assert [str(args.junit)] == kept["junit"] or str(args.junit) in kept["paths"], f"{workflow}: JUnit not kept"
        assert str(args.out) in kept["paths"], f"{workflow}: {args.out} (executed notebooks, report) not kept"


def test_the_github_job_runs_on_a_self_hosted_gpu_runner_with_a_time_limit():
    job = yaml.safe_load((CI / "github-actions.yml").read_text())["jobs"]["gpu-1"]
    assert job["runs-on"] == ["self-hosted", "gpu"] and 0 < job["timeout-minutes"] <= 120
    uploads = [s for s in job["steps"] if s.get("uses", "").startswith(("actions/upload", "mikepenz/"))]
    assert uploads and all(s.get("if") == "always()" for s in uploads)  # failures are when the reports matter


# ------------------------------------------------------------------------------------------------- the CronJob
def _cronjob() -> dict:
    (cron,) = m.kustomize_build(ROOT / "manifests" / "regression")
    return cron


def test_the_regression_kustomization_renders_as_kubectl_does():
    assert m.kustomize_build(ROOT / "manifests" / "regression") == kubectl_kustomize(ROOT / "manifests" / "regression")


def test_the_nightly_cronjob_runs_a_cluster_suite_from_the_lab_image_and_keeps_reports_on_the_pvc():
    """The lab image (images/images.yaml's), the kit's ServiceAccount (with its token: it submits MPIJobs), each
    night's executed notebooks, report and JUnit XML in its own folder on the kit's PVC (the only part of it the pod
    mounts); Pod Security restricted."""
    cron = _cronjob()
    m.validate_objects([cron], pod_security="restricted")
    check_pod_security(cron, "restricted")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # a slow night never overlaps the next one
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    images = yaml.safe_load((ROOT / "images" / "images.yaml").read_text())["images"]
    assert container["image"] == images["lab"]["image"]
    base = {o["kind"]: o for o in m.kustomize_build(ROOT / "manifests" / "base")}
    assert pod["serviceAccountName"] == base["ServiceAccount"]["metadata"]["name"] == "labkit"
    assert pod.get("automountServiceAccountToken", True) and base["ServiceAccount"]["automountServiceAccountToken"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == base["PersistentVolumeClaim"]["metadata"]["name"]
    (mount,) = [v for v in container["volumeMounts"] if v["name"] == volume["name"]]
    assert (mount["mountPath"], mount["subPath"]) == ("/shared/regression", "regression")  # its own folder only
    suite = {e["name"]: e["value"] for e in container["env"]}["SUITE"]
    assert suite.startswith("/opt/labkit/regression/") and (ROOT / "regression" / Path(suite).name) in CLUSTER_SUITES
    assert "COPY regression /opt/labkit/regression" in (ROOT / "images" / "lab" / "Dockerfile").read_text()
    assert "command" not in container and container["args"][:2] == ["bash", "-c"]  # under the image's tini
    out = f"{mount['mountPath']}/20260101-030000"
    _, args = labkit_run(container["args"][2].replace("$(date +%Y%m%d-%H%M%S)", "20260101-030000"), SUITE=suite)
    assert str(args.suite) == suite and str(args.out) == out and str(args.junit) == f"{out}/junit.xml"
    assert job["activeDeadlineSeconds"] >= 3600 and job["backoffLimit"] == 0


def test_the_cronjobs_identity_may_do_every_kubernetes_step_of_the_cluster_suites(tmp_path):
    """As the CronJob's pod (its ServiceAccount) on the fake API server, which enforces manifests/base/rbac.yaml:
    each cluster suite's MPIJob plans, submits, becomes ready, takes an exec and is deleted with nothing refused.
    What the kit's grants cannot do (read CRDs, cluster-scoped) no suite expects."""
    cron = _cronjob()
    identity = (
        f"system:serviceaccount:{cron['metadata']['namespace']}:"
        + (cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"])
    )
    assert identity == SERVICE_ACCOUNT and identity in load_bindings()
    entries = [e for path in CLUSTER_SUITES for e in suites.load(path).entries]
    kube = [e for e in entries if e.parameters.get("backend") == "kubernetes"]
    assert len(kube) == len(CLUSTER_SUITES) == 2
    for entry in kube:
        # A Gaudi cluster's jobs live in the gaudi overlay's own namespace (privileged for hostIPC), with its own copy
        # of the kit's ServiceAccount, Role and binding: the CronJob runs there (manifests/regression says how).
        namespace = entry.parameters.get("namespace", "workloads")
        who = identity.replace(":workloads:", f":{namespace}:")
        with fake_cluster(identity=who, namespaces=("default", namespace)) as (api, _):
            if namespace != "workloads":
                rbac = [o for o in m.kustomize_build(ROOT / "manifests/overlays/gaudi") if "Role" in o["kind"]]
                (tmp_path / "rbac.yaml").write_text(yaml.safe_dump_all(rbac))
                api.grants = load_bindings([tmp_path / "rbac.yaml"])
                assert who in api.grants and all(ns == namespace for ns, _ in api.grants[who])
            plan = plan_interactive_job(**entry.parameters, kubeconfig=api.kubeconfig)
            with plan.backend.submit(plan.spec) as job:
                job.wait_ready(20)
                hosts = job.run(["cat", "/etc/mpi/hostfile"]).output.splitlines()
                assert len(hosts) == entry.parameters["workers"]
            assert not api.pods and api.denied == [], api.denied
    with fake_cluster(identity=identity) as (api, _):
        report = cluster.discover_cluster(api.kubeconfig)
        # manifests/lab's node-reader ClusterRole lets it list nodes; reading CRDs stays cluster-scoped and refused.
        assert report.configured and report.error is None
        assert {(user, a.resource) for user, a in api.denied} == {(identity, "customresourcedefinitions")}
    scoped = ("cluster.crds",)  # read only with a cluster-wide grant the kit does not make
    cluster_wide = [x.result for e in entries for x in e.expect if x.result.startswith(scoped)]
    assert cluster_wide == [], "the CronJob's namespaced identity cannot read these: the suite would always fail"


# ------------------------------------------------------------------------------------------------- docs' kubectl lines
DOCS = [
    *ROOT.glob("*.md"),
    *(ROOT / "docs").rglob("*.md"),
    *(ROOT / "manifests").rglob("*.md"),
    *ROOT.glob("*/README.md"),
]


def exec_problem(line: str) -> str | None:
    """Why a `kubectl exec` line would not reach the launcher (None: it does). The launcher is the MPI Operator's batch
    Job: its pod is `<job>-launcher-<suffix>`, so only `job/<job>-launcher` finds it, and the job's namespace is never
    the kubeconfig's default; labkit/chapters/interactive.py prints `kubectl exec -it -n NS job/<job>-launcher`."""
    words, target, namespaced = shlex.split(line.split(" -- ")[0])[2:], None, False
    while words:
        word = words.pop(0)
        if word in ("-n", "--namespace"):
            namespaced = bool(words.pop(0) if words else None)
        elif word.startswith(("--namespace=", "-n=")):
            namespaced = True
        elif not word.startswith("-") and target is None:
            target = word
    if target and target.endswith("-launcher") and not target.startswith("job/"):
        return f"{target} is no pod: the launcher's pod has a suffix (exec into job/{target})"
    return None if namespaced else "no -n: the job's namespace is not the kubeconfig's default"


def test_docs_exec_into_the_launcher_the_way_the_kit_prints_it():
    assert exec_problem("kubectl exec -it -n workloads job/demo-launcher -- bash") is None  # the kit's own line
    assert "is no pod" in exec_problem("kubectl exec -it -n workloads demo-launcher -- bash")
    assert "no -n" in exec_problem("kubectl exec -it job/demo-launcher -- bash")
    lines = {
        (doc.relative_to(ROOT), line) for doc in DOCS for line in re.findall(r"kubectl exec[^`\n]*", doc.read_text())
    }
    assert any(str(doc) == "docs/instructor.md" for doc, _ in lines)  # chapter 03's page
    assert [(doc, line, exec_problem(line)) for doc, line in lines if exec_problem(line)] == []


def test_the_smoke_suite_counts_in_the_ci_readme_are_the_suite_files():
    """docs/ci/README.md says how much of the kit the CPU smoke suite checks: those counts are read from
    regression/cpu-smoke.yaml, not remembered (it said 6 notebooks and 12 expectations when the file had 8 and 19)."""
    text = " ".join((CI / "README.md").read_text().split())
    said = re.search(r"cpu-smoke\.yaml .*?\((\d+) notebooks, (\d+) expectations", text)
    suite = suites.load(ROOT / "regression" / "cpu-smoke.yaml")
    assert said and (int(said[1]), int(said[2])) == (len(suite.entries), sum(len(e.expect) for e in suite.entries))

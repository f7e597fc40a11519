"""labkit.cluster: node inventory and CRD verdicts from API-shaped JSON deserialized by the official client, the
kubeconfig rules, the no-cluster path, and the whole discovery over HTTP against a small local fake API server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kit_testing import ROOT

from labkit import cluster, kube
from labkit.cluster import accelerator_from_labels, mpijob_crd_status, node_inventory, trainjob_crd_status
from labkit.errors import ConfigError, LabkitError

DATA = Path(__file__).parent / "data"
GIB = 2**30
TOKEN = "lab-token-do-not-print-4f9c"


def deserialize(data, klass: str):
    """Turn API JSON into client objects exactly as the client does for a real response."""
    from kubernetes import client

    return client.ApiClient()._ApiClient__deserialize(data, klass)


@pytest.fixture(scope="module")
def inventory() -> dict[str, cluster.NodeInventory]:
    nodes = deserialize(json.loads((DATA / "nodes.json").read_text()), "V1NodeList")
    return {n.name: n for n in (node_inventory(item) for item in nodes.items)}


def crd(name: str):
    """A recorded CRD (older releases' CRDs: test_upstream_releases)."""
    return deserialize(json.loads((DATA / name).read_text()), "V1CustomResourceDefinition")


# ---------------------------------------------------------------------------------------------------------- nodes


def test_nvidia_gfd_node(inventory):
    node = inventory["dgx-h100-01"]
    assert (node.accelerator_kind, node.accelerator_product) == ("nvidia", "NVIDIA-H100-80GB-HBM3")
    assert node.accelerators == 8 and node.accelerator_memory == 81559 * 2**20
    assert node.allocatable["cpu"] == 223.5 and node.capacity["cpu"] == 224
    assert node.allocatable["memory"] == 2112238940 * 1024
    assert node.ready and node.schedulable and node.taints == ()
    assert "nvidia.com/gpu.product" in node.labels and "kubernetes.io/hostname" not in node.labels


def test_gke_node_maps_the_accelerator_label(inventory):
    node = inventory["gke-lab-l4-pool-3f1a9c2e-x7kq"]
    assert (node.accelerator_kind, node.accelerator_product) == ("nvidia", "NVIDIA L4")
    assert node.accelerators == 2 and node.taints == ("nvidia.com/gpu=present:NoSchedule",)


def test_gaudi_node_with_hugepages(inventory):
    node = inventory["gaudi2-node-01"]
    assert (node.accelerator_kind, node.accelerator_product) == ("gaudi", "Intel Gaudi")
    assert node.accelerators == 8 and node.hugepages_2mi_bytes == 48 * GIB
    assert node.row()["hugepages-2Mi"] == "48.00 GiB"


def test_amd_node(inventory):
    node = inventory["mi300x-01"]
    assert (node.accelerator_kind, node.accelerator_product) == ("amd", "AMD_Instinct_MI300X_OAM")
    assert node.accelerators == 8 and node.accelerator_memory == 192 * GIB


def test_cpu_control_plane_and_a_broken_gpu_node(inventory):
    cp = inventory["cp-1"]
    assert cp.accelerator_kind is None and cp.accelerators == 0
    assert cp.taints == ("node-role.kubernetes.io/control-plane:NoSchedule",) and cp.row()["kind"] == "cpu"
    broken = inventory["dgx-h100-02"]
    assert not broken.ready and not broken.schedulable
    assert broken.row()["accelerators"] == "6/8"  # two GPUs unhealthy: allocatable below capacity
    assert broken.row()["ready"] == "NO" and broken.row()["schedulable"] == "cordoned"


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, ("nvidia", "NVIDIA-A100-SXM4-80GB")),
        ({"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}, ("nvidia", "NVIDIA T4")),
        ({"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, ("nvidia", "NVIDIA H100 80GB")),
        ({"cloud.google.com/gke-accelerator": "nvidia-future-x"}, ("nvidia", "nvidia-future-x")),  # unknown: as given
        ({"amd.com/gpu.product-name": "AMD_Instinct_MI250X"}, ("amd", "AMD_Instinct_MI250X")),
        ({"beta.amd.com/gpu.product-name": "AMD_Instinct_MI210"}, ("amd", "AMD_Instinct_MI210")),
        ({"intel.feature.node.kubernetes.io/gaudi": "true"}, ("gaudi", "Intel Gaudi")),
        ({"feature.node.kubernetes.io/pci-1da3.present": "true"}, ("gaudi", "Intel Gaudi")),
        (
            {"feature.node.kubernetes.io/pci-10de.present": "true"},
            ("nvidia", "NVIDIA GPU (no GPU feature discovery label)"),
        ),
        ({"intel.feature.node.kubernetes.io/gaudi": "false"}, (None, None)),
        ({"kubernetes.io/hostname": "n1"}, (None, None)),
        ({}, (None, None)),
    ],
)
def test_label_to_product(labels, expected):
    assert accelerator_from_labels(labels) == expected


def test_device_plugin_without_labels_still_counts():
    node = deserialize(
        {
            "metadata": {"name": "bare"},
            "spec": {},
            "status": {
                "capacity": {"habana.ai/gaudi": "8", "cpu": "4", "memory": "1Gi"},
                "allocatable": {"habana.ai/gaudi": "8", "cpu": "3500m", "memory": "1Gi"},
            },
        },
        "V1Node",
    )
    inv = node_inventory(node)
    assert inv.accelerator_kind == "gaudi" and "no product label" in inv.accelerator_product and inv.accelerators == 8
    assert not inv.ready  # no Ready condition reported


# ---------------------------------------------------------------------------------------------------------- CRDs


def test_mpijob_v2beta1_is_ok():
    status = mpijob_crd_status(crd("crd-mpijob-v2beta1.json"))
    assert status.ok and status.served_versions == ("v2beta1",) and status.problem is None


def test_mpijob_v1_clash_is_detected():
    status = mpijob_crd_status(crd("crd-mpijob-v1-training-operator.json"))
    assert status.installed and not status.ok
    assert "served at v1" in status.problem and "training-operator" in status.problem
    assert "--enable-scheme" in status.fix and "MPI Operator" in status.fix
    assert status.row()["state"] == "wrong version"


def test_missing_crds():
    assert mpijob_crd_status(None).row()["state"] == "missing"
    assert "MPI Operator" in mpijob_crd_status(None).fix
    assert trainjob_crd_status(None).installed is False and "optional" in trainjob_crd_status(None).fix


def test_trainjob_crd():
    status = trainjob_crd_status(crd("crd-trainjob-v1alpha1.json"))
    assert status.ok and status.name == "trainjobs.trainer.kubeflow.org"


# ---------------------------------------------------------------------------------------------------------- kubeconfig


def write_kubeconfig(
    path: Path, server: str, *, context: str = "lab", extra_context: str | None = None, cluster_name: str = "lab"
) -> Path:
    contexts = [context] + ([extra_context] if extra_context else [])
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {cluster_name}\n  cluster:\n    server: {server}\n"
        "contexts:\n"
        + "".join(f"- name: {c}\n  context: {{cluster: {cluster_name}, user: student}}\n" for c in contexts)
        + f"current-context: {context}\n"
        f"users:\n- name: student\n  user: {{token: {TOKEN}}}\n"
    )
    return path


@pytest.fixture
def no_cluster(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_no_cluster_configured(no_cluster):
    assert cluster.find_kubeconfig() is None
    with pytest.raises(LabkitError, match="^no cluster configured: set KUBECONFIG or create ~/.kube/config"):
        kube.load_client()
    report = cluster.discover_cluster()
    assert not report.configured and report.error.startswith("no cluster configured")
    assert report.summary().startswith("No cluster inventory (no cluster configured")
    assert report.text().startswith("cluster: no cluster configured")
    assert cluster.resolve_cluster_mode("auto") is False
    with pytest.raises(ConfigError) as info:
        cluster.resolve_cluster_mode("on")
    assert info.value.field == "cluster" and "cluster='auto'" in info.value.fix


def test_cluster_mode_values(no_cluster):
    assert cluster.resolve_cluster_mode("off") is False
    with pytest.raises(ConfigError, match="cluster: unknown value 'yes'"):
        cluster.resolve_cluster_mode("yes")


def test_home_kubeconfig_and_explicit_paths(no_cluster, monkeypatch):
    (no_cluster / ".kube").mkdir()
    write_kubeconfig(no_cluster / ".kube" / "config", "https://10.0.0.1:6443")
    source = cluster.find_kubeconfig()
    assert source.kind == "file" and source.context == "lab" and source.server == "https://10.0.0.1:6443"
    assert cluster.resolve_cluster_mode("auto") is True
    with pytest.raises(ConfigError) as info:
        cluster.find_kubeconfig(no_cluster / "typo.yaml")
    assert info.value.field == "kubeconfig" and "does not exist" in info.value.problem


def test_kubeconfig_list_skips_missing_files_and_first_file_wins(no_cluster, monkeypatch):
    first = write_kubeconfig(no_cluster / "a.yaml", "https://first:6443")
    second = write_kubeconfig(no_cluster / "b.yaml", "https://second:6443", context="other")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(no_cluster / "missing.yaml"), str(first), str(second)]))
    source = cluster.find_kubeconfig()
    assert (
        source.paths == (str(first), str(second)) and source.context == "lab" and source.server == "https://first:6443"
    )


def test_kubeconfig_list_connects_to_the_context_the_kit_shows(no_cluster, monkeypatch):
    """kubectl takes current-context from the first file that sets it; the Python client took the last one's, so
    `labkit check` showed https://first while job commands sent requests (and the token) to https://second."""
    first = write_kubeconfig(no_cluster / "a.yaml", "https://first:6443", context="one", cluster_name="one")
    second = write_kubeconfig(no_cluster / "b.yaml", "https://second:6443", context="two", cluster_name="two")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(second)]))
    assert cluster.find_kubeconfig().server == "https://first:6443"
    api = kube.load_client()
    try:
        assert api.configuration.host == "https://first:6443"
    finally:
        api.close()


def test_a_kubeconfig_variable_naming_only_missing_files_says_so(no_cluster, monkeypatch, capsys):
    """KUBECONFIG=/nope (a typo) read as "no cluster configured: set KUBECONFIG ..." although it was set."""
    from labkit.cli import main

    gone, also_gone = no_cluster / "nope", no_cluster / "gone.yaml"
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(gone), str(also_gone)]))
    with pytest.raises(ConfigError) as info:
        kube.load_client()
    assert info.value.field == "KUBECONFIG" and str(gone) in info.value.problem and str(also_gone) in info.value.problem
    monkeypatch.setenv("KUBECONFIG", str(gone))
    assert main(["job", "list", "--backend", "kubernetes"]) == 2
    assert capsys.readouterr().err.startswith(f"labkit: error: KUBECONFIG: {gone} does not exist")


def test_a_kubeconfig_variable_naming_a_folder_says_so(no_cluster, monkeypatch, capsys):
    """KUBECONFIG=~/.kube (a folder) read as "no cluster configured": the folder is named, and the file to use."""
    from labkit.cli import main

    folder = no_cluster / "kube"
    folder.mkdir()
    config = write_kubeconfig(no_cluster / "kc.yaml", "https://10.0.0.1:6443")
    for value in (str(folder), os.pathsep.join([str(config), str(folder)])):  # alone or in kubectl's list form
        monkeypatch.setenv("KUBECONFIG", value)
        with pytest.raises(ConfigError) as info:
            kube.load_client()
        assert info.value.field == "KUBECONFIG" and info.value.problem == f"{folder} is a folder, not a kubeconfig file"
        assert f"the kubeconfig file inside it ({folder / 'config'}" in info.value.fix
    assert main(["job", "list", "--backend", "kubernetes"]) == 2
    assert capsys.readouterr().err.startswith(f"labkit: error: KUBECONFIG: {folder} is a folder, not a kubeconfig")


def test_in_cluster_service_account(no_cluster, monkeypatch):
    token = no_cluster / "token"
    token.write_text("service-account-token")
    monkeypatch.setattr(kube, "IN_CLUSTER_TOKEN", token)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    source = cluster.find_kubeconfig()
    assert source.kind == "in-cluster" and source.server == "https://10.96.0.1:443"
    assert "in-cluster service account" in source.describe()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1")
    assert cluster.find_kubeconfig().server == "https://[fd00:10:96::1]:443"


def test_server_credentials_in_the_url_are_not_shown(no_cluster):
    path = write_kubeconfig(no_cluster / "kc.yaml", "https://admin:hunter2@10.0.0.1:6443")
    source = cluster.find_kubeconfig(path)
    assert source.server == "https://10.0.0.1:6443" and "hunter2" not in source.describe()


def test_unknown_context_names_the_field(no_cluster):
    path = write_kubeconfig(no_cluster / "kc.yaml", "https://10.0.0.1:6443", extra_context="kind-lab")
    assert cluster.find_kubeconfig(path, "kind-lab").context == "kind-lab"
    with pytest.raises(ConfigError) as info:
        cluster.find_kubeconfig(path, "prod")
    assert info.value.field == "context" and "kind-lab, lab" in info.value.problem


def test_load_client_uses_the_given_file(no_cluster):
    path = write_kubeconfig(no_cluster / "kc.yaml", "https://10.9.8.7:6443")
    api = kube.load_client(path)
    try:
        assert api.configuration.host == "https://10.9.8.7:6443"
    finally:
        api.close()


def test_a_client_that_would_drop_the_token_is_refused_naming_the_fix(no_cluster, monkeypatch):
    """kubernetes 36.0.0's loader stores the token as api_key['authorization'] and its configuration reads
    api_key['BearerToken'], so every request went out without it and came back 401 (bench/package_versions.sh)."""
    from kubernetes import client

    path = write_kubeconfig(no_cluster / "kc.yaml", "https://10.9.8.7:6443")
    api = kube.load_client(path)  # this client sends the token
    try:
        assert api.configuration.auth_settings()["BearerToken"]["value"] == f"Bearer {TOKEN}"
    finally:
        api.close()
    monkeypatch.setattr(client.Configuration, "auth_settings", lambda self: {})  # what 36.0.0 does with a token
    with pytest.raises(LabkitError) as err:
        kube.load_client(path)
    assert "would send no token" in str(err.value) and "Fix: pip install 'kubernetes>=37'" in str(err.value)
    assert TOKEN not in str(err.value) and "\n" not in str(err.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_of_a_closed_port_does_not_hang(no_cluster):
    import kubernetes.client  # noqa: F401  (warm import: time the network wait only)

    path = write_kubeconfig(no_cluster / "kc.yaml", f"https://127.0.0.1:{free_port()}")
    probe = kube.probe_api_server(path, timeout=2.0)
    assert not probe.reachable and probe.error == "Connection refused" and probe.elapsed_s < 3.0


def test_discover_on_a_closed_port_reports_instead_of_raising(no_cluster):
    path = write_kubeconfig(no_cluster / "kc.yaml", f"https://127.0.0.1:{free_port()}")
    report = cluster.discover_cluster(path, timeout=2.0)
    assert report.configured and not report.reachable
    assert "listing nodes on https://127.0.0.1:" in report.error and "Connection refused" in report.error


# ---------------------------------------------------------------------------------------------------------- over HTTP


class FakeApiServer:
    """A tiny Kubernetes API stand-in on 127.0.0.1 serving recorded objects; records the requests it saw."""

    def __init__(self, routes: dict[str, tuple[int, dict]]):
        self.routes, self.requests = routes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                outer.requests.append((self.path, self.headers.get("Authorization")))
                status, body = outer.routes.get(
                    self.path.split("?")[0].rstrip("/"),
                    (
                        404,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "reason": "NotFound",
                            "code": 404,
                            "message": f"the server could not find the requested resource ({self.path})",
                        },
                    ),
                )
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"


def api_routes(mpijob_file: str | None = "crd-mpijob-v2beta1.json", trainjob: bool = False, crd_status: int = 200):
    version = {
        "major": "1",
        "minor": "32",
        "emulationMajor": "1",
        "emulationMinor": "32",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "31",
        "gitVersion": "v1.32.3",
        "gitCommit": "32cc146f75aad04beaaa245a7157eb35063a9f99",
        "gitTreeState": "clean",
        "buildDate": "2025-03-11T19:52:21Z",
        "goVersion": "go1.23.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    }  # kind v1.32.3's answer
    routes = {"/version": (200, version), "/api/v1/nodes": (200, json.loads((DATA / "nodes.json").read_text()))}
    if crd_status == 403:
        forbidden = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "Forbidden",
            "code": 403,
            "message": "customresourcedefinitions.apiextensions.k8s.io is forbidden",
        }
        routes[CRD_PATH + "mpijobs.kubeflow.org"] = (403, forbidden)
        routes[CRD_PATH + "trainjobs.trainer.kubeflow.org"] = (403, forbidden)
        return routes
    if mpijob_file:
        routes[CRD_PATH + "mpijobs.kubeflow.org"] = (200, json.loads((DATA / mpijob_file).read_text()))
    if trainjob:
        routes[CRD_PATH + "trainjobs.trainer.kubeflow.org"] = (
            200,
            json.loads((DATA / "crd-trainjob-v1alpha1.json").read_text()),
        )
    return routes


def test_discover_cluster_over_http(no_cluster):
    with FakeApiServer(api_routes()) as server:
        path = write_kubeconfig(no_cluster / "kc.yaml", server.url)
        report = cluster.discover_cluster(path)
        probe = kube.probe_api_server(path)
        from labkit import env

        check = env.check_api_server(str(path))
    assert check.status == "pass" and "Kubernetes v1.32.3" in check.detail
    assert report.configured and report.reachable and report.error is None
    assert [n.name for n in report.nodes] == sorted(n.name for n in report.nodes) and len(report.nodes) == 6
    assert report.totals() == {
        "nodes": 6,
        "ready_nodes": 5,
        "accelerators": {"amd": 8, "gaudi": 8, "nvidia": 16},
        "hugepages_2mi_bytes": 48 * GIB,
    }
    mpijob, trainjob = report.crds
    assert mpijob.ok and trainjob.installed is False
    assert report.summary().endswith("MPIJob v2beta1 is served.")
    assert probe.reachable and probe.version == "v1.32.3" and probe.status is None
    # the token authenticates every request and appears in no output
    assert server.requests and all(auth == f"Bearer {TOKEN}" for _, auth in server.requests)
    assert (
        TOKEN not in json.dumps(report.to_dict()) and TOKEN not in report.text() and TOKEN not in report._repr_html_()
    )


def test_discover_cluster_reports_the_v1_clash_over_http(no_cluster):
    with FakeApiServer(api_routes("crd-mpijob-v1-training-operator.json", trainjob=True)) as server:
        report = cluster.discover_cluster(write_kubeconfig(no_cluster / "kc.yaml", server.url))
    mpijob, trainjob = report.crds
    assert not mpijob.ok and "served at v1" in mpijob.problem and trainjob.ok
    assert "wrong version" in report.text()
    assert report.summary().startswith(
        "The cluster has 6 node(s), 5 ready, with 8 amd, 8 gaudi, 16 nvidia allocatable "
        "and 48 GiB of 2 MiB huge pages; MPIJob v2beta1 is NOT usable: "
    )


def test_forbidden_crd_reads_are_unknown_not_fatal(no_cluster):
    with FakeApiServer(api_routes(crd_status=403)) as server:
        report = cluster.discover_cluster(write_kubeconfig(no_cluster / "kc.yaml", server.url))
    assert report.reachable and len(report.nodes) == 6
    assert [c.installed for c in report.crds] == [None, None]
    assert all("HTTP 403" in c.problem for c in report.crds)


def test_cli_discover_cluster_json_over_http(no_cluster):
    with FakeApiServer(api_routes()) as server:
        path = write_kubeconfig(no_cluster / "kc.yaml", server.url)
        code = "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"
        proc = subprocess.run(
            [sys.executable, "-c", code, "discover", "--cluster", "--json", "--kubeconfig", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cluster"]["totals"]["accelerators"] == {"amd": 8, "gaudi": 8, "nvidia": 16}
    assert data["local"]["devices"][-1]["kind"] == "cpu"
    assert TOKEN not in proc.stdout + proc.stderr


def test_cli_discover_cluster_without_a_cluster_is_an_error(no_cluster):
    code = "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "discover", "--cluster"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "HOME": str(no_cluster)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("labkit: error: no cluster configured: set KUBECONFIG")
    assert "Traceback" not in proc.stderr


def test_cli_render_trainjob_deadline_auto_says_an_unreachable_server_in_one_line(no_cluster, capsys):
    from labkit.cli import main
    from labkit.launch import free_port

    kubeconfig = write_kubeconfig(no_cluster / "kc.yaml", f"http://127.0.0.1:{free_port()}")  # nothing listens
    argv = ["manifests", "render", "--kind", "trainjob", "--trainjob-deadline", "auto", "--kubeconfig", str(kubeconfig)]
    assert main(argv) == 2  # was urllib3's MaxRetryError traceback
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: GET /openapi/v3/apis/trainer.kubeflow.org/v1alpha1: cannot reach the API")
    assert err.count("\n") == 1 and "Fix: " in err


def test_a_kubeconfig_that_is_a_folder_is_called_one(no_cluster):
    with pytest.raises(ConfigError) as info:  # it said "/tmp does not exist"
        kube.find_kubeconfig(no_cluster)
    assert info.value.field == "kubeconfig" and info.value.problem == f"{no_cluster} is a folder, not a kubeconfig file"


def test_job_commands_name_a_bad_kubeconfig_or_context_by_the_flag_typed(no_cluster, tmp_path, capsys):
    """`labkit job list --kubeconfig DIR` said `kubeconfig: ...` (a Python field), unlike every other flag error."""
    from labkit.cli import main

    assert main(["job", "list", "--backend", "kubernetes", "--kubeconfig", str(no_cluster)]) == 2
    assert capsys.readouterr().err.startswith(f"labkit: error: --kubeconfig: {no_cluster} is a folder")
    config = tmp_path / "kc.yaml"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    assert main(["job", "list", "--backend", "kubernetes", "--kubeconfig", str(config), "--context", "nope"]) == 2
    assert capsys.readouterr().err.startswith("labkit: error: --context: context 'nope' is not in")


def test_node_figure(inventory):
    from labkit.plots.discovery import node_accelerators_figure

    nodes = sorted(inventory.values(), key=lambda n: n.name)
    fig = node_accelerators_figure(nodes)
    acc, huge = fig.axes
    assert sum(p.get_width() for p in acc.patches) == 8 + 2 + 8 + 8 + 6  # allocatable accelerators over all nodes
    assert max(p.get_width() for p in huge.patches) == pytest.approx(48.0)
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"amd", "gaudi", "nvidia"}
    assert "gaudi2-node-01\nIntel Gaudi" in [t.get_text() for t in acc.get_yticklabels()]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------------------- notebook 01

NOTEBOOK_01 = ROOT / "notebooks" / "01_accelerator_discovery.ipynb"


@pytest.mark.slow
def test_notebook_01_shows_a_cluster(no_cluster, tmp_path):
    """The chapter against a live (fake) API server: node table, chart, the v1 clash in its conclusion, no token."""
    from labkit import notebooks, results

    with FakeApiServer(api_routes("crd-mpijob-v1-training-operator.json", trainjob=True)) as server:
        path = write_kubeconfig(no_cluster / "kc.yaml", server.url)
        run = notebooks.run_notebook(
            NOTEBOOK_01, tmp_path / "run", {"cluster": "on", "kubeconfig": str(path), "api_timeout_s": 5.0}, timeout=300
        )
    assert run.passed, run.error
    recorded = results.read(run.output)
    assert recorded["cluster"]["reachable"] is True
    assert recorded["cluster"]["totals"]["accelerators"] == {"amd": 8, "gaudi": 8, "nvidia": 16}
    assert [c["ok"] for c in recorded["cluster"]["crds"]] == [False, True]
    cells = json.loads(Path(run.output).read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # device memory + accelerators per node
    conclusion = "".join(outputs[-1]["data"]["text/markdown"])
    assert "6 node(s), 5 ready, with 8 amd, 8 gaudi, 16 nvidia allocatable and 48 GiB" in conclusion
    assert "MPIJob v2beta1 is NOT usable: mpijobs.kubeflow.org is served at v1" in conclusion
    assert TOKEN not in Path(run.output).read_text()


@pytest.mark.slow
def test_notebook_01_cluster_on_without_a_kubeconfig_stops_at_validation(no_cluster, tmp_path):
    from labkit import notebooks

    run = notebooks.run_notebook(NOTEBOOK_01, tmp_path / "run", {"cluster": "on"}, timeout=300)
    assert not run.passed and "cluster: 'on' but no cluster configured" in run.error
    cells = json.loads(Path(run.output).read_text())["cells"]
    (failed,) = [c for c in cells if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    assert "resolve_cluster_mode" in "".join(failed["source"])  # the validation cell, before any discovery


@pytest.mark.parametrize(
    "content, expected",
    [
        (bytes(range(256)) * 4, "not text (binary data)"),
        (b"apiVersion: v1\nclusters: [\n  - bad: {\n", "ParserError: line 3, column 3: expected the node content"),
        (b"apiVersion: v1\nkind: Config\ncurrent-context: gone\ncontexts: []\n", "context 'gone' is not in"),
        (b"current-context: dev\ncontexts: [{name: dev, context: dev-cluster}]\n", "contexts[dev].context is not a"),
        (b"current-context: [dev]\ncontexts: []\n", "current-context is not a context's name"),
        (b"contexts: {dev: {}}\n", "contexts is not a list"),
    ],
)
@pytest.mark.parametrize("command", [["discover", "--cluster"], ["job", "list", "--backend", "kubernetes"]])
def test_a_broken_kubeconfig_is_one_line_naming_the_file(tmp_path, content, expected, command):
    import subprocess
    import sys

    path = tmp_path / "kubeconfig"
    path.write_bytes(content)
    env = {**os.environ, "KUBECONFIG": str(path)}
    code = "import sys; from labkit.cli import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, env=env, timeout=120)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, lines
    assert str(path) in lines[0] and expected in lines[0] and "Fix:" in lines[0]

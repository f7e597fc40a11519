"""labkit.env: each check's verdict on recorded or constructed inputs, the real run on this CPU machine, the
TORCH_CUDA_ARCH_LIST rule cross-checked against DeepSpeed's own op builder, and `labkit check` end to end."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kit_testing import ROOT

from labkit import env
from labkit.env import FAIL, PASS, WARN, Check, CheckReport, TorchBuild
from labkit.errors import ConfigError

DATA = Path(__file__).parent / "data"


def labkit_cli(*args: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env_extra or {})}
    code = "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"  # what the `labkit` script runs
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=environ
    )


# ---------------------------------------------------------------------------------------------------------- data model


def test_check_rejects_unknown_status():
    with pytest.raises(ValueError, match="status must be one of"):
        Check("x", "ok", "detail")


def test_the_verdict_says_ready_or_what_to_fix_first():
    checks = [
        Check("torch", PASS, "2.11.0+cu130"),
        Check("DeepSpeed", PASS, "0.19.8"),
        Check("kubeconfig", WARN, "none"),
    ]
    ready = CheckReport(checks).verdict("cuda")
    assert ready.startswith("This machine **is ready for the labs**: 2 of 3 checks passed, 1 warned, 0 failed.")
    assert "torch: 2.11.0+cu130. DeepSpeed: 0.19.8. Later chapters will run on **cuda**." in ready
    assert ready.endswith("The 1 warning(s) name what this machine lacks or could tune; none blocks the labs here.")
    broken = CheckReport([*checks, Check("mpi4py", FAIL, "missing", "pip install mpi4py")]).verdict("cpu")
    assert "**cannot run the labs yet**" in broken and broken.endswith("Fix first: mpi4py.")
    assert CheckReport(checks[:2]).verdict("cpu").endswith("run on **cpu**. Nothing to fix.")


def test_report_counts_exit_code_and_renderings():
    report = CheckReport(
        [
            Check("a", PASS, "fine", group="g1"),
            Check("b", WARN, "meh", "do w", "g1"),
            Check("c", FAIL, "broken <b>", "do f", "g2"),
        ]
    )
    assert report.counts() == {"pass": 1, "warn": 1, "fail": 1}
    assert report.exit_code() == 1 and CheckReport(report[:2]).exit_code() == 0
    data = json.loads(report.to_json())
    assert data["summary"] == {"pass": 1, "warn": 1, "fail": 1} and data["checks"][2]["fix"] == "do f"
    text = report.text()
    assert "1 passed, 1 warnings, 1 failed" in text and "FAIL  c: do f" in text and "WARN  b: do w" in text
    html = report._repr_html_()
    assert "broken &lt;b&gt;" in html and "#f8d7da" in html  # escaped, and the failing row is coloured


# --------------------------------------------------------------------------------------------------------- python/torch


def test_python_version_rule():
    assert env.check_python((3, 11, 7)).status == PASS
    old = env.check_python((3, 9, 18))
    assert old.status == FAIL and "3.10" in old.fix


def test_torch_checks_on_a_cpu_build_warn_but_never_fail():
    cpu = TorchBuild(version="2.13.0+cpu")
    assert env.check_torch(cpu).status == PASS
    cuda, nccl = env.check_cuda(cpu), env.check_nccl(cpu)
    assert cuda.status == WARN and "CPU build" in cuda.detail and "gloo" in cuda.detail
    assert nccl.status == WARN and "gloo" in nccl.detail
    on_gaudi = env.check_cuda(cpu, hpu_present=True)  # a Gaudi node needs no CUDA: a pass that found nothing
    assert on_gaudi.status == PASS and not on_gaudi.applies and on_gaudi.detail.startswith("not used:")
    assert env.check_cuda(cpu).applies
    assert json.loads(CheckReport([on_gaudi]).to_json())["checks"][0]["applies"] is False  # `labkit check --json`


def test_no_gaudi_software_warns_only_where_there_is_no_other_accelerator(monkeypatch):
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)  # import fails, as on every non-Gaudi machine
    laptop, gpu_node = env.check_hpu(), env.check_hpu(cuda_present=True)
    assert laptop.status == WARN and "not a Gaudi machine" in laptop.detail and "Gaudi node" in laptop.fix
    assert gpu_node.status == PASS and "CUDA" in gpu_node.detail  # the H100 run's 00 warned about it
    assert laptop.applies and not gpu_node.applies  # what run_checks' found() reads: no Gaudi was found


def test_torch_checks_on_a_gpu_build():
    gpu = TorchBuild(
        version="2.11.0+cu130", cuda="13.0", cuda_available=True, cuda_devices=("NVIDIA H200",), nccl="2.28.9"
    )
    assert env.check_cuda(gpu).status == PASS and "NVIDIA H200" in env.check_cuda(gpu).detail
    assert env.check_nccl(gpu).detail.startswith("2.28.9")
    no_driver = TorchBuild(version="2.11.0+cu130", cuda="13.0")
    check = env.check_cuda(no_driver)
    assert check.status == WARN and "is_available() is False" in check.detail and "nvidia-smi" in check.fix


def test_a_torch_older_than_the_kits_floor_fails_naming_the_floor():
    old = env.check_torch(TorchBuild(version="2.4.1+cu121", cuda="12.1"))
    assert old.status == FAIL and "older than 2.6" in old.detail and "torch 2.6 or newer" in old.fix
    for version in ("2.6.0+cu124", "2.10.0", "2.13.0+cpu"):
        assert env.check_torch(TorchBuild(version=version)).status == PASS, version


def test_missing_torch_fails():
    check = env.check_torch(TorchBuild(error="ModuleNotFoundError: No module named 'torch'"))
    assert check.status == FAIL and "make install" in check.fix


def test_torch_build_of_this_machine_is_real():
    import torch

    info = env.torch_build()
    assert info.version == torch.__version__ and info.error is None
    assert info.cuda == torch.version.cuda


# ---------------------------------------------------------------------------------------------------------- arch list


@pytest.mark.parametrize(
    "value, ok",
    [
        ("9.0a", False),
        ("10.0a", False),
        ("Hopper", False),
        ("8.0;9.0+PTX", True),
        ("8.0 8.6", True),
        ("9.0", True),
        ("7.0;7.5;8.0;8.6;8.9;9.0+PTX", True),
        ("9.0+PTX;", False),
        ("8.0;;9.0", False),
    ],
)
def test_arch_list_rule_agrees_with_deepspeeds_op_builder(value, ok, monkeypatch):
    """Our parser fails exactly where DeepSpeed's own builder (FusedAdam, as built by `pip install` with
    DS_BUILD_OPS=1) fails; the builder rewrites the variable, which monkeypatch restores."""
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    try:
        FusedAdamBuilder().compute_capability_args()
        deepspeed_ok = True
    except ValueError:
        deepspeed_ok = False
    assert deepspeed_ok is ok
    try:
        env.parse_cuda_arch_list(value)
        ours = True
    except ValueError:
        ours = False
    assert ours is ok


def test_arch_list_9_0a_fails_on_a_gpu_build_with_the_fix():
    check = env.check_torch_cuda_arch_list("9.0a", gpu_build=True)
    assert check.status == FAIL
    assert "'9.0a'" in check.detail and "invalid literal for int()" in check.detail
    assert "TORCH_CUDA_ARCH_LIST=9.0 " in check.fix and "torch_adam" in check.fix


def test_arch_list_keeps_ptx_in_the_suggestion():
    assert env.suggested_arch_list("8.0;9.0a+PTX") == "8.0;9.0+PTX"
    assert "TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX" in env.check_torch_cuda_arch_list("8.0;9.0a+PTX", True).fix


def test_arch_list_on_a_cpu_build_only_warns():
    check = env.check_torch_cuda_arch_list("9.0a", gpu_build=False)
    assert check.status == WARN and "harmless on this CPU build" in check.detail


def test_arch_list_valid_or_unset_passes():
    assert env.check_torch_cuda_arch_list("8.0;9.0+PTX", True).status == PASS
    assert env.check_torch_cuda_arch_list(None, True).status == PASS
    assert env.check_torch_cuda_arch_list("", True).status == PASS


# ---------------------------------------------------------------------------------------------------------- deepspeed


def test_deepspeed_op_report_is_real():
    report, info = env.deepspeed_op_report(), env.torch_build()
    assert {"cpu_adam", "fused_adam"} <= set(report["ops"])
    assert report["ops"]["cpu_adam"]["compatible"] is True  # ninja + g++ are here
    check = env.check_deepspeed_ops(report, info)
    # the device here: a GPU build also needs CUDA_HOME (nvcc) to JIT-build its ops
    assert check.status == (WARN if info.gpu_build and not report["cuda_home"] else PASS) and "cpu_adam" in check.detail


def test_deepspeed_ops_without_a_compiler_warn():
    report = {
        "ops": {"cpu_adam": {"installed": False, "compatible": False}},
        "ninja": False,
        "compiler": None,
        "cuda_home": None,
    }
    check = env.check_deepspeed_ops(report, TorchBuild(version="2.11.0+cu130", cuda="13.0"))
    assert check.status == WARN
    assert "ninja and a C++ compiler and CUDA_HOME/nvcc" in check.fix and "torch_adam" in check.fix


# ---------------------------------------------------------------------------------------------------------- system


def test_hugepages_from_recorded_meminfo():
    laptop = env.check_hugepages((DATA / "meminfo-cpu-laptop.txt").read_text())
    assert laptop.status == PASS and laptop.detail.startswith("0 x 2 MiB pages") and "only Gaudi" in laptop.detail
    gaudi = env.check_hugepages((DATA / "meminfo-gaudi2-node.txt").read_text(), gaudi_present=True)
    assert gaudi.status == PASS and gaudi.detail.startswith("24576 x 2 MiB pages reserved (48.00 GiB, 20480 free)")


def test_gaudi_without_hugepages_warns():
    check = env.check_hugepages((DATA / "meminfo-cpu-laptop.txt").read_text(), gaudi_present=True)
    assert check.status == WARN and "hugepages-2Mi" in check.detail and "vm.nr_hugepages" in check.fix


def test_hugepages_unparsable_meminfo_warns():
    assert env.check_hugepages("garbage without a colon").status == WARN


def test_shm_of_this_machine_and_a_container_default(monkeypatch):
    real = env.check_shm("/dev/shm")
    assert real.status in (PASS, WARN) and "GiB" in real.detail

    class Small:  # what os.statvfs reports for Docker's default 64 MiB /dev/shm
        f_frsize, f_blocks, f_bavail = 4096, 16384, 16000

    monkeypatch.setattr(os, "statvfs", lambda path: Small)
    check = env.check_shm("/dev/shm")
    assert check.status == WARN and "0.06 GiB" in check.detail and "medium: Memory" in check.fix


def test_shm_missing_warns(tmp_path):
    assert env.check_shm(tmp_path / "nope").status == WARN


def test_cpu_thread_oversubscription_warns():
    assert env.check_cpu(2, 2, {"OMP_NUM_THREADS": "8"}).status == WARN
    assert env.check_cpu(2, 2, {"OMP_NUM_THREADS": "1"}).status == PASS


def test_a_cpu_without_native_bf16_warns_and_says_what_the_chapters_do_about_it():
    """On a host with AVX2 and no AVX-512, torch's bf16 matmul ran 0.29 GFLOPS against 85 in fp32, and chapter 02
    (bf16 on its CPU ranks) took 108 s instead of 30: the check says so, and that chapters 02 and 05 then train on
    fewer tokens (zero.make_plan), and what to pick elsewhere."""
    slow = env.check_cpu(2, 2, {}, bf16=False)
    assert slow.status == WARN and "no native bf16" in slow.detail
    assert "02 and 05" in slow.fix and "1 x 4 tokens" in slow.fix and "--dtype fp32" in slow.fix
    fast = env.check_cpu(2, 2, {}, bf16=True)
    assert fast.status == PASS and fast.detail.endswith("; native bf16")
    assert env.check_cpu(2, 2, {}).status == PASS  # not known (no torch): nothing claimed


def test_the_cpu_check_asks_torch_whether_it_computes_bf16_natively():
    import torch

    info = env.torch_build()
    assert info.cpu_bf16 is torch.ops.mkldnn._is_mkldnn_bf16_supported()
    unthreaded = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # no oversubscription warning first
    check = next(c for c in env.run_checks(env=unthreaded) if c.name == "CPU")
    assert ("no native bf16" in check.detail) is (not info.cpu_bf16)


# ---------------------------------------------------------------------------------------------------------- NCCL env


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("eth", ["eth0", "eth1"]),
        ("=eth", []),
        ("=eth0", ["eth0"]),
        ("^lo,docker", ["eth0", "eth1", "ib0"]),
        ("ib0,eth1", ["eth1", "ib0"]),
        ("ens", []),
    ],
)
def test_nccl_socket_ifname_semantics(spec, expected):
    assert env.nccl_ifname_matches(spec, ["docker0", "eth0", "eth1", "ib0", "lo"]) == expected


def test_nccl_socket_ifname_naming_a_missing_interface_warns():
    check = env.check_nccl_socket_ifname({"NCCL_SOCKET_IFNAME": "ib0"}, ["eth0", "lo"])
    assert check.status == WARN and "matches no interface" in check.detail
    assert "NCCL_SOCKET_IFNAME=eth0" in check.fix


def test_nccl_socket_ifname_on_this_machines_interfaces():
    interfaces = env.network_interfaces()
    assert "lo" in interfaces
    assert env.check_nccl_socket_ifname({"NCCL_SOCKET_IFNAME": "lo"}, interfaces).status == PASS
    assert env.check_nccl_socket_ifname({"NCCL_SOCKET_IFNAME": "=does-not-exist9"}, interfaces).status == WARN
    assert env.check_nccl_socket_ifname({}, interfaces).status == PASS


def test_nccl_debug_and_ib_disable():
    assert env.check_nccl_debug({"NCCL_DEBUG": "INFO"}).status == PASS
    assert env.check_nccl_debug({"NCCL_DEBUG": "verbose"}).status == WARN
    assert env.check_nccl_ib_disable({"NCCL_IB_DISABLE": "1"}, ["mlx5_0"]).status == WARN
    assert env.check_nccl_ib_disable({"NCCL_IB_DISABLE": "1"}, []).status == PASS
    assert env.check_nccl_ib_disable({"NCCL_IB_DISABLE": "yes"}, []).status == WARN


# ---------------------------------------------------------------------------------------------------------- kubernetes


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: {server}
contexts:
- name: lab
  context: {{cluster: lab, user: student}}
current-context: lab
users:
- name: student
  user: {{token: not-a-real-token}}
""")
    return path


@pytest.fixture
def no_cluster(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_kubeconfig_absent_warns(no_cluster):
    check = env.check_kubeconfig()
    assert check.status == WARN and check.detail.startswith("no cluster configured") and "KUBECONFIG" in check.fix
    assert env.check_api_server().detail == "skipped: no cluster configured"


def test_kubeconfig_variable_naming_missing_files_says_so(no_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(no_cluster / "gone.yaml"))
    check = env.check_kubeconfig()
    assert check.status == WARN and check.detail == f"KUBECONFIG: {no_cluster / 'gone.yaml'} does not exist"


def test_kubeconfig_variable_naming_a_folder_says_so(no_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(no_cluster))  # it said "names no existing file: no cluster configured"
    check = env.check_kubeconfig()
    assert check.status == WARN and check.detail == f"KUBECONFIG: {no_cluster} is a folder, not a kubeconfig file"
    assert check.fix.startswith("point KUBECONFIG at the kubeconfig file inside it")


def test_kubeconfig_present_passes_without_showing_the_token(no_cluster, monkeypatch):
    path = kubeconfig(no_cluster / "kc.yaml", "https://10.1.2.3:6443")
    monkeypatch.setenv("KUBECONFIG", str(path))
    check = env.check_kubeconfig()
    assert check.status == PASS and "context lab" in check.detail and "https://10.1.2.3:6443" in check.detail
    assert "not-a-real-token" not in json.dumps(check.to_dict())


def test_broken_kubeconfig_warns(no_cluster, monkeypatch):
    bad = no_cluster / "bad.yaml"
    bad.write_text("clusters: [unclosed\n")
    monkeypatch.setenv("KUBECONFIG", str(bad))
    check = env.check_kubeconfig()
    assert check.status == WARN and "not a readable kubeconfig" in check.detail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warm_kubernetes_import() -> None:
    """The client takes seconds of CPU to import on a busy 2-core machine; time the network wait, not that."""
    import kubernetes.client  # noqa: F401
    import kubernetes.config  # noqa: F401


def test_api_server_on_a_closed_port_warns_quickly(no_cluster, monkeypatch):
    warm_kubernetes_import()
    path = kubeconfig(no_cluster / "kc.yaml", f"https://127.0.0.1:{free_port()}")
    monkeypatch.setenv("KUBECONFIG", str(path))
    start = time.monotonic()
    check = env.check_api_server(timeout=2.0)
    assert time.monotonic() - start < 3.0
    assert check.status == WARN and "unreachable" in check.detail and "Connection refused" in check.detail


def test_api_server_that_never_answers_is_cut_at_the_timeout(no_cluster, monkeypatch):
    """A listening socket that never replies (a hung API server): the check must return within its limit."""
    warm_kubernetes_import()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        path = kubeconfig(no_cluster / "kc.yaml", f"https://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("KUBECONFIG", str(path))
        start = time.monotonic()
        check = env.check_api_server(timeout=1.0)
        elapsed = time.monotonic() - start
    assert elapsed < 3.0 and check.status == WARN and "unreachable" in check.detail


# ---------------------------------------------------------------------------------------------------------- all checks


def test_validate_check_options():
    with pytest.raises(ConfigError) as info:
        env.validate_check_options(30)
    assert info.value.field == "api_timeout_s"
    with pytest.raises(ConfigError, match="kubeconfig: /nonexistent/kc does not exist"):
        env.validate_check_options(2.0, "/nonexistent/kc")


def test_run_checks_on_this_cpu_machine(no_cluster, monkeypatch):
    """Real checks, with torch seen as a CPU build (the CPU view, also on a GPU machine)."""
    import torch

    monkeypatch.setattr(env, "torch_build", lambda: TorchBuild(version=torch.__version__))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")  # the GPU image's value: only a warning on a CPU build
    report = env.run_checks(env={**os.environ, "NCCL_SOCKET_IFNAME": "ib7"})
    names = [c.name for c in report]
    assert len(report) >= 12 and len(set(names)) == len(names)
    for required in (
        "Python",
        "torch",
        "CUDA",
        "NCCL",
        "DeepSpeed",
        "DeepSpeed ops (JIT)",
        "TORCH_CUDA_ARCH_LIST",
        "accelerate",
        "papermill",
        "nbclient",
        "jupyterlab",
        "ipywidgets",
        "/dev/shm",
        "NCCL_DEBUG",
        "NCCL_SOCKET_IFNAME",
        "NCCL_IB_DISABLE",
        "mpirun",
        "mpi4py",
        "kubeconfig",
        "Kubernetes API server",
        "huge pages",
    ):
        assert required in names
    by_name = {c.name: c for c in report}
    assert report.failures == [], report.text()  # nothing a CPU laptop lacks may fail
    assert by_name["TORCH_CUDA_ARCH_LIST"].status == WARN
    assert by_name["NCCL_SOCKET_IFNAME"].status == WARN
    assert by_name["CUDA"].status == WARN and "CPU build" in by_name["CUDA"].detail
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"  # DeepSpeed itself still sees the device here
    assert by_name["DeepSpeed"].status == PASS and f"accelerator {accelerator}" in by_name["DeepSpeed"].detail
    assert by_name["kubeconfig"].status == WARN and by_name[env.HPU].status == WARN
    assert sys.executable not in by_name["Python"].detail or sys.prefix == sys.base_prefix  # no internal venv path
    assert "<labkit" not in repr(report) and repr(report) == report.text()


def test_run_checks_on_a_cuda_machine_does_not_ask_for_gaudi_software(no_cluster, monkeypatch):
    gpu = TorchBuild(version="2.11.0+cu130", cuda="13.0", cuda_available=True, cuda_devices=("NVIDIA H100",))
    monkeypatch.setattr(env, "torch_build", lambda: gpu)
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)
    no_hugepages, hugepages = (DATA / "meminfo-cpu-laptop.txt").read_text(), env.check_hugepages
    monkeypatch.setattr(env, "check_hugepages", lambda _, gaudi_present=False: hugepages(no_hugepages, gaudi_present))
    by_name = {c.name: c for c in env.run_checks()}
    assert by_name[env.HPU].status == PASS and by_name["CUDA"].status == PASS
    # HPU passes as "not used": that is no Gaudi, whose missing huge pages were then a warning (00 on an H100)
    assert by_name["huge pages"].status == PASS and "only Gaudi workloads need them" in by_name["huge pages"].detail


def test_a_crashing_check_becomes_a_warning(monkeypatch):
    monkeypatch.setattr(env, "check_mpirun", lambda: 1 / 0)
    report = env.run_checks()
    crashed = next(c for c in report if c.name == "mpirun")
    assert crashed.status == WARN and "ZeroDivisionError" in crashed.detail


def test_check_summary_figure():
    from labkit.plots.discovery import check_summary_figure

    report = CheckReport(
        [Check("a", PASS, "", group="x"), Check("b", WARN, "", group="x"), Check("c", FAIL, "", group="y")]
    )
    fig = check_summary_figure(report)
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert sorted(widths) == [0, 0, 0, 1, 1, 1]  # 2 groups x 3 statuses
    data, meta = fig._repr_mimebundle_()  # how a notebook shows it: a PNG with alt text, even without %matplotlib
    assert base64.b64decode(data["image/png"])[:4] == b"\x89PNG"
    assert meta["image/png"]["alt"] == data["text/plain"] and "x: 1 pass, 1 warn, 0 fail" in data["text/plain"]


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_check_json_on_this_machine(no_cluster):
    # an unset arch list: the GPU image's 9.0a is a real failure on a GPU machine, tested above
    proc = labkit_cli("check", "--json", env_extra={"HOME": str(no_cluster), "TORCH_CUDA_ARCH_LIST": ""})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["checks"]) >= 12 and data["summary"]["fail"] == 0
    assert {"name", "status", "detail", "fix", "group"} <= set(data["checks"][0])


def test_cli_check_exits_1_when_a_check_fails(tmp_path, no_cluster):
    """A deepspeed that cannot be imported (a broken build) is a real failure: exit code 1, the fix printed."""
    shadow = tmp_path / "shadow" / "deepspeed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    proc = labkit_cli(
        "check",
        env_extra={
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(tmp_path / "shadow"), str(ROOT), os.environ.get("PYTHONPATH")])
            ),
            "HOME": str(no_cluster),
        },
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "libcudart.so.12" in proc.stdout and "FAIL  DeepSpeed: rebuild it against this torch" in proc.stdout


def test_cli_check_rejects_a_long_timeout():
    proc = labkit_cli("check", "--timeout", "30")
    assert proc.returncode == 2 and "labkit: error: --timeout: 30.0 is not a number of seconds" in proc.stderr


# ---------------------------------------------------------------------------------------------------------- notebook 00


@pytest.mark.slow
def test_notebook_00_records_the_checks(executed_notebook):
    from labkit import results

    recorded = results.read(executed_notebook("00_environment_check"))
    checks, summary = recorded["checks"], recorded["summary"]
    assert len(checks) >= 12
    assert summary == {s: sum(c["status"] == s for c in checks) for s in ("pass", "warn", "fail")}
    assert summary["fail"] == 0, [c for c in checks if c["status"] == "fail"]  # this CPU machine is the reference
    assert recorded["device"] in ("cpu", "cuda", "hpu")


@pytest.mark.slow
def test_plain_papermill_false_as_text_is_refused_not_read_as_true(tmp_path):
    """`papermill NB OUT -p fail_on_error false` passes the string "false" (true to Python): refused by name."""
    import subprocess
    import sys

    nb, out = ROOT / "notebooks" / "00_environment_check.ipynb", tmp_path / "out.ipynb"
    argv = [
        sys.executable,
        "-m",
        "papermill",
        str(nb),
        str(out),
        "-p",
        "fail_on_error",
        "false",
        "--cwd",
        str(tmp_path),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "fail_on_error: must be True or False, got 'false'" in run.stderr, run.stderr[-2000:]


@pytest.mark.slow
def test_notebook_00_rejects_a_bad_parameter_before_checking(tmp_path):
    from labkit import notebooks

    run = notebooks.run_notebook(
        ROOT / "notebooks" / "00_environment_check.ipynb", tmp_path / "run", {"api_timeout_s": 30.0}, timeout=300
    )
    assert not run.passed and "api_timeout_s: 30.0 is not a number of seconds in (0, 3]" in run.error
    cells = json.loads(Path(run.output).read_text())["cells"]
    (failed,) = [c for c in cells if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    assert "validate_check_options" in "".join(failed["source"])  # stopped before any check ran
    assert "run_checks" not in "".join(failed["source"])


def test_proxy_check_reports_what_it_sees_and_hides_credentials():
    assert env.check_proxy({}).status == PASS and "direct" in env.check_proxy({}).detail
    seen = env.check_proxy(
        {"HTTPS_PROXY": "http://bob:s3cret@proxy.corp:3128", "no_proxy": "localhost,.svc", "NO_PROXY": "localhost,.svc"}
    )
    assert (
        seen.status == PASS and "HTTPS_PROXY=http://***@proxy.corp:3128" in seen.detail and "s3cret" not in seen.detail
    )
    assert "NO_PROXY=localhost,.svc" in seen.detail
    no_local = env.check_proxy({"http_proxy": "http://proxy.corp:3128"})
    assert no_local.status == WARN and "NO_PROXY=localhost" in no_local.fix
    for url in ("alice:s3cret@proxy:3128", "http://alice:pa/s3cret@proxy:3128", "http://alice:p@s3cret@proxy:3128"):
        shown = env.check_proxy({"HTTPS_PROXY": url, "NO_PROXY": "*"})  # no scheme, a / or an @ in the password
        assert "s3cret" not in shown.detail and "***@proxy:3128" in shown.detail and shown.status == PASS  # * covers
    differ = env.check_proxy({"HTTP_PROXY": "http://a:1", "http_proxy": "http://b:2"})
    assert differ.status == WARN and "differ" in differ.detail

"""labkit.devices: parsing recorded tool output, the NVML/Gaudi paths with modules faked at the import boundary,
the CLI fallbacks through real subprocesses of fake tools on PATH, the real CPU path, and pick_device."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from labkit import devices, host
from labkit.devices import Device, parse_hl_smi_csv, parse_nvidia_smi_csv
from labkit.errors import ConfigError, ParseError
from labkit.host import parse_cpulist, parse_meminfo

DATA = Path(__file__).parent / "data"
MIB = 2**20


# ---------------------------------------------------------------------------------------------------------- parsing


def test_nvidia_smi_recorded_on_a_real_h200():
    (gpu,) = parse_nvidia_smi_csv((DATA / "nvidia-smi-h200-real.csv").read_text())
    assert gpu.kind == "cuda" and gpu.index == 0 and gpu.source == "nvidia-smi"
    assert gpu.name == "NVIDIA H200"
    assert gpu.mem_total == 143771 * MIB
    assert gpu.driver.startswith("580.")
    assert 0 <= gpu.mem_used < gpu.mem_total and 0 <= gpu.utilization <= 100


def test_nvidia_smi_eight_gpus_in_mib():
    gpus = parse_nvidia_smi_csv((DATA / "nvidia-smi-8xh100.csv").read_text())
    assert [g.index for g in gpus] == list(range(8))
    assert gpus[0].mem_used == 72345 * MIB and gpus[0].utilization == 98.0
    assert gpus[7].mem_used == 4 * MIB and gpus[7].utilization == 0.0
    assert {g.driver for g in gpus} == {"550.54.15"}


def test_nvidia_smi_not_available_fields_become_none():
    mig, plain = parse_nvidia_smi_csv((DATA / "nvidia-smi-a100-mig.csv").read_text())
    assert mig.utilization is None and mig.mem_total == 40960 * MIB
    assert plain.utilization == 0.0


@pytest.mark.parametrize(
    "line, message",
    [
        ("0, NVIDIA H100 80GB HBM3, 81559, 0", "expected 6 comma-separated fields"),
        ("0, NVIDIA H100 80GB HBM3, lots, 0, 0, 580.1", "not a number"),
        ("GPU 0: NVIDIA H100 (UUID: GPU-1234)", "expected 6"),  # `nvidia-smi -L` output fed by mistake
    ],
)
def test_nvidia_smi_parse_errors_quote_the_line(line, message):
    with pytest.raises(ParseError, match=message) as info:
        parse_nvidia_smi_csv("0, NVIDIA H100 80GB HBM3, 81559, 0, 0, 580.1\n" + line + "\n")
    assert "line 2" in str(info.value) and line in str(info.value)


def test_hl_smi_gaudi2():
    hpus = parse_hl_smi_csv((DATA / "hl-smi-gaudi2.csv").read_text())
    assert len(hpus) == 8 and {h.kind for h in hpus} == {"hpu"}
    assert {h.name for h in hpus} == {"HL-225"}
    assert hpus[0].mem_total == 98304 * MIB and hpus[0].mem_used == 61440 * MIB and hpus[0].utilization == 87.0
    assert hpus[0].driver == "1.18.0-ee698fb" and hpus[0].source == "hl-smi"


def test_hl_smi_parse_error():
    with pytest.raises(ParseError, match="hl-smi output line 1"):
        parse_hl_smi_csv("index, name, memory.total [MiB]\n")  # a header: csv without noheader


def test_meminfo_recorded():
    laptop = parse_meminfo((DATA / "meminfo-cpu-laptop.txt").read_text())
    assert laptop["MemTotal"] == 24684084 * 1024
    assert laptop["HugePages_Total"] == 0 and laptop["Hugepagesize"] == 2 * MIB
    gaudi = parse_meminfo((DATA / "meminfo-gaudi2-node.txt").read_text())
    assert gaudi["HugePages_Total"] == 24576 and gaudi["HugePages_Free"] == 20480  # counts, not bytes


def test_meminfo_parse_error():
    with pytest.raises(ParseError, match="line 2"):
        parse_meminfo("MemTotal: 100 kB\nthis is not meminfo\n")
    with pytest.raises(ParseError, match="unknown unit"):
        parse_meminfo("MemTotal: 100 MB\n")


def test_cpulist():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("0") == [0]
    with pytest.raises(ParseError):
        parse_cpulist("0-a")


def test_numa_nodes_from_a_sysfs_tree(tmp_path):
    for node, cpus, kb in ((0, "0-3", 16384000), (1, "4-7", 16777216)):
        d = tmp_path / f"node{node}"
        d.mkdir()
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal:       {kb} kB\nNode {node} MemFree:        1000 kB\n")
    (tmp_path / "online").write_text("0-1\n")  # not a node directory
    nodes = host.numa_nodes(tmp_path)
    assert [n["node"] for n in nodes] == [0, 1]
    assert nodes[1]["cpus"] == [4, 5, 6, 7] and nodes[1]["mem_total"] == 16777216 * 1024


def test_cgroup_limits(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text("8589934592\n")
    (tmp_path / "memory.current").write_text("1073741824\n")
    assert host.cgroup_cpu_limit(tmp_path) == 1.5
    assert host.cgroup_memory(tmp_path) == (8 * 2**30, 2**30)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert host.cgroup_cpu_limit(tmp_path) is None
    assert host.cgroup_memory(tmp_path) == (None, None)


# ---------------------------------------------------------------------------------------------------------- CPU (real)


def test_cpu_device_is_this_machine():
    cpu = devices.cpu_device()
    assert cpu.kind == "cpu" and cpu.index == 0 and cpu.source == "procfs"
    assert cpu.info["cores"] == min(len(os.sched_getaffinity(0)), cpu.info["cores"]) >= 1
    assert cpu.info["logical_cpus"] == os.cpu_count()
    meminfo = parse_meminfo(Path("/proc/meminfo").read_text())
    assert 0 < cpu.mem_total <= meminfo["MemTotal"]
    assert 0 < cpu.mem_used < cpu.mem_total
    assert cpu.info["numa_nodes"] >= 1


def test_discover_on_this_machine_finds_the_cpu_and_explains_the_rest():
    found = devices.discover()
    assert found.kinds()[-1] == "cpu" and len(found.of_kind("cpu")) == 1
    assert any(n.startswith("NVIDIA:") for n in found.notes) and any(n.startswith("Gaudi:") for n in found.notes)
    assert "cpu" in found.text() and "<table>" in found._repr_html_()
    assert found.to_dict()["devices"][-1]["kind"] == "cpu"


def test_the_discovery_sentence_names_what_was_found():
    gpus = parse_nvidia_smi_csv((DATA / "nvidia-smi-8xh100.csv").read_text())
    cpu = devices.Device("cpu", 0, "cpu", 24 * 2**30, info={"cores": 16})
    found = devices.Discovery([*gpus, cpu])
    assert found.summary() == (
        f"This machine has 8 accelerator(s) ({gpus[0].name}) and 16 usable CPU core(s) with 25.77 GB of memory"
    )  # the units of the table above it (decimal GB: 24 GiB), not the chart's GiB beside a table in GB
    assert devices.Discovery([cpu]).summary().startswith("This machine has no accelerator and 16 usable CPU core(s)")


def test_discover_rejects_unknown_kinds():
    with pytest.raises(ConfigError, match="kinds: unknown device kind"):
        devices.discover(["gpu"])


# ---------------------------------------------------------------------------------------------------------- NVIDIA


class NVMLError(Exception):
    pass


def fake_pynvml(gpus, *, init_error: bool = False, utilization_error_on=()):
    """A module with pynvml's API (the names labkit calls), backed by `gpus` = [(name, total, used, util)]."""
    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError
    mod.calls = []

    def init():
        mod.calls.append("init")
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: mod.calls.append("shutdown")
    mod.nvmlSystemGetDriverVersion = lambda: b"580.159.04"  # older nvidia-ml-py returns bytes
    mod.nvmlDeviceGetCount = lambda: len(gpus)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: gpus[h][0]
    mod.nvmlDeviceGetUUID = lambda h: f"GPU-{h}a2b3c4d-0000-0000-0000-00000000000{h}".encode()
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=gpus[h][1], used=gpus[h][2], free=gpus[h][1] - gpus[h][2]
    )

    def utilization(h):
        if h in utilization_error_on:
            raise NVMLError("Not Supported")
        return types.SimpleNamespace(gpu=gpus[h][3], memory=0)

    mod.nvmlDeviceGetUtilizationRates = utilization
    return mod


def test_nvml_path(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = fake_pynvml(
        [("NVIDIA H200", 143771 * MIB, 512 * MIB, 41), (b"NVIDIA H200", 143771 * MIB, 0, 0)], utilization_error_on={1}
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    found = devices.discover(["cuda"])
    assert [d.name for d in found.devices] == ["NVIDIA H200", "NVIDIA H200"]
    first, second = found.devices
    uuid = {"uuid": "GPU-0a2b3c4d-0000-0000-0000-000000000000"}
    assert first == Device("cuda", 0, "NVIDIA H200", 143771 * MIB, 512 * MIB, 41.0, "580.159.04", "nvml", uuid)
    assert second.utilization is None  # MIG-style "Not Supported" does not lose the device
    assert nvml.calls == ["init", "shutdown"]
    assert found.notes == ["NVIDIA: 2 device(s) via NVML"]


@pytest.mark.parametrize(
    "visible, physical",
    [
        ("", []),  # CUDA sees none: torch says 0 and the chapters run on cpu
        ("-1", []),
        ("2", [2]),
        ("3,1", [3, 1]),  # in the listed order, renumbered 0, 1 as torch numbers them
        ("1,7,2", [1]),  # up to the first entry that names no GPU
        ("0,0", []),  # named twice: none, as in CUDA
        ("GPU-2a2b", [2]),  # a UUID prefix
        ("GPU-2a2b,1", [2, 1]),
    ],
)
def test_discovery_shows_what_cuda_visible_devices_leaves_to_cuda(monkeypatch, visible, physical):
    """NVML lists every GPU of the host; with CUDA_VISIBLE_DEVICES set, notebook 01 said '4 accelerators' while torch
    (and the later chapters) saw none or one."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([("NVIDIA H100", 80 * 2**30, 0, 0)] * 4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    found = devices.discover(["cuda"])
    assert [d.info["physical_index"] for d in found.devices] == physical
    assert [d.index for d in found.devices] == list(range(len(physical)))
    assert found.notes[-1] == f"CUDA_VISIBLE_DEVICES={visible!r}: CUDA (torch, the chapters) sees {len(physical)} of 4"


SMI_ARGS = (
    "--query-gpu=index,name,memory.total,memory.used,utilization.gpu,driver_version --format=csv,noheader,nounits"
)


def fake_nvidia_smi(monkeypatch, directory: Path, output_file: Path | None, exit_code: int = 0) -> None:
    """An nvidia-smi on PATH that answers labkit's exact query with a recorded output (or fails)."""
    write_tool(directory, "nvidia-smi", SMI_ARGS, output_file, exit_code)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")


def write_tool(directory: Path, name: str, expected_args: str, output_file: Path | None, exit_code: int = 0) -> None:
    """A fake CLI that insists on labkit's exact arguments, then prints a recorded output."""
    script = directory / name
    body = f'#!/bin/sh\nif [ "$*" != "{expected_args}" ]; then echo "unexpected args: $*" >&2; exit 64; fi\n'
    if output_file is not None:
        body += f'cat "{output_file}"\n'
    else:
        body += 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver." >&2\n'
    body += f"exit {exit_code}\n"
    script.write_text(body)
    script.chmod(0o755)


def test_nvml_failure_falls_back_to_nvidia_smi(monkeypatch, tmp_path):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU build (also on a GPU test machine)
    fake_nvidia_smi(monkeypatch, tmp_path, DATA / "nvidia-smi-8xh100.csv")
    found = devices.discover(["cuda"])
    assert len(found.devices) == 8 and {d.source for d in found.devices} == {"nvidia-smi"}
    assert found.notes[0].startswith("NVIDIA: NVML failed (NVMLError")
    assert "torch.cuda skipped" in found.notes[1]
    assert found.notes[-1] == "NVIDIA: 8 device(s) via nvidia-smi"


def test_failing_nvidia_smi_is_a_note_not_a_crash(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=True))
    fake_nvidia_smi(monkeypatch, tmp_path, None, exit_code=9)
    found = devices.discover(["cuda"])
    assert found.devices == []
    assert any("nvidia-smi failed" in n and "exited with 9" in n and "NVIDIA driver" in n for n in found.notes)


def test_torch_fallback_reads_device_properties(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    props = types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", total_memory=85520809984, major=9, minor=0, multi_processor_count=132
    )
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    found = devices.discover(["cuda"])
    (gpu,) = found.devices
    assert gpu.source == "torch" and gpu.mem_total == 85520809984 and gpu.mem_used is None
    assert gpu.info == {"capability": "9.0", "sms": 132} and gpu.driver == "CUDA 13.0"
    assert found.notes[0] == "NVIDIA: NVML not available (no module pynvml)"


# ---------------------------------------------------------------------------------------------------------- Gaudi


def fake_habana(count: int, *, available: bool = True, stats: dict | None = None):
    """habana_frameworks.torch.hpu with the calls labkit makes; returns the three module objects to inject."""
    hpu = types.ModuleType("habana_frameworks.torch.hpu")
    hpu.is_available = lambda: available
    hpu.device_count = lambda: count
    hpu.get_device_name = lambda *a: "GAUDI2"
    hpu.memory_stats = lambda device=None: dict(stats or {"Limit": 94 * 2**30, "InUse": 2**30, "MaxInUse": 2**30})
    torch_pkg = types.ModuleType("habana_frameworks.torch")
    torch_pkg.hpu = hpu
    root = types.ModuleType("habana_frameworks")
    root.torch = torch_pkg
    return {"habana_frameworks": root, "habana_frameworks.torch": torch_pkg, "habana_frameworks.torch.hpu": hpu}


def test_hl_smi_is_preferred_for_gaudi(monkeypatch, tmp_path):
    write_tool(
        tmp_path,
        "hl-smi",
        "-Q index,name,memory.total,memory.used,utilization.aip,driver_version -f csv,noheader,nounits",
        DATA / "hl-smi-gaudi2.csv",
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for name, module in fake_habana(8).items():
        monkeypatch.setitem(sys.modules, name, module)
    found = devices.discover(["hpu"])
    assert len(found.devices) == 8 and {d.source for d in found.devices} == {"hl-smi"}


def test_habana_frameworks_without_hl_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no hl-smi anywhere
    for name, module in fake_habana(2).items():
        monkeypatch.setitem(sys.modules, name, module)
    found = devices.discover(["hpu"])
    assert [d.source for d in found.devices] == ["habana_frameworks"] * 2
    assert found.devices[0].mem_total == 94 * 2**30 and found.devices[0].mem_used == 2**30
    assert found.notes == ["Gaudi: hl-smi skipped (not on PATH)", "Gaudi: 2 device(s) via habana_frameworks"]


# ---------------------------------------------------------------------------------------------------------- pick_device


def test_pick_device_on_this_machine():
    import torch

    assert devices.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.pick_device(" CPU ") == "cpu"


@pytest.mark.parametrize("value", ["gpu", "cuda:0", "", "tpu", None, 0])
def test_pick_device_unknown_value(value):
    with pytest.raises(ConfigError) as info:
        devices.pick_device(value)
    assert info.value.field == "device" and "'auto', 'cpu', 'cuda', 'hpu'" in info.value.fix


def test_pick_device_unavailable_cuda_says_why(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # what a CPU build reports (true on the CPU test machine)
    with pytest.raises(ConfigError, match="device: 'cuda' requested but torch .* is a CPU build"):
        devices.pick_device("cuda")
    with pytest.raises(ConfigError, match="'hpu' requested but habana_frameworks .* not installed"):
        devices.pick_device("hpu")


def test_pick_device_prefers_cuda_then_hpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, module in fake_habana(8).items():
        monkeypatch.setitem(sys.modules, name, module)
    assert devices.pick_device("auto") == "hpu"
    assert devices.pick_device("hpu") == "hpu"
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.pick_device("auto") == "cuda"
    assert devices.pick_device("cuda") == "cuda"


def test_pick_device_gaudi_without_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, module in fake_habana(0, available=False).items():
        monkeypatch.setitem(sys.modules, name, module)
    assert devices.pick_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="sees no Gaudi device"):
        devices.pick_device("hpu")


# ---------------------------------------------------------------------------------------------------------- misc


def test_filter_by_kind_covers_devices_and_nodes():
    from labkit.cluster import NodeInventory

    devs = [Device("cuda", 0, "a", 1), Device("cpu", 0, "b", 1)]
    nodes = [
        NodeInventory(n, True, True, kind, None, None)
        for n, kind in (("g", "gaudi"), ("n", "nvidia"), ("m", "amd"), ("c", None))
    ]
    assert devices.filter_by_kind(devs, "cuda") == devs[:1]
    assert devices.filter_by_kind(devs, "all") == devs
    assert devices.filter_by_kind(devs, "hpu") == []
    assert [n.name for n in devices.filter_by_kind(nodes, "cuda")] == ["n", "m"]
    assert [n.name for n in devices.filter_by_kind(nodes, "hpu")] == ["g"]
    assert [n.name for n in devices.filter_by_kind(nodes, "cpu")] == ["c"]
    with pytest.raises(ConfigError, match="kind: unknown kind 'gpu'"):
        devices.filter_by_kind(devs, "gpu")


def test_filtered_tables_html():
    from labkit.cluster import NodeInventory
    from labkit.plots.discovery import filtered_tables_html

    devs = [Device("cpu", 0, "Xeon <8 cores>", 2**30)]
    nodes = [NodeInventory("gaudi-1", True, True, "gaudi", "Intel Gaudi", None)]
    html = filtered_tables_html(devs, nodes, "hpu")
    assert "Local devices, kind hpu (0 of 1)" in html and "Cluster nodes, kind hpu (1 of 1)" in html
    assert "gaudi-1" in html
    assert "Xeon &lt;8 cores&gt;" in filtered_tables_html(devs, [], "all")


def test_device_memory_figure_renders_under_agg():
    from labkit.plots.discovery import device_memory_figure

    found = parse_nvidia_smi_csv((DATA / "nvidia-smi-8xh100.csv").read_text()) + [devices.cpu_device()]
    fig = device_memory_figure(found)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * len(found)  # a total bar and an in-use bar per device
    assert ax.patches[0].get_width() == pytest.approx(81559 / 1024)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_device_memory_figure_legend_names_each_in_use_colour_and_its_notes_stay_inside():
    """A GPU machine's chart (chapter 01 on an H100: cuda and cpu rows) once had one "in use" legend entry in NVIDIA
    green while the cpu row's in-use bar was grey, and its longest row's note ran onto the frame."""
    from matplotlib.colors import to_hex

    from labkit.plots.discovery import device_memory_figure

    cpu = Device("cpu", 0, "Intel(R) Xeon(R) Processor", 135_130_000_000, mem_used=2_900_000_000)
    unknown = Device("cpu", 1, "Xeon without a used figure", 135_130_000_000)
    found = parse_nvidia_smi_csv((DATA / "nvidia-smi-8xh100.csv").read_text())[:1] + [cpu, unknown]
    fig = device_memory_figure(found)
    ax = fig.axes[0]
    handles, names = ax.get_legend_handles_labels()
    in_use = {name: to_hex(h.patches[0].get_facecolor()) for h, name in zip(handles, names) if name != "total"}
    drawn = {to_hex(p.get_facecolor()) for p in ax.patches[len(found) :] if p.get_width() > 0}
    assert set(in_use) == {"in use (cuda)", "in use (cpu)"} and set(in_use.values()) == drawn
    fig.savefig(io.BytesIO(), format="png")  # as the notebook shows it: the layout and the text sizes of a real draw
    frame = ax.get_window_extent()
    notes = [t for t in ax.texts if "GiB" in t.get_text()]
    assert len(notes) == len(found) and all(t.get_window_extent().x1 < frame.x1 for t in notes)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"  # what the `labkit` script runs
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_discover_text_and_json():
    text = run_cli("discover")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("kind  index  name") and "\ncpu " in text.stdout and "note: NVIDIA:" in text.stdout
    as_json = run_cli("discover", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert set(data) == {"local"} and data["local"]["devices"][-1]["kind"] == "cpu"


def test_cli_discover_rejects_a_bad_timeout():
    proc = run_cli("discover", "--timeout", "0")
    assert proc.returncode == 2 and "labkit: error: --timeout: must be a number > 0" in proc.stderr


def test_modules_import_cheaply():
    """The GPU benchmark image has no kubernetes/papermill: importing the kit's modules must not need them."""
    code = (
        "import sys, labkit.devices, labkit.env, labkit.kube, labkit.cluster, labkit.plots.discovery, "
        "labkit.cli.check; "
        "heavy = [m for m in ('torch', 'deepspeed', 'kubernetes', 'matplotlib', 'papermill') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------------------- notebook 01


@pytest.mark.slow
def test_notebook_01_records_this_machine(executed_notebook):
    import torch

    from labkit import cluster, results

    recorded = results.read(executed_notebook("01_accelerator_discovery"))
    cpu = [d for d in recorded["devices"] if d["kind"] == "cpu"]
    assert len(cpu) == 1 and cpu[0]["info"]["cores"] >= 1 and cpu[0]["mem_total"] > 0
    assert recorded["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    if cluster.find_kubeconfig() is None:
        assert recorded["cluster"]["configured"] is False and recorded["cluster"]["nodes"] == []


@pytest.mark.parametrize(
    "gpus,requested,at_least,expected",
    [
        (4, "auto", 1, (4, "cuda")),
        (1, "auto", 1, (1, "cuda")),  # training: one GPU is one rank
        (1, "auto", 2, (2, "cpu")),  # ZeRO: one rank partitions nothing, so CPU ranks
        (1, "cuda", 2, (1, "cuda")),  # an explicit device is kept
        (0, "auto", 1, (2, "cpu")),
        (4, "cpu", 1, (2, "cpu")),
    ],
)
def test_one_automatic_rank_policy_for_every_chapter_and_the_local_backend(
    monkeypatch, gpus, requested, at_least, expected
):
    """zero.auto_ranks, the CIFAR plan and LocalBackend's workers 0 all read devices.auto_ranks: they cannot drift."""
    from labkit.chapters import cifar
    from labkit.jobs.local import LocalBackend

    monkeypatch.setattr(devices, "cuda_status", lambda: (gpus > 0, f"{gpus} CUDA device(s)"))
    monkeypatch.setattr(devices, "device_count", lambda d: gpus if d == "cuda" else 2)
    ranks, device, why = devices.auto_ranks(requested, at_least=at_least)
    assert (ranks, device) == expected and why
    if at_least == 1:
        assert cifar.plan(device=requested).world_size == ranks
        accelerator, workers, said = LocalBackend(root=None).accelerator_for(requested, 0, 1)
        assert (workers, accelerator) == (ranks, devices.ACCELERATOR_OF[device]) and why in said


def test_the_machine_line_names_the_cpu_and_the_gpus_the_tools_list(monkeypatch, tmp_path):
    here, accelerated = devices.machine_summary(), devices.cuda_status()[0] or devices.hpu_status()[0]
    assert here.endswith("; no GPU or Gaudi") != accelerated  # this machine: CI has no GPU, the GPU machine has one
    if devices.cuda_status()[0]:
        assert f"{devices.device_count('cuda')} x " in here and "(cuda)" in here
    fake_nvidia_smi(monkeypatch, tmp_path, DATA / "nvidia-smi-8xh100.csv")
    line = devices.machine_summary()
    assert "usable core(s)" in line and "8 x NVIDIA H100 80GB HBM3 (cuda)" in line


def test_memory_available_is_meminfos_or_what_a_containers_limit_leaves(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:  24576000 kB\nMemAvailable:  20000000 kB\n")
    assert host.memory_available(tmp_path, tmp_path / "no-cgroup") == 20_000_000 * 1024
    (tmp_path / "memory.max").write_text(f"{8 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2 * 2**30}\n")
    assert host.memory_available(tmp_path, tmp_path) == 6 * 2**30
    assert host.memory_available(tmp_path / "none", tmp_path) is None


def test_device_memory_is_the_smallest_visible_gpu_read_through_discovery(monkeypatch):
    """What zero.make_plan checks each rank's states against; read from NVML-first discovery (the notebook's own
    process must not initialise CUDA on its ranks' devices), the smallest GPU since every rank gets one."""
    found = [Device("cuda", 0, "H100", 80 * 10**9), Device("cuda", 1, "A100", 40 * 10**9), Device("cuda", 2, "?", None)]
    asked = []
    monkeypatch.setattr(devices, "discover", lambda kinds: asked.append(list(kinds)) or devices.Discovery(found))
    assert devices.device_memory("cuda") == 40 * 10**9 and asked == [["cuda"]]
    assert devices.device_memory("cpu") is None and devices.device_memory("hpu") is None and len(asked) == 1
    monkeypatch.setattr(devices, "discover", lambda kinds: devices.Discovery([]))
    assert devices.device_memory("cuda") is None  # unknown: not checked

"""The kit's one device vocabulary, local discovery, and `pick_device` for the `device: str = "auto"` parameters.

Vocabulary: a *device* is what torch runs on (cpu | cuda | hpu); an *accelerator* is what a cluster node or an MPIJob
overlay offers (cpu | nvidia | gaudi). `ACCELERATOR_OF` and `DEVICE_OF` translate; no other module spells these maps.

Sources, best first (each falls back to the next when unavailable):
  NVIDIA: NVML (package nvidia-ml-py, module pynvml) -> torch.cuda -> `nvidia-smi --query-gpu ... --format=csv`
  Gaudi:  `hl-smi -Q ...` -> habana_frameworks.torch.hpu (hl-smi first: it reads without opening the device, while the
          Python module initialises it in this process, which can keep the training ranks started later from it)
  CPU:    /proc/cpuinfo, /proc/meminfo, cgroup limits, NUMA nodes from /sys/devices/system/node
Memory is in bytes everywhere; utilization in percent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, LabkitError
from labkit.tabular import format_bytes, html_table, text_table

DEVICE_KINDS = ("cuda", "hpu", "cpu")  # what torch runs on, best first
DEVICE_CHOICES = ("auto", "cpu", "cuda", "hpu")  # a `device` parameter
ACCELERATORS = ("cpu", "nvidia", "gaudi")  # what a cluster node / manifests overlay offers
ACCELERATOR_OF = {"cpu": "cpu", "cuda": "nvidia", "hpu": "gaudi"}
# A node's accelerator kind as the device a run on it uses (ROCm torch also says "cuda"); None: a CPU-only node.
DEVICE_OF = {"nvidia": "cuda", "amd": "cuda", "gaudi": "hpu", "cpu": "cpu", None: "cpu"}
MIB = 2**20
NVIDIA_SMI_FIELDS = "index,name,memory.total,memory.used,utilization.gpu,driver_version"
HL_SMI_FIELDS = "index,name,memory.total,memory.used,utilization.aip,driver_version"
CLI_TIMEOUT_S = 15.0


class ParseError(LabkitError):
    """A tool's output was not in the expected format (the message quotes the offending line)."""


class Unavailable(Exception):
    """A source that does not apply here (no CUDA build, tool not on PATH): discovery moves on to the next one."""


@dataclass(frozen=True)
class Device:
    """One local device. `mem_*` in bytes, `utilization` in percent; None where the source cannot tell."""

    kind: str  # cuda | hpu | cpu
    index: int
    name: str
    mem_total: int | None
    mem_used: int | None = None
    utilization: float | None = None
    driver: str | None = None
    source: str = ""  # nvml | torch | nvidia-smi | hl-smi | habana_frameworks | procfs
    info: dict[str, Any] = field(default_factory=dict)  # kind-specific extras (cores, NUMA nodes, capability)

    def row(self) -> dict[str, Any]:
        used = format_bytes(self.mem_used) if self.mem_used is not None else "?"
        return {
            "kind": self.kind,
            "index": self.index,
            "name": self.name,
            "memory": f"{used} / {format_bytes(self.mem_total)}",
            "utilization": "-" if self.utilization is None else f"{self.utilization:.0f}%",
            "driver": self.driver or "-",
            "source": self.source,
            "details": ", ".join(f"{k}={v}" for k, v in self.info.items() if not isinstance(v, (list, dict))) or "-",
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEVICE_COLUMNS = ("kind", "index", "name", "memory", "utilization", "driver", "source", "details")


@dataclass
class Discovery:
    """Devices found, plus one note per source that was tried (why a fallback was used)."""

    devices: list[Device] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Device]:
        return [d for d in self.devices if d.kind == kind]

    def kinds(self) -> list[str]:
        return [k for k in DEVICE_KINDS if self.of_kind(k)]

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.devices], "notes": list(self.notes)}

    def text(self) -> str:
        return text_table([d.row() for d in self.devices], DEVICE_COLUMNS) + "".join(
            f"\n  note: {n}" for n in self.notes
        )

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
        return html_table([d.row() for d in self.devices], DEVICE_COLUMNS, status_column=None) + (
            f"<ul>{notes}</ul>" if notes else ""
        )


def device_kind_of(record: Any) -> str:
    """'cuda' | 'hpu' | 'cpu' for a Device or a cluster NodeInventory."""
    if isinstance(record, Device):
        return record.kind
    return DEVICE_OF.get(getattr(record, "accelerator_kind", None), "cpu")


def filter_by_kind(records: Iterable[Any], kind: str) -> list[Any]:
    """Devices or nodes of one device kind (cuda, hpu, cpu; 'all' keeps everything): notebook 01's filter widget."""
    if kind != "all" and kind not in DEVICE_KINDS:
        raise ConfigError("kind", f"unknown kind {kind!r}", f"use 'all' or one of {', '.join(DEVICE_KINDS)}")
    return [r for r in records if kind == "all" or device_kind_of(r) == kind]


# --------------------------------------------------------------------------------------------------------------------
# Parsing (pure functions, tested on recorded outputs)


def _optional_number(text: str) -> float | None:
    text = text.strip()
    if not text or text.startswith("[") or text.upper() in ("N/A", "NA"):  # "[N/A]", "[Not Supported]"
        return None
    return float(text)


def _parse_smi_csv(text: str, kind: str, source: str) -> list[Device]:
    devices = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            raise ParseError(
                f"{source} output line {number}: expected 6 comma-separated fields "
                f"(index, name, memory.total, memory.used, utilization, driver), got {len(parts)}: {line!r}"
            )
        try:
            index = int(parts[0])
            total, used, util = (_optional_number(p) for p in parts[2:5])
        except ValueError:
            raise ParseError(f"{source} output line {number}: not a number where one was expected: {line!r}") from None
        devices.append(
            Device(
                kind,
                index,
                parts[1],
                None if total is None else int(total * MIB),
                None if used is None else int(used * MIB),
                util,
                parts[5] or None,
                source,
            )
        )
    return devices


def parse_nvidia_smi_csv(text: str) -> list[Device]:
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,driver_version
    --format=csv,noheader,nounits` (MiB) -> Devices."""
    return _parse_smi_csv(text, "cuda", "nvidia-smi")


def parse_hl_smi_csv(text: str) -> list[Device]:
    """`hl-smi -Q index,name,memory.total,memory.used,utilization.aip,driver_version -f csv,noheader,nounits`
    (MiB) -> Devices. `index` is hl-smi's device index, not the module_id that HABANA_VISIBLE_MODULES uses."""
    return _parse_smi_csv(text, "hpu", "hl-smi")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {field: value}: 'kB' fields in bytes, unit-less ones (HugePages_Total, ...) as counts."""
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            raise ParseError(f"/proc/meminfo line {number}: expected 'Name: value [kB]', got {line!r}")
        value = int(parts[0])
        if len(parts) > 1:
            if parts[1] != "kB":
                raise ParseError(f"/proc/meminfo line {number}: unknown unit {parts[1]!r} in {line!r}")
            value *= 1024
        values[name.strip()] = value
    return values


def parse_cpulist(text: str) -> list[int]:
    """Kernel CPU list syntax ('0-3,8,10-11') -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ParseError(f"cpu list: cannot parse {part!r} in {text.strip()!r}")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def numa_nodes(root: str | Path = "/sys/devices/system/node") -> list[dict[str, Any]]:
    """NUMA nodes: [{'node': 0, 'cpus': [...], 'mem_total': bytes}]; [] where the kernel exposes none."""
    nodes = []
    for path in sorted(Path(root).glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        cpus = parse_cpulist((path / "cpulist").read_text()) if (path / "cpulist").exists() else []
        mem_total = None
        meminfo = path / "meminfo"
        if meminfo.exists():  # lines look like "Node 0 MemTotal:  24573952 kB"
            for line in meminfo.read_text().splitlines():
                if "MemTotal:" in line:
                    mem_total = int(line.split("MemTotal:")[1].split()[0]) * 1024
        nodes.append({"node": int(path.name[4:]), "cpus": cpus, "mem_total": mem_total})
    return nodes


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs a cgroup v2 quota allows ('200000 100000' -> 2.0); None when unlimited or not cgroup v2."""
    path = Path(root) / "cpu.max"
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def cgroup_memory(root: str | Path = "/sys/fs/cgroup") -> tuple[int | None, int | None]:
    """(limit, current) bytes of a cgroup v2 memory limit; (None, None) when unlimited or absent."""
    try:
        limit = (Path(root) / "memory.max").read_text().strip()
        current = int((Path(root) / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None, None
    return (None, None) if limit == "max" else (int(limit), current)


# --------------------------------------------------------------------------------------------------------------------
# Sources


def _run_cli(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise LabkitError(f"{argv[0]} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc.stdout


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # older pynvml returns bytes


def nvidia_devices_nvml() -> list[Device]:
    """NVIDIA GPUs through NVML. Raises ImportError (no nvidia-ml-py) or pynvml.NVMLError (no driver)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:  # e.g. MIG instances report no utilization
                utilization = None
            devices.append(
                Device(
                    "cuda",
                    i,
                    _text(pynvml.nvmlDeviceGetName(handle)),
                    int(memory.total),
                    int(memory.used),
                    utilization,
                    driver,
                    "nvml",
                )
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


def nvidia_devices_torch() -> list[Device]:
    """NVIDIA (or ROCm) GPUs as torch sees them. Memory in use is left unknown: reading it would create a CUDA
    context on every GPU, which this process would then hold while the training ranks run."""
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise Unavailable(f"torch {torch.__version__} is a CPU build")
    if not torch.cuda.is_available():
        raise Unavailable("torch.cuda.is_available() is False")
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            Device(
                "cuda",
                i,
                props.name,
                int(props.total_memory),
                None,
                None,
                f"CUDA {torch.version.cuda}" if torch.version.cuda else None,
                "torch",
                {"capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count},
            )
        )
    return devices


def nvidia_devices_smi() -> list[Device]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise Unavailable("not on PATH")
    return parse_nvidia_smi_csv(_run_cli([exe, f"--query-gpu={NVIDIA_SMI_FIELDS}", "--format=csv,noheader,nounits"]))


def hpu_devices_smi() -> list[Device]:
    exe = shutil.which("hl-smi")
    if exe is None:
        raise Unavailable("not on PATH")
    return parse_hl_smi_csv(_run_cli([exe, "-Q", HL_SMI_FIELDS, "-f", "csv,noheader,nounits"]))


def hpu_devices_python() -> list[Device]:
    """Gaudi devices through habana_frameworks.torch.hpu (memory from memory_stats' Limit/InUse)."""
    import habana_frameworks.torch.hpu as hthpu

    if not hthpu.is_available():
        raise Unavailable("habana_frameworks sees no Gaudi device")
    devices = []
    for i in range(hthpu.device_count()):
        total = used = None
        try:
            stats = hthpu.memory_stats(i)
            total, used = stats.get("Limit"), stats.get("InUse")
        except Exception:  # memory stats need the device initialised; the count and name do not
            pass
        devices.append(Device("hpu", i, hthpu.get_device_name(), total, used, None, None, "habana_frameworks"))
    return devices


def cpu_device(proc: str | Path = "/proc", sys_root: str | Path = "/sys") -> Device:
    """The host CPU as one record: usable cores (affinity and cgroup quota), memory (cgroup limit if lower), NUMA."""
    proc, sys_root = Path(proc), Path(sys_root)
    name = "CPU"
    try:
        for line in (proc / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    quota = cgroup_cpu_limit(sys_root / "fs" / "cgroup")
    cores = max(1, min(usable, int(quota))) if quota else usable
    meminfo = parse_meminfo((proc / "meminfo").read_text())
    total = meminfo.get("MemTotal")
    used = total - meminfo["MemAvailable"] if total is not None and "MemAvailable" in meminfo else None
    limit, current = cgroup_memory(sys_root / "fs" / "cgroup")
    if limit is not None and total is not None and limit < total:  # a container: its limit is what a run can use
        total, used = limit, current
    try:
        import psutil

        utilization: float | None = psutil.cpu_percent(interval=0.1)
    except ImportError:
        utilization = None
    nodes = numa_nodes(sys_root / "devices" / "system" / "node")
    info: dict[str, Any] = {"cores": cores, "logical_cpus": logical, "numa_nodes": len(nodes) or 1}
    if quota:
        info["cgroup_cpu_quota"] = quota
    info["numa"] = nodes
    return Device("cpu", 0, name, total, used, utilization, None, "procfs", info)


def _collect(name: str, sources: list[tuple[str, Callable[[], list[Device]]]], notes: list[str]) -> list[Device]:
    """First source that works wins; each failure becomes a note explaining the fallback."""
    for label, source in sources:
        try:
            found = source()
        except ImportError as exc:
            notes.append(f"{name}: {label} not available (no module {exc.name or exc})")
            continue
        except Unavailable as exc:
            notes.append(f"{name}: {label} skipped ({exc})")
            continue
        except Exception as exc:  # NVMLError, a missing/failed CLI, a parse error
            notes.append(f"{name}: {label} failed ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        notes.append(f"{name}: {len(found)} device(s) via {label}")
        return found
    notes.append(f"{name}: none found")
    return []


def discover(kinds: Iterable[str] = DEVICE_KINDS) -> Discovery:
    """Local devices of the given kinds (default cuda, hpu, cpu). Never raises for a missing driver or tool."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in DEVICE_KINDS]
    if unknown:
        raise ConfigError(
            "kinds", f"unknown device kind(s) {', '.join(unknown)}", f"use some of {', '.join(DEVICE_KINDS)}"
        )
    result = Discovery()
    if "cuda" in kinds:
        result.devices += _collect(
            "NVIDIA",
            [("NVML", nvidia_devices_nvml), ("torch.cuda", nvidia_devices_torch), ("nvidia-smi", nvidia_devices_smi)],
            result.notes,
        )
    if "hpu" in kinds:
        result.devices += _collect(
            "Gaudi", [("hl-smi", hpu_devices_smi), ("habana_frameworks", hpu_devices_python)], result.notes
        )
    if "cpu" in kinds:
        result.devices.append(cpu_device())
    return result


# --------------------------------------------------------------------------------------------------------------------
# Choosing the device a notebook runs on


def cuda_status() -> tuple[bool, str]:
    """(usable, why) for torch's CUDA: what a training run needs, not merely a GPU that NVML can see."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return False, f"torch {torch.__version__} is a CPU build"
    if not torch.cuda.is_available():
        return (
            False,
            f"torch {torch.__version__} sees no CUDA device (driver, CUDA_VISIBLE_DEVICES or the pod's GPU limit)",
        )
    return True, f"{torch.cuda.device_count()} CUDA device(s)"


def _hpu_module():
    """habana_frameworks.torch.hpu, or None where the Intel Gaudi software is not installed."""
    try:
        import habana_frameworks.torch.hpu as hthpu
    except ImportError:
        return None
    return hthpu


def hpu_status() -> tuple[bool, str]:
    hthpu = _hpu_module()
    if hthpu is None:
        return False, "habana_frameworks (Intel Gaudi software) is not installed"
    if not hthpu.is_available():
        return False, "habana_frameworks sees no Gaudi device"
    return True, f"{hthpu.device_count()} Gaudi device(s)"


def pick_device(requested: str = "auto") -> str:
    """Resolve a notebook's `device` parameter: 'auto' -> cuda, else hpu, else cpu; an explicit choice must be usable.

    Raises ConfigError for an unknown value or an unavailable device (before any run starts)."""
    value = requested.strip().lower() if isinstance(requested, str) else requested
    if value not in DEVICE_CHOICES:
        raise ConfigError("device", f"unknown value {requested!r}", "use one of 'auto', 'cpu', 'cuda', 'hpu'")
    if value == "cpu":
        return "cpu"
    if value in ("auto", "cuda"):
        ok, why = cuda_status()
        if ok:
            return "cuda"
        if value == "cuda":
            raise ConfigError(
                "device",
                f"'cuda' requested but {why}",
                "use device='auto' or 'cpu' here, or run on a GPU machine with a CUDA build of torch",
            )
    ok, why = hpu_status()
    if ok:
        return "hpu"
    if value == "hpu":
        raise ConfigError(
            "device",
            f"'hpu' requested but {why}",
            "use device='auto' or 'cpu' here, or run on a Gaudi node with Intel's Gaudi PyTorch image",
        )
    return "cpu"


def device_count(device: str) -> int:
    """How many ranks of `device` this machine can run one-per-device (CPU: its usable cores, at least 1)."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "hpu":
        hthpu = _hpu_module()
        return hthpu.device_count() if hthpu is not None and hthpu.is_available() else 0
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def check_ranks_fit(field: str, ranks: int, device: str) -> int:
    """ranks if this machine has a `device` for each of them (one GPU/HPU per rank), else ConfigError before launch.

    CPU ranks may oversubscribe cores (gloo runs, slowly), so only accelerators are checked."""
    if device in ("cuda", "hpu"):
        have = device_count(device)
        if ranks > have:
            raise ConfigError(
                field,
                f"{ranks} ranks but only {have} {device.upper()} device(s) here (one rank per device)",
                f"pass {field}={max(have, 1)} (or 0 for automatic), or device='cpu' to rehearse {ranks} ranks on CPU",
            )
    return ranks

"""The kit's one device vocabulary, local discovery, and `pick_device` for the `device: str = "auto"` parameters.

Vocabulary: a *device* is what torch runs on (cpu | cuda | hpu); an *accelerator* is what a cluster node or an MPIJob
overlay offers (cpu | nvidia | gaudi, and amd on nodes). `ACCELERATOR_OF`, `DEVICE_OF` and `ACCELERATOR_RESOURCE`
translate; no other module spells these maps.

Sources, best first (each falls back to the next when unavailable):
  NVIDIA: NVML (package nvidia-ml-py, module pynvml) -> torch.cuda -> `nvidia-smi --query-gpu ... --format=csv`
  Gaudi:  `hl-smi -Q ...` -> habana_frameworks.torch.hpu (hl-smi first: it reads without opening the device, while the
          Python module initialises it in this process, which can keep the training ranks started later from it)
  CPU:    /proc/cpuinfo, /proc/meminfo, cgroup limits, NUMA nodes from /sys/devices/system/node
Memory is in bytes everywhere; utilization in percent.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, LabkitError, ParseError
from labkit.host import cgroup_cpu_limit, cgroup_memory, numa_nodes, parse_meminfo, usable_cores
from labkit.tabular import format_bytes, html_table, text_table

DEVICE_KINDS = ("cuda", "hpu", "cpu")  # what torch runs on, best first
DEVICE_CHOICES = ("auto", "cpu", "cuda", "hpu")  # a `device` parameter
ACCELERATORS = ("cpu", "nvidia", "gaudi")  # what a cluster node / manifests overlay offers
ACCELERATOR_OF = {"cpu": "cpu", "cuda": "nvidia", "hpu": "gaudi"}
# A node's accelerator kind as the device a run on it uses (ROCm torch also says "cuda"); None: a CPU-only node.
DEVICE_OF = {"nvidia": "cuda", "amd": "cuda", "gaudi": "hpu", "cpu": "cpu", None: "cpu"}
# The extended resource of each accelerator's device plugin: what nodes offer and pods request (one per slot).
ACCELERATOR_RESOURCE = {"cpu": None, "nvidia": "nvidia.com/gpu", "gaudi": "habana.ai/gaudi", "amd": "amd.com/gpu"}
MIB = 2**20
SMI_FIELDS = "index,name,memory.total,memory.used,utilization.{},driver_version"  # gpu (nvidia-smi) | aip (hl-smi)
CLI_TIMEOUT_S = 15.0
# Per accelerator device: the fix when it was explicitly requested but is unusable
UNAVAILABLE_FIX = {
    "cuda": "use device='auto' or 'cpu' here, or run on a GPU machine with a CUDA build of torch",
    "hpu": "use device='auto' or 'cpu' here, or run on a Gaudi node with Intel's Gaudi PyTorch image",
}


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
        details = ", ".join(f"{k}={v}" for k, v in self.info.items() if not isinstance(v, (list, dict)))
        util = "-" if self.utilization is None else f"{self.utilization:.0f}%"
        memory = f"{used} / {format_bytes(self.mem_total)}"
        values = (self.kind, self.index, self.name, memory, util, self.driver or "-", self.source, details or "-")
        return dict(zip(DEVICE_COLUMNS, values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEVICE_COLUMNS = ("kind", "index", "name", "memory", "utilization", "driver", "source", "details")


@dataclass(repr=False)
class Discovery:
    """Devices found, plus one note per source that was tried (why a fallback was used)."""

    devices: list[Device] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Device]:
        return [d for d in self.devices if d.kind == kind]

    def kinds(self) -> list[str]:
        return [k for k in DEVICE_KINDS if self.of_kind(k)]

    def summary(self) -> str:
        """'This machine has ...': the accelerators found (or none), then the usable CPU cores and memory."""
        accel, cpus = [d for d in self.devices if d.kind != "cpu"], self.of_kind("cpu")
        names = ", ".join(sorted({d.name for d in accel}))
        text = f"This machine has {f'{len(accel)} accelerator(s) ({names})' if accel else 'no accelerator'}"
        if cpus:
            # in the units of the table it closes (decimal GB), not the chart's GiB
            memory = f" with {format_bytes(cpus[0].mem_total)} of memory" if cpus[0].mem_total else ""
            text += f" and {cpus[0].info.get('cores', '?')} usable CPU core(s){memory}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.devices], "notes": list(self.notes)}

    def text(self) -> str:
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return text_table([d.row() for d in self.devices], DEVICE_COLUMNS) + notes

    __repr__ = text  # what the notebook's plain-text output shows

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
        table = html_table([d.row() for d in self.devices], DEVICE_COLUMNS, status_column=None)
        return table + (f"<ul>{notes}</ul>" if notes else "")


def device_kind_of(record: Any) -> str:
    """'cuda' | 'hpu' | 'cpu' for a Device or a cluster NodeInventory."""
    return record.kind if isinstance(record, Device) else DEVICE_OF.get(getattr(record, "accelerator_kind", None))


def filter_by_kind(records: Iterable[Any], kind: str) -> list[Any]:
    """Devices or nodes of one device kind (cuda, hpu, cpu; 'all' keeps everything): notebook 01's filter widget."""
    if kind != "all" and kind not in DEVICE_KINDS:
        raise ConfigError("kind", f"unknown kind {kind!r}", f"use 'all' or one of {', '.join(DEVICE_KINDS)}")
    return [r for r in records if kind == "all" or device_kind_of(r) == kind]


# -- Parsing (pure functions, tested on recorded outputs) --


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
        where = f"{source} output line {number}"
        if len(parts) != 6:
            fields = "(index, name, memory.total, memory.used, utilization, driver)"
            raise ParseError(f"{where}: expected 6 comma-separated fields {fields}, got {len(parts)}: {line!r}")
        try:
            index, (total, used, util) = int(parts[0]), (_optional_number(p) for p in parts[2:5])
        except ValueError:
            raise ParseError(f"{where}: not a number where one was expected: {line!r}") from None
        total, used = (None if v is None else int(v * MIB) for v in (total, used))
        devices.append(Device(kind, index, parts[1], total, used, util, parts[5] or None, source))
    return devices


def parse_nvidia_smi_csv(text: str) -> list[Device]:
    """`nvidia-smi --query-gpu=SMI_FIELDS --format=csv,noheader,nounits` (MiB) -> Devices."""
    return _parse_smi_csv(text, "cuda", "nvidia-smi")


def parse_hl_smi_csv(text: str) -> list[Device]:
    """`hl-smi -Q SMI_FIELDS -f csv,noheader,nounits` (MiB) -> Devices. `index` is hl-smi's device index, not the
    module_id that HABANA_VISIBLE_MODULES uses."""
    return _parse_smi_csv(text, "hpu", "hl-smi")


# -- Sources --


def _run_smi(tool: str, args: list[str]) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise Unavailable("not on PATH")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise LabkitError(f"{exe} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc.stdout


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # older pynvml returns bytes


def nvidia_devices_nvml() -> list[Device]:
    """NVIDIA GPUs through NVML. Raises ImportError (no nvidia-ml-py) or pynvml.NVMLError (no driver)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        driver, devices = _text(pynvml.nvmlSystemGetDriverVersion()), []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:  # e.g. MIG instances report no utilization
                utilization = None
            name, uuid = _text(pynvml.nvmlDeviceGetName(handle)), {"uuid": _text(pynvml.nvmlDeviceGetUUID(handle))}
            devices.append(
                Device("cuda", i, name, int(memory.total), int(memory.used), utilization, driver, "nvml", uuid)
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


def nvidia_devices_torch() -> list[Device]:
    """NVIDIA (or ROCm) GPUs as torch sees them. Memory in use is left unknown: reading it would create a CUDA
    context on every GPU, which this process would then hold while the training ranks run."""
    import torch

    usable, why = cuda_status()
    if not usable:
        raise Unavailable(why)
    driver = f"CUDA {torch.version.cuda}" if torch.version.cuda else None
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        info = {"capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count}
        devices.append(Device("cuda", i, props.name, int(props.total_memory), None, None, driver, "torch", info))
    return devices


def hpu_devices_python() -> list[Device]:
    """Gaudi devices through habana_frameworks.torch.hpu (memory from memory_stats' Limit/InUse)."""
    import habana_frameworks.torch.hpu as hthpu

    if not hthpu.is_available():
        raise Unavailable("habana_frameworks sees no Gaudi device")
    devices = []
    for i in range(hthpu.device_count()):
        try:
            stats = hthpu.memory_stats(i)
        except Exception:  # memory stats need the device initialised; the count and name do not
            stats = {}
        name, total, used = hthpu.get_device_name(), stats.get("Limit"), stats.get("InUse")
        devices.append(Device("hpu", i, name, total, used, None, None, "habana_frameworks"))
    return devices


def nvidia_devices_smi() -> list[Device]:
    args = [f"--query-gpu={SMI_FIELDS.format('gpu')}", "--format=csv,noheader,nounits"]
    return parse_nvidia_smi_csv(_run_smi("nvidia-smi", args))


def hpu_devices_smi() -> list[Device]:
    return parse_hl_smi_csv(_run_smi("hl-smi", ["-Q", SMI_FIELDS.format("aip"), "-f", "csv,noheader,nounits"]))


def machine_summary() -> str:
    """One line naming this machine for reports: host, CPU, usable cores, and its GPUs/HPUs as their CLIs list them."""
    parts = [f"{platform.node()}: {cpu_device().name}, {usable_cores()} usable core(s)"]
    for kind, read in (("cuda", nvidia_devices_smi), ("hpu", hpu_devices_smi)):
        try:
            found = read()
        except Exception:  # noqa: BLE001 - no tool or no device: nothing to name
            continue
        if found:
            parts.append(f"{len(found)} x {', '.join(sorted({d.name for d in found}))} ({kind})")
    return "; ".join(parts) if len(parts) > 1 else parts[0] + "; no GPU or Gaudi"


SOURCES = {  # kind -> (vendor, {source: function}, best first)
    "cuda": (
        "NVIDIA",
        {"NVML": nvidia_devices_nvml, "torch.cuda": nvidia_devices_torch, "nvidia-smi": nvidia_devices_smi},
    ),
    "hpu": ("Gaudi", {"hl-smi": hpu_devices_smi, "habana_frameworks": hpu_devices_python}),
}


def cpu_device(proc: str | Path = "/proc", sys_root: str | Path = "/sys") -> Device:
    """The host CPU as one record: usable cores (affinity and cgroup quota), memory (cgroup limit if lower), NUMA."""
    proc, cgroup = Path(proc), Path(sys_root) / "fs" / "cgroup"
    try:
        lines = (proc / "cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")
    quota = cgroup_cpu_limit(cgroup)
    cores = max(1, min(usable_cores(), int(quota))) if quota else usable_cores()
    meminfo = parse_meminfo((proc / "meminfo").read_text())
    total = meminfo.get("MemTotal")
    used = total - meminfo["MemAvailable"] if total is not None and "MemAvailable" in meminfo else None
    limit, current = cgroup_memory(cgroup)
    if limit is not None and total is not None and limit < total:  # a container: its limit is what a run can use
        total, used = limit, current
    try:
        import psutil

        utilization: float | None = psutil.cpu_percent(interval=0.1)
    except ImportError:
        utilization = None
    nodes = numa_nodes(Path(sys_root) / "devices" / "system" / "node")
    info = {"cores": cores, "logical_cpus": os.cpu_count() or 1, "numa_nodes": len(nodes) or 1}
    info |= {"cgroup_cpu_quota": quota} if quota else {}
    return Device("cpu", 0, name, total, used, utilization, None, "procfs", info | {"numa": nodes})


def _collect(name: str, sources: dict[str, Callable[[], list[Device]]], notes: list[str]) -> list[Device]:
    """First source that works wins; each failure becomes a note explaining the fallback."""
    for label, source in sources.items():
        try:
            found = source()
        except ImportError as exc:
            notes.append(f"{name}: {label} not available (no module {exc.name or exc})")
        except Unavailable as exc:
            notes.append(f"{name}: {label} skipped ({exc})")
        except Exception as exc:  # NVMLError, a missing/failed CLI, a parse error
            notes.append(f"{name}: {label} failed ({type(exc).__name__}: {str(exc)[:200]})")
        else:
            notes.append(f"{name}: {len(found)} device(s) via {label}")
            return found
    notes.append(f"{name}: none found")
    return []


def cuda_visible(devices: list[Device], notes: list[str]) -> list[Device]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to CUDA, numbered as torch numbers them (NVML and nvidia-smi list every
    GPU of the host): indices or GPU-/MIG- UUID prefixes, up to the first entry that names none; an entry named twice
    leaves none, as CUDA does. torch.cuda's list is CUDA's own already."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or not devices or devices[0].source == "torch":
        return devices
    picked: list[Device] = []
    for token in (t.strip() for t in value.split(",")):
        by_uuid = token.startswith(("GPU-", "MIG-"))
        named = [d for d in devices if (d.index == int(token) if token.isdigit() else by_uuid and
                 str(d.info.get("uuid", "")).startswith(token))]  # fmt: skip
        if not named:
            break
        picked += named[:1]
    picked = [] if len({id(d) for d in picked}) < len(picked) else picked
    notes.append(f"CUDA_VISIBLE_DEVICES={value!r}: CUDA (torch, the chapters) sees {len(picked)} of {len(devices)}")
    return [replace(d, index=i, info={**d.info, "physical_index": d.index}) for i, d in enumerate(picked)]


def discover(kinds: Iterable[str] = DEVICE_KINDS) -> Discovery:
    """Local devices of the given kinds (default cuda, hpu, cpu). Never raises for a missing driver or tool."""
    kinds = list(kinds)
    if unknown := [k for k in kinds if k not in DEVICE_KINDS]:
        fix = f"use some of {', '.join(DEVICE_KINDS)}"
        raise ConfigError("kinds", f"unknown device kind(s) {', '.join(unknown)}", fix)
    result = Discovery()
    for kind in (k for k in SOURCES if k in kinds):
        found = _collect(*SOURCES[kind], result.notes)
        result.devices += cuda_visible(found, result.notes) if kind == "cuda" else found
    if "cpu" in kinds:
        result.devices.append(cpu_device())
    return result


# -- Choosing the device a notebook runs on --


def cuda_status() -> tuple[bool, str]:
    """(usable, why) for torch's CUDA: what a training run needs, not merely a GPU that NVML can see."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return False, f"torch {torch.__version__} is a CPU build"
    if not torch.cuda.is_available():
        why = "driver, CUDA_VISIBLE_DEVICES or the pod's GPU limit"
        return False, f"torch {torch.__version__} sees no CUDA device ({why})"
    return True, f"{torch.cuda.device_count()} CUDA device(s)"


def _hpu_module():
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
    for device, status in (("cuda", cuda_status), ("hpu", hpu_status)):
        if value in ("auto", device):
            usable, why = status()
            if usable:
                return device
            if value == device:
                raise ConfigError("device", f"{device!r} requested but {why}", UNAVAILABLE_FIX[device])
    return "cpu"


def device_count(device: str) -> int:
    """How many ranks of `device` this machine can run one-per-device (CPU: its usable cores, at least 1)."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "hpu":
        hthpu = _hpu_module()
        return hthpu.device_count() if hthpu is not None and hthpu.is_available() else 0
    return usable_cores()


AUTO_CPU_RANKS = 2  # the fewest ranks that show them working together
MAX_LOCAL_RANKS = 16  # more ranks than this on one machine only thrash it


def auto_ranks(requested: str = "auto", *, at_least: int = 1, needs: str = "") -> tuple[int, str, str]:
    """The kit's one automatic rank count (world_size / workers 0): (ranks, device, why).

    One rank per visible accelerator of the device `requested` resolves to; on a CPU, AUTO_CPU_RANKS ranks (gloo), so a
    lab stays distributed. A lesson that needs `at_least` ranks (ZeRO partitions nothing on one) takes CPU ranks when
    an automatic device has fewer accelerators; an explicitly requested device is kept. `needs`: why the lesson needs
    them, in its own words, said with every CPU fallback."""
    dev = pick_device(requested)
    have = device_count(dev) if dev != "cpu" else 0
    explicit = str(requested).strip().lower() != "auto"
    if have >= at_least or (have and explicit):
        return have, dev, f"one rank per visible {dev.upper()} device ({have})"
    if have:
        reason = f"this machine has {have} {dev.upper()} device(s) and {needs or f'the lesson needs {at_least} ranks'}"
    else:
        reason = ("device='cpu' was asked for" if explicit else "no GPU here") + (f"; {needs}" if needs else "")
    return AUTO_CPU_RANKS, "cpu", f"{AUTO_CPU_RANKS} CPU ranks (gloo), because {reason}"


def device_memory(device: str) -> int | None:
    """Bytes of memory of the smallest CUDA device here (each rank has one to itself); None where unknown (no GPU,
    an HPU; a CPU rank shares the host's memory: host.memory_available). Read through discovery (NVML first), so the
    notebook's own process does not initialise CUDA on the devices its ranks are about to use."""
    if device != "cuda":
        return None
    sizes = [d.mem_total for d in discover(["cuda"]).devices if d.mem_total]
    return min(sizes) if sizes else None


def check_ranks_fit(field: str, ranks: int, device: str, *, elsewhere: str = "", counted: str = "") -> int:
    """ranks if this machine runs them: at most MAX_LOCAL_RANKS, and a `device` for each (one GPU/HPU per rank), else
    ConfigError before launch. `elsewhere`: where more ranks can run, for the fix (a cluster backend); `counted`: how
    the ranks were counted, as the user set them ("2 worker(s) x 8 slot(s) = 16"). CPU ranks may oversubscribe
    cores (gloo runs, slowly) up to the cap."""
    if ranks > MAX_LOCAL_RANKS:
        fix = f"use {MAX_LOCAL_RANKS} ranks or fewer on one machine" + (f", or {elsewhere}" if elsewhere else "")
        raise ConfigError(field, f"{counted or ranks} local ranks is more than {MAX_LOCAL_RANKS}", fix)
    have = device_count(device) if device in ("cuda", "hpu") else ranks
    if ranks > have:
        problem = f"{ranks} ranks but only {have} {device.upper()} device(s) here (one rank per device)"
        fix = f"pass {field}={max(have, 1)} (or 0 for automatic), or device='cpu' to rehearse {ranks} ranks on CPU"
        raise ConfigError(field, problem, fix)
    return ranks

"""Environment checks as data: every check is a Check(name, status, detail, fix), in the spirit of `ds_report`.

Severity policy: a check FAILS only when the kit itself cannot work here (Python too old, no torch, no DeepSpeed, no
notebook runner, a TORCH_CUDA_ARCH_LIST that breaks DeepSpeed's op builds on a CUDA machine). What a CPU laptop is
expected to lack (GPUs, NCCL, Gaudi, MPI, a cluster) WARNS, so `labkit check` exits 0 there.
Each check function takes its inputs as arguments (environment, file text, torch facts) so tests can feed recorded ones.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from labkit.errors import ConfigError, LabkitError

PASS, WARN, FAIL = "pass", "warn", "fail"
STATUSES = (PASS, WARN, FAIL)
GIB = 2**30
MIN_PYTHON = (3, 10)
SHM_MIN_BYTES = GIB
CHECK_COLUMNS = ("group", "name", "status", "detail", "fix")


@dataclass(frozen=True)
class Check:
    name: str
    status: str          # pass | warn | fail
    detail: str
    fix: str = ""
    group: str = "general"

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Check {self.name!r}: status must be one of {STATUSES}, not {self.status!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class CheckReport(list):
    """A list of Checks that renders as a table (text, HTML) and JSON and knows the exit code."""

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self) for s in STATUSES}

    @property
    def failures(self) -> list[Check]:
        return [c for c in self if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self if c.status == WARN]

    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def to_dicts(self) -> list[dict[str, str]]:
        return [c.to_dict() for c in self]

    def to_json(self) -> str:
        return json.dumps({"summary": self.counts(), "checks": self.to_dicts()}, indent=2)

    def text(self) -> str:
        from labkit.tabular import text_table

        counts = self.counts()
        table = text_table(self.to_dicts(), ("group", "name", "status", "detail"), max_width=90)
        fixes = [f"  {c.status.upper():4}  {c.name}: {c.fix}" for c in self if c.status != PASS and c.fix]
        summary = f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed"
        return "\n".join([table, "", summary] + (["", "To fix:"] + fixes if fixes else []))

    def _repr_html_(self) -> str:
        from labkit.tabular import html_table

        return html_table(self.to_dicts(), CHECK_COLUMNS)


# --------------------------------------------------------------------------------------------------------------------
# Facts gathered once and shared by several checks


@dataclass(frozen=True)
class TorchBuild:
    """What the installed torch is and sees. `error` is set when torch is missing or fails to import."""

    version: str | None = None
    cuda: str | None = None            # torch.version.cuda ("13.0") for CUDA builds
    hip: str | None = None             # ROCm builds
    cuda_available: bool = False
    cuda_devices: tuple[str, ...] = ()
    nccl: str | None = None            # "2.27.7"
    error: str | None = None

    @property
    def gpu_build(self) -> bool:
        return bool(self.cuda or self.hip)

    def describe(self) -> str:
        if self.cuda:
            return f"CUDA {self.cuda} build"
        if self.hip:
            return f"ROCm {self.hip} build"
        return "CPU build"


def torch_build() -> TorchBuild:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising OSError on a missing library
        return TorchBuild(error=f"{type(exc).__name__}: {exc}")
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    available = bool((cuda or hip) and torch.cuda.is_available())
    devices: tuple[str, ...] = ()
    nccl = None
    if available:
        devices = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        try:
            nccl = ".".join(str(p) for p in torch.cuda.nccl.version())
        except Exception:  # builds without NCCL
            nccl = None
    return TorchBuild(torch.__version__, cuda, hip, available, devices, nccl)


def dist_version(name: str) -> str | None:
    """Installed version of a distribution without importing it (cheap)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def network_interfaces(sys_class_net: str | Path = "/sys/class/net") -> list[str]:
    path = Path(sys_class_net)
    if path.is_dir():
        return sorted(p.name for p in path.iterdir())
    import socket

    return sorted(name for _, name in socket.if_nameindex())


# --------------------------------------------------------------------------------------------------------------------
# Python and torch


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    text = ".".join(map(str, version))
    if tuple(version[:2]) < MIN_PYTHON:
        return Check("Python", FAIL, f"{text} at {sys.executable}", "use Python 3.10 or newer (the kit's venv: make install)",
                     "python")
    return Check("Python", PASS, f"{text} at {sys.executable}", group="python")


def check_torch(info: TorchBuild) -> Check:
    if info.error:
        return Check("torch", FAIL, f"cannot import torch ({info.error})",
                     "run `make install` (installs a CPU torch), or install the torch build for your accelerator", "pytorch")
    return Check("torch", PASS, f"{info.version}, {info.describe()}", group="pytorch")


def check_cuda(info: TorchBuild, hpu_present: bool = False) -> Check:
    name = "CUDA"
    if info.error:
        return Check(name, WARN, "unknown: torch does not import", "fix the torch check first", "pytorch")
    if info.cuda_available:
        return Check(name, PASS, f"{info.describe()}, {len(info.cuda_devices)} device(s): {', '.join(info.cuda_devices)}",
                     group="pytorch")
    if hpu_present:
        return Check(name, PASS, "not used: this is a Gaudi (HPU) machine", group="pytorch")
    if not info.gpu_build:
        return Check(name, WARN, f"none: torch {info.version} is a CPU build, so DeepSpeed runs on CPU ranks (gloo)",
                     "expected on a laptop; on a GPU node install the CUDA build of torch that matches its driver",
                     "pytorch")
    return Check(name, WARN, f"{info.describe()} but no usable GPU (torch.cuda.is_available() is False)",
                 "check `nvidia-smi`, the driver, CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu limit", "pytorch")


def check_nccl(info: TorchBuild) -> Check:
    if info.nccl:
        return Check("NCCL", PASS, f"{info.nccl} (torch.cuda.nccl)", group="pytorch")
    if info.cuda_available:
        return Check("NCCL", WARN, "torch has CUDA but no NCCL: multi-GPU runs cannot use the nccl backend",
                     "install a torch build with NCCL (the PyPI CUDA wheels have it)", "pytorch")
    return Check("NCCL", WARN, "not available: no CUDA here, so multi-process runs use gloo",
                 "expected without GPUs; GPU nodes get NCCL with the CUDA build of torch", "pytorch")


def check_hpu() -> Check:
    version = dist_version("habana-torch-plugin")
    try:
        import habana_frameworks.torch.hpu as hthpu
    except ImportError:
        return Check("Intel Gaudi (HPU)", WARN, "no habana_frameworks: not a Gaudi machine",
                     "expected unless this is a Gaudi node; there use Intel's Gaudi PyTorch image (vault.habana.ai/gaudi-docker)",
                     "pytorch")
    except Exception as exc:
        return Check("Intel Gaudi (HPU)", WARN, f"habana_frameworks fails to import: {exc}",
                     "reinstall the Gaudi software stack matching the driver (hl-smi shows its version)", "pytorch")
    if not hthpu.is_available():
        return Check("Intel Gaudi (HPU)", WARN, f"habana_frameworks {version or ''} installed but no Gaudi device visible",
                     "check `hl-smi`, HABANA_VISIBLE_MODULES and the pod's habana.ai/gaudi limit", "pytorch")
    return Check("Intel Gaudi (HPU)", PASS, f"{hthpu.device_count()} x {hthpu.get_device_name()}", group="pytorch")


# --------------------------------------------------------------------------------------------------------------------
# DeepSpeed


def check_deepspeed() -> Check:
    version = dist_version("deepspeed")
    if version is None:
        return Check("DeepSpeed", FAIL, "not installed",
                     "run `make install` (builds deepspeed==0.19.8 against the installed torch)", "deepspeed")
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        backend = accelerator.communication_backend_name()
    except Exception as exc:
        return Check("DeepSpeed", FAIL, f"{version} installed but `import deepspeed` fails: {type(exc).__name__}: {exc}",
                     "rebuild it against this torch: pip install --no-build-isolation --force-reinstall deepspeed==0.19.8",
                     "deepspeed")
    return Check("DeepSpeed", PASS, f"{deepspeed.__version__}, accelerator {accelerator._name}, comm backend {backend}",
                 group="deepspeed")


@contextlib.contextmanager
def _quiet():
    """Silence stdout/stderr at the file-descriptor level (compiler probes run as subprocesses), then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def deepspeed_op_report() -> dict[str, Any]:
    """ds_report's op table as data: {'ops': {name: {'installed': bool, 'compatible': bool}}, 'ninja', 'compiler',
    'cuda_home'}. Requires deepspeed."""
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder.all_ops import ALL_OPS
    from torch.utils import cpp_extension

    ops = {}
    with _quiet():  # builders print warnings, and their compile probes write to the file descriptors directly
        for name, builder in ALL_OPS.items():
            if name == "deepspeed_not_implemented":
                continue
            try:
                compatible = bool(builder.is_compatible(False))
            except Exception:
                compatible = False
            ops[name] = {"installed": bool(installed_ops.get(name, False)), "compatible": compatible}
    compiler = os.environ.get("CXX") or "c++"
    return {"ops": ops, "ninja": cpp_extension.is_ninja_available(), "compiler": shutil.which(compiler),
            "cuda_home": cpp_extension.CUDA_HOME}


def check_deepspeed_ops(report: Mapping[str, Any] | None, info: TorchBuild) -> Check:
    """Which DeepSpeed ops are prebuilt and which can be JIT-compiled here (ninja, a C++ compiler, CUDA_HOME)."""
    name = "DeepSpeed ops (JIT)"
    if report is None:
        return Check(name, WARN, "unknown: DeepSpeed does not import", "fix the DeepSpeed check first", "deepspeed")
    ops = report["ops"]
    installed = sorted(n for n, o in ops.items() if o["installed"])
    buildable = sorted(n for n, o in ops.items() if o["compatible"] and not o["installed"])
    detail = (f"prebuilt: {', '.join(installed) or 'none'}; JIT-buildable: {', '.join(buildable) or 'none'} "
              f"(ninja {'yes' if report['ninja'] else 'NO'}, compiler {report['compiler'] or 'NONE'}"
              + (f", CUDA_HOME {report['cuda_home'] or 'NONE'}" if info.gpu_build else "") + ")")
    missing = [what for what, ok in (("ninja", report["ninja"]), ("a C++ compiler", report["compiler"])) if not ok]
    if info.gpu_build and not report["cuda_home"]:
        missing.append("CUDA_HOME/nvcc")
    if missing:
        return Check(name, WARN, detail,
                     f"install {' and '.join(missing)} to JIT-build ops (pip install ninja; apt-get install g++; the CUDA "
                     "toolkit), or avoid compiled ops: \"torch_adam\": true in the optimizer params", "deepspeed")
    return Check(name, PASS, detail, group="deepspeed")


_ARCH_ENTRY = re.compile(r"^(\d+)\.(\d+)(\+PTX)?$")


def parse_cuda_arch_list(value: str) -> list[tuple[int, int, bool]]:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed's op builder reads it: entries 'N.N' or 'N.N+PTX', separated by ';' or spaces.

    torch itself also accepts '9.0a' and names such as 'Hopper'; DeepSpeed does int() on each part and fails
    (ValueError: invalid literal for int() with base 10: '0a'). An empty entry ('8.0;', a double space) breaks the
    prebuilt-ops install (DS_BUILD_OPS=1) the same way. Raises ValueError naming the first bad entry."""
    parsed = []
    for entry in value.replace(" ", ";").split(";"):
        match = _ARCH_ENTRY.match(entry)
        if not match:
            raise ValueError(f"entry {entry!r} is not of the form N.N or N.N+PTX" if entry else
                             "it has an empty entry (a stray ';' or space)")
        parsed.append((int(match.group(1)), int(match.group(2)), bool(match.group(3))))
    return parsed


def suggested_arch_list(value: str) -> str:
    """'9.0a' -> '9.0', '8.0;9.0a+PTX' -> '8.0;9.0+PTX': keep the numbers, drop what DeepSpeed cannot parse."""
    out = []
    for entry in (e.strip() for e in value.replace(" ", ";").split(";")):
        match = re.match(r"^(\d+)\.(\d+)[a-z]*(\+PTX)?$", entry)
        if match:
            out.append(f"{match.group(1)}.{match.group(2)}{match.group(3) or ''}")
    return ";".join(out)


def check_torch_cuda_arch_list(value: str | None, gpu_build: bool) -> Check:
    name = "TORCH_CUDA_ARCH_LIST"
    if value is None or not value.strip():
        return Check(name, PASS, "unset: DeepSpeed compiles ops for the GPUs it sees", group="deepspeed")
    try:
        parse_cuda_arch_list(value)
    except ValueError as exc:
        suggestion = suggested_arch_list(value)
        fix = (f"export TORCH_CUDA_ARCH_LIST={suggestion or '9.0'} (or unset it) before the first DeepSpeed op build, "
               "or set \"torch_adam\": true in the optimizer params so FusedAdam is not compiled")
        if gpu_build:
            return Check(name, FAIL, f"{value!r}: {exc}; DeepSpeed's op builder cannot parse it (FusedAdam's JIT build "
                                     "stops with ValueError: invalid literal for int())", fix, "deepspeed")
        return Check(name, WARN, f"{value!r}: {exc}; harmless on this CPU build, but it breaks DeepSpeed's CUDA op "
                                 "builds on a GPU machine", fix, "deepspeed")
    return Check(name, PASS, f"{value!r} (parses as DeepSpeed expects)", group="deepspeed")


def check_accelerate() -> Check:
    version = dist_version("accelerate")
    if version is None:
        return Check("accelerate", WARN, "not installed: the accelerate-launch examples will not run",
                     "pip install accelerate", "deepspeed")
    return Check("accelerate", PASS, version, group="deepspeed")


# --------------------------------------------------------------------------------------------------------------------
# Notebook tooling

NOTEBOOK_PACKAGES = {
    # distribution: (required, why)
    "papermill": (True, "`labkit run` and the tests execute notebooks with it"),
    "nbclient": (True, "papermill runs kernels through it"),
    "jupyterlab": (False, "only `make lab` (interactive use) needs it"),
    "ipywidgets": (False, "notebook 01's filter widget needs it; the plain cells work without"),
}


def check_package(dist: str, required: bool, why: str) -> Check:
    version = dist_version(dist)
    if version:
        return Check(dist, PASS, version, group="notebooks")
    return Check(dist, FAIL if required else WARN, f"not installed: {why}", f"pip install {dist} (or `make install`)",
                 "notebooks")


# --------------------------------------------------------------------------------------------------------------------
# System


def check_cpu(cores: int | None = None, logical: int | None = None, env: Mapping[str, str] | None = None) -> Check:
    env = os.environ if env is None else env
    logical = logical or os.cpu_count() or 1
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical)
    detail = f"{cores} usable core(s) of {logical}"
    threads = env.get("OMP_NUM_THREADS")
    if threads:
        detail += f", OMP_NUM_THREADS={threads}"
        if threads.isdigit() and int(threads) > cores:
            return Check("CPU", WARN, detail + " (more threads than cores: ranks oversubscribe and run many times slower)",
                         f"set OMP_NUM_THREADS to cores // ranks (here {max(1, cores // 2)} for 2 ranks)", "system")
    return Check("CPU", PASS, detail, group="system")


def check_shm(path: str | Path = "/dev/shm") -> Check:
    name = "/dev/shm"
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return Check(name, WARN, f"cannot read {path}: {exc}", "mount a tmpfs at /dev/shm", "system")
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    detail = f"{total / GIB:.2f} GiB ({free / GIB:.2f} GiB free)"
    if total < SHM_MIN_BYTES:
        return Check(name, WARN, detail + ": under 1 GiB (containers default to 64 MiB); DataLoader workers and "
                     "NCCL's shared-memory transport fail with 'Bus error' or 'No space left on device'",
                     "Kubernetes: mount an emptyDir with medium: Memory at /dev/shm; Docker: --shm-size=8g or --ipc=host",
                     "system")
    return Check(name, PASS, detail, group="system")


def check_hugepages(meminfo_text: str, gaudi_present: bool = False) -> Check:
    from labkit.devices import ParseError, parse_meminfo

    name = "huge pages"
    try:
        info = parse_meminfo(meminfo_text)
    except ParseError as exc:
        return Check(name, WARN, f"cannot parse /proc/meminfo: {exc}", "", "system")
    if "HugePages_Total" not in info:
        return Check(name, WARN, "this kernel reports no huge pages", "", "system")
    total, free, size = info["HugePages_Total"], info.get("HugePages_Free", 0), info.get("Hugepagesize", 2 * 2**20)
    detail = (f"{total} x {size // 2**20} MiB pages reserved ({total * size / GIB:.2f} GiB, {free} free)")
    if total == 0 and gaudi_present:
        return Check(name, WARN, detail + ": Gaudi workloads need hugepages-2Mi",
                     "reserve them on the node (sysctl -w vm.nr_hugepages=N, or the node's kubelet/bootloader config) "
                     "and request hugepages-2Mi in the pod", "system")
    if total == 0:
        detail += " (only Gaudi workloads need them)"
    return Check(name, PASS, detail, group="system")


# --------------------------------------------------------------------------------------------------------------------
# NCCL environment

NCCL_DEBUG_VALUES = ("VERSION", "WARN", "INFO", "TRACE")


def check_nccl_debug(env: Mapping[str, str]) -> Check:
    value = env.get("NCCL_DEBUG")
    if not value:
        return Check("NCCL_DEBUG", PASS, "unset (set NCCL_DEBUG=INFO to see NCCL's transport choices when a run hangs)",
                     group="network")
    if value.upper() not in NCCL_DEBUG_VALUES:
        return Check("NCCL_DEBUG", WARN, f"{value!r} is not an NCCL debug level", "use VERSION, WARN, INFO or TRACE",
                     "network")
    return Check("NCCL_DEBUG", PASS, value, group="network")


def nccl_ifname_matches(spec: str, interfaces: Sequence[str]) -> list[str]:
    """Interfaces NCCL_SOCKET_IFNAME selects: comma-separated prefixes; '=' for exact names; a leading '^' excludes."""
    exclude = spec.startswith("^")
    body = spec[1:] if exclude else spec
    exact = body.startswith("=")
    body = body[1:] if exact else body
    patterns = [p.strip() for p in body.split(",") if p.strip()]

    def hit(name: str) -> bool:
        return any(name == p if exact else name.startswith(p) for p in patterns)

    return [i for i in interfaces if hit(i) != exclude]


def check_nccl_socket_ifname(env: Mapping[str, str], interfaces: Sequence[str]) -> Check:
    name = "NCCL_SOCKET_IFNAME"
    value = env.get(name)
    have = ", ".join(interfaces) or "none"
    if not value:
        return Check(name, PASS, f"unset: NCCL picks an interface itself (here: {have})", group="network")
    matched = nccl_ifname_matches(value, interfaces)
    if not matched:
        usable = [i for i in interfaces if i != "lo"] or list(interfaces)
        return Check(name, WARN, f"{value!r} matches no interface on this machine (interfaces: {have}); NCCL would "
                                 "fail with 'no socket interface found'",
                     f"set NCCL_SOCKET_IFNAME={usable[0] if usable else 'eth0'} (an interface that exists here; in a pod "
                     "that is usually eth0) or unset it", "network")
    return Check(name, PASS, f"{value!r} selects {', '.join(matched)}", group="network")


def check_nccl_ib_disable(env: Mapping[str, str], ib_devices: Sequence[str]) -> Check:
    name = "NCCL_IB_DISABLE"
    value = env.get(name)
    ib = ", ".join(ib_devices)
    if value is None or value == "":
        detail = f"unset: NCCL uses InfiniBand/RoCE ({ib})" if ib_devices else "unset (no InfiniBand device here: TCP)"
        return Check(name, PASS, detail, group="network")
    if value not in ("0", "1"):
        return Check(name, WARN, f"{value!r} is neither 0 nor 1", "set NCCL_IB_DISABLE=0 (use IB) or 1 (TCP only)",
                     "network")
    if value == "1" and ib_devices:
        return Check(name, WARN, f"1: InfiniBand disabled although {ib} exist(s): inter-node traffic goes over TCP",
                     "unset NCCL_IB_DISABLE (or set 0) unless IB is known broken", "network")
    return Check(name, PASS, "1: TCP sockets only" if value == "1" else "0: InfiniBand allowed", group="network")


def infiniband_devices(root: str | Path = "/sys/class/infiniband") -> list[str]:
    path = Path(root)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


# --------------------------------------------------------------------------------------------------------------------
# MPI


def check_mpirun() -> Check:
    exe = shutil.which("mpirun")
    if exe is None:
        return Check("mpirun", WARN, "not on PATH: the openmpi launcher (what an MPIJob's launcher runs) is unavailable",
                     "apt-get install openmpi-bin libopenmpi-dev (or use the deepspeed launcher)", "mpi")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
        version = next((line.strip() for line in out.splitlines() if line.strip()), "unknown version")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("mpirun", WARN, f"{exe} does not answer --version: {exc}", "reinstall Open MPI", "mpi")
    return Check("mpirun", PASS, f"{version} ({exe})", group="mpi")


def check_mpi4py() -> Check:
    version = dist_version("mpi4py")
    if version is None:
        return Check("mpi4py", WARN, "not installed: deepspeed.init_distributed() cannot read ranks from Open MPI",
                     "pip install mpi4py (needs mpicc from libopenmpi-dev)", "mpi")
    return Check("mpi4py", PASS, version, group="mpi")


# --------------------------------------------------------------------------------------------------------------------
# Kubernetes


def check_kubeconfig(kubeconfig: str | None = None, context: str | None = None,
                     env: Mapping[str, str] | None = None) -> Check:
    from labkit.cluster import find_kubeconfig

    try:
        source = find_kubeconfig(kubeconfig, context, env)
    except LabkitError as exc:
        return Check("kubeconfig", WARN, str(exc), "fix the kubeconfig or point KUBECONFIG at a valid one", "kubernetes")
    env = os.environ if env is None else env
    if source is None and env.get("KUBECONFIG"):
        return Check("kubeconfig", WARN, f"KUBECONFIG={env['KUBECONFIG']} names no existing file: no cluster configured",
                     "point KUBECONFIG at your kubeconfig (kind get kubeconfig > FILE), or unset it", "kubernetes")
    if source is None:
        return Check("kubeconfig", WARN, "no cluster configured: the local backend runs everything on this machine",
                     "to use a cluster: set KUBECONFIG or create ~/.kube/config (kind create cluster writes one)",
                     "kubernetes")
    return Check("kubeconfig", PASS, source.describe(), group="kubernetes")


def check_api_server(kubeconfig: str | None = None, context: str | None = None, timeout: float = 2.0) -> Check:
    from labkit.cluster import find_kubeconfig, probe_api_server

    name = "Kubernetes API server"
    try:
        if find_kubeconfig(kubeconfig, context) is None:
            return Check(name, WARN, "skipped: no cluster configured", "see the kubeconfig check", "kubernetes")
        probe = probe_api_server(kubeconfig, context, timeout=timeout)
    except LabkitError as exc:
        return Check(name, WARN, f"skipped: {exc}", "see the kubeconfig check", "kubernetes")
    if not probe.reachable:
        return Check(name, WARN, f"{probe.server} unreachable ({probe.error}, {probe.elapsed_s:.1f} s)",
                     "start the cluster (kind/minikube), connect the VPN, or switch context "
                     "(kubectl config use-context NAME)", "kubernetes")
    if probe.status in (401, 403):
        return Check(name, WARN, f"{probe.server} answered but refused the credentials ({probe.error})",
                     "refresh the credentials in the kubeconfig (kubectl get nodes should work)", "kubernetes")
    if probe.status:
        return Check(name, PASS, f"{probe.server} answers ({probe.error} for /version, {probe.elapsed_s:.2f} s)",
                     group="kubernetes")
    return Check(name, PASS, f"{probe.server} answers, Kubernetes {probe.version} ({probe.elapsed_s:.2f} s)",
                 group="kubernetes")


# --------------------------------------------------------------------------------------------------------------------
# All of them


def validate_check_options(timeout: float, kubeconfig: str | None = None, *, timeout_field: str = "api_timeout_s",
                           kubeconfig_field: str = "kubeconfig") -> None:
    """Notebook 00 parameters / CLI flags (the fields named as the caller calls them), checked before anything runs."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3:
        raise ConfigError(timeout_field, f"{timeout!r} is not a number of seconds in (0, 3]",
                          "use a short timeout such as 2.0: the check must not hang on a dead cluster")
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise ConfigError(kubeconfig_field, f"{kubeconfig} does not exist",
                          "pass an existing kubeconfig file, or leave it empty to use $KUBECONFIG or ~/.kube/config")


def run_checks(*, kubeconfig: str | None = None, context: str | None = None, timeout: float = 2.0,
               env: Mapping[str, str] | None = None, progress: bool = False) -> CheckReport:
    """Every check, in a fixed order. A check that crashes becomes a WARN naming the crash, never a traceback."""
    validate_check_options(timeout, kubeconfig)
    env = dict(os.environ if env is None else env)
    facts: dict[str, Any] = {}

    def torch_info() -> TorchBuild:
        if "torch" not in facts:
            facts["torch"] = torch_build()
        return facts["torch"]

    def gaudi_present() -> bool:
        return any(c.name == "Intel Gaudi (HPU)" and c.status == PASS for c in report)

    def ops() -> Check:
        try:
            op_report = deepspeed_op_report() if any(c.name == "DeepSpeed" and c.status == PASS for c in report) else None
        except Exception:
            op_report = None
        return check_deepspeed_ops(op_report, torch_info())

    def meminfo() -> str:
        return Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""

    steps: list[tuple[str, Callable[[], Check]]] = [
        ("Python", check_python),
        ("torch", lambda: check_torch(torch_info())),
        ("Intel Gaudi (HPU)", check_hpu),
        ("CUDA", lambda: check_cuda(torch_info(), gaudi_present())),
        ("NCCL", lambda: check_nccl(torch_info())),
        ("DeepSpeed", check_deepspeed),
        ("DeepSpeed ops (JIT)", ops),
        ("TORCH_CUDA_ARCH_LIST", lambda: check_torch_cuda_arch_list(env.get("TORCH_CUDA_ARCH_LIST"),
                                                                    torch_info().gpu_build or bool(torch_info().error))),
        ("accelerate", check_accelerate),
        *[(dist, (lambda d=dist: check_package(d, *NOTEBOOK_PACKAGES[d]))) for dist in NOTEBOOK_PACKAGES],
        ("CPU", lambda: check_cpu(env=env)),
        ("/dev/shm", check_shm),
        ("huge pages", lambda: check_hugepages(meminfo(), gaudi_present())),
        ("NCCL_DEBUG", lambda: check_nccl_debug(env)),
        ("NCCL_SOCKET_IFNAME", lambda: check_nccl_socket_ifname(env, network_interfaces())),
        ("NCCL_IB_DISABLE", lambda: check_nccl_ib_disable(env, infiniband_devices())),
        ("mpirun", check_mpirun),
        ("mpi4py", check_mpi4py),
        ("kubeconfig", lambda: check_kubeconfig(kubeconfig, context, env)),
        ("Kubernetes API server", lambda: check_api_server(kubeconfig, context, timeout)),
    ]
    report = CheckReport()
    iterator: Any = steps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(steps, desc="checks", unit="check")
    for name, step in iterator:
        if progress:
            iterator.set_postfix_str(name)
        try:
            report.append(step())
        except Exception as exc:  # a bug in one check must not hide the others
            report.append(Check(name, WARN, f"the check itself crashed: {type(exc).__name__}: {exc}",
                                "report this as a labkit bug", "labkit"))
    return report

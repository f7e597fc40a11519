"""Environment checks as data: every check is a Check(name, status, detail, fix), in the spirit of `ds_report`.

Severity policy: a check FAILS only when the kit itself cannot work here (Python too old, no torch, no DeepSpeed, no
notebook runner, a TORCH_CUDA_ARCH_LIST that breaks DeepSpeed's op builds on a CUDA machine). What a CPU laptop is
expected to lack (GPUs, NCCL, Gaudi, MPI, a cluster) WARNS, so `labkit check` exits 0 there.
Each check function takes its inputs as arguments (environment, file text, torch facts) so tests can feed recorded ones.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.checks import (
    FAIL,
    PASS,
    SLOW_BF16_CPU_BATCH,
    WARN,
    Check,
    CheckReport,
    TorchBuild,
    _checker,
    dist_version,
    infiniband_devices,
    major_minor,
    network_interfaces,
    quiet,
    torch_build,
)
from labkit.errors import ConfigError, LabkitError, ParseError
from labkit.host import parse_meminfo, usable_cores
from labkit.kube import find_kubeconfig, probe_api_server

GIB = 2**30
HPU = "Intel Gaudi (HPU)"
# pyproject.toml's torch floor (tests/test_packaging.py keeps them equal): accelerate 1.16 and transformers 5 need 2.6;
# 2.4.1 fails notebooks 06 (no torch.accelerator) and, before labkit's store fallback, 02-05 and 07 (docs/benchmarks.md)
TORCH_FLOOR = (2, 6)
DS_REBUILD = "pip install --no-build-isolation --force-reinstall deepspeed==0.19.8"
MPI4PY_FIX = "pip install mpi4py (needs mpicc from libopenmpi-dev)"
# Distributions checked by presence alone: name -> (group, required, why it matters, fix)
PACKAGES = {
    "accelerate": ("deepspeed", False, "the accelerate-launch examples will not run", "pip install accelerate"),
    "papermill": ("notebooks", True, "`labkit run` and the tests execute notebooks with it", ""),
    "nbclient": ("notebooks", True, "papermill runs kernels through it", ""),
    "jupyterlab": ("notebooks", False, "only `make lab` (interactive use) needs it", ""),
    "ipywidgets": ("notebooks", False, "notebook 01's filter widget needs it; the plain cells work without", ""),
    "mpi4py": ("mpi", False, "deepspeed.init_distributed() cannot read ranks from Open MPI", MPI4PY_FIX),
}


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    where = f"virtual environment {Path(sys.prefix).name}" if sys.prefix != sys.base_prefix else sys.executable
    check, detail = _checker("Python", "python"), f"{'.'.join(map(str, version))} ({where})"
    if tuple(version[:2]) < (3, 10):
        return check(FAIL, detail, "use Python 3.10 or newer (the kit's venv: make install)")
    return check(PASS, detail)


def check_torch(info: TorchBuild) -> Check:
    check = _checker("torch", "pytorch")
    if info.error:
        fix = "run `make install` (a CPU torch without an NVIDIA GPU), or install the torch build for your accelerator"
        return check(FAIL, f"cannot import torch ({info.error})", fix)
    detail, floor = f"{info.version}, {info.describe()}", ".".join(map(str, TORCH_FLOOR))
    if major_minor(info.version) < TORCH_FLOOR:
        fix = f"install torch {floor} or newer built for your accelerator (`make install`: torch 2.13.0)"
        return check(FAIL, f"{detail}: older than {floor}, the oldest the kit runs on", fix)
    return check(PASS, detail)


def not_used(check: Callable[..., Check], why: str) -> Check:
    """An accelerator check that passes because the machine has the other kind: nothing to fix, nothing found."""
    return dataclasses.replace(check(PASS, f"not used: {why}"), applies=False)


def check_cuda(info: TorchBuild, hpu_present: bool = False) -> Check:
    check = _checker("CUDA", "pytorch")
    if info.error:
        return check(WARN, "unknown: torch does not import", "fix the torch check first")
    if info.cuda_available:
        return check(PASS, f"{info.describe()}, {len(info.cuda_devices)} device(s): {', '.join(info.cuda_devices)}")
    if hpu_present:
        return not_used(check, "this is a Gaudi (HPU) machine")
    if not info.gpu_build:
        detail = f"none: torch {info.version} is a CPU build, so DeepSpeed runs on CPU ranks (gloo)"
        fix = "expected on a laptop; on a GPU node install the CUDA build of torch that matches its driver"
        return check(WARN, detail, fix)
    fix = "check `nvidia-smi`, the driver, CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu limit"
    return check(WARN, f"{info.describe()} but no usable GPU (torch.cuda.is_available() is False)", fix)


def check_nccl(info: TorchBuild) -> Check:
    check = _checker("NCCL", "pytorch")
    if info.nccl:
        return check(PASS, f"{info.nccl} (torch.cuda.nccl)")
    if info.cuda_available:
        detail = "torch has CUDA but no NCCL: multi-GPU runs cannot use the nccl backend"
        return check(WARN, detail, "install a torch build with NCCL (the PyPI CUDA wheels have it)")
    fix = "expected without GPUs; GPU nodes get NCCL with the CUDA build of torch"
    return check(WARN, "not available: no CUDA here, so multi-process runs use gloo", fix)


def check_hpu(cuda_present: bool = False) -> Check:
    check = _checker(HPU, "pytorch")
    try:
        import habana_frameworks.torch.hpu as hthpu
    except ImportError:
        if cuda_present:  # as check_cuda on a Gaudi node: a warning here would name nothing to fix
            return not_used(check, "this machine has CUDA GPUs (no habana_frameworks)")
        fix = (
            "expected unless this is a Gaudi node; there use Intel's Gaudi PyTorch image (vault.habana.ai/gaudi-docker)"
        )
        return check(WARN, "no habana_frameworks: not a Gaudi machine", fix)
    except Exception as exc:
        fix = "reinstall the Gaudi software stack matching the driver (hl-smi shows its version)"
        return check(WARN, f"habana_frameworks fails to import: {exc}", fix)
    if not hthpu.is_available():
        detail = f"habana_frameworks {dist_version('habana-torch-plugin') or ''} installed but no Gaudi device visible"
        return check(WARN, detail, "check `hl-smi`, HABANA_VISIBLE_MODULES and the pod's habana.ai/gaudi limit")
    return check(PASS, f"{hthpu.device_count()} x {hthpu.get_device_name()}")


def check_deepspeed() -> Check:
    check, version = _checker("DeepSpeed", "deepspeed"), dist_version("deepspeed")
    if version is None:
        return check(FAIL, "not installed", "run `make install` (builds deepspeed==0.19.8 against the installed torch)")
    try:
        with quiet(python_streams=False):  # "Setting accelerator to CPU" and FutureWarnings are no news here
            import deepspeed
            from deepspeed.accelerator import get_accelerator

            accelerator = get_accelerator()
    except Exception as exc:
        detail = f"{version} installed but `import deepspeed` fails: {type(exc).__name__}: {exc}"
        return check(FAIL, detail, f"rebuild it against this torch: {DS_REBUILD}")
    backend = accelerator.communication_backend_name()
    return check(PASS, f"{deepspeed.__version__}, accelerator {accelerator._name}, comm backend {backend}")


def _compatible(builder) -> bool:
    try:
        return bool(builder.is_compatible(False))
    except Exception:
        return False


def deepspeed_op_report() -> dict[str, Any]:
    """ds_report's op table as data: {'ops': {name: {'installed': bool, 'compatible': bool}}, 'ninja', 'compiler',
    'cuda_home'}. Requires deepspeed."""
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder.all_ops import ALL_OPS
    from torch.utils import cpp_extension

    with quiet():  # builders print warnings, and their compile probes write to the file descriptors directly
        ops = {
            name: {"installed": bool(installed_ops.get(name, False)), "compatible": _compatible(builder)}
            for name, builder in ALL_OPS.items()
            if name != "deepspeed_not_implemented"
        }
    tools = {"ninja": cpp_extension.is_ninja_available(), "compiler": shutil.which(os.environ.get("CXX") or "c++")}
    return {"ops": ops, **tools, "cuda_home": cpp_extension.CUDA_HOME}


def check_deepspeed_ops(report: Mapping[str, Any] | None, info: TorchBuild) -> Check:
    """Which DeepSpeed ops are prebuilt and which can be JIT-compiled here (ninja, a C++ compiler, CUDA_HOME)."""
    check = _checker("DeepSpeed ops (JIT)", "deepspeed")
    if report is None:
        return check(WARN, "unknown: DeepSpeed does not import", "fix the DeepSpeed check first")
    ops = report["ops"]
    installed = ", ".join(sorted(n for n, o in ops.items() if o["installed"])) or "none"
    buildable = ", ".join(sorted(n for n, o in ops.items() if o["compatible"] and not o["installed"])) or "none"
    cuda_home = f", CUDA_HOME {report['cuda_home'] or 'NONE'}" if info.gpu_build else ""
    tools = f"ninja {'yes' if report['ninja'] else 'NO'}, compiler {report['compiler'] or 'NONE'}{cuda_home}"
    detail = f"prebuilt: {installed}; JIT-buildable: {buildable} ({tools})"
    needs = {"ninja": report["ninja"], "a C++ compiler": report["compiler"]}
    needs |= {"CUDA_HOME/nvcc": report["cuda_home"]} if info.gpu_build else {}
    if missing := [what for what, ok in needs.items() if not ok]:
        fix = f"install {' and '.join(missing)} to JIT-build ops (pip install ninja; apt-get install g++; the CUDA "
        fix += 'toolkit), or avoid compiled ops: "torch_adam": true in the optimizer params'
        return check(WARN, detail, fix)
    return check(PASS, detail)


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
            empty = "it has an empty entry (a stray ';' or space)"
            raise ValueError(f"entry {entry!r} is not of the form N.N or N.N+PTX" if entry else empty)
        parsed.append((int(match.group(1)), int(match.group(2)), bool(match.group(3))))
    return parsed


def suggested_arch_list(value: str) -> str:
    """'9.0a' -> '9.0', '8.0;9.0a+PTX' -> '8.0;9.0+PTX': keep the numbers, drop what DeepSpeed cannot parse."""
    matches = (re.match(r"^(\d+)\.(\d+)[a-z]*(\+PTX)?$", e.strip()) for e in value.replace(" ", ";").split(";"))
    return ";".join(f"{m.group(1)}.{m.group(2)}{m.group(3) or ''}" for m in matches if m)


def check_torch_cuda_arch_list(value: str | None, gpu_build: bool) -> Check:
    check = _checker("TORCH_CUDA_ARCH_LIST", "deepspeed")
    if value is None or not value.strip():
        return check(PASS, "unset: DeepSpeed compiles ops for the GPUs it sees")
    try:
        parse_cuda_arch_list(value)
    except ValueError as exc:
        fix = f"export TORCH_CUDA_ARCH_LIST={suggested_arch_list(value) or '9.0'} (or unset it) before the first "
        fix += 'DeepSpeed op build, or set "torch_adam": true in the optimizer params so FusedAdam is not compiled'
        if gpu_build:
            why = "DeepSpeed's op builder cannot parse it (FusedAdam's JIT build stops with ValueError: invalid "
            why += "literal for int())"
            return check(FAIL, f"{value!r}: {exc}; {why}", fix)
        why = "harmless on this CPU build, but it breaks DeepSpeed's CUDA op builds on a GPU machine"
        return check(WARN, f"{value!r}: {exc}; {why}", fix)
    return check(PASS, f"{value!r} (parses as DeepSpeed expects)")


def check_package(dist: str) -> Check:
    """A distribution of PACKAGES: its version, or why it matters and how to install it."""
    group, required, why, fix = PACKAGES[dist]
    if version := dist_version(dist):
        return Check(dist, PASS, version, group=group)
    fix = fix or f"pip install {dist} (or `make install`)"
    return Check(dist, FAIL if required else WARN, f"not installed: {why}", fix, group)


def check_mpirun() -> Check:
    check, exe = _checker("mpirun", "mpi"), shutil.which("mpirun")
    if exe is None:
        detail = "not on PATH: the openmpi launcher (what an MPIJob's launcher runs) is unavailable"
        return check(WARN, detail, "apt-get install openmpi-bin libopenmpi-dev (or use the deepspeed launcher)")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return check(WARN, f"{exe} does not answer --version: {exc}", "reinstall Open MPI")
    version = next((line.strip() for line in out.splitlines() if line.strip()), "unknown version")
    return check(PASS, f"{version} ({exe})")


def check_cpu(
    cores: int | None = None,
    logical: int | None = None,
    env: Mapping[str, str] | None = None,
    bf16: bool | None = None,
) -> Check:
    """Cores for CPU ranks, their threads, and whether torch computes bf16 natively here (`bf16`: TorchBuild.cpu_bf16;
    chapters 02 and 05 train their CPU ranks in bf16, the paper's mixed precision)."""
    check, threads = _checker("CPU", "system"), (os.environ if env is None else env).get("OMP_NUM_THREADS")
    cores = cores or usable_cores()
    detail = f"{cores} usable core(s) of {logical or os.cpu_count() or 1}"
    detail += f", OMP_NUM_THREADS={threads}" if threads else ""
    if threads and threads.isdigit() and int(threads) > cores:
        detail += " (more threads than cores: ranks oversubscribe and run many times slower)"
        return check(WARN, detail, f"set OMP_NUM_THREADS to cores // ranks (here {max(1, cores // 2)} for 2 ranks)")
    if bf16 is False:
        detail += "; no native bf16 in torch on this CPU (x86 needs AVX-512): bf16 matrix products run far slower"
        batch, seq = SLOW_BF16_CPU_BATCH
        fix = f"expected on many laptops: chapters 02 and 05 (bf16) then train on {batch} x {seq} tokens per step,"
        fix += " which keeps them fast; elsewhere prefer dtype='fp32' on this CPU (labkit train --dtype fp32)"
        return check(WARN, detail, fix)
    return check(PASS, detail + ("; native bf16" if bf16 else ""))


def check_shm(path: str | Path = "/dev/shm") -> Check:
    check = _checker("/dev/shm", "system")
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return check(WARN, f"cannot read {path}: {exc}", "mount a tmpfs at /dev/shm")
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    detail = f"{total / GIB:.2f} GiB ({free / GIB:.2f} GiB free)"
    if total < GIB:
        detail += ": under 1 GiB (containers default to 64 MiB); DataLoader workers and NCCL's shared-memory "
        detail += "transport fail with 'Bus error' or 'No space left on device'"
        fix = "Kubernetes: mount an emptyDir with medium: Memory at /dev/shm; Docker: --shm-size=8g or --ipc=host"
        return check(WARN, detail, fix)
    return check(PASS, detail)


def check_hugepages(meminfo_text: str, gaudi_present: bool = False) -> Check:
    check = _checker("huge pages", "system")
    try:
        info = parse_meminfo(meminfo_text)
    except ParseError as exc:
        return check(WARN, f"cannot parse /proc/meminfo: {exc}")
    if "HugePages_Total" not in info:
        return check(WARN, "this kernel reports no huge pages")
    total, free, size = info["HugePages_Total"], info.get("HugePages_Free", 0), info.get("Hugepagesize", 2 * 2**20)
    detail = f"{total} x {size // 2**20} MiB pages reserved ({total * size / GIB:.2f} GiB, {free} free)"
    if total == 0 and gaudi_present:
        fix = "reserve them on the node (sysctl -w vm.nr_hugepages=N, or the node's kubelet/bootloader config) and "
        fix += "request hugepages-2Mi in the pod"
        return check(WARN, detail + ": Gaudi workloads need hugepages-2Mi", fix)
    return check(PASS, detail + (" (only Gaudi workloads need them)" if total == 0 else ""))


def check_nccl_debug(env: Mapping[str, str]) -> Check:
    check, value = _checker("NCCL_DEBUG", "network"), env.get("NCCL_DEBUG")
    if not value:
        return check(PASS, "unset (set NCCL_DEBUG=INFO to see NCCL's transport choices when a run hangs)")
    if value.upper() not in ("VERSION", "WARN", "INFO", "TRACE"):
        return check(WARN, f"{value!r} is not an NCCL debug level", "use VERSION, WARN, INFO or TRACE")
    return check(PASS, value)


def nccl_ifname_matches(spec: str, interfaces: Sequence[str]) -> list[str]:
    """Interfaces NCCL_SOCKET_IFNAME selects: comma-separated prefixes; '=' for exact names; a leading '^' excludes."""
    exclude = spec.startswith("^")
    body = spec[1:] if exclude else spec
    exact = body.startswith("=")
    patterns = [p.strip() for p in (body[1:] if exact else body).split(",") if p.strip()]
    return [i for i in interfaces if any(i == p if exact else i.startswith(p) for p in patterns) != exclude]


def check_nccl_socket_ifname(env: Mapping[str, str], interfaces: Sequence[str]) -> Check:
    check, value = _checker("NCCL_SOCKET_IFNAME", "network"), env.get("NCCL_SOCKET_IFNAME")
    have = ", ".join(interfaces) or "none"
    if not value:
        return check(PASS, f"unset: NCCL picks an interface itself (here: {have})")
    if matched := nccl_ifname_matches(value, interfaces):
        return check(PASS, f"{value!r} selects {', '.join(matched)}")
    usable = [i for i in interfaces if i != "lo"] or list(interfaces) or ["eth0"]
    detail = f"{value!r} matches no interface on this machine (interfaces: {have}); NCCL would fail with "
    fix = f"set NCCL_SOCKET_IFNAME={usable[0]} (an interface that exists here; in a pod usually eth0) or unset it"
    return check(WARN, detail + "'no socket interface found'", fix)


def check_nccl_ib_disable(env: Mapping[str, str], ib_devices: Sequence[str]) -> Check:
    check, value, ib = _checker("NCCL_IB_DISABLE", "network"), env.get("NCCL_IB_DISABLE"), ", ".join(ib_devices)
    if not value:
        return check(PASS, f"unset: NCCL uses InfiniBand/RoCE ({ib})" if ib else "unset (no InfiniBand here: TCP)")
    if value not in ("0", "1"):
        return check(WARN, f"{value!r} is neither 0 nor 1", "set NCCL_IB_DISABLE=0 (use IB) or 1 (TCP only)")
    if value == "1" and ib:
        detail = f"1: InfiniBand disabled although {ib} exist(s): inter-node traffic goes over TCP"
        return check(WARN, detail, "unset NCCL_IB_DISABLE (or set 0) unless IB is known broken")
    return check(PASS, "1: TCP sockets only" if value == "1" else "0: InfiniBand allowed")


def check_proxy(env: Mapping[str, str]) -> Check:
    """The proxy variables this process sees (pip, Hugging Face downloads and the API client use them); credentials in
    a proxy URL are never shown. Job pods get theirs from `--http-proxy` (ConfigMap labkit-proxy), not from here."""
    check, seen = _checker("proxy", "network"), {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        values = {v for v in (env.get(name), env.get(name.lower())) if v}
        if len(values) > 1:
            fix = f"set {name} and {name.lower()} to the same value (tools read one or the other)"
            return check(WARN, f"{name} and {name.lower()} differ", fix)
        if values:  # user:password@ hidden with a scheme or without, a password holding / or @ included
            value, scheme = values.pop(), ""
            if match := re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
                scheme, value = match.group(), value[match.end() :]
            seen[name] = scheme + ("***@" + value.rsplit("@", 1)[1] if "@" in value else value)
    if not seen:
        return check(PASS, "no HTTP(S)_PROXY/NO_PROXY: direct connections")
    detail = ", ".join(f"{k}={v}" for k, v in seen.items())
    no_proxy = seen.get("NO_PROXY", "")
    if (seen.get("HTTP_PROXY") or seen.get("HTTPS_PROXY")) and "localhost" not in no_proxy and no_proxy != "*":
        fix = "add NO_PROXY=localhost,127.0.0.1,.svc,.cluster.local (and your API server) so local traffic stays direct"
        return check(WARN, detail + "; NO_PROXY lacks localhost", fix)
    return check(PASS, detail + " (jobs: labkit job submit --http-proxy ... puts them into every pod)")


def check_kubeconfig(
    kubeconfig: str | None = None, context: str | None = None, env: Mapping[str, str] | None = None
) -> Check:
    check, env = _checker("kubeconfig", "kubernetes"), os.environ if env is None else env
    try:
        source = find_kubeconfig(kubeconfig, context, env)
    except ConfigError as exc:  # its own fix (a folder: the file inside it), not repeated inside the detail
        return check(WARN, f"{exc.field}: {exc.problem}", exc.fix)
    except LabkitError as exc:
        return check(WARN, str(exc), "fix the kubeconfig or point KUBECONFIG at a valid one")
    if source is None:
        fix = "to use a cluster: set KUBECONFIG or create ~/.kube/config (kind create cluster writes one)"
        return check(WARN, "no cluster configured: the local backend runs everything on this machine", fix)
    return check(PASS, source.describe())


def check_api_server(kubeconfig: str | None = None, context: str | None = None, timeout: float = 2.0) -> Check:
    check = _checker("Kubernetes API server", "kubernetes")
    try:
        if find_kubeconfig(kubeconfig, context) is None:
            return check(WARN, "skipped: no cluster configured", "see the kubeconfig check")
        probe = probe_api_server(kubeconfig, context, timeout=timeout)
    except LabkitError as exc:
        return check(WARN, f"skipped: {exc}", "see the kubeconfig check")
    if not probe.reachable:
        fix = "start the cluster (kind/minikube), connect the VPN, or switch context (kubectl config use-context NAME)"
        return check(WARN, f"{probe.server} unreachable ({probe.error}, {probe.elapsed_s:.1f} s)", fix)
    if probe.status in (401, 403):
        fix = "refresh the credentials in the kubeconfig (kubectl get nodes should work)"
        return check(WARN, f"{probe.server} answered but refused the credentials ({probe.error})", fix)
    answer = f"{probe.error} for /version" if probe.status else f"Kubernetes {probe.version}"
    return check(PASS, f"{probe.server} answers, {answer} ({probe.elapsed_s:.2f} s)")


def validate_check_options(
    timeout: float, kubeconfig: str | None = None, *, fields=("api_timeout_s", "kubeconfig")
) -> None:
    """Notebook 00 parameters / CLI flags (`fields` names them as the caller does), checked before anything runs."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3:
        fix = "use a short timeout such as 2.0: the check must not hang on a dead cluster"
        raise ConfigError(fields[0], f"{timeout!r} is not a number of seconds in (0, 3]", fix)
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        fix = "pass an existing kubeconfig file, or leave it empty to use $KUBECONFIG or ~/.kube/config"
        raise ConfigError(fields[1], f"{kubeconfig} does not exist", fix)


def run_checks(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout: float = 2.0,
    env: Mapping[str, str] | None = None,
) -> CheckReport:
    """Every check, in a fixed order. A check that crashes becomes a WARN naming the crash, never a traceback."""
    validate_check_options(timeout, kubeconfig)
    env, report, torch_info = dict(os.environ if env is None else env), CheckReport(), torch_build()
    meminfo = Path("/proc/meminfo")

    def passed(name: str) -> bool:
        return any(c.name == name and c.status == PASS for c in report)

    def found(accelerator: str) -> bool:  # passed, and not as the kind this machine does not use
        return any(c.name == accelerator and c.status == PASS and c.applies for c in report)

    def ops() -> Check:
        try:
            op_report = deepspeed_op_report() if passed("DeepSpeed") else None
        except Exception:
            op_report = None
        return check_deepspeed_ops(op_report, torch_info)

    arch_list_gpu = torch_info.gpu_build or bool(torch_info.error)  # unknown torch: judge it as a GPU machine would
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("Python", check_python),
        ("torch", lambda: check_torch(torch_info)),
        (HPU, lambda: check_hpu(torch_info.cuda_available)),
        ("CUDA", lambda: check_cuda(torch_info, found(HPU))),
        ("NCCL", lambda: check_nccl(torch_info)),
        ("DeepSpeed", check_deepspeed),
        ("DeepSpeed ops (JIT)", ops),
        ("TORCH_CUDA_ARCH_LIST", lambda: check_torch_cuda_arch_list(env.get("TORCH_CUDA_ARCH_LIST"), arch_list_gpu)),
        *[(dist, lambda d=dist: check_package(d)) for dist in PACKAGES if dist != "mpi4py"],
        ("CPU", lambda: check_cpu(env=env, bf16=torch_info.cpu_bf16)),
        ("/dev/shm", check_shm),
        ("huge pages", lambda: check_hugepages(meminfo.read_text() if meminfo.exists() else "", found(HPU))),
        ("NCCL_DEBUG", lambda: check_nccl_debug(env)),
        ("NCCL_SOCKET_IFNAME", lambda: check_nccl_socket_ifname(env, network_interfaces())),
        ("NCCL_IB_DISABLE", lambda: check_nccl_ib_disable(env, infiniband_devices())),
        ("proxy", lambda: check_proxy(env)),
        ("mpirun", lambda: check_mpirun()),  # looked up when run: tests replace it
        ("mpi4py", lambda: check_package("mpi4py")),
        ("kubeconfig", lambda: check_kubeconfig(kubeconfig, context, env)),
        ("Kubernetes API server", lambda: check_api_server(kubeconfig, context, timeout)),
    ]
    for name, step in steps:
        try:
            report.append(step())
        except Exception as exc:  # a bug in one check must not hide the others
            crash = f"the check itself crashed: {type(exc).__name__}: {exc}"
            report.append(Check(name, WARN, crash, "report this as a labkit bug", "labkit"))
    return report

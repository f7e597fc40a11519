"""The environment checks' model: a Check(name, status, detail, fix, group), a CheckReport that renders them (text,
HTML, JSON) and knows the exit code, the facts several checks share (torch's build, installed versions, network
interfaces), and `quiet` for the noisy DeepSpeed probes. The checks themselves: labkit.env."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.procs import silenced_fds
from labkit.tabular import html_table, text_table

PASS, WARN, FAIL = "pass", "warn", "fail"
STATUSES = (PASS, WARN, FAIL)
CHECK_COLUMNS = ("group", "name", "status", "detail", "fix")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str = ""
    group: str = "general"
    applies: bool = True  # False: passed only because this machine uses the other accelerator (nothing was found)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Check {self.name!r}: status must be one of {STATUSES}, not {self.status!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _checker(name: str, group: str) -> Callable[..., Check]:
    """Check(name, status, detail, fix, group) with the name and group of one check filled in."""
    return lambda status, detail, fix="": Check(name, status, detail, fix, group)


class CheckReport(list):
    """A list of Checks that renders as a table (text, HTML) and JSON and knows the exit code."""

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self) for s in STATUSES}

    @property
    def failures(self) -> list[Check]:
        return [c for c in self if c.status == FAIL]

    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def to_dicts(self) -> list[dict[str, str]]:
        return [c.to_dict() for c in self]

    def to_json(self) -> str:
        return json.dumps({"summary": self.counts(), "checks": self.to_dicts()}, indent=2)

    def text(self) -> str:
        counts, table = self.counts(), text_table(self.to_dicts(), CHECK_COLUMNS[:4], max_width=90)
        fixes = [f"  {c.status.upper():4}  {c.name}: {c.fix}" for c in self if c.status != PASS and c.fix]
        summary = f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed"
        return "\n".join([table, "", summary] + (["", "To fix:", *fixes] if fixes else []))

    __repr__ = text  # the notebook's plain-text output: the table, not a list of dataclasses

    def verdict(self, device: str) -> str:
        """Notebook 00's closing sentence (Markdown): ready or not, the counts, torch and DeepSpeed, what to fix."""
        counts, by_name, failed = self.counts(), {c.name: c for c in self}, [c.name for c in self.failures]
        found = "".join(f"{name}: {by_name[name].detail}. " for name in ("torch", "DeepSpeed") if name in by_name)
        head = "is ready for the labs" if not failed else "cannot run the labs yet"
        then = f"Fix first: {', '.join(failed)}." if failed else "Nothing to fix."
        if counts[WARN] and not failed:
            then = (
                f"The {counts[WARN]} warning(s) name what this machine lacks or could tune; none blocks the labs here."
            )
        return (f"This machine **{head}**: {counts[PASS]} of {len(self)} checks passed, {counts[WARN]} warned, "
                f"{counts[FAIL]} failed. {found}Later chapters will run on **{device}**. {then}")  # fmt: skip

    def _repr_html_(self) -> str:
        return html_table(self.to_dicts(), CHECK_COLUMNS)


@contextlib.contextmanager
def quiet(python_streams: bool = True):
    """Silence DeepSpeed: its logger, warnings, and the file descriptors (compiler probes run as subprocesses);
    python_streams also print(). Leave it False for the first `import deepspeed`: its log handler keeps the stream
    current at import (a StringIO here would swallow every later DeepSpeed log line of the process)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with silenced_fds(), warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            if python_streams:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield
    finally:
        logging.disable(disabled)


@dataclass(frozen=True)
class TorchBuild:
    """What the installed torch is and sees (a fact several checks share). `error` is set when torch is missing or
    fails to import."""

    version: str | None = None
    cuda: str | None = None  # torch.version.cuda ("13.0") for CUDA builds
    hip: str | None = None  # ROCm builds
    cuda_available: bool = False
    cuda_devices: tuple[str, ...] = ()
    nccl: str | None = None  # "2.27.7"
    error: str | None = None
    # Whether torch's CPU kernels (oneDNN) do bf16 here: without it (a CPU with no AVX-512, e.g. AVX2 only) a bf16
    # matmul falls back to a plain loop, hundreds of times slower than fp32. None: not known (no torch).
    cpu_bf16: bool | None = None

    @property
    def gpu_build(self) -> bool:
        return bool(self.cuda or self.hip)

    def describe(self) -> str:
        return f"CUDA {self.cuda} build" if self.cuda else (f"ROCm {self.hip} build" if self.hip else "CPU build")


# The ZeRO probe's micro-batch x sequence on a CPU without native bf16 (zero.make_plan; `labkit check` says so):
# model states, its lesson, do not depend on the batch, and 8x fewer tokens made a step 3.7x faster (docs/benchmarks.md)
SLOW_BF16_CPU_BATCH = (1, 4)


def native_cpu_bf16() -> bool | None:
    """TorchBuild.cpu_bf16: whether torch's CPU kernels compute bf16 natively here; None where torch cannot say."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # what torch's own bf16 CPU paths ask
    except Exception:  # no torch, or a build without oneDNN
        return None


def torch_build() -> TorchBuild:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising OSError on a missing library
        return TorchBuild(error=f"{type(exc).__name__}: {exc}")
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    cpu_bf16 = native_cpu_bf16()
    if not ((cuda or hip) and torch.cuda.is_available()):
        return TorchBuild(torch.__version__, cuda, hip, cpu_bf16=cpu_bf16)
    devices = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        nccl = ".".join(str(p) for p in torch.cuda.nccl.version())
    except Exception:  # builds without NCCL
        nccl = None
    return TorchBuild(torch.__version__, cuda, hip, True, devices, nccl, cpu_bf16=cpu_bf16)


def dist_version(name: str) -> str | None:
    """Installed version of a distribution without importing it (cheap)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def major_minor(version: str | None) -> tuple[int, ...]:
    """(major, minor) of a version string: "2.8.0a0+gitabc" -> (2, 8); () when it has no number."""
    return tuple(int(part) for part in re.findall(r"\d+", version or "")[:2])


def network_interfaces(sys_class_net: str | Path = "/sys/class/net") -> list[str]:
    path = Path(sys_class_net)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else sorted(n for _, n in socket.if_nameindex())


def infiniband_devices(root: str | Path = "/sys/class/infiniband") -> list[str]:
    return sorted(p.name for p in Path(root).iterdir()) if Path(root).is_dir() else []

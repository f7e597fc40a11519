"""This host's CPUs and memory as the kernel reports them: /proc/meminfo, CPU lists and NUMA nodes under /sys, cgroup v2
limits, the affinity mask. Pure readers, tested on recorded files; `devices.cpu_device` puts them together."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from labkit.errors import ParseError


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
        if len(parts) > 1 and parts[1] != "kB":
            raise ParseError(f"/proc/meminfo line {number}: unknown unit {parts[1]!r} in {line!r}")
        values[name.strip()] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return values


def parse_cpulist(text: str) -> list[int]:
    """Kernel CPU list syntax ('0-3,8,10-11') -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
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
        lines = (path / "meminfo").read_text().splitlines() if (path / "meminfo").exists() else []
        # lines look like "Node 0 MemTotal:  24573952 kB"
        kb = next((int(line.split("MemTotal:")[1].split()[0]) for line in lines if "MemTotal:" in line), None)
        nodes.append({"node": int(path.name[4:]), "cpus": cpus, "mem_total": None if kb is None else kb * 1024})
    return nodes


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs a cgroup v2 quota allows ('200000 100000' -> 2.0); None when unlimited or not cgroup v2."""
    try:
        quota, period = (Path(root) / "cpu.max").read_text().split()[:2]
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


def memory_available(proc: str | Path = "/proc", cgroup_root: str | Path = "/sys/fs/cgroup") -> int | None:
    """Bytes new processes can still take: MemAvailable, or less where a cgroup v2 limit (a container's) leaves less;
    None where /proc/meminfo cannot tell."""
    try:
        available = parse_meminfo((Path(proc) / "meminfo").read_text()).get("MemAvailable")
    except OSError:
        return None
    limit, current = cgroup_memory(cgroup_root)
    if available is not None and limit is not None and current is not None:
        available = min(available, max(0, limit - current))
    return available


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

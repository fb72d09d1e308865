"""How many CPUs this process may really use: the default worker count.

A container limited to two CPUs on a 64-core host sees 64 in ``os.cpu_count()``;
its real share is the CFS quota of its cgroup.  In order: the cgroup v2
``cpu.max`` quota, the cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
then the CPUs the scheduler lets this process run on (``sched_getaffinity``,
which ``taskset`` and cpusets narrow), the smallest of those that exist.
Every reader takes the filesystem root as an argument so that tests can feed
fake cgroup trees; only `available_cpus()` looks at the real one.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuCount", "available_cpus", "cgroup_quota"]


@dataclass(frozen=True, slots=True)
class CpuCount:
    """A CPU count and where it came from, for the startup log line and --print-config."""

    count: int
    reason: str


def available_cpus(root: Path = Path("/")) -> CpuCount:
    """The CPUs this process may use: the cgroup quota, capped by the affinity mask."""
    try:
        affinity = len(os.sched_getaffinity(0))
        reason = "CPU affinity"
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
        reason = "CPU count"
    if root == Path("/"):
        return _real(affinity, reason)
    return _combine(cgroup_quota(root), affinity, reason)


@functools.lru_cache(maxsize=1)
def _real(affinity: int, reason: str) -> CpuCount:
    return _combine(cgroup_quota(Path("/")), affinity, reason)


def _combine(quota: tuple[float, str] | None, affinity: int, reason: str) -> CpuCount:
    if quota is not None:
        cpus = max(1, math.ceil(quota[0]))
        if cpus <= affinity:
            return CpuCount(cpus, f"{quota[1]} quota of {quota[0]:g} CPUs")
    return CpuCount(max(1, affinity), reason)


def cgroup_quota(root: Path) -> tuple[float, str] | None:
    """The CPU quota of this process's cgroup (in CPUs) and its kind, or None if unlimited.

    Every level from the process's own cgroup up to the mount's root is read and
    the smallest quota wins, as the kernel enforces all of them.
    """
    entries = _self_cgroups(root)
    for hierarchy, controllers, path in entries:
        if hierarchy == "0" and not controllers:
            quota = _smallest(root / "sys/fs/cgroup", path, _v2_quota)
            if quota is not None:
                return quota, "cgroup v2 cpu.max"
    for _hierarchy, controllers, path in entries:
        if "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                base = root / "sys/fs/cgroup" / mount
                if base.is_dir():
                    quota = _smallest(base, path, _v1_quota)
                    if quota is not None:
                        return quota, "cgroup v1 cpu.cfs_quota_us"
                    break
    # No /proc/self/cgroup (or no match): a namespaced container sees its own cgroup at the root.
    if not entries:
        quota = _v2_quota(root / "sys/fs/cgroup")
        if quota is not None:
            return quota, "cgroup v2 cpu.max"
    return None


def _self_cgroups(root: Path) -> list[tuple[str, str, str]]:
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def _smallest(base: Path, path: str, read: Callable[[Path], float | None]) -> float | None:
    """The smallest quota from base/path up to base (a missing directory counts as unlimited)."""
    best: float | None = None
    relative = Path(path.strip("/")) if path.strip("/") else Path()
    levels = [relative, *relative.parents] if relative != Path() else [Path()]
    for level in levels:
        quota = read(base / level)
        if quota is not None and (best is None or quota < best):
            best = quota
    return best


def _v2_quota(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None

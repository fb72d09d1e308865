"""The default worker count: cgroup v2 and v1 CPU quotas from fake cgroup trees, then affinity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsgipool.cpus import available_cpus, cgroup_quota

AFFINITY = len(os.sched_getaffinity(0))


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cgroup_v2_quota(tmp_path):
    root = tree(
        tmp_path,
        {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "150000 100000\n"},
    )
    assert cgroup_quota(root) == (1.5, "cgroup v2 cpu.max")
    count = available_cpus(root)
    assert count.count == min(2, AFFINITY)


def test_cgroup_v2_unlimited_falls_back_to_affinity(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_quota(root) is None
    assert available_cpus(root).count == AFFINITY
    assert available_cpus(root).reason == "CPU affinity"


def test_cgroup_v2_smallest_level_wins(tmp_path):
    # systemd slices: the service has no limit of its own, its slice has 1 CPU.
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/system.slice/app.service\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/system.slice/cpu.max": "100000 100000\n",
            "sys/fs/cgroup/system.slice/app.service/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_quota(root) == (1.0, "cgroup v2 cpu.max")
    assert available_cpus(root).count == 1
    assert "cgroup v2 cpu.max quota of 1 CPUs" in available_cpus(root).reason


def test_cgroup_v2_namespaced_container(tmp_path):
    # Inside a container the process's cgroup is "/", mounted at /sys/fs/cgroup.
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "50000 100000"})
    assert available_cpus(root).count == 1  # half a CPU still needs one worker


def test_cgroup_v1_quota(tmp_path):
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_quota(root) == (1.0, "cgroup v1 cpu.cfs_quota_us")
    assert available_cpus(root).count == 1


def test_cgroup_v1_namespaced_path_missing_reads_the_mount_root(tmp_path):
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "1:cpu:/kubepods/pod1/c1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_quota(root) == (1.0, "cgroup v1 cpu.cfs_quota_us")


def test_cgroup_v1_unlimited(tmp_path):
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "1:cpu:/\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_quota(root) is None


@pytest.mark.parametrize("text", ["", "garbage", "0 100000", "100000 0", "1 2 3"])
def test_malformed_cpu_max_is_no_limit(tmp_path, text):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": text})
    assert cgroup_quota(root) is None


def test_no_cgroup_files_at_all(tmp_path):
    assert cgroup_quota(tmp_path) is None
    assert available_cpus(tmp_path).count == AFFINITY


def test_quota_above_affinity_is_capped_by_affinity(tmp_path):
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": f"{(AFFINITY + 4) * 100000} 100000",
        },
    )
    assert available_cpus(root).count == AFFINITY


def test_real_machine_is_consistent():
    """The real /sys and /proc: a count between 1 and the affinity, with a reason."""
    count = available_cpus()
    assert 1 <= count.count <= AFFINITY
    quota = cgroup_quota(Path("/"))
    if quota is None:
        assert count.count == AFFINITY
    assert count.reason

"""The CPU quota and memory limit are the tightest on the process's own cgroup path, v1 or v2.

The trees are built in a temporary folder laid out as the kernel lays them out; the live
cgroup v1 case runs in tests/integration/test_profile_under_quota.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeedge.stage_server.device_info import cpu_quota_cores, memory_capacity_mb


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_the_tightest_quota_on_the_path_wins(tmp_path):
    cpu = tmp_path / "cpu"
    _write(cpu / "cpu.cfs_quota_us", "-1\n")
    _write(cpu / "cpu.cfs_period_us", "100000\n")
    _write(cpu / "docker" / "cpu.cfs_quota_us", "300000\n")   # 3 cores for all containers
    _write(cpu / "docker" / "cpu.cfs_period_us", "100000\n")
    _write(cpu / "docker" / "c1" / "cpu.cfs_quota_us", "50000\n")  # docker --cpus 0.5
    _write(cpu / "docker" / "c1" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "self_cgroup", "4:memory:/docker/c1\n2:cpu,cpuacct:/docker/c1\n0::/\n")
    _write(tmp_path / "mounts", f"cgroup {cpu} cgroup rw,relatime,cpu,cpuacct 0 0\n")
    assert cpu_quota_cores(tmp_path / "self_cgroup", tmp_path / "mounts") == 0.5


def test_v2_reads_cpu_max_and_max_is_no_quota(tmp_path):
    root = tmp_path / "unified"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "pe" / "cpu.max", "max 100000\n")
    _write(root / "pe" / "dev" / "cpu.max", "1000 25000\n")
    _write(tmp_path / "self_cgroup", "0::/pe/dev\n")
    _write(tmp_path / "mounts", f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n")
    assert cpu_quota_cores(tmp_path / "self_cgroup", tmp_path / "mounts") == 0.04
    _write(tmp_path / "self_cgroup", "0::/pe\n")
    assert cpu_quota_cores(tmp_path / "self_cgroup", tmp_path / "mounts") == 0.0


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cpu_quota_cores(tmp_path / "absent", tmp_path / "absent") == 0.0


def test_memory_limit_of_the_own_cgroup_not_only_the_root(tmp_path):
    mem = tmp_path / "memory"
    _write(mem / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    _write(mem / "pe-dev" / "memory.limit_in_bytes", f"{512 * 2**20}\n")
    _write(tmp_path / "self_cgroup", "4:memory:/pe-dev\n1:cpu:/\n")
    _write(tmp_path / "mounts", f"cgroup {mem} cgroup rw,relatime,memory 0 0\n")
    assert memory_capacity_mb(tmp_path / "self_cgroup", tmp_path / "mounts") == 512
    _write(tmp_path / "self_cgroup", "4:memory:/\n")
    ram_mb = memory_capacity_mb(tmp_path / "absent", tmp_path / "absent")
    assert 512 < memory_capacity_mb(tmp_path / "self_cgroup", tmp_path / "mounts") == ram_mb


def test_memory_v2_max_is_no_limit(tmp_path):
    root = tmp_path / "unified"
    _write(root / "svc" / "memory.max", "max\n")
    _write(root / "svc" / "stage" / "memory.max", f"{300 * 2**20}\n")
    _write(tmp_path / "self_cgroup", "0::/svc/stage\n")
    _write(tmp_path / "mounts", f"cgroup2 {root} cgroup2 rw 0 0\n")
    assert memory_capacity_mb(tmp_path / "self_cgroup", tmp_path / "mounts") == 300

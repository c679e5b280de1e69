"""Smoke run of the testbed benchmark report (`make bench`, bench/run_report.py).

The same code path as the full report, made small: `--quick` (tiny models, few microbatches)
and `--max-devices 2` (two emulated devices per testbed). It checks the machinery -- every
section runs and reports numbers, results.json / REPORT.md (and the PNGs when matplotlib is
installed) are written, the testbeds are torn down -- never the numbers themselves.
Needs what the testbed needs (root, iproute2, cgroups); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeedge.coordinator.testbed import down, leftovers, problems

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "bench" / "run_report.py"
SECTIONS = ("scaling", "predictions", "heterogeneous", "slow_links", "transport")
RUN_TIMEOUT_S = 540  # ~1 minute on a loaded 2-core host; generous for a slower one

_PROBLEMS = problems()
needs_root = pytest.mark.skipif(bool(_PROBLEMS), reason=_PROBLEMS[0] if _PROBLEMS else "")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    nets = [ipaddress.IPv4Interface(w[w.index("inet") + 1]).network
            for w in (line.split() for line in out.splitlines()) if "inet" in w]
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        try:
            nets.append(ipaddress.IPv4Network(line.split()[0], strict=False))
        except (IndexError, ValueError):
            continue  # "default" and the like
    return nets


def _names_and_subnets() -> tuple[str, str]:
    """A testbed prefix and a free /23 of our own, so a concurrent `make bench` or another
    run of this test (fixed names would collide) does not break this one."""
    pid = os.getpid()
    prefix = "s" + "".join("0123456789abcdefghijklmnopqrstuvwxyz"[pid // 36 ** k % 36]
                           for k in (1, 0))
    used = _used_networks()
    for k in range(128):
        net = ipaddress.IPv4Network(f"10.93.{2 * ((pid + k) % 128)}.0/23")
        if not any(net.overlaps(u) for u in used):
            return prefix, str(net)
    pytest.skip("no free /23 in 10.93.0.0/16 for the smoke testbeds")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run the report; on timeout interrupt it first so it tears its testbeds down."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"bench/run_report.py took over {RUN_TIMEOUT_S} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _numbers(row: dict, *keys: str) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, \
            (key, value, row)


@needs_root
@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_quick_two_device_report_runs_every_section_and_cleans_up(tmp_path):
    prefix, subnets = _names_and_subnets()
    out_dir = tmp_path / "report"
    cmd = [sys.executable, str(REPORT), "--quick", "--max-devices", "2",
           "--testbed-prefix", prefix, "--subnets", subnets, "--out", str(out_dir)]
    start = time.monotonic()
    try:
        run = _run(cmd)
    finally:
        left = {name: leftovers(name, tmp_path / "state") for name in
                (f"{prefix}bench", f"{prefix}het")}
        for name, found in left.items():
            if not found.empty():  # clean up for the next run, then fail below
                down(name, tmp_path / "state")
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stdout[-6000:]
    assert all(found.empty() for found in left.values()), \
        {name: found.describe() for name, found in left.items()}
    print(f"smoke report: {elapsed:.0f} s")

    results = json.loads((out_dir / "results.json").read_text())
    assert results["quick"] is True and results["settings"]["max_devices"] == 2
    assert list(results["sections"]) == list(SECTIONS)
    for name, section in results["sections"].items():
        assert section["status"] == "ok", (name, section.get("reason"))
        assert not section.get("skipped_parts"), (name, section["skipped_parts"])
        assert section["rows"], name
        devices = section["testbed"]["devices"]
        assert sum(int(d.get("count", 1)) for d in devices) <= 2, (name, devices)
        assert section["testbed"]["name"].startswith(prefix)

    scaling = results["sections"]["scaling"]["rows"]
    assert sorted((r["model"], r["devices"]) for r in scaling) == sorted(
        (m, n) for m in ("pipeedge/tiny-vit", "pipeedge/tiny-bert") for n in (1, 2))
    for r in scaling:
        _numbers(r, "items_per_s", "wall_items_per_s", "latency_p50_s", "speedup", "deploy_s",
                 "rss_mb")
        assert len(r["stage_cores"]) == r["devices"]
        assert r["microbatches"] >= 3 and r["spread"] >= 0 and r["in_flight"] == 2 * r["devices"] + 2
    # the last model streams with `pipeedge-coord serve` watching: its CPU, no re-plan
    served = [r for r in scaling if r["model"] == "pipeedge/tiny-bert"]
    assert all(r["coordinator_cores"] >= 0 and r["replans"] == 0 for r in served), served
    assert "narrow" in next(r for r in scaling if r["model"] == "pipeedge/tiny-vit"
                            and r["devices"] == 2)
    hops = results["sections"]["scaling"]["hops"]
    assert [h["devices"] for h in hops] == [1, 2] and all(h["p50_ms"] > 0 for h in hops)

    predictions = results["sections"]["predictions"]["rows"]
    assert [r["devices_offered"] for r in predictions] == [1, 2]
    for r in predictions:
        _numbers(r, "items_per_s", "predicted_items_per_s", "ratio")
        assert 1 <= r["devices_used"] <= r["devices_offered"]

    hetero = results["sections"]["heterogeneous"]
    assert [r["split"] for r in hetero["rows"]] == [
        "ours (scheduler)", "even", "memory-proportional", "compute-proportional (PipeDream)"]
    for r in hetero["rows"]:
        _numbers(r, "items_per_s", "vs_ours", "predicted_items_per_s", "ratio")
    assert [r["devices"] for r in hetero["solve"]] == [4, 8, 16, 32]
    report = (out_dir / "REPORT.md").read_text()
    assert "## Cost growth" in report and "coordinator cores" in report

    links = results["sections"]["slow_links"]["rows"]
    assert {(r["link_mbps"], r["encoding"]) for r in links} == {
        (1000.0, "float32"), *((bw, e) for bw in (20.0, 5.0)
                               for e in ("float32", "float16", "uniform:8"))}
    for r in links:
        _numbers(r, "items_per_s", "cut_bytes_per_microbatch")
        assert math.isfinite(r["max_abs_logit_error"])

    transport = results["sections"]["transport"]["rows"]
    assert [(r["where"], r["stages"]) for r in transport] == [
        ("loopback", 1), ("loopback", 2), ("testbed", 1), ("testbed", 2)]
    for r in transport:
        _numbers(r, "p50_ms", "p90_ms")
        assert math.isfinite(r["per_extra_hop_ms"])

    report = (out_dir / "REPORT.md").read_text()
    assert "Quick run" in report
    for section in results["sections"].values():
        assert f"## {section['title']}" in report
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    if importlib.util.find_spec("matplotlib"):
        assert pngs == sorted(f"{name}.png" for name in SECTIONS)
        for name in pngs:
            assert f"]({name})" in report and (out_dir / name).stat().st_size > 0
    else:
        assert pngs == [] and "no figures" in run.stdout


def test_max_devices_is_checked_before_anything_runs(tmp_path):
    run = subprocess.run([sys.executable, str(REPORT), "--max-devices", "1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         check=False, timeout=120)
    assert run.returncode == 2 and "--max-devices" in run.stderr
    assert not (tmp_path / "results.json").exists()

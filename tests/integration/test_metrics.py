"""Monitoring: Prometheus endpoints of real stage processes, rates and bottleneck from Status
polls, energy (fake RAPL tree: exact joules, wraparound; none: "not available")."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from click.testing import CliRunner

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import InvalidInputError, PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.cli import main
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.monitor import (
    EnergyProbe,
    Poll,
    StageRow,
    StageTracker,
    find_bottleneck,
    render_snapshot,
    summarize,
)
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.energy import RaplMeter, open_meter
from pipeedge.partition import parse_partition
from pipeedge.records import StageInfo

prom_parser = pytest.importorskip("prometheus_client.parser")

TINY = "pipeedge/tiny-vit"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_rapl(root: Path, energy_uj: int = 1_000_000, max_uj: int = 10_000_000) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # core subzone: inside the package, must not be added again
    sub.mkdir()
    (sub / "name").write_text("core\n")
    (sub / "energy_uj").write_text("999999\n")
    (sub / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone / "energy_uj"


def _deploy(cluster, partition, microbatch=4):
    dep = load_deployment(cluster.hosts_file(TINY, partition=partition, microbatch=microbatch))
    ranges = parse_partition(dep.partition, models.model_info(TINY).num_layers)
    stages = [deploy_mod.PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    return deploy_mod.deploy(dep, stages, progress=False)


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in prom_parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def rapl_cluster(tmp_path_factory):
    """Two stages with /metrics on, both reading one fake RAPL tree (one machine)."""
    work = tmp_path_factory.mktemp("metrics")
    energy_file = _fake_rapl(work / "powercap")
    env = {"PIPEEDGE_ENERGY": "rapl", "PIPEEDGE_POWERCAP_ROOT": str(work / "powercap")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = LocalCluster(0, threads=1, workdir=work)
    ports = []
    try:
        for i in range(2):
            ports.append(_free_port())
            cluster.extra_args = ("--metrics-port", str(ports[-1]), "--log-format", "json")
            cluster.stages.append(cluster.start_stage(f"stage{i}"))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield cluster, ports, energy_file
    cluster.stop()


def test_metrics_endpoint_counts_what_was_sent(rapl_cluster):
    cluster, ports, energy_file = rapl_cluster
    pipeline = _deploy(cluster, "1,3,4,12")
    info = models.model_info(TINY)
    sizes = [3, 1, 4, 2, 3]
    energy_file.write_text("1000000\n")
    with PipelineClient(pipeline.entry) as client:
        list(client.infer_many([models.example_inputs(info, b, seed=i)
                                for i, b in enumerate(sizes)], window=2))
        with pytest.raises(InvalidInputError):
            client.infer({"pixel_values": torch.randn(2, 3, 17, 17)})
    energy_file.write_text("3500000\n")  # the machine used 2.5 J meanwhile
    first, last = _scrape(ports[0]), _scrape(ports[1])
    for m in (first, last):
        assert m[("pipeedge_stage_items_total", ())] == sum(sizes)
        assert m[("pipeedge_stage_microbatches_total", ())] == len(sizes)
        assert m[("pipeedge_stage_compute_seconds_count", ())] == len(sizes)
        assert m[("pipeedge_stage_compute_seconds_sum", ())] > 0
        assert m[("pipeedge_stage_decode_seconds_count", ())] == len(sizes)
        assert m[("pipeedge_stage_encode_seconds_count", ())] == len(sizes)
        assert m[("pipeedge_stage_queue_depth", (("queue", "in"),))] == 0
        assert m[("pipeedge_stage_in_flight_requests", ())] == 0
        assert m[("pipeedge_stage_energy_available", ())] == 1
    # What stage0 sent is what stage1 received; the last stage sends nothing downstream.
    assert first[("pipeedge_stage_bytes_sent_total", ())] > 0
    assert first[("pipeedge_stage_bytes_sent_total", ())] == \
        last[("pipeedge_stage_bytes_received_total", ())]
    assert last[("pipeedge_stage_bytes_sent_total", ())] == 0
    assert first[("pipeedge_stage_send_seconds_count", ())] == len(sizes)
    assert first[("pipeedge_stage_errors_total", (("code", "INVALID_ARGUMENT"),))] == 1
    assert ("pipeedge_stage_errors_total", (("code", "INVALID_ARGUMENT"),)) not in last
    info_labels = [dict(k[1]) for k in first if k[0] == "pipeedge_stage_info"]
    assert len(info_labels) == 1 and info_labels[0]["layers"] == "1-3"
    assert info_labels[0]["model"] == TINY and info_labels[0]["stage"] == "stage0"
    # Same numbers through Status; energy since assignment = the fake counter's 2.5 J.
    ctl = StageControl("s0", pipeline.entry)
    st = ctl.status()
    ctl.close()
    assert st.items_processed == sum(sizes) and st.bytes_sent == \
        first[("pipeedge_stage_bytes_sent_total", ())]
    assert st.assigned_seconds > 0
    assert st.HasField("energy_joules") and st.energy_joules == pytest.approx(2.5)
    assert st.energy_source == "rapl:package-0"

    # Logs: JSON, one line per event (assignment with its fields), nothing per microbatch.
    import json

    entries = [json.loads(ln) for ln in cluster.stages[0].log_path.read_text().splitlines()]
    assigns = [e for e in entries if e.get("event") == "assign"]
    assert assigns and assigns[-1]["layers"] == "1-3" and assigns[-1]["model"] == TINY
    assert len(entries) < 10, entries


def test_status_watch_rates_bottleneck_and_energy(rapl_cluster):
    cluster, _ports, energy_file = rapl_cluster
    # stage1 holds 11 of 12 sub-layers and the head: it is the slow one.
    pipeline = _deploy(cluster, "1,1,2,12", microbatch=8)
    pfile = cluster.workdir / "pipeline.json"
    pipeline.save(pfile)
    info = models.model_info(TINY)
    batch = models.example_inputs(info, 8)
    stop = threading.Event()
    sent = []

    def batches():  # one steady stream: the pipeline never drains between polls
        while not stop.is_set():
            yield batch

    def traffic():
        with PipelineClient(pipeline.entry) as client:
            for _ in client.infer_many(batches(), window=8):
                sent.append(8)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        result = CliRunner().invoke(main, ["status", "--pipeline", str(pfile), "--watch", "0.4",
                                           "--count", "4", "--window", "3"],
                                    catch_exceptions=False)
    finally:
        stop.set()
        worker.join(timeout=30)
    out = result.output
    assert result.exit_code == 0, out
    assert out.count("window 3 polls") == 4, out        # four refreshes of the table
    last_table = out.split("window 3 polls")[-1]
    lines = {ln.split()[0]: ln for ln in last_table.splitlines() if ln.startswith("stage")}
    assert "<- bottleneck" in lines["stage1"] and "<- bottleneck" not in lines["stage0"], out
    cols = lines["stage1"].split()
    inst, window, glob = (float(c) for c in cols[9:12])
    assert inst > 0 and window > 0 and glob > 0, lines["stage1"]
    assert "pipeline:" in last_table and "bottleneck stage1" in last_table
    # The fake counter did not move during the watch: 0 J/item, measured, not "not available".
    assert "energy 0 J/item" in last_table, last_table

    # Energy over an interval, each machine counted once (both stages are on 127.0.0.1).
    probe = EnergyProbe(pipeline)
    probe.start()
    energy_file.write_text(f"{int(energy_file.read_text()) + 3_000_000}\n")
    assert probe.stop() == pytest.approx(3.0)
    assert probe.source == "rapl:package-0"


def test_bench_prints_energy_or_not_available(rapl_cluster, cluster_factory, monkeypatch):
    cluster, _ports, _energy = rapl_cluster
    _deploy(cluster, "1,3,4,12").save(cluster.workdir / "pipeline.json")
    result = CliRunner().invoke(main, ["bench", "--pipeline", str(cluster.workdir /
                                                                  "pipeline.json"),
                                       "-n", "4", "-b", "2", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "J/item (rapl:package-0)" in result.output, result.output

    monkeypatch.setenv("PIPEEDGE_ENERGY", "none")
    plain = cluster_factory(1)
    pipeline = _deploy(plain, "1,12")
    pipeline.save(plain.workdir / "pipeline.json")
    result = CliRunner().invoke(main, ["bench", "--pipeline", str(plain.workdir /
                                                                  "pipeline.json"),
                                       "-n", "3", "-b", "2", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "energy: not available: no readable RAPL or EnergyMon on stage0" in result.output
    result = CliRunner().invoke(main, ["status", "--pipeline", str(plain.workdir /
                                                                   "pipeline.json")])
    assert "n/a" in result.output and "energy not available" in result.output, result.output
    ctl = StageControl("s0", pipeline.entry)
    assert not ctl.status().HasField("energy_joules")
    ctl.close()


def test_control_plane_metrics_endpoint(rapl_cluster):
    from pipeedge.coordinator.control_plane import ControlPlane
    from pipeedge.coordinator.metrics import serve_control_plane_metrics

    cluster, _ports, _energy = rapl_cluster
    dep = load_deployment(cluster.hosts_file(TINY, partition="1,6,7,12", microbatch=4))
    plane = ControlPlane(dep, pipeline_path=cluster.workdir / "served.json")
    pipeline = plane.deploy()
    endpoint = serve_control_plane_metrics(plane, host="127.0.0.1", port=0)
    try:
        with PipelineClient(pipeline.entry) as client:
            client.infer(models.example_inputs(models.model_info(TINY), 3))
        m = _scrape(endpoint.port)
    finally:
        endpoint.stop()
        plane.stop()
    assert m[("pipeedge_coord_pipeline_version", ())] == plane.version > 0
    assert m[("pipeedge_coord_hosts_down", ())] == 0
    assert m[("pipeedge_coord_replans_total", ())] == 0
    assert m[("pipeedge_coord_deploy_seconds_count", ())] == 1
    for name in ("stage0", "stage1"):
        assert m[("pipeedge_coord_stage_up", (("stage", name),))] == 1
        assert m[("pipeedge_coord_stage_items_total", (("stage", name),))] == 3
        assert ("pipeedge_coord_stage_energy_joules_total", (("stage", name),)) in m


# -- without processes -----------------------------------------------------------------------------
_FAKE_ENERGYMON = r"""
#include <stdint.h>
#include <string.h>
#include <stddef.h>
typedef struct energymon energymon;
struct energymon {
  int (*finit)(energymon*); uint64_t (*fread)(const energymon*); int (*ffinish)(energymon*);
  char* (*fsource)(char*, size_t); uint64_t (*finterval)(const energymon*);
  uint64_t (*fprecision)(const energymon*); int (*fexclusive)(void); void* state;
};
static uint64_t total_uj = 5000000;  /* each read: +250000 uJ, like a running counter */
static int finished = 0;
static int init(energymon* em) { em->state = &total_uj; return 0; }
static uint64_t rd(const energymon* em) { return *(uint64_t*)em->state += 250000; }
static int finish(energymon* em) { finished = 1; em->state = NULL; return 0; }
static char* source(char* buf, size_t n) { strncpy(buf, "fake-meter", n); return buf; }
static uint64_t interval(const energymon* em) { return 1000; }
static int exclusive(void) { return 0; }
int fake_finished(void) { return finished; }
int energymon_get_default(energymon* em) {
  em->finit = init; em->fread = rd; em->ffinish = finish; em->fsource = source;
  em->finterval = interval; em->fprecision = interval; em->fexclusive = exclusive;
  em->state = NULL; return 0;
}
"""


def test_energymon_library_is_read_through_ctypes(tmp_path, monkeypatch):
    """A stand-in libenergymon-default.so with energymon.h's ABI: found, read in microjoules
    from the first reading on, named, and finished on close."""
    import ctypes.util
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the stand-in EnergyMon library")
    src, lib = tmp_path / "fake.c", tmp_path / "libenergymon-default.so"
    src.write_text(_FAKE_ENERGYMON)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    monkeypatch.setattr(ctypes.util, "find_library",
                        lambda name: str(lib) if name == "energymon-default" else None)
    meter = open_meter("energymon")
    assert meter.source == "energymon:fake-meter"
    assert meter.read_joules() == pytest.approx(0.25)   # one read after the baseline
    assert meter.read_joules() == pytest.approx(0.50)
    meter.close()
    assert ctypes.CDLL(str(lib)).fake_finished() == 1
    with pytest.raises(OSError, match="closed"):
        meter.read_joules()


def test_rapl_meter_sums_packages_and_undoes_wraparound(tmp_path):
    energy = _fake_rapl(tmp_path, energy_uj=9_000_000, max_uj=9_999_999)
    dram = tmp_path / "intel-rapl:0:1"
    dram.mkdir()
    (dram / "name").write_text("dram\n")
    (dram / "energy_uj").write_text("0\n")
    (dram / "max_energy_range_uj").write_text("100000000\n")
    meter = RaplMeter.open(tmp_path, sample_interval_s=3600)
    assert meter.source == "rapl:package-0,dram"  # the core subzone is not added twice
    assert meter.read_joules() == 0
    energy.write_text("9500000\n")
    (dram / "energy_uj").write_text("250000\n")
    assert meter.read_joules() == pytest.approx(0.75)
    energy.write_text("499999\n")                 # wrapped: 9.5 J -> max (9.999999) -> 0.499999
    assert meter.read_joules() == pytest.approx(0.75 + 1.0)
    meter.close()
    (tmp_path / "intel-rapl:0" / "energy_uj").chmod(0o000)
    if os.geteuid() != 0:  # root reads anything; otherwise an unreadable zone means no meter
        assert RaplMeter.open(tmp_path) is None
    assert open_meter("none") is None
    assert RaplMeter.open(tmp_path / "missing") is None


def test_registries_are_per_server():
    from pipeedge.stage_server.metrics import PrometheusStageMetrics

    a, b = PrometheusStageMetrics(), PrometheusStageMetrics()
    a.computed(5, 0.01)
    b.computed(2, 0.01)
    b.error(grpc.StatusCode.UNAVAILABLE)
    assert a.registry.get_sample_value("pipeedge_stage_items_total") == 5
    assert b.registry.get_sample_value("pipeedge_stage_items_total") == 2
    assert a.registry.get_sample_value("pipeedge_stage_errors_total",
                                       {"code": "UNAVAILABLE"}) is None


def _status(items, compute, q_in=0, q_out=0, assigned_s=10.0, energy=None, aid="a"):
    st = pb.StageStatus(assigned=True, assignment_id=aid, items_processed=items,
                        compute_seconds=compute, queue_in_depth=q_in, queue_out_depth=q_out,
                        assigned_seconds=assigned_s)
    st.assignment.first_layer, st.assignment.last_layer = 1, 4
    if energy is not None:
        st.energy_joules = energy
    return st


def test_rates_from_successive_polls():
    tracker = StageTracker(window=3)
    info = StageInfo("s", "10.0.0.1:1", 1, 4)
    for t, items, compute, energy in [(0, 0, 0.0, 0.0), (1, 10, 0.5, 1.0), (2, 30, 1.5, 3.0),
                                      (3, 40, 2.0, 4.0), (4, 80, 4.0, 8.0)]:
        tracker.add(Poll(float(t), _status(items, compute, assigned_s=100.0, energy=energy)))
    row = tracker.row(info)
    assert row.items_per_s.instant == pytest.approx(40.0)           # polls 3 -> 4
    assert row.items_per_s.window == pytest.approx((80 - 10) / 3)   # window of 3: polls 1 -> 4
    assert row.items_per_s.global_ == pytest.approx(0.8)            # 80 items in 100 s
    assert row.compute_s_per_item == pytest.approx(3.5 / 70)
    assert row.busy == pytest.approx(3.5 / 3)
    assert row.joules_per_item == pytest.approx(7.0 / 70)
    tracker.add(Poll(5.0, _status(3, 0.1, aid="b")))                 # reassigned: starts over
    assert len(tracker.polls) == 1 and tracker.row(info).items_per_s.instant is None


def test_bottleneck_prefers_standing_queue_then_compute():
    def row(name, per_item, q_in=0.0, q_out=0.0):
        return StageRow(name, "h:1", "up", "1-4", _status(1, per_item), compute_s_per_item=per_item,
                        mean_q_in=q_in, mean_q_out=q_out)

    # No queues: the highest compute per item.
    assert find_bottleneck([row("a", 0.01), row("b", 0.03), row("c", 0.02)]) == (1, "compute")
    # Backpressure: a and b queue, c does not -> b is where work piles up.
    assert find_bottleneck([row("a", 0.01, 2, 2), row("b", 0.005, 2, 0), row("c", 0.02)]) == \
        (1, "queue, compute")
    # b's output is backed up too: its link (or c's intake) limits.
    assert find_bottleneck([row("a", 0.01, 2, 2), row("b", 0.005, 2, 2), row("c", 0.001)]) == \
        (1, "queue, send")
    assert find_bottleneck([StageRow("x", "h:1", "DOWN", "1-4")]) is None
    first = row("a", 0.01)
    first.status.output_bits, first.status.link_mbps = 8, 4.7
    snap_text = render_snapshot(summarize([first, row("b", 0.03)]))
    assert "<- bottleneck (compute)" in snap_text and "energy not available" in snap_text
    assert "8b @ 4.7Mbps" in snap_text.splitlines()[2] and "wire" in snap_text.splitlines()[0]

"""Issue 13's chaos test, bounded for CI: 24 concurrent clients (sync, streaming with a slow input
generator, async, generation) on two served pipelines while a seeded schedule runs every fault
kind (stage kill -9 with slow and fast restarts, SIGSTOP, coordinator kill, SIGHUP redeploy,
idle Forward streams, parked GetPipeline calls). Every result is checked against the unsplit
model (bench/chaos.py). Pass: 0 wrong, 0 lost, 0 duplicated, every error typed, longest stall
under the bound. About 2.5 minutes; `make chaos` is the long run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = 13
CLIENTS = 24
FAULT_SECONDS = 90
STALL_BOUND_S = 25


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_bounded_run(tmp_path, capsys):
    result = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seed", str(SEED),
         "--clients", str(CLIENTS), "--duration", str(FAULT_SECONDS), "--warmup", "3",
         "--settle", "5", "--drain-timeout", "40", "--stall-bound", str(STALL_BOUND_S),
         "--progress-every", "15", "--workdir", str(tmp_path / "work"), "--json", str(result)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=400)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    with capsys.disabled():
        print(f"\n[chaos] {summary}")
    assert result.exists(), f"no result file; stderr:\n{proc.stderr[-4000:]}"
    res = json.loads(result.read_text())
    o = res["outcomes"]
    why = (f"{summary}\nfailures by preceding fault: {res['failures_by_fault']}\n"
           f"first failures: {json.dumps(res['failures'][:8], indent=1)}\n"
           f"logs kept in {tmp_path / 'work'}")
    assert not res["harness_errors"], res["harness_errors"]
    assert set(res["fault_kinds_run"]) == {
        "stage_kill", "stage_fast_restart", "stage_stop", "coord_kill", "redeploy",
        "idle_streams", "watch_flood"}, res["fault_kinds_run"]
    assert set(res["by_client_kind"]) == {
        "infer", "infer_many", "infer_many_slow", "async", "generate"}, res["by_client_kind"]
    assert o["correct"] > 1000, why  # the clients did real work through the faults
    assert o["wrong"] == 0, why
    assert o["lost"] == 0, why
    assert o["duplicated"] == 0, why
    assert o["untyped"] == 0, why
    assert res["longest_stall_s"] < STALL_BOUND_S, why
    assert proc.returncode == 0 and res["passed"], why

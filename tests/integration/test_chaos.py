"""Issue 13's chaos test, bounded for CI: 24 concurrent clients (sync, streaming with a slow input
generator, async, generation) on two served pipelines while a seeded schedule runs every fault
kind (stage kill -9 with slow and fast restarts, SIGSTOP, coordinator kill, SIGHUP redeploy,
idle Forward streams, parked GetPipeline calls). Every result is checked against the unsplit
model (bench/chaos.py). Pass: 0 wrong, 0 lost, 0 duplicated, every error typed, longest stall
under the bound. About 2.5 minutes; `make chaos` is the long run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def _harness():
    spec = importlib.util.spec_from_file_location("chaos_harness", ROOT / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chaos_harness", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_ledger_settles_each_request_once_and_measures_stalls():
    """The harness' own bookkeeping: one outcome per request, late answers after the end are
    not counted twice, what is open at the end is lost, and a client's stall runs from its
    last progress (not from when its oldest request began)."""
    from pipeedge.errors import StageUnavailableError

    chaos = _harness()
    ledger = chaos.Ledger(time.monotonic())
    a = ledger.begin("c1", "infer")
    b = ledger.begin("c1", "infer")
    ledger.finish(a, "correct")
    ledger.finish(a, "wrong")  # a second settle of one request is ignored
    ledger.finish(b, "typed", exc=StageUnavailableError("down"))
    setup = ledger.begin("c2", "generate", counted=False)
    ledger.finish(setup, "correct")  # a client set-up that worked is no request
    ledger.extra("c2", "generate", "duplicated", "token after the end")
    time.sleep(0.3)
    ledger.begin("c3", "infer_many")
    time.sleep(0.2)
    ledger.close()
    ledger.finish(max(ledger.open, default=99), "correct")  # too late: already lost
    assert dict(ledger.outcomes) == {"correct": 1, "typed": 1, "duplicated": 1, "lost": 1}
    assert ledger.typed == {"StageUnavailableError": 1}
    assert 0.15 < ledger.stall[0] < 0.5 and ledger.stall[1] == "c3"

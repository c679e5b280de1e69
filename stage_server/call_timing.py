"""How long one call of a layer or a decode step takes on this device, as a stream sees it.

Where the process has a CPU to itself, the median of a few calls. Under a CFS quota (a cgroup,
`docker --cpus`, the testbed's devices) one call is luck: it fits in the period's budget or
waits out part of a period, so the time is the rate over back-to-back calls spanning seconds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from pipeedge.stage_server.device_info import cpu_quota_cores

MIN_SPAN_S = 2.0  # 20 CFS periods of 100 ms (80 of the testbed's 25 ms): within ~5% of the rate
MAX_RUNS = 10_000
FULL_CPU = 0.8    # process CPU / wall below this: the process does not have the CPU to itself


def seconds_per_call(run: Callable[[], object], repeats: int) -> float:
    """Seconds one call of `run` takes: the median of `repeats` timed calls when this process
    has the CPU to itself. When it does not (a cgroup CPU quota, e.g. `docker --cpus` or the
    testbed's devices), a single call finishes inside the period's budget or waits out most of
    a period: at 0.04 core, calls of 4 ms CPU read 3-200 ms and a median of five is anything
    in between. Then the time is the mean over back-to-back calls spanning MIN_SPAN_S, the rate
    a stream of microbatches gets. A quota is read from the cgroup files, not only inferred
    from the calls' CPU share: five calls can all land inside budget the kernel has banked
    (measured at 0.04 core: five 2.8 ms calls at full speed, right after a busy stretch)."""
    quota_bound = 0 < cpu_quota_cores() < len(os.sched_getaffinity(0))
    first = time.perf_counter()
    times, cpu = [], 0.0
    for _ in range(repeats):
        cpu_start, start = time.process_time(), time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        cpu += time.process_time() - cpu_start
    if cpu >= FULL_CPU * sum(times) and not quota_bound:
        return statistics.median(times)
    # The span counts from the first call and includes the gaps: reading the process's CPU
    # time settles its CFS account, so the throttle lands there more often than not.
    calls = len(times)
    while time.perf_counter() - first < MIN_SPAN_S and calls < MAX_RUNS:
        run()
        calls += 1
    return (time.perf_counter() - first) / calls

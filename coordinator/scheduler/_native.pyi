# Stubs for the private C++ core (built from scheduler_cpp/bindings.cpp). Use the package API.
from enum import Enum

class Objective(Enum):
    THROUGHPUT = ...
    LATENCY = ...

class Model:
    mem_MB: list[float]
    out_elems: list[int]
    in_elems: int
    def __init__(self) -> None: ...

class Device:
    name: str
    type: str
    mem_MB: float
    bw_Mbps: float
    time_s: list[float]
    frame_s: float
    wire_s_per_MB: float
    def __init__(self) -> None: ...

class Link:
    bw_Mbps: float
    latency_ms: float
    def __init__(self, bw_Mbps: float, latency_ms: float = 0.0) -> None: ...

class Links:
    host_to_host: list[Link]
    client_to_host: list[Link]
    host_to_client: list[Link]
    def __init__(self) -> None: ...

class Problem:
    model: Model
    devices: list[Device]
    links: Links
    batch_size: int
    dtype_bytes: int
    buffers_in: int
    buffers_out: int
    objective: Objective
    def __init__(self) -> None: ...

class Options:
    max_search_states: int
    max_refine_states: int
    time_limit_s: float
    threads: int
    def __init__(self) -> None: ...

class Stage:
    device: int
    first_layer: int
    last_layer: int
    compute_s: float
    wire_s: float
    transfer_s: float
    link_latency_s: float
    memory_MB: float

class SearchStats:
    device_classes: int
    count_states: int
    feasibility_checks: int
    refine_states: int

class Schedule:
    feasible: bool
    stages: list[Stage]
    input_transfer_s: float
    input_latency_s: float
    bottleneck_s: float
    latency_s: float
    exact: bool
    lower_bound: float
    gap: float
    method: str
    stats: SearchStats

class StagePlan:
    def __init__(self, device: int, begin: int, end: int) -> None: ...

def solve(problem: Problem, options: Options = ...) -> Schedule: ...
def evaluate(problem: Problem, plan: list[StagePlan]) -> Schedule: ...

"""Pipeline partition scheduler: which host runs which contiguous layers.

Exact (provably optimal) throughput or latency schedules over the seed's YAML inputs, with an
optional measured-links file. Re-exports only; see ``solver.schedule``.
"""

from .errors import SchedulingError
from .profiles import DeviceProfile, Link, ModelProfile, NetworkLinks, Objective
from .result import Schedule, Stage
from .solver import ScheduleInputs, evaluate, load_inputs, schedule, schedule_files

__all__ = [
    "DeviceProfile",
    "Link",
    "ModelProfile",
    "NetworkLinks",
    "Objective",
    "Schedule",
    "ScheduleInputs",
    "SchedulingError",
    "Stage",
    "evaluate",
    "load_inputs",
    "schedule",
    "schedule_files",
]

"""Emulated edge cluster on one Linux host: network namespaces joined by a bridge, links capped
with `tc tbf`, CPU and memory capped with cgroups, one stage server per emulated device.

`pipeedge-coord testbed up testbed.yml` / `down` / `status` drive it; tests and benchmarks use
`Testbed`. Needs root; `preflight.problems()` says why it cannot run elsewhere.
"""

from pipeedge.coordinator.testbed.errors import TestbedError
from pipeedge.coordinator.testbed.handle import Testbed
from pipeedge.coordinator.testbed.lifecycle import Leftovers, down, leftovers, up
from pipeedge.coordinator.testbed.preflight import problems
from pipeedge.coordinator.testbed.spec import TestbedSpec, load_spec, spec_from_dict

__all__ = ["Leftovers", "Testbed", "TestbedError", "TestbedSpec", "down", "leftovers",
           "load_spec", "problems", "spec_from_dict", "up"]

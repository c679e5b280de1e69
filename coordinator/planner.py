"""Choose layer ranges for a set of hosts: the user's partition, the scheduler, or an even split."""

from __future__ import annotations

import logging

from pipeedge import models
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.partition import LayerRange, even_partition, parse_partition

log = logging.getLogger(__name__)


def plan_ranges(dep: Deployment, hosts: list[Host]) -> list[LayerRange]:
    """Layer ranges for `hosts` in order (fewer ranges than hosts when layers run out).

    The hosts.yml partition is kept while it fits the hosts; otherwise (e.g. after a host died)
    the layers are split evenly over the survivors.
    """
    info = models.model_info(dep.model)
    if dep.partition:
        ranges = parse_partition(dep.partition, info.num_layers)
        if len(ranges) <= len(hosts):
            return ranges
        log.warning("partition %s needs %d hosts but %d are up; splitting evenly",
                    dep.partition, len(ranges), len(hosts))
    return even_partition(info.num_layers, min(len(hosts), info.num_layers))

"""Deploy a partition onto some testbed devices, the way `pipeedge-coord deploy` would."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import Deployment, load_deployment
from pipeedge.coordinator.testbed import Testbed
from pipeedge.pipeline_file import Pipeline

log = logging.getLogger(__name__)


def planned_stages(dep: Deployment) -> list:
    """Stages for `dep` through the coordinator's planner (older trees: deploy.plan_stages)."""
    try:
        from pipeedge.coordinator import planning
    except ImportError:
        return deploy_mod.plan_stages(dep)
    return planning.plan(dep).stages


def hosts_for(tb: Testbed, workdir: Path, tag: str, devices: list[str], **deployment) -> Path:
    """Write hosts-TAG.yml for `devices` (in stage order) with deployment settings."""
    per_host = deployment.pop("per_host", None)
    return tb.write_hosts(workdir / f"hosts-{tag}.yml", devices=devices, per_host=per_host,
                          pipeline_file=str(workdir / f"pipeline-{tag}.json"), **deployment)


def deploy_file(hosts_file: Path) -> Pipeline:
    dep = load_deployment(hosts_file)
    pipeline = deploy_mod.deploy(dep, planned_stages(dep), progress=False)
    log.info("deployed %s: %s", hosts_file.name,
             ", ".join(f"{s.name} {s.first_layer}-{s.last_layer}" for s in pipeline.stages))
    return pipeline


def release(pipeline: Pipeline) -> None:
    deploy_mod.release(pipeline)

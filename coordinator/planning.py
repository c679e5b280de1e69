"""Decide which host runs which layers: the user's partition, the scheduler, or an even split.

The scheduler reads the seed's files (models.yml, device_types.yml, devices.yml, and links.yml
when measured) from the deployment's scheduler directory; `pipeedge-coord profile` and
`measure-links` write them there.

Layer memory is as each host stores its weights (hosts.yml `weights_dtype`, profiled per
host; see `_weights_memory`), so a model too large in float32 is planned in int8.

Decoders are planned for generation: each layer's memory includes its KV cache for hosts.yml's
`sessions` x `context` (as the stages allocate it), and, where profiled, the layer times and
cut sizes are those of one decode step (`step_time_s` in a device type's model_profiles run,
`step_parameters_in`/`step_parameters_out` in models.yml: keys the seed's tools ignore), since
decode steps, not the prefill, dominate generation time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeedge import models
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.partition import PartitionError, even_partition, parse_partition
from pipeedge.records import LayerRange, PlannedStage

log = logging.getLogger(__name__)

SCHEDULER_FILES = ("models", "device_types", "devices")


@dataclass(frozen=True)
class Plan:
    stages: list[PlannedStage]
    how: str                   # "partition from hosts.yml", "scheduler (exact)", "even split"
    schedule: object = None    # the scheduler's Schedule with its predictions, when it chose


def scheduler_dir(dep: Deployment) -> Path:
    return Path(dep.scheduler_dir) if dep.scheduler_dir else dep.source.parent


def have_profiles(dep: Deployment) -> bool:
    """Whether models.yml knows this model and the device files exist."""
    folder = scheduler_dir(dep)
    if not all((folder / f"{k}.yml").is_file() for k in SCHEDULER_FILES):
        return False
    from pipeedge.coordinator.scheduler.seed_files import load_doc

    if dep.model not in load_doc(folder / "models.yml"):
        return False
    # A host listed under another type (e.g. its weights_dtype changed: `pi4@int8`) needs new
    # profiles.
    from pipeedge.coordinator.profiling import device_type

    listed = load_doc(folder / "devices.yml")
    return all(h.name in (listed.get(device_type(h, dep)) or ()) for h in dep.hosts)


def plan(dep: Deployment, hosts: list[Host] | None = None, *, strict: bool = True) -> Plan:
    """A plan over `hosts` (default: every host in hosts.yml order).

    `strict`: a hosts.yml partition with more stages than hosts is an error (deploy); otherwise
    (re-planning after failures) the layers are re-planned over the hosts left.
    """
    hosts = hosts if hosts is not None else dep.ordered_hosts()
    info = dep.model_info()
    if dep.partition:
        ranges = parse_partition(dep.partition, info.num_layers)
        if len(ranges) <= len(hosts):
            return Plan(_pair(hosts, ranges), "partition from hosts.yml")
        if strict:
            raise PartitionError(f"partition has {len(ranges)} stages but hosts.yml lists "
                                 f"{len(hosts)} host(s); add hosts or merge stages")
        log.warning("partition %s needs %d hosts but %d are up; re-planning",
                    dep.partition, len(ranges), len(hosts))
    if have_profiles(dep):
        return _scheduled(dep, hosts)
    ranges = even_partition(info.num_layers, min(len(hosts), info.num_layers))
    return Plan(_pair(hosts, ranges), "even split (no partition and no profiles: run "
                                      "`pipeedge-coord profile` for an optimal plan)")


def _pair(hosts: list[Host], ranges: list[LayerRange]) -> list[PlannedStage]:
    return [PlannedStage(h, r) for h, r in zip(hosts, ranges)]


def _scheduled(dep: Deployment, hosts: list[Host]) -> Plan:
    from pipeedge.coordinator import scheduler

    folder = scheduler_dir(dep)
    links = folder / "links.yml"
    inputs = scheduler.load_inputs(
        model_name=dep.model, models_file=folder / "models.yml",
        dev_types_file=folder / "device_types.yml", dev_file=folder / "devices.yml",
        links_file=links if links.is_file() else None, batch_size=dep.microbatch,
        dtype=f"torch.{dep.dtype}")
    by_name = {h.name: h for h in hosts}
    # hosts.yml's mem_mb / bw_mbps override what profiling recorded for the device type.
    devices = [replace(d, mem_MB=by_name[d.host].mem_mb or d.mem_MB,
                       bw_Mbps=by_name[d.host].bw_mbps or d.bw_Mbps)
               for d in inputs.devices if d.host in by_name]
    missing = sorted(set(by_name) - {d.host for d in devices})
    if missing:
        log.warning("hosts %s have no profile in %s; they are left out (run "
                    "`pipeedge-coord profile`)", missing, folder)
    model, devices = _weights_memory(dep, inputs.model, devices, folder)
    notes = ()
    info = dep.model_info()
    if info.is_decoder:
        model, devices, notes = _for_generation(dep, info, model, devices, folder)
    try:
        result = scheduler.schedule(model=model, devices=devices,
                                    links=_on_the_wire(dep, devices, by_name, inputs.links),
                                    batch_size=dep.microbatch, dtype=f"torch.{dep.dtype}")
    except scheduler.SchedulingError as exc:
        if not notes:
            if "no viable schedule" in str(exc) and all(
                    dep.host_weights_dtype(h) != "int8" for h in hosts):
                raise scheduler.SchedulingError(f"{exc}; or store the weights smaller: "
                                                "weights_dtype: int8 in hosts.yml") from exc
            raise
        raise scheduler.SchedulingError(f"{exc} (memory includes a {notes[0]}; if memory is "
                                        "what does not fit, lower sessions: or context: in "
                                        "hosts.yml)") from exc
    stages = [PlannedStage(by_name[s.host], LayerRange(s.first_layer, s.last_layer))
              for s in result.stages]
    how = "scheduler (exact optimum)" if result.exact else \
        f"scheduler (best within the time limit: proven within {result.gap:.1%} of optimal)"
    return Plan(stages, ", ".join((how, *notes)), result)


def _weights_memory(dep: Deployment, model, devices, folder: Path):
    """Layer memory as each device type stores its weights (`layer_mem_MB` of its profile run:
    hosts.yml `weights_dtype`). One size for all: it becomes the model's. Mixed: the model gets
    the smallest size of each layer and each device's capacity shrinks by its worst ratio to
    it, so a plan never overfills a device (it may be pessimistic for the larger dtypes)."""
    from pipeedge.coordinator.scheduler.seed_files import last_run, load_doc

    doc = load_doc(folder / "device_types.yml")
    sizes = {}
    for name in {d.device_type for d in devices}:
        run = last_run(doc, name, dep.model, dtype=f"torch.{dep.dtype}",
                       batch_size=dep.microbatch)
        mem = run.get("layer_mem_MB") if run is not None else None
        if not mem or len(mem) != model.layers:
            return model, devices  # profiled before weights dtypes: models.yml's sizes
        sizes[name] = tuple(float(m) for m in mem)
    if not sizes:
        return model, devices
    smallest = tuple(min(v) for v in zip(*sizes.values()))
    model = replace(model, mem_MB=smallest)
    if len(set(sizes.values())) == 1:
        return model, devices

    def scale(own):
        return min((s / m for s, m in zip(smallest, own) if m > 0), default=1.0)

    return model, [replace(d, mem_MB=d.mem_MB * scale(sizes[d.device_type])) for d in devices]


def _for_generation(dep: Deployment, info, model, devices, folder: Path):
    """A decoder's scheduler inputs for generation: KV cache added to each layer's memory, and
    decode-step times and cut sizes when every device type has them; with notes for the plan
    (the KV cache added, which times were used)."""
    from pipeedge.models.kv_cache import cache_capacity

    sessions, context = dep.generation_load(info)
    positions = info.max_positions
    slots = cache_capacity(context, positions)
    kv = models.kv_cache_bytes_per_layer(info, sessions=sessions, context_len=slots,
                                         dtype=getattr(torch, dep.dtype))
    model = replace(model, mem_MB=tuple(m + b / 2**20 for m, b in zip(model.mem_MB, kv)))
    what = f"KV cache of {sum(kv) / 2**20:.1f} MB for {sessions} session(s) x {context} tokens"
    steps = _step_profiles(dep, model, {d.device_type for d in devices}, folder)
    if steps is None:
        log.info("%s: no decode-step profile in %s for every device type; planning with prefill "
                 "times (run `pipeedge-coord profile` again for decode-step costs)", dep.model,
                 folder)
        return model, devices, (what, "prefill times")
    times, params_in, params_out, profiled = steps
    if profiled - {min(context, positions - 1)}:  # the profiler keeps one position free
        log.info("%s: decode steps were profiled against %s cached tokens, hosts.yml's context "
                 "is %d (`pipeedge-coord profile` again to match)", dep.model, sorted(profiled),
                 context)
    model = replace(model, parameters_in=params_in, parameters_out=params_out)
    devices = [replace(d, time_s=times[d.device_type]) for d in devices]
    return model, devices, (what, "decode-step times")


def _step_profiles(dep: Deployment, model, types: set[str], folder: Path):
    """Decode-step (times per device type, parameters_in, parameters_out, contexts profiled) from
    the scheduler files, or None unless models.yml and every device type in `types` have them
    for this batch size and dtype (the seed's rule: the last matching run)."""
    from pipeedge.coordinator.scheduler.seed_files import last_run, load_doc

    entry = load_doc(folder / "models.yml").get(dep.model) or {}
    params_out = entry.get("step_parameters_out")
    if not params_out or len(params_out) != model.layers:
        return None
    doc = load_doc(folder / "device_types.yml")
    times, contexts = {}, set()
    for name in types:
        run = last_run(doc, name, dep.model, dtype=f"torch.{dep.dtype}",
                       batch_size=dep.microbatch)
        step = run.get("step_time_s") if run is not None else None
        if not step or len(step) != model.layers:
            return None
        times[name] = tuple(float(t) for t in step)
        if run is not None and run.get("step_context"):
            contexts.add(int(run["step_context"]))
    return (times, int(entry.get("step_parameters_in", 1)),
            tuple(int(p) for p in params_out), contexts)


def _on_the_wire(dep: Deployment, devices, hosts: dict[str, Host], links):
    """Links as the scheduler should see them: each stage sends its output in its host's
    encoding (hosts.yml `encoding:`, per host or top level), k bits per element instead of the
    compute dtype's d, so its outgoing host-to-host legs carry d/k times the items per second.
    Client legs stay as they are (the client sends raw; the last stage answers raw). Adaptive
    counts as raw, and `deploy -q` (per stage position, chosen after planning) is not seen.
    """
    from pipeedge import encoding as encodings
    from pipeedge.coordinator.scheduler import Link, NetworkLinks

    dtype_bits = torch.empty((), dtype=getattr(torch, dep.dtype)).element_size() * 8
    speedup = {d.host: dtype_bits / min(dtype_bits, encodings.parse(
        hosts[d.host].encoding or dep.encoding, where=f"host {d.host}").bits) for d in devices}
    if all(x == 1 for x in speedup.values()):
        return links
    if links is None:  # the scheduler's default: the slower NIC of the pair, no latency
        links = NetworkLinks({(a.host, b.host): Link(min(a.bw_Mbps, b.bw_Mbps))
                              for a in devices for b in devices if a.host != b.host})
    legs = {(a, b): replace(leg, bw_Mbps=leg.bw_Mbps * speedup.get(a, 1))
            for (a, b), leg in links.host_to_host.items()}
    return replace(links, host_to_host=legs)


def ensure_profiles(dep: Deployment, *, progress: bool = True) -> bool:
    """Profile the hosts' device types when the scheduler has no data for this model yet.

    Returns True if profiling ran. Only without a partition: a manual plan needs no profiles.
    """
    if dep.partition or have_profiles(dep):
        return False
    from pipeedge.coordinator.profiling import (
        hosts_to_profile,
        profile_hosts,
        write_scheduler_files,
    )

    log.info("no profiles for %s in %s: profiling", dep.model, scheduler_dir(dep))
    dtype = dep.dtype
    profiles = profile_hosts(dep, hosts_to_profile(dep, all_hosts=False), batch=dep.microbatch,
                             dtype=dtype, progress=progress)
    write_scheduler_files(dep, profiles, scheduler_dir(dep), batch=dep.microbatch, dtype=dtype)
    return True

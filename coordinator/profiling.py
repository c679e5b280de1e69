"""`pipeedge-coord profile`: profile each device type on its own hardware, in parallel, and
write the scheduler's inputs in the seed's formats (models.yml, device_types.yml, devices.yml).

Each host is profiled at its own weights dtype (hosts.yml `weights_dtype`): time and weight
memory per layer as it will hold them. A host whose weights dtype differs from the deployment's
`dtype` is its own device type (``<type>@int8``), and every run records its per-layer memory
as `layer_mem_MB` (a key the seed's tools ignore) for planning.

Decoders are also timed per decode step (one token against hosts.yml's `context`); those go in
keys the seed's tools ignore: `step_time_s` and `step_context` beside `time_s` in the device
type's run, `step_parameters_in` and `step_parameters_out` in the models.yml entry.

What moving frames costs each device (stage_server/wire_profile.py) goes beside `time_s` in
the run too, as `frame_time_s` (seconds per microbatch) and `wire_time_s_per_MB` (seconds per
MiB received or sent): keys the seed's tools ignore, averaged over the type's hosts and left out
when any of them did not measure it (an older server).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from tqdm import tqdm

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.deploy import BACKENDS, DTYPES
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.coordinator.scheduler import seed_files
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.models import weights_dtype

log = logging.getLogger(__name__)

DEFAULT_BW_MBPS = 1000.0  # used for a device type until links are measured or given


@dataclass(frozen=True)
class LayerProfile:
    """One device's measurement of one model (seed semantics, per-item element counts)."""

    host: Host
    time_s: tuple[float, ...]
    mem_mb: tuple[float, ...]
    parameters_out: tuple[int, ...]
    parameters_in: int
    memory_capacity_mb: float
    # Decoders (empty/0 when not measured: another model, or a stage without decode profiling)
    step_time_s: tuple[float, ...] = ()
    step_parameters_out: tuple[int, ...] = ()
    step_context: int = 0
    nic_mbps: float = 0.0  # the device's fastest NIC (2^20 bits/s); 0 = it could not tell
    # Wire cost per microbatch: fixed seconds, and seconds per MiB received or sent (0 = not
    # measured: an older server)
    frame_time_s: float = 0.0
    wire_time_s_per_mb: float = 0.0


def device_type(host: Host, dep: Deployment | None = None) -> str:
    """The host's device type for the scheduler files; a host storing other weights than the
    deployment's `dtype` (hosts.yml `weights_dtype`) is its own type, e.g. ``pi4@int8``."""
    return (host.device_type or host.name) + (dep.weights_suffix(host) if dep else "")


def hosts_to_profile(dep: Deployment, *, all_hosts: bool) -> list[Host]:
    """One host per device type (the first listed), or every host with `all_hosts`."""
    if all_hosts:
        return list(dep.hosts)
    chosen: dict[str, Host] = {}
    for h in dep.hosts:
        chosen.setdefault(device_type(h, dep), h)
    return list(chosen.values())


def profile_hosts(dep: Deployment, hosts: list[Host], *, batch: int, dtype: str,
                  progress: bool = True) -> list[LayerProfile]:
    """Profile `hosts` in parallel, one progress bar per host."""
    results: list[LayerProfile | Exception | None] = [None] * len(hosts)
    info = dep.model_info()
    decode_context = dep.generation_load(info)[1] if info.is_decoder else 0

    def work(i: int, host: Host) -> None:
        ctl = StageControl(host.name, host.address, security=dep.control_security)
        bar = tqdm(desc=f"profile {host.name}", unit="layer", position=i, leave=True,
                   disable=not progress)
        try:
            ctl.check_serving()
            req = pb.ProfileRequest(model_name=dep.model, dtype=DTYPES[dtype], batch_size=batch,
                                    model_config_json=dep.model_config_json,
                                    backend=BACKENDS[host.backend or dep.backend],
                                    decode_context=decode_context,
                                    weights_dtype=weights_dtype.to_proto(
                                        dep.host_weights_dtype(host)))
            events = []
            for event in ctl.stub.Profile(req, timeout=3600):
                bar.total = event.layers
                bar.update()
                events.append(event)
            results[i] = LayerProfile(
                host, tuple(e.time_s for e in events), tuple(e.mem_mb for e in events),
                tuple(e.parameters_out for e in events), events[0].parameters_in,
                events[0].memory_capacity_mb,
                *_steps(events), nic_mbps=events[0].nic_mbps,
                frame_time_s=events[0].frame_time_s,
                wire_time_s_per_mb=events[0].wire_time_s_per_mb)
        except grpc.RpcError as exc:
            results[i] = RuntimeError(f"profiling on {host.name} failed: {exc.details()}")
        except Exception as exc:
            results[i] = exc
        finally:
            bar.close()
            ctl.close()

    threads = [threading.Thread(target=work, args=(i, h)) for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, Exception):
            raise r
    return [r for r in results if isinstance(r, LayerProfile)]


def _steps(events) -> tuple[tuple[float, ...], tuple[int, ...], int]:
    if not all(e.step_time_s > 0 for e in events):  # not asked, or a server without it
        return (), (), 0
    return (tuple(e.step_time_s for e in events), tuple(e.step_parameters_out for e in events),
            events[0].step_context)


def write_scheduler_files(dep: Deployment, profiles: list[LayerProfile], out_dir: Path, *,
                          batch: int, dtype: str) -> dict[str, Path]:
    """Merge measurements into models.yml / device_types.yml and write devices.yml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{k}.yml" for k in ("models", "device_types", "devices")}
    models_doc = seed_files.load_doc(paths["models"])
    types_doc = seed_files.load_doc(paths["device_types"])
    # models.yml's sizes: a host at the deployment's own weights dtype, else the first.
    first = next((p for p in profiles if not dep.weights_suffix(p.host)), profiles[0])
    models_doc[dep.model] = {"layers": len(first.time_s), "mem_MB": list(first.mem_mb),
                             "parameters_in": first.parameters_in,
                             "parameters_out": list(first.parameters_out)}
    if first.step_parameters_out:  # one decode step: one token id per sequence in
        models_doc[dep.model].update(step_parameters_in=1,
                                     step_parameters_out=list(first.step_parameters_out))
    by_type: dict[str, list[LayerProfile]] = {}
    for p in profiles:
        by_type.setdefault(device_type(p.host, dep), []).append(p)
    dtype_key = f"torch.{dtype}"
    for dtype_name, group in by_type.items():
        host = group[0].host
        entry = types_doc.setdefault(dtype_name, {})
        entry["mem_MB"] = host.mem_mb or min(p.memory_capacity_mb for p in group)
        # Bandwidth: hosts.yml, else what the devices' NICs report (the slowest of the type),
        # else what the file had, else a default. measure-links' links.yml overrides all.
        nics = [p.nic_mbps for p in group]
        entry["bw_Mbps"] = (host.bw_mbps or (min(nics) if all(nics) else 0)
                            or entry.get("bw_Mbps", DEFAULT_BW_MBPS))
        # Several hosts of one type: average them, layer by layer.
        times = [sum(p.time_s[i] for p in group) / len(group) for i in range(len(first.time_s))]
        # Weight memory per layer as this type stores it (weights_dtype); planning reads it.
        run = {"batch_size": batch, "dtype": dtype_key, "time_s": times,
               "layer_mem_MB": list(group[0].mem_mb)}
        if first.step_parameters_out and all(p.step_time_s for p in group):
            run["step_time_s"] = [sum(p.step_time_s[i] for p in group) / len(group)
                                  for i in range(len(first.time_s))]
            run["step_context"] = group[0].step_context
        if all(p.frame_time_s and p.wire_time_s_per_mb for p in group):
            run["frame_time_s"] = sum(p.frame_time_s for p in group) / len(group)
            run["wire_time_s_per_MB"] = sum(p.wire_time_s_per_mb for p in group) / len(group)
        seed_files.put_run(types_doc, dtype_name, dep.model, run)
    devices_doc: dict[str, list[str]] = {}
    for h in dep.hosts:
        devices_doc.setdefault(device_type(h, dep), []).append(h.name)
    for key, doc in (("models", models_doc), ("device_types", types_doc),
                     ("devices", devices_doc)):
        seed_files.write_doc(paths[key], doc)
    return paths

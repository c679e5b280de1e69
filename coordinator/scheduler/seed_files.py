"""The seed scheduler's three YAML files (models, device types, devices): the one module that
reads and writes them.

Formats are the seed's (README_Scheduler.md), parsed with ``yaml.safe_load``. Device types
without a profile for the model, dtype and batch size are skipped with a warning, as the seed
does; other inconsistencies raise SchedulingError naming the file and the fix. Profiling
writes them (`load_doc`, `put_run`, `write_doc`); planning reads the keys the seed's tools
ignore (`layer_mem_MB`, `step_time_s`, ...) through `last_run` and `load_doc`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import SchedulingError
from .profiles import DeviceProfile, ModelProfile

__all__ = ["last_run", "load_devices", "load_doc", "load_model", "put_run", "read_yaml",
           "write_doc"]

logger = logging.getLogger(__name__)

# libyaml's safe loader when PyYAML was built with it (10x faster on profile files); same
# safe subset of YAML either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | Path, what: str, flag: str) -> Any:
    """Parsed contents of one input file; `flag` is the CLI option that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_SafeLoader)
    except FileNotFoundError:
        raise SchedulingError(
            f"{what} file {str(path)!r} not found; pass its path with {flag}"
        ) from None
    except yaml.YAMLError as err:
        line = str(err).replace("\n", " ")
        raise SchedulingError(
            f"{what} file {str(path)!r} is not valid YAML ({line}); fix its syntax"
        ) from None


def load_doc(path: str | Path) -> dict[str, Any]:
    """One file's mapping, {} when the file is missing or empty (profiling merges into it)."""
    path = Path(path)
    if not path.exists():
        return {}
    doc = read_yaml(path, path.stem, "--out")
    if doc is not None and not isinstance(doc, Mapping):
        raise SchedulingError(f"{path} must be a mapping; fix it or delete it to re-profile")
    return dict(doc or {})


def write_doc(path: str | Path, doc: Mapping[str, Any]) -> None:
    Path(path).write_text(yaml.safe_dump(dict(doc), sort_keys=False, width=100))


def _matches(run: Any, dtype: str, batch_size: int) -> bool:
    return (isinstance(run, Mapping) and str(run.get("dtype")) == dtype
            and run.get("batch_size") == batch_size)


def last_run(dev_types: Mapping[str, Any], dev_type: str, model: str, *, dtype: str,
             batch_size: int) -> Mapping[str, Any] | None:
    """A device type's profile run of `model` at `dtype` and `batch_size` in a parsed
    device_types.yml, or None; the seed's rule: the last one that matches."""
    entry = dev_types.get(dev_type)
    runs = ((entry.get("model_profiles") or {}).get(model) if isinstance(entry, Mapping)
            else None) or []
    match = [r for r in runs if _matches(r, dtype, batch_size)]
    return match[-1] if match else None


def put_run(dev_types: dict[str, Any], dev_type: str, model: str, run: dict[str, Any]) -> None:
    """Record `run` (with its `dtype` and `batch_size`) for a device type in a parsed
    device_types.yml, replacing the runs it supersedes."""
    entry = dev_types.setdefault(dev_type, {})
    profiles = entry.get("model_profiles") or {}
    entry["model_profiles"] = profiles
    runs = [r for r in profiles.get(model, [])
            if not _matches(r, str(run["dtype"]), run["batch_size"])]
    profiles[model] = [*runs, run]


def load_model(models: Any, name: str, *, source: str = "models.yml") -> ModelProfile:
    """The named model's per-layer data from a parsed models.yml."""
    if not isinstance(models, Mapping) or name not in models:
        known = ", ".join(sorted(models)) if isinstance(models, Mapping) else "none"
        raise SchedulingError(
            f"model {name!r} is not in {source} (it has: {known}); pass -m/--model-name "
            "with one of those, or add the model's profile"
        )
    entry = models[name]
    if not isinstance(entry, Mapping):
        raise SchedulingError(
            f"model {name!r} in {source} is not a map; give it layers, mem_MB, "
            "parameters_in and parameters_out"
        )
    try:
        layers = int(entry["layers"])
        mem = [float(x) for x in entry["mem_MB"] or []]
        params_in = int(entry["parameters_in"])
        params_out = [int(x) for x in entry["parameters_out"] or []]
    except (KeyError, TypeError, ValueError) as err:
        raise SchedulingError(
            f"model {name!r} in {source} lacks or mistypes {err}; give it layers, mem_MB, "
            "parameters_in and parameters_out"
        ) from None
    if layers <= 0:
        raise SchedulingError(
            f"model {name!r} in {source} has {layers} layers; schedule a model with layers"
        )
    if len(mem) != layers:
        raise SchedulingError(
            f"model {name!r} in {source}: mem_MB has {len(mem)} entries but layers is "
            f"{layers}; make them match"
        )
    if not params_out or len(params_out) > layers:
        raise SchedulingError(
            f"model {name!r} in {source}: parameters_out has {len(params_out)} entries for "
            f"{layers} layers; give one per layer"
        )
    if len(params_out) < layers:
        # The seed's convention: a shorter list is one block, repeated.
        logger.warning(
            "model %s: parameters_out has %d entries < %d layers; repeating it as a block",
            name,
            len(params_out),
            layers,
        )
        params_out = [params_out[i % len(params_out)] for i in range(layers)]
    if any(m < 0 for m in mem) or params_in < 0 or any(p < 0 for p in params_out):
        raise SchedulingError(f"model {name!r} in {source} has negative sizes; fix the profile")
    return ModelProfile(
        name=name, mem_MB=tuple(mem), parameters_in=params_in, parameters_out=tuple(params_out)
    )


def _profile_run(
    dev_type: str,
    entry: Mapping[str, Any],
    model: ModelProfile,
    dtype: str,
    batch_size: int,
    source: str,
) -> tuple[tuple[float, ...], float, float] | None:
    """The type's per-layer times for this model, dtype and batch size, and its frame costs
    (`frame_time_s`, `wire_time_s_per_MB`: 0 when the run has none), or None if unprofiled."""
    run = last_run({dev_type: entry}, dev_type, model.name, dtype=dtype, batch_size=batch_size)
    times = run.get("time_s") if run is not None else None
    if run is None or times is None:
        return None
    if len(times) != model.layers:
        raise SchedulingError(
            f"device type {dev_type!r} in {source}: time_s for {model.name} has {len(times)} "
            f"entries, the model has {model.layers} layers; re-profile it"
        )
    values = tuple(float(t) for t in times)
    if any(t < 0 for t in values):
        raise SchedulingError(
            f"device type {dev_type!r} in {source} has negative layer times; re-profile it"
        )
    frame_s, wire_s = (float(run.get(k) or 0.0) for k in ("frame_time_s", "wire_time_s_per_MB"))
    if not (0 <= frame_s < math.inf and 0 <= wire_s < math.inf):
        raise SchedulingError(
            f"device type {dev_type!r} in {source}: frame_time_s {frame_s} or "
            f"wire_time_s_per_MB {wire_s} is negative or not finite; re-profile it"
        )
    return values, frame_s, wire_s


def load_devices(
    dev_types: Any,
    devices: Any,
    model: ModelProfile,
    *,
    dtype: str,
    batch_size: int,
    types_source: str = "device_types.yml",
    devices_source: str = "devices.yml",
) -> list[DeviceProfile]:
    """Hosts with their type's profile, types in name order and hosts in file order (the seed's)."""
    if not isinstance(dev_types, Mapping):
        raise SchedulingError(
            f"{types_source} has no device types; map each type to bw_Mbps, mem_MB "
            "and model_profiles"
        )
    if not isinstance(devices, Mapping):
        raise SchedulingError(
            f"{devices_source} has no devices; map each device type to a list of hosts"
        )
    out: list[DeviceProfile] = []
    seen: set[str] = set()
    for dev_type in sorted(devices, key=str):
        hosts = devices[dev_type] or []
        if not isinstance(hosts, list):
            raise SchedulingError(f"{devices_source}: {dev_type!r} must map to a list of hosts")
        if not hosts:
            continue
        entry = dev_types.get(dev_type)
        if not isinstance(entry, Mapping):
            logger.warning(
                "device type %s (hosts %s) is not in %s: skipped", dev_type, hosts, types_source
            )
            continue
        profiled = _profile_run(str(dev_type), entry, model, dtype, batch_size, types_source)
        if profiled is None:
            logger.warning(
                "device type %s has no %s profile at dtype %s, batch size %d: skipped",
                dev_type,
                model.name,
                dtype,
                batch_size,
            )
            continue
        times, frame_s, wire_s = profiled
        for host in hosts:
            host = str(host)
            if host in seen:
                raise SchedulingError(
                    f"host {host!r} appears twice in {devices_source}; list each host once"
                )
            seen.add(host)
            out.append(
                DeviceProfile(
                    host=host,
                    device_type=str(dev_type),
                    mem_MB=float(entry.get("mem_MB", 0)),
                    bw_Mbps=float(entry.get("bw_Mbps", 0)),
                    time_s=times,
                    frame_s=frame_s,
                    wire_s_per_MB=wire_s,
                )
            )
    if not out:
        raise SchedulingError(
            f"no host in {devices_source} has a device type profiled in {types_source} for "
            f"{model.name} at dtype {dtype}, batch size {batch_size}; profile a type or pass "
            "a profiled -d/--dtype and -b/--batch-size"
        )
    return out

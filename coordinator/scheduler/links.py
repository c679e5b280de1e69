"""The optional links file: reading it into a NetworkLinks resolved for every host pair, and
writing it (measure-links and the testbed both write through `write_links`).

The format and its precedence rules are documented in links.example.yml next to this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import SchedulingError
from .profiles import DeviceProfile, Link, NetworkLinks

__all__ = ["parse_links", "write_links"]

logger = logging.getLogger(__name__)

_ANY = "*"
_KEYS = {"symmetric", "hosts", "client_to_host", "host_to_client"}


def _link(value: Any, where: str, source: str) -> Link:
    if not isinstance(value, Mapping) or "bw_Mbps" not in value:
        raise SchedulingError(
            f"{source}: {where} must be a map with bw_Mbps (and optional latency_ms)"
        )
    try:
        leg = Link(bw_Mbps=float(value["bw_Mbps"]), latency_ms=float(value.get("latency_ms", 0.0)))
    except (TypeError, ValueError):
        raise SchedulingError(
            f"{source}: {where} has a non-numeric bw_Mbps or latency_ms"
        ) from None
    if leg.bw_Mbps < 0 or leg.latency_ms < 0:
        raise SchedulingError(f"{source}: {where} has a negative bandwidth or latency")
    return leg


def _host_pairs(raw: Any, source: str) -> dict[str, dict[str, Link]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SchedulingError(f"{source}: hosts must map each source host to {{destination: link}}")
    out: dict[str, dict[str, Link]] = {}
    for src, row in raw.items():
        if not isinstance(row, Mapping):
            raise SchedulingError(f"{source}: hosts.{src} must map destination hosts to links")
        out[str(src)] = {str(dst): _link(v, f"hosts.{src}.{dst}", source) for dst, v in row.items()}
    return out


def _client_legs(raw: Any, name: str, hosts: Sequence[str], source: str) -> dict[str, Link] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SchedulingError(f'{source}: {name} must map hosts (or "*") to links')
    legs = {str(h): _link(v, f"{name}.{h}", source) for h, v in raw.items()}
    out: dict[str, Link] = {}
    for host in hosts:
        leg = legs.get(host, legs.get(_ANY))
        if leg is None:
            raise SchedulingError(
                f'{source}: {name} has no entry for host {host!r}; add it or a "*" entry'
            )
        out[host] = leg
    return out


def parse_links(
    raw: Any, devices: Sequence[DeviceProfile], *, source: str = "links.yml"
) -> NetworkLinks:
    """Resolve a parsed links file for these devices (see links.example.yml)."""
    if not isinstance(raw, Mapping):
        raise SchedulingError(
            f"{source} must be a map with hosts, client_to_host or host_to_client"
        )
    unknown = set(map(str, raw)) - _KEYS
    if unknown:
        raise SchedulingError(f"{source}: unknown keys {sorted(unknown)}; use {sorted(_KEYS)}")
    symmetric = bool(raw.get("symmetric", True))
    pairs = _host_pairs(raw.get("hosts"), source)
    names = [d.host for d in devices]
    listed = (set(pairs) | {dst for row in pairs.values() for dst in row}) - set(names) - {_ANY}
    if listed:
        logger.warning(
            "%s names hosts not being scheduled (ignored): %s", source, ", ".join(sorted(listed))
        )

    def resolve(a: DeviceProfile, b: DeviceProfile) -> Link:
        for src, dst in (
            (a.host, b.host),
            (b.host, a.host) if symmetric else (None, None),
            (a.host, _ANY),
            (_ANY, b.host),
            (_ANY, _ANY),
        ):
            if src is not None and dst in pairs.get(src, {}):
                return pairs[src][dst]
        return Link(bw_Mbps=min(a.bw_Mbps, b.bw_Mbps))  # the seed's rule

    matrix = {(a.host, b.host): resolve(a, b) for a in devices for b in devices if a.host != b.host}
    return NetworkLinks(
        host_to_host=matrix,
        client_to_host=_client_legs(raw.get("client_to_host"), "client_to_host", names, source),
        host_to_client=_client_legs(raw.get("host_to_client"), "host_to_client", names, source),
    )


def write_links(path: Path, doc: Mapping[str, Any], written_by: str) -> Path:
    """Write `doc` as a links file headed by who wrote it; its keys are checked as on reading."""
    unknown = set(map(str, doc)) - _KEYS
    if unknown:
        raise SchedulingError(f"links for {path}: unknown keys {sorted(unknown)}; use {sorted(_KEYS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Written by {written_by}; bw_Mbps in 2^20 bit/s.\n"
                    + yaml.safe_dump(dict(doc), sort_keys=False))
    return path

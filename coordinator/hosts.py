"""hosts.yml: the deployment a user describes (devices, model, weights, partition).

See `coordinator/hosts.example.yml` for a commented example.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeedge.errors import PipeEdgeError
from pipeedge.records import WeightsSource, WeightsSourceError
from pipeedge.security import Security, SecurityError

if TYPE_CHECKING:
    from pipeedge.models.sentence_transformers import Pooling


class HostsFileError(PipeEdgeError, ValueError):
    """hosts.yml is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str                 # host:port as the coordinator and clients reach it
    device_type: str = ""
    peer_address: str = ""       # as other stages reach it, when different (NAT, containers)
    backend: str = ""            # per-host override of the deployment's backend
    encoding: str = ""           # per-host override: encoding of this stage's output
    mem_mb: float = 0.0          # memory for the scheduler; 0 = what the device reports
    bw_mbps: float = 0.0         # link bandwidth for the scheduler; 0 = measured or 1000
    weights_dtype: str = ""      # per-host override: float32 | float16 | bfloat16 | int8

    @property
    def next_hop_address(self) -> str:
        return self.peer_address or self.address


@dataclass(frozen=True)
class Deployment:
    model: str
    hosts: tuple[Host, ...]
    weights: WeightsSource = WeightsSource("random")
    partition: str = ""          # seed syntax "1,24,25,48"; empty = automatic (scheduler)
    order: tuple[str, ...] = ()  # host names in stage order; default = the hosts list order
    backend: str = "torch"
    dtype: str = "float32"
    weights_dtype: str = ""      # how stages store weights (per host too); "" = as `dtype`
    microbatch: int = 8
    device: str = ""             # compute device for every stage ("cpu", "cuda:0"); "" = server's
    encoding: str = "raw"
    pipeline_file: str = "pipeline.json"
    scheduler_dir: str = ""      # where models.yml etc. live; "" = beside hosts.yml
    # Decoders: the generation load planning sizes KV caches for (and profiles decode steps
    # at): concurrent sequences, and tokens per sequence (prompt + generated). 0 = default:
    # 1 sequence, the model's maximum positions (see `generation_load`).
    sessions: int = 0
    context: int = 0
    # The weights directory's config.json text, sent to every stage (AssignRequest /
    # ProfileRequest.model_config_json); "" = the shipped config of `model`.
    model_config_json: str = field(default="", repr=False)
    # The weights directory's sentence-transformers pooling (modules.json), applied by the last
    # stage (AssignRequest.pooling); None = the model's own head.
    pooling: Pooling | None = None
    source: Path = field(default=Path("hosts.yml"), compare=False)
    # `tls:` / `token:` (docs/security.md): the coordinator's credentials for control calls, and
    # the client credentials deploy records in the pipeline file for SDK clients.
    security: Security | None = field(default=None, compare=False)
    client_security: Security | None = field(default=None, compare=False)

    def model_info(self):
        """The model as the stages will build it (the directory's config when there is one)."""
        from pipeedge import models

        return models.model_info(self.model, self.model_config_json or None,
                                 pooling=self.pooling)

    @property
    def control_security(self) -> Security:
        """What every control call to the stages uses: hosts.yml's tls:/token:, else plaintext
        (explicitly: never the PIPEEDGE_TLS_* variables a stage or SDK client reads)."""
        return self.security or Security()

    def generation_load(self, info) -> tuple[int, int]:
        """(sessions, context tokens) for this decoder `info`, defaults filled in."""
        return self.sessions or 1, self.context or info.max_positions

    def host_weights_dtype(self, host: Host) -> str:
        """`weights_dtype` of `host`: its own, else the top-level one, else `dtype`'s."""
        return (host.weights_dtype or self.weights_dtype
                or (self.dtype if self.dtype in ("float16", "bfloat16") else "float32"))

    def weights_suffix(self, host: Host) -> str:
        """"@int8" etc. when `host` stores weights other than `dtype`'s: profiles and the
        scheduler then treat it as its own device type (times and sizes differ)."""
        own = self.host_weights_dtype(host)
        return "" if own == replace(self, weights_dtype="").host_weights_dtype(Host("", "")) \
            else f"@{own}"

    def ordered_hosts(self) -> list[Host]:
        if not self.order:
            return list(self.hosts)
        by_name = {h.name: h for h in self.hosts}
        missing = [n for n in self.order if n not in by_name]
        if missing:
            raise HostsFileError(f"order names unknown host(s) {missing}; known: {list(by_name)}")
        return [by_name[n] for n in self.order]


def parse_weights(value) -> WeightsSource:
    """hosts.yml `weights:` (`WeightsSource.parse`), its errors as hosts-file errors."""
    try:
        return WeightsSource.parse(value)
    except WeightsSourceError as exc:
        raise HostsFileError(str(exc)) from None


def _positive_int(data: dict, key: str, path: Path, example: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HostsFileError(f"{path}: {key} must be a positive whole number, e.g. "
                             f"'{key}: {example}', got {value!r}")
    return value


def resolve_model(model, weights: WeightsSource, path: Path) -> dict[str, Any]:
    """`model:` (a registry name, or omitted) and a weights directory the coordinator can read ->
    the model name, the directory's config.json text (`pipeedge.models.checkpoint.resolve`) and
    its sentence-transformers pooling (`resolve_pooling`). A `local:` path only the devices have
    keeps the shipped config (the stages check theirs)."""
    from pipeedge.models.checkpoint import resolve, resolve_pooling
    from pipeedge.models.hf_config import ConfigError

    directory = weights.path if weights.directory is not None else None
    if directory is not None and not Path(directory).is_dir():
        directory = None  # a file, or a path that exists only on the devices
    try:
        name, text = resolve(str(model) if model else None, directory)
        pooling = resolve_pooling(name, text, directory)
    except ConfigError as exc:
        raise HostsFileError(f"{path}: {exc}") from None
    return {"model": name, "model_config_json": text, "pooling": pooling}


def parse_generation_load(data: dict, path: Path, model: dict) -> dict[str, Any]:
    """`sessions:` and `context:` (decoder models only): positive, context within the model."""
    load = {"sessions": _positive_int(data, "sessions", path, "4"),
            "context": _positive_int(data, "context", path, "512")}
    if not any(load.values()):
        return load
    from pipeedge import models

    try:
        info = models.model_info(model["model"], model["model_config_json"] or None)
    except ValueError:
        return load  # an unknown model is reported where it is used, with the known names
    if not info.is_decoder:
        given = " and ".join(f"'{k}'" for k, v in load.items() if v)
        raise HostsFileError(f"{path}: {given} size the KV cache of text generation, but "
                             f"{info.name} is not a decoder model; remove them")
    if load["context"] > info.max_positions:
        raise HostsFileError(f"{path}: context {load['context']} is over {info.name}'s "
                             f"{info.max_positions} positions; use at most {info.max_positions}")
    return load


def check_weights_dtypes(dep: Deployment) -> None:
    """Every host's `weights_dtype` is known and runs on its backend (names canonicalised)."""
    from pipeedge.models import weights_dtype

    for h in dep.hosts:
        try:
            weights_dtype.check(dep.host_weights_dtype(h), h.backend or dep.backend,
                                where=f"host {h.name}")
        except weights_dtype.WeightsDtypeError as exc:
            raise HostsFileError(f"{dep.source}: {exc}") from None


_TLS_KEYS = {"dir", "ca", "cert", "key", "client_cert", "client_key", "server_name"}


def parse_security(tls, token, source: Path) -> dict[str, Any]:
    """`tls:` (a folder from `pipeedge-coord certs`, or a mapping of files) and `token:`
    (`file:PATH`, `env:VAR` or the token) -> the coordinator's and the clients' credentials.

    Paths are relative to hosts.yml. Without `tls:` and `token:` both are None (plaintext)."""
    if tls in (None, "", False) and token in (None, ""):
        return {"security": None, "client_security": None}
    if isinstance(tls, (str, Path)):
        tls = {"dir": str(tls)}
    if tls in (None, "", False):
        tls = {}
    if not isinstance(tls, dict):
        raise HostsFileError(f"{source}: tls must be a folder (from `pipeedge-coord certs`) or a "
                             "mapping with ca, cert, key")
    unknown = sorted(set(tls) - _TLS_KEYS)
    if unknown:
        raise HostsFileError(f"{source}: unknown tls field(s) {unknown}; use {sorted(_TLS_KEYS)}")
    base = source.parent.resolve()
    folder = Path(str(tls["dir"])) if tls.get("dir") else None

    def pick(key: str, default: str):
        value = tls.get(key)
        if value:
            return str(value)
        return str(folder / default) if folder is not None else None

    ca, cert, key = pick("ca", "ca.crt"), pick("cert", "coordinator.crt"), pick("key",
                                                                                "coordinator.key")
    client_cert, client_key = pick("client_cert", "client.crt"), pick("client_key", "client.key")
    if folder is None and not tls.get("client_cert"):
        client_cert, client_key = cert, key
    token = None if token in (None, "") else str(token)
    try:
        coordinator = Security.from_files(ca=ca, cert=cert, key=key, token=token,
                                          server_name=tls.get("server_name"), base_dir=base)
        client = Security.from_files(ca=ca, cert=client_cert, key=client_key, token=token,
                                     server_name=tls.get("server_name"), base_dir=base)
    except SecurityError as exc:
        raise HostsFileError(f"{source}: {exc}") from None
    return {"security": coordinator, "client_security": client}


def load_deployment(path: str | Path, *, with_security: bool = True, **overrides) -> Deployment:
    """Parse hosts.yml. `with_security=False` skips tls:/token: (for `certs`, which creates
    those files). The credentials are `dep.security` (control calls) and `dep.client_security`;
    every control-plane call passes them explicitly (no process default is set)."""
    path = Path(path)
    if not path.is_file():
        raise HostsFileError(f"hosts file {path} not found; start from "
                             "coordinator/hosts.example.yml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HostsFileError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise HostsFileError(f"{path} must be a mapping with 'model' and 'hosts'")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if not data.get("hosts"):
        raise HostsFileError(f"{path} has no 'hosts'; see coordinator/hosts.example.yml")
    hosts = []
    for i, h in enumerate(data["hosts"]):
        if not isinstance(h, dict) or "address" not in h:
            raise HostsFileError(f"{path}: hosts[{i}] needs at least 'address' (host:port)")
        hosts.append(Host(name=str(h.get("name", h["address"])), address=str(h["address"]),
                          device_type=str(h.get("device_type", "")),
                          peer_address=str(h.get("peer_address", "")),
                          backend=str(h.get("backend", "")), encoding=str(h.get("encoding", "")),
                          mem_mb=float(h.get("mem_mb", 0)), bw_mbps=float(h.get("bw_mbps", 0)),
                          weights_dtype=str(h.get("weights_dtype") or "").strip().lower()))
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise HostsFileError(f"{path}: host names must be unique, got {names}")
    partition = data.get("partition", "")
    if isinstance(partition, list):
        partition = ",".join(str(x) for x in partition)
    weights = parse_weights(data.get("weights"))
    model = resolve_model(data.get("model"), weights, path)
    dep = Deployment(
        **model, hosts=tuple(hosts), weights=weights,
        partition=str(partition or ""), order=tuple(str(x) for x in data.get("order") or ()),
        backend=str(data.get("backend", "torch")), dtype=str(data.get("dtype", "float32")),
        weights_dtype=str(data.get("weights_dtype") or "").strip().lower(),
        microbatch=int(data.get("microbatch", 8)), device=str(data.get("device", "")),
        encoding=str(data.get("encoding", "raw")),
        pipeline_file=str(data.get("pipeline_file", "pipeline.json")),
        scheduler_dir=str(data.get("scheduler_dir", "")), source=path,
        **parse_generation_load(data, path, model),
        **(parse_security(data.get("tls"), data.get("token"), path) if with_security else {}))
    check_weights_dtypes(dep)
    return dep

"""Deploy a pipeline: validate the plan, reach every host, push weights, assign last stage first.

Assigning from the last stage backwards means each stage's next hop is already serving when it
starts. The result is a `Pipeline` description that the SDK and `status` read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from tqdm import tqdm

from pipeedge import codec, models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.partition import LayerRange
from pipeedge.pipeline_file import Pipeline, StageInfo

log = logging.getLogger(__name__)

DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16}
BACKENDS = {"torch": pb.TORCH, "onnx": pb.ONNX}


class DeployError(Exception):
    """Deployment failed; the message names the host or setting and the fix."""


@dataclass(frozen=True)
class PlannedStage:
    host: Host
    layers: LayerRange


def assign_request(dep: Deployment, stage: PlannedStage, next_hop: str,
                   weights: pb.WeightSource) -> pb.AssignRequest:
    backend = stage.host.backend or dep.backend
    if backend not in BACKENDS:
        raise DeployError(f"backend '{backend}' for host {stage.host.name} is unknown; "
                          f"use one of {sorted(BACKENDS)}")
    if dep.dtype not in DTYPES:
        raise DeployError(f"dtype '{dep.dtype}' is unknown; use one of {sorted(DTYPES)}")
    req = pb.AssignRequest(stage_name=stage.host.name, model_name=dep.model,
                           first_layer=stage.layers.first, last_layer=stage.layers.last,
                           backend=BACKENDS[backend], dtype=DTYPES[dep.dtype],
                           device=dep.device, max_microbatch=dep.microbatch, next_hop=next_hop,
                           weights=weights)
    encoding = stage.host.encoding or dep.encoding
    if next_hop and encoding and encoding != "raw":
        req.output_encoding.CopyFrom(_parse_encoding(encoding))
    return req


def _parse_encoding(text: str) -> pb.Encoding:
    """`float16`, `bfloat16`, or `uniform:BITS`."""
    kind, _, bits = text.partition(":")
    try:
        return codec.encoding_from_name(kind, bits=int(bits or 0))
    except ValueError as exc:
        raise DeployError(f"encoding '{text}': {exc}") from None


def deploy(dep: Deployment, stages: list[PlannedStage], *, progress: bool = True) -> Pipeline:
    controls = [StageControl(s.host.name, s.host.address) for s in stages]
    try:
        for c in controls:
            c.check_serving()
        sources = _weight_sources(dep, stages, controls, progress)
        replies: list[pb.AssignReply | None] = [None] * len(stages)
        bar = tqdm(total=len(stages), desc="assign", unit="stage", disable=not progress)
        for i in reversed(range(len(stages))):
            next_hop = stages[i + 1].host.next_hop_address if i + 1 < len(stages) else ""
            req = assign_request(dep, stages[i], next_hop, sources[i])
            try:
                replies[i] = controls[i].assign(req)
            except grpc.RpcError as exc:
                raise DeployError(f"host {stages[i].host.name} refused layers "
                                  f"{stages[i].layers}: {exc.details()}") from None
            log.info("assigned %s layers %s (%.1f MB)", stages[i].host.name, stages[i].layers,
                     replies[i].parameter_bytes / 1e6,
                     extra={"event": "assign", "host": stages[i].host.name,
                            "layers": str(stages[i].layers), "next_hop": next_hop})
            bar.update()
        bar.close()
    finally:
        for c in controls:
            c.close()
    pipeline = Pipeline(
        model=dep.model, microbatch=dep.microbatch, dtype=dep.dtype,
        weights=dep.weights.describe(),
        stages=tuple(StageInfo(name=s.host.name, address=s.host.address,
                               first_layer=s.layers.first, last_layer=s.layers.last,
                               backend=s.host.backend or dep.backend,
                               device_type=s.host.device_type) for s in stages),
        extra={"parameter_bytes": [r.parameter_bytes for r in replies]})
    return pipeline


def _weight_sources(dep: Deployment, stages: list[PlannedStage], controls: list[StageControl],
                    progress: bool) -> list[pb.WeightSource]:
    if dep.weights.kind != "push":
        return [dep.weights.to_proto() for _ in stages]
    path = Path(dep.weights.path)
    if not path.exists():
        raise DeployError(f"weights path {path} does not exist on the coordinator; fix "
                          "'weights: push:PATH' in hosts.yml")
    info = models.model_info(dep.model)
    blobs = []
    for s in stages:
        state = models.load_shard_state(info, s.layers.first, s.layers.last, path)
        blobs.append(models.save_safetensors_bytes(state))
    bar = tqdm(total=sum(len(b) for b in blobs), desc="push weights", unit="B",
               unit_scale=True, disable=not progress)
    sources = []
    for c, blob in zip(controls, blobs):
        try:
            sha = c.push_weights(blob, progress=bar.update)
        except grpc.RpcError as exc:
            raise DeployError(f"pushing weights to {c.name} failed: {exc.details()}") from None
        sources.append(dep.weights.to_proto(pushed_sha256=sha))
    bar.close()
    return sources


def release(pipeline: Pipeline) -> list[tuple[str, bool]]:
    out = []
    for s in pipeline.stages:
        c = StageControl(s.name, s.address)
        try:
            out.append((s.name, c.release().released))
        except grpc.RpcError:
            out.append((s.name, False))
        finally:
            c.close()
    return out

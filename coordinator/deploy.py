"""Deploy a pipeline: validate the plan, reach every host, push weights, assign every stage.

Stages are assigned in parallel: a stage opens its link to the next hop only when it has
something to send, and nothing is sent before the pipeline is published, so no order is needed.
The result is a `Pipeline` description that the SDK and `status` read.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
from tqdm import tqdm

from pipeedge import encoding as encodings
from pipeedge import models, security
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator import epochs
from pipeedge.coordinator.hosts import Deployment
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.errors import PipeEdgeError
from pipeedge.models import weights_dtype
from pipeedge.pipeline_file import Pipeline
from pipeedge.records import CredentialPaths, PlannedStage

log = logging.getLogger(__name__)

DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16}
BACKENDS = {"torch": pb.TORCH, "onnx": pb.ONNX}


class DeployError(PipeEdgeError):
    """Deployment failed; the message names the host or setting and the fix."""


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
                           weights=weights, model_config_json=dep.model_config_json,
                           weights_dtype=weights_dtype.to_proto(
                               weights_dtype.check(dep.host_weights_dtype(stage.host), backend,
                                                   where=f"host {stage.host.name}")))
    if not next_hop and dep.pooling is not None:  # the last stage pools (sentence-transformers)
        from pipeedge.models.sentence_transformers import to_proto

        req.pooling.CopyFrom(to_proto(dep.pooling))
    encoding = stage.host.encoding or dep.encoding
    if next_hop and encoding:
        spec = encodings.parse(encoding, where=f"host {stage.host.name}")
        if spec.encoding is not None:
            req.output_encoding.CopyFrom(spec.encoding)
        req.target_items_per_s, req.adaptive_min_bits = spec.target_items_per_s, spec.min_bits
    return req


def quant_per_stage(quant: str, stages: int) -> list[str]:
    """`deploy -q 8,4,0`: one encoding per stage boundary, in the seed's style.

    Entry i is what stage i sends to stage i+1: a bit width (uniform BITS, 2..16; 0 = raw) or
    any hosts.yml encoding. N-1 entries for N stages, or N: the last stage's entry is accepted
    and ignored (its output goes back to the client raw).
    """
    entries = [e.strip() for e in quant.split(",")]
    if len(entries) not in (stages - 1, stages) or (stages == 1 and entries == [""]):
        raise DeployError(f"-q {quant} has {len(entries)} entries for {stages} stage(s); give "
                          f"one per stage boundary ({max(stages - 1, 0)}), optionally plus one "
                          "ignored entry for the last stage, e.g. -q 8,4,0 for 3 stages")
    for i, e in enumerate(entries[:stages - 1]):
        encodings.parse(e, where=f"-q entry {i + 1}")
    return (entries + ["raw"])[:stages]


def apply_quant(stages: list[PlannedStage], quant: str | None) -> list[PlannedStage]:
    """Override every stage's output encoding with `deploy -q` (hosts.yml settings lose)."""
    if not quant:
        return stages
    encodings = quant_per_stage(quant, len(stages))
    return [PlannedStage(replace(s.host, encoding=e if e not in ("0", "32", "") else "raw"),
                         s.layers) for s, e in zip(stages, encodings)]


def deploy(dep: Deployment, stages: list[PlannedStage], *, epoch: int = 0,
           progress: bool = True, reach_timeout_s: float = 5.0) -> Pipeline:
    """Assign `stages` (all at once), every one with `epoch`, which must be new: one that no
    earlier deployment used (docs/failure-model.md). 0 = above what the stages hold and the
    clock (`coordinator.epochs`); `serve` and `deploy` pass one from their state file.
    `reach_timeout_s`: how long to wait for each stage to answer (a re-plan waits less)."""
    controls = [StageControl(s.host.name, s.host.address, security=dep.control_security)
                for s in stages]
    try:
        for c in controls:
            c.check_serving(reach_timeout_s)
        if not epoch:
            epoch = epochs.fresh_epoch(highest_epoch([s.host for s in stages], dep.control_security))
        sources = _weight_sources(dep, stages, controls, progress)
        bar = tqdm(total=len(stages), desc="assign", unit="stage", disable=not progress)

        def assign(i: int) -> pb.AssignReply:
            next_hop = stages[i + 1].host.next_hop_address if i + 1 < len(stages) else ""
            req = assign_request(dep, stages[i], next_hop, sources[i])
            req.epoch = epoch
            try:
                reply = controls[i].assign(req)
            except grpc.RpcError as exc:
                raise DeployError(f"host {stages[i].host.name} refused layers "
                                  f"{stages[i].layers}: {exc.details()}") from None
            log.info("assigned %s layers %s (%.1f MB)", stages[i].host.name, stages[i].layers,
                     reply.parameter_bytes / 1e6,
                     extra={"event": "assign", "host": stages[i].host.name,
                            "layers": str(stages[i].layers), "next_hop": next_hop})
            bar.update()
            return reply

        # All at once: each host loads its own shard (16 devices one after another took the
        # sum of their loads). A refusal is raised once every Assign has answered.
        with ThreadPoolExecutor(max_workers=len(stages)) as pool:
            calls = [pool.submit(assign, i) for i in range(len(stages))]
        bar.close()
        replies = [c.result() for c in reversed(calls)][::-1]  # the last refusal first
    finally:
        for c in controls:
            c.close()
    pipeline = Pipeline(
        model=dep.model, microbatch=dep.microbatch, dtype=dep.dtype,
        model_config_json=dep.model_config_json, weights=dep.weights,
        stages=tuple(s.deployed(dep.backend) for s in stages),
        version=epoch, parameter_bytes=tuple(r.parameter_bytes for r in replies if r is not None),
        # Credential files (not their contents) for status/release and SDK clients.
        credentials=CredentialPaths(dep.security.paths(), dep.client_security.paths())
        if dep.security and dep.client_security else None)
    return pipeline


def _weight_sources(dep: Deployment, stages: list[PlannedStage], controls: list[StageControl],
                    progress: bool) -> list[pb.WeightSource]:
    if dep.weights.kind != "push":
        return [dep.weights.to_proto() for _ in stages]
    path = Path(dep.weights.path)
    if not path.exists():
        raise DeployError(f"weights path {path} does not exist on the coordinator; fix "
                          "'weights: push:PATH' in hosts.yml")
    info = dep.model_info()
    blobs = []
    for s in stages:
        state = models.load_shard_state(info, s.layers.first, s.layers.last, path)
        if (s.host.backend or dep.backend) == "torch" and dep.host_weights_dtype(s.host) == "int8":
            # As the stage would hold them: about 4x fewer bytes on the matmuls to push, and
            # the device never holds (or quantizes) the float32 shard.
            state = weights_dtype.quantized_state(info, s.layers.first, s.layers.last, state)
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


def highest_epoch(hosts, security, timeout_s: float = 2.0) -> int:
    """The largest epoch any reachable host holds (a floor for the next one); 0 if none."""
    best = 0
    for h in hosts:
        c = StageControl(h.name, h.address, security=security)
        try:
            st = c.status(timeout_s=timeout_s)
            best = max(best, st.assignment.epoch if st.assigned else 0)
        except grpc.RpcError:
            pass
        finally:
            c.close()
    return best


def release(pipeline: Pipeline) -> list[tuple[str, bool]]:
    """Release every stage at once: each Release waits for the microbatch its stage is
    computing, so one after another a busy pipeline took the sum of those, not the longest."""
    def one(s) -> tuple[str, bool]:
        c = StageControl(s.name, s.address, security=security.for_pipeline(pipeline,
                                                                           "coordinator"))
        try:
            return s.name, c.release().released
        except grpc.RpcError:
            return s.name, False
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=max(1, len(pipeline.stages))) as pool:
        return list(pool.map(one, pipeline.stages))

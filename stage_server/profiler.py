"""Per-layer profiling on this device: compute time, weight memory and output sizes.

Each layer is built alone as a one-layer shard (seeded random weights: timing does not depend
on the values) through the same backend factory that serves assignments, so an ONNX device is
profiled with ONNX, and at the request's weights dtype (memory as the shard stores it). Layers
run in order on real activations; only one layer is in memory at once. A layer's time is the
median of a few calls, or, where this process does not get a whole CPU (a cgroup quota), the
rate over back-to-back calls spanning seconds (call_timing.py).

Decoders, when the request sets ``decode_context``, are also timed the way generation spends its
time: one new token against a cache of that many tokens (random context; the cost does not
depend on the values), reported per layer as ``step_time_s``. Each session steps as its own
batch-1 frame (sessions are not batched together), so a step is timed at batch 1 and reported as
``batch_size`` such steps one after another: the time of one microbatch, like ``time_s``.

Every event also carries what moving a frame costs this device (wire_profile.py), measured once
per request before the layers: the scheduler charges it per stage besides the layers' time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.stage_server.backends import ShardBackend, check_target, load_backend
from pipeedge.stage_server.call_timing import seconds_per_call
from pipeedge.stage_server.device_info import nic_speed_mbps, usable_memory_mb
from pipeedge.stage_server.wire_profile import WireCost, measure_wire_cost

if TYPE_CHECKING:
    from pipeedge.stage_server.sessions import DecodeTiming

log = logging.getLogger(__name__)


def profile_layers(req: pb.ProfileRequest, *, cache_dir: Path, default_threads: int,
                   default_device: str) -> Iterator[pb.ProfileEvent]:
    info = models.model_info(req.model_name, req.model_config_json or None)
    batch = req.batch_size or 8
    warmup, repeats = req.warmup or 2, req.repeats or 5
    threads = req.threads or default_threads
    device = req.device or default_device
    # Bounded like an assignment: a huge thread count aborts the process, huge batch or
    # repeat counts would hold the stage for hours (ValueError -> INVALID_ARGUMENT).
    check_target(pb.AssignRequest(backend=req.backend, device=device, threads=threads))
    if batch > 4096 or warmup > 1000 or repeats > 1000:
        raise ValueError(f"batch_size {batch}, warmup {warmup}, repeats {repeats}: limits are "
                         "4096, 1000 and 1000")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tensors = models.example_inputs(info, batch, seed=0)
        capacity, nic = usable_memory_mb(), nic_speed_mbps()
        wire_cost = _wire_cost()
        label = f"{device} ({torch.get_num_threads()} threads)"
        for layer in range(1, info.num_layers + 1):
            assignment = pb.AssignRequest(model_name=req.model_name,
                                          model_config_json=req.model_config_json,
                                          first_layer=layer, last_layer=layer,
                                          backend=req.backend, dtype=req.dtype, device=device,
                                          threads=threads, weights=pb.WeightSource(random_seed=0),
                                          weights_dtype=req.weights_dtype)
            state = models.load_shard_state(info, layer, layer, 0)
            backend = load_backend(assignment, state, cache_dir=cache_dir)
            del state
            for _ in range(warmup):
                outputs = backend.run(tensors)
            seconds = seconds_per_call(lambda: backend.run(tensors), repeats)
            step = _decode_step(backend, info, req, repeats)
            event = pb.ProfileEvent(layer=layer, layers=info.num_layers,
                                    time_s=seconds,
                                    mem_mb=backend.parameter_bytes / 2**20,
                                    parameters_out=_elements_per_item(outputs, batch),
                                    done=layer == info.num_layers,
                                    memory_capacity_mb=capacity, device=label,
                                    nic_mbps=nic, frame_time_s=wire_cost.frame_time_s,
                                    wire_time_s_per_mb=wire_cost.wire_time_s_per_mb)
            if step is not None:
                event.step_time_s = step.step_s * batch
                event.step_parameters_out = _elements_per_item(step.outputs, 1)
                event.step_context = _step_context(info, req)
            if layer == 1:
                event.parameters_in = sum(t.numel() for t in tensors.values()) // batch
            backend.close()
            # The next layer gets this layer's outputs, plus what the shard interface carries
            # through unchanged (BERT's attention mask).
            tensors = {**{k: v for k, v in tensors.items() if k == "attention_mask"}, **outputs}
            yield event
    finally:
        torch.set_num_threads(previous_threads)


def _wire_cost() -> WireCost:
    """This device's wire cost, or zeros (not measured) if the loopback fails: the layers'
    profile is still worth having, and the scheduler then charges no wire time."""
    try:
        return measure_wire_cost()
    except Exception as exc:  # noqa: BLE001 (a loopback failure must not fail the profile)
        log.warning("wire cost not measured: %s: %s", type(exc).__name__, exc)
        return WireCost(0.0, 0.0, {})


def _step_context(info: models.ModelInfo, req: pb.ProfileRequest) -> int:
    # One position must stay free for the step itself.
    return min(req.decode_context, info.max_positions - 1)


def _decode_step(backend: ShardBackend, info: models.ModelInfo, req: pb.ProfileRequest,
                 repeats: int) -> DecodeTiming | None:
    """This one-layer shard's decode-step timing for one session (batch 1, as TextGenerator
    sends steps), or None (not asked, or not a decoder)."""
    from pipeedge.stage_server.backends.torch_backend import TorchShardBackend, compute_dtype
    from pipeedge.stage_server.sessions import time_decode_step

    # Only the torch backend serves decoders (backends/base.py).
    if not isinstance(backend, TorchShardBackend):
        return None
    module = backend.module
    if not req.decode_context or not info.is_decoder or \
            not isinstance(module, models.DecoderShard):
        return None

    return time_decode_step(module, context_len=_step_context(info, req), batch=1,
                            repeats=repeats, warmup=1, dtype=compute_dtype(pb.AssignRequest(
                                dtype=req.dtype)), device=backend.device)


def _elements_per_item(tensors: dict[str, torch.Tensor], batch: int) -> int:
    """Float elements per item crossing a cut (masks and ids are not counted, as in the seed)."""
    return sum(t.numel() for t in tensors.values() if t.is_floating_point()) // batch

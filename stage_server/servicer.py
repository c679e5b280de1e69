"""The Stage gRPC servicer: a thin adapter between the wire and the stage runtime."""

from __future__ import annotations

import ctypes
import gc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import NoReturn

import grpc

from pipeedge import wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.errors import status_from_int
from pipeedge.partition import PartitionError
from pipeedge.security import Security
from pipeedge.stage_server.adaptive import check_assignment
from pipeedge.stage_server.backends import check_target, load_backend
from pipeedge.stage_server.links import measure_link
from pipeedge.stage_server.metrics import StageHooks, fill_status
from pipeedge.stage_server.profiler import profile_layers
from pipeedge.stage_server.routing import InFlight, Route, error_frame
from pipeedge.stage_server.runtime import StageRuntime
from pipeedge.stage_server.shard_loader import WeightsNotFound, load_shard_state
from pipeedge.stage_server.weight_cache import WeightCache, WeightPushError

log = logging.getLogger(__name__)

# Data calls (Forward streams + Infer calls) a stage serves at once; see StageServicer.
MAX_STREAMS = 128
# Server threads kept for everything else: health checks, Status, Assign, Release, Ping.
CONTROL_THREADS = 16
# Largest Ping reply and link probe (link measurement sends 4 MB by default).
MAX_PING_BYTES = 16 * 1024 * 1024


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """``context.abort``, which always raises (grpc ships no type information that says so)."""
    context.abort(code, details)
    raise AssertionError("grpc.ServicerContext.abort returned")


class StageServicer(pb_grpc.StageServicer):
    def __init__(self, name: str, cache: WeightCache, *, threads: int = 0,
                 device: str = "cpu", max_in_flight: int = 64, max_streams: int = MAX_STREAMS,
                 metrics: StageHooks | None = None, security: Security | None = None) -> None:
        self.name = name
        # This stage's credentials for its own outgoing links (next hop, link probes).
        self.security = security
        self.metrics = metrics or StageHooks()  # monitoring hooks and energy meter (metrics.py)
        # Accepted-but-unanswered requests over all streams; past the limit new ones are refused
        # with RESOURCE_EXHAUSTED instead of queueing without bound.
        self.in_flight = InFlight()
        self.max_in_flight = max_in_flight
        # Open Forward streams and Infer calls (each holds a server thread while it lasts). The
        # server has `max_streams` + CONTROL_THREADS threads, so health checks, Status and
        # Assign are answered however many clients stream; stream max_streams + 1 is refused.
        self.data_calls = InFlight()
        self.max_streams = max_streams
        self.cache = cache
        self.threads = threads
        self.device = device
        self.runtime: StageRuntime | None = None
        self._assign_lock = threading.Lock()

    # -- control ----------------------------------------------------------------------------------
    def Assign(self, request: pb.AssignRequest, context: grpc.ServicerContext) -> pb.AssignReply:
        request = pb.AssignRequest.FromString(request.SerializeToString())
        request.stage_name = request.stage_name or self.name
        request.device = request.device or self.device
        request.threads = request.threads or self.threads
        with self._assign_lock:
            held = self.runtime.assignment.epoch if self.runtime else 0
            if request.epoch and request.epoch <= held:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"stage {self.name} already holds epoch {held}; an Assign of "
                              f"epoch {request.epoch} comes from an older deployment (is a "
                              "second coordinator running?); redeploy from the current one")
            start = time.perf_counter()
            try:
                check_assignment(request)  # output encoding (adaptive.py)
                check_target(request)  # backend and device (backends/base.py)
                state = load_shard_state(request, self.cache)
                backend = load_backend(request, state, cache_dir=self.cache.root.parent)
                del state
            except WeightsNotFound as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except (ValueError, KeyError, PartitionError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"cannot assign {request.model_name[:100]} layers "
                              f"{request.first_layer}-"
                              f"{request.last_layer}: {_one_line(exc)}")
            except FileNotFoundError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, _one_line(exc))
            except MemoryError:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"layers {request.first_layer}-{request.last_layer} of "
                              f"{request.model_name[:100]} do not fit in this device's memory; "
                              "give it fewer layers")
            except Exception as exc:  # noqa: BLE001
                # What the checks above miss (found by tests/integration/test_fuzz.py: a config with zero
                # attention heads or patch size, negative sizes, a CUDA device this build
                # lacks) fails this request alone, in one line; the old assignment stays.
                log.warning("assign refused: %s: %s", type(exc).__name__, _one_line(exc))
                code = (grpc.StatusCode.RESOURCE_EXHAUSTED if "allocate" in str(exc)
                        else grpc.StatusCode.INVALID_ARGUMENT)
                context.abort(code, f"cannot assign {request.model_name[:100]} layers "
                                    f"{request.first_layer}-{request.last_layer}: "
                                    f"{type(exc).__name__}: {_one_line(exc)[:300]}")
            old, self.runtime = self.runtime, None
            if old:
                old.stop()
                del old
                _give_back_memory()
            assignment_id = uuid.uuid4().hex[:12]
            self.runtime = StageRuntime(request, backend, assignment_id, metrics=self.metrics,
                                        security=self.security)
            elapsed = time.perf_counter() - start
        log.info("assigned %s layers %d-%d (%s, %.1f MB) next hop %s in %.2fs",
                 request.model_name, request.first_layer, request.last_layer,
                 "onnx" if request.backend == pb.ONNX else "torch",
                 backend.parameter_bytes / 1e6, request.next_hop or "(last stage)", elapsed,
                 extra={"event": "assign", "stage": request.stage_name,
                        "model": request.model_name, "assignment_id": assignment_id,
                        "layers": f"{request.first_layer}-{request.last_layer}",
                        "next_hop": request.next_hop, "load_seconds": round(elapsed, 3)})
        return pb.AssignReply(assignment_id=assignment_id, parameter_bytes=backend.parameter_bytes,
                              load_seconds=elapsed)

    def Release(self, request: pb.ReleaseRequest,
                context: grpc.ServicerContext) -> pb.ReleaseReply:
        with self._assign_lock:
            held = self.runtime.assignment.epoch if self.runtime else 0
            if request.below_epoch and held >= request.below_epoch:
                return pb.ReleaseReply(released=False)  # a newer deployment owns this stage
            old, self.runtime = self.runtime, None
        if old is None:
            return pb.ReleaseReply(released=False)
        old.stop()
        log.info("released %s layers %d-%d", old.assignment.model_name,
                 old.assignment.first_layer, old.assignment.last_layer,
                 extra={"event": "release", "assignment_id": old.assignment_id})
        del old
        _give_back_memory()
        return pb.ReleaseReply(released=True)

    def PushWeights(self, request_iterator: Iterator[pb.WeightChunk],
                    context: grpc.ServicerContext) -> pb.PushWeightsReply:
        try:
            sha, received, already = self.cache.receive(request_iterator)
        except WeightPushError as exc:
            log.warning("weight push failed: %s", exc, extra={"event": "weight_push_error"})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.PushWeightsReply(sha256=sha, bytes_received=received, already_cached=already)

    def HasWeights(self, request: pb.HasWeightsRequest,
                   context: grpc.ServicerContext) -> pb.HasWeightsReply:
        try:
            return pb.HasWeightsReply(cached=self.cache.has(request.sha256))
        except WeightPushError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    # -- data path --------------------------------------------------------------------------------
    def Forward(self, request_iterator: Iterator[wire.Frame],
                context: grpc.ServicerContext) -> Iterator[wire.Frame]:
        self._open_data_call(context)
        try:
            route = Route(self.in_flight)
            context.add_callback(route.cancel)
            reader = threading.Thread(target=self._read_stream, args=(request_iterator, route),
                                      name="upstream-reader", daemon=True)
            reader.start()
            yield from route.results()
        finally:
            self.data_calls.add(-1)

    def Infer(self, request: wire.Frame, context: grpc.ServicerContext) -> wire.Frame:
        self._open_data_call(context)
        try:
            route = Route(self.in_flight)
            self._submit(request, route)
            route.input_done()
            remaining = context.time_remaining()
            try:
                result = route.next_result(timeout=remaining)
            except queue.Empty:
                result = None
        finally:
            self.data_calls.add(-1)
        if result is None:
            _abort(context, grpc.StatusCode.UNAVAILABLE, f"stage {self.name} stopped")
        if result.error.code:
            context.abort(status_from_int(result.error.code),
                          f"[{result.error.stage}] {result.error.message}")
        return result

    def _open_data_call(self, context: grpc.ServicerContext) -> None:
        """Count one data call, or refuse it while `max_streams` are open (never starve the
        control threads)."""
        if not self.data_calls.add_below(self.max_streams):
            self.metrics.error(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"stage {self.name} has {self.max_streams} streams open (its limit); "
                          "share one client per process (infer_many multiplexes) or raise "
                          "--max-streams")

    def _read_stream(self, request_iterator: Iterator[wire.Frame], route: Route) -> None:
        try:
            for frame in request_iterator:
                self._submit(frame, route)
        except grpc.RpcError:
            pass  # the sender went away; what it already sent is still answered
        except Exception:
            log.exception("upstream stream failed")
        finally:
            route.input_done()

    def _submit(self, frame: wire.Frame, route: Route) -> None:
        runtime = self.runtime
        if runtime is None:
            self.metrics.error(grpc.StatusCode.FAILED_PRECONDITION)
            route.expect()
            route.deliver(error_frame(frame, grpc.StatusCode.FAILED_PRECONDITION,
                                      f"stage {self.name} has no assignment; run "
                                      "`pipeedge-coord deploy hosts.yml` first", self.name))
            return
        if self.in_flight.value >= self.max_in_flight:
            self.metrics.error(grpc.StatusCode.RESOURCE_EXHAUSTED)
            route.expect()
            route.deliver(error_frame(
                frame, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"stage {self.name} has {self.in_flight.value} requests in flight (limit "
                f"{self.max_in_flight}); send fewer at once or raise --max-in-flight", self.name))
            return
        runtime.submit(frame, route)

    # -- status -----------------------------------------------------------------------------------
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StageStatus:
        rt = self.runtime
        status = pb.StageStatus(stage_name=self.name, device=self.device, threads=self.threads)
        if rt is None:
            return status
        qin, qout = rt.queue_depths()
        c = rt.counters
        status.assigned = True
        status.assignment.CopyFrom(rt.assignment)
        status.assignment_id = rt.assignment_id
        status.queue_in_depth, status.queue_out_depth = qin, qout
        status.in_flight = self.in_flight.value
        status.frames_processed, status.items_processed, status.errors = c.frames, c.items, c.errors
        status.compute_seconds = c.compute_s
        status.bytes_received, status.bytes_sent = c.bytes_in, c.bytes_out
        status.parameter_bytes = rt.backend.parameter_bytes
        if rt.compression:  # activation compression (adaptive.py)
            status.output_bits, status.link_mbps = rt.compression.bits, rt.compression.link_mbps
        fill_status(status, rt)  # assigned_seconds, energy_joules (metrics.py)
        return status

    # -- profiling and links ----------------------------------------------------------------------
    def Profile(self, request: pb.ProfileRequest,
                context: grpc.ServicerContext) -> Iterator[pb.ProfileEvent]:
        try:
            yield from profile_layers(request, cache_dir=self.cache.root.parent,
                                      default_threads=self.threads, default_device=self.device)
        except (ValueError, KeyError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"cannot profile {request.model_name[:100]}: {_one_line(exc)}")

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingReply:
        # Any peer that passed the handshake may ping: the reply is bounded so that pings cannot
        # be used to make this device allocate (8 x 128 MiB cost +750 MB before).
        if request.reply_bytes > MAX_PING_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"reply_bytes {request.reply_bytes} is over the limit of "
                          f"{MAX_PING_BYTES}; probe with smaller payloads")
        return pb.PingReply(payload=bytes(request.reply_bytes))

    def MeasureLink(self, request: pb.MeasureLinkRequest,
                    context: grpc.ServicerContext) -> pb.LinkMeasurement:
        if request.payload_bytes > MAX_PING_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"payload_bytes {request.payload_bytes} is over the limit of "
                          f"{MAX_PING_BYTES}")
        try:
            return measure_link(request.peer, payload_bytes=request.payload_bytes or 4_000_000,
                                repeats=request.repeats or 3, security=self.security)
        except grpc.RpcError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE,
                   f"stage {self.name} cannot reach peer {request.peer}: {exc.code().name}; "
                   "check that address from this device")

    def shutdown(self) -> None:
        with self._assign_lock:
            old, self.runtime = self.runtime, None
        if old:
            old.stop()


def _give_back_memory() -> None:
    """Return a dropped shard's freed heap to the OS. glibc keeps freed memory in the arena of
    the thread that allocated it (gRPC threads use several), so without this a stage's RSS
    stays near its largest shard and grows across reassignments: make bench's 4096 MB devices
    were OOM-killed that way after four deployments of ViT-Large and BERT-Large."""
    gc.collect()  # the old runtime's cycles, so its tensors are freed first
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    # Clipped: messages echo request fields, and a status over gRPC's 8 KB metadata limit
    # reaches the client as a confusing RESOURCE_EXHAUSTED (found by tests/integration/test_fuzz.py).
    return _clip(" ".join(text.split()))


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

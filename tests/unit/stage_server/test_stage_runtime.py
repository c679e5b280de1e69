"""The stage runtime in process (echo backend, no model, no sockets): the fence, the header check
and the promise that every accepted request is answered exactly once, also when the assignment is
replaced while requests arrive (issue 13 case 7)."""

from __future__ import annotations

import threading
import time

import grpc
import torch

from pipeedge import codec
from pipeedge._proto import stage_pb2 as pb
from pipeedge.stage_server.backends.echo_backend import EchoBackend
from pipeedge.stage_server.routing import InFlight, Route
from pipeedge.stage_server.runtime import StageRuntime

PER_ROUTE = 200


class SlowEcho(EchoBackend):
    """Echo that takes a moment, so queues fill and stop() meets work in every place."""

    def run(self, tensors):
        time.sleep(0.002)
        return super().run(tensors)


def _runtime(epoch: int = 7, first_layer: int = 1, backend=None) -> StageRuntime:
    assignment = pb.AssignRequest(stage_name="s", first_layer=first_layer, last_layer=4,
                                  backend=pb.ECHO, epoch=epoch)
    return StageRuntime(assignment, backend or EchoBackend(), "a1")


def _frame(rid: str, epoch: int, value: float = 1.0) -> pb.Frame:
    return codec.encode_tensors(pb.Frame(request_id=rid, epoch=epoch),
                                {"x": torch.full((2, 3), value)})


def _answers(route: Route, n: int) -> list[pb.Frame]:
    out = [route.next_result(timeout=10) for _ in range(n)]
    assert all(f is not None for f in out)
    return out


def test_the_fence_admits_only_its_own_epoch():
    rt = _runtime(epoch=7)
    route = Route()
    try:
        for rid, epoch in (("same", 7), ("unknown", 0), ("older", 6), ("newer", 8)):
            rt.submit(_frame(rid, epoch), route)
        got = {f.request_id: f for f in _answers(route, 4)}
    finally:
        rt.stop()
    assert not got["same"].error.code and got["same"].epoch == 7
    assert not got["unknown"].error.code and got["unknown"].epoch == 7  # stamped at layer 1
    for rid in ("older", "newer"):
        assert got[rid].error.code == grpc.StatusCode.ABORTED.value[0]
        assert "epoch" in got[rid].error.message and not got[rid].tensors


def test_epoch_zero_is_refused_past_the_first_layer():
    rt = _runtime(epoch=7, first_layer=5)
    route = Route()
    try:
        rt.submit(_frame("h", 0), route)
        [out] = _answers(route, 1)
    finally:
        rt.stop()
    assert out.error.code == grpc.StatusCode.ABORTED.value[0]


def test_a_frame_is_checked_on_its_header_before_decoding():
    class Expects(EchoBackend):
        def validate(self, tensors):
            if tensors["x"].dim() != 2:
                raise ValueError(f"tensor 'x' has {tensors['x'].dim()} dims, expected 2")
            assert tensors["x"].device.type == "meta"  # nothing decoded yet

    rt = _runtime(backend=Expects())
    route = Route()
    big = pb.Tensor(name="x", dtype=pb.FLOAT32, shape=[1, 1, 1 << 24], data=bytes(1 << 22),
                    encoding=pb.Encoding(kind=pb.Encoding.UNIFORM, bits=2, params=bytes(8)))
    try:
        rt.submit(pb.Frame(request_id="big", epoch=7, tensors=[big]), route)
        [out] = _answers(route, 1)
    finally:
        rt.stop()
    assert out.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "3 dims" in out.error.message


def test_stop_while_requests_arrive_answers_every_one_once():
    """Four upstream streams submit while the assignment is replaced: each request gets exactly
    one answer (a result or UNAVAILABLE) and the in-flight count returns to zero."""
    in_flight = InFlight()
    for _ in range(5):
        rt = _runtime(backend=SlowEcho())
        routes = [Route(in_flight) for _ in range(4)]

        def feed(rt: StageRuntime, route: Route, k: int) -> None:
            for i in range(PER_ROUTE):
                rt.submit(_frame(f"{k}-{i}", 7, float(i)), route)
            route.input_done()

        threads = [threading.Thread(target=feed, args=(rt, r, k)) for k, r in enumerate(routes)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        rt.stop()  # the assignment is replaced mid-stream
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a submitter is stuck after stop()"
        for k, route in enumerate(routes):
            answers = list(route.results())  # ends only when every request is answered
            ids = [f.request_id for f in answers]
            assert sorted(ids) == sorted(f"{k}-{i}" for i in range(PER_ROUTE))
            for f in answers:
                if f.error.code:
                    assert f.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
                else:  # a computed answer is the right one
                    i = int(f.request_id.split("-")[1])
                    assert codec.decode_tensors(f.tensors)["x"].eq(float(i)).all()
        assert in_flight.value == 0

"""The key records (pipeedge/records.py) and the pipeline file's format (pipeline_file.py)."""

import json

import pytest

from pipeedge import security
from pipeedge._proto import coordinator_pb2 as cpb
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.hosts import Host
from pipeedge.pipeline_file import Pipeline
from pipeedge.records import (
    CredentialPaths,
    LayerRange,
    PlannedStage,
    StageInfo,
    WeightsSource,
    WeightsSourceError,
)

# A pipeline file exactly as `pipeedge-coord deploy` wrote it before the typed fields (extra as
# an untyped dict): it must load, and saving it again must write the same JSON.
OLD_FILE = """{
  "model": "pipeedge/tiny-vit",
  "stages": [
    {"name": "a", "address": "127.0.0.1:5001", "first_layer": 1, "last_layer": 6,
     "backend": "torch", "device_type": "laptop"},
    {"name": "b", "address": "127.0.0.1:5002", "first_layer": 7, "last_layer": 12,
     "backend": "onnx", "device_type": ""}
  ],
  "microbatch": 4,
  "dtype": "float32",
  "weights": "local:/models/tiny-vit",
  "coordinator": "",
  "extra": {"version": 1765000000123, "parameter_bytes": [1000, 2000],
            "security": {"coordinator": {"ca": "/c/ca.crt", "cert": "/c/coordinator.crt",
                                         "key": "/c/coordinator.key"},
                         "client": {"ca": "/c/ca.crt", "token": "file:/c/token"}}},
  "model_config_json": "",
  "entry": "127.0.0.1:5001"
}"""


def test_a_pipeline_file_of_the_old_format_loads_typed_and_saves_unchanged(tmp_path):
    path = tmp_path / "pipeline.json"
    path.write_text(OLD_FILE)
    p = Pipeline.load(path)
    assert p.version == 1765000000123 and p.parameter_bytes == (1000, 2000)
    assert p.weights == WeightsSource("local", "/models/tiny-vit")
    assert p.weights_directory is not None and str(p.weights_directory) == "/models/tiny-vit"
    assert p.stages[1] == StageInfo("b", "127.0.0.1:5002", 7, 12, "onnx", "")
    assert p.stages[0].layers == LayerRange(1, 6) and p.entry == "127.0.0.1:5001"
    assert p.credentials is not None
    assert p.credentials.for_role("client") == {"ca": "/c/ca.crt", "token": "file:/c/token"}
    assert p.credentials.for_role("coordinator")["key"] == "/c/coordinator.key"
    p.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(OLD_FILE)


def test_minimal_and_newer_files_load():
    # Written by a hand or a test: no extra, no weights; a newer writer's unknown key is ignored.
    p = Pipeline.from_dict({"model": "m", "stages": [{"name": "a", "address": "x:1",
                                                       "first_layer": 1, "last_layer": 4}],
                            "extra": {}, "weights": "", "future_field": 1})
    assert (p.version, p.parameter_bytes, p.weights, p.credentials) == (0, (), None, None)
    assert p.weights_directory is None and security.for_pipeline(p) is None


def test_role_without_its_own_files_uses_the_coordinators():
    paths = CredentialPaths(coordinator={"ca": "/c/ca.crt"})
    assert paths.for_role("client") == paths.for_role("coordinator") == {"ca": "/c/ca.crt"}


def test_stage_info_to_proto_carries_every_proto_field():
    info = StageInfo("a", "10.0.0.1:5001", 3, 9, "onnx", "jetson")
    msg = info.to_proto()
    assert isinstance(msg, cpb.PipelineStage)
    for f in cpb.PipelineStage.DESCRIPTOR.fields:  # a field added to the proto needs a value
        assert getattr(msg, f.name) == getattr(info, f.name), f.name


def test_planned_stage_becomes_the_stage_the_file_records():
    host = Host("jet", "10.0.0.2:50051", device_type="jetson", peer_address="jet:50051",
                encoding="uniform:8")
    assert PlannedStage(host, LayerRange(5, 8)).deployed("torch") == StageInfo(
        "jet", "10.0.0.2:50051", 5, 8, "torch", "jetson")
    onnx = Host("pi", "10.0.0.3:50051", backend="onnx")
    assert PlannedStage(onnx, LayerRange(1, 4)).deployed("torch").backend == "onnx"


@pytest.mark.parametrize(("text", "source", "proto"), [
    ("random", WeightsSource("random", seed=0), pb.WeightSource(random_seed=0)),
    ("random:7", WeightsSource("random", seed=7), pb.WeightSource(random_seed=7)),
    ("local:/m/x", WeightsSource("local", "/m/x"), pb.WeightSource(local_path="/m/x")),
    ("push:/here", WeightsSource("push", "/here"), pb.WeightSource(pushed_sha256="ab")),
])
def test_weights_source_text_and_proto(text, source, proto):
    parsed = WeightsSource.parse(text)
    assert parsed == source
    assert WeightsSource.parse(parsed.describe()) == parsed  # the pipeline file's text
    assert parsed.to_proto(pushed_sha256="ab") == proto
    assert (parsed.directory is None) == (source.kind == "random")


@pytest.mark.parametrize(("value", "needle"), [
    ("s3:/bucket", "weights source 's3' is unknown"),
    ("push", "needs a path"),
    ("random:seven", "seed 'seven' must be a whole number"),
    ({"source": "local"}, "needs a path"),
])
def test_bad_weights_sources_name_the_fix(value, needle):
    with pytest.raises(WeightsSourceError, match=needle):
        WeightsSource.parse(value)

"""Security: mutual TLS, coordinator-only control calls, bearer tokens, verified weight pushes,
and the no-pickle / safe-YAML audit. Real stage processes on loopback, like test_pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import torch
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2

from pipeedge import channels, models, security
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client import AsyncPipelineClient, PipelineClient, PipelineError
from pipeedge.coordinator import certs as certs_mod
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.cli import main as coord_cli
from pipeedge.coordinator.hosts import HostsFileError, load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.security import Security, SecurityError
from pipeedge.stage_server.weight_cache import WeightCache, WeightPushError

MODEL = "pipeedge/tiny-vit"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _forget_default_credentials():
    """Tests that use the process default (use_pipeline, environment) start clean."""
    yield
    security.reset_default()


def unsplit(inputs):
    info = models.model_info(MODEL)
    full = models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, 0))
    with torch.inference_mode():
        return full(inputs)


def stub(address: str, sec: Security | None) -> pb_grpc.StageStub:
    # Security() = plaintext, explicitly (None would mean the process default).
    return pb_grpc.StageStub(channels.open_channel(address, security=sec or Security()))


def assignment_id(cluster: LocalCluster, index: int = 0) -> str:
    st = stub(cluster.stages[index].address, cluster.security("coordinator")).Status(
        pb.StatusRequest(), timeout=10)
    return st.assignment_id


def refused(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args, timeout=10, **kw)
        if hasattr(result, "__next__"):  # server streaming: the status comes with the stream
            list(result)
    return err.value


# -- certificates ---------------------------------------------------------------------------------
def test_certs_command_issues_ca_host_coordinator_and_client_certs(tmp_path):
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(yaml.safe_dump({"model": MODEL, "tls": "certs", "token": "file:certs/token",
                                     "hosts": [{"name": "laptop", "address": "127.0.0.1:50051"},
                                               {"name": "jetson", "address": "jetson.lan:50052",
                                                "peer_address": "10.0.0.7:50052"}]}))
    out = tmp_path / "certs"
    result = CliRunner().invoke(coord_cli, ["certs", str(hosts), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "created CA" in result.output and "tls: " in result.output
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())

    def load(name):
        cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(v) for v in san.get_values_for_type(x509.DNSName)] + \
                    [str(v) for v in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        return cn, eku, names

    assert load("laptop") == ("laptop", {ExtendedKeyUsageOID.SERVER_AUTH,
                                         ExtendedKeyUsageOID.CLIENT_AUTH}, ["127.0.0.1"])
    assert load("jetson")[2] == ["jetson.lan", "10.0.0.7"]
    assert load("coordinator")[0] == "coordinator"
    assert load("client")[:2] == ("client", {ExtendedKeyUsageOID.CLIENT_AUTH})
    for key in ("ca.key", "laptop.key", "coordinator.key", "client.key", "token"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600, key
    # The hosts.yml that names those files now loads, with the coordinator identity.
    dep = load_deployment(hosts)
    assert dep.security.mutual_tls and dep.security.token
    assert dep.client_security.paths()["cert"].endswith("client.crt")
    # A second run keeps the CA (certificates issued before stay valid).
    again = CliRunner().invoke(coord_cli, ["certs", str(hosts), "--out", str(out)])
    assert "reused CA" in again.output
    assert x509.load_pem_x509_certificate((out / "ca.crt").read_bytes()) == ca
    # A host may not pose as the coordinator.
    hosts.write_text(yaml.safe_dump({"model": MODEL, "hosts": [
        {"name": "coordinator", "address": "10.0.0.1:50051"}]}))
    bad = CliRunner().invoke(coord_cli, ["certs", str(hosts), "--out", str(out)])
    assert bad.exit_code == 2 and "reserved name 'coordinator'" in bad.output


def test_hosts_yml_tls_and_token_fields(tmp_path, monkeypatch):
    certs_mod.make_certs([SimpleNamespace(name="a", address="127.0.0.1:1")], tmp_path / "c")

    def load(**fields):
        path = tmp_path / "hosts.yml"
        path.write_text(yaml.safe_dump({"model": MODEL, "hosts": [{"address": "127.0.0.1:1"}],
                                        **fields}))
        return load_deployment(path)

    assert load().security is None  # plaintext, as before
    mapping = load(tls={"ca": "c/ca.crt", "cert": "c/coordinator.crt",
                        "key": "c/coordinator.key"}, token="file:c/token")
    assert mapping.security.mutual_tls and mapping.client_security.paths()["cert"].endswith(
        "coordinator.crt")  # no client_cert given: clients use the same files
    monkeypatch.setenv("PE_TEST_TOKEN", "t0k3n-from-env")
    assert load(token="env:PE_TEST_TOKEN").security.token == "t0k3n-from-env"
    # Loading hosts.yml sets no process default: control calls pass `dep.control_security`.
    assert security.default() is None
    with pytest.raises(HostsFileError, match="unknown tls field.*'certificate'"):
        load(tls={"certificate": "x"})
    with pytest.raises(HostsFileError, match="missing/ca.crt not found.*pipeedge-coord certs"):
        load(tls="missing")
    with pytest.raises(HostsFileError, match="printable ASCII"):
        load(token="has space")
    with pytest.raises(SecurityError, match="needs its key"):
        Security.from_files(cert=tmp_path / "c" / "a.crt")


def test_stage_cli_rejects_incomplete_tls_flags_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeedge.stage_server.cli", "--port", "0",
                           "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key",
                           str(tmp_path / "nope.key")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "certificate file" in proc.stderr and "pipeedge-coord certs" in proc.stderr


# -- a secured pipeline ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """Two stages with mutual TLS and a token, deployed by the coordinator identity."""
    workdir = tmp_path_factory.mktemp("secured")
    with LocalCluster(2, threads=1, workdir=workdir, tls=True, token=True) as cluster:
        dep = load_deployment(cluster.hosts_file(MODEL, partition="1,3,4,12", microbatch=4))
        pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
        pipeline.save(workdir / "pipeline.json")
        security.reset_default()
        yield cluster, pipeline
    security.reset_default()


def test_secured_pipeline_serves_clients_with_certificate_and_token(secured):
    cluster, pipeline = secured
    info = models.model_info(MODEL)
    batches = [models.example_inputs(info, 2, seed=s) for s in range(3)]
    # The SDK takes the client credentials deploy recorded in the pipeline file.
    with PipelineClient(pipeline_file=cluster.workdir / "pipeline.json") as client:
        results = list(client.infer_many(batches, window=2))
        one = client.infer(batches[0])
    for b, r in zip(batches, results):
        assert (r["logits"] - unsplit(b)["logits"]).abs().max().item() <= 1e-5
    assert torch.equal(one["logits"], results[0]["logits"])

    async def run():
        async with AsyncPipelineClient(pipeline.entry,
                                       security=cluster.security("client")) as client:
            return await client.infer(batches[1])

    assert torch.equal(asyncio.run(run())["logits"], results[1]["logits"])
    # The hop stage0 -> stage1 ran over mutual TLS with the token, and the coordinator's
    # status call is accepted.
    st = StageControl("stage1", cluster.stages[1].address,
                      security=cluster.security("coordinator")).status()
    assert st.assigned and st.frames_processed >= 5


def test_cli_commands_pass_the_pipeline_files_credentials(secured):
    """status and infer on a secured pipeline use the credentials deploy recorded, passed to
    each channel (no process default is set: a plaintext channel would be refused)."""
    cluster, _ = secured
    pfile = str(cluster.workdir / "pipeline.json")
    status = CliRunner().invoke(coord_cli, ["status", "--pipeline", pfile])
    assert status.exit_code == 0, status.output
    # Without the recorded credentials both stages show DOWN (Status refused).
    assert [line.split()[2] for line in status.output.splitlines()[2:4]] == ["up", "up"]
    infer = CliRunner().invoke(coord_cli, ["infer", "--pipeline", pfile, "--random", "2"])
    assert infer.exit_code == 0, infer.output
    assert security.default() is None  # nothing was installed for the process


def test_control_calls_only_from_the_coordinator_identity(secured):
    cluster, pipeline = secured
    address = cluster.stages[0].address
    before = assignment_id(cluster)
    bad_assign = pb.AssignRequest(model_name=MODEL, first_layer=1, last_layer=12,
                                  weights=pb.WeightSource(random_seed=7))
    for identity in ("client", "stage1"):  # valid certificates of this CA, wrong identity
        s = stub(address, cluster.security(identity))
        for call, arg in ((s.Assign, bad_assign), (s.Release, pb.ReleaseRequest()),
                          (s.PushWeights, iter([pb.WeightChunk(sha256="0" * 64, total_bytes=1,
                                                               data=b"x")])),
                          (s.HasWeights, pb.HasWeightsRequest(sha256="0" * 64)),
                          (s.Profile, pb.ProfileRequest(model_name=MODEL)),
                          (s.MeasureLink, pb.MeasureLinkRequest(peer=cluster.stages[1].address))):
            err = refused(call, arg)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (identity, call)
            assert f"from '{identity}'" in err.details() and "coordinator" in err.details()
            assert "pipeedge-coord certs" in err.details() and "\n" not in err.details()
        # Read-only status and link probes stay open to any peer of the deployment.
        assert s.Status(pb.StatusRequest(), timeout=10).assigned
        s.Ping(pb.PingRequest(), timeout=10)
    # No client certificate, a certificate from another CA (even one named "coordinator"), or
    # plaintext: the TLS handshake refuses them before any method runs.
    other = certs_mod.make_certs([], cluster.workdir / "other-ca", token=False)
    forged = Security.from_files(ca=cluster.certs_dir / "ca.crt",
                                 cert=other.out_dir / "coordinator.crt",
                                 key=other.out_dir / "coordinator.key")
    for sec in (Security.from_files(ca=cluster.certs_dir / "ca.crt"), forged, None):
        err = refused(stub(address, sec).Assign, bad_assign)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    # Nothing above changed the stage: same assignment, still serving.
    assert assignment_id(cluster) == before
    with PipelineClient(pipeline.entry, security=cluster.security("client")) as client:
        client.infer(models.example_inputs(models.model_info(MODEL), 1))


def test_inference_needs_the_bearer_token(secured):
    cluster, pipeline = secured
    address = cluster.stages[0].address
    frame = pb.Frame(request_id="r")
    models_info = models.model_info(MODEL)
    from pipeedge import codec

    codec.encode_tensors(frame, models.example_inputs(models_info, 1))
    no_token = stub(address, cluster.security("client", token=False))
    err = refused(no_token.Infer, frame)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a bearer token" in err.details() and "token" in err.details()
    err = refused(lambda *a, **k: list(no_token.Forward(iter([frame]), **k)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    token = cluster.token_path.read_text().strip()
    for header in ("Bearer wrong-token-123", f"Basic {token}", "Bearer", f"{token}", "",
                   f"Bearer {token}x", "Bearer " + "A" * 4000):
        err = refused(no_token.Infer, frame, metadata=(("authorization", header),))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, header
    # The same call with the token passes (case-insensitive scheme, like HTTP).
    out = no_token.Infer(frame, timeout=10, metadata=(("authorization", f"bearer {token}"),))
    assert not out.error.code and out.tensors
    # The SDK's token= overrides whatever the credentials carry.
    with PipelineClient(pipeline.entry, security=cluster.security("client"),
                        token="wrong-token-456") as client, \
            pytest.raises(PipelineError, match="token is wrong") as err:
        client.infer(models.example_inputs(models_info, 1))
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_coordinator_serves_pipeline_info_over_mutual_tls_with_token(secured, standard_services):
    """`pipeedge-coord serve` answers GetPipeline with the deployment's own security: clients
    need a certificate of the CA and the token; the SDK passes its credentials to it."""
    from pipeedge._proto import coordinator_pb2 as cpb
    from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc
    from pipeedge.coordinator.control_plane import ControlPlane, start_server

    cluster, _ = secured
    dep = load_deployment(cluster.workdir / "hosts.yml")
    plane = ControlPlane(dep, pipeline_path=cluster.workdir / "served.json")
    plane.deploy()
    server, port = start_server(plane, "127.0.0.1:0")
    security.reset_default()
    address = f"127.0.0.1:{port}"
    try:
        batch = models.example_inputs(models.model_info(MODEL), 2, seed=5)
        with PipelineClient(coordinator=address, security=cluster.security("client")) as client:
            assert client.version == plane.version and client.address == plane.pipeline.entry
            assert (client.infer(batch)["logits"] - unsplit(batch)["logits"]).abs().max() <= 1e-5

        def get_pipeline(sec, timeout):
            with channels.open_channel(address, security=sec) as channel:
                return cpb_grpc.CoordinatorStub(channel).GetPipeline(cpb.GetPipelineRequest(),
                                                                    timeout=timeout)

        # Like every server: standard health service and reflection, open to any peer of the CA.
        with channels.open_channel(address, security=cluster.security("client")) as channel:
            status, names = standard_services(channel, "pipeedge.v1.Coordinator")
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert {"pipeedge.v1.Coordinator", "grpc.health.v1.Health"} <= names
        err = refused(get_pipeline, cluster.security("client", token=False))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "token" in err.details()
        for sec in (None, Security.from_files(ca=cluster.certs_dir / "ca.crt")):
            assert refused(get_pipeline, sec).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
        plane.stop()


def test_token_only_stage_guards_data_and_control(cluster_factory):
    cluster = cluster_factory(1, token="shared-secret-token")
    address = cluster.stages[0].address
    plain = stub(address, None)
    for call, arg in ((plain.Infer, pb.Frame()), (plain.Status, pb.StatusRequest()),
                      (plain.Assign, pb.AssignRequest(model_name=MODEL, first_layer=1,
                                                      last_layer=12))):
        err = refused(call, arg)  # Status too: it shows the topology (next hop, layers)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with_token = stub(address, Security(token="shared-secret-token"))
    assert not with_token.Status(pb.StatusRequest(), timeout=10).assigned
    with_token.Assign(pb.AssignRequest(model_name=MODEL, first_layer=1, last_layer=12),
                      timeout=60)
    with PipelineClient(address, token="shared-secret-token") as client:
        x = models.example_inputs(models.model_info(MODEL), 1)
        assert (client.infer(x)["logits"] - unsplit(x)["logits"]).abs().max().item() <= 1e-5


# -- weights --------------------------------------------------------------------------------------
def _chunks(blob: bytes, sha: str, total: int | None = None, size: int = 1000):
    for i in range(0, max(len(blob), 1), size):
        c = pb.WeightChunk(data=blob[i:i + size])
        if i == 0:
            c.sha256, c.total_bytes = sha, len(blob) if total is None else total
        yield c


def test_weight_cache_verifies_hash_size_and_bounds(tmp_path):
    cache = WeightCache(tmp_path / "w", max_blob_bytes=10_000, max_total_bytes=25_000)
    blob = os.urandom(8000)
    sha = hashlib.sha256(blob).hexdigest()
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(WeightPushError, match="does not match announced"):
        cache.receive(_chunks(tampered, sha))
    with pytest.raises(WeightPushError, match="more than the announced"):
        cache.receive(_chunks(blob, sha, total=100))
    with pytest.raises(WeightPushError, match="ended after"):
        cache.receive(_chunks(blob, sha, total=9000))
    with pytest.raises(WeightPushError, match="exceeds this stage's limit"):
        cache.receive(_chunks(blob, sha, total=20_000))
    with pytest.raises(WeightPushError, match="not a lowercase hex sha256"):
        cache.receive(_chunks(blob, "../../etc/passwd"))
    assert not cache.has(sha) and not list(cache.root.iterdir())  # nothing kept, no .part
    assert cache.receive(_chunks(blob, sha)) == (sha, 8000, False)
    assert cache.verify(sha)
    # Total bound: older blobs are evicted to make room, least recently used first.
    shas = [sha]
    for i in range(3):
        b = os.urandom(8000)
        shas.append(cache.receive(_chunks(b, hashlib.sha256(b).hexdigest()))[0])
    assert cache.total_bytes() <= 25_000 and not cache.has(shas[0]) and cache.has(shas[-1])
    # A blob changed on disk after it was verified is never used again.
    path = cache.path(shas[-1])
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    assert not cache.verify(shas[-1]) and not path.exists()


def test_pushed_weights_tampered_in_transit_or_on_disk_are_refused(secured):
    cluster, _ = secured
    coord = StageControl("stage1", cluster.stages[1].address,
                         security=cluster.security("coordinator"))
    info = models.model_info(MODEL)
    blob = models.save_safetensors_bytes(models.load_shard_state(info, 4, 12, 3))
    sha = hashlib.sha256(blob).hexdigest()
    tampered = bytearray(blob)
    tampered[len(blob) // 2] ^= 0xFF
    err = refused(coord.stub.PushWeights, _chunks(bytes(tampered), sha, size=1 << 16))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in err.details()
    assert not coord.stub.HasWeights(pb.HasWeightsRequest(sha256=sha), timeout=10).cached
    before = assignment_id(cluster, 1)
    assert coord.push_weights(blob) == sha
    cached = cluster.workdir / "cache" / "stage1" / "weights" / f"{sha}.safetensors"
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    request = pb.AssignRequest(model_name=MODEL, first_layer=4, last_layer=12,
                               weights=pb.WeightSource(pushed_sha256=sha))
    err = refused(coord.stub.Assign, request)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "changed on disk" in err.details()
    assert assignment_id(cluster, 1) == before and not cached.exists()
    coord.close()


# -- audit ----------------------------------------------------------------------------------------
def _sources():
    for folder in ("pipeedge", "stage_server", "coordinator", "bench", "examples"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_pickle_and_yaml_loaded_safely():
    """Nothing the stages, the coordinator or clients read may run code when loaded."""
    bad = []
    for path in _sources():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            where = f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            if re.search(r"\bimport (c?pickle|dill|marshal|shelve)\b|\bpickle\.|joblib\.load",
                         code):
                bad.append(where)
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(where)
            if re.search(r"allow_pickle\s*=\s*True", code):
                bad.append(where)
            if re.search(r"\bnp\.load\(", code) and "allow_pickle=False" not in code:
                bad.append(where)
            # yaml.safe_load, or yaml.load with the (C) SafeLoader; never the full/unsafe ones.
            if re.search(r"yaml\.(full_load|unsafe_load|full_load_all|unsafe_load_all)\(|"
                         r"yaml\.(C?Loader|C?FullLoader|C?UnsafeLoader)\b", code):
                bad.append(where)
            if re.search(r"yaml\.load(_all)?\(", code) and not re.search(
                    r"Loader\s*=\s*(yaml\.)?(C?SafeLoader|_SafeLoader)\b", code):
                bad.append(where)
    assert not bad, "unsafe deserialization:\n" + "\n".join(bad)

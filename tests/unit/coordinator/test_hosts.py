import pytest

from pipeedge.coordinator.hosts import HostsFileError, load_deployment, parse_weights


def test_example_hosts_file_loads():
    dep = load_deployment("coordinator/hosts.example.yml")
    assert dep.model == "google/vit-base-patch16-224"
    assert dep.partition == "1,24,25,48"
    assert [h.name for h in dep.ordered_hosts()] == ["laptop", "jetson"]
    assert dep.weights.kind == "random"


def test_overrides_and_order(tmp_path):
    p = tmp_path / "hosts.yml"
    p.write_text("model: bert-base-uncased\norder: [b, a]\npartition: [1, 10, 11, 48]\n"
                 "hosts:\n  - {name: a, address: 'x:1'}\n  - {name: b, address: 'y:2'}\n")
    dep = load_deployment(p, partition="1,2,3,48")
    assert dep.partition == "1,2,3,48"
    assert [h.name for h in dep.ordered_hosts()] == ["b", "a"]


@pytest.mark.parametrize("text,needle", [
    ("hosts: []\n", "no 'hosts'"),
    ("hosts:\n  - {address: 'x:1'}\n", "no model: and weights are not a directory"),
    ("model: m\nhosts:\n  - {name: a}\n", "needs at least 'address'"),
    ("model: m\nhosts:\n  - {name: a, address: 'x:1'}\n  - {name: a, address: 'y:1'}\n",
     "unique"),
    ("model: m\nweights: s3:/x\nhosts:\n  - {address: 'x:1'}\n", "weights source 's3'"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_hosts_files(tmp_path, text, needle):
    p = tmp_path / "hosts.yml"
    p.write_text(text)
    with pytest.raises(HostsFileError, match=needle):
        load_deployment(p)


def test_missing_hosts_file(tmp_path):
    with pytest.raises(HostsFileError, match="not found"):
        load_deployment(tmp_path / "nope.yml")


def test_weight_shorthands():
    assert parse_weights("random:7").seed == 7
    assert parse_weights("push:/m").kind == "push"
    assert parse_weights({"source": "local", "path": "/m"}).path == "/m"
    with pytest.raises(HostsFileError, match="needs a path"):
        parse_weights("local")


def test_credentials_are_the_deployments_not_the_process(tmp_path, monkeypatch):
    from pipeedge import security

    (tmp_path / "token").write_text("s3cr3t-token\n")
    monkeypatch.setenv("PIPEEDGE_TOKEN_FILE", str(tmp_path / "token"))  # a stage's/client's
    security.reset_default()
    try:
        secured, plain = tmp_path / "secured.yml", tmp_path / "plain.yml"
        secured.write_text("model: pipeedge/tiny-vit\ntoken: file:token\n"
                           "hosts:\n  - {address: '127.0.0.1:1'}\n")
        plain.write_text("model: pipeedge/tiny-vit\nhosts:\n  - {address: '127.0.0.1:1'}\n")
        assert load_deployment(secured).control_security.token == "s3cr3t-token"
        # Plaintext hosts.yml: control calls stay plaintext, whatever the environment holds.
        assert not load_deployment(plain).control_security.enabled
        # Loading set no process default: channels opened without credentials still read the
        # environment, as they did before any hosts.yml was loaded.
        assert security.default().token == "s3cr3t-token"
    finally:
        security.reset_default()

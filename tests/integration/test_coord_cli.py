"""The `pipeedge-coord` commands as a user runs them, against real stage processes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pipeedge.coordinator.cli import main


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_deploy_status_infer_bench_release(cluster_factory, minilm_path):
    cluster = cluster_factory(3)
    model = "sentence-transformers/all-MiniLM-L6-v2"
    hosts = cluster.hosts_file(model, partition="1,8,9,16,17,24", weights=f"local:{minilm_path}")
    pfile = cluster.workdir / "pipeline.json"
    code, out = run("deploy", str(hosts), "--no-progress")
    assert code == 0, out
    assert "stage2" in out and "17-24" in out and "deployed on 3 stage(s)" in out
    assert json.loads(pfile.read_text())["entry"] == cluster.stages[0].address

    code, out = run("infer", "--pipeline", str(pfile), "--text", "A cat sits on the mat.",
                    "--text", "A kitten is sitting on a rug.", "--text", "Quarterly taxes are due.")
    assert code == 0, out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("+", "-"))]
    assert "kitten" in lines[0] and "cat" in lines[0]  # the most similar pair comes first

    code, out = run("bench", "--pipeline", str(pfile), "-n", "6", "-b", "2", "--no-progress")
    assert code == 0 and "items/s" in out and "p99" in out, out

    code, out = run("status", "--pipeline", str(pfile))
    assert code == 0 and out.count(" up ") == 3, out

    code, out = run("release", "--pipeline", str(pfile))
    assert code == 0 and out.count("released") == 3, out
    code, out = run("status", "--pipeline", str(pfile))
    assert out.count("empty") == 3, out


def test_deploy_errors_are_one_line(cluster_factory, tmp_path):
    cluster = cluster_factory(2)
    model = "pipeedge/tiny-vit"
    cases = [
        (model, "1,3,5,12", "gap at stage 2"),
        (model, "1,2,3,4,5,12", "3 stages but hosts.yml lists 2"),
        (model, "1,3,4,13", "ends at layer 13"),
        ("no/such-model", "1,3,4,12", "unknown model 'no/such-model'"),
    ]
    for i, (name, partition, needle) in enumerate(cases):
        hosts = cluster.hosts_file(name, partition=partition, path=tmp_path / f"hosts{i}.yml")
        code, out = run("deploy", str(hosts), "--no-progress")
        assert code == 2 and needle in out, (needle, out)
        assert len(out.strip().splitlines()) == 1, out
    cluster.kill(1)
    code, out = run("deploy", str(cluster.hosts_file(model, partition="1,3,4,12")),
                    "--no-progress")
    assert code == 2 and "host stage1 (127.0.0.1:" in out and "unreachable" in out, out
    missing = cluster.hosts_file(model, partition="1,12", weights="local:/nonexistent/model")
    code, out = run("deploy", str(missing), "--no-progress", "--partition", "1,12")
    assert code == 2 and "/nonexistent/model does not exist" in out, out

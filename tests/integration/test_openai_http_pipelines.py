"""One `serve-http` app fronting a real decoder pipeline and the real all-MiniLM-L6-v2 split
over local stages, called with the official openai client: both models listed, embeddings equal
to the unsplit model (float and base64, strings and token ids), completions equal to the SDK."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

from pipeedge import models
from pipeedge.apps.openai_http import load_services, make_app, running
from pipeedge.client import TextGenerator
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.inputs import text_inputs
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.partition import parse_partition

openai = pytest.importorskip("openai")

GPT = "pipeedge/tiny-gpt2"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["A man is eating food.", "PipeEdge splits transformers across edge devices.",
         "The weather is lovely today."]


def deploy_on(cluster, first, model, partition, weights, name):
    """Deploy `model` on two of the cluster's stages, from index `first`."""
    path = cluster.hosts_file(model, partition=partition, weights=weights,
                              path=cluster.workdir / f"{name}.yml")
    data = yaml.safe_load(path.read_text())
    data["hosts"] = data["hosts"][first:first + 2]
    data["pipeline_file"] = str(cluster.workdir / f"{name}.json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    dep = load_deployment(path)
    ranges = parse_partition(partition, dep.model_info().num_layers)
    stages = [deploy_mod.PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    return deploy_mod.deploy(dep, stages, progress=False).save(data["pipeline_file"])


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_path):
    with LocalCluster(4, threads=1, workdir=tmp_path_factory.mktemp("http")) as cluster:
        gpt = deploy_on(cluster, 0, GPT, "1,6,7,12", "random:0", "gpt")
        minilm = deploy_on(cluster, 2, MINILM, "1,12,13,24", f"push:{minilm_path}", "minilm")
        with running(make_app(load_services([gpt, minilm]))) as url:
            yield url, gpt


@pytest.fixture(scope="module")
def reference(minilm_path):
    info = models.model_info(MINILM)
    inputs = text_inputs(TEXTS, minilm_path, info)
    with torch.no_grad():
        return models.build_reference(info, minilm_path)(inputs)["embeddings"], inputs


def test_models_lists_both_pipelines(served):
    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == [GPT, MINILM]
    assert client.models.retrieve(MINILM).id == MINILM


def test_embeddings_equal_the_unsplit_model(served, reference, minilm_path):
    url, _ = served
    want, inputs = reference
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    out = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    got = torch.tensor([d.embedding for d in out.data])
    assert got.shape == (3, 384) and float((got - want).abs().max()) <= 1e-5
    assert [d.index for d in out.data] == [0, 1, 2]
    assert out.usage.prompt_tokens == out.usage.total_tokens == int(inputs["attention_mask"].sum())
    # The client asks for base64 unless told otherwise; one string; token ids.
    one = client.embeddings.create(model=MINILM, input=TEXTS[1]).data[0].embedding
    assert float((torch.tensor(one) - want[1]).abs().max()) <= 1e-5
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    by_ids = client.embeddings.create(model=MINILM, input=[ids], encoding_format="float")
    assert float((torch.tensor(by_ids.data[0].embedding) - want[0]).abs().max()) <= 1e-5


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"model": MINILM, "input": "x", "dimensions": 128}, "dimensions", 400),
    ({"model": MINILM, "input": "x", "encoding_format": "int8"}, "encoding_format", 400),
    ({"model": MINILM, "input": []}, "input", 400),
    ({"model": MINILM, "input": [[1, 2], "x"]}, "input", 400),
    ({"model": MINILM, "input": [[10 ** 9]]}, "input", 400),
    ({"model": GPT, "input": "x"}, "model", 400),
])
def test_embedding_errors(served, body, param, status):
    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.post("/embeddings", body=body, cast_to=object)
    err = e.value.response.json()["error"]
    assert e.value.status_code == status and err["param"] == param, err
    assert err["type"] == "invalid_request_error"


def test_completions_and_chat_next_to_the_encoder(served):
    url, gpt = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with TextGenerator(pipeline_file=gpt) as gen:
        expected = gen.complete("Hello", max_new_tokens=6)
    out = client.completions.create(model=GPT, prompt="Hello", max_tokens=6, temperature=0)
    assert out.choices[0].text == expected.text
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MINILM, prompt="Hello")
    assert e.value.response.json()["error"]["param"] == "model"
    kw = {"model": GPT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
          "temperature": 0.8, "seed": 3, "n": 2}
    streamed = {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    whole = client.chat.completions.create(**kw)
    assert {c.index: c.message.content for c in whole.choices} == streamed


# -- LangChain's OpenAI classes against the same server ------------------------------------------
def test_langchain_chat_completions_and_embeddings(served, reference):
    lc = pytest.importorskip("langchain_openai")
    url, gpt = served
    want, _ = reference
    common = {"base_url": url + "/v1", "api_key": "x", "max_retries": 0}
    with TextGenerator(pipeline_file=gpt) as gen:
        expected = gen.complete("Hello", max_new_tokens=6).text
    llm = lc.OpenAI(model=GPT, temperature=0, max_tokens=6, **common)
    assert llm.invoke("Hello") == expected
    assert "".join(llm.stream("Hello")) == expected
    chat = lc.ChatOpenAI(model=GPT, temperature=0, max_tokens=5, **common)
    official = openai.OpenAI(**common).chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0)
    answer = chat.invoke("Hi")
    assert answer.content == official.choices[0].message.content
    assert answer.usage_metadata["output_tokens"] == official.usage.completion_tokens
    assert "".join(c.content for c in chat.stream("Hi")) == answer.content
    # No tiktoken: the server tokenizes (LangChain would otherwise fetch OpenAI's encodings).
    emb = lc.OpenAIEmbeddings(model=MINILM, check_embedding_ctx_length=False, **common)
    got = torch.tensor(emb.embed_documents(TEXTS))
    assert got.shape == (3, 384) and float((got - want).abs().max()) <= 1e-5
    one = torch.tensor(emb.embed_query(TEXTS[2]))
    assert float((one - want[2]).abs().max()) <= 1e-5

"""The HTTP layer of `serve-http` with the official openai client and httpx, on a fake
generator (no stages): keep-alive after refusals, ids with '/', OpenAI error shapes, 405,
CORS, chunked bodies, early stream failures, bearer tokens, size limits and 429."""

from __future__ import annotations

import threading

import grpc
import httpx
import pytest

from pipeedge.apps.openai_http import make_app, running
from pipeedge.apps.openai_service import CompletionService
from pipeedge.client.generate import TokenEvent
from pipeedge.errors import PipelineError
from pipeedge.tokenizer import ByteTokenizer

openai = pytest.importorskip("openai")

MODEL = "pipeedge/fake-gpt"
TOKEN = "s3cret-token-for-tests"


class FakeGenerator:
    """What `CompletionService` uses of a `TextGenerator`: each run yields the prompt's bytes
    back, one token each, then finishes with "length"."""

    model = MODEL
    max_positions = 64

    def __init__(self) -> None:
        self.tokenizer = ByteTokenizer()
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False

    def encode_prompt(self, prompt):
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def generate_many(self, runs, params, *, concurrency=4):
        if self.fail:
            raise PipelineError("stage s0 is down", code=grpc.StatusCode.UNAVAILABLE)
        for i, run in enumerate(runs):
            for k, tid in enumerate(run[:params.max_new_tokens]):
                if k:  # the first token always comes, so a stream can start
                    self.gate.wait(10)
                last = k == min(len(run), params.max_new_tokens) - 1
                yield TokenEvent(i, tid, self.tokenizer.decode([tid]),
                                 "length" if last else None)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def server(request):
    gen = FakeGenerator()
    kwargs = getattr(request, "param", {})
    with running(make_app([CompletionService(gen)], **kwargs)) as url:
        yield gen, url
    assert gen.closed  # the app closes its services when it stops


def client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "unused"),
                         max_retries=0, **kw)


def error_of(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


def test_models_and_ids_with_slash(server):
    _, url = server
    c = client(url)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL  # sent as pipeedge%2Ffake-gpt
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("other/model")
    assert error_of(e)["param"] == "model" and error_of(e)["code"] == "model_not_found"


def test_completion_chat_and_stream(server):
    _, url = server
    c = client(url)
    out = c.completions.create(model=MODEL, prompt="hello", max_tokens=3, temperature=0)
    assert out.choices[0].text == "hel" and out.usage.completion_tokens == 3
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 8
    out = c.completions.create(model=MODEL, prompt="abc", max_tokens=2, top_p=0)  # allowed
    assert out.choices[0].finish_reason == "length"


def test_a_refused_call_does_not_break_the_next_on_the_same_connection(server):
    _, url = server
    c = client(url)
    with pytest.raises(openai.NotFoundError):
        c.post("/nope", body={"model": MODEL, "prompt": "x" * 5000}, cast_to=object)
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model=MODEL, prompt="x" * 5_000_000)
    assert e.value.status_code == 413
    assert c.completions.create(model=MODEL, prompt="ok", max_tokens=2).choices[0].text == "ok"
    with httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1)) as h:
        assert h.post("/nope", json={"prompt": "y" * 10_000}).status_code == 404
        assert h.get("/v1/models").json()["data"][0]["id"] == MODEL


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"temperature": 2.5}, "temperature", "from 0 to 2"),
    ({"temperature": -1}, "temperature", "from 0 to 2"),
    ({"top_p": 1.5}, "top_p", "from 0 to 1"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be >= 1"),
    ({"max_tokens": 100}, "max_tokens", "maximum context length"),
    ({"n": "2"}, "n", "n must be an integer"),
    ({"logprobs": 3}, "logprobs", "logprobs"),
    ({"stop": [1]}, "stop", "stop must be"),
    ({"model": "gpt-4"}, "model", "not served here"),
])
def test_bad_parameters_have_openai_error_shapes(server, body, param, needle):
    _, url = server
    with pytest.raises(openai.APIStatusError) as e:
        client(url).completions.create(**{"model": MODEL, "prompt": "x", **body})
    err = error_of(e)
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert needle in err["message"] and "max_new_tokens" not in err["message"]


def test_routes_methods_and_bodies(server):
    _, url = server
    with httpx.Client(base_url=url) as h:
        r = h.get("/v1/nowhere")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
        r = h.get("/v1/completions")
        assert r.status_code == 405 and "POST" in r.headers["allow"]
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = h.options("/v1/completions", headers={"Origin": "http://x.example",
                                                  "Access-Control-Request-Method": "POST"})
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = h.post("/v1/completions", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]

        def chunked():
            yield b'{"model": "pipeedge/fake-gpt", '
            yield b'"prompt": "chunks", "max_tokens": 6}'
        r = h.post("/v1/completions", content=chunked(),
                   headers={"Content-Type": "application/json"})
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "chunks"


@pytest.mark.parametrize("server", [{"cors_origins": ["http://app.example"]}], indirect=True)
def test_cors_for_configured_origins(server):
    _, url = server
    with httpx.Client(base_url=url) as h:
        r = h.options("/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = h.get("/v1/models", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = h.options("/v1/models", headers={"Origin": "http://evil.example",
                                             "Access-Control-Request-Method": "GET"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_a_stream_that_fails_before_its_first_token_is_an_http_error(server):
    gen, url = server
    gen.fail = True
    with pytest.raises(openai.APIStatusError) as e:
        client(url).completions.create(model=MODEL, prompt="x", stream=True)
    assert e.value.status_code == 503
    assert error_of(e)["type"] == "server_error" and "stage s0 is down" in \
        error_of(e)["message"]


@pytest.mark.parametrize("server", [{"token": TOKEN}], indirect=True)
def test_bearer_token(server):
    _, url = server
    with pytest.raises(openai.AuthenticationError) as e:
        client(url, api_key="wrong-token").models.list()
    assert error_of(e)["code"] == "invalid_api_key"
    assert client(url, api_key=TOKEN).models.list().data[0].id == MODEL
    assert httpx.get(url + "/health").status_code == 200  # probes need no token


@pytest.mark.parametrize("server", [{"max_body_bytes": 1000, "max_concurrency": 1}],
                         indirect=True)
def test_size_limit_and_429_with_retry_after(server):
    gen, url = server
    with httpx.Client(base_url=url) as h:
        r = h.post("/v1/completions", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = h.post("/v1/completions", content=iter([b'{"prompt": "', b"x" * 2000, b'"}']))
        assert r.status_code == 413
        gen.gate.clear()  # the first generation holds its slot until released
        with h.stream("POST", "/v1/completions",
                      json={"prompt": "ab", "stream": True, "max_tokens": 2}) as first:
            assert first.status_code == 200
            r = h.post("/v1/completions", json={"prompt": "cd", "max_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
            gen.gate.set()
            assert b"[DONE]" in first.read()
        r = h.post("/v1/completions", json={"prompt": "cd", "max_tokens": 2})
        assert r.status_code == 200

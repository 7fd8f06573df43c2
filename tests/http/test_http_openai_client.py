"""The official `openai` client against the real server and a real tiny model on loopback."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from http_live import CHAT_TEMPLATE, LiveServer

from diffill_http.app import ServerConfig
from diffill_http.chat import ChatTemplate, load_chat_template
from diffusion_core.engine import Engine

PREFIX = "def fibonacci(n: int) -> int:\n    if n < 2:\n        return "
SUFFIX = "\n    a, b = 0, 1\n"


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_completion_with_suffix_matches_engine(server: LiveServer, engine: Engine) -> None:
    resp = client(server.url).completions.create(
        model=engine.model_id, prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0
    )
    expected = engine.infill(PREFIX, SUFFIX, max_tokens=12)
    assert resp.object == "text_completion"
    assert resp.model == engine.model_id
    assert len(resp.choices) == 1
    assert resp.choices[0].text == expected.text
    assert resp.choices[0].finish_reason == ("length" if expected.stop_reason == "length" else "stop")
    p_ids, s_ids = engine.fit_context(PREFIX, SUFFIX)
    assert resp.usage.prompt_tokens == len(p_ids) + len(s_ids)
    assert resp.usage.completion_tokens == expected.tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_models_list(server: LiveServer, engine: Engine) -> None:
    models = client(server.url).models.list()
    assert [m.id for m in models.data] == [engine.model_id]
    assert client(server.url).models.retrieve(engine.model_id).id == engine.model_id


def test_streaming_through_openai_client(server: LiveServer, engine: Engine) -> None:
    expected = engine.infill(PREFIX, SUFFIX, max_tokens=10)
    stream = client(server.url).completions.create(
        model=engine.model_id,
        prompt=PREFIX,
        suffix=SUFFIX,
        max_tokens=10,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.text
            if ch.finish_reason is not None:
                finish[ch.index] = ch.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    assert texts == {0: expected.text, 1: expected.text}  # greedy: both choices agree
    assert set(finish) == {0, 1}
    assert usage is not None and usage.completion_tokens == 2 * expected.tokens


def test_stop_sequences_and_echo(server: LiveServer, engine: Engine) -> None:
    full = engine.infill(PREFIX, SUFFIX, max_tokens=16).text
    assert len(full) >= 2
    stop = full[1:3]  # guaranteed to occur, after the first character
    resp = client(server.url).completions.create(
        model=engine.model_id, prompt=PREFIX, suffix=SUFFIX, max_tokens=16, stop=[stop], echo=True
    )
    cut = full[: full.find(stop)]
    assert resp.choices[0].text == PREFIX + cut
    assert resp.choices[0].finish_reason == "stop"


def test_multiple_prompts_keep_their_order(server: LiveServer, engine: Engine) -> None:
    prompts = ["import os\n", "class Counter:\n    def ", "function sum(values) {\n  "]
    before = server.batcher.stats().requests
    resp = client(server.url).completions.create(
        model=engine.model_id, prompt=prompts, suffix="\n", max_tokens=8, n=2
    )
    assert [c.index for c in resp.choices] == list(range(6))
    for c in resp.choices:
        assert c.text == engine.infill(prompts[c.index // 2], "\n", max_tokens=8).text
    assert server.batcher.stats().requests - before == 3  # greedy copies are computed once


def test_sampled_choices_are_computed_separately(server: LiveServer, engine: Engine) -> None:
    before = server.batcher.stats().requests
    resp = client(server.url).completions.create(
        model=engine.model_id, prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=1.5, n=3, seed=3
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert server.batcher.stats().requests - before == 3


def test_sampling_with_seed_is_reproducible(server: LiveServer, engine: Engine) -> None:
    kw = dict(model=engine.model_id, prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=1.0, seed=7)
    a = client(server.url).completions.create(**kw).choices[0].text
    b = client(server.url).completions.create(**kw).choices[0].text
    assert a == b


def test_chat_on_base_model_is_a_clear_400(server: LiveServer, engine: Engine) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(server.url).chat.completions.create(
            model=engine.model_id, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 400
    assert "not an instruct model" in info.value.message
    assert info.value.code == "not_an_instruct_model"


def test_chat_on_instruct_model(instruct_model_dir) -> None:  # noqa: ANN001
    eng = Engine.from_pretrained(instruct_model_dir, device="cpu")
    template = load_chat_template(instruct_model_dir)
    assert template is not None and template.source == CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a loop."}]
    rendered = template.render(messages)
    assert rendered.endswith("<|im_start|>assistant\n")
    expected = eng.infill(rendered, "", max_tokens=12)
    with LiveServer(eng, chat_template=template) as srv:
        c = client(srv.url)
        resp = c.chat.completions.create(model=eng.model_id, messages=messages, max_tokens=12)
        assert resp.object == "chat.completion"
        assert resp.choices[0].message.role == "assistant"
        assert resp.choices[0].message.content == expected.text
        assert resp.usage.completion_tokens == expected.tokens

        parts = c.chat.completions.create(
            model=eng.model_id,
            max_tokens=12,
            stream=True,
            messages=[messages[0], {"role": "user", "content": [{"type": "text", "text": "Write a loop."}]}],
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in parts if ch.choices) == expected.text

        with pytest.raises(openai.BadRequestError, match="tool messages are not supported"):
            c.chat.completions.create(
                model=eng.model_id,
                max_tokens=4,
                messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}],
            )


def test_chat_template_is_sandboxed(engine: Engine) -> None:
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with LiveServer(engine, chat_template=evil) as srv:
        r = httpx.post(
            srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 400
        assert "unsafe" in r.json()["error"]["message"]
        assert httpx.get(srv.url + "/health").status_code == 200


def test_api_key(engine: Engine) -> None:
    with LiveServer(engine, config=ServerConfig(api_key="s3cret")) as srv:
        assert client(srv.url, "s3cret").models.list().data[0].id == engine.model_id
        with pytest.raises(openai.AuthenticationError) as info:
            client(srv.url, "wrong").completions.create(model=engine.model_id, prompt="x", max_tokens=2)
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        r = httpx.get(srv.url + "/v1/models")  # no header at all
        assert r.status_code == 401 and json.loads(r.text)["error"]["type"] == "invalid_request_error"
        assert httpx.get(srv.url + "/health").status_code == 200  # load balancers probe without a key

"""`jaxserve run -tp 2` on two forced CPU devices answers chat, streams, n>1 and logprobs as the
one-device session server does: the same tokens, logprobs within float32 rounding.

The device count must be set before jax is imported, so the tensor-parallel server is a
subprocess; the one-device reference is the session's live server (tests/entrypoints/conftest.py).
"""

from __future__ import annotations

import openai
import pytest

from tests.support.subprocess_server import start_server, stop

KEY = "tp-key"
MESSAGES = [[{"role": "user", "content": f"Tell me about {topic}."}]
            for topic in ("the sea", "prime numbers", "a b c d e f g h i j k l m n o p" * 3)]


@pytest.fixture(scope="module")
def tp_client(tmp_path_factory):
    proc, url, log = start_server(
        tmp_path_factory.mktemp("tp-server"), "-tp", "2",
        env={"JAXSERVE_API_KEY": KEY, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    try:
        assert "tensor parallel 2" in log.read_text()
        yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        finally:
            stop(proc)


def chat(client, model, **kwargs):
    return [client.chat.completions.create(model=model, messages=m, max_tokens=24,
                                           temperature=0, **kwargs) for m in MESSAGES]


def test_chat_and_logprobs_match_one_device(tp_client, openai_client, live_server):
    one = chat(openai_client, live_server.model, logprobs=True, top_logprobs=3)
    two = chat(tp_client, live_server.model, logprobs=True, top_logprobs=3)
    for a, b in zip(one, two):
        assert b.choices[0].message.content == a.choices[0].message.content
        assert b.usage.completion_tokens == a.usage.completion_tokens
        for x, y in zip(a.choices[0].logprobs.content, b.choices[0].logprobs.content):
            assert y.token == x.token and y.logprob == pytest.approx(x.logprob, abs=1e-4)
            assert [t.token for t in y.top_logprobs] == [t.token for t in x.top_logprobs]


def test_streams_and_n_samples_match_one_device(tp_client, openai_client, live_server):
    def streamed(client):
        stream = client.chat.completions.create(
            model=live_server.model, messages=MESSAGES[0], max_tokens=24, temperature=0,
            stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage.completion_tokens

    def samples(client):
        reply = client.chat.completions.create(
            model=live_server.model, messages=MESSAGES[1], max_tokens=16, temperature=0.9,
            seed=11, n=3)
        return [c.message.content for c in reply.choices]

    assert streamed(tp_client) == streamed(openai_client)
    assert samples(tp_client) == samples(openai_client)

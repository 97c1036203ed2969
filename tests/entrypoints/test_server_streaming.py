"""Streams under load and clients that go away: many concurrent streams, a dropped stream, a
dropped non-streamed request, a client that stops reading."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "Tell me a story"}]


def test_16_concurrent_streams(http, live_server):
    """Eight raw SSE readers (checking every line) and eight openai SDK streams at once."""
    reference = http.post("/v1/chat/completions", json={
        "messages": HELLO, "max_tokens": 8, "temperature": 0, "ignore_eos": True}).json()
    expected = reference["choices"][0]["message"]["content"]

    async def one(client: httpx.AsyncClient) -> tuple[str, list[str], str]:
        body = {"messages": HELLO, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                "stream": True}
        text, finishes, last = "", [], ""
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line:
                    continue
                last = line
                if line == "data: [DONE]":
                    continue
                chunk = httpx.Response(200, content=line[6:]).json()
                for choice in chunk["choices"]:
                    text += choice["delta"].get("content", "")
                    if choice["finish_reason"]:
                        finishes.append(choice["finish_reason"])
        return text, finishes, last

    async def one_sdk(client: openai.AsyncOpenAI) -> tuple[str, list[str], str]:
        stream = await client.chat.completions.create(
            model=live_server.model, messages=HELLO, max_tokens=8, temperature=0, stream=True,
            extra_body={"ignore_eos": True})
        text, finishes = "", []
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes += [choice.finish_reason] if choice.finish_reason else []
        return text, finishes, "data: [DONE]"  # the SDK consumes [DONE] itself

    async def main():
        sdk = openai.AsyncOpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                                 max_retries=0)
        async with httpx.AsyncClient(base_url=live_server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {live_server.api_key}"},
                                     limits=httpx.Limits(max_connections=32)) as client:
            results = await asyncio.gather(*(one(client) for _ in range(8)),
                                           *(one_sdk(sdk) for _ in range(8)))
        await sdk.close()
        return results

    for text, finishes, last in asyncio.run(main()):
        assert text == expected
        assert finishes == ["length"]
        assert last == "data: [DONE]"


def _generated(live_server) -> int:
    return live_server.engine.stats.generation_tokens


@pytest.fixture
def slow_steps(live_server, monkeypatch):
    """Each device call takes at least 20 ms, so a full-length request outlasts the drop however
    fast the machine: the tiny model otherwise decodes ~400 tokens within the 0.5 s timeout."""
    runner = live_server.engine.runner
    launch = runner.launch

    def slow_launch(inputs):
        time.sleep(0.02)
        return launch(inputs)

    monkeypatch.setattr(runner, "launch", slow_launch)


def test_dropped_stream_frees_its_pages(live_server, slow_steps):
    max_tokens = live_server.max_model_len - 120  # far more than the few steps before the drop
    allocator = live_server.engine.allocator
    free_before = allocator.num_free_pages
    before = _generated(live_server)
    headers = {"Authorization": f"Bearer {live_server.api_key}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client:
        body = {"messages": HELLO, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    held = free_before - allocator.num_free_pages  # the stream's, mid-stream
                    break  # leaving the block closes the connection mid-stream
    assert held > 0
    deadline = time.monotonic() + 10
    while allocator.num_free_pages != free_before:
        assert time.monotonic() < deadline, (
            f"{free_before - allocator.num_free_pages} pages still held after the drop")
        time.sleep(0.02)
    assert not live_server.engine.requests  # aborted: the engine holds nothing for it
    allocator.check_all_free()
    assert _generated(live_server) - before < max_tokens // 2  # aborted, not run to the end


def test_dropped_plain_request_is_aborted(live_server, slow_steps):
    max_tokens = live_server.max_model_len - 120
    before = _generated(live_server)
    headers = {"Authorization": f"Bearer {live_server.api_key}"}
    with (httpx.Client(base_url=live_server.url, headers=headers, timeout=0.5) as client,
          pytest.raises(httpx.ReadTimeout)):
        client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": max_tokens,
                                             "ignore_eos": True, "n": 2})
    live_server.wait_idle()
    assert _generated(live_server) - before < max_tokens  # two samples, far from the end


def test_client_that_stops_reading_does_not_stall_others(http, live_server):
    headers = {"Authorization": f"Bearer {live_server.api_key}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as slow:
        body = {"messages": HELLO, "max_tokens": 64, "ignore_eos": True, "stream": True}
        with slow.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            next(lines)  # one line, then not another until the others are done
            for _ in range(3):
                reply = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 4},
                                  timeout=20)
                assert reply.status_code == 200
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"

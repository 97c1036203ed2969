"""POST /v1/chat/completions against a live server: response and stream shapes, n>1, logprobs,
stops, usage, and the openai package parsing it all."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

HELLO = [{"role": "user", "content": "Hello there"}]


def chat(http, **body) -> dict:
    body.setdefault("messages", HELLO)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def chat_stream(http, **body) -> list[dict | str]:
    body.setdefault("messages", HELLO)
    return http.sse("/v1/chat/completions", body)


def prompt_len(live_server, messages) -> int:
    text = live_server.tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=True)
    return len(live_server.tokenizer(text, add_special_tokens=False).input_ids)


def streamed_text(events: list, index: int = 0) -> str:
    return "".join(c["delta"].get("content", "") for e in events[:-1] if isinstance(e, dict)
                   for c in e["choices"] if c["index"] == index)


def test_response_shape_and_usage(http, live_server):
    body = chat(http, max_tokens=5, temperature=0, ignore_eos=True)
    ChatCompletion.model_validate(body)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == live_server.model
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_len(live_server, HELLO)
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


def test_stream_options_without_include_usage_ask_for_usage_as_vllm_does(http):
    with_options = chat_stream(http, max_tokens=3, temperature=0, ignore_eos=True,
                               stream_options={"continuous_usage_stats": False})
    assert with_options[-2]["choices"] == [] and with_options[-2]["usage"]["completion_tokens"] == 3
    plain = chat_stream(http, max_tokens=3, temperature=0, ignore_eos=True)
    assert all(not chunk.get("usage") for chunk in plain[:-1])


def test_stream_shape(http):
    events = chat_stream(http, max_tokens=6, temperature=0, ignore_eos=True,
                         stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["object"] == "chat.completion.chunk"
    assert len({c["id"] for c in chunks}) == 1
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["delta"] for chunk in chunks[1:] for c in chunk["choices"])
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]
                if c["finish_reason"]]
    assert finishes == ["length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert all("usage" not in chunk for chunk in chunks[:-1])


def test_streamed_text_equals_plain_text_at_temperature_0(http):
    plain = chat(http, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
    assert streamed_text(chat_stream(http, max_tokens=12, temperature=0)) == plain


def test_seeded_sampling_is_reproducible(http):
    first = chat(http, max_tokens=10, temperature=1.0, seed=1234, n=2)
    again = chat(http, max_tokens=10, temperature=1.0, seed=1234, n=2)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert texts[0] != texts[1], first  # each sample has its own random stream


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices(http, stream):
    n = 3
    if not stream:
        body = chat(http, max_tokens=4, n=n, temperature=1.0, ignore_eos=True)
        assert [c["index"] for c in body["choices"]] == list(range(n))
        assert body["usage"]["completion_tokens"] == 4 * n
        return
    events = chat_stream(http, max_tokens=4, n=n, temperature=1.0, ignore_eos=True,
                         stream_options={"include_usage": True})
    chunks = events[:-1]
    roles = [c["index"] for chunk in chunks for c in chunk["choices"] if "role" in c["delta"]]
    assert roles == list(range(n))  # each index's role chunk comes before its content
    finishes = sorted(c["index"] for chunk in chunks for c in chunk["choices"]
                      if c["finish_reason"])
    assert finishes == list(range(n))
    assert chunks[-1]["usage"]["completion_tokens"] == 4 * n


def test_logprobs(http, live_server):
    body = chat(http, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    (choice,) = body["choices"]
    entries = choice["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    for entry in entries:
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert entry["token"] == top[0]["token"]  # greedy picks the most likely token
        assert entry["logprob"] == pytest.approx(top[0]["logprob"])
        assert entry["bytes"] == list(entry["token"].encode())


def test_logprobs_without_top(http):
    body = chat(http, max_tokens=3, temperature=0, logprobs=True)
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == 3 and all(e["top_logprobs"] == [] for e in entries)


def test_streamed_logprobs_one_per_token(http):
    events = chat_stream(http, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2,
                         ignore_eos=True)
    entries = [e for chunk in events[:-1] for c in chunk["choices"] if c["logprobs"]
               for e in c["logprobs"]["content"]]
    assert len(entries) == 5


def test_stop_string(http):
    reference = chat(http, max_tokens=20, temperature=1.0, seed=7, ignore_eos=True)
    text = reference["choices"][0]["message"]["content"]
    stop = text[4:6]
    cut = text.index(stop)
    body = chat(http, max_tokens=20, temperature=1.0, seed=7, ignore_eos=True, stop=stop)
    choice = body["choices"][0]
    assert choice["message"]["content"] == text[:cut]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    kept = chat(http, max_tokens=20, temperature=1.0, seed=7, ignore_eos=True, stop=[stop],
                include_stop_str_in_output=True)
    assert kept["choices"][0]["message"]["content"] == text[:cut + len(stop)]
    streamed = chat_stream(http, max_tokens=20, temperature=1.0, seed=7, ignore_eos=True,
                           stop=stop)
    assert streamed_text(streamed) == text[:cut]


def test_max_completion_tokens_wins(http):
    body = chat(http, max_tokens=9, max_completion_tokens=2, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 2


def test_unknown_fields_are_ignored(http):
    greedy = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    body = chat(http, **greedy, parallel_tool_calls=True, metadata={"a": "b"}, store=False,
                something_new={"x": [1, 2]})
    ChatCompletion.model_validate(body)
    plain = chat(http, **greedy)
    # the same reply as without them: the fields changed nothing
    assert body["choices"] == plain["choices"] and body["usage"] == plain["usage"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


def test_text_parts_tools_and_names_reach_the_template(http, live_server):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
         "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    # tool_choice "none": no tool prompt; the tiny template knows no tools, so the calls and the
    # result are written as text (structured/tool_prompt.py)
    body = chat(http, messages=messages, max_tokens=2, tool_choice="none",
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\nb"},
                {"role": "assistant",
                 "content": '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'},
                {"role": "user", "content": "<tool_response>\n42\n</tool_response>"}]
    assert body["usage"]["prompt_tokens"] == prompt_len(live_server, expected)


def test_continue_final_message(http, live_server):
    messages = [*HELLO, {"role": "assistant", "content": "Sure, "}]
    body = chat(http, messages=messages, max_tokens=2, add_generation_prompt=False,
                continue_final_message=True)
    text = live_server.tokenizer.apply_chat_template(messages, tokenize=False,
                                                    continue_final_message=True)
    assert text.endswith("Sure, ")
    assert body["usage"]["prompt_tokens"] == len(
        live_server.tokenizer(text, add_special_tokens=False).input_ids)


def test_openai_sdk_sync(live_server):
    client = openai.OpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                           max_retries=0)
    reply = client.chat.completions.create(model=live_server.model, messages=HELLO,
                                           max_tokens=4, temperature=0, logprobs=True,
                                           top_logprobs=2)
    assert reply.choices[0].message.role == "assistant"
    assert len(reply.choices[0].logprobs.content) == reply.usage.completion_tokens
    pieces = []
    stream = client.chat.completions.create(model=live_server.model, messages=HELLO,
                                            max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        pieces.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage
    assert "".join(pieces) == reply.choices[0].message.content
    assert usage.completion_tokens == reply.usage.completion_tokens
    live_server.wait_idle()


def test_openai_sdk_async(live_server):
    async def main():
        client = openai.AsyncOpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                                    max_retries=0)
        plain = await client.chat.completions.create(
            model=live_server.model, messages=HELLO, max_tokens=4, temperature=0, n=2)
        stream = await client.chat.completions.create(
            model=live_server.model, messages=HELLO, max_tokens=4, temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return plain, text

    plain, text = asyncio.run(main())
    assert [c.index for c in plain.choices] == [0, 1]
    assert text == plain.choices[0].message.content
    live_server.wait_idle()


def test_usage_reports_prefix_cached_tokens(http, live_server):
    """A long prompt sent twice: the second time its full pages come from the prefix cache."""
    messages = [{"role": "system", "content": "You are terse. " * 20}, *HELLO]
    first = chat(http, messages=messages, max_tokens=2, temperature=0)
    second = chat(http, messages=messages, max_tokens=2, temperature=0)
    page = live_server.engine.config.cache.page_size
    prompt_tokens = second["usage"]["prompt_tokens"]
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] <= cached
    assert prompt_tokens - page <= cached < prompt_tokens
    assert cached % page == 0
    assert first["choices"][0]["message"] == second["choices"][0]["message"]

"""POST /v1/completions against a live server: prompt forms, n, echo, logprobs, streaming."""

from __future__ import annotations

import openai
import pytest
from openai.types import Completion


def complete(http, **body) -> dict:
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    Completion.model_validate(response.json())
    return response.json()


def validate_chunk(chunk: dict) -> None:
    """The openai package types a completion chunk as a Completion, whose finish_reason may
    not be null, yet OpenAI's own streams send null until the end (the SDK does not validate
    them); check everything else."""
    choices = [{**c, "finish_reason": c["finish_reason"] or "length"} for c in chunk["choices"]]
    Completion.model_validate({**chunk, "choices": choices})


def ids(live_server, text: str) -> list[int]:
    return live_server.tokenizer(text, add_special_tokens=True).input_ids


def test_string_prompt_shape_and_default_max_tokens(http, live_server):
    body = complete(http, prompt="Once upon a time", ignore_eos=True)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": len(ids(live_server, "Once upon a time")),
                             "completion_tokens": 16,  # OpenAI's default max_tokens
                             "total_tokens": len(ids(live_server, "Once upon a time")) + 16,
                             "prompt_tokens_details": {"cached_tokens": 0}}  # under a page


def test_list_of_strings_with_n(http, live_server):
    prompts = ["first", "second prompt"]
    body = complete(http, prompt=prompts, n=2, max_tokens=3, ignore_eos=True, temperature=0)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == sum(len(ids(live_server, p)) for p in prompts)
    assert body["usage"]["completion_tokens"] == 4 * 3
    one = complete(http, prompt="second prompt", max_tokens=3, ignore_eos=True, temperature=0)
    assert body["choices"][2]["text"] == one["choices"][0]["text"]  # prompt 1 is choices 2, 3


def test_token_id_prompts(http, live_server):
    tokens = ids(live_server, "abc")
    by_ids = complete(http, prompt=tokens, max_tokens=4, temperature=0)
    by_text = complete(http, prompt="abc", max_tokens=4, temperature=0)
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_ids["usage"]["prompt_tokens"] == len(tokens)
    many = complete(http, prompt=[tokens, tokens[:2]], max_tokens=2)
    assert len(many["choices"]) == 2
    assert many["usage"]["prompt_tokens"] == len(tokens) + 2


def test_echo(http, live_server):
    plain = complete(http, prompt="Echo me", max_tokens=3, temperature=0)
    echoed = complete(http, prompt="Echo me", max_tokens=3, temperature=0, echo=True)
    assert echoed["choices"][0]["text"] == "Echo me" + plain["choices"][0]["text"]
    from_ids = complete(http, prompt=ids(live_server, "Echo me"), max_tokens=3, temperature=0,
                        echo=True)
    assert from_ids["choices"][0]["text"] == echoed["choices"][0]["text"]


def test_logprobs(http):
    body = complete(http, prompt="Count", max_tokens=5, temperature=0, logprobs=2,
                    ignore_eos=True)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 5
    if "\ufffd" not in "".join(logprobs["tokens"]):  # a piece of a character shows as U+FFFD
        assert "".join(logprobs["tokens"]) == body["choices"][0]["text"]
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                   logprobs["top_logprobs"]):
        # the top 2, plus the chosen token when it is not among them; fewer when tokens share
        # a string (pieces of characters all show as U+FFFD)
        assert 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the chosen is the best
        assert token in top
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0
    assert offsets == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(5)]


def test_stream(http):
    plain = complete(http, prompt=["a", "b"], max_tokens=4, temperature=0, ignore_eos=True)
    events = http.sse("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 4,
                                          "temperature": 0, "ignore_eos": True,
                                          "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        validate_chunk(chunk)
    texts = {0: "", 1: ""}
    finishes = []
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"]:
                finishes.append(choice["index"])
    assert sorted(finishes) == [0, 1]
    assert [texts[0], texts[1]] == [c["text"] for c in plain["choices"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_stream_echo_comes_first(http):
    events = http.sse("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "echo": True,
                                          "temperature": 0})
    assert events[0]["choices"][0]["text"].startswith("Hi")
    text = "".join(c["text"] for e in events[:-1] for c in e["choices"])
    plain = complete(http, prompt="Hi", max_tokens=2, echo=True, temperature=0)
    assert text == plain["choices"][0]["text"]


def test_stream_logprobs_offsets_continue(http):
    events = http.sse("/v1/completions", {"prompt": "Go", "max_tokens": 4, "logprobs": 1,
                                          "temperature": 0, "ignore_eos": True})
    offsets = [o for e in events[:-1] for c in e["choices"] if c["logprobs"]
               for o in c["logprobs"]["text_offset"]]
    tokens = [t for e in events[:-1] for c in e["choices"] if c["logprobs"]
              for t in c["logprobs"]["tokens"]]
    assert len(tokens) == 4
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(4)]


def test_openai_sdk(live_server):
    client = openai.OpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                           max_retries=0)
    reply = client.completions.create(model=live_server.model, prompt="Say", max_tokens=3,
                                      temperature=0, logprobs=1)
    assert reply.object == "text_completion" and len(reply.choices[0].logprobs.tokens) >= 1
    stream = client.completions.create(model=live_server.model, prompt="Say", max_tokens=3,
                                       temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == reply.choices[0].text
    live_server.wait_idle()

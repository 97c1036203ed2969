"""Every client mistake gets its status and OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "Hello"}]


def assert_error(response: httpx.Response, status: int, param: str | None = None,
                 code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


CHAT_400 = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),  # more samples than the engine runs at once
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"logit_bias": {"not-an-id": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias"),
    ({"top_k": -3}, "top_k"),
    ({"seed": 2**70}, "seed"),
    ({"temperature": "hot"}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"add_generation_prompt": True, "continue_final_message": True}, "continue_final_message"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": [None]}]}]},
     "messages[0].tool_calls[0].function"),
]


@pytest.mark.parametrize(("fields", "param"), CHAT_400, ids=[p for _, p in CHAT_400])
def test_chat_400(http, fields, param):
    body = {"messages": HELLO, "max_tokens": 2, **fields}
    if body["messages"] is None:
        del body["messages"]
    assert_error(http.post("/v1/chat/completions", json=body), 400, param)


@pytest.mark.parametrize("raw", [b"{", b"", b"[1, 2]", b"null", b"\xff\xfe"])
def test_malformed_body(http, raw):
    response = http.post("/v1/chat/completions", content=raw,
                         headers={"content-type": "application/json"})
    assert_error(response, 400)


COMPLETION_400 = [
    ({"logprobs": 21}, "logprobs"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["text", [1, 2]]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),  # a token id outside the vocabulary
    ({"prompt": [5, 2**63], "echo": True}, "prompt"),  # ... which echo must not try to decode
    ({"prompt": ""}, "prompt"),
    ({"suffix": "tail"}, "suffix"),
    ({"best_of": 3}, "best_of"),
]


@pytest.mark.parametrize(("fields", "param"), COMPLETION_400, ids=[p for _, p in COMPLETION_400])
def test_completion_400(http, fields, param):
    body = {"prompt": "Hi", "max_tokens": 2, **fields}
    assert_error(http.post("/v1/completions", json=body), 400, param)


def test_context_length_exceeded(http, live_server):
    too_long = http.post("/v1/chat/completions",
                         json={"messages": HELLO, "max_tokens": live_server.max_model_len})
    assert_error(too_long, 400, code="context_length_exceeded")
    long_prompt = [{"role": "user", "content": "word " * live_server.max_model_len}]
    assert_error(http.post("/v1/chat/completions", json={"messages": long_prompt}), 400,
                 code="context_length_exceeded")
    assert_error(http.post("/v1/completions", json={"prompt": [5] * live_server.max_model_len}),
                 400, code="context_length_exceeded")


def test_model_not_found(http):
    for path, body in [("/v1/chat/completions", {"messages": HELLO}),
                       ("/v1/completions", {"prompt": "Hi"})]:
        assert_error(http.post(path, json={**body, "model": "gpt-9"}), 404, "model",
                     "model_not_found")


def test_api_key(live_server):
    body = {"messages": HELLO, "max_tokens": 1}
    with httpx.Client(base_url=live_server.url) as client:
        assert_error(client.post("/v1/chat/completions", json=body), 401,
                     code="invalid_api_key")
        wrong = {"Authorization": "Bearer not-the-key"}
        assert_error(client.post("/v1/chat/completions", json=body, headers=wrong), 401)
        assert_error(client.get("/v1/models", headers=wrong), 401)
        assert client.get("/health").status_code == 200  # probes carry no key
        assert client.get("/metrics").status_code == 200


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


def test_sdk_sees_error_codes(live_server):
    client = openai.OpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                           max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=live_server.model, messages=HELLO,
                                       max_tokens=10**6)
    assert bad.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live_server.base_url, api_key="wrong", max_retries=0) \
            .models.list()


def test_still_serving_after_errors(http):
    for _ in range(3):
        assert http.post("/v1/chat/completions", content=b"{").status_code == 400
    ok = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["finish_reason"] in ("length", "stop")

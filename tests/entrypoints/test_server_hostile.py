"""Hostile input: deep nesting, odd bodies and oversized fields each get a 4xx in OpenAI's shape,
with nothing worse than a warning in the log, and the server keeps serving."""

from __future__ import annotations

import logging

import httpx
import msgspec
import pytest

from jaxserve.config import ConfigError, ServerConfig, load_config
from jaxserve.entrypoints.errors import APIError, decode_request
from jaxserve.json_nesting import nesting_depth
from tests.entrypoints.test_server_errors import HELLO, assert_error

BODIES = {
    "/v1/chat/completions": {"messages": HELLO, "max_tokens": 1},
    "/v1/completions": {"prompt": "hi", "max_tokens": 1},
    "/tokenize": {"prompt": "hi"},
    "/detokenize": {"tokens": [1, 2]},
}


def nested(body: dict, depth: int) -> bytes:
    """body with an ignored field nested ``depth`` levels (the body's own object is one more)."""
    return msgspec.json.encode(body)[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"


def post_raw(http, path: str, raw: bytes, content_type: str = "application/json"):
    return http.post(path, content=raw, headers={"content-type": content_type})


@pytest.fixture
def no_tracebacks(caplog):
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("path", list(BODIES))
def test_deep_nesting_is_a_400_naming_the_limit(http, path, no_tracebacks):
    error = assert_error(post_raw(http, path, nested(BODIES[path], 3000)), 400,
                         code="nesting_too_deep")
    assert "128" in error["message"] and "max_nesting_depth" in error["message"]
    assert post_raw(http, path, nested(BODIES[path], 127)).status_code == 200


def test_brackets_inside_strings_do_not_count(http):
    response = http.post("/tokenize", json={"prompt": "[{" * 3000})
    assert response.status_code == 200, response.text


def test_nesting_depth_scan():
    assert nesting_depth(b"[" * 300 + b"]" * 300, 128) == 300
    assert nesting_depth(b'{"a": "[[[[\\"[[[[", "b": [[1]]}', 2) <= 3
    assert nesting_depth(b'[' * 10 + b'"]]]]]]]]]]"' + b'[' * 10, 15) == 20
    with pytest.raises(APIError) as info:
        decode_request(b'{"a": [[[1]]]}', dict, max_depth=3)
    assert info.value.status == 400 and "3" in info.value.message


def test_lone_surrogate_says_so(http):
    for raw in [rb'{"prompt": "\ud800"}', rb'{"prompt": "a\udc00"}']:
        error = assert_error(post_raw(http, "/tokenize", raw), 400)
        assert "surrogate" in error["message"] and "truncated" not in error["message"]
    paired = post_raw(http, "/tokenize", rb'{"prompt": "\ud83d\ude00"}')
    assert paired.status_code == 200, paired.text


@pytest.mark.parametrize("path", list(BODIES))
def test_a_non_json_content_type_is_415(http, path):
    raw = msgspec.json.encode(BODIES[path])
    assert_error(post_raw(http, path, raw, "text/plain"), 415, code="unsupported_media_type")
    assert post_raw(http, path, raw, "application/json; charset=utf-8").status_code == 200


def test_a_body_without_content_type_is_accepted(live_server):
    raw = msgspec.json.encode(BODIES["/tokenize"])
    with httpx.Client(base_url=live_server.url) as client:  # httpx sends none for raw bytes
        request = client.build_request("POST", "/tokenize", content=raw)
        assert "content-type" not in request.headers
        assert client.send(request).status_code == 200


REQUEST_400 = [
    ({"stop": [""]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stop": ["a"] * 65}, "stop"),
    ({"stop": "x" * 1025}, "stop"),
    ({"request_id": "r" * 100_000}, "request_id"),
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(("fields", "param"), REQUEST_400, ids=[p for _, p in REQUEST_400])
def test_request_limits(http, path, fields, param):
    assert_error(http.post(path, json={**BODIES[path], **fields}), 400, param)


def test_too_many_prompts(http):
    error = assert_error(http.post("/v1/completions",
                                   json={"prompt": ["hi"] * 257, "max_tokens": 1}), 400, "prompt")
    assert "256" in error["message"]


def test_the_key_is_checked_before_the_route(live_server, http):
    with httpx.Client(base_url=live_server.url) as client:
        assert_error(client.get("/v1/nothing-here"), 401, code="invalid_api_key")
        assert_error(client.get("/v1/chat/completions"), 401, code="invalid_api_key")
        assert_error(client.delete("/v1/models"), 401, code="invalid_api_key")
        assert client.get("/nothing-here").status_code == 404  # outside /v1 no key is needed
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.delete("/v1/models"), 405)


@pytest.mark.parametrize("field", ["max_waiting_requests", "max_body_bytes", "max_nesting_depth",
                                   "max_prompts_per_request", "max_request_id_length",
                                   "max_stop_strings", "max_stop_string_length",
                                   "drain_timeout"])
def test_limits_are_validated_naming_the_field(field):
    with pytest.raises(ConfigError, match=f"^server.{field}: "):
        load_config(None, {f"server.{field}": 0})


def test_limits_have_flags():
    from jaxserve.cli import config_from_args, parser

    args = parser().parse_args(["run", "--max-waiting-requests", "3", "--max-body-bytes", "1000",
                                "--max-nesting-depth", "8", "--max-prompts-per-request", "4",
                                "--max-request-id-length", "5", "--max-stop-strings", "6",
                                "--max-stop-string-length", "7", "--drain-timeout", "2.5"])
    assert config_from_args(args).server == ServerConfig(
        max_waiting_requests=3, max_body_bytes=1000, max_nesting_depth=8,
        max_prompts_per_request=4, max_request_id_length=5, max_stop_strings=6,
        max_stop_string_length=7, drain_timeout=2.5)


def nested_schema(levels: int) -> dict:
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def json_schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": json_schema_format(nested_schema(61))},
     "response_format.json_schema.schema"),
    ({"guided_json": msgspec.json.encode(nested_schema(150)).decode()}, "guided_json"),
    ({"structured_outputs": {"json": msgspec.json.encode(nested_schema(150)).decode()}},
     "structured_outputs.json"),
], ids=["response_format", "guided_json", "structured_outputs"])
def test_a_too_deep_schema_is_a_400_naming_the_field(http, fields, param, stream, no_tracebacks):
    body = {"messages": HELLO, "max_tokens": 1, "stream": stream, **fields}
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, param)
    assert "120" in error["message"]


def test_a_schema_within_the_depth_limit_is_served(http):
    body = {"messages": HELLO, "max_tokens": 1,
            "response_format": json_schema_format(nested_schema(59))}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text

"""x-request-id on every response, the completion ids that carry it, and the access log."""

from __future__ import annotations

import logging
import time

import msgspec
from litestar.testing import TestClient

from jaxserve.config import Config, ServerConfig
from jaxserve.entrypoints.app import create_app

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "ignore_eos": True}
COMPLETION = {"prompt": "hi", "max_tokens": 2}


def test_client_header_names_the_completion(http):
    response = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["id"] == "chatcmpl-abc-123"


def test_generated_id_is_the_completion_suffix(http):
    response = http.post("/v1/completions", json=COMPLETION)
    rid = response.headers["x-request-id"]
    assert rid and response.json()["id"] == f"cmpl-{rid}"
    other = http.post("/v1/completions", json=COMPLETION).headers["x-request-id"]
    assert other != rid


def test_body_request_id_goes_out_in_the_header(http):
    response = http.post("/v1/completions", json={**COMPLETION, "request_id": "mine"})
    assert response.headers["x-request-id"] == "mine" and response.json()["id"] == "cmpl-mine"
    streamed = http.sse("/v1/chat/completions", {**CHAT, "request_id": "streamed"})
    assert all(e["id"] == "chatcmpl-streamed" for e in streamed if e != "[DONE]")


def test_openai_sdk_sees_the_request_id(openai_client, live_server):
    reply = openai_client.chat.completions.create(
        model=live_server.model, messages=CHAT["messages"], max_tokens=2,
        extra_headers={"X-Request-Id": "sdk-1"})
    assert reply._request_id == "sdk-1" and reply.id == "chatcmpl-sdk-1"


def test_too_long_ids(http, live_server):
    limit = live_server.engine.config.server.max_request_id_length  # the served config's
    long_id = "x" * (limit + 1)
    response = http.post("/v1/completions", json=COMPLETION, headers={"X-Request-Id": long_id})
    rid = response.headers["x-request-id"]
    assert response.status_code == 200 and rid != long_id and len(rid) <= limit
    refused = http.post("/v1/completions", json={**COMPLETION, "request_id": long_id})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "request_id"
    assert refused.headers["x-request-id"]
    bad = http.post("/v1/completions", json={**COMPLETION, "request_id": "a\nb"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"


def test_errors_and_unknown_routes_carry_the_header(http):
    missing = http.get("/v1/nowhere", headers={"X-Request-Id": "lost"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost"
    assert http.get("/health").headers["x-request-id"]


def _access_lines(caplog, marker: str, timeout: float = 5.0) -> list[str]:
    """The access lines naming marker; the line is written just after the last byte goes."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "jaxserve.access" and marker in r.getMessage()]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_access_line_per_request(http, caplog):
    caplog.set_level(logging.INFO, logger="jaxserve.access")
    http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "logged-1"})
    (line,) = _access_lines(caplog, "request_id=logged-1")
    assert line.startswith("POST /v1/chat/completions 200 request_id=logged-1 ")
    for part in ("prompt_tokens=", "output_tokens=3", "ttft=", "total="):
        assert part in line, line
    http.sse("/v1/completions", {**COMPLETION, "request_id": "logged-2"})
    (line,) = _access_lines(caplog, "request_id=logged-2")
    assert "output_tokens=2" in line and "ttft=" in line
    http.get("/v1/nowhere", headers={"X-Request-Id": "logged-3"})
    (line,) = _access_lines(caplog, "request_id=logged-3")
    assert line.startswith("GET /v1/nowhere 404 ") and "tokens" not in line


def test_access_log_can_be_turned_off(caplog):
    caplog.set_level(logging.INFO, logger="jaxserve.access")
    for enabled in (True, False):
        config = msgspec.structs.replace(Config(), server=ServerConfig(log_requests=enabled))
        with TestClient(create_app(None, None, config)) as client:
            response = client.get("/version", headers={"X-Request-Id": f"off-{enabled}"})
            assert response.headers["x-request-id"] == f"off-{enabled}"
        lines = [r for r in caplog.records if f"request_id=off-{enabled}" in r.getMessage()]
        assert len(lines) == (1 if enabled else 0)

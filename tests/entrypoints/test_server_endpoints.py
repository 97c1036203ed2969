"""The small endpoints: /v1/models, /health, /metrics, /tokenize, /detokenize, /version."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import jaxserve


def test_models(http, live_server):
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == live_server.model and card["object"] == "model"
    assert card["max_model_len"] == live_server.max_model_len
    client = openai.OpenAI(base_url=live_server.base_url, api_key=live_server.api_key)
    assert [m.id for m in client.models.list()] == [live_server.model]


def test_retrieve_model(http, live_server, openai_client):
    listed = http.get("/v1/models").json()["data"][0]
    response = http.get(f"/v1/models/{live_server.model}")
    assert response.status_code == 200 and response.json() == listed
    model = openai_client.models.retrieve(live_server.model)
    assert model.id == live_server.model and model.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.models.retrieve("org/not-served")
    assert info.value.code == "model_not_found"
    body = http.get("/v1/models/not-served").json()["error"]
    assert body["code"] == "model_not_found" and body["type"] == "invalid_request_error"


def test_openapi_and_docs_need_no_key(live_server):
    with httpx.Client(base_url=live_server.url) as anonymous:  # no Authorization header
        response = anonymous.get("/openapi.json")
        assert response.status_code == 200
        document = response.json()
        docs = anonymous.get("/docs")
    assert document["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        assert path in document["paths"], path
    chat = document["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    assert "messages" in document["components"]["schemas"][name]["properties"]
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert '"/v1/chat/completions"' in docs.text  # the page embeds the same document


def test_health_and_version(http):
    health = http.get("/health")
    assert health.status_code == 200 and health.content == b""
    assert http.get("/version").json() == {"version": jaxserve.__version__}


def test_metrics(http):
    # 9 tokens come as at least 3 deltas (the prefill's token, then bursts of 4): 2 gaps
    http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "m"}],
                                            "max_tokens": 9, "ignore_eos": True})
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("jaxserve:time_to_first_token_seconds_bucket",
                 "jaxserve:inter_token_latency_seconds_bucket",
                 "jaxserve:e2e_request_latency_seconds_bucket",
                 "jaxserve:num_requests_running", "jaxserve:num_requests_waiting",
                 "jaxserve:kv_cache_usage_perc", "jaxserve:num_preemptions_total",
                 "jaxserve:prompt_tokens_total", "jaxserve:generation_tokens_total",
                 "jaxserve:compilations_after_warmup_total"):
        assert f"\n{name}{{" in text, name

    def value(name: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    assert value("jaxserve:generation_tokens_total") >= 3
    assert value("jaxserve:e2e_request_latency_seconds_count") >= 1
    assert value("jaxserve:inter_token_latency_seconds_count") >= 2
    assert value("jaxserve:compilations_after_warmup_total") == 0  # the buckets were enough


def test_metrics_exposition_parses(http):
    response = http.get("/metrics")
    (content_type,) = response.headers.get_list("content-type")
    media, *params = [p.strip() for p in content_type.split(";")]
    assert media == "text/plain"
    names = [p.partition("=")[0].lower() for p in params]
    assert sorted(names) == sorted(set(names)) and "charset" in names, content_type
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"jaxserve:time_to_first_token_seconds", "jaxserve:kv_cache_usage_perc",
            "jaxserve:generation_tokens"} <= families


def test_metrics_show_the_served_dtypes(http):
    (family,) = [f for f in text_string_to_metric_families(http.get("/metrics").text)
                 if f.name == "jaxserve:dtype_info"]
    (sample,) = family.samples
    assert sample.value == 1
    assert {k: sample.labels[k] for k in ("activations", "weights", "kv_cache")} == {
        "activations": "float32", "weights": "float32", "kv_cache": "float32"}
    assert sample.labels["reason"] == "as configured"


def test_tokenize_prompt_and_detokenize(http, live_server):
    body = http.post("/tokenize", json={"prompt": "héllo", "return_token_strs": True}).json()
    expected = live_server.tokenizer("héllo", add_special_tokens=True).input_ids
    assert body["tokens"] == expected and body["count"] == len(expected)
    assert body["max_model_len"] == live_server.max_model_len
    assert len(body["token_strs"]) == len(expected)
    back = http.post("/detokenize", json={"tokens": body["tokens"]}).json()
    assert back == {"prompt": "héllo"}


def test_tokenize_messages_matches_chat_usage(http):
    messages = [{"role": "user", "content": "count me"}]
    count = http.post("/tokenize", json={"messages": messages}).json()["count"]
    reply = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
    assert reply.json()["usage"]["prompt_tokens"] == count


@pytest.mark.parametrize(("path", "body"), [
    ("/tokenize", {}),
    ("/tokenize", {"prompt": "x", "model": "other"}),
    ("/detokenize", {"tokens": [-1]}),
    ("/detokenize", {"tokens": "abc"}),
])
def test_tokenize_errors(http, path, body):
    response = http.post(path, json=body)
    assert response.status_code in (400, 404)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

"""vLLM's extra request fields on the live tiny server: each one served has its effect checked,
each one refused is a 400 naming it (docs/api.md lists them all)."""

from __future__ import annotations

import uuid

import pytest

HELLO = [{"role": "user", "content": "Hello there"}]
LETTERS = [ord(c) + 3 for c in "abcdefgh"]  # the tiny tokenizer's id of byte b is b + 3


def post(http, path: str, **body) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def chat(http, **body) -> dict:
    return post(http, "/v1/chat/completions", **{"messages": HELLO, **body})


def complete(http, **body) -> dict:
    return post(http, "/v1/completions", **body)


def refused(http, path: str, body: dict) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    return response.json()["error"]


def unique_text(words: int = 12) -> str:
    """A prompt no other test sent, so the prefix cache holds none of it."""
    return " ".join(uuid.uuid4().hex[:6] for _ in range(words))


# ---- allowed_token_ids ---------------------------------------------------------------------------
SAMPLED = {"temperature": 1.0, "seed": 7, "n": 2, "max_tokens": 24, "ignore_eos": True,
           "return_token_ids": True}


def test_allowed_token_ids_chat_samples_only_those(http):
    free = chat(http, **SAMPLED)
    assert any(t not in LETTERS for c in free["choices"] for t in c["token_ids"])
    body = chat(http, allowed_token_ids=LETTERS, **SAMPLED)
    for choice in body["choices"]:
        assert len(choice["token_ids"]) == 24
        assert set(choice["token_ids"]) <= set(LETTERS)
        assert set(choice["message"]["content"]) <= set("abcdefgh")


def test_allowed_token_ids_completions_stream(http):
    events = http.sse("/v1/completions", dict(prompt="Quilted kites", allowed_token_ids=LETTERS[:2],
                                              **SAMPLED))
    ids = [t for e in events[:-1] for c in e["choices"] for t in c.get("token_ids") or []]
    assert len(ids) == 48 and set(ids) <= set(LETTERS[:2])


@pytest.mark.parametrize("ids", [[], [-1], [259]])
def test_allowed_token_ids_refused_when_empty_or_outside_vocab(http, ids):
    error = refused(http, "/v1/completions", {"prompt": "x", "allowed_token_ids": ids})
    assert error["param"] == "allowed_token_ids"


# ---- bad_words -----------------------------------------------------------------------------------
AB = {"temperature": 1.0, "seed": 3, "n": 2, "max_tokens": 32, "ignore_eos": True,
      "allowed_token_ids": LETTERS[:2]}  # only "a" and "b": "ab" comes up by chance


def test_bad_words_never_appear_in_the_output(http):
    assert any("ab" in c["message"]["content"] for c in chat(http, **AB)["choices"])
    for choice in chat(http, bad_words=["ab"], **AB)["choices"]:
        text = choice["message"]["content"]
        assert len(text) == 32 and "ab" not in text and "a" in text  # "a" alone still comes
    events = http.sse("/v1/completions", dict(prompt="x", bad_words=["a"], **AB))
    text = "".join(c["text"] for e in events[:-1] for c in e["choices"])
    assert text == "b" * 64  # a one-token word is banned from the first token on


def test_bad_words_refused_when_empty_or_too_many(http):
    error = refused(http, "/v1/chat/completions", {"messages": HELLO, "bad_words": ["ok", " "]})
    assert error["param"] == "bad_words" and "bad_words[1]" in error["message"]
    for words in (["w"] * 385, [f"w{i}" for i in range(200)]):  # too many words, or bans
        assert refused(http, COMPLETIONS, {"prompt": "x", "bad_words": words})["param"] == \
            "bad_words"


# ---- truncate_prompt_tokens ----------------------------------------------------------------------
GREEDY = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}


def test_truncate_prompt_tokens_completions_keeps_the_last_k(http, live_server):
    text = "Seven violet herons sleep under the copper bridge"
    ids = live_server.tokenizer(text).input_ids
    body = complete(http, prompt=text, truncate_prompt_tokens=10, **GREEDY)
    assert body["usage"]["prompt_tokens"] == 10
    tail = complete(http, prompt=ids[-10:], **GREEDY)
    assert body["choices"][0]["text"] == tail["choices"][0]["text"]
    whole = complete(http, prompt=text, truncate_prompt_tokens=-1, **GREEDY)
    assert whole["usage"]["prompt_tokens"] == len(ids)  # -1: what the context leaves, all here


def test_truncate_prompt_tokens_chat(http):
    full = chat(http, **GREEDY)["usage"]["prompt_tokens"]
    body = chat(http, truncate_prompt_tokens=5, **GREEDY)
    assert full > 5 and body["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize("k", [0, -2, 600])
def test_truncate_prompt_tokens_refused_out_of_range(http, k):
    error = refused(http, "/v1/completions", {"prompt": "x", "truncate_prompt_tokens": k})
    assert error["param"] == "truncate_prompt_tokens"


# ---- cache_salt ----------------------------------------------------------------------------------
def cached(http, prompt: str, **body) -> int:
    usage = complete(http, prompt=prompt, max_tokens=1, **body)["usage"]
    return usage["prompt_tokens_details"]["cached_tokens"]


def test_cache_salt_shares_pages_only_under_the_same_salt(http):
    prompt = unique_text()
    assert cached(http, prompt, cache_salt="alpha") == 0
    assert cached(http, prompt, cache_salt="beta") == 0
    assert cached(http, prompt) == 0  # unsalted pages are not the salted ones
    assert cached(http, prompt, cache_salt="alpha") > 0
    assert cached(http, prompt) > 0


def test_responses_take_cache_salt_and_refuse_priority(http):
    def cached_input(text: str, **body) -> int:
        usage = post(http, "/v1/responses", input=text, max_output_tokens=1, **body)["usage"]
        return usage["input_tokens_details"]["cached_tokens"]

    text = unique_text(40)
    assert cached_input(text, cache_salt="alpha") == 0
    assert cached_input(text, cache_salt="beta") == 0
    assert cached_input(text, cache_salt="alpha") > 0
    assert refused(http, "/v1/responses", {"input": "hi", "priority": 1})["param"] == "priority"
    assert refused(http, "/v1/responses", {"input": "hi", "cache_salt": ""})["param"] == "cache_salt"
    for name, value in (("mm_processor_kwargs", {"a": 1}), ("media_io_kwargs", {"a": {}}),
                        ("kv_transfer_params", {"a": 1}), ("vllm_xargs", {"a": 1}),
                        ("enable_response_messages", True), ("previous_input_messages", [])):
        assert refused(http, "/v1/responses", {"input": "hi", name: value})["param"] == name


def test_responses_take_logit_bias(http, live_server):
    token = live_server.tokenizer("a").input_ids[-1]
    body = post(http, "/v1/responses", input="hi", max_output_tokens=3, temperature=1.0,
                logit_bias={str(token): 100})
    assert body["output"][0]["content"][0]["text"] == live_server.tokenizer.decode([token] * 3)
    bad = refused(http, "/v1/responses", {"input": "hi", "logit_bias": {"x": 1}})
    assert bad["param"] == "logit_bias"


def test_cache_salt_refused_empty(http):
    assert refused(http, "/v1/chat/completions",
                   {"messages": HELLO, "cache_salt": ""})["param"] == "cache_salt"


# ---- return_token_ids ----------------------------------------------------------------------------
def tokenize_chat(http, **body) -> list[int]:
    return post(http, "/tokenize", messages=HELLO, **body)["tokens"]


def test_return_token_ids_chat(http, live_server):
    body = chat(http, return_token_ids=True, allowed_token_ids=LETTERS, **GREEDY)
    assert body["prompt_token_ids"] == tokenize_chat(http)
    (choice,) = body["choices"]
    assert len(choice["token_ids"]) == body["usage"]["completion_tokens"] == 8
    assert live_server.tokenizer.decode(choice["token_ids"]) == choice["message"]["content"]
    plain = chat(http, **GREEDY)
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


def test_return_token_ids_chat_stream(http, live_server):
    events = http.sse("/v1/chat/completions", dict(
        messages=HELLO, return_token_ids=True, allowed_token_ids=LETTERS, **GREEDY))
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[0]["prompt_token_ids"] == tokenize_chat(http)
    assert all("prompt_token_ids" not in e for e in chunks[1:])
    ids = [t for e in chunks for c in e["choices"] for t in c.get("token_ids", [])]
    text = "".join(c["delta"].get("content", "") for e in chunks for c in e["choices"])
    assert len(ids) == 8 and live_server.tokenizer.decode(ids) == text


def test_return_token_ids_completions(http, live_server):
    prompts = ["Quilted kites", "Marbled"]
    body = complete(http, prompt=prompts, return_token_ids=True, allowed_token_ids=LETTERS,
                    **GREEDY)
    for choice, prompt in zip(body["choices"], prompts):
        assert choice["prompt_token_ids"] == live_server.tokenizer(prompt).input_ids
        assert live_server.tokenizer.decode(choice["token_ids"]) == choice["text"]
    events = http.sse("/v1/completions", dict(prompt="Quilted kites", return_token_ids=True,
                                              allowed_token_ids=LETTERS, **GREEDY))
    choices = [c for e in events[:-1] for c in e["choices"]]
    assert choices[0]["prompt_token_ids"] == live_server.tokenizer("Quilted kites").input_ids
    assert all("prompt_token_ids" not in c for c in choices[1:])
    ids = [t for c in choices for t in c["token_ids"]]
    assert live_server.tokenizer.decode(ids) == "".join(c["text"] for c in choices)


# ---- return_tokens_as_token_ids ------------------------------------------------------------------
def test_return_tokens_as_token_ids_chat(http):
    body = chat(http, logprobs=True, top_logprobs=2, return_tokens_as_token_ids=True,
                return_token_ids=True, **GREEDY)
    (choice,) = body["choices"]
    entries = choice["logprobs"]["content"]
    assert [e["token"] for e in entries] == [f"token_id:{t}" for t in choice["token_ids"]]
    assert all(alt["token"].startswith("token_id:") for e in entries for alt in e["top_logprobs"])
    assert entries[0]["bytes"] == list(entries[0]["token"].encode())


def test_return_tokens_as_token_ids_completions(http):
    body = complete(http, prompt="Quilted kites", logprobs=2, return_tokens_as_token_ids=True,
                    return_token_ids=True, **GREEDY)
    (choice,) = body["choices"]
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == [f"token_id:{t}" for t in choice["token_ids"]]
    assert all(key.startswith("token_id:") for top in logprobs["top_logprobs"] for key in top)


# ---- refused -------------------------------------------------------------------------------------
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
REFUSED = [
    (CHAT, "priority", 1), (COMPLETIONS, "priority", -3),
    (CHAT, "use_beam_search", True), (COMPLETIONS, "use_beam_search", True),
    (CHAT, "length_penalty", 0.5), (COMPLETIONS, "length_penalty", 2.0),
    (CHAT, "logits_processors", ["my.Processor"]),
    (COMPLETIONS, "logits_processors", [{"qualname": "my.Processor"}]),
    (CHAT, "vllm_xargs", {"a": 1}), (COMPLETIONS, "vllm_xargs", {"a": "b"}),
    (CHAT, "kv_transfer_params", {"do_remote_decode": True}),
    (COMPLETIONS, "kv_transfer_params", {"do_remote_prefill": True}),
    (CHAT, "repetition_detection", {"max_pattern_size": 4}),
    (CHAT, "max_repetition_pattern_size", 4), (CHAT, "min_repetition_pattern_size", 2),
    (CHAT, "repetition_min_count", 3),
    (CHAT, "mm_processor_kwargs", {"num_crops": 4}), (CHAT, "media_io_kwargs", {"video": {}}),
    (CHAT, "structural_tag", '{"structures": []}'),
    (CHAT, "guided_whitespace_pattern", r"\s*"), (COMPLETIONS, "guided_whitespace_pattern", " "),
    (CHAT, "guided_decoding_backend", "outlines"),
    (COMPLETIONS, "guided_decoding_backend", "xgrammar"),
    (CHAT, "include_reasoning", False),
    (COMPLETIONS, "prompt_embeds", "AAAA"),
    (CHAT, "best_of", 3), (COMPLETIONS, "best_of", 2),
]


@pytest.mark.parametrize(("path", "field", "value"), REFUSED)
def test_refused_fields_name_themselves(http, path, field, value):
    body = {"messages": HELLO} if path == CHAT else {"prompt": "Hello"}
    error = refused(http, path, {**body, field: value, "max_tokens": 1})
    assert error["param"] == field and field in error["message"]


def test_spaces_between_special_tokens(http):
    # with special tokens skipped there is nothing to space (vLLM's rule too)
    body = chat(http, spaces_between_special_tokens=False, max_tokens=1)
    assert body["choices"][0]["finish_reason"]
    error = refused(http, CHAT, {"messages": HELLO, "spaces_between_special_tokens": False,
                                 "skip_special_tokens": False})
    assert error["param"] == "spaces_between_special_tokens"


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_defaults_of_refused_fields_are_served(http, path):
    body = {"messages": HELLO} if path == CHAT else {"prompt": "Hello"}
    defaults = {"priority": 0, "best_of": 1, "use_beam_search": False, "length_penalty": 1.0,
                "logits_processors": [], "vllm_xargs": None, "kv_transfer_params": None,
                "guided_decoding_backend": "auto"}
    if path == CHAT:
        defaults.update(bad_words=[], include_reasoning=True, mm_processor_kwargs={})
    assert post(http, path, **body, **defaults, max_tokens=1)["choices"]


def test_request_chat_template_refused_unless_trusted(http):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    error = refused(http, CHAT, {"messages": HELLO, "chat_template": template})
    assert error["param"] == "chat_template" and "--trust-request-chat-template" in error["message"]
    error = refused(http, CHAT, {"messages": HELLO,
                                 "chat_template_kwargs": {"chat_template": template}})
    assert error["param"] == "chat_template_kwargs"
    error = refused(http, "/tokenize", {"messages": HELLO, "chat_template": template})
    assert error["param"] == "chat_template"


@pytest.mark.parametrize("option", [{"disable_any_whitespace": True},
                                    {"disable_additional_properties": True},
                                    {"whitespace_pattern": " "}, {"structural_tag": "{}"}])
def test_structured_outputs_options_refused(http, option):
    (name,) = option
    error = refused(http, CHAT, {"messages": HELLO,
                                 "structured_outputs": {"regex": "a+", **option}})
    assert error["param"] == f"structured_outputs.{name}"


def test_structured_outputs_disable_fallback_is_served(http):
    # one backend, no fallback: the option asks for what happens anyway
    body = chat(http, structured_outputs={"regex": "a+", "disable_fallback": True}, max_tokens=4)
    assert set(body["choices"][0]["message"]["content"]) <= {"a"}


def test_response_format_structural_tag_refused(http):
    error = refused(http, CHAT, {"messages": HELLO, "response_format": {
        "type": "structural_tag", "structures": [], "triggers": []}})
    assert error["param"] == "response_format.type"

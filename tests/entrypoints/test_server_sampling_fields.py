"""vLLM's sampling extras that jaxserve served before the rest (top_k, min_p,
repetition_penalty, stop_token_ids, ignore_eos, min_tokens, skip_special_tokens,
add_generation_prompt): each one's effect on the live tiny server."""

from __future__ import annotations

import pytest

HELLO = [{"role": "user", "content": "Hello there"}]
EOS, BOS = 2, 1  # the tiny tokenizer's <|im_end|> and <|im_start|>
A, B = ord("a") + 3, ord("b") + 3
SAMPLED = {"temperature": 1.0, "seed": 11, "max_tokens": 16, "return_token_ids": True}


def chat(http, **body) -> dict:
    response = http.post("/v1/chat/completions", json={"messages": HELLO, **body})
    assert response.status_code == 200, response.text
    return response.json()


def tokens(body: dict) -> list[int]:
    return body["choices"][0]["token_ids"]


@pytest.mark.parametrize("narrowing", [{"top_k": 1}, {"min_p": 1.0}])
def test_top_k_1_and_min_p_1_sample_the_greedy_token(http, narrowing):
    greedy = tokens(chat(http, **{**SAMPLED, "temperature": 0}, ignore_eos=True))
    assert tokens(chat(http, **SAMPLED, ignore_eos=True)) != greedy
    assert tokens(chat(http, **SAMPLED, ignore_eos=True, **narrowing)) == greedy


def test_repetition_penalty_changes_greedy_output(http):
    greedy = {"temperature": 0, "max_tokens": 24, "ignore_eos": True, "return_token_ids": True}
    plain = tokens(chat(http, **greedy))
    penalised = tokens(chat(http, **greedy, repetition_penalty=2.0))
    assert penalised != plain


def test_stop_token_ids_end_the_output(http):
    body = chat(http, **SAMPLED, ignore_eos=True, allowed_token_ids=[A, B],
                stop_token_ids=[B])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == B
    assert set(choice["message"]["content"]) <= {"a"}


def test_ignore_eos_and_min_tokens(http):
    only_eos = dict(SAMPLED, allowed_token_ids=[EOS])
    assert chat(http, **only_eos)["usage"]["completion_tokens"] == 1
    assert chat(http, **only_eos, ignore_eos=True)["usage"]["completion_tokens"] == 16
    body = chat(http, **dict(SAMPLED, allowed_token_ids=[EOS, A]), min_tokens=6)
    assert body["usage"]["completion_tokens"] >= 6


def test_skip_special_tokens(http):
    body = dict(SAMPLED, allowed_token_ids=[BOS, A], ignore_eos=True)
    skipped = chat(http, **body)["choices"][0]
    assert BOS in skipped["token_ids"] and "<|im_start|>" not in skipped["message"]["content"]
    kept = chat(http, **body, skip_special_tokens=False)["choices"][0]
    assert kept["token_ids"] == skipped["token_ids"]
    assert "<|im_start|>" in kept["message"]["content"]


def test_add_generation_prompt(http, live_server):
    def prompt_tokens(**body) -> int:
        return chat(http, max_tokens=1, **body)["usage"]["prompt_tokens"]

    generation_prompt = live_server.tokenizer("<|im_start|>assistant\n",
                                              add_special_tokens=False).input_ids
    assert prompt_tokens() - prompt_tokens(add_generation_prompt=False) == len(generation_prompt)


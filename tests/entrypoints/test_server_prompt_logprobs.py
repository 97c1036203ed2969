"""prompt_logprobs and echo over HTTP on the tiny model: vLLM's shapes on chat and completions,
completions echo with logprobs (max_tokens 0 too, as lm-evaluation-harness asks), chat echo,
streams, and the 400s. The values against transformers: test_server_prompt_logprobs_smollm2.py."""

from __future__ import annotations

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from jaxserve.models.loader import load_model
from jaxserve.scoring import prompt_logits
from tests.runner.test_prompt_logprobs_step import REFERENCE
from tests.support.prompt_logprobs import log_softmax

PROMPT = "the quick brown fox"


def post(http, path: str, **body) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Teacher-forced log-softmax of a prompt (f64[T, V]), outside the served engine."""
    model = load_model(tiny_model_dir, REFERENCE, "float32")
    return lambda ids: log_softmax(prompt_logits(model, ids))


def prompt_ids(live_server, text: str) -> list[int]:
    return live_server.tokenizer(text, add_special_tokens=True).input_ids


def chat_ids(live_server, messages: list[dict]) -> list[int]:
    tok = live_server.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def check_vllm_entries(entries: list, ids: list[int], k: int, ref) -> None:
    """None first, then {id: {logprob, rank, decoded_token}}: the prompt token, then the top-k
    (ranks 1..k), each logprob the reference's."""
    assert entries[0] is None and len(entries) == len(ids)
    for p, (entry, token_id) in enumerate(zip(entries[1:], ids[1:])):
        assert str(token_id) in entry and len(entry) in (k, k + 1)
        mine = entry[str(token_id)]
        assert mine["rank"] == 1 + int((ref[p] > ref[p, token_id] + 1e-5).sum())
        for key, value in entry.items():
            assert value["logprob"] == pytest.approx(ref[p, int(key)], abs=1e-5)
            assert isinstance(value["decoded_token"], str)
        others = sorted(v["rank"] for key, v in entry.items() if key != str(token_id))
        assert set(others) <= set(range(1, k + 1))


def test_completion_prompt_logprobs_in_vllm_shape(http, live_server, reference):
    body = post(http, "/v1/completions", prompt=PROMPT, max_tokens=2, prompt_logprobs=3,
                temperature=0)
    Completion.model_validate(body)
    ids = prompt_ids(live_server, PROMPT)
    (choice,) = body["choices"]
    check_vllm_entries(choice["prompt_logprobs"], ids, 3, reference(ids))
    plain = post(http, "/v1/completions", prompt=PROMPT, max_tokens=2, temperature=0)
    assert "prompt_logprobs" not in plain["choices"][0]  # only when asked


def test_chat_prompt_logprobs_on_the_response(http, live_server, reference):
    messages = [{"role": "user", "content": PROMPT}]
    body = post(http, "/v1/chat/completions", messages=messages, max_tokens=2, prompt_logprobs=2,
                temperature=0)
    ChatCompletion.model_validate(body)
    ids = chat_ids(live_server, messages)
    assert body["usage"]["prompt_tokens"] == len(ids)
    check_vllm_entries(body["prompt_logprobs"], ids, 2, reference(ids))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_echo_logprobs_max_tokens_0_returns_the_prompt_scored(http, live_server, reference,
                                                              stream):
    body = {"prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0}
    if stream:
        events = http.sse("/v1/completions", body)
        assert events[-1] == "[DONE]"
        (choice,) = [c for e in events[:-1] for c in e["choices"]]
        assert "prompt_logprobs" not in choice  # streams carry none, as vLLM's
    else:
        out = post(http, "/v1/completions", **body)
        assert out["usage"]["completion_tokens"] == 0
        (choice,) = out["choices"]
        assert len(choice["prompt_logprobs"]) == len(prompt_ids(live_server, PROMPT))
    ids = prompt_ids(live_server, PROMPT)
    ref = reference(ids)
    lp = choice["logprobs"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert lp["tokens"] == [live_server.tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    want = ref[range(len(ids) - 1), ids[1:]]
    assert lp["token_logprobs"][1:] == pytest.approx(list(want), abs=1e-5)
    assert all(1 <= len(top) <= 2 for top in lp["top_logprobs"][1:])
    lengths = [len(t) for t in lp["tokens"]]
    assert lp["text_offset"] == [sum(lengths[:i]) for i in range(len(ids))]


def test_echo_logprobs_then_generated_tokens(http, live_server):
    out = post(http, "/v1/completions", prompt=PROMPT, echo=True, logprobs=2, max_tokens=3,
               temperature=0, ignore_eos=True)
    (choice,) = out["choices"]
    ids = prompt_ids(live_server, PROMPT)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 3 and lp["token_logprobs"][0] is None
    assert all(x is not None for x in lp["token_logprobs"][1:])
    assert choice["text"].startswith(PROMPT) and out["usage"]["completion_tokens"] == 3
    assert lp["text_offset"] == sorted(lp["text_offset"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_chat_echo_prepends_the_assistant_message_being_continued(http, live_server, stream):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, I"}]
    body = {"messages": messages, "echo": True, "add_generation_prompt": False,
            "continue_final_message": True, "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    plain = post(http, "/v1/chat/completions", **{**body, "echo": False})
    generated = plain["choices"][0]["message"]["content"]
    if stream:
        events = http.sse("/v1/chat/completions", body)
        text = "".join(c["delta"].get("content", "") for e in events[:-1] for c in e["choices"])
        assert events[1]["choices"][0]["delta"] == {"content": "Hello, I"}  # after the role
    else:
        text = post(http, "/v1/chat/completions", **body)["choices"][0]["message"]["content"]
    assert text == "Hello, I" + generated
    # the last message is the user's: nothing to echo
    user_last = post(http, "/v1/chat/completions", messages=messages[:1], echo=True, max_tokens=2,
                     temperature=0)
    assert user_last["choices"][0]["message"]["content"] == post(
        http, "/v1/chat/completions", messages=messages[:1], max_tokens=2,
        temperature=0)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("path, extra", [
    ("/v1/completions", {"prompt": PROMPT}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
])
@pytest.mark.parametrize("value", [-1, 21])
def test_out_of_range_prompt_logprobs_is_a_400_naming_it(http, path, extra, value):
    response = http.post(path, json={**extra, "prompt_logprobs": value, "max_tokens": 1})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt_logprobs"

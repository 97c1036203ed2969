"""A request's own chat template (served with ``server.trust_request_chat_template``), the
template's ``documents`` and ``reasoning_effort``, and ``add_special_tokens`` in chat and
completions, on a tiny server of their own: its tokenizer adds a BOS, so adding special tokens
shows in the prompt."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing

from tests.support.configs import TINY_CONFIG
from tests.support.live_server import serve

BOS = 1
HELLO = [{"role": "user", "content": "Hello there"}]
PLAIN = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"


@pytest.fixture(scope="module")
def live_server():
    """A second tiny engine, instead of the session's, trusting request templates."""
    from jaxserve.llm import LLM

    llm = LLM(TINY_CONFIG, progress=False)
    llm.engine.tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", BOS)])
    with serve(llm, trust_request_chat_template=True) as live:
        yield live


def post(http, path: str, **body) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def prompt_tokens(http, **body) -> int:
    body = {"messages": HELLO, "max_tokens": 1, **body}
    return post(http, "/v1/chat/completions", **body)["usage"]["prompt_tokens"]


def text_ids(live_server, text: str) -> list[int]:
    return live_server.tokenizer(text, add_special_tokens=False).input_ids


def test_request_template_renders_the_prompt(http, live_server):
    expected = text_ids(live_server, "<<Hello there>>")
    assert post(http, "/tokenize", messages=HELLO, chat_template=PLAIN)["tokens"] == expected
    assert prompt_tokens(http, chat_template=PLAIN) == len(expected)
    assert prompt_tokens(http) != len(expected)  # the model's own template differs
    # vLLM also takes the template from chat_template_kwargs
    assert prompt_tokens(http, chat_template_kwargs={"chat_template": PLAIN}) == len(expected)


def test_chat_template_kwargs_are_template_variables(http, live_server):
    template = "{{ greeting }}" + PLAIN
    body = {"chat_template": template, "chat_template_kwargs": {"greeting": "Hi!"}}
    assert prompt_tokens(http, **body) == len(text_ids(live_server, "Hi!<<Hello there>>"))


def test_request_template_that_fails_names_chat_template(http):
    response = http.post("/v1/chat/completions", json={
        "messages": HELLO, "chat_template": "{% for m in messages %}{{ m.content "})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "chat_template"


def test_documents_and_reasoning_effort_reach_the_template(http, live_server):
    template = ("{% for d in documents %}[{{ d['title'] }}: {{ d['text'] }}]{% endfor %}"
                "{{ reasoning_effort }}" + PLAIN)
    documents = [{"title": "Moon", "text": "rock"}, {"title": "Sun", "text": "gas"}]
    rendered = "[Moon: rock][Sun: gas]low<<Hello there>>"
    assert prompt_tokens(http, chat_template=template, documents=documents,
                         reasoning_effort="low") == len(text_ids(live_server, rendered))


def test_add_special_tokens(http, live_server):
    base = prompt_tokens(http)
    assert prompt_tokens(http, add_special_tokens=True) == base + 1  # chat's default: false
    ids = live_server.tokenizer("Quilted kites").input_ids
    assert ids[0] == BOS
    usage = post(http, "/v1/completions", prompt="Quilted kites", max_tokens=1)["usage"]
    assert usage["prompt_tokens"] == len(ids)  # completions' default: true
    usage = post(http, "/v1/completions", prompt="Quilted kites", max_tokens=1,
                 add_special_tokens=False)["usage"]
    assert usage["prompt_tokens"] == len(ids) - 1

"""Tool calls out of model text: Hermes blocks, a bare JSON call, content around them, and the
streamed deltas adding up to the unstreamed reply however the text is cut."""

from __future__ import annotations

import json

import pytest

from jaxserve.structured.tool_parser import ToolCallParser, parse_tool_calls

NAMES = {"get_weather", "add"}
WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ADD = '<tool_call>\n{"arguments": {"x": 1, "y": [2, "}"]}, "name": "add"}\n</tool_call>'


def stream(text: str, cuts: list[int], names=NAMES, parallel: bool = True):
    """Feed text cut at the given offsets; returns content, calls and the raw deltas."""
    parser = ToolCallParser(names, parallel)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    content, calls, deltas = "", {}, []
    for i, piece in enumerate(pieces):
        said, new = parser.feed(piece, final=i == len(pieces) - 1)
        content += said
        deltas += new
        for d in new:
            if d.id is not None:
                assert d.index not in calls and d.name and d.arguments == ""
                calls[d.index] = [d.id, d.name, ""]
            else:
                assert d.index in calls, "arguments before the call's name"
                calls[d.index][2] += d.arguments
    return content or None, [tuple(calls[i]) for i in sorted(calls)], deltas


CASES = [
    (WEATHER, None, [("get_weather", '{"city": "Paris"}')]),
    ("Let me look.\n" + WEATHER + "\n" + ADD, "Let me look.",
     [("get_weather", '{"city": "Paris"}'), ("add", '{"x": 1, "y": [2, "}"]}')]),
    ('{"name": "add", "parameters": {"x": 1}}', None, [("add", '{"x": 1}')]),
    ('  {"name": "add", "arguments": {}} ', None, [("add", "{}")]),
    ('{"name": "add"}', None, [("add", "{}")]),
    ('{"name": "unknown_tool", "arguments": {}}', '{"name": "unknown_tool", "arguments": {}}', []),
    ('{"city": "Paris", "name": "add"}', '{"city": "Paris", "name": "add"}', []),
    ("Hello <tool there", "Hello <tool there", []),
    ("<tool_call>not json</tool_call> ok", "<tool_call>not json</tool_call> ok", []),
    ("Plain answer.\n\n", "Plain answer.", []),
    (WEATHER[:-20], None, []),  # cut off by max_tokens inside the arguments: dropped
    (WEATHER[:-5], None, [("get_weather", '{"city": "Paris"}')]),  # only the closing tag cut
    (WEATHER + "\n" + WEATHER[:-20], None, [("get_weather", '{"city": "Paris"}')]),
    ("Hi " + WEATHER[:20], "Hi", []),  # cut off before the name was whole
    ("Hi <tool_call>", "Hi", []),
    ('{"name": "ad', '{"name": "ad', []),  # a bare object cut short: nothing says it is a call
]


@pytest.mark.parametrize("text, content, calls", CASES)
def test_whole_reply(text, content, calls):
    got_content, got_calls = parse_tool_calls(text, NAMES)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == calls
    assert all(c.id.startswith("call_") and len(c.id) > 20 for c in got_calls)
    assert len({c.id for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize("text, content, calls", CASES)
def test_streamed_deltas_add_up_to_the_whole_reply(text, content, calls):
    for step in (1, 2, 3, 7, len(text)):
        cuts = list(range(step, len(text), step))
        got_content, got_calls, _ = stream(text, cuts)
        assert got_content == content, step
        streamed = [(name, args) for _, name, args in got_calls]
        if text.endswith(WEATHER[:-20]):  # the cut call's fragments went out before the cut
            streamed = streamed[:-1]
        assert streamed == calls, step


@pytest.mark.parametrize("text", [WEATHER + "\n<tool", WEATHER + "\n<tool_call>\n{\"na"])
def test_markup_cut_by_max_tokens_is_not_content(text):
    parser = ToolCallParser(NAMES)
    content, _ = parser.feed(text, final=True, cut=True)
    assert content == "" and parser.content == ""
    assert [(c.name, c.arguments) for c in parser.calls] == [("get_weather", '{"city": "Paris"}')]
    for step in (1, 3):
        got_content, got_calls, _ = stream_cut(text, list(range(step, len(text), step)))
        assert got_content == "" and len(got_calls) == 1


def stream_cut(text: str, cuts: list[int]):
    parser = ToolCallParser(NAMES)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    said = "".join(parser.feed(p, final=i == len(pieces) - 1, cut=True)[0]
                   for i, p in enumerate(pieces))
    return said, parser.calls, None


def test_a_plain_reply_ending_in_a_tag_start_keeps_it_unless_cut():
    assert parse_tool_calls("a <tool", NAMES)[0] == "a <tool"
    parser = ToolCallParser(NAMES)
    assert parser.feed("a <tool", final=True, cut=True)[0] == "a"


def test_name_comes_first_then_argument_fragments():
    _, calls, deltas = stream(WEATHER, list(range(1, len(WEATHER))))
    assert deltas[0].id == calls[0][0] and deltas[0].name == "get_weather"
    fragments = [d.arguments for d in deltas[1:]]
    assert len(fragments) > 5 and "".join(fragments) == '{"city": "Paris"}'
    assert json.loads("".join(fragments)) == {"city": "Paris"}


def test_a_partial_open_tag_is_held_back_not_streamed():
    parser = ToolCallParser(NAMES)
    assert parser.feed("Sure <tool_") == ("Sure", [])
    said, deltas = parser.feed('call>{"name": "add", "arguments": {}}</tool_call>', final=True)
    assert said == "" and deltas[0].name == "add"


def test_one_call_only_without_parallel_tool_calls():
    content, calls = parse_tool_calls(WEATHER + "\n" + ADD + "\nbye", NAMES, parallel=False)
    assert [c.name for c in calls] == ["get_weather"] and content == "bye"


def test_without_tools_a_json_reply_is_content():
    assert parse_tool_calls('{"name": "add", "arguments": {}}', set()) == (
        '{"name": "add", "arguments": {}}', [])

"""A Responses request's ``input`` (and the conversation before it) to the chat messages the chat
template renders; every malformed item a 400 naming it, e.g. ``input[2].content[0].type``.

- a string is one user message;
- a message item (``{"role", "content"}``, ``type`` "message" or left out) keeps its role
  (user, system, developer, assistant); its content is a string or a list of ``input_text`` /
  ``output_text`` parts, joined with newlines as chat joins text parts;
- a ``function_call`` item is a call the assistant made earlier: it joins the assistant message
  just before it, or starts one, as that message's ``tool_calls``;
- a ``function_call_output`` item is the tool's answer, a ``tool`` message for its ``call_id``;
- a ``reasoning`` item is left out, as vLLM leaves out the reasoning of earlier turns.

With ``previous_response_id`` the conversation is that response's input, then its output (text
as an assistant message, whole calls as its ``tool_calls``), then the new input; ``instructions`` are
a system message before all of it and are not carried over to the next response (OpenAI's rule).
"""

from __future__ import annotations

from typing import Any

from jaxserve.entrypoints.errors import bad_request
from jaxserve.entrypoints.responses_protocol import FunctionCallItem, OutputItem, OutputMessage

MESSAGE_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")
_PARTIAL = ("in_progress", "incomplete")  # a last assistant message with these is continued


def input_messages(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not value:
        raise bad_request("input must be a string or a non-empty list of items", param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, _tool_call(item, where))
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _text(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":
            continue
        else:
            raise bad_request(f"{where}.type: items of type {kind!r} are not supported; expected "
                              "message, function_call or function_call_output",
                              param=f"{where}.type")
    return messages


def continues_final_message(value: str | list[dict[str, Any]]) -> bool:
    """Whether the input ends with an unfinished assistant message, to be continued (vLLM)."""
    if isinstance(value, str) or not value:
        return False
    last = value[-1]
    return (last.get("type", "message") == "message" and last.get("role") == "assistant"
            and last.get("status") in _PARTIAL)


def output_messages(output: list[OutputItem]) -> list[dict[str, Any]]:
    """A response's output as the assistant's chat messages, for the next turn's prompt."""
    messages: list[dict[str, Any]] = []
    for item in output:
        if isinstance(item, OutputMessage):
            text = "\n".join(part.text for part in item.content)
            if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                messages[-1]["content"] = text
            else:
                messages.append({"role": "assistant", "content": text})
        elif isinstance(item, FunctionCallItem) and item.status == "completed":
            # a call cut off by max_output_tokens has broken arguments: not replayed
            _add_call(messages, {"id": item.call_id, "type": "function",
                                 "function": {"name": item.name, "arguments": item.arguments}})
    return messages


def conversation(previous: list[dict[str, Any]], input_: list[dict[str, Any]],
                 instructions: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what to store for a follow-up, what to render): the earlier messages and the input,
    and the same with the instructions before them."""
    history = [*previous, *input_]
    if not history:
        raise bad_request("input must not be empty", param="input")
    prompt = [{"role": "system", "content": instructions}, *history] if instructions else history
    return history, prompt


# ---- items --------------------------------------------------------------------------------------
def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise bad_request(f"{where}.role: expected one of {', '.join(MESSAGE_ROLES)}, got "
                          f"{role!r}", param=f"{where}.role")
    if "content" not in item:
        raise bad_request(f"{where}.content is required", param=f"{where}.content")
    return {"role": role, "content": _text(item["content"], f"{where}.content")}


def _text(content: Any, where: str) -> str:
    """A string, or text parts joined with newlines; any other part is refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS \
                or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad_request(f"{where}[{j}]: only input_text and output_text parts are "
                              f"supported, got {kind!r}", param=f"{where}[{j}]")
        texts.append(part["text"])
    return "\n".join(texts)


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where}.{key} must be a non-empty string", param=f"{where}.{key}")
    return value


def _tool_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise bad_request(f"{where}.arguments must be a string of JSON",
                          param=f"{where}.arguments")
    return {"id": _string(item, "call_id", where), "type": "function",
            "function": {"name": _string(item, "name", where), "arguments": arguments}}


def _add_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Calls follow their assistant message, as one chat message holds its text and calls."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})

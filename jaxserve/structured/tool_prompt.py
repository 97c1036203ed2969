"""Tools and tool messages into the prompt (host side, no jax).

When the chat template knows about tools (it reads a ``tools`` variable, as the templates of
Qwen2.5, Llama 3.1, Hermes and Mistral do), the tools go to the template and assistant tool calls
are handed over as the template expects them (``arguments`` as an object, as Hugging Face
templates read it). When it does not (SmolLM2's template, for one), jaxserve writes the tools into
a system message itself, ``DEFAULT_TOOL_PROMPT`` below, in the Hermes format, and rewrites the
conversation so a template that knows only text can render it:

- an assistant message with ``tool_calls`` gets them as ``<tool_call>`` blocks after its text;
- ``role: tool`` messages become one user message of ``<tool_response>`` blocks (a run of them,
  one block each), so templates that allow only system/user/assistant still render.

With ``tool_choice: "none"`` the default prompt is left out (it exists to teach the call format),
while a template that knows tools still receives them, as vLLM does.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta

from jaxserve.structured.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolPlan

DEFAULT_TOOL_PROMPT = """\
You can call functions to help answer the user. The functions are described by JSON schemas \
inside <tools></tools>:
<tools>
{tools}
</tools>

To call a function, reply with a JSON object holding its name and its arguments inside \
<tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-json-object>}}
</tool_call>
{how_many}Function results come back inside <tool_response></tool_response> tags. When no \
function is needed, answer the user directly."""

ONE_CALL = "Call at most one function per reply. "
MANY_CALLS = "You may call several functions in one reply, one <tool_call> block each. "


@lru_cache(maxsize=8)
def template_supports_tools(chat_template: str | None) -> bool:
    """Whether a Jinja chat template reads the ``tools`` variable."""
    if not isinstance(chat_template, str):
        return False
    try:
        parsed = jinja2.Environment().parse(chat_template)
    except jinja2.TemplateSyntaxError:
        return False
    return "tools" in jinja2.meta.find_undeclared_variables(parsed)


def default_tool_prompt(plan: ToolPlan) -> str:
    tools = "\n".join(json.dumps(f.as_tool()) for f in plan.functions)
    return DEFAULT_TOOL_PROMPT.format(tools=tools, how_many=MANY_CALLS if plan.parallel
                                      else ONE_CALL)


def prompt_messages(messages: list[dict[str, Any]], plan: ToolPlan, template_has_tools: bool
                    ) -> tuple[list[dict[str, Any]], list[dict] | None]:
    """The messages and the ``tools`` to render with the chat template."""
    if template_has_tools:
        tools = [f.as_tool() for f in plan.functions] or None
        return [_for_tool_template(m) for m in messages], tools
    out = _as_text_conversation(messages)
    if plan.functions and plan.choice != "none":
        prompt = default_tool_prompt(plan)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def _for_tool_template(message: dict[str, Any]) -> dict[str, Any]:
    """HF templates read a call's arguments as an object; OpenAI sends a JSON string."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for call in calls:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function["arguments"] = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # left as the model wrote it
        fixed.append({**call, "function": function})
    return {**message, "tool_calls": fixed}


def _call_block(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    name = json.dumps(function.get("name", ""))
    return f'{TOOL_CALL_OPEN}\n{{"name": {name}, "arguments": {arguments}}}\n{TOOL_CALL_CLOSE}'


def _as_text_conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call) for call in message["tool_calls"]]
            content = "\n".join(([message["content"]] if message.get("content") else []) + blocks)
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_responses": True})
        else:
            out.append({k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")})
    for message in out:
        message.pop("_tool_responses", None)
    return out

"""Tool definitions, ``tool_choice``, and the grammar that forces a tool call (host side, no jax).

Tool calls are written in the Hermes format, which jaxserve's default tool prompt teaches and many
chat templates (Qwen2.5, Hermes) use natively::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

``tool_choice`` "required" or a named function turns into a Lark grammar of exactly that: the
name is one of the allowed functions, written as a literal, and the arguments are that function's
parameter schema inlined as ``%json``; with "required" and ``parallel_tool_calls`` more calls may
follow, one block per line, while a named function is called once. After the last of several
calls a blank line may come before the end: a model ends its turn that way (SmolLM2 writes
``"\n\n"`` then EOS), and a grammar that refused it left "\n" and another call as its only way
on, so it repeated its call until ``max_tokens``. "auto" adds no grammar: the model decides and
``tool_parser`` reads what it wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from jaxserve.structured.grammars import strict_json_schema

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names


class ToolError(ValueError):
    """A malformed ``tools`` or ``tool_choice``; ``param`` names the field, as in a 400."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict  # a JSON schema of the arguments object

    def as_tool(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for the prompt, the grammar and the reply."""

    functions: tuple[Function, ...]
    choice: str  # "none" | "auto" | "required" | "named"
    named: str | None = None  # the function a named tool_choice forces
    parallel: bool = True

    @property
    def forces_call(self) -> bool:
        return self.choice in ("required", "named")

    @property
    def parses_calls(self) -> bool:
        return self.choice != "none" and bool(self.functions)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.functions)

    def grammar(self) -> str:
        """The Lark grammar of a forced call (``forces_call`` only). A named function is called
        exactly once, as OpenAI and vLLM do; "required" allows more calls with parallel ones."""
        if self.choice == "named":
            return call_grammar([f for f in self.functions if f.name == self.named], False)
        return call_grammar(self.functions, self.parallel)


def parse_tools(tools: list[Any] | None, tool_choice: Any,
                parallel_tool_calls: bool | None = True) -> ToolPlan:
    """Check ``tools`` and ``tool_choice`` as OpenAI does; raises ToolError naming the field."""
    functions = tuple(_function(tool, i) for i, tool in enumerate(tools or []))
    names = [f.name for f in functions]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ToolError(f"tools: the function name {duplicate!r} is used twice", "tools")
    parallel = True if parallel_tool_calls is None else bool(parallel_tool_calls)
    if tool_choice is None:
        return ToolPlan(functions, "auto" if functions else "none", parallel=parallel)
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolError(f"tool_choice must be 'none', 'auto', 'required' or a named function, "
                            f"got {tool_choice!r}", "tool_choice")
        if tool_choice == "required" and not functions:
            raise ToolError("tool_choice 'required' needs at least one tool in tools",
                            "tool_choice")
        return ToolPlan(functions, tool_choice, parallel=parallel)
    name = _named_choice(tool_choice)
    if name not in names:
        raise ToolError(f"tool_choice names the function {name!r}, which is not in tools",
                        "tool_choice")
    return ToolPlan(functions, "named", named=name, parallel=parallel)


def _function(tool: Any, i: int) -> Function:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise ToolError(f"{where}: only tools of type 'function' are supported", f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ToolError(f"{where}.function must be an object", f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ToolError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-', "
                        f"got {name!r}", f"{where}.function.name")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ToolError(f"{where}.function.parameters must be a JSON schema object",
                        f"{where}.function.parameters")
    description = function.get("description")
    return Function(name, description if isinstance(description, str) else None, parameters)


def _named_choice(tool_choice: Any) -> str:
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    raise ToolError('tool_choice must be "none", "auto", "required" or '
                    '{"type": "function", "function": {"name": ...}}', "tool_choice")


def call_grammar(functions: list[Function] | tuple[Function, ...], parallel: bool) -> str:
    """Lark: one Hermes tool-call block per call, the name a literal, the arguments the
    function's parameter schema."""
    lines = ['start: call ("\\n" call)* /[ \\t\\r\\n]{1,2}/?' if parallel else "start: call",
             "call: " + " | ".join(f"call_{i}" for i in range(len(functions)))]
    tail = _lark_string("}\n" + TOOL_CALL_CLOSE)
    for i, function in enumerate(functions):
        head = _lark_string(f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(function.name)}, '
                            '"arguments": ')
        lines.append(f"call_{i}: {head} args_{i} {tail}")
        lines.append(f"args_{i}: %json {json.dumps(strict_json_schema(function.parameters))}")
    return "\n".join(lines)


def _lark_string(text: str) -> str:
    """A Lark string literal: JSON's escapes are Lark's."""
    return json.dumps(text)

"""A Responses request's options: what is refused, the tools and ``text.format`` as the chat
path's constraint and tool plan, and the sampling params; every mistake a 400 naming its field.

Tools come in the Responses flat shape (``{"type": "function", "name", "description",
"parameters", "strict"}``; chat's nested ``function`` object is taken too, as vLLM does) and
``tool_choice`` as "auto", "none", "required" or ``{"type": "function", "name"}``; they are
turned into chat's shapes and checked by ``structured/tools.py``. Built-in tools (web search,
file search, code interpreter, computer use, MCP, ...) need OpenAI's servers and are refused.
"""

from __future__ import annotations

import re
from typing import Any

from jaxserve.entrypoints.errors import APIError, bad_request
from jaxserve.entrypoints.responses_protocol import ResponsesRequest
from jaxserve.entrypoints.sampling import logit_bias
from jaxserve.entrypoints.structured import RequestStructure, format_constraint
from jaxserve.sampling_params import MAX_TOP_LOGPROBS, ParamError, SamplingParams, StructuredOutputs
from jaxserve.structured.tools import ToolError, parse_tools

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
             "repetition_penalty": 1.0}
# chat's field names, as the shared checks say them, to the Responses API's
_RENAMES = [(re.compile(r"tools\[(\d+)\]\.function\."), r"tools[\1]."),
            (re.compile(r"\bmax_tokens\b"), "max_output_tokens"),
            (re.compile(r"\bmessages\b"), "input")]


def refuse_unsupported(req: ResponsesRequest) -> None:
    """Fields of OpenAI's API that jaxserve does not serve: a 400 rather than silence."""
    if req.background:
        raise bad_request("background responses are not supported; send background: false",
                          param="background")
    if req.truncation not in (None, "disabled"):
        raise bad_request(f"truncation {req.truncation!r} is not supported (a prompt is never "
                          "cut); send 'disabled'", param="truncation")
    for name in ("prompt", "conversation", "max_tool_calls", "previous_input_messages"):
        if getattr(req, name) is not None:
            raise bad_request(f"{name} is not supported", param=name)
    if req.enable_response_messages:  # vLLM's: the prompt as messages, which jaxserve keeps not
        raise bad_request("enable_response_messages is not supported",
                          param="enable_response_messages")
    for i, value in enumerate(req.include or []):
        if value != LOGPROBS_INCLUDE:
            raise bad_request(f"include[{i}]: {value!r} is not supported; only "
                              f"{LOGPROBS_INCLUDE!r} is", param=f"include[{i}]")


def renamed(exc: APIError) -> APIError:
    """An error from the shared chat checks, with the Responses API's field names."""
    def rename(text: str | None) -> str | None:
        for pattern, replacement in _RENAMES:
            text = pattern.sub(replacement, text) if text else text
        return text

    exc.message, exc.param = rename(exc.message), rename(exc.param)
    exc.args = (exc.message,)
    return exc


# ---- tools and text.format ----------------------------------------------------------------------
def responses_structure(req: ResponsesRequest) -> RequestStructure:
    """The output constraint and tool plan, as chat's ``request_structure`` makes them."""
    given: list[tuple[str, StructuredOutputs]] = []
    text_format = _text_format(req.text)
    if text_format is not None:
        given.append(("text.format.schema", text_format))
    if req.structured_outputs is not None:
        try:
            given.append(("structured_outputs", req.structured_outputs.validate()))
        except ParamError as exc:
            raise bad_request(str(exc), param=exc.param) from None
    try:
        plan = parse_tools(chat_tools(req.tools), _chat_tool_choice(req.tool_choice),
                           req.parallel_tool_calls)
    except ToolError as exc:
        raise renamed(bad_request(str(exc), param=exc.param)) from None
    if plan.forces_call:
        given.append(("tool_choice", StructuredOutputs(grammar=plan.grammar())))
    if len(given) > 1:
        names = [name.split(".schema")[0] for name, _ in given]
        raise bad_request(f"only one output constraint may be given per request, got "
                          f"{' and '.join(names)}", param=names[1])
    if not given:
        return RequestStructure(None, None, plan)
    param, constraint = given[0]
    return RequestStructure(constraint, param, plan)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Function tools in chat's nested shape; any other tool type is refused."""
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise bad_request(f"tools[{i}].type: {kind!r} tools are not supported; only "
                              "'function' tools are", param=f"tools[{i}].type")
        if isinstance(tool.get("function"), dict) and "name" not in tool:
            out.append(tool)  # chat's shape, which vLLM also accepts here
            continue
        function = {key: tool[key] for key in ("name", "description", "parameters")
                    if tool.get(key) is not None}
        out.append({"type": "function", "function": function})
    return out


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        if isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        return choice  # chat's shape, or a mistake parse_tools names
    raise bad_request(f"tool_choice of type {choice.get('type')!r} is not supported; expected "
                      "'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}",
                      param="tool_choice")


def _text_format(text: dict[str, Any] | None) -> StructuredOutputs | None:
    if text is None or text.get("format") is None:
        return None
    spec = text["format"]
    if not isinstance(spec, dict):
        raise bad_request("text.format must be an object", param="text.format")
    if spec.get("type") == "json_schema" and spec.get("schema") is None:
        raise bad_request("text.format.schema is required with type 'json_schema'",
                          param="text.format.schema")
    return format_constraint(spec.get("type"), spec.get("schema"), "text.format",
                             "text.format.schema")


# ---- sampling -----------------------------------------------------------------------------------
def wants_logprobs(req: ResponsesRequest) -> bool:
    return LOGPROBS_INCLUDE in (req.include or [])


def responses_params(req: ResponsesRequest, defaults: dict[str, Any],
                     vocab_size: int) -> SamplingParams:
    """Fields left out take the model's generation_config.json values, then OpenAI's."""
    values = {**_DEFAULTS, **{k: v for k, v in defaults.items() if k in _DEFAULTS}}
    for key in _DEFAULTS:
        if getattr(req, key) is not None:
            values[key] = getattr(req, key)
    if values["top_k"] >= vocab_size:  # keeps every token: the same as no top-k
        values["top_k"] = 0
    top = req.top_logprobs
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top}",
                          param="top_logprobs")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SamplingParams(
        **values, seed=req.seed, max_tokens=req.max_output_tokens, stop=stop,
        ignore_eos=req.ignore_eos, skip_special_tokens=req.skip_special_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output, cache_salt=req.cache_salt,
        logit_bias=logit_bias(req.logit_bias),
        logprobs=(top or 0) if wants_logprobs(req) else None)

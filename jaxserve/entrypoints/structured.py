"""Request fields to one output constraint and a tool plan; every mistake a 400 naming its field.

A request may constrain its output through exactly one of:

- ``response_format``: ``{"type": "text"}`` (no constraint), ``{"type": "json_object"}``, or
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (OpenAI);
- ``structured_outputs``: ``{json | json_object | regex | choice | grammar}`` (vLLM);
- ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar`` (vLLM's older fields);
- ``tool_choice`` "required" or a named function, which forces a tool call through a grammar.

Two of them in one request is a 400, as is a schema, regex or grammar that does not compile: the
grammar is compiled at admission, on a worker thread (``serving_common.py``), and
``constraint_error`` names the request field a compile error came from. With ``tool_choice``
"auto" and a constraint, the constraint wins and no tool calls are read (vLLM does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxserve.engine.constraints import ConstraintFactory
from jaxserve.entrypoints.errors import APIError, bad_request
from jaxserve.sampling_params import ParamError, StructuredOutputs
from jaxserve.structured import GrammarError
from jaxserve.structured.grammars import load_schema
from jaxserve.structured.tools import ToolError, ToolPlan, parse_tools

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
           "guided_grammar": "grammar"}


@dataclass(frozen=True)
class RequestStructure:
    constraint: StructuredOutputs | None
    param: str | None  # the request field the constraint came from
    tools: ToolPlan

    @property
    def reads_tool_calls(self) -> bool:
        """Whether the reply's text is searched for tool calls."""
        return self.tools.forces_call or (self.tools.parses_calls and self.constraint is None)


def request_structure(req: Any) -> RequestStructure:
    """The request's constraint and tool plan; raises a 400 for two constraints or bad tools."""
    given: list[tuple[str, StructuredOutputs]] = []
    response_format = _response_format(getattr(req, "response_format", None))
    if response_format is not None:
        given.append(("response_format", response_format))
    structured = getattr(req, "structured_outputs", None)
    if structured is not None:
        try:
            given.append(("structured_outputs", structured.validate()))
        except ParamError as exc:
            raise bad_request(str(exc), param=exc.param) from None
    for name, kind in _GUIDED.items():
        value = getattr(req, name, None)
        if value is None:
            continue
        if kind == "choice" and not value:
            raise bad_request(f"{name} must not be empty", param=name)
        given.append((name, StructuredOutputs(**{kind: value})))
    try:
        plan = parse_tools(getattr(req, "tools", None), getattr(req, "tool_choice", None),
                           getattr(req, "parallel_tool_calls", True))
    except ToolError as exc:
        raise bad_request(str(exc), param=exc.param) from None
    if plan.forces_call:
        given.append(("tool_choice", StructuredOutputs(grammar=plan.grammar())))
    if len(given) > 1:
        names = [name for name, _ in given]
        raise bad_request(f"only one output constraint may be given per request, got "
                          f"{' and '.join(names)}", param=names[1])
    if not given:
        return RequestStructure(None, None, plan)
    param, constraint = given[0]
    return RequestStructure(constraint, param, plan)


def _response_format(value: Any) -> StructuredOutputs | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("response_format must be an object", param="response_format")
    kind, schema = value.get("type"), None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_request("response_format.json_schema must be an object with the schema",
                              param="response_format.json_schema")
        schema = spec.get("schema")  # OpenAI allows leaving it out: any JSON object
    return format_constraint(kind, schema, "response_format", "response_format.json_schema.schema")


def format_constraint(kind: Any, schema: Any, field: str,
                      schema_field: str) -> StructuredOutputs | None:
    """OpenAI's output formats as a constraint: chat's response_format and the Responses API's
    text.format both read them here. kind: text | json_object | json_schema (schema None: any
    JSON object); field and schema_field name them in a 400."""
    if kind == "text":
        return None
    if kind == "json_object" or (kind == "json_schema" and schema is None):
        return StructuredOutputs(json_object=True)
    if kind == "json_schema":
        try:
            return StructuredOutputs(json=load_schema(schema))
        except GrammarError as exc:
            raise bad_request(f"{schema_field}: {exc}", param=schema_field) from None
    raise bad_request(f"{field}.type must be 'text', 'json_object' or 'json_schema', got "
                      f"{kind!r}", param=f"{field}.type")


def constraint_error(factory: ConstraintFactory, structure: RequestStructure,
                     exc: GrammarError) -> APIError:
    """A grammar that does not compile, as a 400 naming the request field it came from; call on
    the worker thread (finding a tool's fault compiles its parameters)."""
    param = _error_param(factory, structure, exc)
    return bad_request(f"{param}: {exc}", param=param)


def _error_param(factory: ConstraintFactory, structure: RequestStructure,
                 exc: GrammarError) -> str:
    param = structure.param
    if param == "response_format":
        return "response_format.json_schema.schema"
    if param == "structured_outputs":
        return f"structured_outputs.{exc.field}"
    if param == "tool_choice":  # which tool's parameters: compile them one by one
        for i, function in enumerate(structure.tools.functions):
            try:
                factory.compile(StructuredOutputs(json=function.parameters))
            except GrammarError:
                return f"tools[{i}].function.parameters"
        return "tools"
    return param

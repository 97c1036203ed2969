"""One structured-output constraint to the grammar text llguidance compiles (host side, no jax).

Each kind of ``StructuredOutputs`` becomes an llguidance grammar: a JSON schema (or any JSON
object), a regular expression, a choice among strings, or a Lark grammar (GBNF is converted). The
grammar text is also the cache key of the compiled grammar, so two requests with the same schema,
written with the same key order, share one compilation.

JSON is written with fixed separators (``", "`` and ``": "``, as ``json.dumps`` does) and no other
whitespace: small models given free whitespace tend to emit newlines until they run out of tokens.
"""

from __future__ import annotations

import json
from typing import Any

from llguidance import LLMatcher, grammar_from

from jaxserve.json_nesting import nesting_depth
from jaxserve.sampling_params import StructuredOutputs

# JSON nesting of a schema; llguidance's JSON parser gives up a few levels short of 128
MAX_SCHEMA_DEPTH = 120
# llguidance's JSON options, applied over whatever a schema's "x-guidance" says
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ",
                                "key_separator": ": "}


class GrammarError(ValueError):
    """A schema, regex or grammar that cannot be compiled; ``field`` names the part at fault
    ("json", "regex", "choice", "grammar")."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def load_schema(schema: dict | str, field: str = "json") -> dict:
    """A JSON schema given as an object or as JSON text, as a dict."""
    if isinstance(schema, str):
        check_depth(schema, field)
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the JSON schema is not valid JSON: {exc}", field) from None
    if not isinstance(schema, dict):
        raise GrammarError("the JSON schema must be a JSON object", field)
    return schema


def check_depth(text: str, field: str) -> None:
    depth = nesting_depth(text, MAX_SCHEMA_DEPTH)
    if depth > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"the JSON schema nests {depth} levels deep; the limit is "
                           f"{MAX_SCHEMA_DEPTH}", field)


def _schema_grammar(schema: dict, field: str) -> str:
    try:
        text = json.dumps(schema)
    except (RecursionError, TypeError, ValueError) as exc:  # a dict from the offline API
        raise GrammarError(f"the JSON schema cannot be serialised: {exc}", field) from None
    check_depth(text, field)
    try:
        return LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise GrammarError(str(exc), field) from None


def strict_json_schema(schema: dict) -> dict:
    """The schema with jaxserve's JSON formatting options, for inlining as ``%json`` in Lark."""
    return {**schema, "x-guidance": {**schema.get("x-guidance", {}), **JSON_OPTIONS}}


def grammar_text(so: StructuredOutputs) -> str:
    """The llguidance grammar of one constraint; raises GrammarError for malformed input that is
    visible without compiling (the compiler reports the rest)."""
    so.validate()
    if so.json is not None or so.json_object:
        schema = {"type": "object"} if so.json_object else load_schema(so.json)
        return _schema_grammar(schema, constraint_field(so))
    if so.choice is not None and not all(isinstance(c, str) for c in so.choice):
        raise GrammarError("every choice must be a string", "choice")
    kind = "regex" if so.regex is not None else "choice" if so.choice is not None else "grammar"
    try:  # a grammar is Lark, or GBNF converted to Lark
        return grammar_from(kind, getattr(so, kind))
    except (ValueError, RecursionError) as exc:
        raise GrammarError(str(exc), kind) from None


def constraint_field(so: StructuredOutputs) -> str:
    """Which field of the constraint is set: the part a compile error is about."""
    if so.json_object:
        return "json_object"
    for name in ("json", "regex", "choice", "grammar"):
        if getattr(so, name) is not None:
            return name
    return "json"

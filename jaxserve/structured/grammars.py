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

from jaxserve.sampling_params import StructuredOutputs

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
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the JSON schema is not valid JSON: {exc}", field) from None
    if not isinstance(schema, dict):
        raise GrammarError("the JSON schema must be a JSON object", field)
    return schema


def strict_json_schema(schema: dict) -> dict:
    """The schema with jaxserve's JSON formatting options, for inlining as ``%json`` in Lark."""
    return {**schema, "x-guidance": {**schema.get("x-guidance", {}), **JSON_OPTIONS}}


def grammar_text(so: StructuredOutputs) -> str:
    """The llguidance grammar of one constraint; raises GrammarError for malformed input that is
    visible without compiling (the compiler reports the rest)."""
    so.validate()
    if so.json is not None or so.json_object:
        schema = {"type": "object"} if so.json_object else load_schema(so.json)
        return LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
    if so.regex is not None:
        return grammar_from("regex", so.regex)
    if so.choice is not None:
        if not all(isinstance(c, str) for c in so.choice):
            raise GrammarError("every choice must be a string", "choice")
        return grammar_from("choice", so.choice)
    try:
        return grammar_from("grammar", so.grammar)  # Lark, or GBNF converted to Lark
    except ValueError as exc:
        raise GrammarError(str(exc), "grammar") from None


def constraint_field(so: StructuredOutputs) -> str:
    """Which field of the constraint is set: the part a compile error is about."""
    if so.json_object:
        return "json_object"
    for name in ("json", "regex", "choice", "grammar"):
        if getattr(so, name) is not None:
            return name
    return "json"

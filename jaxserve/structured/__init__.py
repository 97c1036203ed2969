"""Structured outputs and tool calling on llguidance (host side, no jax).

- ``grammars``: a constraint (JSON schema, regex, choice, Lark grammar) to llguidance grammar text.
- ``backend``: compiled grammars cached by text; the constraint factory admission uses.
- ``tools``: tool definitions, ``tool_choice``, and the grammar that forces a call.
- ``tool_parser``: tool calls out of model text, whole or as it streams.
- ``tool_prompt``: tools and tool messages into a prompt when the chat template cannot.
"""

from jaxserve.structured.backend import GrammarBackend, GrammarConstraint
from jaxserve.structured.grammars import GrammarError

__all__ = ["GrammarBackend", "GrammarConstraint", "GrammarError"]

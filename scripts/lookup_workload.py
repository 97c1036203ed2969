"""bench_serving's prompt-lookup workload: prompts whose answer repeats the prompt, and the
speculative-decoding counters that say how much of it a server's drafts got right.

A prompt is a function or class of Python's own standard library (every machine has the
source) with the instruction to rewrite it with type hints: most of the answer copies the
prompt, which is what n-gram (prompt lookup) drafting predicts. The picks depend on the seed and
on the Python version's stdlib source only.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
from functools import cache
from pathlib import Path

# pure-Python modules in every CPython; a name missing from some version is skipped
MODULES = (
    "textwrap", "shlex", "fractions", "argparse", "difflib", "calendar", "configparser", "csv",
    "dataclasses", "statistics", "string", "heapq", "inspect", "pprint", "tokenize", "ipaddress",
    "json/decoder", "json/encoder", "random", "zipfile", "tarfile", "gettext", "pathlib",
    "datetime", "functools", "enum", "shutil", "tempfile", "subprocess", "threading",
    "contextlib", "ast", "pickle", "smtplib", "urllib/parse", "base64",
)
MIN_LINES, MAX_LINES = 40, 120
INSTRUCTION = "Rewrite this Python code, adding type hints. Output only the code.\n\n```python\n"
ANSWER = "```\n\nThe code with type hints:\n\n```python\n"

# the counters as jaxserve and vLLM name them (prometheus_client drops the _total suffix)
SPEC_DECODE_PREFIXES = ("jaxserve:", "vllm:")
SPEC_DECODE_COUNTERS = ("spec_decode_num_drafts", "spec_decode_num_draft_tokens",
                        "spec_decode_num_accepted_tokens")


@cache
def code_snippets() -> tuple[str, ...]:
    """Every function and class of MIN_LINES..MAX_LINES lines (decorators included) in MODULES,
    dedented, in file and line order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    snippets: list[str] = []
    for module in MODULES:
        path = next((p for p in (stdlib / f"{module}.py", stdlib / module / "__init__.py")
                     if p.is_file()), None)
        if path is None:
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        nodes = [n for n in ast.walk(ast.parse("".join(lines)))
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in sorted(nodes, key=lambda n: n.lineno):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if MIN_LINES <= node.end_lineno - start + 1 <= MAX_LINES:
                snippets.append(textwrap.dedent("".join(lines[start - 1:node.end_lineno])))
    return tuple(dict.fromkeys(snippets))  # a function defined twice (by platform) once


def lookup_prompt(tokenizer, code: str, input_len: int) -> tuple[str, list[int]]:
    """The instruction around the longest whole-line head of `code` that fits input_len tokens."""
    lines = code.splitlines(keepends=True)

    def ids(n: int) -> list[int]:
        return tokenizer.encode(INSTRUCTION + "".join(lines[:n]) + ANSWER,
                                add_special_tokens=False)

    if len(ids(0)) > input_len:
        raise ValueError(f"--input-len {input_len} is shorter than the lookup instruction "
                         f"({len(ids(0))} tokens)")
    lo, hi = 0, len(lines)  # the most lines that fit: token counts grow with lines
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(ids(mid)) <= input_len else (lo, mid - 1)
    return INSTRUCTION + "".join(lines[:lo]) + ANSWER, ids(lo)


def lookup_prompts(tokenizer, n: int, input_len: int, seed: int, warmup: bool = False
                   ) -> list[tuple[str, list[int]]]:
    """n (text, token ids) prompts of at most input_len tokens, the seed's shuffle of the
    snippets; warm-ups come from the other end of the shuffle, so they do not warm the prefix
    cache for the measured prompts (while there are enough snippets)."""
    order = list(code_snippets())
    random.Random(seed).shuffle(order)
    if warmup:
        order.reverse()
    return [lookup_prompt(tokenizer, order[i % len(order)], input_len) for i in range(n)]


async def scrape_metrics(client, url: str, headers: dict[str, str] | None = None) -> str | None:
    """The /metrics text, or None from a server without one (llama-cpp-python)."""
    import httpx

    try:
        response = await client.get(url, headers=headers)
    except (httpx.HTTPError, OSError):
        return None
    return response.text if response.status_code == 200 else None


def spec_decode_counters(text: str) -> dict[str, float]:
    """{counter: value} of the spec-decode counters in a /metrics text, summed over labels
    (vLLM labels each engine); a counter the server does not export is absent."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for prefix in SPEC_DECODE_PREFIXES:
            name = family.name.removeprefix(prefix)
            if family.name.startswith(prefix) and name in SPEC_DECODE_COUNTERS:
                found[name] = found.get(name, 0.0) + sum(
                    s.value for s in family.samples if s.name == f"{family.name}_total")
    return found


def acceptance(before: str | None, after: str | None) -> dict[str, float | None]:
    """acceptance_rate (accepted / draft tokens) and mean_accepted_length (1 + accepted per
    draft, the tokens one verify step yields) between two /metrics texts; None where the
    server has no such counters or made no drafts in between."""
    out: dict[str, float | None] = {"acceptance_rate": None, "mean_accepted_length": None,
                                    "num_drafts": None, "num_draft_tokens": None,
                                    "num_accepted_tokens": None}
    if before is None or after is None:
        return out
    start, end = spec_decode_counters(before), spec_decode_counters(after)
    if set(SPEC_DECODE_COUNTERS) - set(start) or set(SPEC_DECODE_COUNTERS) - set(end):
        return out
    drafts, draft_tokens, accepted = (end[c] - start[c] for c in SPEC_DECODE_COUNTERS)
    out.update(num_drafts=drafts, num_draft_tokens=draft_tokens, num_accepted_tokens=accepted)
    if draft_tokens > 0:
        out["acceptance_rate"] = accepted / draft_tokens
    if drafts > 0:
        out["mean_accepted_length"] = 1.0 + accepted / drafts
    return out

"""schemathesis hooks for scripts/fuzz_api.sh (loaded through SCHEMATHESIS_HOOKS).

The hooks steer generated bodies past the first check that would refuse most of them, so the
fuzzing reaches the rest of the request handling: every body names the served model
($JAXSERVE_FUZZ_MODEL; a random name stops at the 404), drops stream_options unless it streams
and top_logprobs unless it asks for logprobs (OpenAI's own 400s, which the spec does not
encode), best_of unless it equals n (jaxserve's 400), gets a prompt when it has none, and asks for
at most a few tokens, max_output_tokens on /responses (the fuzzer likes max_tokens near 2**31, refused anyway, and long
generations, which only cost time). The refusals skipped here have their own tests.
"""

from __future__ import annotations

import os

import schemathesis

MODEL = os.environ.get("JAXSERVE_FUZZ_MODEL", "tiny-random-llama")
MAX_TOKENS = 8


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    body["model"] = MODEL
    if body.get("stream") is not True:
        body.pop("stream_options", None)
    if body.get("logprobs") is not True and "messages" in body:
        body.pop("top_logprobs", None)
    if body.get("best_of") not in (None, body.get("n", 1)):
        body.pop("best_of")
    if "/completions" in case.path and "chat" not in case.path and body.get("prompt") is None:
        body["prompt"] = "Hello"
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if case.path.endswith("/responses"):
        if body.get("max_output_tokens") is None:
            body["max_output_tokens"] = MAX_TOKENS
    elif body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
